"""The `Network` interface: what a node's engines may ask of the peer-to-peer layer.

One interface, two implementations: `p2p.sim.SimNetwork` (many nodes in one trio run under
`MockClock`, a pure function of a seed) and the libp2p host. Engines are written against this
module only, so the same code runs in the deterministic simulation and on the real network.

Semantics every implementation keeps:

- **Gossip** (`publish`/`subscribe`): best effort, unordered, possibly duplicated; a node never
  receives its own publications. A handler judges each message with a `Verdict`
  (consensus-specs `p2p-interface.md`): ACCEPT (valid, relay it), IGNORE (not our business now,
  no penalty) or REJECT (invalid: the sender is penalised). Handlers must be idempotent and
  quick: they run on the node's inbound path, which they back-pressure while they run.
- **Requests** (`request`/`set_request_handler`): one request, one response, over a reliable
  stream; every call has a deadline and every message a size cap. Failures are the
  `RequestFailed` family below, never an exception of the transport or of trio.
- **Peers**: `peers()` is the set of connected peers as this node has observed it; callbacks from
  `on_peer_event` report each change (connected True/False) in the order it was observed.
  Callbacks are synchronous and must not block (push to a channel).
- **Scores**: each node keeps a score per peer (`PeerScores`); penalties decay toward 0; a peer
  whose score falls below the ban threshold is disconnected and refused until it decays back.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from chain.errors import BlyanError

PeerId = str
"""A peer's identity: the libp2p peer id in base58, or any unique name in the simulator."""

GossipHandler = Callable[[PeerId, bytes], Awaitable["Verdict"]]
"""`handler(sender, data) -> Verdict` for one topic; `sender` is the peer that forwarded it."""

RequestHandler = Callable[[PeerId, bytes], Awaitable[bytes]]
"""`handler(requester, request) -> response` for one protocol. Raising a `BlyanError` answers
with a `RemoteError` carrying its message; any other exception is logged as a bug."""

PeerEventCallback = Callable[[PeerId, bool], None]
"""`callback(peer, connected)`: called once per observed change of a peer's connection."""

MAX_GOSSIP_BYTES = 10 * 1024 * 1024
"""Largest gossip message anyone publishes or accepts (consensus-specs GOSSIP_MAX_SIZE)."""

DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""Largest response `request` accepts unless the caller passes another cap."""

REJECT_PENALTY = 1.0
"""Score a peer loses for each gossip message a handler REJECTs (or that breaks a size cap)."""

_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class Verdict(enum.Enum):
    """A handler's judgement of one message from a peer."""

    ACCEPT = "accept"
    """Valid and new: deliver and relay it."""
    IGNORE = "ignore"
    """Not useful now (duplicate, too old, unknown parent): drop it, no penalty."""
    REJECT = "reject"
    """Invalid: drop it and penalise the sender."""


# --- errors -----------------------------------------------------------------------------------


class NetworkError(BlyanError):
    """Root of the errors the p2p layer raises."""


class MessageTooLarge(NetworkError):
    """A message to publish that is larger than the gossip cap."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message of {size} bytes exceeds the cap of {limit} bytes")


class RequestFailed(NetworkError):
    """A request that got no usable response."""

    def __init__(self, peer: PeerId, protocol: str, reason: str) -> None:
        self.peer = peer
        self.protocol = protocol
        self.reason = reason
        super().__init__(f"request {protocol} to {peer} failed: {reason}")


class RequestTimeout(RequestFailed):
    """No response before the deadline (the peer is slow, partitioned away or lost the request)."""


class PeerUnreachable(RequestFailed):
    """No connection to the peer: it is down, unknown, banned, or this node is down."""


class ResponseTooLarge(RequestFailed):
    """A response larger than the requester's cap; it is discarded unread."""


class RemoteError(RequestFailed):
    """The peer answered with an error: unsupported protocol, request too large, overloaded,
    or its handler failed. `reason` is the peer's message."""


# --- names ------------------------------------------------------------------------------------


def _check_name(kind: str, value: str) -> None:
    if not _NAME.fullmatch(value):
        raise ValueError(f"{kind} {value!r} must be non-empty [A-Za-z0-9_.-]")


def validate_handler_timeout(timeout_s: float | None) -> None:
    """`ValueError` unless None or positive and finite (a handler's own time limit)."""
    if timeout_s is not None and not (timeout_s > 0 and math.isfinite(timeout_s)):
        raise ValueError(f"handler timeout must be positive and finite, got {timeout_s}")


def topic_name(network_id: str, name: str, version: int = 1) -> str:
    """The gossip topic `name` of network `network_id`: `/blyan/<network>/<name>/<version>`."""
    _check_name("network id", network_id)
    _check_name("topic", name)
    if version < 1:
        raise ValueError(f"topic version must be >= 1, got {version}")
    return f"/blyan/{network_id}/{name}/{version}"


def protocol_name(network_id: str, name: str, version: int = 1) -> str:
    """The request protocol `name` of `network_id`: `/blyan/<network>/req/<name>/<version>`."""
    _check_name("network id", network_id)
    _check_name("protocol", name)
    if version < 1:
        raise ValueError(f"protocol version must be >= 1, got {version}")
    return f"/blyan/{network_id}/req/{name}/{version}"


# --- peer scores ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScoreConfig:
    """How penalties add up and fade."""

    half_life_s: float = 300.0
    """Seconds after which a penalty has decayed to half its weight."""
    ban_threshold: float = -10.0
    """A score below this disconnects and bans the peer until the score decays back to it."""

    def __post_init__(self) -> None:
        if not (self.half_life_s > 0 and math.isfinite(self.half_life_s)):
            raise ValueError(f"half_life_s must be positive and finite, got {self.half_life_s}")
        if not self.ban_threshold < 0:
            raise ValueError(f"ban_threshold must be negative, got {self.ban_threshold}")


class PeerScores:
    """Score per peer, decaying exponentially toward 0; pure: every call takes `now` (seconds,
    monotonic, e.g. `trio.current_time()`), so both implementations and their tests share it."""

    def __init__(self, config: ScoreConfig | None = None) -> None:
        self.config = config or ScoreConfig()
        self._scores: dict[PeerId, tuple[float, float]] = {}  # peer -> (score, as of time)
        self._banned_until: dict[PeerId, float] = {}

    def score(self, peer: PeerId, now: float) -> float:
        """The peer's current score: 0 for a peer never penalised, negative after penalties."""
        value, since = self._scores.get(peer, (0.0, now))
        return value * 0.5 ** (max(0.0, now - since) / self.config.half_life_s)

    def penalize(self, peer: PeerId, weight: float, now: float) -> bool:
        """Lower the peer's score by `weight`; True when this starts or extends a ban."""
        if not (weight >= 0 and math.isfinite(weight)):
            raise ValueError(f"penalty weight must be >= 0 and finite, got {weight}")
        value = self.score(peer, now) - weight
        self._scores[peer] = (value, now)
        if value >= self.config.ban_threshold:
            return False
        # value * 2^(-t/h) == threshold  <=>  t == h * log2(value / threshold)
        until = now + self.config.half_life_s * math.log2(value / self.config.ban_threshold)
        self._banned_until[peer] = until
        return True

    def is_banned(self, peer: PeerId, now: float) -> bool:
        """Whether the peer is refused now."""
        return now < self._banned_until.get(peer, -math.inf)

    def get_banned_until(self, peer: PeerId) -> float:
        """When the peer's current or last ban ends (`-inf` if it was never banned)."""
        return self._banned_until.get(peer, -math.inf)

    def forget(self, peer: PeerId) -> None:
        """Drop everything known about the peer."""
        self._scores.pop(peer, None)
        self._banned_until.pop(peer, None)


# --- the interface ----------------------------------------------------------------------------


@runtime_checkable
class Network(Protocol):
    """The p2p layer as a node's engines see it."""

    local_id: PeerId
    """This node's own peer id."""

    async def publish(self, topic: str, data: bytes) -> None:
        """Gossip `data` on `topic` to the network (not to this node's own handler).

        Raises `MessageTooLarge` above `MAX_GOSSIP_BYTES`. Never blocks on peers."""

    def subscribe(
        self, topic: str, handler: GossipHandler, max_bytes: int = MAX_GOSSIP_BYTES
    ) -> None:
        """Receive `topic`; messages above `max_bytes` are REJECTed without calling `handler`.

        One handler per topic: subscribing twice raises `ValueError`."""

    async def request(
        self,
        peer: PeerId,
        protocol: str,
        data: bytes,
        timeout: float,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> bytes:
        """Send one request and return the response within `timeout` seconds.

        Raises `RequestTimeout`, `PeerUnreachable`, `ResponseTooLarge` or `RemoteError`."""

    def set_request_handler(
        self, protocol: str, handler: RequestHandler, max_request_bytes: int,
        timeout_s: float | None = None,
    ) -> None:
        """Serve `protocol`; larger requests are refused (`RemoteError` at the requester) and
        their sender penalised. The handler runs at most `timeout_s` (None: the network's
        default request timeout), then the requester is answered "handler timed out". One
        handler per protocol: setting twice raises `ValueError`."""

    def peers(self) -> list[PeerId]:
        """Connected peers as observed so far, sorted."""

    def on_peer_event(self, callback: PeerEventCallback) -> None:
        """Call `callback(peer, connected)` for every later change of a peer's connection."""

    def penalize(self, peer: PeerId, reason: str, weight: float = 1.0) -> None:
        """Lower the peer's score for misbehaviour (`reason` goes to the log)."""

    def score(self, peer: PeerId) -> float:
        """The peer's current score (0 neutral, negative after penalties)."""


class Clock(Protocol):
    """Wall-clock timestamps for messages (block times, vote times). Timeouts use
    `trio.current_time()` instead; `SimNetwork` is a Clock with a per-node skew."""

    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch (in the simulator: since the run began, plus skew)."""
