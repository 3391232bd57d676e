"""Pending transactions: admission, caps, eviction, fair selection, removal (consensus/mempool.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chain import codec
from chain.payloads import Reward, Stake, Transfer, Unstake
from chain.state import Overlay, State
from chain.transition import apply_tx, get_nonce
from chain.types import CHAIN_PARAMETER, CHAIN_REWARD, Transaction
from consensus.mempool import AddResult, Mempool, MempoolConfig, Outcome
from genesis.testkit import (
    TEST_NETWORK,
    LocalChains,
    account_keys,
    make_pact,
    sign_tx,
    system_tx,
    validator_keys,
)

VALIDATORS = validator_keys(4, "mempool-validator")
SENDERS = account_keys(4, "mempool-sender")
ADDRESS_OF = {k.public_key: k.address for k in SENDERS}
RECIPIENT = bytes([7]) * 20
AMOUNTS = (1, 2, 2**40)
"""Transfer amount by variant; the last makes an 8-byte-larger transaction."""
BALANCE = 10**18


def new_chains() -> LocalChains:
    pact = make_pact(VALIDATORS, [(k.address, BALANCE) for k in SENDERS])
    return LocalChains.create(pact, VALIDATORS)


CHAINS = new_chains()
GENESIS = CHAINS.states[CHAIN_REWARD]
CTX = CHAINS.context()

_SIGNED: dict[tuple[int, int, int], Transaction] = {}


def transfer(sender: int, nonce: int, variant: int = 0) -> Transaction:
    """A signed transfer; `variant` makes a different transaction with the same nonce."""
    key = (sender, nonce, variant)
    if key not in _SIGNED:
        _SIGNED[key] = sign_tx(
            SENDERS[sender], TEST_NETWORK, CHAIN_REWARD, nonce, Transfer(RECIPIENT, AMOUNTS[variant])
        )
    return _SIGNED[key]


def size_of(tx: Transaction) -> int:
    return len(codec.encode(tx))


def pool(**limits: int) -> Mempool:
    return Mempool(CHAIN_REWARD, MempoolConfig(**{**vars_of(MempoolConfig.for_tests()), **limits}))


def vars_of(config: MempoolConfig) -> dict[str, int]:
    return {f: getattr(config, f) for f in config.__dataclass_fields__}


def commit(state: State, txs: list[Transaction]) -> State:
    """The state after applying `txs` in order (each must apply)."""
    view = Overlay(state)
    for tx in txs:
        apply_tx(view, tx, CHAIN_REWARD, state.height + 1, CTX)
    return state.with_changes(view.changes, state.height + 1, bytes(32), state.time_ms + 1)


def hashes(txs: list[Transaction]) -> list[bytes]:
    return [tx.hash() for tx in txs]


# --- config and results -------------------------------------------------------------------


def test_config_defaults() -> None:
    c = MempoolConfig()
    assert (c.max_txs, c.max_bytes, c.max_per_sender, c.max_nonce_gap) == (5_000, 16 << 20, 64, 64)
    assert MempoolConfig.for_tests().max_txs < c.max_txs


def test_invalid_config_nonpositive() -> None:
    with pytest.raises(ValueError):
        MempoolConfig(max_per_sender=0)


def test_add_result_flags() -> None:
    assert AddResult(Outcome.ADDED).added
    assert AddResult(Outcome.INVALID, "bad").is_invalid
    for outcome in (Outcome.DUPLICATE, Outcome.NONCE_TOO_LOW, Outcome.NONCE_GAP, Outcome.NONCE_TAKEN,
                    Outcome.FULL, Outcome.SENDER_FULL, Outcome.FAILS_STATE):
        result = AddResult(outcome, "x")
        assert not result.added and not result.is_invalid


# --- admission ----------------------------------------------------------------------------


def test_add_valid_transaction() -> None:
    mp = pool()
    tx = transfer(0, 0)
    result = mp.add(tx, GENESIS, CTX)
    assert result == AddResult(Outcome.ADDED)
    assert len(mp) == 1 and tx.hash() in mp
    assert mp.get(tx.hash()) == tx
    assert mp.pending_hashes() == [tx.hash()]
    assert mp.total_bytes == size_of(tx)
    assert mp.count_of(SENDERS[0].address) == 1


def test_add_duplicate() -> None:
    mp = pool()
    mp.add(transfer(0, 0), GENESIS, CTX)
    assert mp.add(transfer(0, 0), GENESIS, CTX).outcome is Outcome.DUPLICATE
    assert len(mp) == 1


def test_add_same_nonce_other_transaction_is_nonce_taken() -> None:
    mp = pool()
    mp.add(transfer(0, 0), GENESIS, CTX)
    result = mp.add(transfer(0, 0, variant=1), GENESIS, CTX)
    assert result.outcome is Outcome.NONCE_TAKEN and transfer(0, 0).hash().hex() in result.reason
    assert not result.is_invalid
    assert mp.pending_hashes() == [transfer(0, 0).hash()]


def test_invalid_bad_signature() -> None:
    tx = transfer(0, 0)
    forged = Transaction(tx.body, bytes(64 - 1) + b"\x01")
    result = pool().add(forged, GENESIS, CTX)
    assert result.is_invalid and "signature" in result.reason


def test_invalid_signed_for_another_network() -> None:
    tx = sign_tx(SENDERS[0], "another-network", CHAIN_REWARD, 0, Transfer(RECIPIENT, 1))
    result = pool().add(tx, GENESIS, CTX, check_state=True)
    assert result.is_invalid and "bad signature" in result.reason and repr(TEST_NETWORK) in result.reason


def test_invalid_wrong_chain() -> None:
    tx = sign_tx(SENDERS[0], TEST_NETWORK, CHAIN_PARAMETER, 0, Transfer(RECIPIENT, 1))
    assert pool().add(tx, GENESIS, CTX).is_invalid


def test_invalid_payload_of_another_chain() -> None:
    mp = Mempool(CHAIN_PARAMETER, MempoolConfig.for_tests())
    state = CHAINS.states[CHAIN_PARAMETER]
    assert mp.add(transfer(0, 0), state, CTX).is_invalid


def test_invalid_system_transaction() -> None:
    tx = system_tx(CHAIN_REWARD, Reward(CHAIN_PARAMETER, bytes(32), RECIPIENT, 5))
    result = pool().add(tx, GENESIS, CTX)
    assert result.is_invalid and "system" in result.reason


def test_invalid_too_large() -> None:
    tx = transfer(0, 0)
    small = replace(CTX, params=replace(CTX.params, consensus=replace(
        CTX.params.consensus, max_tx_bytes=size_of(tx) - 1)))
    result = pool().add(tx, GENESIS, small)
    assert result.is_invalid and len(pool()) == 0


def test_add_nonce_too_low() -> None:
    state = commit(GENESIS, [transfer(0, 0), transfer(0, 1)])
    mp = pool()
    result = mp.add(transfer(0, 1, variant=1), state, CTX)
    assert result.outcome is Outcome.NONCE_TOO_LOW and "next nonce is 2" in result.reason
    assert mp.add(transfer(0, 2), state, CTX).added


def test_add_nonce_gap() -> None:
    mp = pool(max_nonce_gap=3)
    assert mp.add(transfer(0, 2), GENESIS, CTX).added
    result = mp.add(transfer(0, 3), GENESIS, CTX)
    assert result.outcome is Outcome.NONCE_GAP and "at most 2" in result.reason
    state = commit(GENESIS, [transfer(0, 0)])
    assert mp.add(transfer(0, 3), state, CTX).added


def test_add_sender_full() -> None:
    mp = pool(max_per_sender=2)
    assert mp.add(transfer(0, 0), GENESIS, CTX).added
    assert mp.add(transfer(0, 1), GENESIS, CTX).added
    assert mp.add(transfer(0, 2), GENESIS, CTX).outcome is Outcome.SENDER_FULL
    assert mp.add(transfer(1, 0), GENESIS, CTX).added


def test_add_full_evicts_highest_nonce_of_largest_sender() -> None:
    mp = pool(max_txs=4)
    for nonce in range(3):
        mp.add(transfer(0, nonce), GENESIS, CTX)
    mp.add(transfer(1, 0), GENESIS, CTX)
    assert mp.add(transfer(2, 0), GENESIS, CTX).added
    assert transfer(0, 2).hash() not in mp
    assert len(mp) == 4
    # Senders 0, 1, 2 now hold 2, 1, 1: sender 1 with a second one would only equal sender 0.
    assert mp.add(transfer(1, 1), GENESIS, CTX).outcome is Outcome.FULL
    assert [mp.count_of(k.address) for k in SENDERS[:3]] == [2, 1, 1]


def test_add_full_eviction_does_not_ping_pong() -> None:
    mp = pool(max_txs=3)
    for nonce in range(2):
        mp.add(transfer(0, nonce), GENESIS, CTX)
    mp.add(transfer(1, 0), GENESIS, CTX)
    assert mp.add(transfer(1, 1), GENESIS, CTX).outcome is Outcome.FULL
    assert mp.add(transfer(2, 0), GENESIS, CTX).added
    assert transfer(0, 1).hash() not in mp
    # Sender 0 now holds 1 like everyone: it cannot take its slot back.
    assert mp.add(transfer(0, 1), GENESIS, CTX).outcome is Outcome.FULL


def test_add_full_when_no_sender_holds_more() -> None:
    mp = pool(max_txs=3)
    for sender in range(3):
        mp.add(transfer(sender, 0), GENESIS, CTX)
    assert mp.add(transfer(3, 0), GENESIS, CTX).outcome is Outcome.FULL
    assert mp.add(transfer(0, 1), GENESIS, CTX).outcome is Outcome.FULL
    assert len(mp) == 3


def test_add_full_eviction_ties_go_to_latest_sender() -> None:
    mp = pool(max_txs=4)
    for sender in (0, 1):
        for nonce in range(2):
            mp.add(transfer(sender, nonce), GENESIS, CTX)
    assert mp.add(transfer(2, 0), GENESIS, CTX).added
    assert transfer(1, 1).hash() not in mp and transfer(0, 1).hash() in mp


def test_add_full_bytes_cap_evicts_enough() -> None:
    one = size_of(transfer(0, 0))
    mp = pool(max_bytes=3 * one + one // 2)
    for nonce in range(3):
        assert mp.add(transfer(0, nonce), GENESIS, CTX).added
    assert mp.add(transfer(1, 0), GENESIS, CTX).added
    assert mp.total_bytes <= 3 * one + one // 2
    assert mp.pending_hashes() == hashes([transfer(0, 0), transfer(0, 1), transfer(1, 0)])


def test_add_full_leaves_pool_unchanged_when_eviction_cannot_finish() -> None:
    one = size_of(transfer(0, 0))
    big = sign_tx(SENDERS[2], TEST_NETWORK, CHAIN_REWARD, 0, Transfer(RECIPIENT, 2**60))
    mp = pool(max_bytes=2 * one + size_of(big) - 1)
    mp.add(transfer(0, 0), GENESIS, CTX)
    mp.add(transfer(0, 1), GENESIS, CTX)
    mp.add(transfer(1, 0), GENESIS, CTX)
    before = mp.pending_hashes()
    # Two evictions are needed; only the first (sender 0 holds 2 > 1) is allowed.
    assert mp.add(big, GENESIS, CTX).outcome is Outcome.FULL
    assert mp.pending_hashes() == before and mp.total_bytes == 3 * one


# --- selection ----------------------------------------------------------------------------


def test_select_nonce_order_stops_at_gap() -> None:
    mp = pool()
    for nonce in (3, 1, 0, 4):
        mp.add(transfer(0, nonce), GENESIS, CTX)
    assert hashes(mp.select(GENESIS, 100, 1 << 20)) == hashes([transfer(0, 0), transfer(0, 1)])


def test_has_ready_only_when_a_committed_nonce_is_held() -> None:
    mp = pool()
    assert not mp.has_ready(GENESIS)
    mp.add(transfer(0, 2), GENESIS, CTX)
    mp.add(transfer(1, 1), GENESIS, CTX)
    assert len(mp) == 2 and not mp.has_ready(GENESIS)  # gaps only: no block could take them
    mp.add(transfer(1, 0), GENESIS, CTX)
    assert mp.has_ready(GENESIS)
    state = commit(GENESIS, [transfer(0, 0), transfer(0, 1)])
    mp.remove(transfer(1, 0).hash())
    assert mp.has_ready(state)  # sender 0's nonce 2 is next now


def test_select_starts_at_state_nonce() -> None:
    mp = pool()
    for nonce in range(4):
        mp.add(transfer(0, nonce), GENESIS, CTX)
    state = commit(GENESIS, [transfer(0, 0), transfer(0, 1)])
    assert hashes(mp.select(state, 100, 1 << 20)) == hashes([transfer(0, 2), transfer(0, 3)])


def test_select_interleaves_senders_by_first_arrival() -> None:
    mp = pool()
    order = [(2, 0), (2, 1), (2, 2), (0, 0), (1, 0), (0, 1), (1, 1)]
    for sender, nonce in order:
        mp.add(transfer(sender, nonce), GENESIS, CTX)
    expected = [(2, 0), (0, 0), (1, 0), (2, 1), (0, 1), (1, 1), (2, 2)]
    assert hashes(mp.select(GENESIS, 100, 1 << 20)) == hashes([transfer(s, n) for s, n in expected])


def test_select_respects_max_txs() -> None:
    mp = pool()
    for sender in range(3):
        for nonce in range(2):
            mp.add(transfer(sender, nonce), GENESIS, CTX)
    chosen = mp.select(GENESIS, 4, 1 << 20)
    assert hashes(chosen) == hashes([transfer(0, 0), transfer(1, 0), transfer(2, 0), transfer(0, 1)])


def test_select_respects_max_bytes() -> None:
    mp = pool()
    for sender in range(3):
        mp.add(transfer(sender, 0), GENESIS, CTX)
    one = size_of(transfer(0, 0))
    assert len(mp.select(GENESIS, 100, 2 * one)) == 2
    assert mp.select(GENESIS, 100, one - 1) == []


def test_select_passes_over_sender_whose_next_does_not_fit() -> None:
    mp = pool()
    big = sign_tx(SENDERS[0], TEST_NETWORK, CHAIN_REWARD, 0, Transfer(RECIPIENT, 2**60))
    one = size_of(transfer(1, 0))
    assert size_of(big) > one + 7
    mp.add(transfer(1, 0), GENESIS, CTX)
    mp.add(big, GENESIS, CTX)
    mp.add(transfer(0, 1), GENESIS, CTX)
    mp.add(transfer(2, 0), GENESIS, CTX)
    # After sender 1's, `big` does not fit; sender 2's does; sender 0's nonce 1 would, but
    # without nonce 0 it cannot apply.
    assert hashes(mp.select(GENESIS, 100, 2 * one + 7)) == hashes([transfer(1, 0), transfer(2, 0)])
    assert hashes(mp.select(GENESIS, 100, 1 << 20)) == hashes([transfer(1, 0), big, transfer(2, 0), transfer(0, 1)])


def test_select_block_is_accepted_by_build_block() -> None:
    chains = new_chains()
    mp = pool()
    for sender, nonce in [(0, 0), (1, 0), (0, 1), (0, 2), (1, 2)]:
        mp.add(transfer(sender, nonce), chains.states[CHAIN_REWARD], CTX)
    chosen = mp.select(chains.states[CHAIN_REWARD], 100, 1 << 20)
    block, rejected = chains.advance(CHAIN_REWARD, chosen)
    assert rejected == [] and list(block.txs) == chosen
    assert mp.remove_committed(block.txs, chains.states[CHAIN_REWARD]) == 4
    assert mp.pending_hashes() == [transfer(1, 2).hash()]


def test_select_empty() -> None:
    assert pool().select(GENESIS, 10, 1 << 20) == []


# --- removal ------------------------------------------------------------------------------


def test_remove_committed_drops_included_and_stale() -> None:
    mp = pool()
    for nonce in range(3):
        mp.add(transfer(0, nonce), GENESIS, CTX)
    mp.add(transfer(1, 0), GENESIS, CTX)
    # Another node's block used sender 0's nonces 0 and 1 with other transactions.
    block = [transfer(0, 0, variant=1), transfer(0, 1, variant=1), transfer(1, 0)]
    state = commit(GENESIS, block)
    assert mp.remove_committed(block, state) == 3
    assert mp.pending_hashes() == [transfer(0, 2).hash()]
    assert mp.total_bytes == size_of(transfer(0, 2))
    assert mp.count_of(SENDERS[1].address) == 0


def test_remove_one() -> None:
    mp = pool()
    mp.add(transfer(0, 0), GENESIS, CTX)
    assert mp.remove(transfer(0, 0).hash())
    assert not mp.remove(transfer(0, 0).hash())
    assert len(mp) == 0 and mp.total_bytes == 0


def test_sender_rejoining_goes_to_the_back() -> None:
    mp = pool()
    mp.add(transfer(0, 0), GENESIS, CTX)
    mp.add(transfer(1, 0), GENESIS, CTX)
    state = commit(GENESIS, [transfer(0, 0)])
    mp.remove_committed([transfer(0, 0)], state)
    mp.add(transfer(0, 1), state, CTX)
    assert hashes(mp.select(state, 10, 1 << 20)) == hashes([transfer(1, 0), transfer(0, 1)])


# --- properties ---------------------------------------------------------------------------

N_SENDERS = 4
PROP_CONFIG = MempoolConfig(max_txs=9, max_bytes=8 * 131 + 20, max_per_sender=4, max_nonce_gap=6)

# Nonces are drawn relative to the sender's committed nonce: -2 and -1 are too low (or 0 at
# the start), 6 and 7 are past the gap.
op_add = st.tuples(
    st.just("add"), st.integers(0, N_SENDERS - 1), st.integers(-2, 7), st.integers(0, 2)
)
op_select = st.tuples(st.just("select"), st.integers(0, 12), st.integers(0, 12 * 140))
op_commit = st.tuples(st.just("commit"), st.integers(0, 6))
op_external = st.tuples(st.just("external"), st.integers(0, N_SENDERS - 1))
ops = st.lists(
    st.one_of(op_add, op_add, op_add, op_select, op_commit, op_external), max_size=40
)


def check_applies(state: State, txs: list[Transaction]) -> None:
    view = Overlay(state)
    for tx in txs:
        apply_tx(view, tx, CHAIN_REWARD, state.height + 1, CTX)


def check_caps(mp: Mempool, config: MempoolConfig) -> None:
    assert len(mp) <= config.max_txs
    assert mp.total_bytes <= config.max_bytes
    assert mp.total_bytes == sum(size_of(mp.get(h)) for h in mp.pending_hashes())
    assert all(mp.count_of(k.address) <= config.max_per_sender for k in SENDERS)


def expected_runs(mp: Mempool, state: State) -> set[bytes]:
    """Every pending transaction that continues its sender's nonces from the state without a gap."""
    by_sender: dict[bytes, dict[int, bytes]] = {}
    for h in mp.pending_hashes():
        tx = mp.get(h)
        by_sender.setdefault(tx.body.sender, {})[tx.body.nonce] = h
    out = set()
    for key in SENDERS:
        held = by_sender.get(key.public_key, {})
        nonce = get_nonce(state, key.address)
        while nonce in held:
            out.add(held[nonce])
            nonce += 1
    return out


def run_ops(sequence: list[tuple]) -> list[object]:
    """Run one sequence of operations, checking invariants; return everything observable."""
    mp = Mempool(CHAIN_REWARD, PROP_CONFIG)
    state = GENESIS
    trace: list[object] = []
    for op in sequence:
        if op[0] == "add":
            _, sender, offset, variant = op
            nonce = max(0, get_nonce(state, SENDERS[sender].address) + offset)
            trace.append(mp.add(transfer(sender, nonce, variant), state, CTX).outcome)
        elif op[0] == "select":
            _, max_txs, max_bytes = op
            chosen = mp.select(state, max_txs, max_bytes)
            assert len(chosen) <= max_txs
            assert sum(size_of(tx) for tx in chosen) <= max_bytes
            check_applies(state, chosen)
            trace.append(hashes(chosen))
        elif op[0] == "commit":
            full = mp.select(state, 1000, 1 << 30)
            assert set(hashes(full)) == expected_runs(mp, state)
            block = full[: op[1]]
            state = commit(state, block)
            mp.remove_committed(block, state)
            assert not set(hashes(block)) & set(mp.pending_hashes())
            trace.append(hashes(block))
        else:
            sender = op[1]
            tx = transfer(sender, get_nonce(state, SENDERS[sender].address), 1)
            state = commit(state, [tx])
            mp.remove_committed([tx], state)
        for h in mp.pending_hashes():
            tx = mp.get(h)
            assert tx.body.nonce >= get_nonce(state, ADDRESS_OF[tx.body.sender])
        check_caps(mp, PROP_CONFIG)
        trace.append(tuple(mp.pending_hashes()))
    return trace


@given(ops)
def test_mempool_sequences_select_applies_caps_hold_deterministic(sequence: list[tuple]) -> None:
    assert run_ops(sequence) == run_ops(sequence)


def test_add_does_not_check_payload_rules() -> None:
    """Balances depend on the block; the builder rejects what fails and the engine removes it."""
    chains = new_chains()
    mp = pool()
    overdraft = sign_tx(SENDERS[0], TEST_NETWORK, CHAIN_REWARD, 0, Transfer(RECIPIENT, BALANCE + 1))
    assert mp.add(overdraft, chains.states[CHAIN_REWARD], CTX).added
    _, rejected = chains.advance(CHAIN_REWARD, mp.select(chains.states[CHAIN_REWARD], 10, 1 << 20))
    assert [tx for tx, _ in rejected] == [overdraft]
    assert mp.remove(overdraft.hash()) and len(mp) == 0


# --- local admission against the state (check_state) and pruning what fails ----------------

POOR = account_keys(1, "mempool-poor")[0]
"""An account the genesis gives nothing."""


def signed(key: object, nonce: int, payload: object) -> Transaction:
    return sign_tx(key, TEST_NETWORK, CHAIN_REWARD, nonce, payload)


def test_check_state_insufficient_balance() -> None:
    mp = pool()
    result = mp.add(signed(POOR, 0, Transfer(RECIPIENT, 5)), GENESIS, CTX, check_state=True)
    assert result.outcome is Outcome.FAILS_STATE and "balance 0 below 5" in result.reason
    assert not result.is_invalid and len(mp) == 0


def test_check_state_insufficient_stake() -> None:
    mp = pool()
    unstake = mp.add(signed(SENDERS[0], 0, Unstake(1)), GENESIS, CTX, check_state=True)
    assert unstake.outcome is Outcome.FAILS_STATE and "stake 0 below 1" in unstake.reason
    stake = mp.add(signed(POOR, 0, Stake(1)), GENESIS, CTX, check_state=True)
    assert stake.outcome is Outcome.FAILS_STATE and "balance 0 below 1" in stake.reason
    assert len(mp) == 0


def test_check_state_counts_the_senders_pending_transactions() -> None:
    mp = pool()
    assert mp.add(signed(SENDERS[0], 0, Stake(10)), GENESIS, CTX, check_state=True).added
    assert mp.add(signed(SENDERS[0], 1, Unstake(10)), GENESIS, CTX, check_state=True).added  # stake pending
    assert mp.add(signed(SENDERS[0], 2, Unstake(1)), GENESIS, CTX, check_state=True).outcome is Outcome.FAILS_STATE
    rest = BALANCE - 10
    over = mp.add(signed(SENDERS[0], 2, Transfer(RECIPIENT, rest + 1)), GENESIS, CTX, check_state=True)
    assert over.outcome is Outcome.FAILS_STATE and f"balance {rest} below {rest + 1}" in over.reason
    assert mp.add(signed(SENDERS[0], 2, Transfer(RECIPIENT, rest)), GENESIS, CTX, check_state=True).added


def test_check_state_judges_a_nonce_gap_as_filled() -> None:
    mp = pool()
    over = mp.add(signed(SENDERS[0], 3, Transfer(RECIPIENT, BALANCE + 1)), GENESIS, CTX, check_state=True)
    assert over.outcome is Outcome.FAILS_STATE
    assert mp.add(signed(SENDERS[0], 3, Transfer(RECIPIENT, BALANCE)), GENESIS, CTX, check_state=True).added


def test_check_state_leaves_state_and_pool_unchanged() -> None:
    mp = pool()
    mp.add(transfer(0, 0), GENESIS, CTX)
    before = (mp.pending_hashes(), mp.total_bytes, GENESIS.root)
    mp.add(signed(POOR, 0, Transfer(RECIPIENT, 5)), GENESIS, CTX, check_state=True)
    assert (mp.pending_hashes(), mp.total_bytes, GENESIS.root) == before


def test_drop_failing_drops_what_fails_and_finds_what_applies() -> None:
    mp = pool()
    overdraft = signed(POOR, 0, Transfer(RECIPIENT, 5))
    later = signed(POOR, 1, Transfer(RECIPIENT, 5))
    assert mp.add(overdraft, GENESIS, CTX).added and mp.add(later, GENESIS, CTX).added  # gossip: no state check
    assert mp.add(transfer(0, 0), GENESIS, CTX).added
    assert hashes(mp.drop_failing(GENESIS, CTX, 1)) == hashes([transfer(0, 0)])
    assert overdraft.hash() not in mp and transfer(0, 0).hash() in mp
    assert hashes(mp.drop_failing(GENESIS, CTX, len(mp))) == hashes([transfer(0, 0)])
    assert later.hash() in mp  # a nonce gap now: kept, as gaps are, but no block could take it
    mp.remove(transfer(0, 0).hash())
    assert not mp.has_ready(GENESIS) and mp.drop_failing(GENESIS, CTX, 1) == []


def test_drop_failing_of_failing_transactions_alone_finds_nothing() -> None:
    mp = pool()
    mp.add(signed(POOR, 0, Transfer(RECIPIENT, 5)), GENESIS, CTX)
    mp.add(signed(SENDERS[1], 0, Unstake(3)), GENESIS, CTX)
    assert mp.has_ready(GENESIS)
    assert mp.drop_failing(GENESIS, CTX, 1) == [] and len(mp) == 0


def test_drop_failing_judges_each_after_those_before_it() -> None:
    mp = pool()
    mp.add(signed(SENDERS[0], 0, Transfer(RECIPIENT, BALANCE)), GENESIS, CTX)
    mp.add(signed(SENDERS[0], 1, Transfer(RECIPIENT, 1)), GENESIS, CTX)
    kept = mp.drop_failing(GENESIS, CTX, len(mp))
    assert len(kept) == 1 and len(mp) == 1


@given(st.lists(st.tuples(st.sampled_from([0, 1, 4]), st.integers(0, 3), st.sampled_from([1, BALANCE, 2 * BALANCE])),
                max_size=12))
def test_drop_failing_returns_a_block_that_applies_and_keeps_the_rest(moves: list[tuple[int, int, int]]) -> None:
    """Whatever the pool holds (gossip admits overdrafts), what `drop_failing` finds applies in
    order, nothing it dropped is still held, and the state is left unchanged."""
    keys = {0: SENDERS[0], 1: SENDERS[1], 4: POOR}
    mp = pool()
    for sender, nonce, amount in moves:
        mp.add(signed(keys[sender], nonce, Transfer(RECIPIENT, amount)), GENESIS, CTX)
    before = set(mp.pending_hashes())
    root = GENESIS.root
    found = mp.drop_failing(GENESIS, CTX, len(mp))
    commit(GENESIS, found)  # raises if any does not apply in this order
    assert set(hashes(found)) <= set(mp.pending_hashes()) <= before
    assert GENESIS.root == root
    assert mp.drop_failing(GENESIS, CTX, len(mp)) == found  # nothing more to drop: deterministic
