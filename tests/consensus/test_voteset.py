"""Vote tallies, quorums, dedup, equivocation and bounds (consensus/voteset.py)."""

from __future__ import annotations

import pytest

from chain.commit import make_commit, sign_vote, validate_evidence, verify_commit
from chain.crypto import PrivateKey
from chain.types import ValidatorSet, make_validator_set
from chain.votes import NIL, STEP_PRECOMMIT, STEP_PREVOTE, SignedVote, Vote
from consensus.voteset import VoteSet

NET = "test-net"
CHAIN = 1
HEIGHT = 5
BLOCK_A = b"\xaa" * 32
BLOCK_B = b"\xbb" * 32

Keys = list[PrivateKey]


@pytest.fixture
def keys() -> list[PrivateKey]:
    ks = [PrivateKey.from_label(f"voteset-{i}") for i in range(4)]
    return sorted(ks, key=lambda k: k.address)


@pytest.fixture
def vals(keys: list[PrivateKey]) -> ValidatorSet:
    return make_validator_set(0, [(k.public_key, 10) for k in keys])


def vote(key: PrivateKey, round: int, step: int, block: bytes, height: int = HEIGHT) -> SignedVote:
    return sign_vote(key, NET, Vote(CHAIN, height, round, step, block, key.address))


def test_add_counts_power_per_round_step_and_block(keys: Keys, vals: ValidatorSet) -> None:
    vs = VoteSet(CHAIN, HEIGHT, vals)
    assert vs.add(vote(keys[0], 0, STEP_PREVOTE, BLOCK_A), 0).added
    assert vs.add(vote(keys[1], 0, STEP_PREVOTE, NIL), 0).added
    assert vs.add(vote(keys[2], 0, STEP_PRECOMMIT, BLOCK_A), 0).added
    assert vs.get_power(0, STEP_PREVOTE, BLOCK_A) == 10
    assert vs.get_power(0, STEP_PREVOTE, NIL) == 10
    assert vs.get_power_any(0, STEP_PREVOTE) == 20
    assert vs.get_power(0, STEP_PRECOMMIT, BLOCK_A) == 10
    assert vs.get_voters(0) == {keys[0].address, keys[1].address, keys[2].address}
    assert len(vs) == 3


def test_quorum_needs_more_than_two_thirds(keys: Keys, vals: ValidatorSet) -> None:
    vs = VoteSet(CHAIN, HEIGHT, vals)
    for k in keys[:2]:
        vs.add(vote(k, 0, STEP_PREVOTE, BLOCK_A), 0)
    vs.add(vote(keys[2], 0, STEP_PREVOTE, NIL), 0)
    assert not vs.has_two_thirds_for(0, STEP_PREVOTE, BLOCK_A)
    assert vs.has_two_thirds_any(0, STEP_PREVOTE)
    assert vs.get_two_thirds_majority(0, STEP_PREVOTE) is None
    vs.add(vote(keys[3], 0, STEP_PREVOTE, BLOCK_A), 0)
    assert vs.has_two_thirds_for(0, STEP_PREVOTE, BLOCK_A)
    assert vs.get_two_thirds_majority(0, STEP_PREVOTE) == BLOCK_A
    assert [v.vote.validator for v in vs.get_votes(0, STEP_PREVOTE, BLOCK_A)] == [
        keys[0].address, keys[1].address, keys[3].address
    ]


def test_one_third_any_and_skip_round(keys: Keys, vals: ValidatorSet) -> None:
    vs = VoteSet(CHAIN, HEIGHT, vals)
    vs.add(vote(keys[0], 3, STEP_PREVOTE, BLOCK_A), 0)
    assert not vs.has_one_third_any(3)
    assert vs.get_skip_round(0) is None
    vs.add(vote(keys[1], 3, STEP_PRECOMMIT, NIL), 0)
    assert vs.has_one_third_any(3)
    assert vs.get_skip_round(0) == 3
    assert vs.get_skip_round(3) is None


def test_duplicate_vote_is_not_counted_twice(keys: Keys, vals: ValidatorSet) -> None:
    vs = VoteSet(CHAIN, HEIGHT, vals)
    v = vote(keys[0], 0, STEP_PREVOTE, BLOCK_A)
    assert vs.add(v, 0).added
    again = vs.add(v, 0)
    assert not again.added and again.evidence is None
    assert vs.get_power(0, STEP_PREVOTE, BLOCK_A) == 10


def test_equivocation_returns_sorted_evidence_once(keys: Keys, vals: ValidatorSet) -> None:
    vs = VoteSet(CHAIN, HEIGHT, vals)
    vs.add(vote(keys[0], 1, STEP_PRECOMMIT, BLOCK_B), 1)
    result = vs.add(vote(keys[0], 1, STEP_PRECOMMIT, BLOCK_A), 1)
    assert not result.added
    ev = result.evidence
    assert ev is not None
    assert ev.vote_a.vote.block_hash == BLOCK_A and ev.vote_b.vote.block_hash == BLOCK_B
    validate_evidence(ev, NET, vals)
    assert vs.get_power(1, STEP_PRECOMMIT, BLOCK_B) == 10  # the first vote stays
    assert vs.get_power(1, STEP_PRECOMMIT, BLOCK_A) == 0
    assert vs.add(vote(keys[0], 1, STEP_PRECOMMIT, NIL), 1).evidence is None


def test_equivocator_vote_counts_for_a_tracked_block(keys: Keys, vals: ValidatorSet) -> None:
    vs = VoteSet(CHAIN, HEIGHT, vals)
    vs.track_block(BLOCK_A)
    vs.add(vote(keys[0], 0, STEP_PRECOMMIT, NIL), 0)
    result = vs.add(vote(keys[0], 0, STEP_PRECOMMIT, BLOCK_A), 0)
    assert result.added and result.evidence is not None
    assert not vs.add(vote(keys[0], 0, STEP_PRECOMMIT, BLOCK_A), 0).added  # once per block
    for k in keys[1:3]:
        vs.add(vote(k, 0, STEP_PRECOMMIT, BLOCK_A), 0)
    assert vs.get_power(0, STEP_PRECOMMIT, BLOCK_A) == 30
    assert vs.get_power(0, STEP_PRECOMMIT, NIL) == 10
    assert vs.get_power_any(0, STEP_PRECOMMIT) == 30  # the equivocator counts once for "any"
    assert vs.get_vote(0, STEP_PRECOMMIT, keys[0].address).vote.block_hash == NIL
    commit = make_commit(vs.get_votes(0, STEP_PRECOMMIT, BLOCK_A))
    verify_commit(CHAIN, HEIGHT, BLOCK_A, commit, vals, NET)


def test_equivocator_votes_for_made_up_blocks_not_stored(keys: Keys, vals: ValidatorSet) -> None:
    vs = VoteSet(CHAIN, HEIGHT, vals)
    vs.add(vote(keys[0], 0, STEP_PREVOTE, BLOCK_A), 0)
    for i in range(1, 21):  # none of them is NIL or a proposed block
        assert not vs.add(vote(keys[0], 0, STEP_PREVOTE, bytes([i]) * 32), 0).added
    assert len(vs) == 1


def test_nil_and_block_votes_are_equivocation(keys: Keys, vals: ValidatorSet) -> None:
    vs = VoteSet(CHAIN, HEIGHT, vals)
    vs.add(vote(keys[2], 0, STEP_PREVOTE, BLOCK_A), 0)
    ev = vs.add(vote(keys[2], 0, STEP_PREVOTE, NIL), 0).evidence
    assert ev is not None and ev.vote_a.vote.block_hash == NIL
    validate_evidence(ev, NET, vals)


def test_prevote_and_precommit_are_not_equivocation(keys: Keys, vals: ValidatorSet) -> None:
    vs = VoteSet(CHAIN, HEIGHT, vals)
    assert vs.add(vote(keys[0], 0, STEP_PREVOTE, BLOCK_A), 0).added
    assert vs.add(vote(keys[0], 0, STEP_PRECOMMIT, NIL), 0).evidence is None
    assert vs.add(vote(keys[0], 1, STEP_PREVOTE, BLOCK_B), 0).evidence is None


def test_invalid_vote_for_other_height_ignored(keys: Keys, vals: ValidatorSet) -> None:
    vs = VoteSet(CHAIN, HEIGHT, vals)
    result = vs.add(vote(keys[0], 0, STEP_PREVOTE, BLOCK_A, height=HEIGHT + 1), 0)
    assert not result.added and "height" in result.reason
    assert len(vs) == 0


def test_invalid_vote_from_non_validator_ignored(vals: ValidatorSet) -> None:
    vs = VoteSet(CHAIN, HEIGHT, vals)
    stranger = PrivateKey.from_label("stranger")
    assert not vs.add(vote(stranger, 0, STEP_PREVOTE, BLOCK_A), 0).added


def test_rounds_far_ahead_ignored(keys: Keys, vals: ValidatorSet) -> None:
    vs = VoteSet(CHAIN, HEIGHT, vals, max_round_ahead=2)
    assert vs.add(vote(keys[0], 2, STEP_PREVOTE, BLOCK_A), 0).added
    assert not vs.add(vote(keys[0], 3, STEP_PREVOTE, BLOCK_A), 0).added
    assert vs.add(vote(keys[0], 3, STEP_PREVOTE, BLOCK_A), 1).added


def test_total_stored_is_capped(keys: Keys, vals: ValidatorSet) -> None:
    vs = VoteSet(CHAIN, HEIGHT, vals, max_votes=3)
    results = [vs.add(vote(k, 0, STEP_PREVOTE, BLOCK_A), 0) for k in keys]
    assert [r.added for r in results] == [True, True, True, False]
    assert results[3].reason == "vote set full"
    assert len(vs) == 3


def test_unequal_power_quorum(keys: Keys) -> None:
    vals = make_validator_set(0, [(k.public_key, p) for k, p in zip(keys, [70, 10, 10, 10], strict=True)])
    heavy = next(k for k in keys if vals.get(k.address).power == 70)
    vs = VoteSet(CHAIN, HEIGHT, vals)
    vs.add(vote(heavy, 0, STEP_PRECOMMIT, BLOCK_A), 0)
    assert vs.has_two_thirds_for(0, STEP_PRECOMMIT, BLOCK_A)


def test_one_third_exactly_is_not_f_plus_one(keys: Keys) -> None:
    vals = make_validator_set(0, [(k.public_key, 1) for k in keys[:3]])
    vs = VoteSet(CHAIN, HEIGHT, vals)
    vs.add(vote(keys[0], 2, STEP_PREVOTE, NIL), 0)
    assert not vs.has_one_third_any(2)
    vs.add(vote(keys[1], 2, STEP_PREVOTE, NIL), 0)
    assert vs.has_one_third_any(2)
    assert not vs.has_two_thirds_any(2, STEP_PREVOTE)  # 2 of 3 is not more than 2/3


def test_a_vote_is_decisive_when_it_takes_a_tally_over_two_thirds(keys: Keys, vals: ValidatorSet) -> None:
    vs = VoteSet(CHAIN, HEIGHT, vals)
    decisive = [vs.add(vote(k, 0, STEP_PREVOTE, BLOCK_A), 0).decisive for k in keys]
    assert decisive == [False, False, True, False]  # 30 of 40 is the first quorum
    vs.add(vote(keys[0], 0, STEP_PRECOMMIT, BLOCK_A), 0)
    vs.add(vote(keys[1], 0, STEP_PRECOMMIT, BLOCK_A), 0)
    # 2f+1 precommits "for anything" (line 47) is reached by a nil vote, though A's tally is not.
    assert vs.add(vote(keys[2], 0, STEP_PRECOMMIT, NIL), 0).decisive
    assert not vs.add(vote(keys[3], 0, STEP_PRECOMMIT, NIL), 0).decisive


def test_a_first_vote_in_a_later_round_is_decisive(keys: Keys, vals: ValidatorSet) -> None:
    vs = VoteSet(CHAIN, HEIGHT, vals)
    assert vs.add(vote(keys[0], 2, STEP_PREVOTE, NIL), 0).decisive  # a new voter of round 2 (line 55)
    assert not vs.add(vote(keys[0], 2, STEP_PRECOMMIT, NIL), 0).decisive  # the same voter again
    assert not vs.add(vote(keys[1], 2, STEP_PREVOTE, NIL), 2).decisive  # round 2 is the current one


def test_an_equivocators_counted_vote_is_decisive_when_it_makes_a_quorum(keys: Keys, vals: ValidatorSet) -> None:
    vs = VoteSet(CHAIN, HEIGHT, vals)
    vs.track_block(BLOCK_B)
    vs.add(vote(keys[0], 0, STEP_PREVOTE, BLOCK_A), 0)
    vs.add(vote(keys[1], 0, STEP_PREVOTE, BLOCK_B), 0)
    vs.add(vote(keys[2], 0, STEP_PREVOTE, BLOCK_B), 0)
    result = vs.add(vote(keys[0], 0, STEP_PREVOTE, BLOCK_B), 0)  # keys[0] votes B too
    assert result.added and result.evidence is not None and result.decisive
