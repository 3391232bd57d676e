"""Persistent request streams over real py-libp2p on 127.0.0.1 (`p2p/libp2p_streams.py`,
`p2p/libp2p_channels.py` through `Libp2pNetwork.request`): pipelining on one stream,
out-of-order answers, deadlines that do not disturb the other requests, size caps, broken
streams, fallback to per-request streams, idle close, and peers that break the format.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import pytest
import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from p2p.libp2p_channels import REFUSED_RETRY_S
from p2p.libp2p_net import Libp2pConfig, Libp2pNetwork
from p2p.libp2p_reqresp import FrameError, read_exactly
from p2p.libp2p_streams import (
    REFUSAL_ID,
    REQUEST_HEADER,
    RESPONSE_HEADER,
    SPARE_STREAMS_PER_PEER,
    STATUS_ERROR,
    STATUS_OK,
    compute_stream_protocol,
    encode_request,
    encode_response,
)
from p2p.network import (
    PeerUnreachable,
    RemoteError,
    RequestTimeout,
    ResponseTooLarge,
    protocol_name,
)
from tests.p2p.libp2p_support import ECHO, WAIT, Watch, echo, seed, star


def streams_opened(net: Libp2pNetwork, protocol: str = ECHO) -> int:
    stats = net.stats().requests.get("echo")
    return stats.streams_opened if stats is not None else 0


class Gate:
    """A handler that holds each request until the test opens its gate: `b"<key>"` waits for
    `open(key)`; records the order in which requests entered and left."""

    def __init__(self) -> None:
        self.gates: dict[bytes, trio.Event] = {}
        self.entered: list[bytes] = []
        self._changed = trio.Event()

    def gate(self, key: bytes) -> trio.Event:
        return self.gates.setdefault(key, trio.Event())

    async def __call__(self, requester: str, data: bytes) -> bytes:
        self.entered.append(data)
        self._changed.set()
        self._changed = trio.Event()
        await self.gate(data).wait()
        return b"done:" + data

    async def until_entered(self, n: int) -> None:
        with trio.fail_after(WAIT):
            while len(self.entered) < n:
                await self._changed.wait()


async def test_sequential_requests_share_one_stream() -> None:
    async with star(2) as (a, b):
        a.set_request_handler(ECHO, echo, max_request_bytes=1 << 20)
        for i in range(20):
            assert await b.request(a.local_id, ECHO, b"%d" % i, timeout=5.0) == b"echo:%d" % i
        assert streams_opened(b) == 1
        assert a._stream_server.open_streams[ECHO] == 1
        assert b.stats().requests["echo"].sent == 20
        assert a.stats().requests["echo"].served == 20


async def test_per_request_streams_without_persistent_streams() -> None:
    async with star(2, persistent_streams=False) as (a, b):
        a.set_request_handler(ECHO, echo, max_request_bytes=1024)
        for i in range(5):
            assert await b.request(a.local_id, ECHO, b"%d" % i, timeout=5.0) == b"echo:%d" % i
        assert streams_opened(b) == 5


async def test_many_concurrent_requests_on_one_stream() -> None:
    async with star(2, max_pending_per_stream=8) as (a, b):
        a.set_request_handler(ECHO, echo, max_request_bytes=1 << 20)
        results: dict[int, bytes] = {}

        async def call(i: int) -> None:
            body = bytes([i]) * (1000 * i)  # sizes differ: frames of every length interleave
            results[i] = await b.request(a.local_id, ECHO, body, timeout=10.0)

        async with trio.open_nursery() as nursery:
            for i in range(50):  # more than the 8 slots: the rest wait their turn
                nursery.start_soon(call, i)
        assert results == {i: b"echo:" + bytes([i]) * (1000 * i) for i in range(50)}
        assert streams_opened(b) == 1


async def test_responses_complete_out_of_order() -> None:
    async with star(2) as (a, b):
        gate = Gate()
        a.set_request_handler(ECHO, gate, max_request_bytes=1024)
        finished: list[bytes] = []
        done = {key: trio.Event() for key in (b"first", b"second", b"third")}

        async def call(key: bytes) -> None:
            finished.append(await b.request(a.local_id, ECHO, key, timeout=10.0))
            done[key].set()

        async with trio.open_nursery() as nursery:
            for key in done:
                nursery.start_soon(call, key)
            await gate.until_entered(3)  # all three in flight on the one stream at once
            for key in (b"third", b"first", b"second"):
                gate.gate(key).set()
                with trio.fail_after(WAIT):
                    await done[key].wait()
        assert finished == [b"done:third", b"done:first", b"done:second"]
        assert streams_opened(b) == 1


async def test_timed_out_request_does_not_disturb_the_others() -> None:
    async with star(2) as (a, b):
        gate = Gate()
        a.set_request_handler(ECHO, gate, max_request_bytes=1024)
        gate.gate(b"fast").set()
        async with trio.open_nursery() as nursery:

            async def slow() -> None:
                with pytest.raises(RequestTimeout):
                    await b.request(a.local_id, ECHO, b"slow", timeout=0.3)

            nursery.start_soon(slow)
            await gate.until_entered(1)
            for _ in range(5):
                assert await b.request(a.local_id, ECHO, b"fast", timeout=5.0) == b"done:fast"
        channel = b._pool.channels[(a.local_id, ECHO)]
        assert len(channel.abandoned) == 1
        gate.gate(b"slow").set()  # its late answer goes out before the next one's
        assert await b.request(a.local_id, ECHO, b"fast", timeout=5.0) == b"done:fast"
        assert channel.abandoned == {}  # read and dropped by its id
        assert streams_opened(b) == 1
        assert b.stats().requests["echo"].send_timed_out == 1
        assert a.score(b.local_id) == 0.0 and b.score(a.local_id) == 0.0


async def test_oversized_request_is_refused_and_penalised_stream_stays() -> None:
    async with star(2) as (a, b):
        a.set_request_handler(ECHO, echo, max_request_bytes=100)
        for size in (101, 1 << 20):  # within and beyond one yamux window
            with pytest.raises(RemoteError, match="exceeds the cap"):
                await b.request(a.local_id, ECHO, b"x" * size, timeout=5.0)
            assert await b.request(a.local_id, ECHO, b"ok", timeout=5.0) == b"echo:ok"
        assert a.score(b.local_id) == pytest.approx(-2.0, abs=1e-3)
        assert streams_opened(b) == 1
        assert a.stats().requests["echo"].failed == 2


async def test_oversized_response_is_refused_by_the_server_stream_stays() -> None:
    async with star(2) as (a, b):
        a.set_request_handler(ECHO, echo, max_request_bytes=1 << 20)
        with pytest.raises(ResponseTooLarge, match="exceeds the requester's cap of 100"):
            await b.request(a.local_id, ECHO, b"x" * 1000, timeout=5.0, max_response_bytes=100)
        assert await b.request(a.local_id, ECHO, b"x", timeout=5.0, max_response_bytes=100)
        assert streams_opened(b) == 1
        assert a.score(b.local_id) == 0.0 and b.score(a.local_id) == 0.0


async def outstanding_requests_failing(
    b: Libp2pNetwork, a: Libp2pNetwork, gate: Gate, cut: object, n: int = 4
) -> list[Exception]:
    """`n` requests from b held by a's gate, then `cut()`: what each request raised."""
    errors: list[Exception] = []

    async def call(i: int) -> None:
        try:
            await b.request(a.local_id, ECHO, b"%d" % i, timeout=10.0)
        except (PeerUnreachable, RemoteError) as err:
            errors.append(err)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(call, i)
        await gate.until_entered(n)
        nursery.start_soon(cut)  # type: ignore[arg-type]
    return errors


async def test_connection_lost_fails_every_outstanding_request_then_reconnects() -> None:
    async with star(2) as (a, b):
        gate = Gate()
        a.set_request_handler(ECHO, gate, max_request_bytes=1024)
        errors = await outstanding_requests_failing(b, a, gate, lambda: a.disconnect(b.local_id))
        assert len(errors) == 4
        assert all(isinstance(err, PeerUnreachable) for err in errors), errors
        assert b._pool.channels == {}
        gate.gate(b"again").set()
        # the next request dials again (a is still up) on a new stream
        assert await b.request(a.local_id, ECHO, b"again", timeout=5.0) == b"done:again"
        assert streams_opened(b) == 2


async def test_peer_stopping_mid_request_fails_every_outstanding_request() -> None:
    async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(2))) as b:
        gate = Gate()
        stop = trio.Event()
        async with trio.open_nursery() as nursery:

            async def run_a(task_status: trio.TaskStatus[Libp2pNetwork]) -> None:
                async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(1))) as a:
                    a.set_request_handler(ECHO, gate, max_request_bytes=1024)
                    task_status.started(a)
                    await stop.wait()

            a = await nursery.start(run_a)
            await b.connect(a.listen_addrs()[0])
            async def stop_a() -> None:
                stop.set()

            errors = await outstanding_requests_failing(b, a, gate, stop_a)
        assert len(errors) == 4
        assert all(isinstance(err, PeerUnreachable) for err in errors), errors
        with pytest.raises(PeerUnreachable):
            await b.request(a.local_id, ECHO, b"x", timeout=2.0)


async def test_fallback_to_a_peer_without_persistent_streams() -> None:
    async with AsyncExitStack() as stack:
        old = await stack.enter_async_context(
            Libp2pNetwork.open(Libp2pConfig.for_tests(seed(1), persistent_streams=False))
        )
        new = await stack.enter_async_context(
            Libp2pNetwork.open(Libp2pConfig.for_tests(seed(2), (old.listen_addrs()[0],)))
        )
        await Watch(old).connected_to(new.local_id)
        old.set_request_handler(ECHO, echo, max_request_bytes=1024)
        new.set_request_handler(ECHO, echo, max_request_bytes=1024)
        for i in range(3):  # new asks old: per-request streams after one refused negotiation
            assert await new.request(old.local_id, ECHO, b"%d" % i, timeout=5.0) == b"echo:%d" % i
        assert (old.local_id, ECHO) in new._pool.unsupported
        assert streams_opened(new) == 3
        for i in range(3):  # old asks new: served on the per-request protocol as before
            assert await old.request(new.local_id, ECHO, b"%d" % i, timeout=5.0) == b"echo:%d" % i
        assert streams_opened(old) == 3
        assert new._stream_server.open_streams.get(ECHO, 0) == 0


async def test_unsupported_protocol_over_persistent_streams_is_remote_error() -> None:
    async with star(2) as (a, b):
        with pytest.raises(RemoteError, match="unsupported protocol"):
            await b.request(a.local_id, ECHO, b"x", timeout=5.0)


async def test_idle_stream_is_closed_and_replaced() -> None:
    async with star(2, stream_idle_s=0.3) as (a, b):
        a.set_request_handler(ECHO, echo, max_request_bytes=1024)
        assert await b.request(a.local_id, ECHO, b"1", timeout=5.0) == b"echo:1"
        channel = b._pool.channels[(a.local_id, ECHO)]
        with trio.fail_after(WAIT):
            await channel.ended.wait()
        assert (a.local_id, ECHO) not in b._pool.channels
        assert await b.request(a.local_id, ECHO, b"2", timeout=5.0) == b"echo:2"
        assert streams_opened(b) == 2


async def test_invalid_duplicate_request_id_resets_and_penalises() -> None:
    async with star(2) as (a, b):
        gate = Gate()
        a.set_request_handler(ECHO, gate, max_request_bytes=1024)
        stream = await b._host.new_stream(
            ID.from_base58(a.local_id), [TProtocol(compute_stream_protocol(ECHO))]
        )
        await stream.write(encode_request(7, 1024, b"x") + encode_request(7, 1024, b"y"))
        with trio.fail_after(WAIT):
            with pytest.raises(Exception):  # reset by the server  # noqa: B017
                while await stream.read(1024):
                    pass
        assert a.score(b.local_id) == pytest.approx(-1.0, abs=1e-3)
        gate.gate(b"z").set()  # a fresh stream is served
        assert await b.request(a.local_id, ECHO, b"z", timeout=5.0) == b"done:z"


async def test_invalid_response_to_no_request_resets_and_penalises() -> None:
    async with star(2) as (a, b):
        rogue_protocol = compute_stream_protocol(ECHO)

        async def rogue(stream: object) -> None:  # answers every request with a stranger id
            header = await read_exactly(stream, REQUEST_HEADER.size)  # type: ignore[arg-type]
            _, _, size = REQUEST_HEADER.unpack(header)
            await read_exactly(stream, size)  # type: ignore[arg-type]
            await stream.write(encode_response(999, STATUS_OK, b"?"))  # type: ignore[attr-defined]
            await trio.sleep_forever()

        a._host.set_stream_handler(TProtocol(rogue_protocol), rogue)
        with pytest.raises(RemoteError, match="not in flight"):
            await b.request(a.local_id, ECHO, b"x", timeout=5.0)
        assert b.score(a.local_id) == pytest.approx(-1.0, abs=1e-3)
        assert RESPONSE_HEADER.size == 9


async def test_banned_peer_gets_no_request_over_its_open_stream() -> None:
    async with star(2) as (a, b):
        a.set_request_handler(ECHO, echo, max_request_bytes=1024)
        assert await b.request(a.local_id, ECHO, b"1", timeout=5.0) == b"echo:1"
        b.penalize(a.local_id, "test", weight=100.0)
        with pytest.raises(PeerUnreachable, match="banned"):
            await b.request(a.local_id, ECHO, b"2", timeout=5.0)
        assert a.stats().requests["echo"].served == 1


def test_config_rejects_bad_stream_settings() -> None:
    from chain.errors import ConfigError

    for bad in ({"max_pending_per_stream": 0}, {"stream_idle_s": 0.0}, {"stream_idle_s": float("inf")}):
        with pytest.raises(ConfigError):
            Libp2pConfig.for_tests(seed(1), **bad)


async def open_raw(b: Libp2pNetwork, a: Libp2pNetwork, protocol: str = ECHO) -> INetStream:
    """A persistent stream from b to a, spoken by the test itself."""
    with trio.fail_after(WAIT):
        return await b._host.new_stream(
            ID.from_base58(a.local_id), [TProtocol(compute_stream_protocol(protocol))]
        )


async def ask_raw(stream: INetStream, request_id: int, body: bytes) -> tuple[int, int, bytes]:
    """One request on a raw stream: the (id, status, body) of the next response frame."""
    with trio.fail_after(WAIT):
        await stream.write(encode_request(request_id, 1024, body))
        return await read_frame(stream)


async def read_frame(stream: INetStream) -> tuple[int, int, bytes]:
    with trio.fail_after(WAIT):
        request_id, status, size = RESPONSE_HEADER.unpack(
            await read_exactly(stream, RESPONSE_HEADER.size)
        )
        return request_id, status, await read_exactly(stream, size)


async def assert_refused(stream: INetStream, reason: str) -> None:
    """The server's refusal frame (before any request is read), then the stream's end."""
    request_id, status, body = await ask_raw(stream, 5, b"refused?")
    assert (request_id, status) == (REFUSAL_ID, STATUS_ERROR), body
    assert reason in body.decode()
    with trio.fail_after(WAIT), pytest.raises(FrameError):
        await read_exactly(stream, 1)


async def test_streams_per_peer_are_capped_across_protocols() -> None:
    protocols = [ECHO, protocol_name("testnet", "echo2"), protocol_name("testnet", "echo3")]
    async with star(2) as (a, b):
        for protocol in protocols:
            a.set_request_handler(protocol, echo, max_request_bytes=1024)
        cap = a._stream_server.get_peer_stream_cap()  # peer exchange is served too
        assert cap == len(a._server.entries) + SPARE_STREAMS_PER_PEER == len(protocols) + 3
        held = []  # held open: the cap counts open streams
        layout = [ECHO, ECHO, protocols[1], protocols[1], protocols[2], protocols[2]]
        while a._stream_server.per_peer.get(b.local_id, 0) < cap:  # b's own pex stream counts
            held.append(await open_raw(b, a, layout[len(held)]))
            assert await ask_raw(held[-1], 1, b"%d" % len(held)) == (1, STATUS_OK, b"echo:%d" % len(held))
        assert len(held) >= 5
        for protocol in (protocols[2], ECHO):
            await assert_refused(await open_raw(b, a, protocol), "too many persistent streams")
        assert a._stream_server.per_peer[b.local_id] == cap
        assert a.score(b.local_id) == 0.0  # refusing is no penalty: its streams may be honest
        await held.pop().reset()
        with trio.fail_after(WAIT):  # bounded: until the reset stream is torn down there
            while a._stream_server.per_peer[b.local_id] == cap:
                await trio.lowlevel.checkpoint()
        stream = await open_raw(b, a, protocols[2])
        assert await ask_raw(stream, 1, b"again") == (1, STATUS_OK, b"echo:again")


async def test_stream_limit_of_all_peers_is_max_peers_at_their_cap() -> None:
    async with star(3, max_peers=2, target_peers=2) as (a, b, c):
        a.set_request_handler(ECHO, echo, max_request_bytes=1024)
        cap = a._stream_server.get_stream_cap()
        assert cap == 2 * a._stream_server.get_peer_stream_cap() == 2 * (2 + SPARE_STREAMS_PER_PEER)
        held = []
        for net in (b, c):  # each up to its own cap (its pex stream included)
            while a._stream_server.per_peer.get(net.local_id, 0) < cap // 2:
                held.append(await open_raw(net, a))
                assert await ask_raw(held[-1], 9, b"x") == (9, STATUS_OK, b"echo:x")
        await assert_refused(await open_raw(c, a), f"server full: {cap} persistent streams open")
        assert sum(a._stream_server.open_streams.values()) == cap


async def test_refused_stream_falls_back_to_per_request_streams() -> None:
    async with star(2) as (a, b):
        gate = Gate()
        a.set_request_handler(ECHO, gate, max_request_bytes=1024)
        gate.gate(b"x").set()
        held = []
        while a._stream_server.per_peer.get(b.local_id, 0) < a._stream_server.get_peer_stream_cap():
            held.append(await open_raw(b, a))
            assert await ask_raw(held[-1], 1, b"x") == (1, STATUS_OK, b"done:x")
        before = trio.current_time()
        assert await b.request(a.local_id, ECHO, b"x", timeout=5.0) == b"done:x"
        # one persistent stream opened and refused (its request never handled), one per request
        assert streams_opened(b) == 2
        assert gate.entered.count(b"x") == len(held) + 1
        until = b._pool.unsupported[(a.local_id, ECHO)]
        assert before + REFUSED_RETRY_S <= until <= trio.current_time() + REFUSED_RETRY_S
        assert await b.request(a.local_id, ECHO, b"x", timeout=5.0) == b"done:x"
        assert streams_opened(b) == 3  # straight to a per-request stream meanwhile
        assert a.score(b.local_id) == 0.0 and b.score(a.local_id) == 0.0
        assert b.stats().requests["echo"].send_failed == 0


async def test_late_answers_keep_their_slot_and_fail_no_other_request() -> None:
    async with star(2, max_pending_per_stream=2) as (a, b):
        gate = Gate()
        a.set_request_handler(ECHO, gate, max_request_bytes=1024)
        async with trio.open_nursery() as nursery:

            async def keep() -> None:
                assert await b.request(a.local_id, ECHO, b"keep", timeout=WAIT) == b"done:keep"

            nursery.start_soon(keep)
            await gate.until_entered(1)
            for i in range(4):  # more abandoned than the slots: back-pressure, not failures
                with pytest.raises(RequestTimeout):
                    await b.request(a.local_id, ECHO, b"slow%d" % i, timeout=0.3)
            channel = b._pool.channels[(a.local_id, ECHO)]
            assert not channel.closed and list(channel.abandoned) == [2]
            assert gate.entered == [b"keep", b"slow0"]  # the others waited for a slot: unsent
            gate.gate(b"slow0").set()  # its late answer frees its slot
            gate.gate(b"fast").set()
            assert await b.request(a.local_id, ECHO, b"fast", timeout=WAIT) == b"done:fast"
            assert channel.abandoned == {}
            gate.gate(b"keep").set()
        assert streams_opened(b) == 1
        assert b.stats().requests["echo"].send_failed == 0


async def test_abandoned_id_does_not_leak_when_cancelled_as_it_gets_a_slot() -> None:
    async with star(2, max_pending_per_stream=1) as (a, b):
        a.set_request_handler(ECHO, echo, max_request_bytes=1024)
        assert await b.request(a.local_id, ECHO, b"1", timeout=5.0) == b"echo:1"
        channel = b._pool.channels[(a.local_id, ECHO)]
        await channel._slots.acquire()  # the test holds the only slot
        scope = trio.CancelScope()

        async def caller() -> None:
            with scope:
                await channel.request(b"2", 1024)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            for _ in range(1000):  # bounded: until the caller waits for the slot
                if channel._slots.statistics().tasks_waiting:
                    break
                await trio.lowlevel.checkpoint()
            assert channel._slots.statistics().tasks_waiting == 1
            channel._slots.release()  # the caller gets the slot ...
            scope.cancel()  # ... and its deadline fires before it runs again
        assert scope.cancelled_caught
        with trio.fail_after(WAIT):
            assert await channel.request(b"3", 1024) == b"echo:3"
        assert channel.abandoned == {} and channel.pending == {}
        assert channel._slots.value == 1


async def serve_rogue(a: Libp2pNetwork, rogue: Callable[[INetStream], Awaitable[None]]) -> None:
    a._host.set_stream_handler(TProtocol(compute_stream_protocol(ECHO)), rogue)  # type: ignore[arg-type]


async def test_trickled_response_body_closes_the_stream_within_request_timeout() -> None:
    async with star(2, request_timeout=0.5) as (a, b):

        async def rogue(stream: INetStream) -> None:  # 2 of 100 promised bytes, then nothing
            request_id, _, size = REQUEST_HEADER.unpack(await read_exactly(stream, REQUEST_HEADER.size))
            await read_exactly(stream, size)
            await stream.write(RESPONSE_HEADER.pack(request_id, STATUS_OK, 100) + b"ab")
            await trio.sleep_forever()

        await serve_rogue(a, rogue)
        with pytest.raises(RemoteError, match="response body of 100 bytes not received within 0.5s"):
            await b.request(a.local_id, ECHO, b"x", timeout=8.0)
        assert all(ch.closed for key, ch in b._pool.channels.items() if key == (a.local_id, ECHO))


async def test_stalled_request_write_closes_the_stream_within_request_timeout() -> None:
    async with star(2, request_timeout=0.5) as (a, b):

        async def rogue(stream: INetStream) -> None:  # never reads: flow control stalls b
            await trio.sleep_forever()

        await serve_rogue(a, rogue)
        with pytest.raises(RemoteError, match="not written within 0.5s"):
            await b.request(a.local_id, ECHO, b"x" * (4 << 20), timeout=8.0)
        assert all(ch.closed for key, ch in b._pool.channels.items() if key == (a.local_id, ECHO))


async def test_abandoned_request_never_answered_closes_the_stream() -> None:
    async with star(2, max_pending_per_stream=1) as (a, b):

        async def rogue(stream: INetStream) -> None:  # reads every request, answers none
            while await stream.read(1024):
                pass
            await trio.sleep_forever()

        await serve_rogue(a, rogue)
        b._pool.max_answer_wait_s = 0.5
        with pytest.raises(RequestTimeout):
            await b.request(a.local_id, ECHO, b"x", timeout=0.2)
        channel = b._pool.channels[(a.local_id, ECHO)]
        assert list(channel.abandoned) == [1]  # holding the only slot
        with trio.fail_after(WAIT):
            await channel.ended.wait()
        assert channel._why == "1 abandoned requests unanswered for 0.5s"
        assert channel._slots.value == 1 and channel.abandoned == {}


async def test_unsupported_persistent_stream_is_tried_again_after_its_time() -> None:
    async with star(2) as (a, b):
        key = (a.local_id, ECHO)
        b._pool.unsupported_retry_s = 0.5
        with pytest.raises(RemoteError, match="unsupported protocol"):  # asked before a serves it
            await b.request(a.local_id, ECHO, b"x", timeout=5.0)
        a.set_request_handler(ECHO, echo, max_request_bytes=1024)
        assert await b.request(a.local_id, ECHO, b"1", timeout=5.0) == b"echo:1"
        assert key not in b._pool.channels  # meanwhile: per-request streams
        with trio.fail_after(WAIT):
            await trio.sleep_until(b._pool.unsupported[key])  # the condition is the time itself
        assert await b.request(a.local_id, ECHO, b"2", timeout=5.0) == b"echo:2"
        assert key in b._pool.channels and key not in b._pool.unsupported


async def test_overloaded_server_answers_on_the_persistent_stream() -> None:
    async with star(2, max_streams_inbound=1) as (a, b):
        gate = Gate()
        a.set_request_handler(ECHO, gate, max_request_bytes=1024)
        async with trio.open_nursery() as nursery:

            async def hold() -> None:
                assert await b.request(a.local_id, ECHO, b"hold", timeout=WAIT) == b"done:hold"

            nursery.start_soon(hold)
            await gate.until_entered(1)
            with pytest.raises(RemoteError, match="overloaded"):
                await b.request(a.local_id, ECHO, b"more", timeout=5.0)
            gate.gate(b"hold").set()
        assert gate.entered == [b"hold"]
        assert streams_opened(b) == 1  # the same stream carried both
        assert a.stats().requests["echo"].failed == 1
        assert a.score(b.local_id) == 0.0


async def test_banned_peer_frame_on_an_open_stream_is_not_served() -> None:
    async with star(2) as (a, b):
        a.set_request_handler(ECHO, echo, max_request_bytes=1024)
        stream = await open_raw(b, a)
        assert await ask_raw(stream, 1, b"1") == (1, STATUS_OK, b"echo:1")
        a._scores.penalize(b.local_id, 100.0, trio.current_time())  # banned, still connected
        assert a.is_banned(b.local_id) and b.local_id in a.peers()
        await stream.write(encode_request(2, 1024, b"2"))
        with trio.fail_after(WAIT), pytest.raises(FrameError):
            await read_exactly(stream, RESPONSE_HEADER.size)  # reset, never answered
        assert a.stats().requests["echo"].served == 1
