"""Reward chain slashing: evidence of equivocation burns a share of the bonded stake, once per
offence, and tombstones the validator."""

from __future__ import annotations

import pytest

from chain.commit import evidence_key, sign_vote
from chain.context import Context
from chain.errors import InvalidTransaction
from chain.payloads import DuplicateVoteEvidence, Slash, Unstake
from chain.records import KEY_VALIDATORS, slashed_key, tombstone_key
from chain.reward import get_supply, get_validator_set
from chain.state import Overlay
from chain.transition import apply_tx
from chain.types import (
    CHAIN_PARAMETER,
    CHAIN_REWARD,
    STEP_PRECOMMIT,
    STEP_PREVOTE,
    Vote,
    make_validator_set,
)
from genesis.testkit import LocalChains, system_tx
from tests.chain.reward_support import (
    AKEYS,
    STAKE,
    VKEYS,
    account,
    advance,
    advance_to,
    assert_invalid,
    conflicting_votes,
    evidence,
    make_chains,
    net,
    stakers,
    tx_of,
)


@pytest.fixture
def chains() -> LocalChains:
    return make_chains()


def test_slash_burns_share_of_stake(chains: LocalChains) -> None:
    offender = VKEYS[1]
    ev = evidence(offender, chains)
    advance(chains, [system_tx(CHAIN_REWARD, Slash(ev))])
    burned = STAKE * chains.pact.params.staking.slash_ppm // 1_000_000
    assert burned > 0
    assert account(chains, offender).stake == STAKE - burned
    supply = get_supply(chains.states[CHAIN_REWARD])
    assert (supply.burned, supply.stakes) == (burned, 4 * STAKE - burned)
    stored = chains.states[CHAIN_REWARD].get(slashed_key(evidence_key(ev)))
    assert int.from_bytes(stored, "big") == burned
    assert offender.address in stakers(chains)


def test_slash_of_prevote_equivocation(chains: LocalChains) -> None:
    ev = evidence(VKEYS[0], chains, step=STEP_PREVOTE, round_=3)
    advance(chains, [system_tx(CHAIN_REWARD, Slash(ev))])
    assert account(chains, VKEYS[0]).stake < STAKE


def test_slash_nil_against_block_is_equivocation(chains: LocalChains) -> None:
    ev = evidence(VKEYS[0], chains, hashes=(bytes(32), b"\x05" * 32))
    advance(chains, [system_tx(CHAIN_REWARD, Slash(ev))])
    assert get_supply(chains.states[CHAIN_REWARD]).burned > 0


def test_slash_tombstones_the_validator(chains: LocalChains) -> None:
    offender = VKEYS[2]
    first, second = evidence(offender, chains, height=5), evidence(offender, chains, height=6)
    advance(chains, [system_tx(CHAIN_REWARD, Slash(first))])
    assert chains.states[CHAIN_REWARD].get(tombstone_key(offender.address)) is not None
    assert_invalid(chains, system_tx(CHAIN_REWARD, Slash(second)), "tombstoned")
    ppm = chains.pact.params.staking.slash_ppm
    assert account(chains, offender).stake == STAKE - STAKE * ppm // 1_000_000
    advance_to(chains, chains.pact.params.staking.epoch_length)
    assert chains.states[CHAIN_REWARD].height % chains.pact.params.staking.epoch_length == 0
    nxt = get_validator_set(chains.states[CHAIN_REWARD])
    assert nxt.get(offender.address) is None, "a tombstoned validator leaves the set at the epoch"
    assert len(nxt.validators) == len(VKEYS) - 1


def test_slash_reaches_stake_unbonded_while_still_a_validator(chains: LocalChains) -> None:
    offender = VKEYS[3]
    block = advance(chains, [tx_of(chains, offender, Unstake(STAKE))])
    # still in the deciding set of this epoch: its precommits count in commit certificates
    assert chains.context().validators.get(offender.address).power == STAKE
    advance(chains, [system_tx(CHAIN_REWARD, Slash(evidence(offender, chains)))])
    burned = STAKE * chains.pact.params.staking.slash_ppm // 1_000_000
    supply = get_supply(chains.states[CHAIN_REWARD])
    assert (supply.burned, supply.unbonding) == (burned, STAKE - burned)
    acct = account(chains, offender)
    assert (acct.stake, acct.unbonding) == (0, STAKE - burned)
    assert offender.address not in stakers(chains)
    advance_to(chains, block.header.height + chains.pact.params.staking.unbonding_period)
    acct = account(chains, offender)
    assert (acct.balance, acct.stake, acct.unbonding) == (STAKE - burned, 0, 0)
    assert get_supply(chains.states[CHAIN_REWARD]).unbonding == 0


def test_slash_takes_stake_before_unbonding(chains: LocalChains) -> None:
    offender = VKEYS[2]
    advance(chains, [tx_of(chains, offender, Unstake(4_000))])
    advance(chains, [system_tx(CHAIN_REWARD, Slash(evidence(offender, chains)))])
    burned = STAKE * chains.pact.params.staking.slash_ppm // 1_000_000  # over stake + unbonding
    acct = account(chains, offender)
    assert (acct.stake, acct.unbonding) == (STAKE - 4_000 - burned, 4_000)
    advance_to(chains, 1 + chains.pact.params.staking.unbonding_period)
    assert account(chains, offender).balance == 4_000


def test_slash_while_unbonding_twice_releases_the_rest(chains: LocalChains) -> None:
    offender = VKEYS[1]
    period = chains.pact.params.staking.unbonding_period
    first = advance(chains, [tx_of(chains, offender, Unstake(3_000))]).header.height
    second = advance(chains, [tx_of(chains, offender, Unstake(STAKE - 3_000))]).header.height
    advance(chains, [system_tx(CHAIN_REWARD, Slash(evidence(offender, chains)))])
    burned = STAKE * chains.pact.params.staking.slash_ppm // 1_000_000
    assert account(chains, offender).unbonding == STAKE - burned
    advance_to(chains, first + period)
    assert account(chains, offender).balance == 3_000
    advance_to(chains, second + period)
    acct = account(chains, offender)
    assert (acct.balance, acct.stake, acct.unbonding) == (STAKE - burned, 0, 0)
    assert get_supply(chains.states[CHAIN_REWARD]).unbonding == 0


def test_slash_of_fully_released_account_burns_nothing(chains: LocalChains) -> None:
    offender = VKEYS[0]
    advance(chains, [tx_of(chains, offender, Unstake(STAKE))])
    advance_to(chains, 1 + chains.pact.params.staking.unbonding_period)
    advance(chains, [system_tx(CHAIN_REWARD, Slash(evidence(offender, chains)))])
    assert get_supply(chains.states[CHAIN_REWARD]).burned == 0
    assert account(chains, offender).balance == STAKE


def test_invalid_slash_same_offence_twice(chains: LocalChains) -> None:
    offender = VKEYS[1]
    advance(chains, [system_tx(CHAIN_REWARD, Slash(evidence(offender, chains)))])
    again = system_tx(CHAIN_REWARD, Slash(evidence(offender, chains)))
    assert_invalid(chains, again, "already slashed")
    other_pair = evidence(offender, chains, hashes=(b"\x01" * 32, b"\x09" * 32))
    assert_invalid(chains, system_tx(CHAIN_REWARD, Slash(other_pair)), "already slashed")


def test_invalid_slash_same_offence_twice_in_one_block(chains: LocalChains) -> None:
    offender = VKEYS[1]
    first = system_tx(CHAIN_REWARD, Slash(evidence(offender, chains)))
    second = system_tx(CHAIN_REWARD, Slash(evidence(offender, chains, hashes=(b"\x01" * 32, b"\x03" * 32))))
    block, rejected = chains.advance(CHAIN_REWARD, [first, second])
    assert block.txs == (first,)
    assert [r[0] for r in rejected] == [second]
    assert "already slashed" in str(rejected[0][1])


def _swap(ev: DuplicateVoteEvidence) -> DuplicateVoteEvidence:
    return DuplicateVoteEvidence(ev.vote_b, ev.vote_a)


def _same_block(ev: DuplicateVoteEvidence) -> DuplicateVoteEvidence:
    return DuplicateVoteEvidence(ev.vote_a, ev.vote_a)


def _other_height(chains: LocalChains) -> DuplicateVoteEvidence:
    a = conflicting_votes(VKEYS[0], chains, height=5)[0]
    b = conflicting_votes(VKEYS[0], chains, height=6)[1]
    return DuplicateVoteEvidence(a, b)


def _other_round(chains: LocalChains) -> DuplicateVoteEvidence:
    a = conflicting_votes(VKEYS[0], chains, round_=0)[0]
    b = conflicting_votes(VKEYS[0], chains, round_=1)[1]
    return DuplicateVoteEvidence(a, b)


def _other_step(chains: LocalChains) -> DuplicateVoteEvidence:
    a = conflicting_votes(VKEYS[0], chains, step=STEP_PREVOTE)[0]
    b = conflicting_votes(VKEYS[0], chains, step=STEP_PRECOMMIT)[1]
    return DuplicateVoteEvidence(a, b)


def _other_validator(chains: LocalChains) -> DuplicateVoteEvidence:
    return DuplicateVoteEvidence(
        conflicting_votes(VKEYS[0], chains)[0], conflicting_votes(VKEYS[1], chains)[1]
    )


def _forged_signature(chains: LocalChains) -> DuplicateVoteEvidence:
    """Votes that name validator 0 but are signed by validator 1."""
    v0 = VKEYS[0]
    a, b = (
        sign_vote(VKEYS[1], net(chains), Vote(CHAIN_PARAMETER, 5, 0, STEP_PRECOMMIT, h, v0.address))
        for h in (b"\x01" * 32, b"\x02" * 32)
    )
    return DuplicateVoteEvidence(a, b)


def _other_network(chains: LocalChains) -> DuplicateVoteEvidence:
    k = VKEYS[0]
    a, b = (
        sign_vote(k, "othernet", Vote(CHAIN_PARAMETER, 5, 0, STEP_PRECOMMIT, h, k.address))
        for h in (b"\x01" * 32, b"\x02" * 32)
    )
    return DuplicateVoteEvidence(a, b)


def _non_validator(chains: LocalChains) -> DuplicateVoteEvidence:
    return evidence(AKEYS[0], chains)


def _unknown_step(chains: LocalChains) -> DuplicateVoteEvidence:
    return evidence(VKEYS[0], chains, step=7)


BAD_EVIDENCE = {
    "unordered": (lambda c: _swap(evidence(VKEYS[0], c)), "ordered by block hash"),
    "same-block": (lambda c: _same_block(evidence(VKEYS[0], c)), "must differ"),
    "other-height": (_other_height, "same chain, height"),
    "other-round": (_other_round, "same chain, height"),
    "other-step": (_other_step, "same chain, height"),
    "other-validator": (_other_validator, "same chain, height"),
    "forged-signature": (_forged_signature, "bad vote signature"),
    "other-network": (_other_network, "bad vote signature"),
    "non-validator": (_non_validator, "non-validator"),
    "unknown-step": (_unknown_step, "unknown vote step"),
}


@pytest.mark.parametrize("case", sorted(BAD_EVIDENCE))
def test_invalid_slash_bad_evidence(chains: LocalChains, case: str) -> None:
    build, match = BAD_EVIDENCE[case]
    assert_invalid(chains, system_tx(CHAIN_REWARD, Slash(build(chains))), match)
    assert get_supply(chains.states[CHAIN_REWARD]).burned == 0


def test_invalid_slash_signed_by_an_account(chains: LocalChains) -> None:
    tx = tx_of(chains, AKEYS[0], Slash(evidence(VKEYS[0], chains)))
    assert_invalid(chains, tx, "system transaction has no sender")




def test_context_validators_decide_slash_not_state(chains: LocalChains) -> None:
    """Evidence is checked against the deciding set of the context, not the stored set."""
    ctx = chains.context()
    smaller = make_validator_set(0, [(k.public_key, STAKE) for k in VKEYS[1:]])
    narrowed = Context(ctx.network_id, ctx.params, smaller)
    view = Overlay(Overlay(chains.states[CHAIN_REWARD]))
    with pytest.raises(InvalidTransaction, match="non-validator"):
        apply_tx(view, system_tx(CHAIN_REWARD, Slash(evidence(VKEYS[0], chains))), CHAIN_REWARD, 1, narrowed)
    assert view.changes == {}
    assert chains.states[CHAIN_REWARD].get(KEY_VALIDATORS) is not None
