"""The status poll (`SyncService._status_loop`): every interval a node asks its connected peers
for their handshake again and catches up with one that is ahead. Heights are not gossiped, so a
peer whose handshake on connect failed is learned of through the poll alone; and the poll asks
connected peers only.

Engines and sync services run on the simulated network under the autojumping mock clock. No node
holds a validator key, so no consensus message ever reports a later height (`PeerAhead`): what a
node learns of a peer's heights comes from the handshake protocol only."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import trio
import trio.testing

from chain.kv import MemoryKV
from chain.store import ChainStore
from chain.types import CHAIN_DATASET, CHAIN_IDS, CHAIN_PARAMETER, CHAIN_REWARD
from genesis.history import make_test_history, make_test_pact
from node.core.feed import Committed, Subscription
from node.engine.config import EngineConfig
from node.engine.engine import Engine
from node.sync.config import SyncTiming
from node.sync.service import SyncService
from node.sync.wire import PROTOCOL_HANDSHAKE
from p2p.network import PeerId, protocol_name
from p2p.sim import SimNetwork, SimNetworkHub

TIMING = SyncTiming.for_tests()
CONNECT_CHECK_S = 30.0
"""Past B's handshake on connect: 4 attempts of a 1 s deadline, 1 + 2 + 4 s apart (11 s)."""


def make_engine(hub: SimNetworkHub, net: SimNetwork, store: ChainStore) -> Engine:
    hub.set_clock_skew(net.local_id, store.pact.genesis_time_ms)
    return Engine(store, None, net, net, EngineConfig.for_tests(), name=net.local_id)


def heights(store: ChainStore) -> dict[int, int]:
    return {c: store.height(c) for c in CHAIN_IDS}


async def until(feed: Subscription, condition: Callable[[], bool]) -> None:
    """Wait, on `feed`'s events, for `condition` (bounded by the caller's deadline)."""
    while not condition():
        await feed.receive()


class CountingSync(SyncService):
    """A sync service that counts the handshake requests it serves, by requester."""

    def __init__(self, engine: Engine, counts: Counter[tuple[PeerId, PeerId]], changed: Callable[[], None]) -> None:
        super().__init__(engine, TIMING, rng=engine.rng, name=engine.name)
        self.counts = counts
        self.changed = changed

    async def serve_handshake(self, peer: PeerId, data: bytes) -> bytes:
        self.counts[(peer, self.name)] += 1
        self.changed()
        return await super().serve_handshake(peer, data)


async def test_peer_ahead_after_a_failed_handshake_is_caught_up_through_the_poll(
        autojump_clock: trio.testing.MockClock) -> None:
    """B connects to A while A's sync service is not running: B's handshake on connect fails
    (no handler) and gives up. A's sync service then starts; A makes no block, so only B's poll
    can tell B that A is ahead, and B must catch up within a few status intervals."""
    source = make_test_history(reward_blocks=6, other_blocks=2)
    target = heights(source.store)
    assert all(target[c] > 0 for c in (CHAIN_REWARD, CHAIN_PARAMETER, CHAIN_DATASET))
    async with SimNetworkHub(seed=21) as hub:
        net_b = hub.add_node("b")
        engine_b = make_engine(hub, net_b, ChainStore.open(MemoryKV(), make_test_pact()))
        feed_b = engine_b.feed.subscribe("test", kinds=[Committed])
        sync_b = SyncService(engine_b, TIMING, rng=hub.derive_rng("sync", "b"), name="b")
        async with trio.open_nursery() as nursery:
            await nursery.start(engine_b.run)
            await nursery.start(sync_b.run)
            engine_a = make_engine(hub, hub.add_node("a"), source.store)
            await nursery.start(engine_a.run)
            await trio.sleep(CONNECT_CHECK_S)
            assert net_b.peers() == ["a"]
            assert sync_b.catchup.targets == {} and heights(engine_b.store) == dict.fromkeys(CHAIN_IDS, 0)
            await nursery.start(SyncService(engine_a, TIMING, rng=hub.derive_rng("sync", "a"), name="a").run)
            started = trio.current_time()
            with trio.fail_after(3 * TIMING.status_interval_s):
                await until(feed_b, lambda: heights(engine_b.store) == target)
            caught_up_s = trio.current_time() - started
            nursery.cancel_scope.cancel()
    assert caught_up_s <= 1.2 * TIMING.status_interval_s + 1.0, caught_up_s
    for chain_id in CHAIN_IDS:
        assert engine_b.store.state(chain_id).root == source.store.state(chain_id).root
    assert sync_b.catchup.targets == {c: h for c, h in target.items() if h > 0}


async def test_poll_asks_connected_peers_only(autojump_clock: trio.testing.MockClock) -> None:
    """Four nodes in a sparse peer graph (each connected to one or two others) reach each other
    by request, yet each node's poll asks its neighbours, every interval, and no one else."""
    names = ["a", "b", "c", "d"]
    counts: Counter[tuple[PeerId, PeerId]] = Counter()
    changed = trio.Event()

    def on_count() -> None:
        nonlocal changed
        changed.set()
        changed = trio.Event()

    async with SimNetworkHub(seed=22, peers_per_node=2) as hub:
        nets = {n: hub.add_node(n) for n in names}
        await hub.wait_idle()  # every connection made before any sync service runs: polls only
        pairs = {(p, q) for p in names for q in names if p != q}
        neighbours = {(p, q) for p, q in pairs if q in hub.neighbours(p)}
        strangers = pairs - neighbours
        assert neighbours and strangers
        engines = [make_engine(hub, net, ChainStore.open(MemoryKV(), make_test_pact())) for net in nets.values()]
        async with trio.open_nursery() as nursery:
            for engine in engines:
                await nursery.start(engine.run)
                await nursery.start(CountingSync(engine, counts, on_count).run)
            assert all(sorted(nets[p].peers()) == hub.neighbours(p) for p in names)
            rounds = 5
            with trio.fail_after(rounds * 1.2 * TIMING.status_interval_s + TIMING.request_timeout_s):
                while any(counts[pair] < rounds for pair in neighbours):
                    await changed.wait()
            # A stranger would be answered: the zero counts are the poll's choice, not the wire's.
            p, q = min(strangers)
            protocol = protocol_name(engines[0].network_id, PROTOCOL_HANDSHAKE)
            assert await nets[p].request(q, protocol, b"", TIMING.request_timeout_s)
            nursery.cancel_scope.cancel()
    assert counts[(p, q)] == 1
    assert all(counts[pair] == 0 for pair in strangers - {(p, q)})
    assert all(rounds <= counts[pair] <= rounds + 1 for pair in neighbours), counts
