"""One node's end of the simulated network: the `Network` a node's engine talks to."""

from __future__ import annotations

import logging
import math

import trio

from p2p.network import (
    DEFAULT_MAX_RESPONSE_BYTES,
    MAX_GOSSIP_BYTES,
    GossipHandler,
    MessageTooLarge,
    PeerEventCallback,
    PeerId,
    PeerScores,
    RequestHandler,
    validate_handler_timeout,
)
from p2p.sim.ports import Switchboard
from p2p.sim.requests import send_request
from p2p.sim.wire import HeapEntry, Parking

logger = logging.getLogger(__name__)


class SimNetwork:
    """One node's `Network` inside a `SimNetworkHub` (made by `add_node` and `restart`).

    Also a `Clock`: `now_ms()` is the run's time plus this node's skew. Once its node has crashed
    the object is inert: `publish` drops, `request` fails at its deadline, `peers()` is empty."""

    def __init__(self, hub: Switchboard, peer_id: PeerId, incarnation: int) -> None:
        self.local_id = peer_id
        self.incarnation = incarnation
        """0 for the first start, +1 per restart."""
        self._hub = hub
        self._alive = True
        self._gossip: dict[str, tuple[GossipHandler, int]] = {}
        self._handlers: dict[str, tuple[RequestHandler, int, float | None]] = {}
        """protocol -> (handler, request cap, the handler's own time limit or None)."""
        self._callbacks: list[PeerEventCallback] = []
        self._view: set[PeerId] = set()
        self._scores = PeerScores(hub.score_config)
        self._heap: list[HeapEntry] = []
        self._parked = Parking()
        """The delivery task while it waits for an item to fall due."""
        self._alarm_due = math.inf
        """When the hub's timer wakes the delivery task next (inf: no alarm set)."""
        self._scopes: dict[trio.CancelScope, None] = {}  # cancelled on crash (ordered, unlike set)
        self._inbound = 0

    @property
    def alive(self) -> bool:
        return self._alive

    def now_ms(self) -> int:
        return int(trio.current_time() * 1000) + self._hub.get_clock_skew(self.local_id)

    async def publish(self, topic: str, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if len(data) > MAX_GOSSIP_BYTES:
            raise MessageTooLarge(len(data), MAX_GOSSIP_BYTES)
        if self._alive:
            self._hub._send_gossip(self, topic, bytes(data))

    def subscribe(
        self, topic: str, handler: GossipHandler, max_bytes: int = MAX_GOSSIP_BYTES
    ) -> None:
        if topic in self._gossip:
            raise ValueError(f"{self.local_id} already subscribes to {topic}")
        self._gossip[topic] = (handler, max_bytes)
        self._hub._subscribers.pop(topic, None)

    async def request(
        self,
        peer: PeerId,
        protocol: str,
        data: bytes,
        timeout: float,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> bytes:
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"request timeout must be positive and finite, got {timeout}")
        return await send_request(self._hub, self, peer, protocol, bytes(data), timeout, max_response_bytes)

    def set_request_handler(
        self, protocol: str, handler: RequestHandler, max_request_bytes: int,
        timeout_s: float | None = None,
    ) -> None:
        if protocol in self._handlers:
            raise ValueError(f"{self.local_id} already serves {protocol}")
        validate_handler_timeout(timeout_s)
        self._handlers[protocol] = (handler, max_request_bytes, timeout_s)

    def peers(self) -> list[PeerId]:
        return sorted(self._view) if self._alive else []

    def on_peer_event(self, callback: PeerEventCallback) -> None:
        self._callbacks.append(callback)

    def penalize(self, peer: PeerId, reason: str, weight: float = 1.0) -> None:
        now = trio.current_time()
        banned = self._scores.penalize(peer, weight, now)
        logger.debug("%s penalises %s by %.2f: %s", self.local_id, peer, weight, reason)
        if banned and self._alive:
            self._hub._on_ban(self, peer, self._scores.get_banned_until(peer))

    def score(self, peer: PeerId) -> float:
        return self._scores.score(peer, trio.current_time())

    def is_banned(self, peer: PeerId) -> bool:
        return self._scores.is_banned(peer, trio.current_time())
