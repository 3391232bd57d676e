"""Settings of the expert service: `[experts]` in config.toml."""

from __future__ import annotations

from dataclasses import dataclass

from chain.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ExpertsConfig:
    serve: tuple[str, ...] = ("auto",)
    """Experts this node serves: "auto" (chosen from the device's tier and memory and the
    replicas and loads the network announces: `node.experts.placement`), "none", or block names
    such as "layer0.expert1"."""
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
    budget_mib: int = 0
    """With "auto": memory the served experts may take, in MiB; 0: a share of the best
    device's free memory by tier (`gpu.devices.compute_memory_budget`)."""
    min_replicas: int = 2
    """With "auto": an expert served by fewer other nodes than this is taken when it fits."""
    max_experts: int = 0
    """With "auto": at most this many experts served; 0: no limit but the budget."""
    hot_load: float = 2.0
    """With "auto", on a GPU: an expert whose announced load per replica (requests in flight)
    reaches this is replicated here when it fits (a CPU node never does)."""
    placement_interval_s: float = 30.0
    """With "auto": how often the choice is re-evaluated (each pass jittered by +-50 %)."""

    def __post_init__(self) -> None:
        if self.budget_mib < 0 or self.min_replicas < 0 or self.max_experts < 0 or self.hot_load < 0:
            raise ConfigError("experts: budget_mib, min_replicas, max_experts and hot_load must not be negative")
        if not self.placement_interval_s > 0:
            raise ConfigError("experts.placement_interval_s must be positive")
