"""Requests on the simulated network (p2p/sim/requests.py): round trips, latency, timeouts,
partitions, typed failures, bounded inbound load.

Every async test runs under `autojump_clock` (MockClock, autojump_threshold=0): the sleeps below
cost no wall time.
"""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from chain.errors import BlyanError
from p2p.network import (
    PeerUnreachable,
    RemoteError,
    RequestTimeout,
    ResponseTooLarge,
    protocol_name,
)
from p2p.sim import FaultConfig, SimNetworkHub

PING = protocol_name("testnet", "ping")


async def echo(requester: str, data: bytes) -> bytes:
    return b"echo:" + data


# --- requests -----------------------------------------------------------------------------


async def test_request_response_takes_a_round_trip(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetworkHub(seed=11, faults=FaultConfig.fixed(50.0)) as hub:
        a, b = hub.add_node("a"), hub.add_node("b")
        b.set_request_handler(PING, echo, max_request_bytes=64)
        start = trio.current_time()
        assert await a.request("b", PING, b"hi", timeout=1.0) == b"echo:hi"
        assert trio.current_time() - start == pytest.approx(0.100)
        assert hub.stats.requests == 1 and hub.stats.responses == 1


async def test_request_asymmetric_link_latency(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetworkHub(seed=12, faults=FaultConfig.fixed(10.0)) as hub:
        a, b = hub.add_node("a"), hub.add_node("b")
        hub.set_link("b", "a", FaultConfig.fixed(200.0))
        b.set_request_handler(PING, echo, max_request_bytes=64)
        start = trio.current_time()
        await a.request("b", PING, b"", timeout=1.0)
        assert trio.current_time() - start == pytest.approx(0.210)


async def test_request_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async def slow(requester: str, data: bytes) -> bytes:
        await trio.sleep(10.0)
        return b"late"

    async with SimNetworkHub(seed=13, faults=FaultConfig.fixed(10.0)) as hub:
        a, b = hub.add_node("a"), hub.add_node("b")
        b.set_request_handler(PING, slow, max_request_bytes=64)
        start = trio.current_time()
        with pytest.raises(RequestTimeout):
            await a.request("b", PING, b"", timeout=1.0)
        assert trio.current_time() - start == pytest.approx(1.0)
        await hub.wait_idle()  # the receiver gives up at the same deadline
        assert trio.current_time() - start < 1.1


async def test_handler_limit_is_the_hubs_unless_the_protocol_sets_its_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """As on libp2p: a handler runs at most `handler_timeout` (the network's request timeout),
    or its protocol's own `timeout_s`, however long the requester would wait."""
    LONG = protocol_name("testnet", "long")

    async def slow(requester: str, data: bytes) -> bytes:
        await trio.sleep(12.0)
        return b"late"

    async with SimNetworkHub(seed=13, faults=FaultConfig.fixed(10.0), handler_timeout=10.0) as hub:
        a, b = hub.add_node("a"), hub.add_node("b")
        b.set_request_handler(PING, slow, max_request_bytes=64)
        b.set_request_handler(LONG, slow, max_request_bytes=64, timeout_s=15.0)
        with pytest.raises(ValueError, match="handler timeout"):
            b.set_request_handler(protocol_name("testnet", "bad"), slow, max_request_bytes=64, timeout_s=0.0)
        start = trio.current_time()
        with pytest.raises(RemoteError, match="handler timed out"):
            await a.request("b", PING, b"", timeout=60.0)
        assert trio.current_time() - start == pytest.approx(10.02)
        assert await a.request("b", LONG, b"", timeout=60.0) == b"late"


async def test_request_across_a_partition_times_out(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetworkHub(seed=14) as hub:
        a, b = hub.add_node("a"), hub.add_node("b")
        b.set_request_handler(PING, echo, max_request_bytes=64)
        hub.partition([{"a"}, {"b"}])
        start = trio.current_time()
        with pytest.raises(RequestTimeout):
            await a.request("b", PING, b"", timeout=2.0)
        assert trio.current_time() - start == pytest.approx(2.0)
        hub.heal()
        assert await a.request("b", PING, b"x", timeout=2.0) == b"echo:x"


async def test_request_failures_are_typed(autojump_clock: trio.testing.MockClock) -> None:
    async def broken(requester: str, data: bytes) -> bytes:
        raise RuntimeError("bug in the handler")

    async def refusing(requester: str, data: bytes) -> bytes:
        raise BlyanError("no such block")

    async with SimNetworkHub(seed=15) as hub:
        a, b = hub.add_node("a"), hub.add_node("b")
        b.set_request_handler(PING, echo, max_request_bytes=4)
        b.set_request_handler("/broken", broken, max_request_bytes=64)
        b.set_request_handler("/refusing", refusing, max_request_bytes=64)
        with pytest.raises(RemoteError, match="unsupported protocol"):
            await a.request("b", "/nope", b"", timeout=1.0)
        with pytest.raises(RemoteError, match="internal error"):
            await a.request("b", "/broken", b"", timeout=1.0)
        with pytest.raises(RemoteError, match="no such block"):
            await a.request("b", "/refusing", b"", timeout=1.0)
        assert b.score("a") == 0.0  # failing handlers penalise nobody
        with pytest.raises(ResponseTooLarge):
            await a.request("b", PING, b"abcd", timeout=1.0, max_response_bytes=4)
        with pytest.raises(RemoteError, match="exceeds the cap"):
            await a.request("b", PING, b"abcde", timeout=1.0)
        assert b.score("a") < 0  # an oversized request is the requester's fault
        with pytest.raises(PeerUnreachable):
            await a.request("nobody", PING, b"", timeout=1.0)
        with pytest.raises(ValueError):
            await a.request("b", PING, b"", timeout=math.inf)
        assert await a.request("b", PING, b"ok", timeout=1.0) == b"echo:ok"  # hub still fine


async def test_inbound_requests_are_bounded(autojump_clock: trio.testing.MockClock) -> None:
    async def slow(requester: str, data: bytes) -> bytes:
        await trio.sleep(0.5)
        return b"done"

    results: list[bytes | str] = []
    async with SimNetworkHub(seed=16, max_inbound_requests=2) as hub:
        a, b = hub.add_node("a"), hub.add_node("b")
        b.set_request_handler(PING, slow, max_request_bytes=64)

        async def one() -> None:
            try:
                results.append(await a.request("b", PING, b"", timeout=5.0))
            except RemoteError as err:
                results.append(err.reason)

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)
    assert sorted(results, key=str) == [b"done", b"done", "overloaded", "overloaded"]
