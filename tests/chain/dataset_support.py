"""Dataset-chain submissions for the chain's rule tests: a report that the policy admits,
built field by field (the chain judges a report's figures; `node.data.l0` computes them, and
its own tests check that), and a proof of work anchored on the current head."""

from __future__ import annotations

from dataclasses import replace

from chain.dataset import solve_pow
from chain.params import ChainParams
from chain.payloads import AuditReport, SubmitDataset
from chain.state import State


def clean_report(cid: str, size: int, params: ChainParams, *, format: str = "text", anchor_height: int = 0,
                 **overrides: object) -> AuditReport:
    """The report of a dataset of 100 distinct, clean records."""
    perm = params.dataset.audit.minhash_perm
    report = AuditReport(
        cid=cid, size=size, auditor=params.dataset.audit_version, format=format, anchor_height=anchor_height,
        records=100, parse_error="", pii=(), toxicity_sampled=100, toxicity_flagged=0, duplicate_records=0,
        near_duplicates=(), minhash=tuple(range(perm)),
    )
    return replace(report, **overrides)


def make_submission(state: State, network_id: str, contributor: bytes, cid: str, size: int, params: ChainParams,
                    *, format: str = "text", license: str = "CC-BY-4.0", pow_nonce: int | None = None,
                    audit: AuditReport | None = None) -> SubmitDataset:
    """A submission anchored on `state`'s head, with its proof of work solved."""
    anchor_height, anchor_hash = state.height, state.head
    if audit is None:
        audit = clean_report(cid, size, params, format=format, anchor_height=anchor_height)
    if pow_nonce is None:
        pow_nonce = solve_pow(network_id, contributor, cid, anchor_hash, params.dataset.pow_difficulty_bits)
    return SubmitDataset(cid, size, format, license, anchor_height, anchor_hash, pow_nonce, audit)
