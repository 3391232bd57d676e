"""Settings of the expert service: `[experts]` in config.toml."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ExpertsConfig:
    serve: tuple[str, ...] = ("auto",)
    """Experts this node serves: "auto" (every expert whose weights are in the blob store),
    "none", or block names such as "layer0.expert1"."""
    announce_interval_s: float = 10.0
    """How often the node gossips what it serves (announcements live three times as long)."""
    request_timeout_s: float = 5.0
    """Deadline of one expert-forward request to a peer."""
    spot_check: float = 0.05
    """Probability of recomputing a peer's expert output here to check it."""
    local_fallback: bool = True
    """Compute an expert here from the blob store when no serving peer answers."""
    max_concurrent: int = 1
    """Torch jobs (serving and inference) running at once in worker threads."""
    cache_mib: int = 256
    """Byte budget of experts loaded beyond those served (fallback, spot checks), in MiB."""
