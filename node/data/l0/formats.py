"""A dataset's bytes as records, by format; any input gives records or an error, never an exception.

    text, markdown   non-empty lines, trailing ASCII whitespace stripped
    jsonl            one JSON object per non-empty line; record = its canonical JSON (sorted keys,
                     no spaces, UTF-8 rather than escapes); NaN, Infinity, integers of more than
                     MAX_INT_DIGITS digits, nesting deeper than MAX_JSON_DEPTH (counted by a
                     scan of the brackets outside strings, before the parser) and a string
                     holding an unpaired surrogate escape (`"\\ud800"`: not UTF-8) are errors
    csv              a header row (no empty column name), then rows of the header's width (blank
                     lines skipped); record = the row's cells as a canonical JSON array; strict
                     quoting (`csv.reader(strict=True)`); a field longer than `max_record_bytes`
                     characters is refused by the reader (its record would be too long anyway)
    text/x-python    `ast.parse` (Python 3.11 grammar) of at most MAX_PYTHON_BYTES, its warnings
                     ignored (under `-W error` an invalid escape would be a syntax error), a tree
                     deeper than MAX_PYTHON_DEPTH nodes an error; records = the source of each
                     top-level statement, decorators included, line endings "\\n" (lines split
                     at "\\r\\n", "\\r" and "\\n", as Python numbers them)

Every format is strict UTF-8: a byte-order mark is an error (not stripped: the CID covers the
bytes, and a BOM is invisible), and so is a NUL character (datasets are text). A record longer
than `max_record_bytes` (UTF-8 bytes; for jsonl, of the line and of its canonical record) is an
error.

Only ASCII whitespace is stripped, so the records do not depend on the Unicode tables of the
Python that runs the audit. Errors name a line (0: the whole file) and a reason, never the content
(it may hold personal data); Python's own syntax-error messages are kept with anything quoted
removed. An error is cut to MAX_ERROR UTF-8 bytes (the report's field is sized in bytes); the
audit also passes it through `pii.redact_text` before it goes in a report.

What parses does not depend on the calling process. The parsers recurse (json's scanner and
encoder, `ast.parse` building its tree), and Python's recursion limit counts the caller's stack
too, so jsonl, csv and text/x-python are parsed in a fresh thread of PARSE_STACK_BYTES of stack,
started and joined per call: it always begins at the same depth. On top of that, what is refused
for depth is decided by fixed bounds measured without recursion (MAX_JSON_DEPTH by a bracket scan
before `json.loads`, MAX_PYTHON_DEPTH by an iterative walk of the tree), both far below what the
parsers reach in that thread, so an interpreter with other recursion limits refuses the same
files. The process-wide settings a parse reads are set for it under one lock: the csv module's
field-size limit (to the record limit, then put back) and the warning filters (ignored, then put
back).
Residual risk: a process that lowers `sys.getrecursionlimit()` far below its default 1000 could
fail a file within the bounds; code outside this module that changes the csv field limit or the
warning filters while a parse runs is not held off by the lock (and `warnings.catch_warnings`
puts the filters back as they were when the parse began); parses in one process run one at a
time; Python's parser still decides what is a syntax error.
"""

from __future__ import annotations

import ast
import csv
import io
import itertools
import json
import math
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

FORMATS = ("text", "markdown", "jsonl", "csv", "text/x-python")
MAX_ERROR = 256
"""Longest error text in UTF-8 bytes (the report's `parse_error` is a Str(256), sized in bytes)."""
MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a JSONL record may have."""
MAX_PYTHON_DEPTH = 200
"""Deepest AST a text/x-python dataset may have, in nodes from the module (stdlib files stay
under 35; `1+1+...` of n terms is n deep). In the parse thread Python 3.11 builds trees over
2,000 deep before its recursion limit, so every tree within the bound is built everywhere. Walking
the tree for its depth adds about 40% to `ast.parse`'s time (0.5 s for 3 MB of stdlib source)."""
PARSE_STACK_BYTES = 64 << 20
"""Stack of the thread a parse runs in (see the module docstring)."""
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
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^][{}]")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_SURROGATE = re.compile("[\ud800-\udfff]")
_process_state = threading.Lock()
"""Held while a parse runs: it sets process-wide state (thread stack size, csv field-size limit,
warning filters) for the parse and puts it back."""


@dataclass(frozen=True, slots=True)
class Parsed:
    """The outcome of parsing: records, or why there are none."""

    records: list[str] = field(default_factory=list)
    """Normalised record texts, in file order (empty when `error` is set)."""
    error: str = ""
    """Empty when the content parsed; else why not (no content in it, at most MAX_ERROR UTF-8 bytes)."""


class _Refused(Exception):
    """Internal: the content does not parse; the message is safe to show."""


def parse_records(data: bytes, format: str, max_record_bytes: int) -> Parsed:
    """The records of `data` read as `format`, or the reason it does not parse."""
    try:
        text = decode_text(data)
        if format in ("text", "markdown"):
            records = _parse_lines(text, max_record_bytes)
        elif format == "jsonl":
            records = _in_parse_thread(_parse_jsonl, text, max_record_bytes)
        elif format == "csv":
            records = _in_parse_thread(_parse_csv, text, max_record_bytes)
        elif format == "text/x-python":
            records = _in_parse_thread(_parse_python, text, max_record_bytes)
        else:
            raise _Refused("unknown format")
    except _Refused as err:
        return Parsed([], error_text(str(err)))
    return Parsed(records)


def error_text(message: str) -> str:
    """`message` cut to MAX_ERROR UTF-8 bytes (at a character boundary)."""
    return message.encode()[:MAX_ERROR].decode("utf-8", errors="ignore")


def _in_parse_thread(parse: Callable[[str, int], list[str]], text: str, limit: int) -> list[str]:
    """`parse(text, limit)` run in a fresh thread of PARSE_STACK_BYTES, its exception re-raised."""
    outcome: list[list[str] | BaseException] = []

    def run() -> None:
        try:
            outcome.append(parse(text, limit))
        except BaseException as err:  # handed to the caller's thread
            outcome.append(err)

    with _process_state:
        previous = threading.stack_size(PARSE_STACK_BYTES)
        try:
            worker = threading.Thread(target=run, name="l0-parse", daemon=True)
            worker.start()
        finally:
            threading.stack_size(previous)
        worker.join()
    (result,) = outcome
    if isinstance(result, BaseException):
        raise result
    return result


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
        record = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        if "\\u" in line and _SURROGATE.search(record):
            raise _Refused(f"line {number}: a string holds an unpaired surrogate escape")
        _check_size(record, number, limit)    # canonical numbers can be longer: 1e15 is 1000000000000000.0
        out.append(record)
    return out


def _load_json(line: str, number: int) -> object:
    if _json_nesting(line) > MAX_JSON_DEPTH:
        raise _Refused(f"line {number}: nested deeper than {MAX_JSON_DEPTH}")
    try:
        obj = json.loads(line, parse_constant=_refuse_constant, parse_int=_parse_int, parse_float=_parse_float)
    except RecursionError:
        raise _Refused(f"line {number}: nested deeper than {MAX_JSON_DEPTH}") from None
    except ValueError as err:
        where = f" at column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise _Refused(f"line {number}: not JSON{where}") from None
    return obj


def _json_nesting(line: str) -> int:
    """Deepest nesting of the brackets of `line` outside strings, without recursion: the depth
    of the value when the line is JSON (0 when it has too few brackets to be too deep)."""
    if line.count("[") + line.count("{") <= MAX_JSON_DEPTH:
        return 0
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", line))
    return max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


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


def _json_kind(obj: object) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(obj), "number")


def _parse_csv(text: str, limit: int) -> list[str]:
    # The field-size limit is process-wide (the caller holds _process_state): a field of more
    # than `limit` characters makes a record of more than `limit` bytes, so the reader may stop
    # there; the limit is put back afterwards.
    previous = csv.field_size_limit(max(1, min(limit, 1 << 62)))
    try:
        return _read_csv(text, limit)
    finally:
        csv.field_size_limit(previous)


def _read_csv(text: str, limit: int) -> list[str]:
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
    except csv.Error as err:
        if "field larger than field limit" in str(err):
            raise _Refused(f"line {reader.line_num}: record longer than {limit} bytes") from None
        raise _Refused(f"line {reader.line_num}: malformed CSV quoting") from None
    if not width:
        raise _Refused("line 1: no header row")
    return out


def _parse_python(text: str, limit: int) -> list[str]:
    if len(text) * 4 > MAX_PYTHON_BYTES and len(text.encode()) > MAX_PYTHON_BYTES:
        raise _Refused(f"line 0: Python source larger than {MAX_PYTHON_BYTES} bytes")
    too_deep = f"line 0: Python source nested deeper than {MAX_PYTHON_DEPTH}"
    try:
        with warnings.catch_warnings():   # the caller holds _process_state
            warnings.simplefilter("ignore")
            tree = ast.parse(text, feature_version=PYTHON_VERSION)
    except SyntaxError as err:
        message = _QUOTED.sub("'…'", err.msg or "syntax error")[:120]
        raise _Refused(f"line {err.lineno or 0}: Python syntax error: {message}") from None
    except (RecursionError, MemoryError):
        raise _Refused(too_deep) from None
    except ValueError:
        raise _Refused("line 0: not Python source") from None
    if _ast_depth(tree) > MAX_PYTHON_DEPTH:
        raise _Refused(too_deep)
    lines = _LINE_ENDS.split(text)
    out = []
    for node in tree.body:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", ())])
        start_col = 0 if first < node.lineno else node.col_offset
        record = _segment(lines, first, start_col, node.end_lineno or node.lineno, node.end_col_offset)
        _check_size(record, first, limit)
        out.append(record)
    return out


def _ast_depth(tree: ast.AST) -> int:
    """Nodes on the longest path from `tree` down, iteratively (stops past MAX_PYTHON_DEPTH)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if depth > MAX_PYTHON_DEPTH:
                break
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _segment(lines: list[str], first: int, start_col: int, last: int, end_col: int | None) -> str:
    """Source from (first, start_col) to (last, end_col): lines 1-based, columns UTF-8 offsets."""
    if first == last:
        line = lines[first - 1].encode()
        return line[start_col:end_col].decode()
    head = lines[first - 1].encode()[start_col:].decode()
    tail = lines[last - 1].encode()[:end_col].decode()
    return "\n".join([head, *lines[first:last - 1], tail])
