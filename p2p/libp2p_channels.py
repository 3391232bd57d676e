"""The requester's side of persistent request streams (format in `p2p.libp2p_streams`): one
`RequestChannel` per (peer, protocol), kept by a `ChannelPool`.

A channel has one writer task (frames are written whole, in the order requests were made; a
request whose caller gave up before its frame went out is not sent), one reader task (responses
matched by id, in any order) and an idle watch. A caller waits for its response under its own
deadline; if it gives up, the id is remembered as abandoned and its late response is read and
dropped, so the other requests on the stream are not disturbed. When the stream breaks, every
request in flight fails at once: `PeerUnreachable` if the connection is gone, else
`RemoteError`; the channel leaves the pool and the next request opens a new stream. A stream
the server refuses (its refusal frame, id 0) fails its requests with `StreamRefused`: the pool
asks them again over per-request streams, and does so for that (peer, protocol) for
`REFUSED_RETRY_S`.

Bounds: `max_pending` ids per channel, in flight or abandoned: an abandoned id keeps its slot
until its late answer arrives (a slow server gets back-pressure: new requests wait for a slot
within their deadline, none fails); one unanswered for `MAX_ANSWER_WAIT_S` closes the channel.
Each frame written and each response body read within `timeout` (else the channel closes);
responses no larger than each request's cap (the server is told the cap; a bigger frame is a
violation).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID

from p2p.libp2p_guard import reset_quietly
from p2p.libp2p_reqresp import FrameError, UnsupportedProtocol, read_exactly
from p2p.libp2p_streams import (
    MAX_REASON_BYTES,
    MAX_REQUEST_ID,
    REFUSAL_ID,
    RESPONSE_HEADER,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_TOO_LARGE,
    ProtocolViolation,
    compute_stream_protocol,
    encode_request,
)
from p2p.network import PeerId, PeerUnreachable, RemoteError, RequestFailed, ResponseTooLarge

logger = logging.getLogger(__name__)

OpenStream = Callable[[ID, PeerId, str, str], Awaitable[INetStream]]
"""`open_stream(peer_id, peer, protocol, protocol_id)`: a stream negotiated on `protocol_id`;
raises `UnsupportedProtocol` or another `RequestFailed`."""

MAX_UNSUPPORTED = 4096
"""(peer, protocol) pairs remembered as not speaking persistent streams (forgotten when the
peer disconnects or their time is up; all of them if there are ever more)."""
UNSUPPORTED_RETRY_S = 60.0
"""How long a peer whose negotiation of a persistent stream failed is asked over per-request
streams before it is tried again (it may have registered the protocol since)."""
REFUSED_RETRY_S = 10.0
"""How long a peer that refused a persistent stream (it serves as many as it may) is asked
over per-request streams before it is tried again."""
MAX_ANSWER_WAIT_S = 300.0
"""Longest an abandoned request may stay unanswered before its channel closes (a server
answers or times out each request within its handler timeout; one that does not is broken).
Above every protocol's handler limit (`timeout_s` of `set_request_handler`: the longest,
a whole delegated generation, is about 135 s), so a slow honest answer never closes it."""


def compute_free_id(start: int, is_taken: Callable[[int], bool]) -> int:
    """The first id from `start` (1..MAX_REQUEST_ID, wrapping; 0 is the refusal's) that is not
    taken. A channel holds at most max_pending ids, far fewer than 2^32: the loop ends."""
    request_id = start
    while is_taken(request_id):
        request_id = request_id % MAX_REQUEST_ID + 1
    return request_id


class ChannelClosed(Exception):
    """The channel closed before this request was registered: use a new one (internal)."""


class StreamRefused(RemoteError):
    """The server refused the persistent stream before handling any of its requests: ask
    over a per-request stream (internal to this package)."""


class _Refusal(FrameError):
    """The server's refusal frame arrived (internal)."""


@dataclass(slots=True)
class _Pending:
    """One request in flight."""

    max_response_bytes: int
    done: trio.Event = field(default_factory=trio.Event)
    response: bytes | None = None
    error: RequestFailed | None = None


class RequestChannel:
    """One persistent stream to one peer for one protocol."""

    def __init__(
        self, stream: INetStream, peer: PeerId, protocol: str, *, max_pending: int, idle_s: float,
        timeout: float, is_connected: Callable[[], bool],
        on_violation: Callable[[PeerId, str], None], max_answer_wait_s: float = MAX_ANSWER_WAIT_S,
    ) -> None:
        self.stream = stream
        self.peer = peer
        self.protocol = protocol
        self.max_pending = max_pending
        self.idle_s = idle_s
        self.timeout = timeout
        """Most seconds to write one frame or to read one response body."""
        self.max_answer_wait_s = max_answer_wait_s
        self._is_connected = is_connected
        self._on_violation = on_violation
        self.pending: dict[int, _Pending] = {}
        self.abandoned: dict[int, tuple[int, float]] = {}
        """Ids whose caller gave up -> (response cap, when); each holds its slot until its late
        response is read and dropped, its frame is dropped unsent, or the channel ends."""
        self.answered = 0
        """Responses read (a refusal after one is a violation)."""
        self.refused = False
        self.closed = False
        self.last_used = trio.current_time()
        self._next_id = 1
        self._slots = trio.Semaphore(max_pending)
        self._frames, self._queued = trio.open_memory_channel[tuple[int, int, bytes]](max_pending)
        self._scope = trio.CancelScope()
        self._why = "closed"
        self._abandoned_changed = trio.Event()
        self.ended = trio.Event()
        """Set once the channel's tasks are done and its stream reset."""

    # --- the caller's side ----------------------------------------------------------------------

    async def request(self, data: bytes, max_response_bytes: int) -> bytes:
        """Send one request and wait for its response (under the caller's deadline).

        Raises `ChannelClosed` before sending, `StreamRefused` if the server refused the
        stream, else the `RequestFailed` family."""
        await self._slots.acquire()
        if self.closed:
            self._slots.release()
            raise ChannelClosed
        request_id = self._take_id()
        pending = self.pending[request_id] = _Pending(max_response_bytes)
        self.last_used = trio.current_time()
        try:  # no checkpoint between registering the id and queueing its frame
            self._frames.send_nowait((request_id, max_response_bytes, data))
        except trio.BrokenResourceError:  # cannot happen while not closed; never hang on it
            del self.pending[request_id]
            self._slots.release()
            raise ChannelClosed from None
        try:
            await pending.done.wait()
        finally:
            self.last_used = trio.current_time()
            if self.pending.pop(request_id, None) is not None:  # the caller gave up
                self._abandon(request_id, max_response_bytes)
            else:
                self._slots.release()
        if pending.error is not None:
            raise pending.error
        assert pending.response is not None  # done is set with a response or an error
        return pending.response

    def _take_id(self) -> int:
        request_id = compute_free_id(self._next_id, lambda i: i in self.pending or i in self.abandoned)
        self._next_id = request_id % MAX_REQUEST_ID + 1
        return request_id

    def _abandon(self, request_id: int, cap: int) -> None:
        """The id keeps its slot until its answer comes (or the channel ends)."""
        if self.closed:
            self._slots.release()
            return
        self.abandoned[request_id] = (cap, trio.current_time())
        self._abandoned_changed.set()

    def _forget_abandoned(self, request_id: int) -> None:
        if self.abandoned.pop(request_id, None) is not None:
            self._slots.release()

    def close(self, why: str) -> None:
        """Stop the channel: requests in flight fail, the stream is reset."""
        if not self.closed:
            self._why = why
        self.closed = True
        self._scope.cancel()

    # --- the channel's tasks --------------------------------------------------------------------

    async def run(self) -> None:
        """Run until the stream breaks, idles out or `close` is called (a task of the pool)."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_frames)
                    nursery.start_soon(self._watch_idle)
                    await self._read_responses()
        except Exception:
            logger.exception("persistent %s stream to %s failed", self.protocol, self.peer)
            self._why = "internal error"
        finally:
            self.closed = True
            self._queued.close()
            self._fail_all()
            for _ in range(len(self.abandoned)):
                self._slots.release()
            self.abandoned.clear()
            await reset_quietly(self.stream)
            self.ended.set()

    async def _read_responses(self) -> None:
        try:
            while True:
                await self._read_one()
        except ProtocolViolation as err:
            logger.info("persistent %s stream to %s: %s", self.protocol, self.peer, err)
            self._on_violation(self.peer, f"bad stream frame on {self.protocol}: {err}")
            self._why = f"bad response frame: {err}"
        except _Refusal as err:
            logger.debug("persistent %s stream refused by %s: %s", self.protocol, self.peer, err)
            self.refused = True
            self._why = f"persistent stream refused: {err}"
        except FrameError as err:
            self._why = f"stream broke off: {err}"
        self.close(self._why)

    async def _read_one(self) -> None:
        header = await read_exactly(self.stream, RESPONSE_HEADER.size)
        request_id, status, size = RESPONSE_HEADER.unpack(header)
        if request_id == REFUSAL_ID and status == STATUS_ERROR and not self.answered:
            if size > MAX_REASON_BYTES:
                raise ProtocolViolation(f"refusal reason of {size} bytes")
            raise _Refusal((await self._read_body(size)).decode("utf-8", "replace"))
        pending = self.pending.get(request_id)
        abandoned = self.abandoned.get(request_id)
        cap = pending.max_response_bytes if pending else abandoned[0] if abandoned else None
        if cap is None:
            raise ProtocolViolation(f"response to request {request_id}, which is not in flight")
        if status == STATUS_OK and size > cap:
            raise ProtocolViolation(f"response of {size} bytes > the request's cap {cap}")
        if status in (STATUS_ERROR, STATUS_TOO_LARGE) and size > MAX_REASON_BYTES:
            raise ProtocolViolation(f"error reason of {size} bytes")
        if status not in (STATUS_OK, STATUS_ERROR, STATUS_TOO_LARGE):
            raise ProtocolViolation(f"unknown response status {status}")
        body = await self._read_body(size)
        self.answered += 1
        pending = self.pending.pop(request_id, None)
        if pending is None:
            self._forget_abandoned(request_id)  # a late response: dropped
            return
        if status == STATUS_OK:
            pending.response = body
        else:
            reason = body.decode("utf-8", "replace")
            kind = ResponseTooLarge if status == STATUS_TOO_LARGE else RemoteError
            pending.error = kind(self.peer, self.protocol, reason)
        pending.done.set()

    async def _read_body(self, size: int) -> bytes:
        """A response body within `timeout` (a peer that trickles it loses the stream)."""
        with trio.move_on_after(self.timeout):
            return await read_exactly(self.stream, size)
        raise FrameError(f"response body of {size} bytes not received within {self.timeout:g}s")

    async def _write_frames(self) -> None:
        """The one writer. A frame whose caller already gave up is not sent (and so will get
        no response). A write that fails or takes over `timeout` ends the channel."""
        async for request_id, cap, data in self._queued:
            if request_id not in self.pending:
                self._forget_abandoned(request_id)
                continue
            with trio.move_on_after(self.timeout):
                try:
                    await self.stream.write(encode_request(request_id, cap, data))
                except StreamError as err:
                    self.close(f"stream broke off: {err!r}")
                    return
                continue
            self.close(f"request of {len(data)} bytes not written within {self.timeout:g}s")
            return

    async def _watch_idle(self) -> None:
        """Close the channel once idle for `idle_s`, or once an abandoned id has waited
        `max_answer_wait_s` for its answer."""
        while True:
            with trio.move_on_at(self._next_watch()):
                await self._abandoned_changed.wait()
            self._abandoned_changed = trio.Event()
            now = trio.current_time()
            overdue = [i for i, (_, at) in self.abandoned.items() if now >= at + self.max_answer_wait_s]
            if overdue:
                self.close(f"{len(overdue)} abandoned requests unanswered for {self.max_answer_wait_s:g}s")
                return
            idle = now >= self.last_used + self.idle_s
            if idle and not self.pending and not self.abandoned:
                logger.debug("persistent %s stream to %s idle: closing", self.protocol, self.peer)
                self.close("idle")
                return
            if idle:
                self.last_used = now

    def _next_watch(self) -> float:
        oldest = min((at for _, at in self.abandoned.values()), default=float("inf"))
        return min(self.last_used + self.idle_s, oldest + self.max_answer_wait_s)

    def _fail_all(self) -> None:
        """Every request in flight fails with the typed error of how the stream ended."""
        if not self.pending:
            return
        connected = self._is_connected()
        for pending in self.pending.values():  # one error each: each is raised in its own task
            if self.refused:
                pending.error = StreamRefused(self.peer, self.protocol, self._why)
            elif connected:
                pending.error = RemoteError(self.peer, self.protocol, self._why)
            else:
                pending.error = PeerUnreachable(self.peer, self.protocol, "connection lost")
            pending.done.set()
        self.pending.clear()


class ChannelPool:
    """The persistent streams of one network, one per (peer, protocol), opened on first use;
    and which peers do not speak them (asked over per-request streams instead)."""

    def __init__(
        self, *, open_stream: OpenStream, is_connected: Callable[[ID], bool],
        on_violation: Callable[[PeerId, str], None], on_opened: Callable[[str], None],
        max_pending: int, idle_s: float, timeout: float,
    ) -> None:
        self.channels: dict[tuple[PeerId, str], RequestChannel] = {}
        self.unsupported: dict[tuple[PeerId, str], float] = {}
        """(peer, protocol) asked over per-request streams -> until when."""
        self.unsupported_retry_s = UNSUPPORTED_RETRY_S
        self.refused_retry_s = REFUSED_RETRY_S
        self.max_answer_wait_s = MAX_ANSWER_WAIT_S
        self.nursery: trio.Nursery | None = None
        self._open_stream = open_stream
        self._is_connected = is_connected
        self._on_violation = on_violation
        self._on_opened = on_opened
        self._max_pending = max_pending
        self._idle_s = idle_s
        self._timeout = timeout
        self._opening: dict[tuple[PeerId, str], trio.Lock] = {}

    async def request(
        self, peer_id: ID, peer: PeerId, protocol: str, data: bytes, max_response_bytes: int
    ) -> bytes | None:
        """The response over the persistent stream; None if the peer does not speak it or
        refused the stream (then none of the request was handled: ask per request)."""
        for _ in range(2):  # a channel that closed under us is replaced once
            channel = await self._get(peer_id, peer, protocol)
            if channel is None:
                return None
            try:
                return await channel.request(data, max_response_bytes)
            except ChannelClosed:
                continue
            except StreamRefused as err:
                logger.info("%s: per-request streams for %gs (%s)", peer, self.refused_retry_s, err)
                self._mark_unsupported((peer, protocol), self.refused_retry_s)
                return None
        raise RemoteError(peer, protocol, "persistent stream closed while opening")

    async def _get(self, peer_id: ID, peer: PeerId, protocol: str) -> RequestChannel | None:
        key = (peer, protocol)
        channel = self.channels.get(key)
        if channel is not None and not channel.closed:
            return channel
        lock = self._opening.setdefault(key, trio.Lock())
        try:
            async with lock:  # concurrent first requests share one stream
                return await self._open(peer_id, key)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._opening.pop(key, None)

    async def _open(self, peer_id: ID, key: tuple[PeerId, str]) -> RequestChannel | None:
        peer, protocol = key
        channel = self.channels.get(key)
        if channel is not None and not channel.closed:
            return channel
        if self._is_unsupported(key) or self.nursery is None:
            return None
        try:
            stream = await self._open_stream(peer_id, peer, protocol, compute_stream_protocol(protocol))
        except UnsupportedProtocol:
            self._mark_unsupported(key, self.unsupported_retry_s)
            logger.debug("%s does not speak persistent %s streams", peer, protocol)
            return None
        self._on_opened(protocol)
        if self.nursery is None:  # the network stopped while the stream was negotiated
            await reset_quietly(stream)
            raise PeerUnreachable(peer, protocol, "this node is down")
        channel = RequestChannel(
            stream, peer, protocol, max_pending=self._max_pending, idle_s=self._idle_s,
            timeout=self._timeout, is_connected=lambda: self._is_connected(peer_id), on_violation=self._on_violation,
            max_answer_wait_s=self.max_answer_wait_s,
        )
        self.channels[key] = channel
        self.nursery.start_soon(self._run, key, channel)
        return channel

    def _is_unsupported(self, key: tuple[PeerId, str]) -> bool:
        until = self.unsupported.get(key)
        if until is not None and trio.current_time() >= until:
            del self.unsupported[key]
            return False
        return until is not None

    def _mark_unsupported(self, key: tuple[PeerId, str], for_s: float) -> None:
        if len(self.unsupported) >= MAX_UNSUPPORTED:
            self.unsupported.clear()
        self.unsupported[key] = trio.current_time() + for_s

    async def _run(self, key: tuple[PeerId, str], channel: RequestChannel) -> None:
        try:
            await channel.run()
        finally:
            if self.channels.get(key) is channel:
                del self.channels[key]

    def forget_peer(self, peer: PeerId) -> None:
        """The peer disconnected: close its channels, forget what it spoke."""
        for key, channel in list(self.channels.items()):
            if key[0] == peer:
                channel.close("connection lost")
        self.unsupported = {key: t for key, t in self.unsupported.items() if key[0] != peer}

    def close_all(self) -> None:
        for channel in list(self.channels.values()):
            channel.close("this node is stopping")
        self.nursery = None
