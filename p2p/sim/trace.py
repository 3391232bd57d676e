"""What a simulated run leaves behind: the hub's counters, its trace events, and the digest over
every event that tells two runs apart."""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import asdict, dataclass

from p2p.network import PeerId


@dataclass(slots=True)
class SimStats:
    """Counters of a hub. For gossip, at any instant:
    `sent + duplicated == delivered + dropped_* + copies in flight`."""

    sent: int = 0
    """Gossip copies addressed to live subscribers (before faults)."""
    delivered: int = 0
    """Gossip copies handed to a handler (or rejected for size)."""
    duplicated: int = 0
    """Extra copies made by duplication."""
    dropped_loss: int = 0
    dropped_partition: int = 0
    dropped_crash: int = 0
    """Copies from or to a node that crashed before they arrived."""
    dropped_banned: int = 0
    dropped_overflow: int = 0
    """Copies dropped because their link already had `max_in_flight_per_link` in flight."""
    accepted: int = 0
    ignored: int = 0
    rejected: int = 0
    requests: int = 0
    responses: int = 0
    """Requests answered successfully."""
    request_timeouts: int = 0
    request_unreachable: int = 0
    request_errors: int = 0
    """RemoteError and ResponseTooLarge."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One event of a run, kept when the hub has `trace_limit > 0`."""

    time: float
    kind: str
    """gossip, request, response, connect, disconnect, or drop-<reason>."""
    src: PeerId
    dst: PeerId
    name: str
    """Topic or protocol ("" for peer events)."""
    data: bytes


class TraceLog:
    """Every event of a run, folded into one sha256 as it happens; the last `limit` kept whole
    as `TraceEvent`s in `events` (none when 0)."""

    def __init__(self, limit: int) -> None:
        self.events: deque[TraceEvent] = deque(maxlen=limit)
        self._digest = hashlib.sha256()
        self._instant = 0.0
        self._instant_events: list[bytes] = []

    def record(self, now: float, kind: str, src: PeerId, dst: PeerId, name: str, data: bytes,
               data_hash: bytes | None = None) -> None:
        """One event; `data_hash` is sha256(data) when the caller has it already."""
        if now != self._instant:
            self._fold_instant()
            self._instant = now
        line = f"{now!r}\x1f{kind}\x1f{src}\x1f{dst}\x1f{name}\x1f".encode()
        self._instant_events.append(line + (data_hash or hashlib.sha256(data).digest()))
        if self.events.maxlen:
            self.events.append(TraceEvent(now, kind, src, dst, name, data))

    def compute_digest(self) -> str:
        """sha256 over every event so far, the current instant's included."""
        digest = self._digest.copy()
        for event in sorted(self._instant_events):
            digest.update(event)
        return digest.hexdigest()

    def _fold_instant(self) -> None:
        # Events of one instant are hashed sorted: the digest does not depend on how trio
        # interleaved the nodes' tasks within that instant.
        for event in sorted(self._instant_events):
            self._digest.update(event)
        self._instant_events.clear()
