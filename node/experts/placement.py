"""Placement: which experts a node with `[experts] serve = "auto"` serves, and how that changes.

The choice goes through `gpu.devices.compute_served_experts`, fed with the node's tier, its
memory budget and one `ExpertDemand` per expert (`compute_expert_demands`): its size from the
chain's record, the other nodes that announce it at the chain's head (the registry: live and not
benched) and their load (each node's announced requests in flight, shared evenly among its
offers).

At start the node serves what fits among the experts whose weights are here. Then, every
`placement_interval_s` (jittered by +-50 %, so that nodes decide one after another and each sees
the announcements of those before it), `compute_placement` says what changes, with hysteresis:

- an expert served by fewer than `min_replicas` other nodes, or (on a GPU, never on the CPU)
  whose load per replica reaches `hot_load`, is added when it fits in what the experts kept
  leave free: `compute_served_experts` over those candidates with that room;
- an expert served here is kept while it would be added (below the minimum elsewhere, or hot
  on a GPU) or is among what the node would choose from scratch (`compute_served_experts` over
  everything with the whole budget); the others, cold extras beyond the minimum, are dropped
  coldest first, and only as far as the budget (or `max_experts`) needs the room.

So a pass applied to the same demands changes nothing more (a fixed point: nodes do not flap),
and the node's own choice never moves its own demands (replicas count the other nodes).

An expert whose blob is not here is fetched tile by tile, each tile proven against the chain's
record (`bundle_blobs.fetch_record_blob`), from the nodes serving it first; one that no peer
supplies is left out for a few intervals. Changes are announced at once and logged at info with
their reason.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from chain.blobs import BlobStore
from gpu.devices import ExpertDemand, Tier, compute_served_experts
from node.experts.bundle_blobs import BlobUnavailable, fetch_record_blob
from node.experts.config import ExpertsConfig
from node.experts.inference import Compute
from node.experts.registry import ExpertRegistry
from node.experts.tiles import TileService
from node.experts.weights import ExpertKey, LocalExperts, ModelView, expert_name, is_loadable
from node.experts.wire import ExpertError
from p2p.network import Network

logger = logging.getLogger(__name__)

UNBOUNDED_BUDGET = 1 << 62
"""The budget of a service given none (tests, tools): every candidate fits."""
RETRY_INTERVALS = 4
"""An expert no peer supplied is not tried again for this many placement intervals."""


@dataclass(frozen=True, slots=True)
class PlacementChange:
    """What one placement pass changes."""

    add: tuple[str, ...]
    """Experts to start serving, in priority order."""
    drop: tuple[str, ...]
    """Experts to stop serving, coldest first."""
    reasons: tuple[tuple[str, str], ...]
    """(expert, why) for each change, the additions first."""


def compute_load_per_replica(demand: ExpertDemand) -> float:
    """Load each replica would carry with this node among them."""
    return demand.load / (demand.replicas + 1)


def is_wanted(demand: ExpertDemand, tier: Tier, min_replicas: int, hot_load: float) -> bool:
    """Whether the network needs another replica of the expert from a node of `tier`."""
    if demand.replicas < min_replicas:
        return True
    return tier != Tier.CPU and compute_load_per_replica(demand) >= hot_load


def compute_placement(
    demands: Sequence[ExpertDemand],
    served: Collection[str],
    tier: Tier,
    budget_bytes: int,
    *,
    min_replicas: int = 2,
    max_experts: int | None = None,
    hot_load: float = 2.0,
    unavailable: Collection[str] = frozenset(),
) -> PlacementChange:
    """The experts to add to and drop from `served` (pure, deterministic; see the module).

    `demands` describe every candidate (duplicate names count once, the first); `unavailable`
    names are never added (weights that cannot be had now)."""
    by_name: dict[str, ExpertDemand] = {}
    for demand in demands:
        by_name.setdefault(demand.name, demand)
    served = set(served)
    target = set(compute_served_experts(list(by_name.values()), tier, budget_bytes,
                                        min_replicas=min_replicas, max_experts=max_experts))
    keep = {n for n in served
            if n not in by_name or n in target or is_wanted(by_name[n], tier, min_replicas, hot_load)}
    extras = sorted(served - keep, key=lambda n: (compute_load_per_replica(by_name[n]), n))
    size = {n: d.nbytes for n, d in by_name.items()}
    kept_bytes = sum(size.get(n, 0) for n in keep)
    candidates = [d for d in by_name.values() if d.name not in served and d.name not in unavailable
                  and is_wanted(d, tier, min_replicas, hot_load)]
    slots = None if max_experts is None else max(0, max_experts - len(keep))
    add = compute_served_experts(candidates, tier, max(0, budget_bytes - kept_bytes),
                                 min_replicas=min_replicas, max_experts=slots)
    over_bytes = kept_bytes + sum(size[n] for n in add) + sum(size[n] for n in extras) - budget_bytes
    over_count = 0 if max_experts is None else len(keep) + len(add) + len(extras) - max_experts
    drop: list[str] = []
    for name in extras:
        if over_bytes <= 0 and over_count <= 0:
            break
        drop.append(name)
        over_bytes -= size[name]
        over_count -= 1
    reasons = [(n, _add_reason(by_name[n], min_replicas, hot_load)) for n in add]
    room_for = ", ".join(add) or "the budget"
    reasons += [(n, f"cold extra ({by_name[n].replicas} other replicas, load "
                    f"{compute_load_per_replica(by_name[n]):.2f} per replica): room for {room_for}")
                for n in drop]
    return PlacementChange(tuple(add), tuple(drop), tuple(reasons))


def _add_reason(demand: ExpertDemand, min_replicas: int, hot_load: float) -> str:
    if demand.replicas < min_replicas:
        return f"{demand.replicas} other replicas, fewer than {min_replicas}"
    return f"load {compute_load_per_replica(demand):.2f} per replica, at least {hot_load:g}"


def compute_expert_demands(view: ModelView, registry: ExpertRegistry, now: float,
                           keys: Iterable[ExpertKey]) -> list[ExpertDemand]:
    """One demand per expert of `keys` on the chain: the size of its current weights' record
    (the genesis or snapshot record when its head is not materialised here), the nodes that
    announce its head (live, not benched) and their load."""
    out = []
    for key in keys:
        name = expert_name(key)
        state = view.get_state(name)
        if state is None:
            continue
        record = view.get_record(name, state) or state.record
        nodes = [registry.nodes[n] for n in registry.find_nodes(key, state.head, now)]
        load = sum(e.load / max(1, len(e.offers)) for e in nodes)
        out.append(ExpertDemand(name, record.size, len(nodes), float(load)))
    return out


class PlacedService(Protocol):
    """What placement uses of the expert service (`node.experts.service.ExpertService`)."""

    config: ExpertsConfig
    net: Network
    view: ModelView
    blobs: BlobStore | None
    registry: ExpertRegistry
    local: LocalExperts
    wanted: list[ExpertKey]
    tiles: TileService | None
    compute: Compute
    rng: random.Random
    heads_lock: trio.Lock

    def announce_soon(self) -> None: ...


class Placer:
    """Placement for one expert service (`serve = "auto"`): the first choice, then a pass every
    interval. It changes the service's served set under the service's heads lock."""

    def __init__(self, service: PlacedService, tier: Tier, budget_bytes: int) -> None:
        config = service.config
        self.service = service
        self.tier = tier
        self.budget_bytes = budget_bytes
        self.min_replicas = config.min_replicas
        self.max_experts = config.max_experts or None
        self.hot_load = config.hot_load
        self.interval_s = config.placement_interval_s
        self.unavailable_until: dict[str, float] = {}
        """Experts no peer supplied, and until when they are not tried again."""
        self.listeners: list[Callable[[PlacementChange], None]] = []
        """Called after each pass with what it changed (tests wait on them)."""

    def choose_initial(self, local: list[ExpertKey]) -> list[ExpertKey]:
        """At start: what fits among the experts whose weights are here (nothing is fetched
        before the node has heard the network)."""
        svc = self.service
        demands = compute_expert_demands(svc.view, svc.registry, trio.current_time(), local)
        chosen = set(compute_served_experts(demands, self.tier, self.budget_bytes,
                                            min_replicas=self.min_replicas, max_experts=self.max_experts))
        logger.info("placement: %d of %d local experts chosen (tier %s, budget %d MiB)", len(chosen),
                    len(local), self.tier.name, self.budget_bytes >> 20)
        return [k for k in local if expert_name(k) in chosen]

    async def run(self) -> None:
        """A placement pass every interval until cancelled."""
        while True:
            # a timer, not a wait on a condition: the network changes without telling us
            await trio.sleep(self.interval_s * self.service.rng.uniform(0.5, 1.5))
            try:
                await self.place()
            except Exception:  # the top of a task: a failed pass must not stop serving
                logger.exception("placement pass failed; retried at the next interval")

    def get_candidates(self, now: float) -> list[ExpertKey]:
        """Experts served here, those whose weights are here, and those that can be fetched."""
        svc = self.service
        spec = svc.view.spec
        fetchable = svc.tiles is not None and svc.blobs is not None
        out = []
        for key in ((layer, e) for layer in range(spec.n_layers) for e in range(spec.n_experts)):
            name = expert_name(key)
            if key in svc.wanted or is_loadable(svc.view, name, svc.blobs):
                out.append(key)
            elif (fetchable and self.unavailable_until.get(name, float("-inf")) <= now
                  and svc.view.get_record(name) is not None):
                out.append(key)
        return out

    async def place(self) -> PlacementChange:
        """One pass: compute the change, fetch what is added and not here, apply, announce."""
        svc, now = self.service, trio.current_time()
        keys = {expert_name(k): k for k in self.get_candidates(now)}
        demands = compute_expert_demands(svc.view, svc.registry, now, keys.values())
        served = frozenset(expert_name(k) for k in svc.wanted)
        change = self.compute(demands, served, frozenset())
        missing = [n for n in change.add if not is_loadable(svc.view, n, svc.blobs)]
        if missing:
            for name in missing:
                await self.fetch(keys[name], now)
            remote = frozenset(d.name for d in demands if not is_loadable(svc.view, d.name, svc.blobs))
            change = self.compute(demands, served, remote)  # only what is here now is added
        await self.apply(change, keys)
        return change

    def compute(self, demands: list[ExpertDemand], served: frozenset[str],
                unavailable: Collection[str]) -> PlacementChange:
        return compute_placement(demands, served, self.tier, self.budget_bytes, min_replicas=self.min_replicas,
                                 max_experts=self.max_experts, hot_load=self.hot_load, unavailable=unavailable)

    async def fetch(self, key: ExpertKey, now: float) -> None:
        """Bring an expert's blob here from peers, those serving it first."""
        svc, name = self.service, expert_name(key)
        state = svc.view.get_state(name)
        record = svc.view.get_record(name, state)
        holders = svc.registry.find_nodes(key, state.head, now)
        peers = holders + [p for p in svc.net.peers() if p not in holders]
        try:
            await fetch_record_blob(svc.tiles, svc.net, peers, record, svc.blobs)
        except BlobUnavailable as err:
            logger.info("placement: %s not fetched, left out for %d intervals: %s", name, RETRY_INTERVALS, err)
            self.unavailable_until[name] = now + RETRY_INTERVALS * self.interval_s

    async def apply(self, change: PlacementChange, keys: dict[str, ExpertKey]) -> None:
        """Drop, then add (the room comes first), under the heads lock; announce a change."""
        svc, why = self.service, dict(change.reasons)
        changed = False
        async with svc.heads_lock:
            for name in change.drop:
                svc.local.unserve(keys[name])
                svc.wanted.remove(keys[name])
                logger.info("placement: no longer serving %s: %s", name, why[name])
                changed = True
            for name in change.add:
                try:
                    await svc.compute.run(svc.local.serve, keys[name])
                except ExpertError as err:
                    logger.warning("placement: cannot serve %s: %s", name, err)
                    continue
                svc.wanted = sorted([*svc.wanted, keys[name]])
                logger.info("placement: now serving %s: %s", name, why[name])
                changed = True
        if changed:
            svc.announce_soon()
        for listener in self.listeners:
            listener(change)
