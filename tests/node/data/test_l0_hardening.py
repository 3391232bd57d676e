"""node.data.l0: the hardening cases first found against the retired interim audit (node/data/audit),
kept where they fit l0's documented decisions (reserved example domains not counted, fixed IP
tables, `add` refusing a malformed signature): inputs that raised, limits counted in the wrong
unit, outcomes that depended on process state (csv's field limit, warning filters, the caller's
stack), compressed IPv6, error texts, and the index's handling of malformed signatures."""

from __future__ import annotations

import ast
import csv
import sys
import sysconfig
import threading
import time
import warnings
from pathlib import Path

import pytest

from chain import codec
from chain.params import AuditParams
from chain.payloads import AuditReport
from node.data.l0.audit import run_l0_audit
from node.data.l0.formats import (
    FORMATS,
    MAX_ERROR,
    MAX_JSON_DEPTH,
    MAX_PYTHON_DEPTH,
    error_text,
    parse_records,
)
from node.data.l0.minhash import NearDuplicateIndex
from node.data.l0.pii import find_pii, redact, summarise_pii

CID = "bafkreihardeningcid"
LIMIT = 1 << 20
PARAMS = AuditParams(max_record_bytes=LIMIT, minhash_perm=128, shingle_words=5, lsh_threshold_ppm=500_000,
                     toxicity_sample=2_000, toxicity_threshold_ppm=500_000)
CALLER_DEPTH = 800
"""Frames a test stacks up before parsing (the default recursion limit is 1000)."""


def audit(data: bytes, format: str = "text") -> AuditReport:
    return run_l0_audit(data, cid=CID, format=format, anchor_height=7, params=PARAMS, index=NearDuplicateIndex(PARAMS))


def parse(data: bytes, format: str, limit: int = LIMIT) -> tuple[list[str], str]:
    parsed = parse_records(data, format, limit)
    return parsed.records, parsed.error


def at_depth(frames: int, data: bytes, format: str) -> tuple[list[str], str]:
    """`parse` called with `frames` more frames on the stack."""
    return at_depth(frames - 1, data, format) if frames else parse(data, format)


def kinds(text: str) -> list[tuple[str, str]]:
    return [(f.kind, f.value) for f in find_pii(text)]


# --- 1. an unpaired surrogate escape is a parse error, not an exception -----------------------

@pytest.mark.parametrize("line", [b'{"a": "\\ud800"}', b'{"\\udfff": 1}', b'{"a": ["x\\ud83dy"]}'])
def test_jsonl_unpaired_surrogate_is_a_parse_error(line: bytes) -> None:
    assert parse(b'{"ok": 1}\n' + line + b"\n", "jsonl") == (
        [], "line 2: a string holds an unpaired surrogate escape")
    report = audit(line, "jsonl")
    assert report.parse_error == "line 1: a string holds an unpaired surrogate escape" and report.records == 0
    assert codec.decode(AuditReport, codec.encode(report)) == report


def test_jsonl_paired_surrogates_are_one_character() -> None:
    assert parse(b'{"a": "\\ud83d\\ude00"}\n', "jsonl") == (['{"a":"\U0001f600"}'], "")


# --- 2. the record limit is in UTF-8 bytes ----------------------------------------------------

def test_record_limit_counts_bytes_not_characters() -> None:
    wide = "é" * 600_000   # 600k characters, 1.2 MB
    too_long = f"line 1: record longer than {LIMIT} bytes"
    assert parse(wide.encode(), "text") == ([], too_long)
    assert parse(f'{{"a": "{wide}"}}'.encode(), "jsonl") == ([], too_long)
    assert parse(f"a\n{wide}\n".encode(), "csv") == ([], f"line 2: record longer than {LIMIT} bytes")
    assert parse(f"x = '{wide}'\n".encode(), "text/x-python") == ([], too_long)
    assert parse(("é" * 50).encode(), "text", limit=100)[1] == ""


def test_jsonl_canonical_record_is_held_to_the_limit() -> None:
    # 1e15 is written back as 1000000000000000.0: the record is longer than its line.
    line = b'{"a": [' + b",".join([b"1e15"] * 20) + b"]}"
    assert len(line) <= 200
    assert parse(line, "jsonl", limit=200) == ([], "line 1: record longer than 200 bytes")
    assert parse(line, "jsonl", limit=1_000)[1] == ""


# --- 3. csv fields past the csv module's default limit, whatever the process set --------------

def test_csv_field_longer_than_the_csv_default_within_the_limit() -> None:
    data = b"a,b\n" + b"x" * 200_000 + b",y\n"
    assert parse(data, "csv") == ([f'["{"x" * 200_000}","y"]'], "")
    assert parse(data, "csv", 100_000) == ([], "line 2: record longer than 100000 bytes")


def test_csv_outcome_ignores_and_keeps_the_process_field_limit() -> None:
    data = b"a,b\n" + b"x" * 5_000 + b",y\n"
    previous = csv.field_size_limit(10)
    try:
        assert parse(data, "csv")[1] == ""
        assert csv.field_size_limit() == 10
    finally:
        csv.field_size_limit(previous)
    assert parse(data, "csv") == parse(data, "csv")
    assert csv.field_size_limit() == previous


def test_csv_parses_agree_across_threads() -> None:
    small, big = b"a\n" + b"x" * 300 + b"\n", b"a\n" + b"y" * 200_000 + b"\n"
    expected = {100: parse(small, "csv", 100), LIMIT: parse(big, "csv")}
    got: list[bool] = []

    def work(data: bytes, limit: int) -> None:
        for _ in range(20):
            got.append(parse(data, "csv", limit) == expected[limit])

    workers = [threading.Thread(target=work, args=(d, lim)) for d, lim in [(small, 100), (big, LIMIT)] * 3]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(got) == 120 and all(got)
    assert expected[100][1] == "line 2: record longer than 100 bytes" and expected[LIMIT][1] == ""


# --- 4. Python's warnings do not decide what parses -------------------------------------------

def test_python_parse_ignores_the_warning_filters() -> None:
    source = b'x = "\\d"\n'
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        under_error = parse(source, "text/x-python")
        assert warnings.filters[0][0] == "error"   # put back after the parse
    assert under_error == parse(source, "text/x-python") == (['x = "\\d"'], "")


# --- 5. Python line ends are Python's -----------------------------------------------------------

def test_python_carriage_returns_are_line_ends() -> None:
    assert parse(b"a = 1\rb = 2\r\nc = 3\n", "text/x-python") == (["a = 1", "b = 2", "c = 3"], "")
    assert parse(b"def f():\r    return 1\rg = 2\r", "text/x-python") == (["def f():\n    return 1", "g = 2"], "")


def test_python_record_keeps_decorators_and_spans_lines() -> None:
    source = b"import os\n\n@dec\ndef f(\n    x,\n):\n    return x\n\nclass A:\n    pass\n"
    assert parse(source, "text/x-python") == (
        ["import os", "@dec\ndef f(\n    x,\n):\n    return x", "class A:\n    pass"], "")


@pytest.mark.parametrize("name", ["textwrap.py", "string.py", "json/__init__.py", "dataclasses.py"])
def test_stdlib_python_one_record_per_top_level_statement(name: str) -> None:
    source = (Path(sysconfig.get_paths()["stdlib"]) / name).read_bytes()
    records, error = parse(source, "text/x-python")
    body = ast.parse(source).body
    assert error == "" and len(records) == len(body)
    for node, record in zip(body, records, strict=True):
        head = ast.get_source_segment(source.decode(), node).split("\n")[0]
        assert record.startswith("@") or record.startswith(head), head


# --- 6. and the open hole: depth limits do not depend on the caller's stack ---------------------

def test_jsonl_nesting_refused_whatever_the_callers_stack() -> None:
    deep = b'{"a":' + b"[" * 900 + b"]" * 900 + b"}\n"
    fine = b'{"a":' + b"[" * (MAX_JSON_DEPTH - 1) + b'"[[[["' + b"]" * (MAX_JSON_DEPTH - 1) + b"}\n"
    refused = ([], f"line 1: nested deeper than {MAX_JSON_DEPTH}")
    assert at_depth(0, deep, "jsonl") == at_depth(CALLER_DEPTH, deep, "jsonl") == refused
    assert at_depth(0, fine, "jsonl") == at_depth(CALLER_DEPTH, fine, "jsonl")
    assert at_depth(0, fine, "jsonl")[1] == ""
    one_more = b'{"a":' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}\n"
    assert parse(one_more, "jsonl") == refused
    brackets_in_strings = b'{"a": "' + b"[{" * 500 + b'"}\n'
    assert parse(brackets_in_strings, "jsonl")[1] == ""


def test_python_depth_bound_whatever_the_callers_stack() -> None:
    refused = ([], f"line 0: Python source nested deeper than {MAX_PYTHON_DEPTH}")
    deep = b"1" + b"+1" * 899           # ~900 levels: parsed or not by the stack it ran on, before
    assert at_depth(0, deep, "text/x-python") == at_depth(CALLER_DEPTH, deep, "text/x-python") == refused
    within = b"x = " + b"1" + b"+1" * (MAX_PYTHON_DEPTH - 10) + b"\n"
    assert at_depth(0, within, "text/x-python") == at_depth(CALLER_DEPTH, within, "text/x-python")
    assert at_depth(0, within, "text/x-python")[1] == ""
    over = b"x = " + b"1" + b"+1" * MAX_PYTHON_DEPTH + b"\n"
    assert parse(over, "text/x-python") == refused
    assert parse(b"-" * 200_000 + b"1", "text/x-python")[1].startswith("line ")


def test_python_depth_bound_whatever_the_recursion_limit() -> None:
    deep = b"1" + b"+1" * 4_000
    before = parse(deep, "text/x-python")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        assert parse(deep, "text/x-python") == before
    finally:
        sys.setrecursionlimit(limit)
    assert before == ([], f"line 0: Python source nested deeper than {MAX_PYTHON_DEPTH}")


# --- 7. compressed IPv6 found; Python slices not -------------------------------------------------

def test_compressed_ipv6_found() -> None:
    assert kinds("dns 2001:4860:4860::8888 and [2a00:1450:4001:81b::200e]:443") == [
        ("ip", "2001:4860:4860::8888"), ("ip", "2a00:1450:4001:81b::200e")]
    assert kinds("full 2001:4860:4860:0:0:0:0:8888") == [("ip", "2001:4860:4860::8888")]


def test_ip_fixed_tables_private_and_documentation_not_counted() -> None:
    text = ("dns 8.8.8.8 and 1.1.1.1; lan 10.0.0.1 192.168.1.1 172.16.5.4 127.0.0.1 0.0.0.0 169.254.1.1 "
            "doc 192.0.2.1; v6 2001:4860:4860::8888 fd00:1:2::3 fe80::1 ::1 2001:db8::1")
    assert kinds(text) == [("ip", "8.8.8.8"), ("ip", "1.1.1.1"), ("ip", "2001:4860:4860::8888")]


def test_python_slices_and_versions_are_not_addresses() -> None:
    assert kinds("x[1::2], y[::3], z[10::20], w[200::3], 3.11.7.1.2, 999.1.1.1, dead:beef, 12:30:45") == []


# --- 8. error texts: no content, at most MAX_ERROR UTF-8 bytes ---------------------------------

SECRETS = ["alice.smith@mail.com", "AKIAIOSFODNN7EXAMPLE"]


@pytest.mark.parametrize("data, format", [
    (b"a,b\nalice.smith@mail.com,1,AKIAIOSFODNN7EXAMPLE\n", "csv"),
    (b'{"a": 1}\n["alice.smith@mail.com", "AKIAIOSFODNN7EXAMPLE"]\n', "jsonl"),
    (b'{"mail": "alice.smith@mail.com" AKIAIOSFODNN7EXAMPLE}\n', "jsonl"),
    (b"x = 'alice.smith@mail.com' AKIAIOSFODNN7EXAMPLE\n", "text/x-python"),
    (b"x = alice.smith@mail.com +\n", "text/x-python"),
    (b"mail alice.smith@mail.com \xff AKIAIOSFODNN7EXAMPLE\n", "text"),
])
def test_parse_error_holds_no_raw_value(data: bytes, format: str) -> None:
    report = audit(data, format)
    assert report.parse_error
    for secret in [*SECRETS, "alice"]:
        assert secret not in report.parse_error and secret.encode() not in codec.encode(report)


def test_unknown_format_does_not_echo_the_format() -> None:
    assert parse(b"x", "alice.smith@mail.com") == ([], "unknown format")
    assert audit(b"x\n", "pdf").parse_error == "unknown format"


def test_error_text_is_cut_to_utf8_bytes() -> None:
    cut = error_text("line 1: " + "é" * 300)
    assert len(cut.encode()) <= MAX_ERROR and cut.startswith("line 1: é") and len(cut.encode()) >= MAX_ERROR - 1
    assert error_text("x" * 1_000) == "x" * MAX_ERROR


def test_report_error_is_redacted_then_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    from node.data.l0 import audit as audit_module
    from node.data.l0.formats import Parsed

    message = "line 1: Python syntax error: alice.smith@mail.com " + "é" * 300
    monkeypatch.setattr(audit_module, "parse_records", lambda data, format, limit: Parsed([], message))
    error = audit(b"x\n", "text/x-python").parse_error
    assert error.startswith("line 1: Python syntax error: [REDACTED:email] é") and "alice" not in error
    assert len(error.encode()) <= MAX_ERROR


@pytest.mark.parametrize("format", FORMATS)
def test_every_error_fits_its_wire_field(format: str) -> None:
    for data in [b"\xff", b"(" * 10_000, b"{" * 10_000, b'a,b\n"' + "é".encode() * 999, "x = '…\n".encode() * 50,
                 "“".encode() * 500]:
        error = parse(data, format)[1]
        assert len(error.encode()) <= MAX_ERROR, (format, data[:20])


# --- 8, continued: findings are not quadratic; the index and malformed signatures --------------------------

def test_many_findings_counted_in_linear_time() -> None:
    text = "\n".join(f"user{i}@mail.com 4111 1111 1111 1111" for i in range(20_000))
    start = time.perf_counter()
    summary = summarise_pii(find_pii(text), CID)
    assert time.perf_counter() - start < 20
    assert {f.kind: f.count for f in summary} == {"card": 20_000, "email": 20_000}


def test_index_refuses_malformed_signatures_and_query_ignores_them() -> None:
    index = NearDuplicateIndex(PARAMS)
    for bad in [(1, 2, 3), (1 << 32,) * PARAMS.minhash_perm, (-1,) * PARAMS.minhash_perm]:
        with pytest.raises(ValueError):
            index.add("bad", bad)
    assert len(index) == 0
    index.add("good", (7,) * PARAMS.minhash_perm)
    for bad in [(1 << 40,) * PARAMS.minhash_perm, (-1,) * PARAMS.minhash_perm, (7,) * 3]:
        assert index.query(bad) == ()
    assert [n.cid for n in index.query((7,) * PARAMS.minhash_perm)] == ["good"]


# --- personal data kept in the report only as counts and hashes --------------------------------

REPORT_SECRETS = ["alice.smith@mail.com", "(212) 555-0123", "8.8.8.8", "4111 1111 1111 1111",
                  "GB82 WEST 1234 5698 7654 32", "123-45-6789", "AKIAIOSFODNN7EXAMPLE",
                  "-----BEGIN RSA PRIVATE KEY-----"]


def test_report_holds_no_raw_value() -> None:
    data = "\n".join(f"record {i}: {s} here" for i, s in enumerate(REPORT_SECRETS)).encode()
    report = audit(data)
    assert sorted(f.kind for f in report.pii) == ["api-key", "card", "email", "iban", "ip", "national-id",
                                                    "phone", "private-key"]
    assert sum(f.count for f in report.pii) == len(REPORT_SECRETS)
    encoded = codec.encode(report)
    for secret in REPORT_SECRETS:
        for form in {secret, secret.replace(" ", ""), secret.lower()}:
            assert form.encode() not in encoded, form
    out = redact(data, "text")
    assert all(s.encode() not in out for s in REPORT_SECRETS) and out.count(b"[REDACTED:") == len(REPORT_SECRETS)
