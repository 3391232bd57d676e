"""Plans of distributed inference: which node computes which expert's rows, for one layer. Pure.

The router's choices become routes (expert -> rows routed to it); a plan groups experts by the
node that computes them, so that each node gets one request per layer. An expert this node
serves is computed here; otherwise it goes to a ranked candidate, preferring one already in the
plan (fewer round trips); failing all candidates, to local compute from weights this node can
load; failing that the plan cannot be made (`NoServingNode`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from node.experts.wire import ExpertError

LOCAL = ""
"""The node name of local compute in a plan."""


class NoServingNode(ExpertError):
    """Routed experts that no reachable node serves and this node cannot load."""

    def __init__(self, layer: int, experts: Sequence[int]) -> None:
        self.layer = layer
        self.experts = tuple(experts)
        super().__init__(f"layer {layer}: no node serves expert(s) {list(self.experts)}")


@dataclass(frozen=True, slots=True)
class NodeTask:
    """One request (or the local share) of a layer."""

    node: str
    """Peer id, or LOCAL."""
    experts: dict[int, tuple[int, ...]]
    """Expert -> the rows (token indices) it computes, ascending."""


@dataclass(frozen=True, slots=True)
class LayerPlan:
    layer: int
    tasks: tuple[NodeTask, ...]
    """One per node, LOCAL first if present, then by peer id."""

    def assignment(self) -> dict[int, str]:
        """Expert -> node."""
        return {e: t.node for t in self.tasks for e in t.experts}


def compute_routes(choices: Iterable[Sequence[int]]) -> dict[int, tuple[int, ...]]:
    """Expert -> rows routed to it, from each row's chosen experts (row i chose `choices[i]`)."""
    routes: dict[int, list[int]] = {}
    for row, chosen in enumerate(choices):
        for expert in dict.fromkeys(chosen):
            routes.setdefault(int(expert), []).append(row)
    return {e: tuple(rows) for e, rows in sorted(routes.items())}


def build_layer_plan(
    layer: int,
    routes: Mapping[int, Sequence[int]],
    served: Iterable[int],
    candidates: Mapping[int, Sequence[str]],
    loadable: Iterable[int] = (),
) -> LayerPlan:
    """Assign every routed expert to exactly one node; one task per node."""
    served, loadable = set(served), set(loadable)
    assigned: dict[str, dict[int, tuple[int, ...]]] = {}
    missing = []
    for expert in sorted(routes):
        rows = tuple(routes[expert])
        node = _choose_node(expert, served, candidates.get(expert, ()), loadable, assigned)
        if node is None:
            missing.append(expert)
        else:
            assigned.setdefault(node, {})[expert] = rows
    if missing:
        raise NoServingNode(layer, missing)
    order = sorted(assigned, key=lambda n: (n != LOCAL, n))
    return LayerPlan(layer, tuple(NodeTask(n, assigned[n]) for n in order))


def _choose_node(expert: int, served: set[int], ranked: Sequence[str], loadable: set[int],
                 assigned: Mapping[str, object]) -> str | None:
    if expert in served:
        return LOCAL
    ranked = [n for n in ranked if n != LOCAL]
    for node in ranked:
        if node in assigned:
            return node
    if ranked:
        return ranked[0]
    if expert in loadable:
        return LOCAL
    return None
