"""Persistent request streams: many requests of one protocol on one long-lived libp2p stream,
each tagged with an id, answered in any order (the server side; the client is
`p2p.libp2p_channels`).

A request protocol `P` served by `set_request_handler` is also served as `P + STREAM_SUFFIX`
(`/blyan/<net>/req/experts/1/stream/1`). A requester opens that stream once per (peer,
protocol) and keeps it; a peer that does not speak it is asked over `P` itself, one stream per
request (`p2p.libp2p_reqresp`), which both sides keep serving.

Wire format, big-endian, frames back to back in each direction:

    request:   u32 id | u32 max response bytes | u32 length | body
    response:  u32 id | u8 status | u32 length | body

Ids are the requester's (1..2^32-1), unique among its requests in flight on the stream. status 0
(`STATUS_OK`): body is the response, at most the request's max response bytes. status 1
(`STATUS_ERROR`): a UTF-8 reason of at most `MAX_REASON_BYTES` (`RemoteError` at the requester).
status 2 (`STATUS_TOO_LARGE`): the response would exceed the requester's cap; reason as for 1
(`ResponseTooLarge`). Every frame is written whole by one writer task per side, so a request's
deadline never cuts a frame. A request above the protocol's cap is answered with an error from
its prefix, its sender penalised, and its body read and dropped (the stream stays usable); one
whose body does not arrive within the server's timeout resets the stream. Anything else out of
order (a duplicate id, a response to no request, a status or size the format forbids) is a
protocol violation: the stream is reset and the peer penalised.

A server that will not serve a stream (it serves as many as it may) answers one frame first,
before reading any request: id 0 (`REFUSAL_ID`), status 1, a reason; then it resets the stream.
None of the requests already written on it was handled, so the requester asks them again over
per-request streams (and does not try a persistent stream to that peer for a while).

Bounds: at most `max_pending` requests in flight per stream (the server reads no further frame
until one is answered: back-pressure, not refusal), `max_inbound` handlers in flight across all
streams of both kinds (excess: "overloaded"); per peer, one persistent stream per protocol served
plus `SPARE_STREAMS_PER_PEER` (across all protocols), and `max_peers` times that in all (beyond
either: refused); an idle stream is reset after `idle_s`.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamError

from p2p.libp2p_guard import reset_quietly
from p2p.libp2p_reqresp import (
    MAX_REASON_BYTES,
    READ_CHUNK,
    REFUSAL_GRACE_S,
    STATUS_ERROR,
    STATUS_OK,
    FrameError,
    RequestServer,
    ServerEntry,
    encode_reason,
    read_exactly,
)
from p2p.network import PeerId

logger = logging.getLogger(__name__)

STREAM_SUFFIX = "/stream/1"
"""Appended to a request protocol's id: the id of its persistent stream."""
REQUEST_HEADER = struct.Struct(">III")
"""id, max response bytes, body length."""
RESPONSE_HEADER = struct.Struct(">IBI")
"""id, status, body length."""
STATUS_TOO_LARGE = 2
MAX_REQUEST_ID = 0xFFFFFFFF
REFUSAL_ID = 0
"""Id of the one frame a server sends on a stream it refuses (requests never use it)."""
SPARE_STREAMS_PER_PEER = 2
"""Persistent streams one peer may hold beyond one per protocol served, across all protocols:
the next stream while a broken one is still being torn down here."""


def compute_stream_protocol(protocol: str) -> str:
    """The protocol id of `protocol`'s persistent stream."""
    return protocol + STREAM_SUFFIX


def encode_request(request_id: int, max_response_bytes: int, body: bytes) -> bytes:
    return REQUEST_HEADER.pack(request_id, max_response_bytes, len(body)) + body


def encode_response(request_id: int, status: int, body: bytes) -> bytes:
    return RESPONSE_HEADER.pack(request_id, status, len(body)) + body


async def skip_exactly(stream: INetStream, size: int) -> None:
    """Read and drop `size` bytes (never holding more than one chunk), or `FrameError`."""
    missing = size
    while missing:
        missing -= len(await read_exactly(stream, min(missing, READ_CHUNK)))


class ProtocolViolation(FrameError):
    """A peer broke the stream format: the stream is reset and the peer penalised."""


@dataclass(slots=True)
class Answer:
    """One response waiting for the writer, with the outcome to count once it is written."""

    request_id: int
    status: int
    body: bytes
    outcome: str
    """ "served", "failed" or "timed_out" (a response not delivered counts as failed)."""


class StreamServer:
    """Serves the persistent streams of every protocol of a `RequestServer` (its entries, slots,
    timeout, bans, penalties and outcome counters)."""

    def __init__(
        self, server: RequestServer, *, max_pending: int, max_peers: int, idle_s: float
    ) -> None:
        self.server = server
        self.max_pending = max_pending
        self.max_peers = max_peers
        self.idle_s = idle_s
        self.open_streams: dict[str, int] = {}
        """Protocol -> persistent streams served now (keys: the protocols served)."""
        self.per_peer: dict[PeerId, int] = {}
        """Peer -> persistent streams of it served now, all protocols together."""

    def get_peer_stream_cap(self) -> int:
        """Persistent streams one peer may hold: one per protocol served, and spares."""
        return len(self.server.entries) + SPARE_STREAMS_PER_PEER

    def get_stream_cap(self) -> int:
        """Persistent streams served at once: `max_peers` peers at their cap."""
        return self.max_peers * self.get_peer_stream_cap()

    def compute_refusal(self, peer: PeerId) -> str | None:
        """Why a new stream of `peer` is not served, or None."""
        if sum(self.open_streams.values()) >= self.get_stream_cap():
            return f"server full: {self.get_stream_cap()} persistent streams open"
        if self.per_peer.get(peer, 0) >= self.get_peer_stream_cap():
            return f"too many persistent streams: {self.get_peer_stream_cap()} open of this peer"
        return None

    async def serve(self, stream: INetStream, peer: PeerId) -> None:
        """Serve one persistent stream until the requester closes it, it breaks, it idles out
        or the peer violates the format (the caller's guard handles what escapes)."""
        protocol = str(stream.get_protocol()).removesuffix(STREAM_SUFFIX)
        entry = self.server.entries.get(protocol)
        if entry is None or self.server.is_banned(peer):
            await reset_quietly(stream)
            return
        refusal = self.compute_refusal(peer)
        if refusal is not None:
            logger.info("persistent %s stream of %s refused: %s", protocol, peer, refusal)
            await self._refuse(stream, refusal)
            return
        self.open_streams[protocol] = self.open_streams.get(protocol, 0) + 1
        self.per_peer[peer] = self.per_peer.get(peer, 0) + 1
        try:
            await _ServedStream(self, stream, peer, protocol, entry).run()
        finally:
            self.open_streams[protocol] -= 1
            self.per_peer[peer] -= 1
            if not self.per_peer[peer]:
                del self.per_peer[peer]
            await reset_quietly(stream)

    async def _refuse(self, stream: INetStream, reason: str) -> None:
        """The refusal frame, then a reset once the requester has had `REFUSAL_GRACE_S` to read
        it (its own reset ends the wait early). Requests already on the stream are dropped
        unread: none was handled."""
        frame = encode_response(REFUSAL_ID, STATUS_ERROR, encode_reason(reason))
        with trio.move_on_after(REFUSAL_GRACE_S):
            try:
                await stream.write(frame)
                await stream.close_write()
                while await stream.read(READ_CHUNK):
                    pass
            except StreamError as err:
                logger.debug("refused stream ended: %r", err)
        await reset_quietly(stream)


class _ServedStream:
    """The state of one served stream: a reader (this task), one handler task per admitted
    request, one writer, one idle watch, all in one nursery."""

    def __init__(
        self, owner: StreamServer, stream: INetStream, peer: PeerId, protocol: str,
        entry: ServerEntry,
    ) -> None:
        self.owner = owner
        self.server = owner.server
        self.stream = stream
        self.peer = peer
        self.protocol = protocol
        self.entry = entry
        self.in_flight: set[int] = set()
        self.slots = trio.Semaphore(owner.max_pending)
        self.send, self.answers = trio.open_memory_channel[Answer](owner.max_pending)
        self.last_active = trio.current_time()

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_answers, nursery.cancel_scope)
                nursery.start_soon(self._watch_idle, nursery.cancel_scope)
                await self._read_until_done(nursery)
                nursery.cancel_scope.cancel()
        finally:
            self._count_unwritten()

    async def _read_until_done(self, nursery: trio.Nursery) -> None:
        try:
            await self._read_requests(nursery)
        except ProtocolViolation as err:
            logger.info("persistent %s stream of %s: %s", self.protocol, self.peer, err)
            self.server.on_oversized(self.peer, f"bad stream frame on {self.protocol}: {err}")
        except FrameError as err:
            logger.debug("persistent %s stream of %s broke: %s", self.protocol, self.peer, err)

    async def _read_requests(self, nursery: trio.Nursery) -> None:
        """Read frames until the requester closes the stream, then answer those in flight. A
        slot is taken before each frame is read and given back once its answer is written."""
        while True:
            await self.slots.acquire()
            try:
                header = await read_exactly(self.stream, REQUEST_HEADER.size)
            except FrameError as err:
                logger.debug("persistent %s stream of %s ended: %s", self.protocol, self.peer, err)
                await self._drain()
                return
            request_id, max_response, size = REQUEST_HEADER.unpack(header)
            self.last_active = trio.current_time()
            if self.server.is_banned(self.peer):
                raise FrameError("peer is banned")
            if request_id in self.in_flight:
                raise ProtocolViolation(f"request id {request_id} already in flight")
            self.in_flight.add(request_id)
            data = await self._read_body(request_id, size)
            if data is None:
                continue  # refused as too large, answer queued
            if not self.server.try_admit():
                overloaded = encode_reason("overloaded")
                self.send.send_nowait(Answer(request_id, STATUS_ERROR, overloaded, "failed"))
                continue
            nursery.start_soon(self._handle, request_id, max_response, data)

    async def _drain(self) -> None:
        """Wait until every request in flight is answered (their handlers and writes are each
        bounded by the server's timeout): all slots but the one taken are back."""
        with trio.move_on_after(2 * self.server.timeout + 1.0):
            for _ in range(self.owner.max_pending - 1):
                await self.slots.acquire()

    async def _read_body(self, request_id: int, size: int) -> bytes | None:
        """The body within the server's timeout; None (answered, body dropped) above the cap."""
        cap = self.entry.max_request_bytes
        if size > cap:
            self.server.on_oversized(self.peer, f"oversized request on {self.protocol}")
            reason = encode_reason(f"request of {size} bytes exceeds the cap of {cap}")
            self.send.send_nowait(Answer(request_id, STATUS_ERROR, reason, "failed"))
            with trio.move_on_after(self.server.timeout):
                await skip_exactly(self.stream, size)
                return None
            raise FrameError(f"oversized body of {size} bytes not sent in {self.server.timeout:g}s")
        with trio.move_on_after(self.server.timeout):
            return await read_exactly(self.stream, size)
        self.server.on_outcome(self.protocol, "timed_out")
        raise FrameError(f"request body of {size} bytes not received in {self.server.timeout:g}s")

    async def _handle(self, request_id: int, max_response: int, data: bytes) -> None:
        answer = Answer(request_id, STATUS_ERROR, encode_reason("server stopping"), "failed")
        try:
            status, body, outcome = await self.server.handle(self.entry, self.peer, self.protocol, data)
            if status == STATUS_OK and len(body) > max_response:
                reason = f"response of {len(body)} bytes exceeds the requester's cap of {max_response}"
                status, body, outcome = STATUS_TOO_LARGE, encode_reason(reason), "failed"
            answer = Answer(request_id, status, body, outcome)
        finally:
            self.server.release()
            self.send.send_nowait(answer)  # one slot per read frame: the channel has room

    async def _write_answers(self, scope: trio.CancelScope) -> None:
        """The one writer: each answer whole, within the server's timeout, else the stream is
        reset (a cut frame would break the framing of every later one)."""
        async for answer in self.answers:
            frame = encode_response(answer.request_id, answer.status, answer.body)
            written = False
            with trio.move_on_after(self.server.timeout):
                try:
                    await self.stream.write(frame)
                    written = True
                except StreamError as err:
                    logger.debug("answer on %s to %s not delivered: %r", self.protocol, self.peer, err)
            self.server.on_outcome(self.protocol, answer.outcome if written else _undelivered(answer))
            self.in_flight.discard(answer.request_id)
            self.last_active = trio.current_time()
            self.slots.release()
            if not written:
                scope.cancel()
                return

    async def _watch_idle(self, scope: trio.CancelScope) -> None:
        """Reset the stream once no frame came and none was in flight for `idle_s`."""
        while True:
            await trio.sleep_until(self.last_active + self.owner.idle_s)
            if not self.in_flight and trio.current_time() >= self.last_active + self.owner.idle_s:
                logger.debug("persistent %s stream of %s idle: closing", self.protocol, self.peer)
                scope.cancel()
                return
            if self.in_flight:
                self.last_active = trio.current_time()

    def _count_unwritten(self) -> None:
        """Answers queued but never written: their requests failed."""
        while True:
            try:
                answer = self.answers.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            self.server.on_outcome(self.protocol, _undelivered(answer))


def _undelivered(answer: Answer) -> str:
    return "failed" if answer.outcome == "served" else answer.outcome


__all__ = [
    "MAX_REASON_BYTES",
    "REFUSAL_ID",
    "REQUEST_HEADER",
    "RESPONSE_HEADER",
    "STATUS_ERROR",
    "STATUS_OK",
    "STATUS_TOO_LARGE",
    "STREAM_SUFFIX",
    "StreamServer",
    "compute_stream_protocol",
    "encode_request",
    "encode_response",
]
