"""Requests on the simulated network: the request leg on the destination's delivery heap, the
handler in the receiver's own task, the response back after a delay sampled on the reverse
link; and how a request to an unreachable peer fails (see `p2p.sim`).

These are the hub's request path, kept apart from its gossip and connectivity. They run in the
hub's tasks and change only state the hub owns (its counters, the nodes' inbound counts)."""

from __future__ import annotations

import logging
from typing import NoReturn

import trio

from chain.errors import BlyanError
from p2p.network import (
    REJECT_PENALTY,
    PeerId,
    PeerUnreachable,
    RemoteError,
    RequestHandler,
    RequestTimeout,
    ResponseTooLarge,
)
from p2p.sim.ports import Endpoint, Switchboard
from p2p.sim.wire import Delivery, Pending

logger = logging.getLogger(__name__)


async def send_request(
    hub: Switchboard, net: Endpoint, peer: PeerId, protocol: str, data: bytes, timeout: float, cap: int
) -> bytes:
    """`net.request(...)`: the response, or the `NetworkError` the simulated wire makes of it."""
    hub.stats.requests += 1
    now = trio.current_time()
    deadline = now + timeout
    refusal = _compute_refusal(hub, net, peer)
    if refusal is not None:
        await _refuse(hub, net, peer, protocol, refusal, deadline)
    pending = Pending()
    item = Delivery("request", net.local_id, net.incarnation, protocol, data, pending, deadline)
    hub._enqueue(hub._nodes[peer], now + hub._sample_delay(net.local_id, peer), item)
    with trio.move_on_at(deadline):
        await pending.done.wait()
    if not pending.done.is_set():
        hub.stats.request_timeouts += 1
        raise RequestTimeout(peer, protocol, f"no response within {timeout:g}s")
    if pending.error is not None:
        hub.stats.request_errors += 1
        raise RemoteError(peer, protocol, pending.error)
    if len(pending.response) > cap:
        hub.stats.request_errors += 1
        raise ResponseTooLarge(peer, protocol, f"{len(pending.response)} bytes > cap {cap}")
    hub.stats.responses += 1
    return pending.response


def accept_request(hub: Switchboard, net: Endpoint, item: Delivery) -> None:
    """A request leg has reached `net`: admit it (or not) and serve it in a task of its own."""
    assert hub._nursery is not None
    hub._record("request", item.src, net.local_id, item.name, item.data)
    entry = net._handlers.get(item.name)
    handler: RequestHandler | None = None
    limit = hub.handler_timeout
    error: str | None = None
    if entry is None:
        error = f"unsupported protocol {item.name}"
    elif len(item.data) > entry[1]:
        error = f"request of {len(item.data)} bytes exceeds the cap of {entry[1]}"
        net.penalize(item.src, f"oversized request on {item.name}", REJECT_PENALTY)
    elif net._inbound >= hub.max_inbound_requests:
        error = "overloaded"
    else:
        handler = entry[0]
        limit = limit if entry[2] is None else entry[2]
        net._inbound += 1
    hub._begin_work()
    hub._nursery.start_soon(_serve, hub, net, item, handler, error, limit)


async def _serve(
    hub: Switchboard, net: Endpoint, item: Delivery, handler: RequestHandler | None, error: str | None,
    limit: float,
) -> None:
    """Run the handler (if the request was admitted) and fly the response back."""
    scope = trio.CancelScope()
    net._scopes[scope] = None  # a crash cancels the handler and the response in flight
    try:
        with scope:
            if not net._alive:
                return
            response = b""
            if handler is not None:
                response, error = await _run_handler(net, item, handler, limit)
            await trio.sleep(hub._sample_delay(net.local_id, item.src))
            _respond(hub, net, item, response, error)
    finally:
        if handler is not None:
            net._inbound -= 1
        net._scopes.pop(scope, None)
        hub._finish_work()


async def _run_handler(
    net: Endpoint, item: Delivery, handler: RequestHandler, limit: float
) -> tuple[bytes, str | None]:
    """(response, None) or (b"", error). The handler runs until the server's `limit` (its
    protocol's `timeout_s`, else the hub's `handler_timeout`) or the requester's deadline,
    whichever comes first (past the deadline no answer would be read)."""
    where = f"request handler of {net.local_id} for {item.name}"
    with trio.move_on_at(min(item.deadline, trio.current_time() + limit)):
        try:
            response = await handler(item.src, item.data)
        except BlyanError as err:
            logger.info("%s refused %s: %s", where, item.src, err)
            return b"", str(err) or type(err).__name__
        except Exception as err:
            logger.exception("%s failed", where)
            return b"", f"internal error ({type(err).__name__})"
        if not isinstance(response, bytes):
            logger.error("%s returned %s, not bytes", where, type(response).__name__)
            return b"", "internal error (response is not bytes)"
        return response, None
    return b"", "handler timed out"


def _respond(hub: Switchboard, net: Endpoint, item: Delivery, response: bytes, error: str | None) -> None:
    requester = hub._nodes.get(item.src)
    if requester is None or requester.incarnation != item.src_incarnation:
        return
    if hub._blocked(net.local_id, item.src) is None and item.pending is not None:
        hub._record("response", net.local_id, item.src, item.name, response)
        item.pending.resolve(response, error)


def _compute_refusal(hub: Switchboard, net: Endpoint, peer: PeerId) -> str | None:
    """Why a request cannot leave: "self-down", "partition", why the dial is refused, or
    None when it can."""
    src, now = net.local_id, trio.current_time()
    target = hub._nodes.get(peer)
    if not net._alive or hub._nodes.get(src) is not net:
        return "self-down"
    if peer == src:
        return "cannot request self"
    if net._scores.is_banned(peer, now):
        return "peer is banned"
    if target is None:
        return "unknown peer"
    if hub._group(src) != hub._group(peer):
        return "partition"
    if not target._alive:
        return "peer is down"
    if target._scores.is_banned(src, now):
        return "peer refuses the connection"
    return None


async def _refuse(
    hub: Switchboard, net: Endpoint, peer: PeerId, protocol: str, refusal: str, deadline: float
) -> NoReturn:
    """Fail a request that cannot leave, after the time its failure takes to show."""
    if refusal in ("self-down", "partition"):
        await trio.sleep_until(deadline)
    else:  # a refused dial costs a round trip
        there = hub._sample_delay(net.local_id, peer)
        back = hub._sample_delay(peer, net.local_id)
        await trio.sleep_until(min(deadline, trio.current_time() + there + back))
    if refusal == "partition" or (refusal != "self-down" and trio.current_time() >= deadline):
        hub.stats.request_timeouts += 1
        raise RequestTimeout(peer, protocol, "no response before the deadline")
    hub.stats.request_unreachable += 1
    reason = "this node is down" if refusal == "self-down" else refusal
    raise PeerUnreachable(peer, protocol, reason)
