"""node.data.l0.audit: the whole report, deterministic, never raising, never carrying a PII value."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chain import codec
from chain.params import AuditParams
from chain.payloads import AuditReport
from node.data.l0.audit import AUDIT_VERSION, compute_signature, count_duplicate_records, run_l0_audit
from node.data.l0.formats import FORMATS
from node.data.l0.minhash import NearDuplicateIndex
from node.data.l0.toxicity import count_toxic, is_flagged, sample_indices

CID = "bafkreiaudittestcid"
PARAMS = AuditParams(max_record_bytes=1 << 20, minhash_perm=128, shingle_words=5, lsh_threshold_ppm=500_000,
                     toxicity_sample=2_000, toxicity_threshold_ppm=500_000)
PII_VALUES = ["alice@mail.com", "4111 1111 1111 1111", "+1 415 555 2671", "8.8.8.8", "123-45-6789",
              "AKIAIOSFODNN7EXAMPLE", "DE89 3704 0044 0532 0130 00"]
SAMPLE = ("\n".join(f"line {i}: the quick brown fox number {i % 40} jumps over the lazy dog" for i in range(300))
          + "\n" + "\n".join(f"contact {v} please" for v in PII_VALUES) + "\nyou are a stupid idiot\n").encode()


def audit(data: bytes, format: str = "text", index: NearDuplicateIndex | None = None, cid: str = CID) -> AuditReport:
    return run_l0_audit(data, cid=cid, format=format, anchor_height=7, params=PARAMS,
                        index=index if index is not None else NearDuplicateIndex(PARAMS))


def test_report_figures() -> None:
    stages = []
    report = run_l0_audit(SAMPLE, cid=CID, format="text", anchor_height=7, params=PARAMS,
                          index=NearDuplicateIndex(PARAMS), progress=lambda s, f: stages.append((s, f)))
    assert (report.cid, report.size, report.auditor, report.format, report.anchor_height) == (
        CID, len(SAMPLE), AUDIT_VERSION, "text", 7)
    assert report.records == 308 and report.parse_error == ""
    assert {f.kind: f.count for f in report.pii} == {"api-key": 1, "card": 1, "email": 1, "iban": 1, "ip": 1,
                                                     "national-id": 1, "phone": 1}
    assert (report.toxicity_sampled, report.toxicity_flagged) == (308, 1)
    assert report.duplicate_records == 0 and report.near_duplicates == ()
    assert len(report.minhash) == 128 and report.minhash == compute_signature(SAMPLE, "text", PARAMS)
    assert [s for s, _ in stages] == ["parse", "pii", "toxicity", "duplicates", "minhash", "near-duplicates", "done"]
    assert [f for _, f in stages] == sorted(f for _, f in stages)


def test_no_pii_value_in_the_report() -> None:
    encoded = codec.encode(audit(SAMPLE))
    for value in PII_VALUES:
        for form in (value, value.replace(" ", ""), value.replace(" ", "").replace("+", "")):
            assert form.encode() not in encoded


def test_duplicates_are_records_repeating_an_earlier_one() -> None:
    assert count_duplicate_records(["a", "b", "a", "a", "c", "b"]) == 3
    assert audit(b"x y\nz\nx y\n\nx y  \n").duplicate_records == 2


def test_invalid_content_gets_a_report_with_only_the_error() -> None:
    report = audit(b"name,age\nalice@mail.com,1,2\n", "csv")
    assert report.parse_error == "line 2: 3 columns, the header has 2"
    assert (report.records, report.pii, report.toxicity_sampled, report.minhash) == (0, (), 0, ())
    assert b"alice" not in codec.encode(report)
    assert codec.decode(AuditReport, codec.encode(report)) == report


def test_toxicity_sample_is_seeded_by_the_cid() -> None:
    picked = sample_indices(10_000, CID, 50)
    assert picked == sorted(set(picked)) and len(picked) == 50 and picked[-1] < 10_000
    assert picked == sample_indices(10_000, CID, 50) != sample_indices(10_000, "bafkreiother", 50)
    assert sample_indices(5, CID, 50) == [0, 1, 2, 3, 4]
    assert sorted(sample_indices(20, CID, 20)) == list(range(20))
    assert count_toxic(["you are a wonderful person", "you are a stupid idiot"], CID, 10, 500_000) == (2, 1)


def test_toxicity_threshold_on_rounded_probability() -> None:
    assert is_flagged(0.49995, 500_000) and is_flagged(0.5, 500_000)
    assert not is_flagged(0.49994, 500_000) and not is_flagged(0.0, 1)
    assert is_flagged(1.0, 1_000_000)


def test_near_duplicate_of_a_held_dataset() -> None:
    lines = SAMPLE.decode().split("\n")
    edited = "\n".join(lines[:100] + ["an entirely new line of words here"] + lines[103:]).encode()
    index = NearDuplicateIndex(PARAMS)
    index.add("bafkreioriginal", compute_signature(SAMPLE, "text", PARAMS))
    other = "\n".join(f"completely different content row {i} about gardens" for i in range(200)).encode()
    index.add("bafkreiother", compute_signature(other, "text", PARAMS))
    (near,) = audit(edited, index=index).near_duplicates
    assert near.cid == "bafkreioriginal" and near.similarity_ppm >= 900_000


def test_report_independent_of_index_insertion_order() -> None:
    held = [(f"bafkreiheld{i}", compute_signature(SAMPLE[: 4_000 + 900 * i], "text", PARAMS)) for i in range(12)]
    encodings = set()
    for order in (held, held[::-1], held[3:] + held[:3]):
        index = NearDuplicateIndex(PARAMS)
        for cid, sig in order:
            index.add(cid, sig)
        encodings.add(codec.encode(audit(SAMPLE, index=index)))
    assert len(encodings) == 1


_SUBPROCESS = """
import sys
from chain import codec
from tests.node.data.test_l0_audit import SAMPLE, audit
sys.stdout.write(codec.encode(audit(SAMPLE)).hex())
"""


def test_identical_bytes_in_a_fresh_process() -> None:
    here = codec.encode(audit(SAMPLE))
    assert codec.encode(audit(SAMPLE)) == here
    out = subprocess.run([sys.executable, "-c", _SUBPROCESS], capture_output=True, text=True, timeout=60, check=True)
    assert bytes.fromhex(out.stdout) == here


GOLDEN_HASH = "537da3c4741baddc48303403ced29676b2cd3eb89a36ee71edfa86cef226f8b1"


def test_golden_report_hash() -> None:
    """Pins the report bytes: a change here means another AUDIT_VERSION (or an unpinned dependency)."""
    assert codec.hash_of(audit(SAMPLE)).hex() == GOLDEN_HASH


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=400), st.text(max_size=300).map(str.encode),
                      st.lists(st.sampled_from(['{"a":1}', '{"b":[1,{"c":"x@y.io"}]}', "a,b", "1,2", '"', "x = (",
                                                "def f():", "    pass", "[1]", "", "4111111111111111"]),
                               max_size=12).map(lambda lines: "\n".join(lines).encode())),
       format=st.sampled_from(FORMATS))
def test_any_bytes_give_a_report_that_round_trips(data: bytes, format: str) -> None:
    report = audit(data, format)
    encoded = codec.encode(report)
    assert codec.decode(AuditReport, encoded) == report
    assert report.size == len(data) and len(report.parse_error) <= 256
    if report.parse_error:
        assert (report.records, report.pii, report.toxicity_sampled, report.minhash) == (0, (), 0, ())
    else:
        assert report.toxicity_sampled == min(report.records, PARAMS.toxicity_sample)


def test_errors_never_quote_pii() -> None:
    for value in PII_VALUES:
        for data, format in [(f'{{"e": "{value}"\n'.encode(), "jsonl"), (f'["{value}"]'.encode(), "jsonl"),
                             (f"a,b\n{value}\n".encode(), "csv"), (f'a,b\n"{value}"x,1\n'.encode(), "csv"),
                             (f"x = {value} +\n".encode(), "text/x-python"),
                             (f"x = '{value}\n".encode(), "text/x-python"),
                             (value.encode() + b" \xff\n", "text")]:
            report = audit(data, format)
            assert report.parse_error, (format, data)
            assert value.encode() not in codec.encode(report) and value not in report.parse_error
