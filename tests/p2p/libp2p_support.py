"""Helpers of the libp2p `Network` tests: seeded keys, peer-event and gossip watchers, a star
of nodes on 127.0.0.1, waiting for the gossip mesh.

Real sockets and real time: every wait is bounded by `trio.fail_after` and waits on an event
(peer events, handler calls, stream ends); one poll where libp2p marks nothing (the end of
pubsub's handling of one message).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from p2p.libp2p_net import Libp2pConfig, Libp2pNetwork
from p2p.network import Verdict, protocol_name, topic_name

TOPIC = topic_name("testnet", "votes")
ECHO = protocol_name("testnet", "echo")
WAIT = 10.0
"""Bound of every wait for something the network must do (generous: CI machines are slow)."""


def seed(n: int) -> bytes:
    return bytes([n]) * 32


class Watch:
    """Peer events of one node, and waits on conditions over them."""

    def __init__(self, net: Libp2pNetwork) -> None:
        self.net = net
        self.events: list[tuple[str, bool]] = []
        self._changed = trio.Event()
        net.on_peer_event(self._on_event)

    def _on_event(self, peer: str, connected: bool) -> None:
        self.events.append((peer, connected))
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    async def connected_to(self, *peers: str) -> None:
        await self.until(lambda: set(peers) <= set(self.net.peers()))

    async def gone(self, peer: str) -> None:
        await self.until(lambda: peer not in self.net.peers())


class Inbox:
    """A gossip handler that records what arrives, answers a fixed verdict, and wakes waiters."""

    def __init__(self, net: Libp2pNetwork, verdict: Verdict = Verdict.ACCEPT, **kw: int) -> None:
        self.verdict = verdict
        self.got: list[tuple[str, bytes]] = []
        self.times: list[float] = []
        self._changed = trio.Event()
        net.subscribe(TOPIC, self, **kw)

    async def __call__(self, sender: str, data: bytes) -> Verdict:
        self.got.append((sender, data))
        self.times.append(time.perf_counter())
        self._changed.set()
        self._changed = trio.Event()
        return self.verdict

    async def until_count(self, n: int, timeout: float = WAIT) -> None:
        with trio.fail_after(timeout):
            while len(self.got) < n:
                await self._changed.wait()


async def echo(requester: str, data: bytes) -> bytes:
    return b"echo:" + data


@asynccontextmanager
async def star(n: int, **overrides: object) -> AsyncIterator[list[Libp2pNetwork]]:
    """`n` nodes; every node after the first bootstraps to the first. Yields once all are
    connected to the hub and the hub to all."""
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(
            Libp2pNetwork.open(Libp2pConfig.for_tests(seed(1), **overrides))
        )
        watch = Watch(hub)
        nets = [hub]
        for i in range(2, n + 1):
            config = Libp2pConfig.for_tests(seed(i), tuple(hub.listen_addrs()), **overrides)
            nets.append(await stack.enter_async_context(Libp2pNetwork.open(config)))
        await watch.connected_to(*(net.local_id for net in nets[1:]))
        for net in nets[1:]:
            assert hub.local_id in net.peers()
        yield nets


async def mesh(nets: list[Libp2pNetwork]) -> None:
    """Wait until each node's mesh on TOPIC holds those of `nets` it is connected to."""
    ids = {net.local_id for net in nets}
    for net in nets:
        peers = [peer for peer in net.peers() if peer in ids]
        assert await net.wait_for_mesh(TOPIC, peers, WAIT), f"{net.local_id}: no mesh"
