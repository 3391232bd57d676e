"""`Engine`: gossip verdicts, local submission, the feed, and a transfer finalized end to end.

Verdict tests call the gossip handlers directly on an engine that is built but not run, over
`FakeNetwork` (records penalties and publications). The end-to-end tests run engines on a
`SimNetworkHub` under `autojump_clock` and wait for `Committed` events on their feeds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from chain import codec, crypto
from chain.commit import sign_vote
from chain.errors import StoreError
from chain.kv import MemoryKV
from chain.payloads import Transfer
from chain.reward import get_account
from chain.store import ChainStore
from chain.types import CHAIN_REWARD, Transaction
from chain.votes import STEP_PREVOTE, Vote
from consensus.mempool import Outcome
from consensus.messages import NO_POL_ROUND, Proposal, sign_proposal
from genesis.history import ChainHistory
from genesis.testkit import account_keys, certify, make_pact, sign_tx, validator_keys
from node.core.feed import Committed, Penalized, TxAdmitted
from node.core.ports import ImportReport
from node.engine.config import EngineConfig
from node.engine.engine import Engine
from node.engine.wire import (
    ProposalMsg,
    ProposalRequest,
    ProposalResponse,
    TxMsg,
    VoteMsg,
)
from p2p.network import GossipHandler, PeerEventCallback, PeerId, PeerUnreachable, RequestHandler, Verdict
from p2p.sim import SimNetworkHub

VKEY = validator_keys(1)[0]
OUTSIDER = crypto.PrivateKey.from_label("engine-outsider")
PAYER, PAYEE = account_keys(2, prefix="engine-account")
FUNDS = 1_000_000
PACT = make_pact([VKEY], accounts=[(PAYER.address, FUNDS)])
NID = PACT.network_id
PEER = "peer-1"
DEADLINE_S = 30.0
GARBAGE = (b"", b"\xff" * 7, b"\x00\x01garbage")


class FakeNetwork:
    """A `Network` and `Clock` with no peers, recording publications and penalties."""

    def __init__(self, local_id: PeerId = "node-0") -> None:
        self.local_id = local_id
        self.published: list[tuple[str, bytes]] = []
        self.penalties: list[tuple[PeerId, str, float]] = []
        self.handlers: dict[str, GossipHandler] = {}

    def now_ms(self) -> int:
        return PACT.genesis_time_ms + 1_000 + int(trio.current_time() * 1000)

    async def publish(self, topic: str, data: bytes) -> None:
        self.published.append((topic, data))

    def subscribe(self, topic: str, handler: GossipHandler, max_bytes: int = 1 << 20) -> None:
        self.handlers[topic] = handler

    async def request(self, peer: PeerId, protocol: str, data: bytes, timeout: float,
                      max_response_bytes: int = 1 << 20) -> bytes:
        raise PeerUnreachable(peer, protocol, "no peers")

    def set_request_handler(self, protocol: str, handler: RequestHandler, max_request_bytes: int) -> None:
        pass

    def peers(self) -> list[PeerId]:
        return []

    def on_peer_event(self, callback: PeerEventCallback) -> None:
        pass

    def penalize(self, peer: PeerId, reason: str, weight: float = 1.0) -> None:
        self.penalties.append((peer, reason, weight))

    def score(self, peer: PeerId) -> float:
        return -sum(w for p, _, w in self.penalties if p == peer)


def make_engine(reward_blocks: int = 0) -> tuple[Engine, FakeNetwork]:
    store = ChainStore.open(MemoryKV(), PACT)
    history = ChainHistory(store, [VKEY])
    for _ in range(reward_blocks):
        history.advance(CHAIN_REWARD, [])
    net = FakeNetwork()
    return Engine(store, VKEY, net, net, EngineConfig.for_tests()), net


def transfer(nonce: int = 0, amount: int = 5) -> Transaction:
    return sign_tx(PAYER, NID, CHAIN_REWARD, nonce, Transfer(PAYEE.address, amount))


def vote_bytes(key: crypto.PrivateKey, height: int) -> bytes:
    vote = Vote(CHAIN_REWARD, height, 0, STEP_PREVOTE, b"\x21" * 32, key.address)
    return codec.encode(VoteMsg(sign_vote(key, NID, vote)))


# --- undecodable gossip -----------------------------------------------------------------------


async def _check_garbage_rejected(handler: Callable[[PeerId, bytes], Awaitable[Verdict]],
                                  engine: Engine, net: FakeNetwork, what: str) -> None:
    events = engine.feed.subscribe("test", kinds=[Penalized])
    for data in GARBAGE:
        assert await handler(PEER, data) is Verdict.REJECT
    assert events.drain() == [Penalized(PEER, f"undecodable {what}")] * len(GARBAGE)
    assert [(p, r) for p, r, _ in net.penalties] == [(PEER, f"undecodable {what}")] * len(GARBAGE)
    assert net.score(PEER) < 0


async def test_invalid_tx_gossip_undecodable() -> None:
    engine, net = make_engine()
    await _check_garbage_rejected(engine.on_tx_gossip, engine, net, "transaction")
    assert len(engine.mempools[CHAIN_REWARD]) == 0


async def test_invalid_vote_gossip_undecodable() -> None:
    engine, net = make_engine()
    await _check_garbage_rejected(engine.on_vote_gossip, engine, net, "vote")


async def test_invalid_proposal_gossip_undecodable() -> None:
    engine, net = make_engine()
    await _check_garbage_rejected(engine.on_proposal_gossip, engine, net, "proposal")


async def test_invalid_evidence_gossip_undecodable() -> None:
    engine, net = make_engine()
    await _check_garbage_rejected(engine.on_evidence_gossip, engine, net, "evidence")


# --- transactions ------------------------------------------------------------------------------


async def test_tx_gossip_valid_accepted_then_duplicate_ignored() -> None:
    engine, net = make_engine()
    events = engine.feed.subscribe("test", kinds=[TxAdmitted, Penalized])
    tx = transfer()
    data = codec.encode(TxMsg(tx))
    assert await engine.on_tx_gossip(PEER, data) is Verdict.ACCEPT
    assert events.drain() == [TxAdmitted(CHAIN_REWARD, tx.hash(), False)]
    assert engine.is_pending(CHAIN_REWARD, tx.hash())
    assert await engine.on_tx_gossip(PEER, data) is Verdict.IGNORE
    assert events.drain() == [] and net.penalties == []
    assert engine.count_pending(CHAIN_REWARD, PAYER.address) == 1


async def test_invalid_tx_gossip_bad_signature() -> None:
    engine, net = make_engine()
    tx = transfer()
    forged = Transaction(tx.body, OUTSIDER.sign(NID, crypto.KIND_TX, codec.encode(tx.body)))
    assert await engine.on_tx_gossip(PEER, codec.encode(TxMsg(forged))) is Verdict.REJECT
    assert not engine.is_pending(CHAIN_REWARD, forged.hash())


async def test_submit_tx_admits_local() -> None:
    engine, net = make_engine()
    events = engine.feed.subscribe("test", kinds=[TxAdmitted])
    tx = transfer()
    assert engine.submit_tx(tx).added
    assert events.drain() == [TxAdmitted(CHAIN_REWARD, tx.hash(), True)]
    assert engine.submit_tx(tx).outcome is Outcome.DUPLICATE
    assert events.drain() == []
    assert engine.submit_tx(transfer(nonce=10_000)).outcome is Outcome.NONCE_GAP


async def test_submit_tx_refuses_what_fails_against_state_where_gossip_admits_it() -> None:
    """A local sender is told its transfer overdraws; a relayed one may follow transactions this
    node has not seen, so gossip admits it (the runner drops it before it could start a height)."""
    engine, net = make_engine()
    events = engine.feed.subscribe("test", kinds=[TxAdmitted])
    overdraft = transfer(amount=FUNDS + 1)
    result = engine.submit_tx(overdraft)
    assert result.outcome is Outcome.FAILS_STATE and f"balance {FUNDS} below {FUNDS + 1}" in result.reason
    assert not engine.is_pending(CHAIN_REWARD, overdraft.hash()) and events.drain() == []
    assert await engine.on_tx_gossip(PEER, codec.encode(TxMsg(overdraft))) is Verdict.ACCEPT
    assert net.penalties == []


# --- votes and proposals -----------------------------------------------------------------------


async def test_vote_gossip_past_height_ignored_without_penalty() -> None:
    engine, net = make_engine(reward_blocks=1)
    events = engine.feed.subscribe("test", kinds=[Penalized])
    assert engine.runners[CHAIN_REWARD].height == 2
    assert await engine.on_vote_gossip(PEER, vote_bytes(VKEY, 1)) is Verdict.IGNORE
    assert events.drain() == [] and net.penalties == []


async def test_vote_gossip_current_height_accepted() -> None:
    engine, net = make_engine()
    assert await engine.on_vote_gossip(PEER, vote_bytes(VKEY, 1)) is Verdict.ACCEPT
    assert net.penalties == []


async def test_invalid_vote_gossip_non_validator() -> None:
    engine, net = make_engine()
    events = engine.feed.subscribe("test", kinds=[Penalized])
    assert await engine.on_vote_gossip(PEER, vote_bytes(OUTSIDER, 1)) is Verdict.REJECT
    penalties = events.drain()
    assert len(penalties) == 1 and penalties[0].peer == PEER and "non-validator" in penalties[0].reason
    assert [p for p, _, _ in net.penalties] == [PEER]


async def test_invalid_proposal_gossip_names_another_block() -> None:
    engine, net = make_engine()
    events = engine.feed.subscribe("test", kinds=[Penalized])
    other, _ = make_engine(reward_blocks=1)
    block = other.store.get_block(CHAIN_REWARD, 1)
    assert block is not None
    p = Proposal(CHAIN_REWARD, 1, 0, b"\x55" * 32, NO_POL_ROUND, VKEY.address)
    data = codec.encode(ProposalMsg(sign_proposal(VKEY, NID, p), block))
    assert await engine.on_proposal_gossip(PEER, data) is Verdict.REJECT
    assert [e.peer for e in events.drain()] == [PEER] and [p for p, _, _ in net.penalties] == [PEER]


async def test_serve_proposal_unknown_round_answers_none() -> None:
    engine, _ = make_engine()
    reply = await engine.serve_proposal(PEER, codec.encode(ProposalRequest(CHAIN_REWARD, 1, 3)))
    assert codec.decode(ProposalResponse, reply, max_size=1 << 20) == ProposalResponse(None)


# --- end to end on the simulated network --------------------------------------------------------


async def test_engine_finalizes_transfer_alone(autojump_clock: trio.testing.MockClock) -> None:
    store = ChainStore.open(MemoryKV(), PACT)
    async with SimNetworkHub(seed=3) as hub:
        net = hub.add_node("node-0")
        hub.set_clock_skew("node-0", PACT.genesis_time_ms)  # the pact's era, not the epoch
        engine = Engine(store, VKEY, net, net, EngineConfig.for_tests(), name="node-0")
        commits = engine.feed.subscribe("test", kinds=[Committed])
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            tx = transfer(amount=123)
            assert engine.submit_tx(tx).added
            with trio.fail_after(DEADLINE_S):
                event = await commits.receive()
            nursery.cancel_scope.cancel()
    assert isinstance(event, Committed)
    assert event.chain_id == CHAIN_REWARD and event.block.txs == (tx,) and not event.synced
    assert store.height(CHAIN_REWARD) == 1 and store.get_block(CHAIN_REWARD, 1) == event.block
    assert get_account(store.state(CHAIN_REWARD), PAYEE.address).balance == 123
    assert get_account(event.state, PAYER.address).balance == FUNDS - 123
    assert not engine.is_pending(CHAIN_REWARD, tx.hash())


async def test_engine_observer_follows_validator_by_gossip(autojump_clock: trio.testing.MockClock) -> None:
    stores = [ChainStore.open(MemoryKV(), PACT) for _ in range(2)]
    async with SimNetworkHub(seed=4) as hub:
        nets = [hub.add_node("node-0"), hub.add_node("node-1")]
        for net in nets:  # block times are checked against the clock: the pact's era
            hub.set_clock_skew(net.local_id, PACT.genesis_time_ms)
        validator = Engine(stores[0], VKEY, nets[0], nets[0], EngineConfig.for_tests(), name="node-0")
        observer = Engine(stores[1], None, nets[1], nets[1], EngineConfig.for_tests(), name="node-1")
        seen = observer.feed.subscribe("test", kinds=[Committed, TxAdmitted])
        async with trio.open_nursery() as nursery:
            for engine in (validator, observer):
                await nursery.start(engine.run)
            tx = transfer(amount=9)
            assert validator.submit_tx(tx).added
            with trio.fail_after(DEADLINE_S):
                events = [await seen.receive()]
                while not isinstance(events[-1], Committed):
                    events.append(await seen.receive())
            nursery.cancel_scope.cancel()
    committed = events[-1]
    assert isinstance(committed, Committed) and committed.block.txs == (tx,)
    assert stores[1].state(CHAIN_REWARD).root == stores[0].state(CHAIN_REWARD).root
    assert not committed.synced  # decided by following the validator's proposal and votes
    assert all(isinstance(e, TxAdmitted) and not e.local for e in events[:-1])


# --- blocks from catch-up -----------------------------------------------------------------------


async def test_import_blocks_certified_block_publishes_synced_commit() -> None:
    source, _ = make_engine(reward_blocks=1)
    block = source.store.get_block(CHAIN_REWARD, 1)
    assert block is not None
    engine, net = make_engine()
    commits = engine.feed.subscribe("test", kinds=[Committed])
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            report = await engine.import_blocks(CHAIN_REWARD, PEER, (block,), certify(block, [VKEY], NID), 1)
            nursery.cancel_scope.cancel()
    assert report == ImportReport(1, 1, 0)
    [event] = commits.drain()
    assert isinstance(event, Committed) and event.synced and event.block == block
    assert net.penalties == []


async def test_import_blocks_store_failure_reports_then_stops_the_engine(
        autojump_clock: trio.testing.MockClock) -> None:
    """A failed write still answers catch-up (nothing imported), then stops the engine: a node
    does not go on without its disk."""
    source, _ = make_engine(reward_blocks=1)
    block = source.store.get_block(CHAIN_REWARD, 1)
    assert block is not None
    engine, _ = make_engine()

    def fail_write(*args: object) -> None:
        raise StoreError("disk full")

    engine.store.commit_block = fail_write  # type: ignore[method-assign]
    reports: list[ImportReport] = []

    async def catch_up() -> None:
        reports.append(await engine.import_blocks(CHAIN_REWARD, PEER, (block,), certify(block, [VKEY], NID), 1))

    with trio.fail_after(DEADLINE_S), pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            nursery.start_soon(catch_up)
    assert info.value.subgroup(StoreError) is not None
    assert reports == [ImportReport(0, 0, 0)]
