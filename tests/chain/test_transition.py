"""The block checklist of `apply_block`, the transaction envelope, and `build_block`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from chain import codec
from chain.context import Context
from chain.errors import InvalidBlock, InvalidTransaction, MissingDependency
from chain.payloads import Reward, Stake, Transfer
from chain.records import Earning
from chain.state import Overlay, State
from chain.transition import apply_block, apply_tx, build_block, compute_tx_root, get_nonce
from chain.types import (
    CHAIN_DATASET,
    CHAIN_NAMES,
    CHAIN_PARAMETER,
    CHAIN_REWARD,
    ZERO_HASH,
    ZERO_PUBKEY,
    ZERO_SIGNATURE,
    Block,
    CommitCertificate,
    CommitSig,
    Transaction,
    TxBody,
    make_validator_set,
)
from genesis.testkit import LocalChains, account_keys, certify, make_pact, sign_tx, system_tx, validator_keys

VKEYS = validator_keys(4)
AKEYS = account_keys(3)
NET = "testnet-unit"


@pytest.fixture
def chains() -> LocalChains:
    """Reward chain at height 1, so that the next block carries a last commit."""
    pact = make_pact(VKEYS, [(k.address, 50_000) for k in AKEYS])
    chains = LocalChains.create(pact, VKEYS)
    chains.advance(CHAIN_REWARD, [transfer(chains, 0, 1, 10)])
    return chains


def transfer(chains: LocalChains, src: int, dst: int, amount: int, nonce: int | None = None) -> Transaction:
    key = AKEYS[src]
    if nonce is None:
        nonce = get_nonce(chains.states[CHAIN_REWARD], key.address)
    return sign_tx(key, NET, CHAIN_REWARD, nonce, Transfer(AKEYS[dst].address, amount))


def next_block(chains: LocalChains) -> Block:
    """A valid height-2 block with two transfers."""
    block, rejected = chains.propose(CHAIN_REWARD, [transfer(chains, 0, 2, 5), transfer(chains, 1, 0, 7)])
    assert not rejected and len(block.txs) == 2
    return block


def with_header(block: Block, **changes: object) -> Block:
    return replace(block, header=replace(block.header, **changes))


def with_txs(block: Block, txs: tuple[Transaction, ...]) -> Block:
    return replace(block, txs=txs, header=replace(block.header, tx_root=compute_tx_root(txs)))


def with_commit(block: Block, commit: CommitCertificate | None) -> Block:
    commit_hash = ZERO_HASH if commit is None else codec.hash_of(commit)
    return replace(block, last_commit=commit, header=replace(block.header, last_commit_hash=commit_hash))


def snapshot(state: State) -> tuple[bytes, int, bytes, int, list[tuple[bytes, bytes]]]:
    return state.root, state.height, state.head, state.time_ms, sorted(state.items())


# --- a valid block -----------------------------------------------------------------------------------


def test_apply_block_valid(chains: LocalChains) -> None:
    state = chains.states[CHAIN_REWARD]
    block = next_block(chains)
    new_state, changes = apply_block(state, block, chains.context())
    assert new_state.height == 2
    assert new_state.head == block.hash()
    assert new_state.time_ms == block.header.time_ms
    assert new_state.root == block.header.state_root
    assert state.with_changes(changes, 2, block.hash(), block.header.time_ms).root == new_state.root
    assert state.height == 1


def test_apply_block_is_deterministic(chains: LocalChains) -> None:
    state = chains.states[CHAIN_REWARD]
    block = next_block(chains)
    a, changes_a = apply_block(state, block, chains.context())
    b, changes_b = apply_block(state, block, chains.context())
    assert (a.root, sorted(a.items())) == (b.root, sorted(b.items()))
    assert changes_a == changes_b


def test_apply_empty_block(chains: LocalChains) -> None:
    block, _ = chains.propose(CHAIN_REWARD, [])
    new_state, _ = apply_block(chains.states[CHAIN_REWARD], block, chains.context())
    assert new_state.height == 2 and block.txs == ()


def test_apply_first_block_without_commit() -> None:
    chains = LocalChains.create(make_pact(VKEYS, [(AKEYS[0].address, 100)]), VKEYS)
    block, _ = chains.propose(CHAIN_DATASET, [])
    assert block.last_commit is None and block.header.last_commit_hash == ZERO_HASH
    new_state, _ = apply_block(chains.states[CHAIN_DATASET], block, chains.context())
    assert new_state.height == 1


def test_apply_block_without_commit_check_on_replay(chains: LocalChains) -> None:
    block = next_block(chains)
    weak = certify(chains.blocks[CHAIN_REWARD][-1], VKEYS[:1], NET)
    ctx = replace(chains.context(), check_last_commit=False)
    new_state, _ = apply_block(chains.states[CHAIN_REWARD], with_commit(block, weak), ctx)
    assert new_state.height == 2


def test_apply_block_prev_validators_decide_last_commit(chains: LocalChains) -> None:
    block = next_block(chains)
    ctx = chains.context()
    later = make_validator_set(1, [(k.public_key, 10_000) for k in VKEYS[:3]] + [(AKEYS[0].public_key, 90_000)])
    moved = Context(ctx.network_id, ctx.params, later, prev_validators=ctx.validators)
    block = with_header(block, validators_hash=later.hash())
    new_state, _ = apply_block(chains.states[CHAIN_REWARD], block, moved)
    assert new_state.height == 2
    with pytest.raises(InvalidBlock, match="previous commit"):
        apply_block(chains.states[CHAIN_REWARD], block, replace(moved, prev_validators=None))


# --- the checklist ---------------------------------------------------------------------------------


def _bad_signature(chains: LocalChains, block: Block) -> Block:
    commit = block.last_commit
    first = commit.signatures[0]
    forged = CommitSig(first.validator, bytes([first.signature[0] ^ 1]) + first.signature[1:])
    return with_commit(block, replace(commit, signatures=(forged, *commit.signatures[1:])))


def _commit_by_non_validator(chains: LocalChains, block: Block) -> Block:
    keys = [*VKEYS[:3], AKEYS[0]]
    return with_commit(block, certify(chains.blocks[CHAIN_REWARD][-1], keys, NET))


def _unsorted_commit(chains: LocalChains, block: Block) -> Block:
    commit = block.last_commit
    return with_commit(block, replace(commit, signatures=tuple(reversed(commit.signatures))))


def _commit_for_other_block(chains: LocalChains, block: Block) -> Block:
    other = with_header(chains.blocks[CHAIN_REWARD][-1], time_ms=1)
    return with_commit(block, certify(other, VKEYS, NET))


def _commit_other_network(chains: LocalChains, block: Block) -> Block:
    return with_commit(block, certify(chains.blocks[CHAIN_REWARD][-1], VKEYS, "othernet"))


def _duplicate_tx(chains: LocalChains, block: Block) -> Block:
    return with_txs(block, (block.txs[0], block.txs[0]))


def _invalid_tx(chains: LocalChains, block: Block) -> Block:
    return with_txs(block, (*block.txs, transfer(chains, 2, 0, 10**9)))


def _bad_signature_tx(chains: LocalChains, block: Block) -> Block:
    tx = block.txs[0]
    return with_txs(block, (replace(tx, signature=bytes(64)), *block.txs[1:]))


CHECKLIST: dict[str, tuple[Callable[[LocalChains, Block], Block], str]] = {
    "wrong-chain": (lambda c, b: with_header(b, chain_id=CHAIN_DATASET), "offered to chain 2"),
    "wrong-height-ahead": (lambda c, b: with_header(b, height=3), "height 3 does not follow 1"),
    "wrong-height-same": (lambda c, b: with_header(b, height=1), "height 1 does not follow 1"),
    "wrong-prev-hash": (lambda c, b: with_header(b, prev_hash=b"\x01" * 32), "previous hash"),
    "time-equal": (lambda c, b: with_header(b, time_ms=c.states[CHAIN_REWARD].time_ms), "time does not increase"),
    "time-earlier": (lambda c, b: with_header(b, time_ms=c.states[CHAIN_REWARD].time_ms - 1), "time does not"),
    "wrong-validators-hash": (lambda c, b: with_header(b, validators_hash=b"\x02" * 32), "validators hash"),
    "proposer-not-validator": (lambda c, b: with_header(b, proposer=AKEYS[0].address), "proposer is not"),
    "missing-last-commit": (lambda c, b: replace(b, last_commit=None), "missing commit"),
    "last-commit-hash": (lambda c, b: with_header(b, last_commit_hash=b"\x03" * 32), "last commit hash"),
    "commit-too-little-power": (
        lambda c, b: with_commit(b, certify(c.blocks[CHAIN_REWARD][-1], VKEYS[:2], NET)), "is not > 2/3"),
    "commit-bad-signature": (_bad_signature, "bad precommit signature"),
    "commit-non-validator": (_commit_by_non_validator, "signature of a non-validator"),
    "commit-unsorted": (_unsorted_commit, "not sorted"),
    "commit-other-block": (_commit_for_other_block, "another block"),
    "commit-other-round": (
        lambda c, b: with_commit(b, replace(b.last_commit, round=1)), "bad precommit signature"),
    "commit-other-network": (_commit_other_network, "bad precommit signature"),
    "bad-tx-root": (lambda c, b: with_header(b, tx_root=b"\x04" * 32), "transactions root mismatch"),
    "tx-removed": (lambda c, b: replace(b, txs=b.txs[:1]), "transactions root mismatch"),
    "duplicate-tx": (_duplicate_tx, "duplicate transaction"),
    "invalid-tx": (_invalid_tx, "transaction 2: invalid transaction"),
    "tx-bad-signature": (_bad_signature_tx, "transaction 0: .*bad signature"),
    "wrong-state-root": (lambda c, b: with_header(b, state_root=b"\x05" * 32), "state root mismatch"),
}


@pytest.mark.parametrize("case", list(CHECKLIST))
def test_invalid_block(chains: LocalChains, case: str) -> None:
    mutate, match = CHECKLIST[case]
    state = chains.states[CHAIN_REWARD]
    before = snapshot(state)
    block = mutate(chains, next_block(chains))
    with pytest.raises(InvalidBlock, match=match) as info:
        apply_block(state, block, chains.context())
    assert info.value.chain == CHAIN_NAMES[block.header.chain_id]
    assert info.value.height == block.header.height
    assert snapshot(state) == before
    assert snapshot(chains.states[CHAIN_REWARD]) == before


def test_invalid_block_wrong_chain_state(chains: LocalChains) -> None:
    state = chains.states[CHAIN_DATASET]
    before = snapshot(state)
    with pytest.raises(InvalidBlock, match="block of chain 2 offered to chain 1"):
        apply_block(state, next_block(chains), chains.context())
    assert snapshot(state) == before


def test_invalid_block_too_many_txs(chains: LocalChains) -> None:
    state = chains.states[CHAIN_REWARD]
    before = snapshot(state)
    block = next_block(chains)
    ctx = chains.context()
    tight = replace(ctx, params=replace(ctx.params, consensus=replace(
        ctx.params.consensus, max_block_txs=1)))
    with pytest.raises(InvalidBlock, match="2 transactions exceed 1"):
        apply_block(state, block, tight)
    assert snapshot(state) == before


def test_invalid_block_too_large(chains: LocalChains) -> None:
    state = chains.states[CHAIN_REWARD]
    block = next_block(chains)
    ctx = chains.context()
    tight = replace(ctx, params=replace(ctx.params, consensus=replace(
        ctx.params.consensus, max_block_bytes=len(codec.encode(block)) - 1)))
    with pytest.raises(InvalidBlock, match="block too large"):
        apply_block(state, block, tight)


def test_invalid_first_block_with_commit() -> None:
    chains = LocalChains.create(make_pact(VKEYS, [(AKEYS[0].address, 100)]), VKEYS)
    block, _ = chains.propose(CHAIN_REWARD, [])
    commit = certify(Block(replace(block.header, height=0), (), None), VKEYS, NET)
    state = chains.states[CHAIN_REWARD]
    before = snapshot(state)
    with pytest.raises(InvalidBlock, match="first block carries no commit"):
        apply_block(state, with_commit(block, commit), chains.context())
    with pytest.raises(InvalidBlock, match="first block carries no commit"):
        apply_block(state, with_header(block, last_commit_hash=b"\x01" * 32), chains.context())
    assert snapshot(state) == before


def test_invalid_block_end_of_block_rule(chains: LocalChains) -> None:
    """An end-of-block failure (broken supply) is an invalid block, not a crash."""
    from chain.records import KEY_SUPPLY, Supply

    state = chains.states[CHAIN_REWARD]
    supply = codec.decode(Supply, state.get(KEY_SUPPLY))
    broken = state.with_changes(
        {KEY_SUPPLY: codec.encode(replace(supply, minted=supply.minted + 1))},
        state.height, state.head, state.time_ms,
    )
    block, _ = chains.propose(CHAIN_REWARD, [])
    with pytest.raises(InvalidBlock, match="end of block: .*supply equation broken"):
        apply_block(broken, block, chains.context())


def test_block_with_unknown_earning_is_missing_dependency(chains: LocalChains) -> None:
    """A reward the node cannot check yet is not a fault of the block: MissingDependency."""
    source = b"\x0a" * 32
    known = lambda chain_id, h: Earning(AKEYS[0].address, 5, "delta") if h == source else None  # noqa: E731
    reward = system_tx(CHAIN_REWARD, Reward(CHAIN_PARAMETER, source, AKEYS[0].address, 5))
    block, rejected = chains.propose(CHAIN_REWARD, [reward], known)
    assert block.txs == (reward,) and not rejected
    state = chains.states[CHAIN_REWARD]
    before = snapshot(state)
    with pytest.raises(MissingDependency):
        apply_block(state, block, chains.context(lambda chain_id, h: None))
    assert snapshot(state) == before
    new_state, _ = apply_block(state, block, chains.context(known))
    assert new_state.root == block.header.state_root


# --- the transaction envelope ---------------------------------------------------------------------


def assert_tx_invalid(chains: LocalChains, tx: Transaction, match: str, chain_id: int = CHAIN_REWARD,
                      ctx: Context | None = None) -> None:
    view = Overlay(Overlay(chains.states[chain_id]))
    with pytest.raises(InvalidTransaction, match=match):
        apply_tx(view, tx, chain_id, chains.states[chain_id].height + 1, ctx or chains.context())
    assert view.changes == {}


def test_invalid_tx_for_other_chain(chains: LocalChains) -> None:
    tx = transfer(chains, 0, 1, 1)
    assert_tx_invalid(chains, tx, "for chain 2, not dataset", chain_id=CHAIN_DATASET)


def test_invalid_tx_payload_of_other_chain(chains: LocalChains) -> None:
    tx = sign_tx(AKEYS[0], NET, CHAIN_DATASET, 0, Transfer(AKEYS[1].address, 1))
    assert_tx_invalid(chains, tx, "Transfer is not a dataset payload", chain_id=CHAIN_DATASET)


def test_invalid_tx_too_large(chains: LocalChains) -> None:
    tx = transfer(chains, 0, 1, 1)
    ctx = chains.context()
    tight = replace(ctx, params=replace(ctx.params, consensus=replace(
        ctx.params.consensus, max_tx_bytes=len(codec.encode(tx)) - 1)))
    assert_tx_invalid(chains, tx, "too large", ctx=tight)


def test_invalid_tx_missing_sender(chains: LocalChains) -> None:
    tx = Transaction(TxBody(CHAIN_REWARD, ZERO_PUBKEY, 0, Stake(1)), ZERO_SIGNATURE)
    assert_tx_invalid(chains, tx, "missing sender")


def test_invalid_tx_bad_signature(chains: LocalChains) -> None:
    tx = transfer(chains, 0, 1, 1)
    forged = replace(tx, body=replace(tx.body, payload=Transfer(AKEYS[1].address, 2)))
    assert_tx_invalid(chains, forged, "bad signature")


def test_invalid_tx_signed_for_other_network(chains: LocalChains) -> None:
    tx = sign_tx(AKEYS[0], "othernet", CHAIN_REWARD, 1, Transfer(AKEYS[1].address, 1))
    assert_tx_invalid(chains, tx, "bad signature")


def test_invalid_tx_system_with_nonce(chains: LocalChains) -> None:
    reward = Reward(CHAIN_PARAMETER, b"\x01" * 32, AKEYS[0].address, 1)
    tx = Transaction(TxBody(CHAIN_REWARD, ZERO_PUBKEY, 1, reward), ZERO_SIGNATURE)
    assert_tx_invalid(chains, tx, "system transaction has no sender, nonce or signature")


def test_apply_tx_advances_nonce(chains: LocalChains) -> None:
    view = Overlay(chains.states[CHAIN_REWARD])
    inner = Overlay(view)
    apply_tx(inner, transfer(chains, 0, 1, 1), CHAIN_REWARD, 2, chains.context())
    assert get_nonce(inner, AKEYS[0].address) == 2
    assert get_nonce(view, AKEYS[0].address) == 1


# --- build_block ---------------------------------------------------------------------------------------


def test_build_block_keeps_valid_and_reports_rejects(chains: LocalChains) -> None:
    good = transfer(chains, 0, 1, 1)
    bad = transfer(chains, 1, 0, 10**12)
    late = transfer(chains, 0, 1, 1, nonce=7)
    block, rejected = chains.propose(CHAIN_REWARD, [bad, good, late])
    assert block.txs == (good,)
    assert [tx for tx, _ in rejected] == [bad, late]
    assert all(isinstance(err, InvalidTransaction) for _, err in rejected)
    new_state, _ = apply_block(chains.states[CHAIN_REWARD], block, chains.context())
    assert new_state.root == block.header.state_root


def test_build_block_stops_at_max_txs(chains: LocalChains) -> None:
    state = chains.states[CHAIN_REWARD]
    ctx = chains.context()
    tight = replace(ctx, params=replace(ctx.params, consensus=replace(
        ctx.params.consensus, max_block_txs=2)))
    txs = [transfer(chains, 2, 0, 1, nonce=i) for i in range(4)]
    block, rejected = build_block(state, txs, tight, VKEYS[0].address, state.time_ms + 1, chains.commits[CHAIN_REWARD])
    assert block.txs == tuple(txs[:2]) and rejected == []
    apply_block(state, block, tight)


def test_build_block_on_each_chain_applies(chains: LocalChains) -> None:
    for chain_id in (CHAIN_PARAMETER, CHAIN_DATASET, CHAIN_REWARD):
        block, _ = chains.advance(chain_id, [])
        assert chains.states[chain_id].head == block.hash()
        assert chains.states[chain_id].root == block.header.state_root


def test_build_block_respects_max_block_bytes_with_large_commit() -> None:
    keys = validator_keys(40)
    sender = AKEYS[0]
    pact = make_pact(keys, [(sender.address, 10**9)])
    pact = replace(pact, params=replace(pact.params, consensus=replace(
        pact.params.consensus, max_block_bytes=20_000)))
    chains = LocalChains.create(pact, keys)
    chains.advance(CHAIN_REWARD, [])
    assert len(codec.encode(chains.commits[CHAIN_REWARD])) > 1024
    txs = [sign_tx(sender, NET, CHAIN_REWARD, i, Transfer(keys[0].address, 1)) for i in range(400)]
    block, _ = chains.propose(CHAIN_REWARD, txs)
    assert 0 < len(block.txs) < len(txs)
    assert len(codec.encode(block)) <= pact.params.consensus.max_block_bytes
    apply_block(chains.states[CHAIN_REWARD], block, chains.context())


# --- the next validator set named by each header ------------------------------------------


def test_invalid_reward_next_validators_not_the_state_set(chains: LocalChains) -> None:
    block = with_header(next_block(chains), next_validators_hash=b"\x07" * 32)
    with pytest.raises(InvalidBlock, match="next validators"):
        apply_block(chains.states[CHAIN_REWARD], block, chains.context())


def dataset_block(chains: LocalChains, next_set) -> Block:
    state = chains.states[CHAIN_DATASET]
    block, _ = build_block(state, [], chains.context(), VKEYS[0].address, state.time_ms + 1, None, next_set)
    return block


def test_dataset_next_validators_may_name_a_newer_known_set(chains: LocalChains) -> None:
    from chain.types import make_validator_set

    newer = make_validator_set(1, [(k.public_key, 5) for k in VKEYS[:3]])
    block = dataset_block(chains, newer)
    ctx = replace(chains.context(), next_validators={newer.hash(): newer}.get)
    state, _ = apply_block(chains.states[CHAIN_DATASET], block, ctx)
    assert state.height == 1
    assert block.header.next_validators_hash == newer.hash()


def test_dataset_next_validators_unknown_is_a_missing_dependency(chains: LocalChains) -> None:
    from chain.types import make_validator_set

    newer = make_validator_set(1, [(k.public_key, 5) for k in VKEYS[:3]])
    block = dataset_block(chains, newer)
    with pytest.raises(MissingDependency):
        apply_block(chains.states[CHAIN_DATASET], block, chains.context())


def test_invalid_dataset_next_validators_older_than_current(chains: LocalChains) -> None:
    from chain.types import make_validator_set

    current = chains.context().validators
    older = make_validator_set(current.epoch, [(k.public_key, 5) for k in VKEYS[:2]])
    ctx = replace(chains.context(), validators=replace(current, epoch=3), next_validators={older.hash(): older}.get)
    state = chains.states[CHAIN_DATASET]
    block, _ = build_block(state, [], ctx, VKEYS[0].address, state.time_ms + 1, None, older)
    with pytest.raises(InvalidBlock, match="older"):
        apply_block(state, block, ctx)
