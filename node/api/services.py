"""What the JSON-RPC methods are given: the node and the services it runs, by interface.

The API never imports the engine or the services: the daemon hands in objects that satisfy
these interfaces (the engine is a `NodeHandle`), and a method whose service is absent answers
-32010 (service unavailable).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from node.core.ports import NodeHandle


class SyncStatus(Protocol):
    """The sync service, as the API sees it."""

    @property
    def syncing(self) -> bool:
        """Whether a peer reported a finalized height above ours."""

    def sync_progress(self) -> dict[str, dict[str, int | float | None]]:
        """Per chain name: height, target, blocks/s and seconds left."""


class ExpertsAPI(Protocol):
    """The expert service, as the API sees it."""

    async def generate(self, prompt: str, max_tokens: int, temperature: float = 0.0, seed: int = 0,
                       use_cache: bool = True, plan: str = "auto") -> dict:
        """Text in, text out, with the trace `blyan_generate` returns."""

    def describe(self) -> dict[str, Any]:
        """What this node serves and the registry of serving peers."""


class PolAPI(Protocol):
    """The PoL service: its vote pool (`pool.tally`, `pool.votes_of`) and its state."""

    pool: Any

    def describe(self) -> dict[str, Any]:
        """Queue, verifications, own votes."""


class SubmissionsAPI(Protocol):
    """This node's delta submissions."""

    submissions: dict[bytes, Any]

    def submit(self, bundle_path: Path) -> Any:
        """Check a bundle and commit it; raises `BlyanError` with the reason it is refused."""


class SnapshotsAPI(Protocol):
    """The snapshot service: ask for a block's snapshot, and its state."""

    def request(self, name: str) -> None:
        """Sign the block's snapshot once its head is materialised here (a validator)."""

    def describe(self) -> dict[str, Any]:
        """Own signatures, the pool, `snapshot_every`."""


class DataAPI(Protocol):
    """Data quality on this node: its dataset store (`has`), the validator's data service
    (`describe(submission)`) and this node's submissions (`begin_upload`, `append`, `start`, `jobs`)."""

    store: Any
    service: Any
    submissions: Any


@dataclass(frozen=True, slots=True)
class Services:
    """The node and its services (None: not running on this node)."""

    node: NodeHandle | None = None
    """The engine."""
    experts: ExpertsAPI | None = None
    """The expert service (inference)."""
    sync: SyncStatus | None = None
    """The sync service (catch-up progress)."""
    pol: PolAPI | None = None
    """The PoL service (votes, verification)."""
    submissions: SubmissionsAPI | None = None
    """Delta submissions (commit, reveal)."""
    snapshots: SnapshotsAPI | None = None
    """Snapshot compaction (signatures, pool)."""
    data: DataAPI | None = None
    """Data quality (datasets held, audits and votes, submissions)."""

    def get(self, name: str) -> object | None:
        return {"node": self.node, "experts": self.experts, "sync": self.sync, "pol": self.pol,
                "submissions": self.submissions, "snapshots": self.snapshots, "data": self.data}.get(name)
