"""Dataset chain rules: submission checks, audit verdicts, quality votes and the lifecycle."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chain import codec, crypto
from chain.dataset import (
    compute_earning_id,
    compute_honeypot_commitment,
    compute_pow_hash,
    compute_reputation_factor,
    compute_weighted_median,
    get_voter,
    is_cid_v1,
    leading_zero_bits,
    solve_pow,
)
from chain.pact import GenesisValidator
from chain.params import TIER_EXPERIMENTAL, TIER_GOLD, TIER_REJECT, TIER_SILVER, TrustLevel
from chain.payloads import (
    AuditReport,
    AuditVerdict,
    NearDuplicate,
    PiiFinding,
    QualityVote,
    RevealHoneypot,
    SubmitDataset,
    Transfer,
)
from chain.records import (
    STATUS_APPROVED,
    STATUS_AUDITED,
    STATUS_PENDING,
    STATUS_REJECTED,
    STATUS_VOTED,
    DatasetRecord,
    Earning,
    VoterRecord,
    cid_key,
    dataset_key,
    earning_key,
    quota_key,
    reputation_key,
    voter_key,
)
from chain.state import Overlay
from chain.transition import get_nonce
from chain.types import CHAIN_DATASET
from genesis.params import test_params as make_params
from genesis.testkit import LocalChains, account_keys, make_pact, sign_tx, validator_keys
from tests.chain.dataset_support import clean_report, make_submission
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
    return clean_report(cid, size, make_params(), **overrides)


def submission(
    chains: LocalChains, label: str, key=CONTRIBUTOR, size: int = 4096, pow_nonce: int | None = None,
    **overrides: object,
) -> SubmitDataset:
    cid = overrides.pop("cid", cid_of(label))
    state = chains.states[CHAIN_DATASET]
    audit = overrides.pop("audit", report_for(cid, size, anchor_height=state.height))
    payload = make_submission(state, chains.pact.network_id, key.address, cid, size, chains.pact.params,
                              pow_nonce=pow_nonce, audit=audit)
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
    """Verdicts of `voters`: passing ones name the submitted report's hash, failing ones another."""
    report_hash = record(chains, sub).report_hash if passed else codec.hash_of(report_for("x", 1))
    advance(chains, [
        signed(chains, chains.keys[i], AuditVerdict(sub, passed, report_hash)) for i in voters
    ])


def vote(chains: LocalChains, sub: bytes, tiers: dict[int, int]) -> None:
    advance(chains, [signed(chains, chains.keys[i], QualityVote(sub, t, 500_000)) for i, t in tiers.items()])


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
    anchor = chains.states[CHAIN_DATASET].head
    nonce = solve_pow(chains.pact.network_id, CONTRIBUTOR.address, cid, anchor, bits)
    digest = compute_pow_hash(chains.pact.network_id, CONTRIBUTOR.address, cid, anchor, nonce)
    assert leading_zero_bits(digest) >= bits
    assert leading_zero_bits(bytes(32)) == 256 and leading_zero_bits(b"\x80" + bytes(31)) == 0
    assert solve_pow(chains.pact.network_id, CONTRIBUTOR.address, cid, anchor, 40, count=10) is None


def weak_nonce(chains: LocalChains, cid: str, key=CONTRIBUTOR) -> int:
    bits = chains.pact.params.dataset.pow_difficulty_bits
    anchor = chains.states[CHAIN_DATASET].head
    nonce = 0
    while leading_zero_bits(compute_pow_hash(chains.pact.network_id, key.address, cid, anchor, nonce)) >= bits:
        nonce += 1
    return nonce


def test_invalid_pow_too_weak(chains: LocalChains) -> None:
    payload = submission(chains, "weak", pow_nonce=weak_nonce(chains, cid_of("weak")))
    assert_invalid(chains, signed(chains, CONTRIBUTOR, payload), "proof of work too weak")


def test_invalid_pow_solved_for_another_contributor(chains: LocalChains) -> None:
    bits = chains.pact.params.dataset.pow_difficulty_bits
    anchor = chains.states[CHAIN_DATASET].head
    # A label whose nonce, solved for OTHER, does not happen to satisfy CONTRIBUTOR's hash too.
    for label in (f"stolen-{i}" for i in range(64)):
        nonce = solve_pow(chains.pact.network_id, OTHER.address, cid_of(label), anchor, bits)
        digest = compute_pow_hash(chains.pact.network_id, CONTRIBUTOR.address, cid_of(label), anchor, nonce)
        if leading_zero_bits(digest) < bits:
            break
    payload = submission(chains, label, pow_nonce=nonce)
    assert_invalid(chains, signed(chains, CONTRIBUTOR, payload), "proof of work too weak")


def test_pow_is_bound_to_its_anchor_block(chains: LocalChains) -> None:
    """Work done on one block does not count on another: the anchor hash is in the hashed input."""
    submit(chains, "first")
    payload = submission(chains, "anchored")
    other_block = replace(payload, anchor_hash=bytes(32))
    assert_invalid(chains, signed(chains, CONTRIBUTOR, other_block), "anchor hash is not the hash of block")
    advance(chains, [signed(chains, CONTRIBUTOR, payload)])


def test_pow_expires_after_the_window() -> None:
    chains = make_chains(dataset=replace(make_params().dataset, pow_window=3))
    payload = submission(chains, "late")
    for i in range(4):
        submit(chains, f"filler-{i}", key=OTHER)
    assert_invalid(chains, signed(chains, CONTRIBUTOR, payload), "proof of work expired")
    # the kept block hashes are bounded by the window
    kept = [k for k, _ in chains.states[CHAIN_DATASET].items() if k[:1] == b"h"]
    assert len(kept) <= 3 + 2


def test_pow_anchor_cannot_be_in_the_future(chains: LocalChains) -> None:
    payload = submission(chains, "future")
    ahead = replace(payload, anchor_height=payload.anchor_height + 1, audit=replace(
        payload.audit, anchor_height=payload.anchor_height + 1))
    assert_invalid(chains, signed(chains, CONTRIBUTOR, ahead), "is not below height")


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


BAD = cid_of("bad")
PERM = make_params().dataset.audit.minhash_perm
BAD_SUBMISSIONS = {
    "not-a-cid": (dict(cid="Qmnotacidv1atall", audit=report_for("Qmnotacidv1atall", 4096)), "not a CIDv1"),
    "size-zero": (dict(size=0, audit=report_for(BAD, 0)), "size 0 outside"),
    "size-too-big": (
        dict(size=make_params().dataset.max_dataset_bytes + 1,
             audit=report_for(BAD, make_params().dataset.max_dataset_bytes + 1)),
        "outside",
    ),
    "format": (dict(format="exe"), "format 'exe'"),
    "license": (dict(license=""), "missing license"),
    "report-other-cid": (dict(audit=report_for(cid_of("other"), 4096)), "another dataset"),
    "report-other-size": (dict(audit=report_for(BAD, 4095)), "another dataset"),
    "report-other-format": (dict(audit=report_for(BAD, 4096, format="jsonl")), "another dataset"),
    "report-other-anchor": (dict(audit=report_for(BAD, 4096, anchor_height=7)), "another height"),
    "report-auditor": (dict(audit=report_for(BAD, 4096, auditor="homebrew/9")), "network runs"),
    "report-short-minhash": (dict(audit=report_for(BAD, 4096, minhash=(1, 2, 3))), "MinHash signature of 3"),
    "report-unsorted-pii": (
        dict(audit=report_for(BAD, 4096, pii=(PiiFinding("phone", 1, ()), PiiFinding("email", 1, ())))),
        "not sorted",
    ),
    "report-overcounted": (dict(audit=report_for(BAD, 4096, toxicity_flagged=101)), "more flagged"),
    "policy-unparsed": (
        dict(audit=report_for(BAD, 4096, parse_error="line 3: invalid UTF-8", records=0, minhash=())),
        "does not parse as text: line 3: invalid UTF-8",
    ),
    "policy-empty": (dict(audit=report_for(BAD, 4096, records=0)), "holds no records"),
    "policy-pii": (
        dict(audit=report_for(BAD, 4096, pii=(PiiFinding("card", 2, (bytes(32),)),
                                                PiiFinding("email", 3, (bytes(32),))))),
        "personal data: 2 card, 3 email",
    ),
    "policy-toxic": (dict(audit=report_for(BAD, 4096, toxicity_flagged=6)), "toxicity: 6 of 100"),
    "policy-duplicates": (dict(audit=report_for(BAD, 4096, duplicate_records=31)), "duplicates: 31 of 100"),
    "policy-near-duplicate": (
        dict(audit=report_for(BAD, 4096, near_duplicates=(NearDuplicate(cid_of("held"), 930_000),))),
        f"near-duplicate of {cid_of('held')} \\(93.0 % similar",
    ),
}


def test_policy_admits_what_is_below_its_limits(chains: LocalChains) -> None:
    """At the limits (4 findings, 5 % toxic, 30 % duplicates, 79.9 % similar) a dataset is admitted."""
    audit = report_for(cid_of("limits"), 4096, anchor_height=chains.states[CHAIN_DATASET].height,
                       pii=(PiiFinding("email", 4, (bytes(32),)),), toxicity_flagged=5, duplicate_records=30,
                       near_duplicates=(NearDuplicate(cid_of("held"), 799_999),))
    advance(chains, [signed(chains, CONTRIBUTOR, submission(chains, "limits", audit=audit))])


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
    assert_invalid(chains, signed(chains, CONTRIBUTOR, QualityVote(sub, TIER_GOLD, 500_000)), "only validators")


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
    assert_invalid(chains, signed(chains, chains.keys[0], QualityVote(sub, TIER_GOLD, 500_000)), "not open for quality")


def test_invalid_quality_vote_after_decision(chains: LocalChains) -> None:
    sub = submit(chains, "v6")
    audit(chains, sub, [0, 1, 2])
    vote(chains, sub, {0: TIER_GOLD, 1: TIER_GOLD, 2: TIER_GOLD})
    assert_invalid(chains, signed(chains, chains.keys[3], QualityVote(sub, TIER_GOLD, 500_000)), "not open")


def test_invalid_quality_vote_on_rejected(chains: LocalChains) -> None:
    sub = submit(chains, "v7")
    audit(chains, sub, [0, 1], passed=False)
    assert_invalid(chains, signed(chains, chains.keys[2], QualityVote(sub, TIER_GOLD, 500_000)), "not open")


def test_invalid_quality_vote_twice(chains: LocalChains) -> None:
    sub = submit(chains, "v8")
    audit(chains, sub, [0, 1, 2])
    vote(chains, sub, {0: TIER_GOLD})
    assert_invalid(chains, signed(chains, chains.keys[0], QualityVote(sub, TIER_SILVER, 500_000)), "already voted")


def test_invalid_quality_vote_unknown_tier(chains: LocalChains) -> None:
    sub = submit(chains, "v9")
    audit(chains, sub, [0, 1, 2])
    assert_invalid(chains, signed(chains, chains.keys[0], QualityVote(sub, TIER_GOLD + 1, 500_000)), "unknown tier 4")


# --- the report hash, reputation, honeypots, voters' pay ------------------------------------


def test_submission_records_the_report_hash_and_signature(chains: LocalChains) -> None:
    payload = submission(chains, "hashed")
    tx = signed(chains, CONTRIBUTOR, payload)
    advance(chains, [tx])
    rec = record(chains, tx.hash())
    assert rec.report_hash == codec.hash_of(payload.audit) and rec.minhash == payload.audit.minhash


def test_invalid_verdict_that_contradicts_its_report_hash(chains: LocalChains) -> None:
    sub = submit(chains, "bound")
    real = record(chains, sub).report_hash
    other = codec.hash_of(report_for("x", 1))
    for passed, report_hash in ((True, other), (False, real)):
        tx = signed(chains, chains.keys[0], AuditVerdict(sub, passed, report_hash))
        assert_invalid(chains, tx, "a passing verdict names the submitted report's hash")


def test_forged_report_is_rejected_by_honest_reruns(chains: LocalChains) -> None:
    """Validators whose reruns give another report name its hash and fail the dataset; the
    contributor loses an approval, the honest auditors are graded right and paid."""
    good = submit(chains, "good")
    audit(chains, good, [0, 1, 2])
    vote(chains, good, {0: TIER_SILVER, 1: TIER_SILVER, 2: TIER_SILVER})
    assert int.from_bytes(chains.states[CHAIN_DATASET].get(reputation_key(CONTRIBUTOR.address)), "big") == 1
    forged = submit(chains, "forged")
    audit(chains, forged, [0, 1], passed=False)
    assert record(chains, forged).status == STATUS_REJECTED
    state = chains.states[CHAIN_DATASET]
    assert int.from_bytes(state.get(reputation_key(CONTRIBUTOR.address)), "big") == 0
    voter = get_voter(Overlay(state), chains.keys[0].address)
    assert voter.right == voter.graded == 3  # audit and tier of "good", audit of "forged"
    earning = codec.decode(Earning, state.get(earning_key(compute_earning_id(forged, chains.keys[0].address,
                                                                             "audit-vote"))))
    assert earning == Earning(chains.keys[0].address, chains.pact.params.rewards.dataset_vote_reward, "audit-vote")


def test_voters_against_the_outcome_are_graded_wrong_and_unpaid(chains: LocalChains) -> None:
    sub = submit(chains, "split")
    audit(chains, sub, [0, 1, 2])
    vote(chains, sub, {0: TIER_GOLD, 1: TIER_GOLD, 2: TIER_REJECT})
    state = chains.states[CHAIN_DATASET]
    outlier = chains.keys[2].address
    assert get_voter(Overlay(state), outlier) == VoterRecord(2, 1)  # audit right, tier wrong
    assert state.get(earning_key(compute_earning_id(sub, outlier, "tier-vote"))) is None
    assert state.get(earning_key(compute_earning_id(sub, chains.keys[0].address, "tier-vote"))) is not None


def test_reputation_factor_bounds() -> None:
    params = make_params().dataset
    low = params.reputation.min_factor_ppm
    assert compute_reputation_factor(VoterRecord(0, 0), params) == 1_000_000
    assert compute_reputation_factor(VoterRecord(10, 10), params) == 1_000_000
    assert low < compute_reputation_factor(VoterRecord(10, 0), params) < 1_000_000
    assert compute_reputation_factor(VoterRecord(10_000, 0), params) - low < 1_000
    assert compute_reputation_factor(VoterRecord(4, 2), params) > compute_reputation_factor(VoterRecord(4, 1), params)


def honeypot_chains(label: str, tier: int, salt: bytes = b"s" * 32) -> LocalChains:
    commitment = compute_honeypot_commitment(cid_of(label), tier, salt)
    return make_chains(dataset=replace(make_params().dataset, honeypots=(commitment,)))


def test_honeypot_label_grades_voters_after_the_votes_close() -> None:
    salt = b"s" * 32
    chains = honeypot_chains("honey", TIER_EXPERIMENTAL, salt)
    sub = submit(chains, "honey")
    audit(chains, sub, [0, 1, 2])
    vote(chains, sub, {0: TIER_EXPERIMENTAL})
    early = signed(chains, OTHER, RevealHoneypot(sub, TIER_EXPERIMENTAL, salt))
    assert_invalid(chains, early, "label stays hidden")
    vote(chains, sub, {1: TIER_GOLD, 2: TIER_GOLD})  # two rubber stamps decide gold
    assert record(chains, sub).tier == TIER_GOLD
    wrong_label = signed(chains, OTHER, RevealHoneypot(sub, TIER_GOLD, salt))
    assert_invalid(chains, wrong_label, "no genesis commitment matches")
    wrong_salt = signed(chains, OTHER, RevealHoneypot(sub, TIER_EXPERIMENTAL, b"t" * 32))
    assert_invalid(chains, wrong_salt, "no genesis commitment matches")
    advance(chains, [signed(chains, OTHER, RevealHoneypot(sub, TIER_EXPERIMENTAL, salt))])
    view = Overlay(chains.states[CHAIN_DATASET])
    # audit right; tier wrong by outcome, right by label (the honest one) and the reverse (the stamps)
    assert get_voter(view, chains.keys[0].address) == VoterRecord(3, 2)
    assert get_voter(view, chains.keys[1].address) == VoterRecord(3, 2)
    again = signed(chains, OTHER, RevealHoneypot(sub, TIER_EXPERIMENTAL, salt))
    assert_invalid(chains, again, "already revealed")


def test_rubber_stamps_lose_weight_in_the_median() -> None:
    """Two validators graded wrong many times are outweighed by one graded right, with equal stake."""
    chains = make_chains(stakes=(10_000,) * 3)
    base = chains.states[CHAIN_DATASET]
    view = Overlay(base)
    for i in (1, 2):
        view.put_record(voter_key(chains.keys[i].address), VoterRecord(40, 0))
    chains.states[CHAIN_DATASET] = base.with_changes(view.changes, base.height, base.head, base.time_ms)
    sub = submit(chains, "weighed")
    audit(chains, sub, [0, 1, 2])
    vote(chains, sub, {0: TIER_EXPERIMENTAL, 1: TIER_GOLD, 2: TIER_GOLD})
    assert record(chains, sub).tier == TIER_EXPERIMENTAL
