"""Property tests of the pure core: invalid transactions change nothing, transitions are
deterministic, the supply equation holds at every height, and the state root ignores history."""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from chain import merkle
from chain.context import Context
from chain.errors import InvalidTransaction
from chain.payloads import Stake, Transfer, Unstake
from chain.reward import validate_supply
from chain.state import BUCKET_ARITY, Overlay, State
from chain.transition import apply_block, apply_tx, get_nonce
from chain.types import CHAIN_REWARD
from genesis.testkit import LocalChains, account_keys, make_pact, sign_tx, validator_keys

VKEYS = validator_keys(3)
AKEYS = account_keys(3)
SENDERS = [*AKEYS, *VKEYS]
FUNDS = 5_000
STAKE = 2_000
PACT = make_pact(VKEYS, [(k.address, FUNDS) for k in AKEYS], stake=STAKE)
NET = PACT.network_id

amounts = st.one_of(
    st.integers(0, 3),
    st.integers(1, 2_500),
    st.sampled_from([FUNDS, FUNDS + 1, STAKE, 2**64 - 1]),
)
operations = st.tuples(
    st.sampled_from(["transfer", "stake", "unstake"]),
    st.integers(0, len(SENDERS) - 1),          # sender
    st.integers(0, len(SENDERS) - 1),          # recipient of a transfer
    amounts,
    st.sampled_from([0, 0, 0, 0, 0, 0, -1, 1, 5]),  # nonce offset: mostly right
)
blocks_of_ops = st.lists(st.lists(operations, max_size=6), min_size=1, max_size=13)


def make_tx(view: Overlay, op: tuple[str, int, int, int, int]):
    kind, sender, recipient, amount, offset = op
    key = SENDERS[sender]
    nonce = max(0, get_nonce(view, key.address) + offset)
    if kind == "transfer":
        payload = Transfer(SENDERS[recipient].address, amount)
    elif kind == "stake":
        payload = Stake(amount)
    else:
        payload = Unstake(amount)
    return sign_tx(key, NET, CHAIN_REWARD, nonce, payload)


def run_chain(ops_per_block: list[list[tuple]]) -> LocalChains:
    """Apply the operations block by block; check properties (a) and (c) on the way."""
    chains = LocalChains.create(PACT, VKEYS)
    ctx = chains.context()
    validate_supply(chains.states[CHAIN_REWARD])
    for ops in ops_per_block:
        state = chains.states[CHAIN_REWARD]
        height = state.height + 1
        view = Overlay(state)
        candidates, accepted = [], []
        for op in ops:
            tx = make_tx(view, op)
            candidates.append(tx)
            before = dict(view.changes)
            try:
                apply_tx(view, tx, CHAIN_REWARD, height, ctx)
            except InvalidTransaction:
                assert view.changes == before  # (a) an invalid transaction changes nothing
            else:
                accepted.append(tx)
        block, rejected = chains.advance(CHAIN_REWARD, candidates)
        assert block.txs == tuple(accepted)  # the proposer keeps exactly what apply_tx accepted
        assert len(rejected) == len(candidates) - len(accepted)
        event(f"accepted {min(len(accepted), 3)}+ of {min(len(candidates), 3)}+ transactions in a block")
        validate_supply(chains.states[CHAIN_REWARD])  # (c) at every height
    final = chains.states[CHAIN_REWARD]
    event(f"reached an epoch boundary: {final.height >= PACT.params.staking.epoch_length}")
    event(f"an unstake came due: {_released(chains)}")
    return chains


def _released(chains: LocalChains) -> bool:
    """Whether some unstake of these blocks was due at or before the head."""
    period = PACT.params.staking.unbonding_period
    head = chains.states[CHAIN_REWARD].height
    return any(
        isinstance(tx.body.payload, Unstake) and block.header.height + period <= head
        for block in chains.blocks[CHAIN_REWARD] for tx in block.txs
    )


@settings(deadline=None, max_examples=100)
@given(blocks_of_ops)
def test_reward_chain_properties(ops_per_block: list[list[tuple]]) -> None:
    chains = run_chain(ops_per_block)
    # (b) the same blocks applied to a fresh genesis give identical states, block by block
    replayed = LocalChains.create(PACT, VKEYS)
    state = replayed.states[CHAIN_REWARD]
    ctx = replayed.context()
    for block in chains.blocks[CHAIN_REWARD]:
        state, _ = apply_block(state, block, ctx)
        assert state.root == block.header.state_root
    final = chains.states[CHAIN_REWARD]
    assert (state.root, state.height, state.head) == (final.root, final.height, final.head)
    assert sorted(state.items()) == sorted(final.items())


@settings(deadline=None, max_examples=100)
@given(blocks_of_ops)
def test_invalid_tx_leaves_overlay_unchanged(ops_per_block: list[list[tuple]]) -> None:
    """(a) on an overlay with pending changes: a failing transaction leaves them as they were."""
    chains = LocalChains.create(PACT, VKEYS)
    ctx: Context = chains.context()
    view = Overlay(chains.states[CHAIN_REWARD])
    for ops in ops_per_block:
        for op in ops:
            tx = make_tx(view, op)
            before = dict(view.changes)
            try:
                apply_tx(view, tx, CHAIN_REWARD, 1, ctx)
            except InvalidTransaction:
                assert view.changes == before
            else:
                assert view.changes != before


@settings(deadline=None, max_examples=50)
@given(blocks_of_ops)
def test_transitions_deterministic_across_runs(ops_per_block: list[list[tuple]]) -> None:
    """(b) two independent runs from the same operations build the same blocks and states."""
    a, b = run_chain(ops_per_block), run_chain(ops_per_block)
    assert [blk.hash() for blk in a.blocks[CHAIN_REWARD]] == [blk.hash() for blk in b.blocks[CHAIN_REWARD]]
    assert sorted(a.states[CHAIN_REWARD].items()) == sorted(b.states[CHAIN_REWARD].items())


# --- (d) the state root depends on the content only ------------------------------------------------

keys = st.binary(min_size=1, max_size=6)
values = st.binary(min_size=0, max_size=8)
change_batches = st.lists(
    st.dictionaries(keys, st.one_of(st.none(), values), max_size=12), max_size=8
)


@settings(deadline=None, max_examples=100)
@given(st.dictionaries(keys, values, max_size=20), change_batches, st.randoms(use_true_random=False))
def test_state_root_independent_of_insertion_order(
    initial: dict[bytes, bytes], batches: list[dict[bytes, bytes | None]], rnd
) -> None:
    state = State.from_items(CHAIN_REWARD, 0, bytes(32), 0, initial)
    expected = dict(initial)
    for i, batch in enumerate(batches):
        state = state.with_changes(batch, i + 1, bytes(32), i + 1)
        for k, v in batch.items():
            if v is None:
                expected.pop(k, None)
            else:
                expected[k] = v
    assert dict(state.items()) == expected
    fresh = State.from_items(CHAIN_REWARD, 9, b"\x01" * 32, 9, expected)
    assert fresh.root == state.root
    assert fresh.bucket_hashes == state.bucket_hashes
    # the same content inserted one key at a time, in a shuffled order
    shuffled = list(expected.items())
    rnd.shuffle(shuffled)
    one_by_one = State(CHAIN_REWARD, 0, bytes(32), 0)
    for k, v in shuffled:
        one_by_one = one_by_one.with_changes({k: v}, 0, bytes(32), 0)
    assert one_by_one.root == state.root
    # and built from a dict in another order
    reordered = State.from_items(CHAIN_REWARD, 0, bytes(32), 0, dict(reversed(shuffled)))
    assert reordered.root == state.root
    assert state.same_content(fresh)


@settings(deadline=None, max_examples=100)
@given(st.dictionaries(keys, values, max_size=20), change_batches)
def test_incremental_state_root_equals_the_full_one(
    initial: dict[bytes, bytes], batches: list[dict[bytes, bytes | None]]
) -> None:
    """A state whose parent's root was computed hashes only the changed buckets' paths; at
    every step that root equals the root computed from scratch."""
    state = State.from_items(CHAIN_REWARD, 0, bytes(32), 0, initial)
    assert state.root == merkle.compute_root(state.bucket_hashes, BUCKET_ARITY)
    for i, batch in enumerate(batches):
        parent_root, before = state.root, state.bucket_hashes
        state = state.with_changes(batch, i + 1, bytes(32), i + 1)
        assert state._levels is not None  # the incremental path is the one under test
        assert state.root == merkle.compute_root(state.bucket_hashes, BUCKET_ARITY)
        fresh = State.from_items(CHAIN_REWARD, 0, bytes(32), 0, dict(state.items()))
        assert fresh.root == state.root
        if fresh.bucket_hashes == before:  # nothing changed: neither does the root
            assert state.root == parent_root


@settings(deadline=None, max_examples=100)
@given(st.dictionaries(keys, values, min_size=1, max_size=20), st.data())
def test_state_root_changes_with_content(initial: dict[bytes, bytes], data) -> None:
    state = State.from_items(CHAIN_REWARD, 0, bytes(32), 0, initial)
    key = data.draw(st.sampled_from(sorted(initial)))
    value = data.draw(values.filter(lambda v: v != initial[key]))
    assert state.with_changes({key: value}, 1, bytes(32), 1).root != state.root
    assert state.with_changes({key: None}, 1, bytes(32), 1).root != state.root
    assert State.from_items(CHAIN_REWARD, 0, bytes(32), 0, initial).root == state.root
