"""Parsing a dataset into records, by format; never raises on any input (the error is a field).

    text, markdown   strict UTF-8 (a leading BOM is refused), records = non-empty lines, right-stripped
    jsonl            one JSON object a non-empty line; record = its canonical JSON (sorted keys)
    csv              a header row, then rows of the header's width; record = the row, canonical
    text/x-python    `ast.parse`; records = the source of each top-level statement

Errors name a line and a reason, never the content (it may hold personal data); an error text
is also passed through `pii.redact` and cut to MAX_ERROR UTF-8 bytes.

What may parse does not depend on the process: JSON nested deeper than MAX_JSON_DEPTH is refused
before the parser (whose recursion limit counts the caller's stack too), the CSV field limit is
set to the record limit, and the Python parser's warnings are ignored (under `-W error` an
invalid escape would otherwise be a syntax error).
"""

from __future__ import annotations

import ast
import csv
import io
import itertools
import json
import re
import threading
import warnings
from dataclasses import dataclass, field

from node.data.audit.pii import redact

FORMATS = ("text", "markdown", "jsonl", "csv", "text/x-python")
MAX_ERROR = 256
"""UTF-8 bytes of an error text (`AuditReport.parse_error`)."""
MAX_JSON_DEPTH = 256
"""Deepest nesting of arrays and objects in a JSON line."""
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_PY_NEWLINE = re.compile(r"\r\n|\r|\n")
"""Line ends as Python's tokenizer reads them (its line numbers count these)."""
_process_state = threading.Lock()
"""Held while the process-wide csv field limit and warning filters are changed."""


@dataclass(frozen=True, slots=True)
class Parsed:
    records: list[str] = field(default_factory=list)
    """Normalised record texts, in file order."""
    error: str = ""
    """Empty when the content parsed; else why not (no content in it)."""


def _fail(message: str) -> Parsed:
    cut = redact(message).encode()[:MAX_ERROR].decode("utf-8", errors="ignore")
    return Parsed([], cut)


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
        if _json_depth(line) > MAX_JSON_DEPTH:
            raise _ParseError(f"line {number}: nested too deeply (more than {MAX_JSON_DEPTH} levels)")
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
            record = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
            record.encode()
        except UnicodeEncodeError as err:
            raise _ParseError(f"line {number}: a string holds an unpaired surrogate escape") from err
        except (RecursionError, ValueError) as err:
            raise _ParseError(f"line {number}: cannot be written back canonically") from err
        out.append(record)
    return out


def _json_depth(line: str) -> int:
    """An upper bound of the nesting of a JSON line: exact when it is JSON (brackets in strings
    do not count), else at least what the parser would reach before its error."""
    if line.count("[") + line.count("{") <= MAX_JSON_DEPTH:
        return 0
    brackets = re.sub(r"[^][{}]", "", _JSON_STRING.sub("", line))
    return max(itertools.accumulate(1 if c in "[{" else -1 for c in brackets), default=0)


def _csv(text: str, limit: int) -> list[str]:
    with _process_state:
        previous = csv.field_size_limit(limit)  # a longer field makes a longer record
        try:
            return _csv_rows(text, limit)
        finally:
            csv.field_size_limit(previous)


def _csv_rows(text: str, limit: int) -> list[str]:
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
        if "field larger than field limit" in str(err):
            raise _ParseError(f"line {reader.line_num}: record longer than {limit} bytes") from err
        raise _ParseError(f"line {reader.line_num}: malformed CSV ({str(err)[:60]})") from err
    if width is None:
        raise _ParseError("no header row")
    return out


def _python(text: str, limit: int) -> list[str]:
    try:
        with _process_state, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(text)
    except SyntaxError as err:
        raise _ParseError(f"line {err.lineno}: Python syntax error ({redact(err.msg or '')[:80]})") from err
    except (RecursionError, MemoryError) as err:
        raise _ParseError("nested too deeply for the Python parser") from err
    except ValueError as err:
        raise _ParseError(f"not Python source ({str(err)[:80]})") from err
    lines = _PY_NEWLINE.split(text)
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
