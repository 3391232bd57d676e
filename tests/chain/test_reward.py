"""Reward chain rules: transfers, stake, unstake and unbonding, epochs, rewards paid once, the
supply equation. Slashing is in test_reward_slash.py; both use the helpers of reward_support.py."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chain import codec
from chain.errors import InvalidTransaction, MissingDependency
from chain.payloads import Reward, Slash, Stake, Transfer, Unstake
from chain.records import (
    EMPTY_ACCOUNT,
    Earning,
    UnbondingQueue,
    account_key,
    paid_key,
    unbonding_key,
)
from chain.reward import get_account, get_supply, get_validator_set, validate_supply
from chain.transition import get_nonce
from chain.types import (
    CHAIN_DATASET,
    CHAIN_PARAMETER,
    CHAIN_REWARD,
)
from genesis.testkit import LocalChains, account_keys, sign_tx, system_tx
from tests.chain.reward_support import (
    AKEYS,
    FUNDS,
    STAKE,
    VKEYS,
    account,
    advance,
    advance_to,
    assert_invalid,
    evidence,
    make_chains,
    net,
    stakers,
    tx_of,
)


@pytest.fixture
def chains() -> LocalChains:
    return make_chains()


def test_transfer_moves_balance(chains: LocalChains) -> None:
    a, b = AKEYS[0], AKEYS[1]
    advance(chains, [tx_of(chains, a, Transfer(b.address, 1_234))])
    assert account(chains, a).balance == FUNDS - 1_234
    assert account(chains, b).balance == FUNDS + 1_234
    assert get_nonce(chains.states[CHAIN_REWARD], a.address) == 1
    supply = get_supply(chains.states[CHAIN_REWARD])
    assert supply.balances == 3 * FUNDS and supply.minted == supply.burned == 0


def test_transfer_to_new_account_creates_it(chains: LocalChains) -> None:
    fresh = account_keys(1, prefix="fresh")[0]
    assert account(chains, fresh) == EMPTY_ACCOUNT
    advance(chains, [tx_of(chains, AKEYS[0], Transfer(fresh.address, 7))])
    assert account(chains, fresh).balance == 7


def test_transfer_to_self_keeps_balance(chains: LocalChains) -> None:
    a = AKEYS[0]
    advance(chains, [tx_of(chains, a, Transfer(a.address, FUNDS))])
    assert account(chains, a).balance == FUNDS


def test_transfer_of_whole_balance_removes_empty_account(chains: LocalChains) -> None:
    a, b = AKEYS[0], AKEYS[1]
    advance(chains, [tx_of(chains, a, Transfer(b.address, FUNDS))])
    assert chains.states[CHAIN_REWARD].get(account_key(a.address)) is None
    assert account(chains, b).balance == 2 * FUNDS


def test_transfers_chain_within_one_block(chains: LocalChains) -> None:
    a, b = AKEYS[0], AKEYS[1]
    txs = [
        sign_tx(a, net(chains), CHAIN_REWARD, 0, Transfer(b.address, FUNDS)),
        sign_tx(b, net(chains), CHAIN_REWARD, 0, Transfer(a.address, 2 * FUNDS)),
    ]
    advance(chains, txs)
    assert account(chains, a).balance == 2 * FUNDS
    assert chains.states[CHAIN_REWARD].get(account_key(b.address)) is None


def test_invalid_transfer_zero(chains: LocalChains) -> None:
    assert_invalid(chains, tx_of(chains, AKEYS[0], Transfer(AKEYS[1].address, 0)), "transfer of zero")


def test_invalid_transfer_above_balance(chains: LocalChains) -> None:
    tx = tx_of(chains, AKEYS[0], Transfer(AKEYS[1].address, FUNDS + 1))
    assert_invalid(chains, tx, "balance 100000 below 100001")


def test_invalid_transfer_from_empty_account(chains: LocalChains) -> None:
    stranger = account_keys(1, prefix="stranger")[0]
    assert_invalid(chains, tx_of(chains, stranger, Transfer(AKEYS[0].address, 1)), "balance 0 below 1")


def test_invalid_transfer_stale_nonce(chains: LocalChains) -> None:
    advance(chains, [tx_of(chains, AKEYS[0], Transfer(AKEYS[1].address, 1))])
    replay = tx_of(chains, AKEYS[0], Transfer(AKEYS[1].address, 2), nonce=0)
    assert_invalid(chains, replay, "nonce 0, expected 1")


def test_invalid_transfer_future_nonce(chains: LocalChains) -> None:
    assert_invalid(chains, tx_of(chains, AKEYS[0], Transfer(AKEYS[1].address, 1), nonce=5), "nonce 5")


def test_invalid_transfer_replayed_in_next_block(chains: LocalChains) -> None:
    tx = tx_of(chains, AKEYS[0], Transfer(AKEYS[1].address, 1))
    advance(chains, [tx])
    assert_invalid(chains, tx, "nonce 0, expected 1")


# --- stake, unstake, unbonding ---------------------------------------------------------------


def test_stake_bonds_balance(chains: LocalChains) -> None:
    a = AKEYS[0]
    advance(chains, [tx_of(chains, a, Stake(3_000))])
    acct = account(chains, a)
    assert (acct.balance, acct.stake, acct.unbonding) == (FUNDS - 3_000, 3_000, 0)
    assert acct.public_key == a.public_key
    assert a.address in stakers(chains)
    supply = get_supply(chains.states[CHAIN_REWARD])
    assert (supply.balances, supply.stakes) == (3 * FUNDS - 3_000, 4 * STAKE + 3_000)


def test_invalid_stake_zero(chains: LocalChains) -> None:
    assert_invalid(chains, tx_of(chains, AKEYS[0], Stake(0)), "stake of zero")


def test_invalid_stake_above_balance(chains: LocalChains) -> None:
    assert_invalid(chains, tx_of(chains, AKEYS[0], Stake(FUNDS + 1)), "below")


def test_unstake_starts_unbonding(chains: LocalChains) -> None:
    v = VKEYS[0]
    block = advance(chains, [tx_of(chains, v, Unstake(4_000))])
    release = block.header.height + chains.pact.params.staking.unbonding_period
    acct = account(chains, v)
    assert (acct.balance, acct.stake, acct.unbonding) == (0, STAKE - 4_000, 4_000)
    queue = codec.decode(UnbondingQueue, chains.states[CHAIN_REWARD].get(unbonding_key(release)))
    assert [(e.address, e.amount) for e in queue.entries] == [(v.address, 4_000)]
    supply = get_supply(chains.states[CHAIN_REWARD])
    assert (supply.stakes, supply.unbonding) == (4 * STAKE - 4_000, 4_000)
    assert v.address in stakers(chains)


def test_unbonding_release_at_height_plus_period(chains: LocalChains) -> None:
    v = VKEYS[1]
    advance_to(chains, 2)
    block = advance(chains, [tx_of(chains, v, Unstake(2_500))])
    release = block.header.height + chains.pact.params.staking.unbonding_period
    advance_to(chains, release - 1)
    assert account(chains, v).unbonding == 2_500
    assert account(chains, v).balance == 0
    assert chains.states[CHAIN_REWARD].get(unbonding_key(release)) is not None
    advance(chains, [])
    acct = account(chains, v)
    assert (acct.balance, acct.stake, acct.unbonding) == (2_500, STAKE - 2_500, 0)
    assert chains.states[CHAIN_REWARD].get(unbonding_key(release)) is None
    assert get_supply(chains.states[CHAIN_REWARD]).unbonding == 0


def test_unbonding_two_unstakes_in_one_block_release_together(chains: LocalChains) -> None:
    v = VKEYS[2]
    txs = [
        sign_tx(v, net(chains), CHAIN_REWARD, 0, Unstake(1_000)),
        sign_tx(v, net(chains), CHAIN_REWARD, 1, Unstake(2_000)),
    ]
    block = advance(chains, txs)
    release = block.header.height + chains.pact.params.staking.unbonding_period
    queue = codec.decode(UnbondingQueue, chains.states[CHAIN_REWARD].get(unbonding_key(release)))
    assert [e.amount for e in queue.entries] == [1_000, 2_000]
    advance_to(chains, release)
    assert account(chains, v).balance == 3_000
    assert account(chains, v).unbonding == 0


def test_unstake_of_whole_stake_removes_staker(chains: LocalChains) -> None:
    v = VKEYS[3]
    advance(chains, [tx_of(chains, v, Unstake(STAKE))])
    assert v.address not in stakers(chains)
    assert account(chains, v).stake == 0


def test_unbonding_amount_cannot_be_spent_early(chains: LocalChains) -> None:
    v = VKEYS[0]
    advance(chains, [tx_of(chains, v, Unstake(1_000))])
    assert_invalid(chains, tx_of(chains, v, Transfer(AKEYS[0].address, 1)), "balance 0 below 1")


def test_invalid_unstake_zero(chains: LocalChains) -> None:
    assert_invalid(chains, tx_of(chains, VKEYS[0], Unstake(0)), "unstake of zero")


def test_invalid_unstake_above_stake(chains: LocalChains) -> None:
    assert_invalid(chains, tx_of(chains, VKEYS[0], Unstake(STAKE + 1)), "stake 10000 below 10001")


def test_invalid_unstake_without_stake(chains: LocalChains) -> None:
    assert_invalid(chains, tx_of(chains, AKEYS[0], Unstake(1)), "stake 0 below 1")


# --- validator set at epoch boundaries ---------------------------------------------------------


def test_validator_set_recomputed_at_epoch_boundary(chains: LocalChains) -> None:
    epoch = chains.pact.params.staking.epoch_length
    newcomer, leaver = AKEYS[0], VKEYS[0]
    genesis_set = get_validator_set(chains.states[CHAIN_REWARD])
    advance(chains, [tx_of(chains, newcomer, Stake(5_000)), tx_of(chains, leaver, Unstake(STAKE))])
    for _height in range(2, epoch):
        advance(chains, [])
        assert chains.states[CHAIN_REWARD].height % epoch != 0
        assert get_validator_set(chains.states[CHAIN_REWARD]) == genesis_set
    advance(chains, [])
    assert chains.states[CHAIN_REWARD].height == epoch
    new_set = get_validator_set(chains.states[CHAIN_REWARD])
    assert new_set.epoch == 1
    members = {v.address: v.power for v in new_set.validators}
    assert members == {
        newcomer.address: 5_000, VKEYS[1].address: STAKE, VKEYS[2].address: STAKE, VKEYS[3].address: STAKE,
    }
    assert new_set.get(newcomer.address).public_key == newcomer.public_key


def test_validator_set_excludes_stake_below_minimum(chains: LocalChains) -> None:
    minimum = chains.pact.params.staking.min_validator_stake
    small, exact = AKEYS[0], AKEYS[1]
    advance(chains, [tx_of(chains, small, Stake(minimum - 1)), tx_of(chains, exact, Stake(minimum))])
    advance_to(chains, chains.pact.params.staking.epoch_length)
    new_set = get_validator_set(chains.states[CHAIN_REWARD])
    assert new_set.get(small.address) is None
    assert new_set.get(exact.address).power == minimum
    assert small.address in stakers(chains)


def test_validator_set_power_follows_stake_changes(chains: LocalChains) -> None:
    v = VKEYS[2]
    advance(chains, [tx_of(chains, v, Unstake(3_000))])
    advance_to(chains, chains.pact.params.staking.epoch_length)
    assert get_validator_set(chains.states[CHAIN_REWARD]).get(v.address).power == STAKE - 3_000
    advance_to(chains, 2 * chains.pact.params.staking.epoch_length)
    assert get_validator_set(chains.states[CHAIN_REWARD]).epoch == 2


# --- rewards -----------------------------------------------------------------------------------


def earnings_of(table: dict[tuple[int, bytes], Earning]):
    return lambda chain_id, tx_hash: table.get((chain_id, tx_hash))


SOURCE = bytes(range(32))


def test_reward_pays_recorded_earning(chains: LocalChains) -> None:
    a = AKEYS[2]
    view = earnings_of({(CHAIN_PARAMETER, SOURCE): Earning(a.address, 100, "delta")})
    advance(chains, [system_tx(CHAIN_REWARD, Reward(CHAIN_PARAMETER, SOURCE, a.address, 100))], view)
    state = chains.states[CHAIN_REWARD]
    assert account(chains, a).balance == FUNDS + 100
    supply = get_supply(state)
    assert supply.minted == 100 and supply.balances == 3 * FUNDS + 100
    assert state.get(paid_key(CHAIN_PARAMETER, SOURCE)) == b"\x01"


def test_reward_pays_dataset_earning_to_new_account(chains: LocalChains) -> None:
    fresh = account_keys(1, prefix="contributor")[0]
    view = earnings_of({(CHAIN_DATASET, SOURCE): Earning(fresh.address, 50, "dataset:gold")})
    advance(chains, [system_tx(CHAIN_REWARD, Reward(CHAIN_DATASET, SOURCE, fresh.address, 50))], view)
    assert account(chains, fresh).balance == 50


def test_reward_same_hash_on_two_chains_are_two_earnings(chains: LocalChains) -> None:
    a = AKEYS[0]
    view = earnings_of({
        (CHAIN_PARAMETER, SOURCE): Earning(a.address, 100, "delta"),
        (CHAIN_DATASET, SOURCE): Earning(a.address, 25, "dataset:silver"),
    })
    advance(chains, [
        system_tx(CHAIN_REWARD, Reward(CHAIN_PARAMETER, SOURCE, a.address, 100)),
        system_tx(CHAIN_REWARD, Reward(CHAIN_DATASET, SOURCE, a.address, 25)),
    ], view)
    assert account(chains, a).balance == FUNDS + 125


def test_invalid_reward_paid_twice(chains: LocalChains) -> None:
    a = AKEYS[2]
    view = earnings_of({(CHAIN_PARAMETER, SOURCE): Earning(a.address, 100, "delta")})
    reward = system_tx(CHAIN_REWARD, Reward(CHAIN_PARAMETER, SOURCE, a.address, 100))
    advance(chains, [reward], view)
    assert_invalid(chains, reward, "already paid", view)


def test_invalid_reward_unknown_earning(chains: LocalChains) -> None:
    a = AKEYS[2]
    reward = system_tx(CHAIN_REWARD, Reward(CHAIN_PARAMETER, SOURCE, a.address, 100))
    assert_invalid(chains, reward, "not known here", earnings_of({}), exc=MissingDependency)


def test_invalid_reward_without_earnings_view(chains: LocalChains) -> None:
    reward = system_tx(CHAIN_REWARD, Reward(CHAIN_PARAMETER, SOURCE, AKEYS[0].address, 100))
    assert_invalid(chains, reward, "no view of earnings", None, exc=MissingDependency)


@pytest.mark.parametrize(
    ("recipient", "amount"), [(1, 100), (0, 101), (0, 99)], ids=["recipient", "more", "less"]
)
def test_invalid_reward_mismatch(chains: LocalChains, recipient: int, amount: int) -> None:
    view = earnings_of({(CHAIN_PARAMETER, SOURCE): Earning(AKEYS[0].address, 100, "delta")})
    reward = system_tx(CHAIN_REWARD, Reward(CHAIN_PARAMETER, SOURCE, AKEYS[recipient].address, amount))
    assert_invalid(chains, reward, "does not match", view)


def test_invalid_reward_from_reward_chain(chains: LocalChains) -> None:
    view = earnings_of({(CHAIN_REWARD, SOURCE): Earning(AKEYS[0].address, 100, "delta")})
    reward = system_tx(CHAIN_REWARD, Reward(CHAIN_REWARD, SOURCE, AKEYS[0].address, 100))
    assert_invalid(chains, reward, "records no earnings", view)


def test_invalid_reward_signed_by_an_account(chains: LocalChains) -> None:
    view = earnings_of({(CHAIN_PARAMETER, SOURCE): Earning(AKEYS[0].address, 100, "delta")})
    reward = tx_of(chains, AKEYS[0], Reward(CHAIN_PARAMETER, SOURCE, AKEYS[0].address, 100))
    assert_invalid(chains, reward, "system transaction has no sender", view)


# --- the supply equation -----------------------------------------------------------------------


def test_supply_audit_after_every_kind_of_movement(chains: LocalChains) -> None:
    a = AKEYS[0]
    view = earnings_of({(CHAIN_DATASET, SOURCE): Earning(a.address, 10, "dataset:experimental")})
    advance(chains, [
        tx_of(chains, a, Transfer(AKEYS[1].address, 5)),
        sign_tx(a, net(chains), CHAIN_REWARD, 1, Stake(2_000)),
        sign_tx(a, net(chains), CHAIN_REWARD, 2, Unstake(500)),
        system_tx(CHAIN_REWARD, Reward(CHAIN_DATASET, SOURCE, a.address, 10)),
        system_tx(CHAIN_REWARD, Slash(evidence(VKEYS[0], chains))),
    ], view)
    advance_to(chains, chains.pact.params.staking.epoch_length)
    supply = get_supply(chains.states[CHAIN_REWARD])
    assert supply.is_balanced()
    assert supply.genesis == 3 * FUNDS + 4 * STAKE
    assert (supply.minted, supply.burned, supply.unbonding) == (10, STAKE // 10, 0)


def test_supply_audit_detects_tampered_account(chains: LocalChains) -> None:
    state = chains.states[CHAIN_REWARD]
    acct = get_account(state, AKEYS[0].address)
    bad = state.with_changes(
        {account_key(AKEYS[0].address): codec.encode(replace(acct, balance=acct.balance + 1))},
        state.height, state.head, state.time_ms,
    )
    with pytest.raises(InvalidTransaction, match="accounts sum to"):
        validate_supply(bad)
