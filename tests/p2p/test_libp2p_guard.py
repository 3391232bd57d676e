"""Hostile peers (p2p/libp2p_guard.py): garbage on the pubsub stream, a message with a key that
does not parse, garbage on raw TCP; the node stays up and serves its real peers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11
from libp2p.pubsub.pb import rpc_pb2
from libp2p.utils import encode_varint_prefixed

from tests.p2p.libp2p_support import ECHO, TOPIC, WAIT, Inbox, echo, mesh, seed, star

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
