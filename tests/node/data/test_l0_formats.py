"""node.data.l0.formats: records by format, and errors that never carry content."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from node.data.l0.formats import FORMATS, MAX_ERROR, MAX_JSON_DEPTH, MAX_PYTHON_BYTES, parse_records

LIMIT = 1 << 20


def parse(data: bytes, format: str, limit: int = LIMIT) -> tuple[list[str], str]:
    parsed = parse_records(data, format, limit)
    return parsed.records, parsed.error


def test_text_records_are_non_empty_lines_right_stripped() -> None:
    records, error = parse(b"first line  \r\n\n   \n\tsecond\t\nthird", "text")
    assert error == ""
    assert records == ["first line", "\tsecond", "third"]
    assert parse(b"# Title\n\n- item\n", "markdown") == (["# Title", "- item"], "")


def test_jsonl_records_are_canonical_objects() -> None:
    records, error = parse('{"b": 1, "a": "é"}\n\n{"z":[1, 2.5, null]}\n'.encode(), "jsonl")
    assert error == ""
    assert records == ['{"a":"é","b":1}', '{"z":[1,2.5,null]}']


@pytest.mark.parametrize("line, reason", [
    (b"[1, 2]", "a JSON array, not an object"),
    (b'"text"', "a JSON string, not an object"),
    (b"{not json}", "not JSON"),
    (b'{"x": NaN}', "not JSON"),
    (b'{"x": 1e999}', "not JSON"),
    (b'{"x": ' + b"1" * 5000 + b"}", "not JSON"),
])
def test_invalid_jsonl_line(line: bytes, reason: str) -> None:
    records, error = parse(b'{"ok": 1}\n' + line + b"\n", "jsonl")
    assert records == []
    assert error.startswith("line 2: ") and reason in error


def test_invalid_jsonl_nesting_caught_at_any_depth() -> None:
    for depth in (MAX_JSON_DEPTH + 1, 500, 100_000):
        line = b'{"a":' * depth + b"1" + b"}" * depth
        assert parse(line, "jsonl") == ([], f"line 1: nested deeper than {MAX_JSON_DEPTH}")
    ok = b'{"a":' * MAX_JSON_DEPTH + b"1" + b"}" * MAX_JSON_DEPTH
    assert parse(ok, "jsonl")[1] == ""


def test_csv_rows_of_the_header_width() -> None:
    records, error = parse(b'name,age\r\n"Smith, J",42\r\n\r\nLee,"7\n8"\r\n', "csv")
    assert error == ""
    assert records == ['["Smith, J","42"]', '["Lee","7\\n8"]']


def test_invalid_csv_inconsistent_columns() -> None:
    records, error = parse(b"a,b,c\n1,2,3\n4,5\n", "csv")
    assert (records, error) == ([], "line 3: 2 columns, the header has 3")
    assert parse(b"", "csv")[1] == "line 1: no header row"
    assert parse(b'a,b\n"x"y,2\n', "csv")[1] == "line 2: malformed CSV quoting"


def test_python_records_are_top_level_statements() -> None:
    source = b"import os\r\nx = 1; y = 2\n\n@dataclass\nclass A:\n    a: int = 0  # note\n\ndef f():\n    return 1\n"
    records, error = parse(source, "text/x-python")
    assert error == ""
    assert records == ["import os", "x = 1", "y = 2", "@dataclass\nclass A:\n    a: int = 0", "def f():\n    return 1"]


def test_python_stdlib_files_parse() -> None:
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = [p for p in sorted(root.glob("*.py")) if p.stat().st_size < 200_000][:60]
    assert len(paths) >= 30
    for path in paths:
        records, error = parse(path.read_bytes(), "text/x-python")
        assert error == "" and records, path


@pytest.mark.parametrize("source", [b"(" * 300 + b")" * 300, b"1" + b"+1" * 200_000, b"-" * 200_000 + b"1",
                                    b"def f(:\n    pass\n"])
def test_invalid_python_is_an_error_not_an_exception(source: bytes) -> None:
    records, error = parse(source, "text/x-python")
    assert records == [] and error.startswith("line ")


def test_python_syntax_error_does_not_quote_the_source() -> None:
    secret = "alice@example.org"
    _, error = parse(f"x = '{secret}\n".encode(), "text/x-python")
    assert error.startswith("line 1: Python syntax error") and secret not in error
    _, error = parse(b"print 'secret-value-123'\n", "text/x-python")
    assert "secret-value-123" not in error


@pytest.mark.parametrize("format", FORMATS)
def test_invalid_encoding_named_by_line_without_bytes(format: str) -> None:
    assert parse(b"ok\nstill ok\nbad \xff\xfe here\n", format) == ([], "line 3: invalid UTF-8")
    assert parse(b"\xef\xbb\xbfhello\n", format) == ([], "line 1: starts with a UTF-8 byte-order mark")
    assert parse(b"a\nb\x00c\n", format) == ([], "line 2: NUL character")
    assert parse(b"\xed\xa0\x80\n", format)[1] == "line 1: invalid UTF-8"   # an encoded surrogate


def test_invalid_record_too_long() -> None:
    assert parse(b"short\n" + b"x" * 101 + b"\n", "text", limit=100) == ([], "line 2: record longer than 100 bytes")
    assert parse(("é" * 60).encode(), "text", limit=100)[1] == "line 1: record longer than 100 bytes"
    assert parse(("é" * 50).encode(), "text", limit=100)[1] == ""


def test_invalid_format_named() -> None:
    assert parse(b"x", "pdf") == ([], "unknown format")


def test_error_text_is_bounded() -> None:
    for data, format in [(b"x" * 10_000, "text/x-python"), (b"{" * 10_000, "jsonl"), (b"a,b\n" + b'"' * 999, "csv")]:
        assert len(parse(data, format)[1]) <= MAX_ERROR


def test_invalid_python_too_large() -> None:
    source = b"x = 1\n" * (MAX_PYTHON_BYTES // 6 + 1)
    assert parse(source, "text/x-python") == ([], f"line 0: Python source larger than {MAX_PYTHON_BYTES} bytes")
