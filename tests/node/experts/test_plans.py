"""The plan types over the simulated network: exact tokens for every type, selection, fallback, refusals.

Layout `by_layer`: nodes a0, b0 serve every expert of layer 0, a1, b1 every expert of layer 1
(two replicas each; a pipeline chain is two stages); the client serves nothing. Every test runs
under `autojump_clock` with inline compute; waits are on conditions, never sleeps.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import trio
import trio.testing

from chain import codec
from node.experts.delegate import MAX_DELEGATE_WORK, DelegateServer
from node.experts.inference import Generation
from node.experts.plan import NoServingNode
from node.experts.plan_select import AUTO, DYNAMIC, PIPELINE, STATIC_DELEGATE, Stage
from node.experts.plan_wire import (
    DelegateRequest,
    HeadsDiffer,
    PlanFailed,
    PlansExhausted,
    PlanUnsupported,
    StageBusy,
    StageRequest,
    compute_heads_digest,
    encode_temperature,
)
from node.experts.service import ExpertService
from node.experts.stage import PipelineRunner
from node.experts.weights import get_expert_heads
from node.experts.wire import encode_rows
from p2p.network import RemoteError
from p2p.sim import SimNetworkHub
from tests.node.experts.test_inference import (
    PROMPT,
    SPEC,
    build_weights,
    make_service,
    reference_tokens,
    ring,
    start_all,
)

S = SPEC.max_seq_len


def whole_layer(layer: int) -> tuple[str, ...]:
    return tuple(f"layer{layer}.expert{e}" for e in range(SPEC.n_experts))


BY_LAYER = {"a0": whole_layer(0), "b0": whole_layer(0), "a1": whole_layer(1), "b1": whole_layer(1)}


def build(hub: SimNetworkHub, view, blobs, layout: dict[str, tuple[str, ...]], cls=ExpertService,
          **config) -> tuple[ExpertService, dict[str, ExpertService]]:
    servers = {name: make_service(hub.add_node(name), view, blobs, serve, cls=cls.get(name, ExpertService)
                                  if isinstance(cls, dict) else cls, **config)
               for name, serve in layout.items()}
    client = make_service(hub.add_node("client"), view, blobs, ("none",), **config)
    return client, servers


@pytest.mark.parametrize("plan", [DYNAMIC, PIPELINE, STATIC_DELEGATE])
@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("length", [7, S - 1])
async def test_every_plan_matches_single_process(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, plan: str, use_cache: bool, length: int
) -> None:
    """Greedy and seeded; with length S-1 the 6 tokens run past the window (stages go stateless)."""
    view, blobs, model = build_weights(tmp_path / "blobs")
    prompt = (PROMPT * 2)[:length]
    async with SimNetworkHub(seed=length) as hub:
        client, servers = build(hub, view, blobs, BY_LAYER)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers.values(), client])
            greedy = await client.generate_tokens(prompt, 6, use_cache=use_cache, plan=plan)
            sampled = await client.generate_tokens(prompt, 6, 0.8, 42, use_cache=use_cache, plan=plan)
            nursery.cancel_scope.cancel()
    assert greedy.tokens == reference_tokens(model, prompt, 6, use_cache=use_cache)
    assert sampled.tokens == reference_tokens(model, prompt, 6, 0.8, 42, use_cache=use_cache)
    for gen in (greedy, sampled):
        assert gen.plan["type"] == plan and not gen.fallbacks
        if plan == PIPELINE:
            assert gen.round_trips == 6 * 2 and len(gen.plan["stages"]) == 2  # one per stage and token
            assert gen.remote_round_trips == 0  # each stage serves its whole layer
            assert {n for step in gen.layers for used in step for n in used.values()} <= set(BY_LAYER)
        elif plan == STATIC_DELEGATE:
            assert gen.round_trips == 1  # the delegate runs its layer here and the other through a stage:
            assert gen.remote_round_trips == 6  # one round trip per token
        else:
            assert gen.round_trips >= 6 * SPEC.n_layers
        assert len(gen.layers) == 6 and all(len(step) == SPEC.n_layers for step in gen.layers)
    assert all(not s.stages.sessions for s in servers.values()), "sessions are closed at the end"


async def test_auto_picks_pipeline_then_dynamic_and_never_a_delegate(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A node announcing every expert is not handed the generation unchecked: auto runs it as a
    one-stage pipeline (each step checkable). Auto's dynamic choice is not cached."""
    view, blobs, model = build_weights(tmp_path / "blobs")
    everything = tuple(n for layer in range(SPEC.n_layers) for n in whole_layer(layer))
    expected = reference_tokens(model, PROMPT, 4)
    for layout, kind in (({**BY_LAYER, "full": everything}, PIPELINE), (BY_LAYER, PIPELINE),
                         ({f"n{i}": ring(i) for i in range(4)}, DYNAMIC)):
        async with SimNetworkHub(seed=3) as hub:
            client, servers = build(hub, view, blobs, layout)
            async with trio.open_nursery() as nursery:
                await start_all(nursery, hub, [*servers.values(), client])
                first = await client.generate(bytes(PROMPT).decode(), 4)
                again = await client.generate(bytes(PROMPT).decode(), 4)
                if kind == DYNAMIC:
                    with pytest.raises(PlanUnsupported, match="no chain"):
                        await client.generate_tokens(PROMPT, 4, plan=PIPELINE)
                nursery.cancel_scope.cancel()
        assert first["plan"]["type"] == kind and first["tokens"] == expected == again["tokens"]
        assert again["plan"]["signature"] == first["plan"]["signature"]
        assert all(s.delegates.served == 0 for s in servers.values())
        if kind == DYNAMIC:
            assert not client.plan_cache.entries  # a dynamic choice is made afresh each time
        else:
            assert len(client.plan_cache.entries) == 1  # the repeated prompt reused the cached plan
        if "full" in layout:
            assert first["plan"]["nodes"] == ["full"] and first["round_trips"] == 4  # one stage, one per token


async def test_auto_does_not_pin_dynamic_before_announcements(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Before any announcement auto falls back to dynamic; once a chain is announced, the next
    generation of the same prompt runs it (the early dynamic choice was not cached)."""
    view, blobs, _ = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=4) as hub:
        client, servers = build(hub, view, blobs, BY_LAYER)
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            with pytest.raises(NoServingNode):  # nobody serves anything yet: dynamic, and it fails
                await client.generate_tokens(PROMPT, 2, plan=AUTO)
            assert not client.plan_cache.entries
            await start_all(nursery, hub, list(servers.values()))
            gen = await client.generate_tokens(PROMPT, 2, plan=AUTO)
            nursery.cancel_scope.cancel()
    assert gen.plan["type"] == PIPELINE


async def test_unknown_plan_is_refused(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    view, blobs, _ = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=1) as hub:
        client, servers = build(hub, view, blobs, BY_LAYER)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers.values(), client])
            with pytest.raises(PlanUnsupported, match="unknown plan type"):
                await client.generate_tokens(PROMPT, 2, plan="teleport")
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("use_cache", [True, False])
async def test_pipeline_runs_a_range_served_here_as_a_local_stage(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, use_cache: bool
) -> None:
    view, blobs, model = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=4) as hub:
        servers = {name: make_service(hub.add_node(name), view, blobs, whole_layer(1)) for name in ("a1", "b1")}
        client = make_service(hub.add_node("client"), view, blobs, whole_layer(0))
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers.values(), client])
            auto = await client.generate_tokens(PROMPT, 6, use_cache=use_cache, plan=AUTO)
            sampled = await client.generate_tokens(PROMPT, 6, 0.8, 3, use_cache=use_cache, plan=PIPELINE)
            nursery.cancel_scope.cancel()
    assert auto.tokens == reference_tokens(model, PROMPT, 6, use_cache=use_cache)
    assert sampled.tokens == reference_tokens(model, PROMPT, 6, 0.8, 3, use_cache=use_cache)
    for gen in (auto, sampled):
        assert gen.plan["type"] == PIPELINE and [s["node"] for s in gen.plan["stages"]][0] == ""
        assert gen.round_trips == 6  # the remote stage only
        assert all(set(step[0].values()) == {""} for step in gen.layers)  # layer 0 computed here


class CrashingStage(ExpertService):
    """Crashes (its whole node) while answering its `crash_at`-th stage step."""

    hub: SimNetworkHub
    crash_at = 4

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        inner = self.stages.on_stage

        async def on_stage(requester: str, data: bytes) -> bytes:
            if self.stages.served_steps + 1 == self.crash_at:
                self.hub.crash(self.net.local_id)
                await trio.lowlevel.checkpoint()  # cancelled here: never answered
            return await inner(requester, data)

        self.stages.on_stage = on_stage


@pytest.mark.parametrize("temperature", [0.0, 0.8])
async def test_stage_killed_mid_generation_is_replaced_within_the_deadline(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, temperature: float
) -> None:
    view, blobs, model = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=6) as hub:
        client, servers = build(hub, view, blobs, BY_LAYER)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers.values(), client])
            probe = await client.generate_tokens(PROMPT, 1, plan=PIPELINE)
            first = probe.plan["stages"][1]["node"]  # the layer-1 stage the planner picks
            victim = make_service(hub.add_node("victim"), view, blobs, whole_layer(1), cls=CrashingStage)
            victim.hub = hub
            servers["victim"] = victim
            nursery.start_soon(victim.run)
            await hub.wait_idle()
            await victim.announce()
            await hub.wait_idle()
            for name in (first, "b1" if first == "a1" else "a1"):  # make the victim the best layer-1 stage
                client.registry.nodes[name].strikes = 2
            client.plan_cache.entries.clear()  # else the probe's plan, still live, is reused
            began = trio.current_time()
            gen = await client.generate_tokens(PROMPT, 8, temperature, 7, plan=PIPELINE)
            took = trio.current_time() - began
            nursery.cancel_scope.cancel()
    assert not victim.net.alive and victim.stages.served_steps == CrashingStage.crash_at - 1
    assert gen.tokens == reference_tokens(model, PROMPT, 8, temperature, 7)
    assert len(gen.fallbacks) == 1 and "victim" in gen.fallbacks[0]
    assert gen.plan["type"] == PIPELINE and "victim" not in gen.plan["nodes"]
    assert took < client.inference.request_timeout_s * 2, "one deadline lost, then the replacement"


async def test_pipeline_chain_using_one_node_twice_keeps_a_session_per_stage(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A serves layers {0, 1, 4, 5}, B {2, 3}: the chain is A[0,2), B[2,4), A[4,6); A holds two sessions."""
    spec = dataclasses.replace(SPEC, n_layers=6)
    view, blobs, model = build_weights(tmp_path / "blobs", spec)
    a = tuple(f"layer{layer}.expert{e}" for layer in (0, 1, 4, 5) for e in range(spec.n_experts))
    b = tuple(f"layer{layer}.expert{e}" for layer in (2, 3) for e in range(spec.n_experts))
    async with SimNetworkHub(seed=7) as hub:
        client, servers = build(hub, view, blobs, {"A": a, "B": b})
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers.values(), client])
            gen = await client.generate_tokens(PROMPT, 4, plan=PIPELINE)
            nursery.cancel_scope.cancel()
    assert [(s["node"], s["layers"]) for s in gen.plan["stages"]] == [("A", [0, 2]), ("B", [2, 4]), ("A", [4, 6])]
    assert not gen.fallbacks and gen.tokens == reference_tokens(model, PROMPT, 4)
    assert client.registry.nodes["A"].strikes == 0
    assert all(not s.stages.sessions for s in servers.values()), "each stage's session is closed"


async def test_stage_refuses_what_can_never_succeed(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    view, blobs, _ = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=1) as hub:
        client, servers = build(hub, view, blobs, {"a0": whole_layer(0)})
        asker, stage = hub.add_node("asker"), servers["a0"]
        digest = compute_heads_digest(view)
        row = encode_rows(torch.zeros(1, SPEC.d_model))

        def step(**changes) -> bytes:
            fields = {"session": b"s" * 16, "heads_digest": digest, "first": 0, "end": 1, "cached": True,
                      "start": 0, "d_model": SPEC.d_model, "rows": 1, "data": row, "close": False, **changes}
            return codec.encode(StageRequest(**fields))

        async def ask(data: bytes) -> bytes:
            return await asker.request("a0", stage.stage_protocol, data, timeout=2.0)

        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [stage, client])
            for changes, match in (({"heads_digest": b"\x01" * 32}, "heads differ"),
                                   ({"end": 2}, "not a stage"),
                                   ({"start": 3}, "unknown session")):
                with pytest.raises(RemoteError, match=match):
                    await ask(step(**changes))
            assert stage.net.score("asker") == 0 and not stage.stages.sessions
            assert await ask(step())
            with pytest.raises(RemoteError, match="stands at position 1"):
                await ask(step(start=5))
            assert await ask(step(start=1))
            assert len(stage.stages.sessions) == 1
            await ask(step(rows=0, data=b"", close=True, first=0, end=0, cached=False))
            assert not stage.stages.sessions
            for bad in (step(end=3), step(rows=2), step(d_model=8), b"\x93garbage"):
                with pytest.raises(RemoteError):
                    await ask(bad)
            assert stage.net.score("asker") < 0  # malformed requests are penalised
            nursery.cancel_scope.cancel()


async def test_stage_sessions_are_bounded_and_expire(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from node.experts import stage as stage_module

    monkeypatch.setattr(stage_module, "MAX_SESSIONS", 3)
    monkeypatch.setattr(stage_module, "MAX_SESSIONS_PER_PEER", 2)
    view, blobs, _ = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=1) as hub:
        _, servers = build(hub, view, blobs, {"a0": whole_layer(0)})
        asker, other, stage = hub.add_node("asker"), hub.add_node("other"), servers["a0"]
        row = encode_rows(torch.zeros(1, SPEC.d_model))

        def open_session(sid: bytes) -> bytes:
            return codec.encode(StageRequest(sid, compute_heads_digest(view), 0, 1, True, 0, SPEC.d_model, 1, row,
                                             False))

        async with trio.open_nursery() as nursery:
            await nursery.start(stage.run)
            for i in range(2):
                await asker.request("a0", stage.stage_protocol, open_session(bytes([i]) * 16), timeout=2.0)
            with pytest.raises(RemoteError, match="sessions of this requester"):
                await asker.request("a0", stage.stage_protocol, open_session(b"z" * 16), timeout=2.0)
            await other.request("a0", stage.stage_protocol, open_session(b"o" * 16), timeout=2.0)
            with pytest.raises(RemoteError, match="3 sessions .* no room"):
                await other.request("a0", stage.stage_protocol, open_session(b"p" * 16), timeout=2.0)
            await trio.sleep(stage_module.SESSION_TTL_S + 1)  # the mock clock: the sessions' idle time runs out
            await asker.request("a0", stage.stage_protocol, open_session(b"z" * 16), timeout=2.0)
            assert list(stage.stages.sessions) == [("asker", b"z" * 16)]
            step = StageRequest(bytes([0]) * 16, compute_heads_digest(view), 0, 1, True, 1, SPEC.d_model, 1, row,
                                False)
            with pytest.raises(RemoteError, match="unknown session"):  # the expired one is gone
                await asker.request("a0", stage.stage_protocol, codec.encode(step), timeout=2.0)
            nursery.cancel_scope.cancel()


async def test_delegate_refuses_malformed_and_other_heads(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    view, blobs, _ = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=1) as hub:
        _, servers = build(hub, view, blobs, {"a0": whole_layer(0)})
        asker, node = hub.add_node("asker"), servers["a0"]
        digest = compute_heads_digest(view)

        def ask(**changes) -> bytes:
            fields = {"heads_digest": digest, "prompt": tuple(PROMPT), "max_new_tokens": 2,
                      "temperature_bits": 0, "seed": 0, "use_cache": True, **changes}
            return asker.request("a0", node.delegate_protocol, codec.encode(DelegateRequest(**fields)), timeout=5.0)

        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            with pytest.raises(RemoteError, match="heads differ"):
                await ask(heads_digest=b"\x02" * 32)
            assert node.net.score("asker") == 0
            for bad in ({"temperature_bits": encode_temperature(float("nan"))}, {"prompt": (SPEC.vocab_size,)},
                        {"max_new_tokens": 0}, {"temperature_bits": encode_temperature(11.0)}):
                with pytest.raises(RemoteError):
                    await ask(**bad)
            assert node.net.score("asker") < 0
            nursery.cancel_scope.cancel()


class LyingStage(ExpertService):
    """Serves as a stage, and answers rows shifted by 0.5 (well-formed, wrong)."""

    def executor(self, model):
        executor = super().executor(model)
        honest = executor.run_layers

        async def run_layers(x, *args):
            return (await honest(x, *args)) + 0.5

        executor.run_layers = run_layers
        return executor


async def test_wrong_stage_rows_are_caught_by_spot_check_penalised_and_replaced(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    view, blobs, model = build_weights(tmp_path / "blobs")
    layout = {"liar": whole_layer(0), "b0": whole_layer(0), "a1": whole_layer(1), "b1": whole_layer(1)}
    async with SimNetworkHub(seed=8) as hub:
        client, servers = build(hub, view, blobs, layout, cls={"liar": LyingStage}, spot_check=1.0,
                                local_fallback=True)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers.values(), client])
            client.registry.nodes["b0"].strikes = 2  # the liar is the layer-0 stage chosen first
            gen = await client.generate_tokens(PROMPT, 4, plan=PIPELINE)
            nursery.cancel_scope.cancel()
        assert client.net.score("liar") < 0
    assert gen.faults == ["liar"] and gen.spot_checks >= 1
    assert len(gen.fallbacks) == 1 and "spot check" in gen.fallbacks[0]
    assert gen.plan["type"] == PIPELINE and "liar" not in gen.plan["nodes"]
    assert gen.tokens == reference_tokens(model, PROMPT, 4)


class RefusingStage(ExpertService):
    """Announces a whole layer, and refuses every stage step (as a full stage would)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)

        async def on_stage(requester: str, data: bytes) -> bytes:
            raise StageBusy("full")

        self.stages.on_stage = on_stage


async def test_plans_are_bounded_then_exhausted(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    view, blobs, _ = build_weights(tmp_path / "blobs")
    layout = {"a0": whole_layer(0), **{f"r{i}": whole_layer(1) for i in range(5)}}
    async with SimNetworkHub(seed=5) as hub:
        client, servers = build(hub, view, blobs, layout, cls={f"r{i}": RefusingStage for i in range(5)})
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers.values(), client])
            with pytest.raises(PlansExhausted) as caught:
                await client.generate_tokens(PROMPT, 3, plan=PIPELINE)
            nursery.cancel_scope.cancel()
    assert len(caught.value.failures) == client.inference.max_attempts
    assert all("full" in f for f in caught.value.failures)
    assert all(client.registry.nodes[f"r{i}"].strikes == 0 for i in range(5)), "a refusal is no strike"


class SilentStage(ExpertService):
    """Announces a whole layer and never answers a stage step."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)

        async def on_stage(requester: str, data: bytes) -> bytes:
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        self.stages.on_stage = on_stage


async def test_a_silent_stage_is_struck_a_refusing_one_is_not(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    view, blobs, _ = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=9) as hub:
        client, servers = build(hub, view, blobs, {"a0": whole_layer(0), "busy": whole_layer(1),
                                                   "gone": whole_layer(1), "a1": whole_layer(1)},
                                cls={"busy": RefusingStage, "gone": SilentStage})
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers.values(), client])
            client.registry.nodes["a1"].strikes = 2  # so that "busy", then "gone" are chosen first
            client.registry.nodes["a1"].latency_s = 10.0
            gen = await client.generate_tokens(PROMPT, 2, plan=PIPELINE)
            nursery.cancel_scope.cancel()
    assert [f.split(":")[0] for f in gen.fallbacks] == ["pipeline", "pipeline"]
    assert client.registry.nodes["busy"].strikes == 0
    assert client.registry.nodes["gone"].strikes == 1
    assert gen.plan["nodes"] == ["a0", "a1"]


async def test_spot_check_skips_when_the_heads_moved(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """The recomputation would use other weights than the stage's pinned ones: no check, no
    penalty; at the pinned heads the same wrong rows are caught."""
    view, blobs, model = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=10) as hub:
        client, servers = build(hub, view, blobs, BY_LAYER, spot_check=1.0, local_fallback=True)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers.values(), client])
            shared = await client.shared_model()
            heads = get_expert_heads(client.view)
            chain = (Stage("a0", 0, 1), Stage("a1", 1, 2))
            x = torch.randn(1, 3, SPEC.d_model)
            wrong = torch.zeros(1, 3, SPEC.d_model)
            moved = PipelineRunner(client, shared, chain, heads, b"\x07" * 32)  # pinned at older heads
            await moved.spot_check(chain[0], x, wrong, False, Generation(prompt=[]))
            assert client.net.score("a0") == 0
            pinned = PipelineRunner(client, shared, chain, heads, compute_heads_digest(client.view))
            with pytest.raises(PlanFailed, match="spot check"):
                await pinned.spot_check(chain[0], x, wrong, False, Generation(prompt=[]))
            assert client.net.score("a0") < 0
            with pytest.raises(HeadsDiffer):  # a delegate pinned at heads this node lacks refuses
                await servers["a0"].generate_tokens(PROMPT, 2, plan=AUTO, allow_delegate=False,
                                                    heads_digest=b"\x07" * 32)
            nursery.cancel_scope.cancel()


def test_delegations_are_limited_per_requester_and_by_work() -> None:
    server = DelegateServer(None)  # type: ignore[arg-type]  # reserve and release touch no host
    server.reserve("p", 10)
    with pytest.raises(StageBusy, match="of this requester"):
        server.reserve("p", 10)
    server.reserve("q", 10)
    with pytest.raises(StageBusy, match="2 delegated generations"):
        server.reserve("r", 10)
    server.release("p", 10)
    server.release("q", 10)
    assert server.inflight == 0 and server.work == 0 and not server.by_peer
    server.reserve("p", MAX_DELEGATE_WORK)  # the largest request fits alone
    with pytest.raises(StageBusy, match="prompt x new tokens"):
        server.reserve("q", 1)


async def test_stage_refuses_non_finite_rows_before_opening_a_session(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    view, blobs, _ = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=11) as hub:
        _, servers = build(hub, view, blobs, {"a0": whole_layer(0)})
        asker, stage = hub.add_node("asker"), servers["a0"]
        bad = encode_rows(torch.full((1, SPEC.d_model), float("nan")))
        req = StageRequest(b"n" * 16, compute_heads_digest(view), 0, 1, True, 0, SPEC.d_model, 1, bad, False)
        async with trio.open_nursery() as nursery:
            await nursery.start(stage.run)
            with pytest.raises(RemoteError, match="non-finite"):
                await asker.request("a0", stage.stage_protocol, codec.encode(req), timeout=2.0)
            nursery.cancel_scope.cancel()
    assert not stage.stages.sessions and stage.net.score("asker") < 0
