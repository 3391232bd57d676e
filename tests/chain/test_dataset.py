"""Dataset chain rules: submission checks, audit verdicts, quality votes and the lifecycle."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chain import codec, crypto
from chain.dataset import (
    REQUIRED_CHECKS,
    compute_pow_hash,
    compute_weighted_median,
    is_cid_v1,
    leading_zero_bits,
    solve_pow,
)
from chain.pact import GenesisValidator
from chain.params import TIER_EXPERIMENTAL, TIER_GOLD, TIER_REJECT, TIER_SILVER, TrustLevel
from chain.payloads import AuditCheck, AuditReport, AuditVerdict, QualityVote, SubmitDataset, Transfer
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
from chain.transition import get_nonce
from chain.types import CHAIN_DATASET
from genesis.params import test_params as make_params
from genesis.testkit import LocalChains, account_keys, make_pact, sign_tx, validator_keys
from tests.chain.refusal_support import assert_refused

VKEYS = validator_keys(4)
CONTRIBUTOR, OTHER = account_keys(2, prefix="contributor")


def make_chains(stakes: tuple[int, ...] = (10_000,) * 4, **params: object) -> LocalChains:
    keys = validator_keys(len(stakes))
    pact = make_pact(keys, params=make_params(**params))
    pact = replace(pact, validators=tuple(
        GenesisValidator(k.public_key, s, f"v{i}") for i, (k, s) in enumerate(zip(keys, stakes, strict=True))
    ))
    return LocalChains.create(pact, keys)


@pytest.fixture
def chains() -> LocalChains:
    return make_chains()


def cid_of(label: str) -> str:
    return crypto.cid_raw(label.encode())


def report_for(cid: str, size: int, **overrides: object) -> AuditReport:
    checks = tuple(AuditCheck(name, True, "ok") for name in REQUIRED_CHECKS)
    report = AuditReport(cid, size, make_params().dataset.audit_version, checks)
    return replace(report, **overrides)


def submission(
    chains: LocalChains, label: str, key=CONTRIBUTOR, size: int = 4096, pow_nonce: int | None = None,
    **overrides: object,
) -> SubmitDataset:
    cid = overrides.pop("cid", cid_of(label))
    audit = overrides.pop("audit", report_for(cid, size))
    if pow_nonce is None:
        bits = chains.pact.params.dataset.pow_difficulty_bits
        pow_nonce = solve_pow(chains.pact.network_id, key.address, cid, bits)
    payload = SubmitDataset(cid, size, "text", "CC-BY-4.0", pow_nonce, audit)
    return replace(payload, **overrides)


def signed(chains: LocalChains, key, payload, nonce: int | None = None):
    if nonce is None:
        nonce = get_nonce(chains.states[CHAIN_DATASET], key.address)
    return sign_tx(key, chains.pact.network_id, CHAIN_DATASET, nonce, payload)


def advance(chains: LocalChains, txs: list):
    block, rejected = chains.advance(CHAIN_DATASET, txs)
    assert not rejected, rejected
    return block


def submit(chains: LocalChains, label: str, key=CONTRIBUTOR) -> bytes:
    tx = signed(chains, key, submission(chains, label, key))
    advance(chains, [tx])
    return tx.hash()


def record(chains: LocalChains, sub: bytes) -> DatasetRecord:
    return codec.decode(DatasetRecord, chains.states[CHAIN_DATASET].get(dataset_key(sub)))


def audit(chains: LocalChains, sub: bytes, voters: list[int], passed: bool = True) -> None:
    report_hash = codec.hash_of(report_for("x", 1))
    advance(chains, [
        signed(chains, chains.keys[i], AuditVerdict(sub, passed, report_hash)) for i in voters
    ])


def vote(chains: LocalChains, sub: bytes, tiers: dict[int, int]) -> None:
    advance(chains, [signed(chains, chains.keys[i], QualityVote(sub, t)) for i, t in tiers.items()])


def assert_invalid(chains: LocalChains, tx, match: str) -> None:
    assert_refused(chains, CHAIN_DATASET, tx, match)


# --- the lifecycle -----------------------------------------------------------------------------


def test_submit_records_pending_dataset(chains: LocalChains) -> None:
    payload = submission(chains, "corpus-a")
    tx = signed(chains, CONTRIBUTOR, payload)
    block = advance(chains, [tx])
    state = chains.states[CHAIN_DATASET]
    rec = record(chains, tx.hash())
    assert rec.status == STATUS_PENDING and rec.tier == TIER_REJECT
    assert (rec.cid, rec.size, rec.format, rec.license) == (payload.cid, 4096, "text", "CC-BY-4.0")
    assert rec.contributor == CONTRIBUTOR.address
    assert rec.submitted_height == block.header.height and rec.role == "train"
    assert state.get(cid_key(payload.cid)) == tx.hash()
    assert int.from_bytes(state.get(quota_key(CONTRIBUTOR.address, 0)), "big") == 1


def test_lifecycle_pending_audited_voted_approved(chains: LocalChains) -> None:
    sub = submit(chains, "corpus-b")
    audit(chains, sub, [0, 1])
    assert record(chains, sub).status == STATUS_PENDING
    audit(chains, sub, [2])
    rec = record(chains, sub)
    assert rec.status == STATUS_AUDITED
    assert rec.audit_voters == tuple(chains.keys[i].address for i in (0, 1, 2))
    assert rec.audit_passed == (True, True, True)
    vote(chains, sub, {0: TIER_SILVER, 1: TIER_GOLD})
    assert record(chains, sub).status == STATUS_VOTED
    assert chains.states[CHAIN_DATASET].get(earning_key(sub)) is None
    vote(chains, sub, {3: TIER_SILVER})
    rec = record(chains, sub)
    assert (rec.status, rec.tier) == (STATUS_APPROVED, TIER_SILVER)
    assert rec.tier_votes == (TIER_SILVER, TIER_GOLD, TIER_SILVER)


def test_approval_records_earning(chains: LocalChains) -> None:
    sub = submit(chains, "corpus-c")
    audit(chains, sub, [0, 1, 2])
    vote(chains, sub, {0: TIER_GOLD, 1: TIER_GOLD, 2: TIER_GOLD})
    state = chains.states[CHAIN_DATASET]
    earning = codec.decode(Earning, state.get(earning_key(sub)))
    reward = chains.pact.params.rewards.dataset_rewards[TIER_GOLD]
    assert earning == Earning(CONTRIBUTOR.address, reward, "dataset:gold")
    assert int.from_bytes(state.get(reputation_key(CONTRIBUTOR.address)), "big") == 1


def test_tier_is_stake_weighted_median() -> None:
    chains = make_chains(stakes=(4_000, 3_000, 2_000, 1_000))
    sub = submit(chains, "weighted")
    audit(chains, sub, [0, 1])
    assert record(chains, sub).status == STATUS_AUDITED  # 7000 of 10000 > 2/3
    vote(chains, sub, {3: TIER_EXPERIMENTAL, 2: TIER_EXPERIMENTAL})
    assert record(chains, sub).status == STATUS_VOTED
    vote(chains, sub, {0: TIER_GOLD})
    rec = record(chains, sub)
    # one vote in three by count, but 4000 of the 7000 power voting: gold
    assert (rec.status, rec.tier) == (STATUS_APPROVED, TIER_GOLD)


def test_tier_median_takes_lower_value_on_exact_half() -> None:
    assert compute_weighted_median([(TIER_GOLD, 5), (TIER_SILVER, 5)]) == TIER_SILVER
    assert compute_weighted_median([(TIER_GOLD, 6), (TIER_SILVER, 5)]) == TIER_GOLD
    assert compute_weighted_median([(1, 1), (3, 1), (2, 1)]) == 2
    assert compute_weighted_median([]) == TIER_REJECT


def test_rejected_by_tier_zero(chains: LocalChains) -> None:
    sub = submit(chains, "junk")
    audit(chains, sub, [0, 1, 2])
    vote(chains, sub, {0: TIER_REJECT, 1: TIER_REJECT, 2: TIER_GOLD})
    rec = record(chains, sub)
    assert (rec.status, rec.tier) == (STATUS_REJECTED, TIER_REJECT)
    state = chains.states[CHAIN_DATASET]
    assert state.get(earning_key(sub)) is None
    assert state.get(reputation_key(CONTRIBUTOR.address)) is None


def test_rejected_by_audit_fail_power_one_third() -> None:
    chains = make_chains(stakes=(10_000,) * 3)
    sub = submit(chains, "fails-audit")
    audit(chains, sub, [0], passed=False)  # exactly 1/3 of the power
    assert record(chains, sub).status == STATUS_REJECTED


def test_audit_fail_below_one_third_stays_pending(chains: LocalChains) -> None:
    sub = submit(chains, "one-fail")
    audit(chains, sub, [0], passed=False)  # 1/4 of the power
    assert record(chains, sub).status == STATUS_PENDING
    audit(chains, sub, [1], passed=False)
    rec = record(chains, sub)
    assert rec.status == STATUS_REJECTED and rec.audit_passed == (False, False)


def test_audit_mixed_verdicts_reach_audited(chains: LocalChains) -> None:
    sub = submit(chains, "mixed")
    audit(chains, sub, [0], passed=False)
    audit(chains, sub, [1, 2, 3])
    assert record(chains, sub).status == STATUS_AUDITED


# --- submissions --------------------------------------------------------------------------------


def test_pow_solution_has_enough_zero_bits(chains: LocalChains) -> None:
    cid, bits = cid_of("pow"), chains.pact.params.dataset.pow_difficulty_bits
    nonce = solve_pow(chains.pact.network_id, CONTRIBUTOR.address, cid, bits)
    digest = compute_pow_hash(chains.pact.network_id, CONTRIBUTOR.address, cid, nonce)
    assert leading_zero_bits(digest) >= bits
    assert leading_zero_bits(bytes(32)) == 256 and leading_zero_bits(b"\x80" + bytes(31)) == 0


def weak_nonce(chains: LocalChains, cid: str, key=CONTRIBUTOR) -> int:
    bits = chains.pact.params.dataset.pow_difficulty_bits
    nonce = 0
    while leading_zero_bits(compute_pow_hash(chains.pact.network_id, key.address, cid, nonce)) >= bits:
        nonce += 1
    return nonce


def test_invalid_pow_too_weak(chains: LocalChains) -> None:
    payload = submission(chains, "weak", pow_nonce=weak_nonce(chains, cid_of("weak")))
    assert_invalid(chains, signed(chains, CONTRIBUTOR, payload), "proof of work too weak")


def test_invalid_pow_solved_for_another_contributor(chains: LocalChains) -> None:
    bits = chains.pact.params.dataset.pow_difficulty_bits
    # A label whose nonce, solved for OTHER, does not happen to satisfy CONTRIBUTOR's hash too.
    for label in (f"stolen-{i}" for i in range(64)):
        nonce = solve_pow(chains.pact.network_id, OTHER.address, cid_of(label), bits)
        digest = compute_pow_hash(chains.pact.network_id, CONTRIBUTOR.address, cid_of(label), nonce)
        if leading_zero_bits(digest) < bits:
            break
    payload = submission(chains, label, pow_nonce=nonce)
    assert_invalid(chains, signed(chains, CONTRIBUTOR, payload), "proof of work too weak")


def test_invalid_duplicate_cid(chains: LocalChains) -> None:
    submit(chains, "twice")
    again = signed(chains, CONTRIBUTOR, submission(chains, "twice"))
    assert_invalid(chains, again, "already submitted")
    by_other = signed(chains, OTHER, submission(chains, "twice", key=OTHER))
    assert_invalid(chains, by_other, "already submitted")


def test_invalid_duplicate_cid_in_one_block(chains: LocalChains) -> None:
    first = signed(chains, CONTRIBUTOR, submission(chains, "race"))
    second = signed(chains, OTHER, submission(chains, "race", key=OTHER))
    block, rejected = chains.advance(CHAIN_DATASET, [first, second])
    assert block.txs == (first,)
    assert "already submitted" in str(rejected[0][1])


def test_quota_per_epoch(chains: LocalChains) -> None:
    quota = chains.pact.params.dataset.quota_for(0)
    txs = [signed(chains, CONTRIBUTOR, submission(chains, f"q{i}"), nonce=i) for i in range(quota + 1)]
    block, rejected = chains.advance(CHAIN_DATASET, txs)
    assert len(block.txs) == quota
    assert [r[0] for r in rejected] == [txs[-1]]
    assert f"quota of {quota}" in str(rejected[0][1])
    assert_invalid(chains, signed(chains, CONTRIBUTOR, submission(chains, "late")), "quota")
    # another contributor has its own quota
    submit(chains, "other-q", key=OTHER)
    epoch = chains.pact.params.staking.epoch_length
    while chains.states[CHAIN_DATASET].height < epoch - 1:
        advance(chains, [])
    submit(chains, "next-epoch")
    assert chains.states[CHAIN_DATASET].height == epoch
    used = chains.states[CHAIN_DATASET].get(quota_key(CONTRIBUTOR.address, 1))
    assert int.from_bytes(used, "big") == 1


def test_quota_grows_with_reputation() -> None:
    levels = (TrustLevel(0, 1), TrustLevel(1, 2))
    chains = make_chains(dataset=replace(make_params().dataset, trust_levels=levels))
    sub = submit(chains, "first")
    assert_invalid(chains, signed(chains, CONTRIBUTOR, submission(chains, "second")), "quota of 1")
    audit(chains, sub, [0, 1, 2])
    vote(chains, sub, {0: TIER_SILVER, 1: TIER_SILVER, 2: TIER_SILVER})
    submit(chains, "second")
    assert_invalid(chains, signed(chains, CONTRIBUTOR, submission(chains, "third")), "quota of 2")


BAD_SUBMISSIONS = {
    "not-a-cid": (dict(cid="Qmnotacidv1atall", audit=report_for("Qmnotacidv1atall", 4096)), "not a CIDv1"),
    "size-zero": (dict(size=0, audit=report_for(cid_of("bad"), 0)), "size 0 outside"),
    "size-too-big": (
        dict(size=make_params().dataset.max_dataset_bytes + 1,
             audit=report_for(cid_of("bad"), make_params().dataset.max_dataset_bytes + 1)),
        "outside",
    ),
    "format": (dict(format="exe"), "format 'exe'"),
    "license": (dict(license=""), "missing license"),
    "report-other-cid": (dict(audit=report_for(cid_of("other"), 4096)), "another dataset"),
    "report-other-size": (dict(audit=report_for(cid_of("bad"), 4095)), "another dataset"),
    "report-auditor": (dict(audit=report_for(cid_of("bad"), 4096, auditor="homebrew/9")), "network runs"),
    "report-missing-check": (
        dict(audit=report_for(cid_of("bad"), 4096, checks=tuple(
            AuditCheck(n, True, "") for n in REQUIRED_CHECKS if n != "pii"))),
        "lacks the 'pii' check",
    ),
    "report-failed-check": (
        dict(audit=report_for(cid_of("bad"), 4096, checks=tuple(
            AuditCheck(n, n != "toxicity", "too toxic") for n in REQUIRED_CHECKS))),
        "'toxicity' failed: too toxic",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SUBMISSIONS))
def test_invalid_submission(chains: LocalChains, case: str) -> None:
    overrides, match = BAD_SUBMISSIONS[case]
    overrides = dict(overrides)
    size = overrides.pop("size", 4096)
    payload = submission(chains, "bad", size=size, **overrides)
    assert_invalid(chains, signed(chains, CONTRIBUTOR, payload), match)


def test_cid_v1_forms() -> None:
    assert is_cid_v1(cid_of("anything"))
    assert not is_cid_v1("b" + "!" * 20)
    assert not is_cid_v1("bafy")
    assert not is_cid_v1("Qm" + "a" * 44)


def test_invalid_reward_payload_on_dataset_chain(chains: LocalChains) -> None:
    tx = signed(chains, CONTRIBUTOR, Transfer(OTHER.address, 1))
    assert_invalid(chains, tx, "Transfer is not a dataset payload")


# --- votes ---------------------------------------------------------------------------------------


def test_invalid_audit_by_non_validator(chains: LocalChains) -> None:
    sub = submit(chains, "v1")
    tx = signed(chains, OTHER, AuditVerdict(sub, True, bytes(32)))
    assert_invalid(chains, tx, "only validators")


def test_invalid_quality_vote_by_non_validator(chains: LocalChains) -> None:
    sub = submit(chains, "v2")
    audit(chains, sub, [0, 1, 2])
    assert_invalid(chains, signed(chains, CONTRIBUTOR, QualityVote(sub, TIER_GOLD)), "only validators")


def test_invalid_audit_twice_by_one_validator(chains: LocalChains) -> None:
    sub = submit(chains, "v3")
    audit(chains, sub, [0])
    tx = signed(chains, chains.keys[0], AuditVerdict(sub, False, bytes(32)))
    assert_invalid(chains, tx, "already audited")


def test_invalid_audit_of_unknown_submission(chains: LocalChains) -> None:
    assert_invalid(chains, signed(chains, chains.keys[0], AuditVerdict(b"\x07" * 32, True, bytes(32))),
                   "no such submission")


def test_invalid_audit_after_audited(chains: LocalChains) -> None:
    sub = submit(chains, "v4")
    audit(chains, sub, [0, 1, 2])
    tx = signed(chains, chains.keys[3], AuditVerdict(sub, True, bytes(32)))
    assert_invalid(chains, tx, "not pending audit")


def test_invalid_quality_vote_before_audit(chains: LocalChains) -> None:
    sub = submit(chains, "v5")
    assert_invalid(chains, signed(chains, chains.keys[0], QualityVote(sub, TIER_GOLD)), "not open for quality")


def test_invalid_quality_vote_after_decision(chains: LocalChains) -> None:
    sub = submit(chains, "v6")
    audit(chains, sub, [0, 1, 2])
    vote(chains, sub, {0: TIER_GOLD, 1: TIER_GOLD, 2: TIER_GOLD})
    assert_invalid(chains, signed(chains, chains.keys[3], QualityVote(sub, TIER_GOLD)), "not open")


def test_invalid_quality_vote_on_rejected(chains: LocalChains) -> None:
    sub = submit(chains, "v7")
    audit(chains, sub, [0, 1], passed=False)
    assert_invalid(chains, signed(chains, chains.keys[2], QualityVote(sub, TIER_GOLD)), "not open")


def test_invalid_quality_vote_twice(chains: LocalChains) -> None:
    sub = submit(chains, "v8")
    audit(chains, sub, [0, 1, 2])
    vote(chains, sub, {0: TIER_GOLD})
    assert_invalid(chains, signed(chains, chains.keys[0], QualityVote(sub, TIER_SILVER)), "already voted")


def test_invalid_quality_vote_unknown_tier(chains: LocalChains) -> None:
    sub = submit(chains, "v9")
    audit(chains, sub, [0, 1, 2])
    assert_invalid(chains, signed(chains, chains.keys[0], QualityVote(sub, TIER_GOLD + 1)), "unknown tier 4")
