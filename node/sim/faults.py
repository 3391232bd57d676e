"""The fault schedule of a simulation: crashes and partitions drawn from the run's seed.

Faults happen during the first part of the run and all heal by `duration - liveness_bound - 5`
seconds, so that what is pending must become final within the liveness bound. Message loss,
duplication, reordering and clock skew are properties of the simulated network, set at start.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio

from node.sim.scenario import SimConfig
from p2p.sim import SimNetworkHub

CRASH_AND_PARTITION = ("crash", "partition")


class Cluster(Protocol):
    """What the fault schedule needs of the running simulation."""

    cfg: SimConfig
    hub: SimNetworkHub
    nodes: list[Any]
    """Nodes with `name` and `up`."""
    honest: set[str]
    """Names of the honest nodes."""

    def crash(self, node: Any) -> None:
        """Stop a node at once (its store survives)."""

    async def restart(self, nursery: trio.Nursery, node: Any) -> None:
        """Start a crashed node again from its store."""


async def run_faults(sim: Cluster, nursery: trio.Nursery) -> None:
    """Crash and restart nodes, split and heal the honest ones, until the faults must end."""
    cfg, hub = sim.cfg, sim.hub
    rng = hub.rng
    fault_end = max(1.0, cfg.duration - cfg.liveness_bound - 5.0)
    kinds = [k for k in cfg.faults if k in CRASH_AND_PARTITION]
    while kinds and trio.current_time() < fault_end:
        await trio.sleep(rng.uniform(1.0, 5.0))
        if trio.current_time() >= fault_end:
            break
        kind = kinds[rng.randrange(len(kinds))]
        length = min(rng.uniform(1.0, 8.0), max(0.0, fault_end - trio.current_time()))
        if kind == "partition":
            names = [n.name for n in sim.nodes if n.name in sim.honest]
            if len(names) < 2:
                continue
            rng.shuffle(names)
            cut = rng.randrange(1, len(names))
            hub.partition([set(names[:cut]), set(names[cut:])])
            await trio.sleep(length)
            hub.heal()
        else:
            node = sim.nodes[rng.randrange(len(sim.nodes))]
            if not node.up:
                continue
            sim.crash(node)
            await trio.sleep(length)
            await sim.restart(nursery, node)
    wait = fault_end - trio.current_time()
    if wait > 0:
        await trio.sleep(wait)
