"""Benchmark section "plans": round trips per token of the plan types, on the simulated network."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchlib import Row, SectionRun, section

PROMPTS = ("The expert", "Mixture of experts on a peer-to-peer network", "abc")


def by_range(n_layers: int, n_experts: int, nodes: int, ranges: int) -> list[tuple[str, ...]]:
    """Node i serves every expert of layer range i % ranges (contiguous, equal): `nodes / ranges` replicas."""
    size = -(-n_layers // ranges)
    out = []
    for i in range(nodes):
        first = (i % ranges) * size
        out.append(tuple(f"layer{layer}.expert{e}" for layer in range(first, min(first + size, n_layers))
                         for e in range(n_experts)))
    return out


@section("plans", "Plan types: round trips per token, pipeline and static_delegate vs dynamic", notes=[
    "4 nodes on `SimNetworkHub` under the mock clock (round trips are counted, not timed; daemons would "
    "count the same), a client serving nothing; model d_model 128, 4 layers, 8 experts, top-2, KV cache on, "
    "greedy. Layout 'by range': nodes 0 and 2 serve every expert of layers 0-1, nodes 1 and 3 of layers 2-3 "
    "(two replicas each, half the model per node, as the devnet ring holds); layout 'whole': each node "
    "serves the whole model (four replicas, twice the memory). The same prompts run under each plan; "
    "every plan's tokens are checked equal to dynamic's.",
    "With a layer's experts together, dynamic sends one request per layer and token, a pipeline one per "
    "remote stage and token: the ratio is 1 / (layers per stage), so 70 % fewer needs stages of 4 layers or "
    "more. The delegate (serving layers 0-1) runs its own range as a local stage and sends layers 2-3 to a "
    "stage: 1 round trip per token plus 1 per generation.",
    "Round trips: requests the client sent, plus (for the delegate, the honest total) the expert requests "
    "the delegate sent on its behalf. `dynamic, ring` is today's devnet layout (node i serves experts "
    "{i, i+1, i+4, i+5} of every layer), in `extra` for reference.",
])
def bench_plans(run: SectionRun) -> None:
    tokens = run.pick(32, 8)
    figures = _measure(tokens)
    ring = figures["ring", "dynamic"]["total"] / figures["ring", "dynamic"]["tokens"]
    for layout in ("by_range", "whole"):
        base = figures[layout, "dynamic"]
        ref = base["total"] / base["tokens"]
        for kind in ("pipeline", "static_delegate"):
            f = figures[layout, kind]
            total, here = f["total"] / f["tokens"], f["here"] / f["tokens"]
            run.row(Row(
                name=f"plans.{kind}.{layout}", what=f"{len(PROMPTS)} prompts x {tokens} tokens, layout {layout}",
                ours=total, baseline=ref, unit="round trips/token",
                ours_text=f"{total:.2f} round trips/token ({here:.3f} by the client)",
                baseline_text=f"{ref:.2f} round trips/token", baseline_what="dynamic plan, same prompts and layout",
                ratio=total / ref, better="lower", goal=0.3,
                extra={"round_trips_per_token": total, "client_round_trips_per_token": here,
                       "dynamic_round_trips_per_token": ref, "dynamic_ring_round_trips_per_token": ring,
                       "wall_s": f["wall"]},
            ))


def _measure(tokens: int) -> dict[tuple[str, str], dict[str, float]]:
    import random

    import trio
    import trio.testing

    from chain import codec
    from chain.blobs import BlobStore
    from chain.crypto import PrivateKey
    from chain.records import ExpertState
    from chain.tensors import KIND_EXPERT, KIND_MODULE, ModelSpec
    from gpu.model import MoEConfig, init_seeded
    from gpu.weights import encode_block, make_tensor_record
    from node.app.devnet import assign_experts
    from node.experts.config import ExpertsConfig
    from node.experts.inference import InlineCompute
    from node.experts.service import ExpertService
    from node.experts.weights import StaticModelView
    from p2p.sim import SimNetworkHub

    spec = ModelSpec("bench-moe", "0.1.0", 256, 128, 4, 4, 8, 2, 256, 128, 7)
    model = init_seeded(MoEConfig.from_spec(spec), spec.seed).eval()
    figures: dict[tuple[str, str], dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="blyan-bench-plans-") as tmp:
        blobs = BlobStore(Path(tmp))
        states = {}
        for name in model.block_names():
            data = encode_block(model.block_state_dict(name))
            blobs.put(data)
            rec = make_tensor_record(name, KIND_EXPERT if ".expert" in name else KIND_MODULE, "0.1.0", data)
            states[name] = ExpertState(rec, codec.hash_of(rec), (), rec.version, 0)
        view = StaticModelView(spec, states)
        layouts = {"by_range": by_range(spec.n_layers, spec.n_experts, 4, 2),
                   "whole": by_range(spec.n_layers, spec.n_experts, 4, 1), "ring": assign_experts(spec, 4)}
        outputs: dict[tuple[str, str], list[list[int]]] = {}

        async def one(layout: str, kind: str) -> None:
            async with SimNetworkHub(seed=1) as hub:
                services = []
                for i, serve in enumerate([*layouts[layout], ("none",)]):
                    net = hub.add_node(f"n{i}")
                    services.append(ExpertService(
                        net, PrivateKey.from_label(f"n{i}"), view, blobs,
                        ExpertsConfig(serve=serve, spot_check=0.0, local_fallback=False),
                        network_id="bench", clock=net, compute=InlineCompute(), rng=random.Random(i)))
                async with trio.open_nursery() as nursery:
                    for svc in services:
                        await nursery.start(svc.run)
                    for svc in services:
                        await svc.announce()
                    await hub.wait_idle()
                    client = services[-1]
                    here = total = 0
                    outs = []
                    start = time.perf_counter()
                    for prompt in PROMPTS:
                        gen = await client.generate_tokens(list(prompt.encode()), tokens, plan=kind)
                        if gen.plan["type"] != kind or gen.fallbacks:
                            raise RuntimeError(f"{kind} ran as {gen.plan['type']}: {gen.fallbacks}")
                        here += gen.round_trips
                        total += gen.round_trips + gen.remote_round_trips
                        outs.append(gen.tokens)
                    figures[layout, kind] = {"here": here, "total": total, "tokens": tokens * len(PROMPTS),
                                      "wall": time.perf_counter() - start}
                    outputs[layout, kind] = outs
                    nursery.cancel_scope.cancel()

        async def main() -> None:
            for layout in ("by_range", "whole"):
                for kind in ("dynamic", "pipeline", "static_delegate"):
                    await one(layout, kind)
            await one("ring", "dynamic")

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    if len({repr(o) for o in outputs.values()}) != 1:
        raise RuntimeError("the plan types produced different tokens")
    return figures
