"""The L0 audit: a dataset's bytes in, the report whose hash a validator's verdict names.

    parse (formats) -> personal data in the whole text (pii) -> toxicity of a seeded sample
    (toxicity) -> exact duplicate records -> MinHash signature (minhash) -> the held datasets
    near it (the index of the datasets held at the anchor height)

Pure and synchronous: the same bytes, CID, format, anchor, parameters and held set give the same
`codec.encode(report)` on every machine and in every run (AUDIT_VERSION names this program; its
outcome also rests on the pinned releases of phonenumbers, datasketch and alt-profanity-check,
and on Python's parser for text/x-python). Content that does not parse still gets a report: its
`parse_error` set (passed through `redact_text`, in case a parser's message quoted personal data,
and cut to MAX_ERROR UTF-8 bytes) and no other figure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from chain.params import AuditParams
from chain.payloads import MAX_PII_KINDS, AuditReport
from node.data.l0.formats import error_text, parse_records
from node.data.l0.minhash import NearDuplicateIndex, compute_minhash
from node.data.l0.pii import find_pii, redact_text, summarise_pii
from node.data.l0.toxicity import count_toxic

AUDIT_VERSION = "blyan-l0/1"

Progress = Callable[[str, float], None]
"""(stage, fraction of the audit done): "parse", "pii", "toxicity", "duplicates", "minhash",
"near-duplicates", "done"."""


def count_duplicate_records(records: Sequence[str]) -> int:
    """Records equal to an earlier record."""
    return len(records) - len(set(records))


def run_l0_audit(data: bytes, *, cid: str, format: str, anchor_height: int, params: AuditParams,
                 index: NearDuplicateIndex, auditor: str = AUDIT_VERSION,
                 progress: Progress | None = None) -> AuditReport:
    """The L0 report of `data` (of CID `cid`, computed by the caller) read as `format`, compared
    with `index`: the datasets held at `anchor_height`."""
    def step(stage: str, fraction: float) -> None:
        if progress is not None:
            progress(stage, fraction)

    step("parse", 0.0)
    parsed = parse_records(data, format, params.max_record_bytes)
    if parsed.error:
        step("done", 1.0)
        return AuditReport(cid=cid, size=len(data), auditor=auditor, format=format, anchor_height=anchor_height,
                           records=0, parse_error=error_text(redact_text(parsed.error)), pii=(),
                           toxicity_sampled=0, toxicity_flagged=0,
                           duplicate_records=0, near_duplicates=(), minhash=())
    records = parsed.records
    step("pii", 0.15)
    pii = summarise_pii(find_pii(data.decode("utf-8")), cid)[:MAX_PII_KINDS]
    step("toxicity", 0.45)
    sampled, flagged = count_toxic(records, cid, params.toxicity_sample, params.toxicity_threshold_ppm)
    step("duplicates", 0.6)
    duplicates = count_duplicate_records(records)
    step("minhash", 0.65)
    signature = compute_minhash(records, params)
    step("near-duplicates", 0.95)
    near = index.query(signature) if signature else ()
    step("done", 1.0)
    return AuditReport(cid=cid, size=len(data), auditor=auditor, format=format, anchor_height=anchor_height,
                       records=len(records), parse_error="", pii=pii, toxicity_sampled=sampled,
                       toxicity_flagged=flagged, duplicate_records=duplicates, near_duplicates=near,
                       minhash=signature)


def compute_signature(data: bytes, format: str, params: AuditParams) -> tuple[int, ...]:
    """The MinHash signature a report of `data` would carry (empty when it does not parse or has
    no word): what the index holds for a dataset, a genesis corpus file for instance."""
    parsed = parse_records(data, format, params.max_record_bytes)
    return () if parsed.error else compute_minhash(parsed.records, params)
