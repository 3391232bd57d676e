"""Dataset chain rules: submissions, audits, quality votes, honeypots, and the lifecycle

pending -> audited -> voted -> approved (gold / silver / experimental) | rejected.

A submission carries the contributor's L0 audit report (chain.payloads.AuditReport) and a proof
of work bound to the network, the contributor, the CID and a recent dataset-chain block, so the
work expires `pow_window` heights after that block and cannot be done before it. A report that
breaks the genesis data policy (`find_policy_violations`: personal data, toxicity, duplicates,
near-duplicates of held datasets, a file that does not parse) is refused on arrival. Quotas per
epoch grow with the contributor's approved datasets and shrink with its rejections.

Validators rerun the L0 audit and name the hash of the report they computed (`AuditVerdict`):
a passing verdict must name the submitted report's hash. More than 2/3 of the power passing
makes the dataset audited; 1/3 or more failing rejects it. Validators then vote a tier with
their L1 score (`QualityVote`); once more than 2/3 of the power voted, the tier is the median
weighted by power x reputation factor, and tier 0 means rejected. Voters whose vote matched
the outcome are graded right and paid (their pay scaled by the same factor).

Honeypots: genesis commits, by hash, golden datasets with known tiers. They are submitted like
any other; after their votes close anyone may reveal the label (`RevealHoneypot`), which grades
every tier voter of that dataset. A validator's factor follows its graded votes
(`compute_reputation_factor`), so one that rubber-stamps loses weight.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace

from chain import codec
from chain.context import Context, TxEnv
from chain.errors import InvalidTransaction
from chain.params import TIER_GOLD, TIER_NAMES, TIER_REJECT, DataPolicy, DatasetParams
from chain.payloads import AuditReport, AuditVerdict, QualityVote, RevealHoneypot, SubmitDataset
from chain.records import (
    STATUS_APPROVED,
    STATUS_AUDITED,
    STATUS_PENDING,
    STATUS_REJECTED,
    STATUS_VOTED,
    DatasetRecord,
    Earning,
    VoterRecord,
    block_hash_key,
    cid_key,
    dataset_key,
    earning_key,
    honeypot_key,
    quota_key,
    reputation_key,
    voter_key,
)
from chain.rules import ChainRules
from chain.state import Overlay
from chain.types import CHAIN_DATASET

FORMATS = ("text", "markdown", "jsonl", "csv", "text/x-python")
POW_DOMAIN = b"blyan-dataset-pow/2\x00"
HONEYPOT_DOMAIN = b"blyan-honeypot/1\x00"
EARNING_DOMAIN = b"blyan-dataset-earning/1\x00"
PPM = 1_000_000


def compute_pow_hash(network_id: str, contributor: bytes, cid: str, anchor_hash: bytes, nonce: int) -> bytes:
    return hashlib.sha256(
        POW_DOMAIN + network_id.encode() + b"\x00" + contributor + anchor_hash + cid.encode() + nonce.to_bytes(8, "big")
    ).digest()


def leading_zero_bits(digest: bytes) -> int:
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def solve_pow(network_id: str, contributor: bytes, cid: str, anchor_hash: bytes, bits: int, start: int = 0,
              count: int | None = None) -> int | None:
    """The first nonce from `start` whose proof-of-work hash has `bits` leading zero bits; with
    `count`, None when none of the `count` nonces from `start` does (so a caller can show progress)."""
    prefix = POW_DOMAIN + network_id.encode() + b"\x00" + contributor + anchor_hash + cid.encode()
    base = hashlib.sha256(prefix)
    limit = 1 << (256 - bits)
    nonce, stop = start, (None if count is None else start + count)
    while stop is None or nonce < stop:
        h = base.copy()
        h.update(nonce.to_bytes(8, "big"))
        if int.from_bytes(h.digest(), "big") < limit:
            return nonce
        nonce += 1
    return None


def compute_honeypot_commitment(cid: str, tier: int, salt: bytes) -> bytes:
    """What genesis commits for a honeypot dataset (`params.dataset.honeypots`)."""
    return hashlib.sha256(HONEYPOT_DOMAIN + cid.encode() + bytes([tier]) + salt).digest()


def compute_earning_id(submission: bytes, recipient: bytes, reason: str) -> bytes:
    """The id a voter's earning is recorded and paid under (it has no transaction of its own)."""
    return codec.sha256(EARNING_DOMAIN + submission + recipient + reason.encode())


def is_cid_v1(cid: str) -> bool:
    """A base32 CIDv1 (raw or dag-pb, sha2-256), as `ipfs add --cid-version 1 --raw-leaves` prints."""
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


def find_policy_violations(report: AuditReport, policy: DataPolicy) -> list[str]:
    """Why the data policy refuses a dataset with this L0 report (empty: it passes). The messages
    carry counts and CIDs only, never personal data."""
    out = []
    if report.parse_error:
        return [f"does not parse as {report.format}: {report.parse_error}"]
    if report.records == 0:
        return ["holds no records"]
    pii_total = sum(f.count for f in report.pii)
    if pii_total > policy.max_pii:
        kinds = ", ".join(f"{f.count} {f.kind}" for f in report.pii)
        out.append(f"personal data: {kinds} (the policy allows {policy.max_pii} findings)")
    if report.toxicity_sampled and report.toxicity_flagged * PPM > policy.max_toxic_ppm * report.toxicity_sampled:
        out.append(f"toxicity: {report.toxicity_flagged} of {report.toxicity_sampled} sampled records "
                   f"(the policy allows {policy.max_toxic_ppm / 1e4:g} %)")
    if report.duplicate_records * PPM > policy.max_duplicate_ppm * report.records:
        out.append(f"duplicates: {report.duplicate_records} of {report.records} records repeat an earlier one "
                   f"(the policy allows {policy.max_duplicate_ppm / 1e4:g} %)")
    for near in report.near_duplicates:
        if near.similarity_ppm >= policy.near_duplicate_ppm:
            out.append(f"near-duplicate of {near.cid} ({near.similarity_ppm / 1e4:.1f} % similar; the policy "
                       f"refuses from {policy.near_duplicate_ppm / 1e4:g} %)")
            break
    return out


def validate_audit_report(report: AuditReport, p: SubmitDataset, params: DatasetParams) -> None:
    """A report that describes `p`, from the network's audit program, well formed, and passing the policy."""
    if (report.cid, report.size, report.format) != (p.cid, p.size, p.format):
        raise InvalidTransaction("audit report is for another dataset (cid, size or format differ)")
    if report.anchor_height != p.anchor_height:
        raise InvalidTransaction("audit report compared against another height than the submission's anchor")
    if report.auditor != params.audit_version:
        raise InvalidTransaction(f"audit by {report.auditor!r}, network runs {params.audit_version!r}")
    if not report.parse_error and len(report.minhash) != params.audit.minhash_perm:
        raise InvalidTransaction(f"MinHash signature of {len(report.minhash)} values, the network uses "
                                 f"{params.audit.minhash_perm}")
    kinds = [f.kind for f in report.pii]
    if kinds != sorted(set(kinds)) or any(f.count == 0 or len(f.hashes) > f.count for f in report.pii):
        raise InvalidTransaction("audit report's personal-data findings are not sorted, distinct and counted")
    if report.toxicity_flagged > report.toxicity_sampled or report.duplicate_records > report.records:
        raise InvalidTransaction("audit report counts more flagged records than it scored")
    violations = find_policy_violations(report, params.policy)
    if violations:
        raise InvalidTransaction("refused by the data policy: " + "; ".join(violations))


def begin_block(view: Overlay, height: int, prev_hash: bytes, ctx: Context) -> None:
    """Keep the hash of the previous block for proof-of-work anchors, and forget the one that
    just left the window."""
    view.put(block_hash_key(height - 1), prev_hash)
    old = height - 2 - ctx.params.dataset.pow_window
    if old >= 0:
        view.delete(block_hash_key(old))


def validate_anchor(view: Overlay, env: TxEnv, p: SubmitDataset) -> None:
    window = env.ctx.params.dataset.pow_window
    if p.anchor_height >= env.height:
        raise InvalidTransaction(f"proof-of-work anchor {p.anchor_height} is not below height {env.height}")
    if env.height - p.anchor_height > window:
        raise InvalidTransaction(f"proof of work expired: its anchor {p.anchor_height} is more than {window} "
                                 f"heights below {env.height}; redo it on a recent block")
    if view.get(block_hash_key(p.anchor_height)) != p.anchor_hash:
        raise InvalidTransaction(f"proof-of-work anchor hash is not the hash of block {p.anchor_height}")


def apply_submit(view: Overlay, env: TxEnv, p: SubmitDataset) -> None:
    ctx = env.ctx
    params = ctx.params.dataset
    if not is_cid_v1(p.cid):
        raise InvalidTransaction(f"{p.cid!r} is not a CIDv1")
    if not 0 < p.size <= params.max_dataset_bytes:
        raise InvalidTransaction(f"size {p.size} outside (0, {params.max_dataset_bytes}]")
    if p.format not in FORMATS:
        raise InvalidTransaction(f"format {p.format!r} not in {FORMATS}")
    if not p.license:
        raise InvalidTransaction("missing license")
    validate_audit_report(p.audit, p, params)
    validate_anchor(view, env, p)
    pow_hash = compute_pow_hash(ctx.network_id, env.sender, p.cid, p.anchor_hash, p.pow_nonce)
    if leading_zero_bits(pow_hash) < params.pow_difficulty_bits:
        raise InvalidTransaction("proof of work too weak")
    if view.get(cid_key(p.cid)) is not None:
        raise InvalidTransaction("dataset already submitted")
    epoch = epoch_of(env.height, ctx)
    used = _get_u64(view, quota_key(env.sender, epoch))
    allowed = params.quota_for(_get_u64(view, reputation_key(env.sender)))
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
            report_hash=codec.hash_of(p.audit), minhash=p.audit.minhash, decided_height=0,
            anchor_height=p.anchor_height,
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
    if p.passed != (p.report_hash == rec.report_hash):
        raise InvalidTransaction("a passing verdict names the submitted report's hash, a failing one another hash")
    voters = (*rec.audit_voters, env.sender)
    passed = (*rec.audit_passed, p.passed)
    vals = env.ctx.validators
    pass_power = vals.power_of({v for v, ok in zip(voters, passed, strict=True) if ok})
    fail_power = vals.power_of({v for v, ok in zip(voters, passed, strict=True) if not ok})
    rec = replace(rec, audit_voters=voters, audit_passed=passed)
    if vals.is_quorum(pass_power):
        rec = replace(rec, status=STATUS_AUDITED)
        _grade_and_pay(view, p.submission, [(v, ok) for v, ok in zip(voters, passed, strict=True)], env.ctx,
                       "audit-vote")
    elif 3 * fail_power >= vals.total_power:
        rec = _reject(view, rec, env.height)
        _grade_and_pay(view, p.submission, [(v, not ok) for v, ok in zip(voters, passed, strict=True)], env.ctx,
                       "audit-vote")
    view.put_record(dataset_key(p.submission), rec)


def apply_quality_vote(view: Overlay, env: TxEnv, p: QualityVote) -> None:
    rec = _get_record_for_vote(view, env, p.submission)
    if rec.status not in (STATUS_AUDITED, STATUS_VOTED):
        raise InvalidTransaction("submission is not open for quality votes")
    if p.tier > TIER_GOLD:
        raise InvalidTransaction(f"unknown tier {p.tier}")
    if p.score_ppm > PPM:
        raise InvalidTransaction(f"score {p.score_ppm} above {PPM} ppm")
    if env.sender in rec.tier_voters:
        raise InvalidTransaction("validator already voted on this submission")
    voters = (*rec.tier_voters, env.sender)
    tiers = (*rec.tier_votes, p.tier)
    vals = env.ctx.validators
    rec = replace(rec, tier_voters=voters, tier_votes=tiers, status=STATUS_VOTED)
    if vals.is_quorum(vals.power_of(set(voters))):
        tier = compute_weighted_median([(t, compute_vote_weight(view, v, env.ctx))
                                        for v, t in zip(voters, tiers, strict=True)])
        tolerance = env.ctx.params.dataset.reputation.honeypot_tolerance
        matched = [(v, abs(t - tier) <= tolerance) for v, t in zip(voters, tiers, strict=True)]
        _grade_and_pay(view, p.submission, matched, env.ctx, "tier-vote")
        if tier == TIER_REJECT:
            rec = _reject(view, rec, env.height)
        else:
            rec = replace(rec, tier=tier, status=STATUS_APPROVED, decided_height=env.height)
            reward = env.ctx.params.rewards.dataset_rewards[tier]
            view.put_record(
                earning_key(p.submission), Earning(rec.contributor, reward, f"dataset:{TIER_NAMES[tier]}")
            )
            rep = _get_u64(view, reputation_key(rec.contributor))
            view.put(reputation_key(rec.contributor), (rep + 1).to_bytes(8, "big"))
    view.put_record(dataset_key(p.submission), rec)


def apply_reveal_honeypot(view: Overlay, env: TxEnv, p: RevealHoneypot) -> None:
    """A honeypot's label, after its votes closed: grades every tier voter of the dataset."""
    rec = view.get_record(dataset_key(p.submission), DatasetRecord)
    if rec is None:
        raise InvalidTransaction("no such submission")
    if p.tier > TIER_GOLD:
        raise InvalidTransaction(f"unknown tier {p.tier}")
    commitment = compute_honeypot_commitment(rec.cid, p.tier, p.salt)
    if commitment not in env.ctx.params.dataset.honeypots:
        raise InvalidTransaction("not a honeypot of this network (no genesis commitment matches)")
    if rec.status not in (STATUS_APPROVED, STATUS_REJECTED):
        raise InvalidTransaction("the honeypot's votes have not closed: its label stays hidden until they do")
    if view.get(honeypot_key(commitment)) is not None:
        raise InvalidTransaction("honeypot already revealed")
    view.put(honeypot_key(commitment), p.submission + bytes([p.tier]))
    tolerance = env.ctx.params.dataset.reputation.honeypot_tolerance
    for voter, tier in zip(rec.tier_voters, rec.tier_votes, strict=True):
        _grade(view, voter, abs(tier - p.tier) <= tolerance)


def get_voter(view: Overlay, address: bytes) -> VoterRecord:
    return view.get_record(voter_key(address), VoterRecord) or VoterRecord(0, 0)


def compute_reputation_factor(voter: VoterRecord, params: DatasetParams) -> int:
    """A validator's tier-vote weight factor, millionths: from `min_factor_ppm` (every graded
    vote wrong) to 1,000,000 (every one right), `prior_votes` right votes credited to all."""
    rep = params.reputation
    prior = rep.prior_votes
    if voter.graded + prior == 0:
        return PPM
    span = PPM - rep.min_factor_ppm
    return rep.min_factor_ppm + span * (voter.right + prior) // (voter.graded + prior)


def compute_vote_weight(view: Overlay, address: bytes, ctx: Context) -> int:
    """Stake power x reputation factor (integer)."""
    member = ctx.validators.get(address)
    power = member.power if member else 0
    return power * compute_reputation_factor(get_voter(view, address), ctx.params.dataset) // PPM


def _grade(view: Overlay, voter: bytes, right: bool) -> None:
    rec = get_voter(view, voter)
    view.put_record(voter_key(voter), VoterRecord(rec.graded + 1, rec.right + int(right)))


def _grade_and_pay(view: Overlay, submission: bytes, votes: list[tuple[bytes, bool]], ctx: Context,
                   reason: str) -> None:
    """Grade each voter against the outcome; pay those that matched it, scaled by their factor
    (graded before this outcome, so the outcome a voter shaped does not raise its own pay)."""
    base = ctx.params.rewards.dataset_vote_reward
    for voter, right in votes:
        if right and base:
            amount = base * compute_reputation_factor(get_voter(view, voter), ctx.params.dataset) // PPM
            if amount:
                view.put_record(earning_key(compute_earning_id(submission, voter, reason)),
                                Earning(voter, amount, reason))
        _grade(view, voter, right)


def _reject(view: Overlay, rec: DatasetRecord, height: int) -> DatasetRecord:
    """A rejected dataset moves its contributor back one approval (toward a lower trust level)."""
    rep = _get_u64(view, reputation_key(rec.contributor))
    if rep:
        view.put(reputation_key(rec.contributor), (rep - 1).to_bytes(8, "big"))
    return replace(rec, status=STATUS_REJECTED, tier=TIER_REJECT, decided_height=height)


def compute_weighted_median(votes: list[tuple[int, int]]) -> int:
    """The lowest value at which the cumulative weight reaches half of the total."""
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
    apply={SubmitDataset: apply_submit, AuditVerdict: apply_audit, QualityVote: apply_quality_vote,
           RevealHoneypot: apply_reveal_honeypot},
    end_block=end_block,
    begin_block=begin_block,
)
