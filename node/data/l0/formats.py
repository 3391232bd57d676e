"""A dataset's bytes as records, by format; any input gives records or an error, never an exception.

    text, markdown   non-empty lines, trailing ASCII whitespace stripped
    jsonl            one JSON object per non-empty line; record = its canonical JSON (sorted keys,
                     no spaces, UTF-8 rather than escapes); NaN, Infinity, integers of more than
                     MAX_INT_DIGITS digits and nesting deeper than MAX_JSON_DEPTH are errors
    csv              a header row (no empty column name), then rows of the header's width (blank
                     lines skipped); record = the row's cells as a canonical JSON array; strict
                     quoting (`csv.reader(strict=True)`)
    text/x-python    `ast.parse` (Python 3.11 grammar) of at most MAX_PYTHON_BYTES; records = the
                     source of each top-level statement, decorators included, line endings "\\n"

Every format is strict UTF-8: a byte-order mark is an error (not stripped: the CID covers the
bytes, and a BOM is invisible), and so is a NUL character (datasets are text). A record longer
than `max_record_bytes` (UTF-8) is an error.

Only ASCII whitespace is stripped, so the records do not depend on the Unicode tables of the
Python that runs the audit. Errors name a line (0: the whole file) and a reason, never the content
(it may hold personal data); Python's own syntax-error messages are kept with anything quoted
removed.
Residual risk: Python's parser decides what parses, and a statement nested so deeply that
building its AST exhausts the recursion limit (a few hundred levels, depending on the stack)
is refused by one interpreter and could pass on another with a higher limit.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import math
import re
from dataclasses import dataclass, field

FORMATS = ("text", "markdown", "jsonl", "csv", "text/x-python")
MAX_ERROR = 256
"""Longest error text (the report's `parse_error` is a Str(256))."""
MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a JSONL record may have."""
MAX_INT_DIGITS = 1_000
"""Longest integer literal in a JSONL record (Python's own limit is a process setting)."""
MAX_PYTHON_BYTES = 16 << 20
"""Largest text/x-python dataset: `ast.parse` holds about 90 bytes of tree per byte of source
(10 MB of stdlib code peaks near 900 MB), so a larger file is refused rather than risk a
validator's memory."""
PYTHON_VERSION = (3, 11)
"""The grammar `ast.parse` is asked for (the project's oldest Python)."""

_BOM = b"\xef\xbb\xbf"
_WS = " \t\r\x0b\x0c"
_NEWLINE = "\n"
_LINE_ENDS = re.compile(r"\r\n|\r|\n")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


@dataclass(frozen=True, slots=True)
class Parsed:
    """The outcome of parsing: records, or why there are none."""

    records: list[str] = field(default_factory=list)
    """Normalised record texts, in file order (empty when `error` is set)."""
    error: str = ""
    """Empty when the content parsed; else why not (no content in it, at most MAX_ERROR chars)."""


class _Refused(Exception):
    """Internal: the content does not parse; the message is safe to show."""


def parse_records(data: bytes, format: str, max_record_bytes: int) -> Parsed:
    """The records of `data` read as `format`, or the reason it does not parse."""
    try:
        text = decode_text(data)
        if format in ("text", "markdown"):
            records = _parse_lines(text, max_record_bytes)
        elif format == "jsonl":
            records = _parse_jsonl(text, max_record_bytes)
        elif format == "csv":
            records = _parse_csv(text, max_record_bytes)
        elif format == "text/x-python":
            records = _parse_python(text, max_record_bytes)
        else:
            raise _Refused("unknown format")
    except _Refused as err:
        return Parsed([], str(err)[:MAX_ERROR])
    return Parsed(records)


def decode_text(data: bytes) -> str:
    """`data` as strict UTF-8 without BOM or NUL; raises _Refused naming the line."""
    if data.startswith(_BOM):
        raise _Refused("line 1: starts with a UTF-8 byte-order mark")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise _Refused(f"line {line}: invalid UTF-8") from None
    nul = text.find("\x00")
    if nul >= 0:
        raise _Refused(f"line {text.count(_NEWLINE, 0, nul) + 1}: NUL character")
    return text


def _check_size(record: str, line: int, limit: int) -> None:
    if len(record) * 4 > limit and len(record.encode()) > limit:
        raise _Refused(f"line {line}: record longer than {limit} bytes")


def _parse_lines(text: str, limit: int) -> list[str]:
    records = [line for line in (line.rstrip(_WS) for line in text.split("\n")) if line]
    if records and max(map(len, records)) * 4 > limit:      # only then can a record be too long
        for number, line in enumerate(text.split("\n"), 1):
            _check_size(line.rstrip(_WS), number, limit)
    return records


def _parse_jsonl(text: str, limit: int) -> list[str]:
    out = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip(_WS):
            continue
        _check_size(line, number, limit)
        obj = _load_json(line, number)
        if not isinstance(obj, dict):
            raise _Refused(f"line {number}: a JSON {_json_kind(obj)}, not an object")
        out.append(json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")))
    return out


def _load_json(line: str, number: int) -> object:
    try:
        obj = json.loads(line, parse_constant=_refuse_constant, parse_int=_parse_int, parse_float=_parse_float)
    except RecursionError:
        raise _Refused(f"line {number}: nested deeper than {MAX_JSON_DEPTH}") from None
    except ValueError as err:
        where = f" at column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise _Refused(f"line {number}: not JSON{where}") from None
    if _json_depth(obj) > MAX_JSON_DEPTH:
        raise _Refused(f"line {number}: nested deeper than {MAX_JSON_DEPTH}")
    return obj


def _refuse_constant(name: str) -> object:
    raise ValueError("NaN and Infinity are not JSON")


def _parse_int(digits: str) -> int:
    if len(digits) > MAX_INT_DIGITS:
        raise ValueError("integer too long")
    return int(digits)


def _parse_float(digits: str) -> float:
    if len(digits) > MAX_INT_DIGITS:
        raise ValueError("number too long")
    value = float(digits)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _json_depth(obj: object) -> int:
    """Nesting depth of a parsed JSON value, iteratively (1 for a flat object)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_JSON_DEPTH:
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _json_kind(obj: object) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(obj), "number")


def _parse_csv(text: str, limit: int) -> list[str]:
    # The field-size limit is process-wide: only ever raise it, and enforce `limit` here, so the
    # outcome does not depend on it.
    if csv.field_size_limit() < 1 << 31:
        csv.field_size_limit(1 << 31)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    out: list[str] = []
    width = 0
    try:
        for row in reader:
            if not any(row):
                continue
            if not width:
                if any(not cell.strip(_WS) for cell in row):
                    raise _Refused(f"line {reader.line_num}: the header has an empty column name")
                width = len(row)
                continue
            if len(row) != width:
                raise _Refused(f"line {reader.line_num}: {len(row)} columns, the header has {width}")
            record = json.dumps(row, ensure_ascii=False, separators=(",", ":"))
            _check_size(record, reader.line_num, limit)
            out.append(record)
    except csv.Error:
        raise _Refused(f"line {reader.line_num}: malformed CSV quoting") from None
    if not width:
        raise _Refused("line 1: no header row")
    return out


def _parse_python(text: str, limit: int) -> list[str]:
    if len(text) * 4 > MAX_PYTHON_BYTES and len(text.encode()) > MAX_PYTHON_BYTES:
        raise _Refused(f"line 0: Python source larger than {MAX_PYTHON_BYTES} bytes")
    try:
        tree = ast.parse(text, feature_version=PYTHON_VERSION)
    except SyntaxError as err:
        message = _QUOTED.sub("'…'", err.msg or "syntax error")[:120]
        raise _Refused(f"line {err.lineno or 0}: Python syntax error: {message}") from None
    except (RecursionError, MemoryError):
        raise _Refused("line 0: Python source nested too deeply") from None
    except ValueError:
        raise _Refused("line 0: not Python source") from None
    lines = _LINE_ENDS.split(text)
    out = []
    for node in tree.body:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", ())])
        start_col = 0 if first < node.lineno else node.col_offset
        record = _segment(lines, first, start_col, node.end_lineno or node.lineno, node.end_col_offset)
        _check_size(record, first, limit)
        out.append(record)
    return out


def _segment(lines: list[str], first: int, start_col: int, last: int, end_col: int | None) -> str:
    """Source from (first, start_col) to (last, end_col): lines 1-based, columns UTF-8 offsets."""
    if first == last:
        line = lines[first - 1].encode()
        return line[start_col:end_col].decode()
    head = lines[first - 1].encode()[start_col:].decode()
    tail = lines[last - 1].encode()[:end_col].decode()
    return "\n".join([head, *lines[first:last - 1], tail])
