"""Placement with `serve = "auto"`: the pure core (`compute_placement` over `compute_served_experts`)
as properties, and a node on the simulated network that takes an under-replicated expert."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.blobs import BlobStore
from chain.crypto import PrivateKey
from chain.errors import ConfigError
from gpu.devices import ExpertDemand, Tier
from gpu.loader import BlobLoader
from node.experts.config import ExpertsConfig
from node.experts.inference import InlineCompute
from node.experts.placement import PlacementChange, compute_load_per_replica, compute_placement
from node.experts.plan import LOCAL
from node.experts.service import ExpertService
from node.experts.tiles import TileService, run_inline
from node.experts.weights import ChainRecords
from p2p.sim import SimNetworkHub
from tests.node.experts.test_inference import PROMPT, build_weights, reference_tokens, ring

NETWORK = "testnet"
NAMES = [f"layer{i}.expert{j}" for i in range(2) for j in range(6)]


def demand(name: str, nbytes: int = 10, replicas: int = 0, load: float = 0.0) -> ExpertDemand:
    return ExpertDemand(name, nbytes, replicas, load)


# --- the pure core ---------------------------------------------------------------------------


def test_under_replicated_expert_is_added_and_cold_extra_dropped_for_it() -> None:
    demands = [demand("orphan", replicas=0), demand("cold", replicas=3, load=0.5),
               demand("warm", replicas=3, load=9.0)]
    change = compute_placement(demands, {"cold", "warm"}, Tier.TIER_2, 20, hot_load=100.0)
    assert change.add == ("orphan",) and change.drop == ("cold",)  # coldest extra makes the room
    assert dict(change.reasons)["orphan"] == "0 other replicas, fewer than 2"
    assert compute_placement(demands, {"cold", "warm"}, Tier.TIER_2, 30, hot_load=100.0).drop == ()


def test_extras_stay_while_the_budget_does_not_need_them() -> None:
    demands = [demand("a", replicas=5), demand("b", replicas=5)]
    assert compute_placement(demands, {"a", "b"}, Tier.CPU, 20) == PlacementChange((), (), ())
    assert compute_placement(demands, {"a", "b"}, Tier.CPU, 10).drop == ("b",)  # shrank: "a" is the choice
    assert compute_placement(demands, {"a", "b"}, Tier.CPU, 20, max_experts=1).drop == ("b",)


def test_gpu_replicates_a_hot_expert_cpu_does_not() -> None:
    demands = [demand("hot", replicas=3, load=40.0), demand("cold", replicas=3, load=1.0)]
    assert compute_placement(demands, set(), Tier.TIER_3, 100, hot_load=5.0).add == ("hot",)
    assert compute_placement(demands, set(), Tier.CPU, 100, hot_load=5.0).add == ()


def test_unavailable_expert_is_never_added() -> None:
    demands = [demand("gone", replicas=0), demand("here", replicas=1)]
    assert compute_placement(demands, set(), Tier.CPU, 100, unavailable={"gone"}).add == ("here",)


def test_invalid_placement_settings() -> None:
    with pytest.raises(ConfigError):
        ExpertsConfig(min_replicas=-1)
    with pytest.raises(ConfigError):
        ExpertsConfig(placement_interval_s=0.0)


@st.composite
def placements(draw: st.DrawFn) -> dict:
    demands = draw(st.lists(st.builds(
        ExpertDemand, name=st.sampled_from(NAMES), nbytes=st.integers(0, 100), replicas=st.integers(0, 5),
        load=st.floats(0, 100, allow_nan=False)), max_size=16))
    names = sorted({d.name for d in demands})
    return {
        "demands": demands,
        "served": frozenset(draw(st.lists(st.sampled_from(names), unique=True)) if names else []),
        "tier": draw(st.sampled_from(list(Tier))),
        "budget_bytes": draw(st.integers(0, 400)),
        "min_replicas": draw(st.integers(0, 3)),
        "max_experts": draw(st.none() | st.integers(0, 8)),
        "hot_load": draw(st.floats(0, 60, allow_nan=False)),
        "unavailable": frozenset(draw(st.lists(st.sampled_from(names), max_size=3)) if names else []),
    }


def place(case: dict, **over: object) -> PlacementChange:
    args = {**case, **over}
    return compute_placement(args.pop("demands"), args.pop("served"), args.pop("tier"), args.pop("budget_bytes"),
                             **args)


@settings(max_examples=400, deadline=None)
@given(case=placements())
def test_placement_properties(case: dict) -> None:
    change = place(case)
    by_name: dict[str, ExpertDemand] = {}
    for d in case["demands"]:
        by_name.setdefault(d.name, d)
    served, budget, cap = case["served"], case["budget_bytes"], case["max_experts"]
    after = (served - set(change.drop)) | set(change.add)
    used_before = sum(by_name[n].nbytes for n in served)
    used = sum(by_name[n].nbytes for n in after)
    # a change, not a restatement: adds are new and obtainable, drops were served
    assert not set(change.add) & served and set(change.drop) <= served
    assert not set(change.add) & case["unavailable"] and len(set(change.add)) == len(change.add)
    assert [n for n, _ in change.reasons] == [*change.add, *change.drop]
    # choices fit the budget (or never grow past what was already held beyond it)
    assert used <= max(budget, used_before)
    if used_before <= budget:
        assert used <= budget
    if cap is not None:
        assert len(after) <= max(cap, len(served))
    # no expert below its minimum replicas while capacity exists for it
    for name, d in by_name.items():
        if d.replicas < case["min_replicas"] and name not in after and name not in case["unavailable"]:
            assert d.nbytes > budget - used or (cap is not None and len(after) >= cap)
    # drops: never an expert below the minimum elsewhere, and no more than the room needs
    for name in change.drop:
        assert by_name[name].replicas >= case["min_replicas"]
    if change.drop:
        last = by_name[change.drop[-1]]
        assert used + last.nbytes > budget or (cap is not None and len(after) + 1 > cap)
    # a CPU node never takes what is only hot: it adds under-replicated experts alone
    for name in change.add:
        d = by_name[name]
        if case["tier"] == Tier.CPU:
            assert d.replicas < case["min_replicas"]
        else:
            assert d.replicas < case["min_replicas"] or compute_load_per_replica(d) >= case["hot_load"]
    # deterministic, whatever the order of the input; a fixed point once applied
    assert change == place(case)
    assert change == place(case, demands=list(by_name.values())[::-1])
    assert place(case, served=frozenset(after)) == PlacementChange((), (), ())


# --- on the simulated network ----------------------------------------------------------------


def expert_only_store(root: Path, source: BlobStore, view) -> BlobStore:
    """A blob store with the shared blocks only: every expert must come from peers."""
    store = BlobStore(root)
    for name, state in view.states.items():
        if ".expert" not in name:
            store.put(source.get(state.record.blob_id))
    return store


def make_node(net, view, blobs, serve, budget_bytes=None, **config) -> ExpertService:
    """A service with its own tile service (peers fetch from it, it fetches from them)."""
    tiles = TileService(NETWORK, blobs, BlobLoader(), ChainRecords(view), offload=run_inline)
    settings = {"spot_check": 0.0, "local_fallback": False, "request_timeout_s": 2.0, **config}
    return ExpertService(net, PrivateKey.from_label(f"node-{net.local_id}"), view, blobs,
                         ExpertsConfig(serve=serve, **settings), network_id=NETWORK, clock=net,
                         compute=InlineCompute(), rng=random.Random(net.local_id), tiles=tiles,
                         budget_bytes=budget_bytes)


async def test_auto_node_takes_an_under_replicated_expert_and_generation_is_unchanged(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="node.experts.placement")
    view, blobs, model = build_weights(tmp_path / "blobs")
    size = view.states["layer0.expert0"].record.size
    mine = expert_only_store(tmp_path / "auto", blobs, view)
    async with SimNetworkHub(seed=7) as hub:
        # n0 serves every expert, n1 experts 0 and 1: experts 2 and 3 have one replica
        servers = [make_node(hub.add_node("n0"), view, blobs, ring(0) + ring(2)),
                   make_node(hub.add_node("n1"), view, blobs, ring(0))]
        auto = make_node(hub.add_node("auto"), view, mine, ("auto",), budget_bytes=2 * size + size // 2,
                         min_replicas=2, placement_interval_s=30.0)
        client = make_node(hub.add_node("client"), view, blobs, ("none",))
        heard, placed = trio.Event(), trio.Event()
        placed_at: list[float] = []
        auto.placer.listeners.append(lambda change: (placed_at.append(trio.current_time()), placed.set()))
        hear = client.on_announcement

        async def on_announcement(sender, data):
            verdict = await hear(sender, data)
            if "auto" in client.registry.nodes:
                heard.set()
            return verdict

        client.on_announcement = on_announcement
        async with trio.open_nursery() as nursery:
            for svc in [*servers, auto, client]:
                await nursery.start(svc.run)
            assert auto.local.served == {}  # no expert weights here at start
            for svc in servers:
                await svc.announce()
            await hub.wait_idle()
            with trio.fail_after(60):  # the first pass: 15 to 45 s after start
                await placed.wait()
                await heard.wait()
            assert trio.current_time() - placed_at[0] < 1.0  # announced at once, not at the next interval
            # CPU order: fewest other replicas (1), coldest, then by name; the budget holds two
            assert sorted(auto.local.served) == [(0, 2), (0, 3)]
            assert set(client.registry.nodes["auto"].offers) == {(0, 2), (0, 3)}
            assert all(mine.has(view.states[f"layer0.expert{e}"].record.blob_id) for e in (2, 3))
            assert await auto.placer.place() == PlacementChange((), (), ())  # full: nothing more
            from_client = await client.generate_tokens(PROMPT, 10)
            from_auto = await auto.generate_tokens(PROMPT, 10)
            nursery.cancel_scope.cancel()
    expected = reference_tokens(model, PROMPT, 10)
    assert from_client.tokens == expected and from_auto.tokens == expected
    local = {e for step in from_auto.layers for e, node in step[0].items() if node == LOCAL}
    assert local and local <= {2, 3}  # the fetched experts ran on the auto node
    assert "placement: now serving layer0.expert2: 1 other replicas, fewer than 2" in caplog.messages

