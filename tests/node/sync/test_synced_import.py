"""Blocks from catch-up through the engine: each is checked (its commit, every transaction's
signature, the state root) before it is stored, and the first bad one stops the import with the
blocks before it stored whole and the peer penalised."""

from __future__ import annotations

import dataclasses

import trio

from chain.kv import MemoryKV
from chain.payloads import Transfer
from chain.reward import get_account
from chain.store import ChainStore
from chain.transition import compute_tx_root
from chain.types import CHAIN_REWARD, Block
from genesis.history import ChainHistory
from genesis.testkit import account_keys, certify, make_pact, sign_tx, validator_keys
from node.core.ports import ImportReport
from node.engine.config import EngineConfig
from node.engine.engine import Engine
from tests.node.engine.test_engine import FakeNetwork

VKEY = validator_keys(1)[0]
PAYER, PAYEE, OTHER = account_keys(3, prefix="synced-import")
PACT = make_pact([VKEY], accounts=[(PAYER.address, 1_000_000)])
NID = PACT.network_id
PEER = "peer-1"
DEADLINE_S = 30.0


def make_source(n_blocks: int) -> ChainHistory:
    """A chain of `n_blocks` reward blocks, each with two transfers of the payer."""
    history = ChainHistory(ChainStore.open(MemoryKV(), PACT), [VKEY])
    for h in range(n_blocks):
        txs = [sign_tx(PAYER, NID, CHAIN_REWARD, 2 * h + i, Transfer(PAYEE.address, 10 + i)) for i in range(2)]
        history.advance(CHAIN_REWARD, txs)
    return history


def with_bad_signature(block: Block, index: int) -> Block:
    """`block` with transaction `index` signed by another key (its root and hash updated, so
    only the signature is wrong)."""
    tx = block.txs[index]
    forged = sign_tx(OTHER, NID, CHAIN_REWARD, tx.body.nonce, tx.body.payload)
    txs = block.txs[:index] + (dataclasses.replace(tx, signature=forged.signature),) + block.txs[index + 1:]
    return Block(dataclasses.replace(block.header, tx_root=compute_tx_root(txs)), txs, block.last_commit)


async def import_into_fresh_engine(blocks: tuple[Block, ...], target: int) -> tuple[Engine, FakeNetwork, ImportReport]:
    net = FakeNetwork()
    engine = Engine(ChainStore.open(MemoryKV(), PACT), VKEY, net, net, EngineConfig.for_tests())
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            report = await engine.import_blocks(CHAIN_REWARD, PEER, blocks, certify(blocks[-1], [VKEY], NID), target)
            nursery.cancel_scope.cancel()
    return engine, net, report


async def test_synced_blocks_imported_in_order() -> None:
    source = make_source(4)
    blocks = tuple(source.store.get_block(CHAIN_REWARD, h) for h in range(1, 5))
    engine, net, report = await import_into_fresh_engine(blocks, 4)  # type: ignore[arg-type]
    assert report == ImportReport(4, 4, 0)
    assert engine.store.state(CHAIN_REWARD).root == source.store.state(CHAIN_REWARD).root
    assert net.penalties == []


async def test_invalid_synced_block_bad_signature_keeps_the_blocks_before_it() -> None:
    """A bad signature in the third block of a batch: blocks 1 and 2 are stored, block 3 is
    refused with the typed error's reason, nothing of it is written, and the peer is penalised."""
    source = make_source(3)
    good = [source.store.get_block(CHAIN_REWARD, h) for h in (1, 2, 3)]
    assert all(b is not None for b in good)
    bad = with_bad_signature(good[2], 1)  # type: ignore[arg-type]
    engine, net, report = await import_into_fresh_engine((good[0], good[1], bad), 3)  # type: ignore[arg-type]
    assert report == ImportReport(2, 2, 0)
    store = engine.store
    assert store.height(CHAIN_REWARD) == 2 and store.get_block(CHAIN_REWARD, 3) is None
    assert store.get_block(CHAIN_REWARD, 2) == good[1]
    state = store.state(CHAIN_REWARD)
    assert get_account(state, PAYEE.address).balance == 2 * (10 + 11)
    assert [(p, r) for p, r, _ in net.penalties] == [
        (PEER, "bad synced block: invalid reward block at height 3: transaction 1: invalid transaction: bad signature")]
