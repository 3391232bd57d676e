"""What the parts of the simulated network ask of each other, as interfaces: the hub as an
endpoint and the request path see it (`Switchboard`), and an endpoint as the request path sees
it (`Endpoint`). `hub` implements the first and `endpoint` the second; neither the endpoint nor
the request path imports the hub, so the modules form no import cycle."""

from __future__ import annotations

from typing import Protocol

import trio

from p2p.network import PeerId, PeerScores, RequestHandler, ScoreConfig
from p2p.sim.trace import SimStats
from p2p.sim.wire import Delivery


class Endpoint(Protocol):
    """One node's network, as the hub's request path sees it."""

    local_id: PeerId
    incarnation: int
    _alive: bool
    _handlers: dict[str, tuple[RequestHandler, int]]
    _inbound: int
    _scopes: dict[trio.CancelScope, None]
    _scores: PeerScores

    def penalize(self, peer: PeerId, reason: str, weight: float = 1.0) -> None:
        """Lower a peer's score."""


class Switchboard(Protocol):
    """The hub, as an endpoint and the request path see it."""

    stats: SimStats
    score_config: ScoreConfig
    max_inbound_requests: int
    handler_timeout: float
    _nursery: trio.Nursery | None
    _nodes: dict[PeerId, Endpoint]
    _subscribers: dict[str, list]
    """Per topic, the live subscribers (an endpoint clears a topic it subscribes to)."""

    def get_clock_skew(self, peer_id: PeerId) -> int:
        """A node's clock skew in milliseconds."""

    def _on_ban(self, net: Endpoint, peer: PeerId, until: float) -> None:
        """A node banned a peer until `until`."""

    def _send_gossip(self, sender: Endpoint, topic: str, data: bytes) -> None:
        """Fan a gossip message out from `sender`."""

    def _group(self, peer: PeerId) -> int:
        """The partition group of a node."""

    def _blocked(self, a: PeerId, b: PeerId) -> str | None:
        """Why `a` cannot reach `b` now, or None."""

    def _sample_delay(self, src: PeerId, dst: PeerId) -> float:
        """A link latency draw."""

    def _enqueue(self, net: Endpoint, due: float, item: Delivery) -> bool:
        """Put a delivery on a node's heap."""

    def _record(self, kind: str, src: PeerId, dst: PeerId, name: str, data: bytes) -> None:
        """Trace an event."""

    def _begin_work(self) -> None:
        """Count a task in flight."""

    def _finish_work(self) -> None:
        """A task in flight is done."""
