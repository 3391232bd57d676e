"""Parsing a dataset into records, by format; never raises on any input (the error is a field).

    text, markdown   strict UTF-8 (a leading BOM is refused), records = non-empty lines, right-stripped
    jsonl            one JSON object a non-empty line; record = its canonical JSON (sorted keys)
    csv              a header row, then rows of the header's width; record = the row, canonical
    text/x-python    `ast.parse`; records = the source of each top-level statement

Errors name a line and a reason, never the content (it may hold personal data).
"""

from __future__ import annotations

import ast
import csv
import io
import json
from dataclasses import dataclass, field

FORMATS = ("text", "markdown", "jsonl", "csv", "text/x-python")
MAX_ERROR = 256


@dataclass(frozen=True, slots=True)
class Parsed:
    records: list[str] = field(default_factory=list)
    """Normalised record texts, in file order."""
    error: str = ""
    """Empty when the content parsed; else why not (no content in it)."""


def _fail(message: str) -> Parsed:
    return Parsed([], message[:MAX_ERROR])


def _decode(data: bytes) -> tuple[str | None, str]:
    if data.startswith(b"\xef\xbb\xbf"):
        return None, "starts with a byte-order mark (plain UTF-8 without one is expected)"
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        return None, f"line {line}: invalid UTF-8 at byte {err.start}"
    if "\x00" in text:
        return None, f"line {text[: text.index(chr(0))].count(chr(10)) + 1}: NUL character"
    return text, ""


def parse_records(data: bytes, format: str, max_record_bytes: int) -> Parsed:
    """The records of `data` read as `format`, or the reason it does not parse."""
    if format not in FORMATS:
        return _fail(f"unknown format {format!r}")
    text, error = _decode(data)
    if text is None:
        return _fail(error)
    try:
        if format in ("text", "markdown"):
            records = _lines(text, max_record_bytes)
        elif format == "jsonl":
            records = _jsonl(text, max_record_bytes)
        elif format == "csv":
            records = _csv(text, max_record_bytes)
        else:
            records = _python(text, max_record_bytes)
    except _ParseError as err:
        return _fail(str(err))
    return Parsed(records)


class _ParseError(Exception):
    pass


def _check_size(record: str, line: int, limit: int) -> None:
    # A code point is at most four UTF-8 bytes: only a longer record can be over the limit.
    if len(record) * 4 > limit and len(record.encode()) > limit:
        raise _ParseError(f"line {line}: record longer than {limit} bytes")


def _lines(text: str, limit: int) -> list[str]:
    lines = text.split("\n")
    out = [line for line in map(str.rstrip, lines) if line]
    if max(map(len, out), default=0) * 4 > limit:  # some record may be too long: find the first
        for number, line in enumerate(lines, 1):
            _check_size(line.rstrip(), number, limit)
    return out


def _jsonl(text: str, limit: int) -> list[str]:
    out = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        _check_size(line, number, limit)
        try:
            obj = json.loads(line)
        except RecursionError as err:
            raise _ParseError(f"line {number}: nested too deeply") from err
        except ValueError as err:
            raise _ParseError(f"line {number}: not JSON ({type(err).__name__} at column "
                              f"{getattr(err, 'colno', '?')})") from err
        if not isinstance(obj, dict):
            raise _ParseError(f"line {number}: a JSON {type(obj).__name__}, not an object")
        try:
            out.append(json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")))
        except (RecursionError, ValueError) as err:
            raise _ParseError(f"line {number}: cannot be written back canonically") from err
    return out


def _csv(text: str, limit: int) -> list[str]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    out: list[str] = []
    width = None
    try:
        for row in reader:
            if not row or all(not cell for cell in row):
                continue
            if width is None:
                width = len(row)
                if any(not cell.strip() for cell in row):
                    raise _ParseError("line 1: the header has an empty column name")
                continue
            if len(row) != width:
                raise _ParseError(f"line {reader.line_num}: {len(row)} columns, the header has {width}")
            record = "\x1f".join(row)
            _check_size(record, reader.line_num, limit)
            out.append(record)
    except csv.Error as err:
        raise _ParseError(f"line {reader.line_num}: malformed CSV ({str(err)[:60]})") from err
    if width is None:
        raise _ParseError("no header row")
    return out


def _python(text: str, limit: int) -> list[str]:
    try:
        tree = ast.parse(text)
    except SyntaxError as err:
        raise _ParseError(f"line {err.lineno}: Python syntax error ({(err.msg or '')[:80]})") from err
    except (RecursionError, MemoryError) as err:
        raise _ParseError("nested too deeply for the Python parser") from err
    except ValueError as err:
        raise _ParseError(f"not Python source ({str(err)[:80]})") from err
    lines = text.split("\n")
    out = []
    for node in tree.body:
        start, end = node.lineno, getattr(node, "end_lineno", None) or node.lineno
        first = start
        for dec in getattr(node, "decorator_list", ()):
            first = min(first, dec.lineno)
        record = "\n".join(line.rstrip() for line in lines[first - 1:end]).strip()
        if record:
            _check_size(record, first, limit)
            out.append(record)
    return out
