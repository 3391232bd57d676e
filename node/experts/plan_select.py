"""Choosing a plan type for one generation: pipeline chains, delegates, signatures, a plan cache. Pure.

Three plan types (`node.experts.plans` runs them):
- `dynamic`: the generating node runs embed, attention, routers and head; per token and layer
  one request per node serving a routed expert (`node.experts.plan`).
- `pipeline`: a chain of stages, each a node serving every expert of a contiguous range of
  layers, covers [0, n_layers); a token travels the chain (round trips per token = remote
  stages: a range this node serves whole runs here, a LOCAL stage). `find_stage_chain`: fewest
  remote stages, then the lowest summed expected cost, then fewest stages, then peer ids.
- `static_delegate`: one node runs the whole generation (under `auto` without delegation: its
  experts local, the rest through a chain or dynamic from there): round trips seen by the
  requester, 1 per generation. `choose_delegate`: the node covering most of the prompt's expert
  group, then most experts overall, then cost, then id.

`auto` (`select_plan`) picks by a rule, not a measurement: dynamic when this node serves the
whole group itself (no round trip), else a pipeline chain (one per stage and token), else
dynamic. It never delegates: a delegate is chosen on its own announcements and only greedy
generations within the window can be spot-checked (`node.experts.delegate`), so handing the
default path to one would trust it unchecked; `static_delegate` is asked for explicitly, and
refused when the prompt or the new tokens exceed what one delegation carries. A plan's
signature is the hash of its type, nodes and ranges and the heads digest.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from chain import codec
from chain.codec import U16, Hash32, Seq, Str, wire
from node.experts.plan import LOCAL
from node.experts.plan_wire import MAX_DELEGATE_TOKENS, MAX_PROMPT_TOKENS, PlanUnsupported
from node.experts.registry import ExpertKey, ExpertRegistry
from node.experts.wire import MAX_PEER_ID

DYNAMIC, STATIC_DELEGATE, PIPELINE, AUTO = "dynamic", "static_delegate", "pipeline", "auto"
PLAN_TYPES = (DYNAMIC, STATIC_DELEGATE, PIPELINE)
PLAN_CACHE_ENTRIES = 64


@dataclass(frozen=True, slots=True)
class Candidate:
    """A live serving node as the planner sees it."""

    node: str
    experts: frozenset[ExpertKey]
    """Experts it serves at the pinned heads."""
    cost: float
    """Expected seconds per request (`NodeEntry.expected_cost`)."""


@wire
class Stage:
    node: Str(MAX_PEER_ID)
    first: U16
    """First layer it runs."""
    end: U16
    """One past its last layer."""


@wire
class PlanBody:
    """What a plan's signature covers."""

    kind: Str(32)
    stages: Seq(Stage, 1 << 16)
    """The pipeline's chain; for a delegate one stage over every layer; none for dynamic."""
    heads_digest: Hash32


@dataclass(frozen=True, slots=True)
class PlanChoice:
    kind: str
    stages: tuple[Stage, ...]
    heads_digest: bytes

    @property
    def signature(self) -> bytes:
        return codec.hash_of(PlanBody(self.kind, self.stages, self.heads_digest))

    @property
    def nodes(self) -> list[str]:
        return [s.node for s in self.stages]

    def describe(self) -> dict:
        return {"type": self.kind, "signature": self.signature.hex(), "nodes": self.nodes,
                "stages": [{"node": s.node, "layers": [s.first, s.end]} for s in self.stages]}


def get_candidates(registry: ExpertRegistry, heads: Mapping[ExpertKey, bytes], now: float,
                   exclude: Iterable[str] = ()) -> list[Candidate]:
    """Live, not benched, not excluded nodes, with the experts they serve at `heads`; by peer id."""
    exclude = set(exclude)
    out = []
    for entry in sorted(registry.nodes.values(), key=lambda e: e.node):
        if entry.expires_at <= now or entry.benched_until > now or entry.node in exclude:
            continue
        experts = frozenset(k for k, h in entry.offers.items() if heads.get(k) == h)
        if experts:
            out.append(Candidate(entry.node, experts, entry.expected_cost()))
    return out


def compute_full_layers(experts: frozenset[ExpertKey], n_layers: int, n_experts: int) -> frozenset[int]:
    """The layers of which every expert is in `experts`."""
    return frozenset(layer for layer in range(n_layers)
                     if all((layer, e) in experts for e in range(n_experts)))


def find_stage_chain(candidates: Iterable[Candidate], n_layers: int, n_experts: int) -> tuple[Stage, ...] | None:
    """Stages covering [0, n_layers), each a node serving every expert of its range: fewest
    remote stages (a LOCAL stage, this node's own range, costs no round trip), then lowest
    summed cost, then fewest stages, then lexicographic peer ids; None when no chain exists."""
    full = {c.node: (compute_full_layers(c.experts, n_layers, n_experts), c.cost) for c in candidates}
    best: list[tuple[int, float, int, tuple[str, ...], tuple[Stage, ...]] | None] = [None] * (n_layers + 1)
    best[0] = (0, 0.0, 0, (), ())
    for first in range(n_layers):
        here = best[first]
        if here is None:
            continue
        for node, (layers, cost) in sorted(full.items()):
            end = first
            while end < n_layers and end in layers:
                end += 1
                option = (here[0] + (node != LOCAL), here[1] + cost, here[2] + 1, (*here[3], node),
                          (*here[4], Stage(node, first, end)))
                if best[end] is None or option[:4] < best[end][:4]:
                    best[end] = option
    return None if best[n_layers] is None else best[n_layers][4]


def choose_delegate(candidates: Iterable[Candidate], group: frozenset[ExpertKey]) -> Candidate | None:
    """The node covering most of `group`, then most experts, then the lowest cost, then peer id."""
    ranked = sorted(candidates, key=lambda c: (-len(c.experts & group), -len(c.experts), c.cost, c.node))
    return ranked[0] if ranked else None


def validate_delegation(prompt_tokens: int, max_new_tokens: int) -> None:
    """`PlanUnsupported` for a generation one delegate request cannot carry."""
    if prompt_tokens > MAX_PROMPT_TOKENS:
        raise PlanUnsupported(STATIC_DELEGATE, f"a prompt of {prompt_tokens} tokens: a delegation carries at most "
                                               f"{MAX_PROMPT_TOKENS}")
    if max_new_tokens > MAX_DELEGATE_TOKENS:
        raise PlanUnsupported(STATIC_DELEGATE, f"{max_new_tokens} new tokens: a delegation asks at most "
                                               f"{MAX_DELEGATE_TOKENS}")


def select_plan(asked: str, candidates: list[Candidate], group: frozenset[ExpertKey], n_layers: int,
                n_experts: int, heads_digest: bytes, allow_delegate: bool = True,
                local: frozenset[ExpertKey] = frozenset(), prompt_tokens: int = 1,
                max_new_tokens: int = 1) -> PlanChoice:
    """The plan to run for `asked` (a plan type or "auto"); `PlanUnsupported` when the type asked
    cannot run on these candidates (dynamic always can: its own failures come later, per layer).
    `local`: the experts this node serves (the whole group: auto runs dynamic, no round trip;
    whole layers: a LOCAL stage of a pipeline chain). Auto never delegates (see the module)."""
    if asked not in (*PLAN_TYPES, AUTO):
        raise PlanUnsupported(asked, f"unknown plan type; one of {', '.join((AUTO, *PLAN_TYPES))}")
    if asked == DYNAMIC or (asked == AUTO and group and group <= local):
        return PlanChoice(DYNAMIC, (), heads_digest)
    if asked == STATIC_DELEGATE:
        if not allow_delegate:
            raise PlanUnsupported(asked, "tokens were generated already: a delegate would restart")
        validate_delegation(prompt_tokens, max_new_tokens)
        delegate = choose_delegate(candidates, group)
        if delegate is None:
            raise PlanUnsupported(asked, "no serving node to delegate to")
        return PlanChoice(STATIC_DELEGATE, (Stage(delegate.node, 0, n_layers),), heads_digest)
    chain = find_stage_chain([*candidates, Candidate(LOCAL, local, 0.0)] if local else candidates,
                             n_layers, n_experts)
    if chain is not None:
        return PlanChoice(PIPELINE, chain, heads_digest)
    if asked == PIPELINE:
        raise PlanUnsupported(asked, f"no chain of nodes each serving every expert of a range covers "
                                     f"layers [0, {n_layers})")
    return PlanChoice(DYNAMIC, (), heads_digest)


def is_plan_live(choice: PlanChoice, candidates: Iterable[Candidate], n_experts: int) -> bool:
    """Every node of the plan still a candidate, every stage still serving its whole range
    (a delegate: still serving something)."""
    by_node = {c.node: c for c in candidates}
    for stage in choice.stages:
        c = by_node.get(stage.node)
        if c is None:
            return False
        if choice.kind == PIPELINE and not all((layer, e) in c.experts for layer in range(stage.first, stage.end)
                                               for e in range(n_experts)):
            return False
    return True


PlanKey = tuple[str, bool, frozenset[ExpertKey], bytes]
"""(type asked, delegation allowed, expert group, heads digest)."""


class PlanCache:
    """The last plans chosen, by `PlanKey`; least recently used out."""

    def __init__(self, max_entries: int = PLAN_CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[PlanKey, PlanChoice] = OrderedDict()

    def get(self, key: PlanKey) -> PlanChoice | None:
        choice = self.entries.get(key)
        if choice is not None:
            self.entries.move_to_end(key)
        return choice

    def put(self, key: PlanKey, choice: PlanChoice) -> None:
        self.entries[key] = choice
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    def drop(self, key: PlanKey) -> None:
        self.entries.pop(key, None)
