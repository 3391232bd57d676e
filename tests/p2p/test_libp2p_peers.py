"""Peers of the libp2p `Network` (p2p/libp2p_peers.py): connecting through bootstrap peers,
disconnect events, and reconnection after a restart, a lost connection or a killed process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from p2p.libp2p_net import Libp2pConfig, Libp2pNetwork
from p2p.network import PeerUnreachable, RemoteError
from tests.p2p.libp2p_support import ECHO, TOPIC, WAIT, Inbox, Watch, echo, mesh, seed, star

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


# --- reconnection ---------------------------------------------------------------------------


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
            raw = getattr(raw, "conn", None) or raw.stream
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
