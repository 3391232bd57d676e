"""Dataset chain rules: submissions, audits, quality votes, and the lifecycle

pending -> audited -> voted -> approved (gold / silver / experimental) | rejected.

A submission needs a proof of work and fits a per-account quota per epoch that grows with the
number of the contributor's approved datasets. Validators rerun the L0 audit (`AuditVerdict`);
more than 2/3 of the power passing makes it audited, 1/3 or more failing rejects it. Validators
then vote a tier (`QualityVote`); once more than 2/3 of the power voted, the tier is the
stake-weighted median, and tier 0 means rejected.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace

from chain.context import Context, TxEnv
from chain.errors import InvalidTransaction
from chain.params import TIER_GOLD, TIER_NAMES, TIER_REJECT
from chain.payloads import AuditReport, AuditVerdict, QualityVote, SubmitDataset
from chain.records import (
    STATUS_APPROVED,
    STATUS_AUDITED,
    STATUS_PENDING,
    STATUS_REJECTED,
    STATUS_VOTED,
    DatasetRecord,
    Earning,
    cid_key,
    dataset_key,
    earning_key,
    quota_key,
    reputation_key,
)
from chain.rules import ChainRules
from chain.state import Overlay
from chain.types import CHAIN_DATASET

FORMATS = ("text", "code", "jsonl", "markdown")
REQUIRED_CHECKS = ("format", "size", "pii", "toxicity", "near-duplicate")


def compute_pow_hash(network_id: str, contributor: bytes, cid: str, nonce: int) -> bytes:
    return hashlib.sha256(
        b"blyan-dataset-pow\x00" + network_id.encode() + b"\x00" + contributor + cid.encode()
        + nonce.to_bytes(8, "big")
    ).digest()


def leading_zero_bits(digest: bytes) -> int:
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def solve_pow(network_id: str, contributor: bytes, cid: str, bits: int, start: int = 0) -> int:
    """The first nonce from `start` whose proof-of-work hash has `bits` leading zero bits."""
    nonce = start
    while leading_zero_bits(compute_pow_hash(network_id, contributor, cid, nonce)) < bits:
        nonce += 1
    return nonce


def is_cid_v1(cid: str) -> bool:
    """A base32 CIDv1 (raw or dag-pb, sha2-256), as `ipfs add --cid-version 1` prints."""
    if not cid.startswith("b") or len(cid) < 10:
        return False
    body = cid[1:]
    if body != body.lower():
        return False
    try:
        binary = base64.b32decode(body.upper() + "=" * (-len(body) % 8))
    except ValueError:
        return False
    if len(binary) != 36 or binary[0] != 0x01 or binary[1] not in (0x55, 0x70) or binary[2:4] != b"\x12\x20":
        return False
    return "b" + base64.b32encode(binary).decode().lower().rstrip("=") == cid


def epoch_of(height: int, ctx: Context) -> int:
    return height // ctx.params.staking.epoch_length


def validate_audit_report(report: AuditReport, p: SubmitDataset, ctx: Context) -> None:
    if (report.cid, report.size) != (p.cid, p.size):
        raise InvalidTransaction("audit report is for another dataset")
    if report.auditor != ctx.params.dataset.audit_version:
        raise InvalidTransaction(f"audit by {report.auditor!r}, network runs {ctx.params.dataset.audit_version!r}")
    names = [c.name for c in report.checks]
    for required in REQUIRED_CHECKS:
        if required not in names:
            raise InvalidTransaction(f"audit report lacks the {required!r} check")
    for check in report.checks:
        if not check.passed:
            raise InvalidTransaction(f"audit check {check.name!r} failed: {check.detail}")


def apply_submit(view: Overlay, env: TxEnv, p: SubmitDataset) -> None:
    ctx = env.ctx
    if not is_cid_v1(p.cid):
        raise InvalidTransaction(f"{p.cid!r} is not a CIDv1")
    if not 0 < p.size <= ctx.params.dataset.max_dataset_bytes:
        raise InvalidTransaction(f"size {p.size} outside (0, {ctx.params.dataset.max_dataset_bytes}]")
    if p.format not in FORMATS:
        raise InvalidTransaction(f"format {p.format!r} not in {FORMATS}")
    if not p.license:
        raise InvalidTransaction("missing license")
    validate_audit_report(p.audit, p, ctx)
    pow_hash = compute_pow_hash(ctx.network_id, env.sender, p.cid, p.pow_nonce)
    if leading_zero_bits(pow_hash) < ctx.params.dataset.pow_difficulty_bits:
        raise InvalidTransaction("proof of work too weak")
    if view.get(cid_key(p.cid)) is not None:
        raise InvalidTransaction("dataset already submitted")
    epoch = epoch_of(env.height, ctx)
    used = _get_u64(view, quota_key(env.sender, epoch))
    allowed = ctx.params.dataset.quota_for(_get_u64(view, reputation_key(env.sender)))
    if used >= allowed:
        raise InvalidTransaction(f"quota of {allowed} submissions this epoch is used")
    view.put(quota_key(env.sender, epoch), (used + 1).to_bytes(8, "big"))
    view.put(cid_key(p.cid), env.tx_hash)
    view.put_record(
        dataset_key(env.tx_hash),
        DatasetRecord(
            cid=p.cid, size=p.size, format=p.format, license=p.license, contributor=env.sender,
            status=STATUS_PENDING, tier=TIER_REJECT, submitted_height=env.height, role="train",
            audit_voters=(), audit_passed=(), tier_voters=(), tier_votes=(),
        ),
    )


def _get_record_for_vote(view: Overlay, env: TxEnv, submission: bytes) -> DatasetRecord:
    if env.ctx.validators.get(env.sender) is None:
        raise InvalidTransaction("only validators audit and vote")
    rec = view.get_record(dataset_key(submission), DatasetRecord)
    if rec is None:
        raise InvalidTransaction("no such submission")
    return rec


def apply_audit(view: Overlay, env: TxEnv, p: AuditVerdict) -> None:
    rec = _get_record_for_vote(view, env, p.submission)
    if rec.status != STATUS_PENDING:
        raise InvalidTransaction("submission is not pending audit")
    if env.sender in rec.audit_voters:
        raise InvalidTransaction("validator already audited this submission")
    voters = (*rec.audit_voters, env.sender)
    passed = (*rec.audit_passed, p.passed)
    vals = env.ctx.validators
    pass_power = vals.power_of({v for v, ok in zip(voters, passed, strict=True) if ok})
    fail_power = vals.power_of({v for v, ok in zip(voters, passed, strict=True) if not ok})
    status = rec.status
    if vals.is_quorum(pass_power):
        status = STATUS_AUDITED
    elif 3 * fail_power >= vals.total_power:
        status = STATUS_REJECTED
    view.put_record(
        dataset_key(p.submission), replace(rec, audit_voters=voters, audit_passed=passed, status=status)
    )


def apply_quality_vote(view: Overlay, env: TxEnv, p: QualityVote) -> None:
    rec = _get_record_for_vote(view, env, p.submission)
    if rec.status not in (STATUS_AUDITED, STATUS_VOTED):
        raise InvalidTransaction("submission is not open for quality votes")
    if p.tier > TIER_GOLD:
        raise InvalidTransaction(f"unknown tier {p.tier}")
    if env.sender in rec.tier_voters:
        raise InvalidTransaction("validator already voted on this submission")
    voters = (*rec.tier_voters, env.sender)
    tiers = (*rec.tier_votes, p.tier)
    vals = env.ctx.validators
    rec = replace(rec, tier_voters=voters, tier_votes=tiers, status=STATUS_VOTED)
    if vals.is_quorum(vals.power_of(set(voters))):
        tier = compute_weighted_median(
            [(t, vals.get(v).power if vals.get(v) else 0) for v, t in zip(voters, tiers, strict=True)]
        )
        rec = replace(rec, tier=tier, status=STATUS_APPROVED if tier != TIER_REJECT else STATUS_REJECTED)
        if tier != TIER_REJECT:
            reward = env.ctx.params.rewards.dataset_rewards[tier]
            view.put_record(
                earning_key(p.submission), Earning(rec.contributor, reward, f"dataset:{TIER_NAMES[tier]}")
            )
            rep = _get_u64(view, reputation_key(rec.contributor))
            view.put(reputation_key(rec.contributor), (rep + 1).to_bytes(8, "big"))
    view.put_record(dataset_key(p.submission), rec)


def compute_weighted_median(votes: list[tuple[int, int]]) -> int:
    """The lowest value at which the cumulative power reaches half of the total."""
    total = sum(power for _, power in votes)
    acc = 0
    for value, power in sorted(votes):
        acc += power
        if 2 * acc >= total:
            return value
    return TIER_REJECT


def end_block(view: Overlay, height: int, ctx: Context) -> None:
    """Nothing happens at the end of a dataset block."""


def _get_u64(view: Overlay, key: bytes) -> int:
    raw = view.get(key)
    return 0 if raw is None else int.from_bytes(raw, "big")


RULES = ChainRules(
    chain_id=CHAIN_DATASET,
    apply={SubmitDataset: apply_submit, AuditVerdict: apply_audit, QualityVote: apply_quality_vote},
    end_block=end_block,
)
