"""The requester's side of persistent request streams (format in `p2p.libp2p_streams`): one
`RequestChannel` per (peer, protocol), kept by a `ChannelPool`.

A channel has one writer task (frames are written whole, in the order requests were made; a
request whose caller gave up before its frame went out is not sent), one reader task (responses
matched by id, in any order) and an idle watch. A caller waits for its response under its own
deadline; if it gives up, the id is remembered as abandoned and its late response is read and
dropped, so the other requests on the stream are not disturbed. When the stream breaks, every
request in flight fails at once: `PeerUnreachable` if the connection is gone, else
`RemoteError`; the channel leaves the pool and the next request opens a new stream.

Bounds: `max_pending` requests in flight per channel (more wait for a slot within their
deadline), as many abandoned ids (a peer that leaves more unanswered loses the stream), responses
no larger than each request's cap (the server is told the cap; a bigger frame is a violation).
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
peer disconnects; all of them if there are ever more)."""


def compute_free_id(start: int, is_taken: Callable[[int], bool]) -> int:
    """The first id from `start` (1..MAX_REQUEST_ID, wrapping) that is not taken. A channel
    holds at most 2 x max_pending ids, far fewer than 2^32: the loop ends."""
    request_id = start
    while is_taken(request_id):
        request_id = request_id % MAX_REQUEST_ID + 1
    return request_id


class ChannelClosed(Exception):
    """The channel closed before this request was registered: use a new one (internal)."""


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
        is_connected: Callable[[], bool], on_violation: Callable[[PeerId, str], None],
    ) -> None:
        self.stream = stream
        self.peer = peer
        self.protocol = protocol
        self.max_pending = max_pending
        self.idle_s = idle_s
        self._is_connected = is_connected
        self._on_violation = on_violation
        self.pending: dict[int, _Pending] = {}
        self.abandoned: dict[int, int] = {}
        """Ids whose caller gave up -> their response cap (their late response is dropped)."""
        self.closed = False
        self.last_used = trio.current_time()
        self._next_id = 1
        self._slots = trio.Semaphore(max_pending)
        self._frames, self._queued = trio.open_memory_channel[tuple[int, int, bytes]](max_pending)
        self._scope = trio.CancelScope()
        self._why = "closed"
        self.ended = trio.Event()
        """Set once the channel's tasks are done and its stream reset."""

    # --- the caller's side ----------------------------------------------------------------------

    async def request(self, data: bytes, max_response_bytes: int) -> bytes:
        """Send one request and wait for its response (under the caller's deadline).

        Raises `ChannelClosed` before sending, else the `RequestFailed` family."""
        async with self._slots:
            if self.closed:
                raise ChannelClosed
            request_id = self._take_id()
            pending = self.pending[request_id] = _Pending(max_response_bytes)
            self.last_used = trio.current_time()
            try:
                try:
                    await self._frames.send((request_id, max_response_bytes, data))
                except trio.BrokenResourceError:
                    pass  # the channel ended: its end failed this request
                await pending.done.wait()
            finally:
                if self.pending.pop(request_id, None) is not None:  # the caller gave up
                    self._abandon(request_id, max_response_bytes)
                self.last_used = trio.current_time()
        if pending.error is not None:
            raise pending.error
        assert pending.response is not None  # done is set with a response or an error
        return pending.response

    def _take_id(self) -> int:
        request_id = compute_free_id(self._next_id, lambda i: i in self.pending or i in self.abandoned)
        self._next_id = request_id % MAX_REQUEST_ID + 1
        return request_id

    def _abandon(self, request_id: int, cap: int) -> None:
        if self.closed:
            return
        self.abandoned[request_id] = cap
        if len(self.abandoned) > self.max_pending:
            self.close(f"{len(self.abandoned)} requests left unanswered")

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
        except FrameError as err:
            self._why = f"stream broke off: {err}"
        self.close(self._why)

    async def _read_one(self) -> None:
        header = await read_exactly(self.stream, RESPONSE_HEADER.size)
        request_id, status, size = RESPONSE_HEADER.unpack(header)
        pending = self.pending.get(request_id)
        cap = pending.max_response_bytes if pending else self.abandoned.get(request_id)
        if cap is None:
            raise ProtocolViolation(f"response to request {request_id}, which is not in flight")
        if status == STATUS_OK and size > cap:
            raise ProtocolViolation(f"response of {size} bytes > the request's cap {cap}")
        if status in (STATUS_ERROR, STATUS_TOO_LARGE) and size > MAX_REASON_BYTES:
            raise ProtocolViolation(f"error reason of {size} bytes")
        if status not in (STATUS_OK, STATUS_ERROR, STATUS_TOO_LARGE):
            raise ProtocolViolation(f"unknown response status {status}")
        body = await read_exactly(self.stream, size)
        pending = self.pending.pop(request_id, None)
        if pending is None:
            self.abandoned.pop(request_id, None)  # a late response: dropped
            return
        if status == STATUS_OK:
            pending.response = body
        else:
            reason = body.decode("utf-8", "replace")
            kind = ResponseTooLarge if status == STATUS_TOO_LARGE else RemoteError
            pending.error = kind(self.peer, self.protocol, reason)
        pending.done.set()

    async def _write_frames(self) -> None:
        """The one writer. A frame whose caller already gave up is not sent (and so will get
        no response). A write that fails ends the channel."""
        async for request_id, cap, data in self._queued:
            if request_id not in self.pending:
                self.abandoned.pop(request_id, None)
                continue
            try:
                await self.stream.write(encode_request(request_id, cap, data))
            except StreamError as err:
                self.close(f"stream broke off: {err!r}")
                return

    async def _watch_idle(self) -> None:
        while True:
            await trio.sleep_until(self.last_used + self.idle_s)
            idle = trio.current_time() >= self.last_used + self.idle_s
            if idle and not self.pending and not self.abandoned:
                logger.debug("persistent %s stream to %s idle: closing", self.protocol, self.peer)
                self.close("idle")
                return
            if idle:
                self.last_used = trio.current_time()

    def _fail_all(self) -> None:
        """Every request in flight fails with the typed error of how the stream ended."""
        if not self.pending:
            return
        connected = self._is_connected()
        for pending in self.pending.values():  # one error each: each is raised in its own task
            if connected:
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
        max_pending: int, idle_s: float,
    ) -> None:
        self.channels: dict[tuple[PeerId, str], RequestChannel] = {}
        self.unsupported: set[tuple[PeerId, str]] = set()
        self.nursery: trio.Nursery | None = None
        self._open_stream = open_stream
        self._is_connected = is_connected
        self._on_violation = on_violation
        self._on_opened = on_opened
        self._max_pending = max_pending
        self._idle_s = idle_s
        self._opening: dict[tuple[PeerId, str], trio.Lock] = {}

    async def request(
        self, peer_id: ID, peer: PeerId, protocol: str, data: bytes, max_response_bytes: int
    ) -> bytes | None:
        """The response over the persistent stream; None if the peer does not speak it."""
        for _ in range(2):  # a channel that closed under us is replaced once
            channel = await self._get(peer_id, peer, protocol)
            if channel is None:
                return None
            try:
                return await channel.request(data, max_response_bytes)
            except ChannelClosed:
                continue
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
        if key in self.unsupported or self.nursery is None:
            return None
        try:
            stream = await self._open_stream(peer_id, peer, protocol, compute_stream_protocol(protocol))
        except UnsupportedProtocol:
            if len(self.unsupported) >= MAX_UNSUPPORTED:
                self.unsupported.clear()
            self.unsupported.add(key)
            logger.debug("%s does not speak persistent %s streams", peer, protocol)
            return None
        self._on_opened(protocol)
        if self.nursery is None:  # the network stopped while the stream was negotiated
            await reset_quietly(stream)
            raise PeerUnreachable(peer, protocol, "this node is down")
        channel = RequestChannel(
            stream, peer, protocol, max_pending=self._max_pending, idle_s=self._idle_s,
            is_connected=lambda: self._is_connected(peer_id), on_violation=self._on_violation,
        )
        self.channels[key] = channel
        self.nursery.start_soon(self._run, key, channel)
        return channel

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
        self.unsupported = {key for key in self.unsupported if key[0] != peer}

    def close_all(self) -> None:
        for channel in list(self.channels.values()):
            channel.close("this node is stopping")
        self.nursery = None
