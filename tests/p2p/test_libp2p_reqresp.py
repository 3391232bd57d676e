"""Requests over libp2p (p2p/libp2p_reqresp.py through `Libp2pNetwork.request`): round trips,
deadlines, size caps on both sides, remote errors, unreachable peers, bounded inbound load.
"""

from __future__ import annotations

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from chain.errors import BlyanError
from p2p.libp2p_net import Libp2pConfig, Libp2pNetwork
from p2p.network import (
    PeerUnreachable,
    RemoteError,
    RequestTimeout,
    ResponseTooLarge,
    protocol_name,
)
from tests.p2p.libp2p_support import ECHO, WAIT, echo, seed, star

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


async def test_request_handler_with_its_own_limit_outlasts_the_server_default() -> None:
    async with star(2, request_timeout=0.3) as (a, b):

        async def slow(requester: str, data: bytes) -> bytes:
            await trio.sleep(0.6)
            return b"done"

        a.set_request_handler(ECHO, slow, max_request_bytes=1024, timeout_s=5.0)
        assert await b.request(a.local_id, ECHO, b"x", timeout=5.0) == b"done"


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
