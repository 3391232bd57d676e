"""The libp2p `Network` on 127.0.0.1: bootstrap, gossip, verdicts and bans, requests and their
failures, hostile peers, reconnection, clean shutdown.

Real sockets and real time: every wait is bounded by `trio.fail_after` and waits on an event
(peer events, handler calls, stream ends); one poll where libp2p marks nothing (the end of
pubsub's handling of one message).
"""

from __future__ import annotations

import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11
from libp2p.pubsub.pb import rpc_pb2
from libp2p.utils import encode_varint_prefixed

from chain.errors import BlyanError, ConfigError
from p2p.libp2p_net import Libp2pConfig, Libp2pNetwork
from p2p.net_stats import NetStats, RequestStats, TopicStats, compute_short_name
from p2p.network import (
    MAX_GOSSIP_BYTES,
    MessageTooLarge,
    Network,
    NetworkError,
    PeerUnreachable,
    RemoteError,
    RequestTimeout,
    ResponseTooLarge,
    ScoreConfig,
    Verdict,
    protocol_name,
    topic_name,
)

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


# --- config ---------------------------------------------------------------------------------


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError):
        Libp2pConfig(seed=b"short")
    with pytest.raises(ConfigError):
        Libp2pConfig(seed=seed(1), listen="not a multiaddr")
    with pytest.raises(ConfigError):
        Libp2pConfig(seed=seed(1), bootstrap=("/ip4/127.0.0.1/tcp/1",))  # no /p2p/
    with pytest.raises(ConfigError):
        Libp2pConfig(seed=seed(1), request_timeout=0)


async def test_peer_id_derives_from_seed() -> None:
    async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(9))) as net:
        expected = str(ID.from_pubkey(create_new_key_pair(seed(9)).public_key))
        assert net.local_id == expected
        assert isinstance(net, Network)
        addrs = net.listen_addrs()
        assert addrs and all(addr.endswith(f"/p2p/{expected}") for addr in addrs)


async def test_taken_listen_port_fails_to_open() -> None:
    async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(1))) as a:
        taken = a.listen_addrs()[0].split("/p2p/")[0]
        with pytest.raises(NetworkError, match="cannot listen"):
            async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(2), listen=taken)):
                pass


# --- connecting -----------------------------------------------------------------------------


async def test_two_nodes_connect_via_bootstrap() -> None:
    async with star(2) as (a, b):
        assert a.peers() == [b.local_id]
        assert b.peers() == [a.local_id]


async def test_three_nodes_connect_via_bootstrap() -> None:
    async with star(3) as (a, b, c):
        assert a.peers() == sorted([b.local_id, c.local_id])
        assert b.peers() == [a.local_id] and c.peers() == [a.local_id]


async def test_peer_event_on_disconnect() -> None:
    async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(1))) as a:
        watch = Watch(a)
        config = Libp2pConfig.for_tests(seed(2), tuple(a.listen_addrs()))
        async with Libp2pNetwork.open(config) as b:
            await watch.connected_to(b.local_id)
        await watch.gone(b.local_id)
        assert watch.events == [(b.local_id, True), (b.local_id, False)]


async def test_connect_to_unreachable_address_fails() -> None:
    async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(1))) as a:
        peer = str(ID.from_pubkey(create_new_key_pair(seed(2)).public_key))
        with pytest.raises(PeerUnreachable):
            await a.connect(f"/ip4/127.0.0.1/tcp/1/p2p/{peer}")
        with pytest.raises(PeerUnreachable):
            await a.connect("/ip4/127.0.0.1/tcp/1")


# --- gossip ---------------------------------------------------------------------------------


async def test_gossip_reaches_all_subscribers_through_the_hub() -> None:
    async with star(3) as (a, b, c):
        inboxes = [Inbox(net) for net in (a, b, c)]
        await mesh([a, b, c])
        await b.publish(TOPIC, b"vote")
        await inboxes[0].until_count(1)
        await inboxes[2].until_count(1)
        assert inboxes[0].got == [(b.local_id, b"vote")]
        assert inboxes[2].got == [(a.local_id, b"vote")]  # the sender is the forwarder
        assert inboxes[1].got == []  # never one's own publication


@pytest.mark.slow
async def test_gossip_100_messages_all_arrive() -> None:
    async with star(3) as (a, b, c):
        inboxes = [Inbox(net) for net in (a, b, c)]
        await mesh([a, b, c])
        sent = [b"msg-%03d" % i for i in range(100)]
        with trio.fail_after(WAIT):
            for data in sent:
                await b.publish(TOPIC, data)
            await inboxes[0].until_count(100)
            await inboxes[2].until_count(100)
        for inbox in (inboxes[0], inboxes[2]):
            assert sorted(data for _, data in inbox.got) == sent


async def test_gossip_reject_penalises_the_sender() -> None:
    async with star(2) as (a, b):
        inbox = Inbox(a, Verdict.REJECT)
        Inbox(b)
        await mesh([a, b])
        await b.publish(TOPIC, b"bad")
        await inbox.until_count(1)
        # The penalty is taken as the handler returns, before any other task runs.
        assert a.score(b.local_id) == pytest.approx(-1.0, abs=1e-3)
        assert b.local_id in a.peers()


async def test_gossip_ignore_does_not_penalise() -> None:
    async with star(2) as (a, b):
        inbox = Inbox(a, Verdict.IGNORE)
        Inbox(b)
        await mesh([a, b])
        await b.publish(TOPIC, b"stale")
        await inbox.until_count(1)
        assert a.score(b.local_id) == 0.0


async def test_gossip_repeated_rejects_ban_and_disconnect_the_sender() -> None:
    async with star(2, score=ScoreConfig(ban_threshold=-3.0)) as (a, b):
        inbox = Inbox(a, Verdict.REJECT)
        Inbox(b)
        watch = Watch(a)
        await mesh([a, b])
        for i in range(4):
            await b.publish(TOPIC, b"bad-%d" % i)
        await watch.gone(b.local_id)
        assert (b.local_id, False) in watch.events
        assert a.is_banned(b.local_id)
        assert len(inbox.got) == 4
        # b keeps re-dialling its bootstrap peer a; a keeps refusing it while the ban lasts.
        with pytest.raises(PeerUnreachable, match="banned"):
            await a.request(b.local_id, ECHO, b"x", timeout=2.0)


async def test_gossip_over_max_bytes_is_rejected_unseen() -> None:
    async with star(2) as (a, b):
        inbox = Inbox(a, max_bytes=10)
        Inbox(b)
        await mesh([a, b])
        await b.publish(TOPIC, b"x" * 11)
        await b.publish(TOPIC, b"small")
        await inbox.until_count(1)
        assert inbox.got == [(b.local_id, b"small")]
        assert a.score(b.local_id) < 0


async def test_gossip_message_at_the_cap_arrives() -> None:
    """py-libp2p drops pubsub RPCs over 1 MiB by default; the network raises that limit."""
    async with star(2) as (a, b):
        inbox = Inbox(a)
        Inbox(b)
        await mesh([a, b])
        await b.publish(TOPIC, b"x" * MAX_GOSSIP_BYTES)
        await inbox.until_count(1)
        assert len(inbox.got[0][1]) == MAX_GOSSIP_BYTES


async def test_publish_over_the_gossip_cap_raises() -> None:
    async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(1))) as a:
        with pytest.raises(MessageTooLarge):
            await a.publish(TOPIC, b"x" * (MAX_GOSSIP_BYTES + 1))


async def test_subscribing_twice_raises() -> None:
    async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(1))) as a:
        Inbox(a)
        with pytest.raises(ValueError):
            Inbox(a)


# --- requests -------------------------------------------------------------------------------


async def test_request_round_trip() -> None:
    async with star(2) as (a, b):
        a.set_request_handler(ECHO, echo, max_request_bytes=1024)
        assert await b.request(a.local_id, ECHO, b"hello", timeout=5.0) == b"echo:hello"
        assert await b.request(a.local_id, ECHO, b"", timeout=5.0) == b"echo:"


async def test_request_large_body_round_trip() -> None:
    async with star(2) as (a, b):
        a.set_request_handler(ECHO, echo, max_request_bytes=4 << 20)
        body = bytes(range(256)) * (3 << 12)  # 3 MiB
        assert await b.request(a.local_id, ECHO, body, timeout=10.0) == b"echo:" + body


async def test_request_timeout() -> None:
    async with star(2) as (a, b):
        release = trio.Event()

        async def stall(requester: str, data: bytes) -> bytes:
            await release.wait()
            return b"late"

        a.set_request_handler(ECHO, stall, max_request_bytes=1024)
        start = trio.current_time()
        with pytest.raises(RequestTimeout):
            await b.request(a.local_id, ECHO, b"x", timeout=0.3)
        assert trio.current_time() - start < 2.0
        release.set()
        a_echo = await b.request(a.local_id, ECHO, b"x", timeout=5.0)  # the node still serves
        assert a_echo == b"late"
        assert a.score(b.local_id) == 0.0  # giving up on a request is no fault


async def test_request_handler_overrunning_the_server_limit() -> None:
    async with star(2, request_timeout=0.3) as (a, b):

        async def stall(requester: str, data: bytes) -> bytes:
            await trio.sleep_forever()
            return b""

        a.set_request_handler(ECHO, stall, max_request_bytes=1024)
        with pytest.raises(RemoteError, match="handler timed out"):
            await b.request(a.local_id, ECHO, b"x", timeout=5.0)


async def test_request_over_the_server_cap_is_refused_and_penalised() -> None:
    async with star(2) as (a, b):
        a.set_request_handler(ECHO, echo, max_request_bytes=100)
        for size in (101, 1 << 20):  # within and beyond one yamux window
            with pytest.raises(RemoteError, match="exceeds the cap"):
                await b.request(a.local_id, ECHO, b"x" * size, timeout=5.0)
        assert a.score(b.local_id) == pytest.approx(-2.0, abs=1e-3)
        assert await b.request(a.local_id, ECHO, b"ok", timeout=5.0) == b"echo:ok"


async def test_response_over_the_client_cap() -> None:
    async with star(2) as (a, b):
        a.set_request_handler(ECHO, echo, max_request_bytes=1 << 20)
        with pytest.raises(ResponseTooLarge):
            await b.request(a.local_id, ECHO, b"x" * 1000, timeout=5.0, max_response_bytes=100)
        assert await b.request(a.local_id, ECHO, b"x", timeout=5.0, max_response_bytes=100)


async def test_handler_error_becomes_remote_error() -> None:
    async with star(2) as (a, b):

        async def refuse(requester: str, data: bytes) -> bytes:
            raise BlyanError("no such block")

        async def crash(requester: str, data: bytes) -> bytes:
            raise KeyError("bug")

        a.set_request_handler(ECHO, refuse, max_request_bytes=1024)
        a.set_request_handler(protocol_name("testnet", "crash"), crash, max_request_bytes=1024)
        with pytest.raises(RemoteError, match="no such block"):
            await b.request(a.local_id, ECHO, b"x", timeout=5.0)
        with pytest.raises(RemoteError, match=r"internal error \(KeyError\)"):
            await b.request(a.local_id, protocol_name("testnet", "crash"), b"x", timeout=5.0)
        assert a.score(b.local_id) == 0.0


async def test_request_unsupported_protocol_is_remote_error() -> None:
    async with star(2) as (a, b):
        with pytest.raises(RemoteError, match="unsupported protocol"):
            await b.request(a.local_id, ECHO, b"x", timeout=5.0)


async def test_request_to_unknown_or_invalid_peer_is_unreachable() -> None:
    async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(1))) as a:
        stranger = str(ID.from_pubkey(create_new_key_pair(seed(2)).public_key))
        with pytest.raises(PeerUnreachable):
            await a.request(stranger, ECHO, b"x", timeout=2.0)
        with pytest.raises(PeerUnreachable):
            await a.request("not-a-peer-id!", ECHO, b"x", timeout=2.0)
        with pytest.raises(PeerUnreachable):
            await a.request(a.local_id, ECHO, b"x", timeout=2.0)


async def test_inbound_requests_are_bounded() -> None:
    async with star(2, max_streams_inbound=2) as (a, b):
        release = trio.Event()
        entered = 0
        both_in = trio.Event()

        async def stall(requester: str, data: bytes) -> bytes:
            nonlocal entered
            entered += 1
            if entered == 2:
                both_in.set()
            await release.wait()
            return b"done"

        a.set_request_handler(ECHO, stall, max_request_bytes=1024)
        results: list[bytes] = []

        async def call() -> None:
            results.append(await b.request(a.local_id, ECHO, b"x", timeout=5.0))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            nursery.start_soon(call)
            with trio.fail_after(WAIT):
                await both_in.wait()
            with pytest.raises(RemoteError, match="overloaded"):
                await b.request(a.local_id, ECHO, b"x", timeout=5.0)
            release.set()
        assert results == [b"done", b"done"]


# --- hostile peers --------------------------------------------------------------------------


@asynccontextmanager
async def raw_host(n: int) -> AsyncIterator[IHost]:
    """A bare py-libp2p host (no pubsub, no guards): the hostile peer."""
    host = new_host(
        key_pair=create_new_key_pair(seed(n)),
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )
    async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        yield host


async def test_garbage_on_meshsub_does_not_kill_the_node() -> None:
    async with star(2) as (a, b):
        a.set_request_handler(ECHO, echo, max_request_bytes=1024)
        inbox = Inbox(a)
        Inbox(b)
        async with raw_host(66) as hostile:
            info = info_from_p2p_addr(multiaddr.Multiaddr(a.listen_addrs()[0]))
            with trio.fail_after(WAIT):
                await hostile.connect(info)
                stream = await hostile.new_stream(info.peer_id, [PROTOCOL_ID_V11])
                await stream.write(encode_varint_prefixed(b"\xff\xff\xff\xff\xff\xff"))
                with pytest.raises(StreamError):  # a resets the stream once it has penalised
                    while True:
                        if not await stream.read(1024):
                            break
            hostile_id = str(hostile.get_id())
            assert a.score(hostile_id) < 0
        # a is alive: it serves requests and gossip.
        assert await b.request(a.local_id, ECHO, b"still", timeout=5.0) == b"echo:still"
        await mesh([a, b])
        await b.publish(TOPIC, b"after")
        await inbox.until_count(1)


async def test_pubsub_message_with_garbage_key_does_not_kill_the_node() -> None:
    """A well-framed RPC whose message carries a key that does not parse: 0.8.1's signature
    check raises in pubsub's per-message task, which stops pubsub (and the node) unguarded."""
    async with star(2) as (a, b):
        inbox = Inbox(a)
        Inbox(b)
        async with raw_host(66) as hostile:
            info = info_from_p2p_addr(multiaddr.Multiaddr(a.listen_addrs()[0]))
            bad = rpc_pb2.Message(
                data=b"x", topicIDs=[TOPIC], from_id=b"\x00\x05bogus", seqno=bytes(8),
                key=b"not a key", signature=b"sig",
            )
            with trio.fail_after(WAIT):
                await hostile.connect(info)
                stream = await hostile.new_stream(info.peer_id, [PROTOCOL_ID_V11])
                rpc = rpc_pb2.RPC(publish=[bad]).SerializeToString()
                await stream.write(encode_varint_prefixed(rpc))
            hostile_id = str(hostile.get_id())
            # No event marks the end of pubsub's handling of one message: poll the score.
            with trio.fail_after(WAIT):
                while a.score(hostile_id) >= 0:
                    await trio.sleep(0.01)
        await mesh([a, b])
        await b.publish(TOPIC, b"after")
        await inbox.until_count(1)
        assert inbox.got == [(b.local_id, b"after")]


@pytest.mark.slow
async def test_garbage_on_raw_tcp_does_not_kill_the_node() -> None:
    async with star(2) as (a, b):
        a.set_request_handler(ECHO, echo, max_request_bytes=1024)
        port = int(multiaddr.Multiaddr(a.listen_addrs()[0]).value_for_protocol("tcp"))
        garbage = [
            b"\x00" * 64,
            b"/multistream/1.0.0\n" + b"\xff" * 1000,
            b"GET / HTTP/1.1\r\n\r\n",  # waits for more: dropped at the handshake timeout
            b"\x13/multistream/1.0.0\n\x07/noise\n\x00\x20" + b"\x01" * 32,  # bad Noise
        ]
        async with trio.open_nursery() as nursery:
            for data in garbage:
                nursery.start_soon(send_garbage, port, data)
            # While the garbage connections are open, a serves its real peers.
            assert await b.request(a.local_id, ECHO, b"still", timeout=5.0) == b"echo:still"
        assert await b.request(a.local_id, ECHO, b"after", timeout=5.0) == b"echo:after"


async def send_garbage(port: int, data: bytes) -> None:
    """Send `data` raw and wait until the node drops the connection."""
    with trio.fail_after(WAIT):
        sock = await trio.open_tcp_stream("127.0.0.1", port)
        async with sock:
            await sock.send_all(data)
            try:
                while await sock.receive_some(4096):
                    pass
            except trio.BrokenResourceError:
                pass


# --- reconnection and shutdown --------------------------------------------------------------


async def test_restarted_peer_is_reachable_again() -> None:
    async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(1))) as a:
        watch = Watch(a)
        inbox = Inbox(a)
        config = Libp2pConfig.for_tests(seed(2), tuple(a.listen_addrs()))
        async with Libp2pNetwork.open(config) as b:
            b.set_request_handler(ECHO, echo, max_request_bytes=1024)
            await watch.connected_to(b.local_id)
            assert await a.request(b.local_id, ECHO, b"1", timeout=5.0) == b"echo:1"
        await watch.gone(b.local_id)
        with pytest.raises(PeerUnreachable):  # its old address is dead
            await a.request(b.local_id, ECHO, b"x", timeout=5.0)
        async with Libp2pNetwork.open(config) as b:  # same key, new port
            b.set_request_handler(ECHO, echo, max_request_bytes=1024)
            Inbox(b)
            await watch.connected_to(b.local_id)
            assert await a.request(b.local_id, ECHO, b"2", timeout=5.0) == b"echo:2"
            await mesh([a, b])
            await b.publish(TOPIC, b"back")
            await inbox.until_count(1)


async def test_disconnected_bootstrap_peer_is_redialled() -> None:
    async with star(2) as (a, b):
        a.set_request_handler(ECHO, echo, max_request_bytes=1024)
        watch_a, watch_b = Watch(a), Watch(b)
        await a.disconnect(b.local_id)
        await watch_b.until(lambda: (a.local_id, False) in watch_b.events)
        await watch_b.connected_to(a.local_id)  # b re-dials its bootstrap peer
        await watch_a.connected_to(b.local_id)
        assert await b.request(a.local_id, ECHO, b"x", timeout=5.0) == b"echo:x"


async def test_dropped_tcp_connection_is_cleared_and_redialled() -> None:
    """Kill the TCP socket under a live connection (no yamux GOAWAY, no FIN from libp2p):
    both ends must notice, forget the dead connection and open a new one."""
    async with star(2) as (a, b):
        a.set_request_handler(ECHO, echo, max_request_bytes=1024)
        watch_b = Watch(b)
        (conn,) = b._swarm.get_connections(ID.from_base58(a.local_id))  # noqa: SLF001
        raw = conn.muxed_conn.secured_conn
        while not isinstance(raw, trio.SocketStream):
            raw = getattr(raw, "conn", None) or getattr(raw, "stream")
        raw.socket.shutdown(socket.SHUT_RDWR)  # both ends see the TCP stream end
        await watch_b.until(lambda: (a.local_id, False) in watch_b.events)
        assert await b.request(a.local_id, ECHO, b"x", timeout=5.0) == b"echo:x"


CHILD = """
import sys, trio
from p2p.libp2p_net import Libp2pConfig, Libp2pNetwork

async def echo(requester, data):
    return b"child:" + data

async def main():
    config = Libp2pConfig.for_tests(bytes([7]) * 32, (sys.argv[1],), listen=sys.argv[2])
    async with Libp2pNetwork.open(config) as net:
        net.set_request_handler(sys.argv[3], echo, 1024)
        print("READY", net.listen_addrs()[0], flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


@asynccontextmanager
async def child_node(bootstrap: str, listen: str) -> AsyncIterator[tuple[trio.Process, str]]:
    """A node in its own process (killed with SIGKILL on exit); yields it and its address."""
    root = str(Path(__file__).resolve().parents[2])
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", CHILD, bootstrap, listen, ECHO],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=root,
        env={**os.environ, "PYTHONPATH": root},
    )
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(WAIT):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(4096)
                assert chunk, "the child node exited before it was ready"
                line += chunk
        yield process, line.decode().split()[1]
    finally:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


@pytest.mark.slow
async def test_killed_and_restarted_process_is_reachable_again() -> None:
    """SIGKILL leaves a dead connection listed in 0.8.1; requests must still find the peer
    once it is back (same key, same port)."""
    async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(1))) as a:
        watch = Watch(a)
        (bootstrap,) = a.listen_addrs()
        async with child_node(bootstrap, "/ip4/127.0.0.1/tcp/0") as (child, addr):
            peer = addr.split("/p2p/")[1]
            await watch.connected_to(peer)
            assert await a.request(peer, ECHO, b"1", timeout=5.0) == b"child:1"
            child.kill()
            await child.wait()
            with pytest.raises((PeerUnreachable, RemoteError)):
                await a.request(peer, ECHO, b"x", timeout=5.0)
        await watch.gone(peer)
        async with child_node(bootstrap, addr.split("/p2p/")[0]):
            await watch.connected_to(peer)
            assert await a.request(peer, ECHO, b"2", timeout=5.0) == b"child:2"


async def test_clean_shutdown_logs_no_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with star(3) as (a, b, c):
        a.set_request_handler(ECHO, echo, max_request_bytes=1024)
        inboxes = [Inbox(net) for net in (a, b, c)]
        await mesh([a, b, c])
        await c.publish(TOPIC, b"bye")
        await inboxes[1].until_count(1)
        assert await b.request(a.local_id, ECHO, b"x", timeout=5.0) == b"echo:x"
    bad = [
        r for r in caplog.records
        if r.levelno >= logging.ERROR or "Nursery is closed" in r.getMessage()
    ]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


async def test_stopped_node_fails_requests_and_drops_publishes() -> None:
    async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(1))) as a:
        pass
    assert a.peers() == []
    await a.publish(TOPIC, b"x")  # dropped
    with pytest.raises(PeerUnreachable, match="down"):
        await a.request(a.local_id, ECHO, b"x", timeout=0.05)


# --- figures ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_figures_dial_gossip_latency_request_round_trip() -> None:
    """Loose bounds on loopback; prints the figures (run with -s to see them)."""
    async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(1))) as a:
        watch = Watch(a)
        started = time.perf_counter()
        async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(2))) as b:
            start_s = time.perf_counter() - started
            dialled = time.perf_counter()
            await b.connect(a.listen_addrs()[0])
            dial_s = time.perf_counter() - dialled
            await watch.connected_to(b.local_id)
            a.set_request_handler(ECHO, echo, max_request_bytes=1024)
            inbox = Inbox(a)
            Inbox(b)
            await mesh([a, b])
            latencies = []
            for i in range(50):
                sent = time.perf_counter()
                await b.publish(TOPIC, b"%d" % i)
                await inbox.until_count(i + 1)
                latencies.append(inbox.times[-1] - sent)
            trips = []
            for _ in range(50):
                sent = time.perf_counter()
                await b.request(a.local_id, ECHO, b"ping", timeout=5.0)
                trips.append(time.perf_counter() - sent)
        gossip_p50, trip_p50 = statistics.median(latencies), statistics.median(trips)
        print(
            f"\nnode start {start_s * 1e3:.1f} ms, dial {dial_s * 1e3:.1f} ms, "
            f"gossip p50 {gossip_p50 * 1e3:.2f} ms, request round trip p50 {trip_p50 * 1e3:.2f} ms"
        )
        assert dial_s < 1.0 and gossip_p50 < 0.1 and trip_p50 < 0.1


# --- counters ---------------------------------------------------------------------------------


async def test_stats_count_gossip_per_topic_and_verdict() -> None:
    async with star(2) as (a, b):
        verdicts = iter([Verdict.ACCEPT, Verdict.IGNORE, Verdict.REJECT])
        got: list[bytes] = []
        arrived = trio.Event()

        async def judge(sender: str, data: bytes) -> Verdict:
            got.append(data)
            if len(got) == 3:
                arrived.set()
            return next(verdicts)

        a.subscribe(TOPIC, judge)
        Inbox(b)
        await mesh([a, b])
        assert a.stats().topics.get("votes", TopicStats()) == TopicStats()
        for data in (b"one", b"two", b"three"):
            await b.publish(TOPIC, data)
        with trio.fail_after(WAIT):
            await arrived.wait()
        received, sent = a.stats().topics["votes"], b.stats().topics["votes"]
        assert (received.accepted, received.ignored, received.rejected) == (1, 1, 1)
        assert received.messages_in == 3 and received.bytes_in == 11
        assert sent.messages_out == 3 and sent.bytes_out == 11
        assert sent.messages_in == 0 and received.messages_out == 0  # a relays to nobody else
        assert isinstance(a.stats(), NetStats)


async def test_stats_count_requests_on_both_sides() -> None:
    async with star(2) as (a, b):
        a.set_request_handler(ECHO, echo, max_request_bytes=8)

        async def refuse(requester: str, data: bytes) -> bytes:
            raise BlyanError("no")

        a.set_request_handler(protocol_name("testnet", "refuse"), refuse, max_request_bytes=8)
        await b.request(a.local_id, ECHO, b"x", timeout=WAIT)
        with pytest.raises(RemoteError):
            await b.request(a.local_id, ECHO, b"x" * 9, timeout=WAIT)
        with pytest.raises(RemoteError):
            await b.request(a.local_id, protocol_name("testnet", "refuse"), b"x", timeout=WAIT)
        served, asked = a.stats().requests, b.stats().requests
        assert served["echo"] == RequestStats(served=1, failed=1)
        assert served["refuse"] == RequestStats(failed=1)
        assert asked["echo"] == RequestStats(sent=1, send_failed=1)
        assert asked["refuse"] == RequestStats(send_failed=1)


def test_short_names_of_topics_and_protocols() -> None:
    assert compute_short_name(topic_name("devnet", "votes")) == "votes"
    assert compute_short_name(protocol_name("devnet", "blocks", 2)) == "blocks"
    assert compute_short_name("/other/thing") == "/other/thing"
