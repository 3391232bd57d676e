"""Expert registry ranking and expiry, announcements (signature, binding, verdicts), layer plans
(unit and hypothesis properties), the devnet's expert assignment and the [experts] config."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chain import codec
from chain.crypto import PrivateKey
from chain.errors import ConfigError
from chain.tensors import ModelSpec
from node.app.config import NodeConfig, load_config, save_config
from node.app.devnet import assign_experts
from node.experts.config import ExpertsConfig
from node.experts.plan import LOCAL, NoServingNode, build_layer_plan, compute_routes
from node.experts.plan_select import Candidate, find_stage_chain
from node.experts.registry import BENCH_STRIKES, ExpertRegistry
from node.experts.wire import (
    AnnouncementBody,
    ExpertAnnouncement,
    ExpertOffer,
    InvalidExpertMessage,
    sign_announcement,
    validate_announcement,
)

H1, H2 = b"\x01" * 32, b"\x02" * 32
NETWORK = "testnet"


def announcement(node: str, offers: list[tuple[int, int, bytes]], time_ms: int = 1000, load: int = 0,
                 ttl_ms: int = 30_000, key: PrivateKey | None = None) -> ExpertAnnouncement:
    key = key or PrivateKey.from_label(node)
    body = AnnouncementBody(node, key.public_key, time_ms, ttl_ms, 0, load,
                            tuple(ExpertOffer(layer, e, h) for layer, e, h in sorted(offers)))
    return sign_announcement(body, key, NETWORK)


# --- registry ---------------------------------------------------------------------------------


def test_registry_ranks_by_latency_and_load() -> None:
    reg = ExpertRegistry()
    for node, load in (("a", 0), ("b", 0), ("c", 3)):
        assert reg.on_announcement(announcement(node, [(0, 1, H1)], load=load), now=0.0)
    assert reg.find_nodes((0, 1), H1, now=1.0) == ["a", "b", "c"]  # unmeasured: by load, then id
    reg.record_latency("a", 0.5)
    reg.record_latency("b", 0.01)
    reg.record_latency("c", 0.01)
    assert reg.find_nodes((0, 1), H1, now=1.0) == ["b", "c", "a"]  # c: 0.01 * (1 + 3) < 0.5
    assert reg.find_nodes((0, 1), H2, now=1.0) == []  # other weights
    assert reg.find_nodes((0, 2), H1, now=1.0) == []
    assert reg.find_nodes((0, 1), H1, now=1.0, exclude={"b"}) == ["c", "a"]


def test_registry_strikes_sink_and_bench_a_node() -> None:
    reg = ExpertRegistry(bench_s=10.0)
    for node in ("a", "b"):
        reg.on_announcement(announcement(node, [(0, 0, H1)]), now=0.0)
    reg.record_failure("a", now=0.0)
    assert reg.find_nodes((0, 0), H1, now=0.0) == ["b", "a"]
    for _ in range(BENCH_STRIKES - 1):
        reg.record_failure("a", now=1.0)
    assert reg.find_nodes((0, 0), H1, now=2.0) == ["b"]
    assert reg.find_nodes((0, 0), H1, now=11.5) == ["b", "a"]  # back after the bench, still last


def test_registry_keeps_the_newest_and_expires() -> None:
    reg = ExpertRegistry()
    assert reg.on_announcement(announcement("a", [(0, 0, H1)], time_ms=2000, ttl_ms=5000), now=0.0)
    assert not reg.on_announcement(announcement("a", [(0, 0, H2)], time_ms=1000), now=0.0)  # older
    assert reg.find_nodes((0, 0), H1, now=1.0) == ["a"]
    assert reg.on_announcement(announcement("a", [(0, 0, H2)], time_ms=3000, ttl_ms=5000), now=1.0)
    assert reg.find_nodes((0, 0), H1, now=1.0) == [] and reg.find_nodes((0, 0), H2, now=1.0) == ["a"]
    assert reg.find_nodes((0, 0), H2, now=6.0) == []  # expired, even before expire() runs
    assert reg.expire(now=6.0) == ["a"] and not reg.nodes
    assert reg.describe(now=0.0) == []


def test_announcement_signature_and_order() -> None:
    ann = announcement("a", [(0, 1, H1), (1, 0, H1)])
    validate_announcement(ann, NETWORK)
    with pytest.raises(InvalidExpertMessage):
        validate_announcement(ann, "othernet")  # a signature never crosses networks
    forged = ExpertAnnouncement(AnnouncementBody(**{**{f: getattr(ann.body, f) for f in (
        "node", "public_key", "time_ms", "ttl_ms", "tier", "load", "offers")}, "load": 9}), ann.signature)
    with pytest.raises(InvalidExpertMessage):
        validate_announcement(forged, NETWORK)
    key = PrivateKey.from_label("a")
    unsorted = sign_announcement(AnnouncementBody("a", key.public_key, 1, 1, 0, 0, (
        ExpertOffer(1, 0, H1), ExpertOffer(0, 1, H1))), key, NETWORK)
    with pytest.raises(InvalidExpertMessage):
        validate_announcement(unsorted, NETWORK)
    assert codec.decode(ExpertAnnouncement, codec.encode(ann)) == ann


def test_libp2p_binding_refuses_another_peers_key() -> None:
    from p2p.libp2p_identity import compute_peer_id, is_libp2p_identity

    key, other = PrivateKey.from_label("x"), PrivateKey.from_label("y")
    assert is_libp2p_identity(compute_peer_id(key.seed), key.public_key)
    assert not is_libp2p_identity(compute_peer_id(other.seed), key.public_key)


# --- plans ------------------------------------------------------------------------------------


def test_plan_prefers_local_then_nodes_already_planned() -> None:
    routes = {0: (0, 2), 1: (1,), 2: (0, 1), 3: (2,)}
    candidates = {1: ["p", "q"], 2: ["q", "p"], 3: ["r", "p"]}
    plan = build_layer_plan(0, routes, served=[0], candidates=candidates)
    assert plan.assignment() == {0: LOCAL, 1: "p", 2: "p", 3: "p"}  # one request instead of three
    assert [t.node for t in plan.tasks] == [LOCAL, "p"]


def test_plan_falls_back_to_loadable_and_fails_without() -> None:
    plan = build_layer_plan(1, {0: (0,), 1: (0,)}, served=[], candidates={0: ["p"]}, loadable=[1])
    assert plan.assignment() == {0: "p", 1: LOCAL}
    with pytest.raises(NoServingNode) as err:
        build_layer_plan(1, {0: (0,), 1: (0,)}, served=[], candidates={0: ["p"]})
    assert err.value.experts == (1,)


def test_compute_routes_from_choices() -> None:
    assert compute_routes([[2, 0], [0, 1], [2, 1]]) == {0: (0, 1), 1: (1, 2), 2: (0, 2)}


NODES = ["n0", "n1", "n2", "n3", "n4"]


@st.composite
def routing_cases(draw):
    n_experts = draw(st.integers(1, 8))
    k = draw(st.integers(1, n_experts))
    rows = draw(st.integers(1, 12))
    choices = [draw(st.lists(st.integers(0, n_experts - 1), min_size=k, max_size=k, unique=True))
               for _ in range(rows)]
    served = draw(st.sets(st.integers(0, n_experts - 1)))
    candidates = {e: draw(st.lists(st.sampled_from(NODES), min_size=1, max_size=3, unique=True))
                  for e in range(n_experts)}
    return choices, served, candidates


@given(routing_cases())
def test_plan_covers_every_routed_token_exactly_once(case) -> None:
    choices, served, candidates = case
    plan = build_layer_plan(0, compute_routes(choices), served, candidates)
    pairs = [(row, e) for t in plan.tasks for e, rows in t.experts.items() for row in rows]
    assert sorted(pairs) == sorted((row, e) for row, chosen in enumerate(choices) for e in chosen)
    nodes = [t.node for t in plan.tasks]
    assert len(nodes) == len(set(nodes)), "one request per node per layer"
    for t in plan.tasks:
        for e in t.experts:
            assert (t.node == LOCAL) == (e in served)
            assert t.node == LOCAL or t.node in candidates[e]


# --- devnet assignment and config -------------------------------------------------------------


@pytest.mark.parametrize("nodes, n_experts", [(4, 4), (4, 8), (3, 4), (5, 4), (3, 3)])
def test_devnet_assignment_spreads_experts_with_two_replicas(nodes: int, n_experts: int) -> None:
    spec = ModelSpec("m", "0.1.0", 256, 16, 2, 2, n_experts, 1, 16, 8, 1)
    served = assign_experts(spec, nodes)
    every = {f"layer{layer}.expert{e}" for layer in range(2) for e in range(n_experts)}
    assert all(set(s) < every for s in served), "no node holds them all"
    for name in every:
        assert sum(name in s for s in served) == 2
    if nodes == n_experts == 4:
        assert set(served[1]) == {"layer0.expert1", "layer0.expert2", "layer1.expert1", "layer1.expert2"}


@pytest.mark.parametrize("nodes, n_layers", [(4, 2), (4, 4), (6, 4), (4, 1), (2, 4)])
def test_devnet_ranges_layout_makes_whole_layer_stages_with_two_replicas(nodes: int, n_layers: int) -> None:
    spec = ModelSpec("m", "0.1.0", 256, 16, n_layers, 2, 4, 1, 16, 8, 1)
    served = assign_experts(spec, nodes, layout="ranges")
    every = {f"layer{layer}.expert{e}" for layer in range(n_layers) for e in range(4)}
    for name in every:
        assert sum(name in s for s in served) >= 2
    ranges = min(nodes // 2, n_layers)
    if ranges > 1:
        assert all(set(s) < every for s in served), "no node holds them all"
    keys = [frozenset((int(n[5:n.index(".")]), int(n.rsplit("t", 1)[1])) for n in s) for s in served]
    chain = find_stage_chain([Candidate(f"n{i}", k, 0.0) for i, k in enumerate(keys)], n_layers, 4)
    assert chain is not None and len(chain) == ranges
    with pytest.raises(ConfigError):
        assign_experts(spec, nodes, layout="spiral")


def test_experts_config_round_trip_and_auto_string(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    config = NodeConfig.for_tests()
    assert config.experts.serve == ("auto",)
    save_config(config, path)
    assert load_config(path) == config
    text = path.read_text().replace('serve = [\n    "auto",\n]', 'serve = "none"')
    text = text.replace("spot_check = 0.05", "spot_check = 1")
    path.write_text(text)
    loaded = load_config(path).experts
    assert loaded.serve == ("none",) and loaded.spot_check == 1.0
    path.write_text(text.replace('serve = "none"', "serve = 3"))
    with pytest.raises(ConfigError):
        load_config(path)
    assert ExpertsConfig(serve=("layer0.expert1",)).serve == ("layer0.expert1",)
