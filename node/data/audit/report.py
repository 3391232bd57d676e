"""The L0 audit: bytes in, the report whose hash a validator's verdict names.

    parse (formats) -> personal data over the text (pii) -> toxicity of a seeded sample
    (toxicity) -> exact duplicate records -> MinHash signature and the held datasets near it
    (minhash)

Pure and synchronous; the same bytes, format, anchor, parameters and held datasets give the
same report bytes on every machine (`codec.encode(report)`).
"""

from __future__ import annotations

from collections.abc import Callable

from chain.params import AuditParams
from chain.payloads import MAX_PII_KINDS, AuditReport
from node.data.audit.formats import parse_records
from node.data.audit.minhash import NearDuplicateIndex, compute_minhash
from node.data.audit.pii import find_pii, summarise
from node.data.audit.toxicity import count_toxic

AUDIT_VERSION = "blyan-l0/1"

Progress = Callable[[str, float], None]
"""(stage, fraction done of the whole audit)."""


def count_duplicates(records: list[str]) -> int:
    """Records equal to an earlier one."""
    return len(records) - len(set(records))


def run_l0_audit(data: bytes, *, cid: str, format: str, anchor_height: int, params: AuditParams,
                 index: NearDuplicateIndex, auditor: str = AUDIT_VERSION,
                 progress: Progress | None = None) -> AuditReport:
    """The L0 report of `data` (whose CID the caller computed) read as `format`, its
    near-duplicates looked up in `index` (the datasets held at `anchor_height`)."""
    def step(stage: str, fraction: float) -> None:
        if progress is not None:
            progress(stage, fraction)

    base = AuditReport(cid=cid, size=len(data), auditor=auditor, format=format, anchor_height=anchor_height,
                       records=0, parse_error="", pii=(), toxicity_sampled=0, toxicity_flagged=0,
                       duplicate_records=0, near_duplicates=(), minhash=())
    step("parse", 0.0)
    parsed = parse_records(data, format, params.max_record_bytes)
    if parsed.error:
        return AuditReport(**{**_fields(base), "parse_error": parsed.error})
    records = parsed.records
    step("pii", 0.2)
    pii = summarise(find_pii(data.decode("utf-8")), cid)[:MAX_PII_KINDS]
    step("toxicity", 0.5)
    sampled, flagged = count_toxic(records, cid, params.toxicity_sample, params.toxicity_threshold_ppm)
    step("duplicates", 0.7)
    duplicates = count_duplicates(records)
    step("near-duplicates", 0.8)
    signature = compute_minhash(records, params)
    near = index.query(signature) if signature else ()
    step("done", 1.0)
    return AuditReport(cid=cid, size=len(data), auditor=auditor, format=format, anchor_height=anchor_height,
                       records=len(records), parse_error="", pii=pii, toxicity_sampled=sampled,
                       toxicity_flagged=flagged, duplicate_records=duplicates, near_duplicates=near,
                       minhash=signature)


def compute_signature(data: bytes, format: str, params: AuditParams) -> tuple[int, ...]:
    """The MinHash signature of a dataset's records (empty when it does not parse): what the
    index holds for a genesis dataset."""
    parsed = parse_records(data, format, params.max_record_bytes)
    return () if parsed.error else compute_minhash(parsed.records, params)


def _fields(report: AuditReport) -> dict:
    return {name: getattr(report, name) for name in report.__dataclass_fields__}
