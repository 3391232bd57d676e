"""Request/response over one libp2p stream per request: the framing, the server and the client.

Wire format (one protocol id per request protocol, the `protocol` string itself):

    request:   u32 length (big-endian) | body                       then the requester half-closes
    response:  u8 status | u32 length (big-endian) | body           then the server closes

status 0 (`STATUS_OK`): body is the response. status 1 (`STATUS_ERROR`): body is a UTF-8 reason
of at most `MAX_REASON_BYTES` (handler refused, request too large, overloaded, internal error),
raised as `RemoteError` at the requester. The length comes first so that each side can refuse an
oversized message from its prefix alone, before reading (or buffering) the body.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamError

from chain.errors import BlyanError
from p2p.libp2p_guard import reset_quietly
from p2p.network import PeerId, RemoteError, RequestHandler, ResponseTooLarge

logger = logging.getLogger(__name__)

LENGTH = struct.Struct(">I")
"""The 4-byte big-endian length prefix of a request or response body."""
STATUS_OK = 0
STATUS_ERROR = 1
MAX_REASON_BYTES = 1024
"""Longest error reason sent or accepted."""
REFUSAL_GRACE_S = 1.0
"""After refusing a request, how long the server lets the requester read the refusal before
it resets the stream."""
READ_CHUNK = 1 << 20


class FrameError(Exception):
    """A stream that ended or broke before a whole frame arrived (internal to this package)."""


class UnsupportedProtocol(RemoteError):
    """The peer does not speak the protocol asked for in stream negotiation."""


@dataclass(slots=True)
class ServerEntry:
    """One served protocol."""

    handler: RequestHandler
    max_request_bytes: int
    timeout_s: float | None = None
    """How long the handler may run (None: the server's `timeout`); reading the request and
    writing the answer keep the server's own."""


async def read_exactly(stream: INetStream, size: int) -> bytes:
    """`size` bytes from the stream, or `FrameError` if it ends or breaks first."""
    parts: list[bytes] = []
    missing = size
    try:
        while missing:
            chunk = await stream.read(min(missing, READ_CHUNK))
            if not chunk:
                raise FrameError(f"stream ended {missing} bytes short")
            parts.append(chunk)
            missing -= len(chunk)
    except StreamError as err:
        raise FrameError(f"stream failed {missing} bytes short: {err!r}") from err
    return b"".join(parts)


def encode_reason(reason: str) -> bytes:
    return reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]


async def write_response(stream: INetStream, status: int, body: bytes) -> None:
    await stream.write(bytes([status]) + LENGTH.pack(len(body)))
    if body:
        await stream.write(body)


# --- server -----------------------------------------------------------------------------------


class RequestServer:
    """Serves every registered protocol; one instance per network.

    `on_oversized(peer, reason)` penalises the sender of a request above its protocol's cap;
    `is_banned(peer)` refuses streams from banned peers outright; `on_outcome(protocol,
    outcome)` hears how each admitted request ended: "served", "failed" or "timed_out"."""

    def __init__(
        self,
        *,
        max_inbound: int,
        timeout: float,
        on_oversized: Callable[[PeerId, str], None],
        is_banned: Callable[[PeerId], bool],
        on_outcome: Callable[[str, str], None] = lambda protocol, outcome: None,
    ) -> None:
        self.entries: dict[str, ServerEntry] = {}
        self._slots = trio.Semaphore(max_inbound)
        self.timeout = timeout
        self.on_oversized = on_oversized
        self.is_banned = is_banned
        self.on_outcome = on_outcome

    def try_admit(self) -> bool:
        """Take one of the `max_inbound` slots (shared by both stream kinds); False when all
        are taken ("overloaded"). Each True is paired with one `release`."""
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            return False
        return True

    def release(self) -> None:
        self._slots.release()

    async def handle(self, entry: ServerEntry, peer: PeerId, protocol: str, data: bytes) -> tuple[int, bytes, str]:
        """Run the handler within its entry's `timeout_s` (else the server's `timeout`):
        (status, body, outcome)."""
        limit = self.timeout if entry.timeout_s is None else entry.timeout_s
        status, body = STATUS_ERROR, encode_reason("handler timed out")
        with trio.move_on_after(limit) as scope:
            status, body = await self._run_handler(entry.handler, peer, protocol, data)
        if scope.cancelled_caught:
            logger.warning("request handler for %s overran %.1fs", protocol, limit)
            return status, body, "timed_out"
        return status, body, "served" if status == STATUS_OK else "failed"

    async def serve(self, stream: INetStream, peer: PeerId) -> None:
        """Answer one request stream (the caller's guard handles what escapes)."""
        protocol = str(stream.get_protocol())
        entry = self.entries.get(protocol)
        if entry is None or self.is_banned(peer):
            await reset_quietly(stream)
            return
        if not self.try_admit():
            self.on_outcome(protocol, "failed")
            await self._refuse(stream, "overloaded")
            return
        outcome = "failed"
        try:
            outcome = await self._serve_admitted(stream, peer, protocol, entry)
        finally:
            self.release()
            self.on_outcome(protocol, outcome)

    async def _serve_admitted(
        self, stream: INetStream, peer: PeerId, protocol: str, entry: ServerEntry
    ) -> str:
        """Read, handle, answer: each phase within the server's own `timeout` (the requester's
        deadline is its own business; a requester that gave up just resets the stream).
        Returns the outcome: "served", "failed" or "timed_out"."""
        data: bytes | None = None
        with trio.move_on_after(self.timeout):
            try:
                (size,) = LENGTH.unpack(await read_exactly(stream, LENGTH.size))
                if size > entry.max_request_bytes:
                    reason = f"request of {size} bytes exceeds the cap of {entry.max_request_bytes}"
                    self.on_oversized(peer, f"oversized request on {protocol}")
                    await self._refuse(stream, reason)
                    return "failed"
                data = await read_exactly(stream, size)
            except FrameError as err:
                logger.debug("request %s from %s broke off: %s", protocol, peer, err)
                await reset_quietly(stream)
                return "failed"
        if data is None:
            logger.info("request %s from %s not received in %.1fs", protocol, peer, self.timeout)
            await reset_quietly(stream)
            return "timed_out"
        status, body, outcome = await self.handle(entry, peer, protocol, data)
        with trio.move_on_after(self.timeout):
            try:
                await write_response(stream, status, body)
                await stream.close()
                return outcome
            except StreamError as err:  # the requester gave up (reset) or went away
                logger.debug("response %s to %s not delivered: %r", protocol, peer, err)
        await reset_quietly(stream)
        return "failed" if outcome == "served" else outcome

    async def _run_handler(
        self, handler: RequestHandler, peer: PeerId, protocol: str, data: bytes
    ) -> tuple[int, bytes]:
        where = f"request handler for {protocol}"
        try:
            response = await handler(peer, data)
        except BlyanError as err:
            logger.info("%s refused %s: %s", where, peer, err)
            return STATUS_ERROR, encode_reason(str(err) or type(err).__name__)
        except Exception as err:
            logger.exception("%s failed", where)
            return STATUS_ERROR, encode_reason(f"internal error ({type(err).__name__})")
        if not isinstance(response, bytes):
            logger.error("%s returned %s, not bytes", where, type(response).__name__)
            return STATUS_ERROR, encode_reason("internal error (response is not bytes)")
        return STATUS_OK, response

    async def _refuse(self, stream: INetStream, reason: str) -> None:
        """Answer with an error frame without reading the request, then reset the stream once
        the requester has had time to read the answer (its reset or EOF ends the wait early)."""
        try:
            await write_response(stream, STATUS_ERROR, encode_reason(reason))
            await stream.close_write()
            with trio.move_on_after(REFUSAL_GRACE_S):
                while await stream.read(READ_CHUNK):
                    pass  # the unread request: discarded while we wait
        except StreamError:
            pass  # the requester reset or closed: done
        await reset_quietly(stream)


# --- client -----------------------------------------------------------------------------------


async def exchange(
    stream: INetStream, peer: PeerId, protocol: str, data: bytes, max_response_bytes: int
) -> bytes:
    """Send `data` on an open stream and return the response body.

    The request is written by a second task while this one reads, so a refusal that arrives
    before the request is fully written (a request above the server's cap) is read, not lost.
    Raises `RemoteError`, `ResponseTooLarge`, or `FrameError` if the stream breaks."""
    done = trio.Event()
    response: bytes | None = None
    error: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_write_request, stream, data, done)
        try:
            response = await _read_response(stream, peer, protocol, max_response_bytes)
        except (RemoteError, ResponseTooLarge, FrameError) as err:
            error = err  # raised below: not from inside the nursery, which would wrap it
        finally:
            if response is None:
                # Refused, broken, too large or out of time: reset, so the server stops and the
                # writer (if still blocked on flow control) fails at once. Cancelling the writer
                # instead could cut a frame in half and break the whole connection's framing.
                await reset_quietly(stream)
    if error is not None:
        raise error
    assert response is not None  # the nursery returned normally: the read succeeded
    return response


async def _read_response(
    stream: INetStream, peer: PeerId, protocol: str, max_response_bytes: int
) -> bytes:
    status = (await read_exactly(stream, 1))[0]
    (size,) = LENGTH.unpack(await read_exactly(stream, LENGTH.size))
    if status == STATUS_ERROR:
        if size > MAX_REASON_BYTES:
            raise FrameError(f"error reason of {size} bytes")
        reason = (await read_exactly(stream, size)).decode("utf-8", "replace")
        raise RemoteError(peer, protocol, reason)
    if status != STATUS_OK:
        raise FrameError(f"unknown response status {status}")
    if size > max_response_bytes:
        raise ResponseTooLarge(peer, protocol, f"{size} bytes > cap {max_response_bytes}")
    return await read_exactly(stream, size)


async def _write_request(stream: INetStream, data: bytes, done: trio.Event) -> None:
    try:
        await stream.write(LENGTH.pack(len(data)))
        if data:
            await stream.write(data)
        await stream.close_write()
    except StreamError as err:  # refused or reset: the reader reports what the peer said
        logger.debug("request write stopped: %r", err)
    except Exception as err:  # top of a task: the reader sees the stream fail and reports it
        logger.warning("request write failed: %r", err)
    finally:
        done.set()
