"""Equivocation evidence awaiting a slash, and the slash transactions (consensus/evidence.py)."""

from __future__ import annotations

import pytest

from chain.commit import InvalidEvidence, evidence_key, sign_vote
from chain.payloads import DuplicateVoteEvidence, Slash
from chain.records import slashed_key, tombstone_key
from chain.reward import get_account
from chain.types import (
    CHAIN_DATASET,
    CHAIN_PARAMETER,
    CHAIN_REWARD,
    STEP_PRECOMMIT,
    STEP_PREVOTE,
    Vote,
    make_validator_set,
)
from consensus.evidence import (
    EvidencePool,
    compute_slash_tx,
    is_slashed,
    make_slash_txs,
)
from genesis.testkit import TEST_NETWORK, LocalChains, make_pact, system_tx, validator_keys

KEYS = validator_keys(4, "evidence-validator")
CHAINS = LocalChains.create(make_pact(KEYS), KEYS)
VALIDATORS = CHAINS.validators
REWARD = CHAINS.states[CHAIN_REWARD]


def equivocation(
    key_index: int = 0,
    height: int = 5,
    round_: int = 0,
    step: int = STEP_PREVOTE,
    chain_id: int = CHAIN_PARAMETER,
    hashes: tuple[bytes, bytes] = (bytes([1]) * 32, bytes([2]) * 32),
) -> DuplicateVoteEvidence:
    key = KEYS[key_index]
    a, b = (
        sign_vote(key, TEST_NETWORK, Vote(chain_id, height, round_, step, h, key.address))
        for h in hashes
    )
    return DuplicateVoteEvidence(a, b)


def slashed(state, *evidence: DuplicateVoteEvidence):
    changes = {slashed_key(evidence_key(ev)): (1).to_bytes(8, "big") for ev in evidence}
    return state.with_changes(changes, state.height, state.head, state.time_ms)


def test_add_valid_evidence() -> None:
    pool = EvidencePool()
    ev = equivocation()
    assert pool.add(ev, TEST_NETWORK, VALIDATORS, REWARD)
    assert len(pool) == 1 and evidence_key(ev) in pool
    assert pool.pending() == [ev]


def test_add_without_state() -> None:
    pool = EvidencePool()
    assert pool.add(equivocation(), TEST_NETWORK, VALIDATORS)


def test_add_same_offence_once() -> None:
    pool = EvidencePool()
    assert pool.add(equivocation(), TEST_NETWORK, VALIDATORS)
    other_pair = equivocation(hashes=(bytes([1]) * 32, bytes([3]) * 32))
    assert not pool.add(other_pair, TEST_NETWORK, VALIDATORS)
    assert not pool.add(equivocation(), TEST_NETWORK, VALIDATORS)
    assert pool.pending() == [equivocation()]


@pytest.mark.parametrize(
    "ev",
    [
        equivocation(hashes=(bytes([2]) * 32, bytes([1]) * 32)),
        equivocation(hashes=(bytes([1]) * 32, bytes([1]) * 32)),
        DuplicateVoteEvidence(equivocation(height=5).vote_a, equivocation(height=6).vote_b),
        DuplicateVoteEvidence(equivocation(0).vote_a, equivocation(1).vote_b),
    ],
    ids=["unordered", "same-block", "other-height", "other-validator"],
)
def test_invalid_evidence_raises(ev: DuplicateVoteEvidence) -> None:
    pool = EvidencePool()
    with pytest.raises(InvalidEvidence):
        pool.add(ev, TEST_NETWORK, VALIDATORS)
    assert len(pool) == 0


def test_invalid_evidence_of_non_validator() -> None:
    outsider = validator_keys(1, "outsider")[0]
    a, b = (
        sign_vote(outsider, TEST_NETWORK, Vote(0, 5, 0, STEP_PREVOTE, bytes([i]) * 32, outsider.address))
        for i in (1, 2)
    )
    with pytest.raises(InvalidEvidence):
        EvidencePool().add(DuplicateVoteEvidence(a, b), TEST_NETWORK, VALIDATORS)


def test_invalid_evidence_wrong_network() -> None:
    with pytest.raises(InvalidEvidence):
        EvidencePool().add(equivocation(), "another-net", VALIDATORS)


def test_add_skips_slashed_offence() -> None:
    ev = equivocation()
    state = slashed(REWARD, ev)
    assert is_slashed(state, evidence_key(ev)) and not is_slashed(REWARD, evidence_key(ev))
    pool = EvidencePool()
    assert not pool.add(ev, TEST_NETWORK, VALIDATORS, state)
    assert pool.add(equivocation(1), TEST_NETWORK, VALIDATORS, state)


def test_add_full() -> None:
    pool = EvidencePool(max_items=2)
    assert pool.add(equivocation(0), TEST_NETWORK, VALIDATORS)
    assert pool.add(equivocation(1), TEST_NETWORK, VALIDATORS)
    assert not pool.add(equivocation(2), TEST_NETWORK, VALIDATORS)
    assert len(pool) == 2


def test_invalid_max_items() -> None:
    with pytest.raises(ValueError):
        EvidencePool(max_items=0)


def test_pending_order_is_height_then_key_whatever_arrival() -> None:
    evs = [
        equivocation(2, height=9),
        equivocation(1, height=3, step=STEP_PRECOMMIT),
        equivocation(0, height=3, chain_id=CHAIN_DATASET),
        equivocation(3, height=7, round_=2),
        equivocation(1, height=3),
    ]
    expected = sorted(evs, key=lambda ev: (ev.vote_a.vote.height, evidence_key(ev)))
    for order in (evs, evs[::-1], evs[2:] + evs[:2]):
        pool = EvidencePool()
        for ev in order:
            pool.add(ev, TEST_NETWORK, VALIDATORS)
        assert pool.pending() == expected


def test_mark_included_forgets_and_ignores_again() -> None:
    pool = EvidencePool()
    ev, other = equivocation(0), equivocation(1)
    pool.add(ev, TEST_NETWORK, VALIDATORS)
    pool.add(other, TEST_NETWORK, VALIDATORS)
    pool.mark_included([ev])
    assert pool.pending() == [other]
    assert not pool.add(ev, TEST_NETWORK, VALIDATORS)


def test_mark_included_memory_is_bounded() -> None:
    pool = EvidencePool(max_items=2)
    evs = [equivocation(0, height=h) for h in range(1, 5)]
    pool.mark_included(evs)
    assert not pool.add(evs[3], TEST_NETWORK, VALIDATORS)
    assert pool.add(evs[0], TEST_NETWORK, VALIDATORS)  # forgotten: the state check remains


def test_prune_drops_slashed_and_no_longer_valid() -> None:
    pool = EvidencePool()
    evs = [equivocation(i) for i in range(3)]
    for ev in evs:
        pool.add(ev, TEST_NETWORK, VALIDATORS)
    # Validator 2 left the set; validator 0's offence was slashed.
    smaller = make_validator_set(1, [(k.public_key, 10) for k in KEYS[:2]])
    assert pool.prune(TEST_NETWORK, smaller, slashed(REWARD, evs[0])) == 2
    assert pool.pending() == [evs[1]]


def test_compute_slash_tx_is_a_system_transaction() -> None:
    ev = equivocation()
    assert compute_slash_tx(ev) == system_tx(CHAIN_REWARD, Slash(ev))


def test_make_slash_txs_apply_and_slash() -> None:
    chains = LocalChains.create(make_pact(KEYS), KEYS)
    pool = EvidencePool()
    evs = [equivocation(0), equivocation(1, height=2, chain_id=CHAIN_REWARD)]
    for ev in evs:
        pool.add(ev, TEST_NETWORK, VALIDATORS, chains.states[CHAIN_REWARD])
    txs = make_slash_txs(pool, chains.states[CHAIN_REWARD])
    assert txs == [compute_slash_tx(ev) for ev in pool.pending()]
    before = get_account(chains.states[CHAIN_REWARD], KEYS[0].address).stake
    block, rejected = chains.advance(CHAIN_REWARD, txs)
    assert rejected == [] and list(block.txs) == txs
    state = chains.states[CHAIN_REWARD]
    assert get_account(state, KEYS[0].address).stake < before
    assert all(is_slashed(state, evidence_key(ev)) for ev in evs)
    assert make_slash_txs(pool, state) == []
    pool.mark_included([tx.body.payload.evidence for tx in block.txs])
    assert len(pool) == 0


def test_make_slash_txs_skips_slashed_and_limits() -> None:
    pool = EvidencePool()
    evs = [equivocation(i) for i in range(4)]
    for ev in evs:
        pool.add(ev, TEST_NETWORK, VALIDATORS)
    state = slashed(REWARD, evs[0])
    pending = [ev for ev in pool.pending() if ev != evs[0]]
    assert make_slash_txs(pool, state) == [compute_slash_tx(ev) for ev in pending]
    assert make_slash_txs(pool, state, limit=2) == [compute_slash_tx(ev) for ev in pending[:2]]


def test_make_slash_txs_one_per_validator() -> None:
    chains = LocalChains.create(make_pact(KEYS), KEYS)
    pool = EvidencePool()
    first, second = equivocation(0, height=2), equivocation(0, height=3)
    pool.add(first, TEST_NETWORK, VALIDATORS)
    pool.add(second, TEST_NETWORK, VALIDATORS)
    txs = make_slash_txs(pool, chains.states[CHAIN_REWARD])
    assert txs == [compute_slash_tx(first)]
    _, rejected = chains.advance(CHAIN_REWARD, txs)
    assert rejected == []
    # The validator is tombstoned: its other offence is not slashed again, and is pruned.
    state = chains.states[CHAIN_REWARD]
    assert make_slash_txs(pool, state) == []
    assert pool.prune(TEST_NETWORK, VALIDATORS, state) == 2
    assert not pool.add(second, TEST_NETWORK, VALIDATORS, state)


def test_add_skips_tombstoned_validator() -> None:
    state = REWARD.with_changes(
        {tombstone_key(KEYS[0].address): (1).to_bytes(8, "big")}, REWARD.height, REWARD.head, REWARD.time_ms
    )
    assert not EvidencePool().add(equivocation(0), TEST_NETWORK, VALIDATORS, state)
