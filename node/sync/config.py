"""Settings of the sync wing: the operator's (`[sync]` in config.toml) and the service's timing."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """`[sync]` in config.toml."""

    fast: bool = True
    """Start from a certified state snapshot when far behind (else replay every block)."""
    fast_min_gap: int = 256
    """Fast sync only when a peer is at least this many blocks ahead on the reward chain."""
    peer_wait_s: float = 10.0
    """At start, how long to wait for a first peer before deciding how to sync."""


@dataclass(frozen=True, slots=True)
class SyncTiming:
    """How the sync service talks to peers while the node runs."""

    status_interval_s: float = 10.0
    """How often this node asks each connected peer for its heights (the handshake again). It
    used to be a gossip that reached every node (about D copies each): at 2 s it was 80 % of the
    messages a 16-daemon devnet handled. A lagging node learns of it sooner anyway: from the
    handshake with each new peer and from consensus messages of later heights."""
    status_fanout: int = 8
    """Connected peers asked for their heights each interval (drawn at random; all of them when
    there are fewer)."""
    request_timeout_s: float = 2.0
    """Deadline of a handshake or blocks request."""
    batch: int = 32
    """Blocks asked for per request."""
    snapshot_every: int = 64
    """Keep the state at every multiple of this height for fast-syncing peers."""

    def __post_init__(self) -> None:
        if not (self.status_interval_s > 0 and self.status_fanout >= 1 and self.request_timeout_s > 0
                and self.batch >= 1 and self.snapshot_every >= 1):
            raise ValueError(f"invalid sync timing {self}")

    @classmethod
    def for_tests(cls) -> SyncTiming:
        return cls(status_interval_s=1.0, request_timeout_s=1.0)
