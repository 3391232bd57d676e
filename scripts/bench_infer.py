"""Benchmark section "inference": distributed generation over 4 daemons vs one process."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench_batching import bench_batching_daemons, bench_batching_simulated, bench_pool_wait
from benchlib import Row, SectionRun, section

PROMPT = "The expert"


def _wait(condition, deadline: float) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("devnet did not come up")
        time.sleep(0.2)


def _single_process(root: Path, data_dir: Path, prompt_ids: list[int], tokens: int) -> float:
    """Seconds per token of `MoEModel.generate` with the same genesis weights."""
    import torch

    from chain.blobs import BlobStore
    from gpu.model import MoEConfig, MoEModel
    from gpu.weights import decode_block
    from node.app.config import BLOBS_DIR
    from node.app.datadir import load_pact_file
    from node.app.devnet import DEVNET_PACT_FILE

    pact = load_pact_file(root / DEVNET_PACT_FILE)
    blobs = BlobStore(data_dir / BLOBS_DIR)
    model = MoEModel(MoEConfig.from_spec(pact.model))
    for rec in pact.tensors:
        if rec.name in model.block_names():
            model.load_block_state_dict(rec.name, decode_block(blobs.get(rec.blob_id)))
    model.eval()
    idx = torch.tensor([prompt_ids])
    model.generate(idx, 2)  # warm up
    start = time.perf_counter()
    model.generate(idx, tokens)
    return (time.perf_counter() - start) / tokens


@section("inference", "Distributed inference: 4 daemons on loopback vs one process", notes=[
    "Ours: `blyan_generate` on node 0 of a 4-node devnet whose experts are spread two replicas "
    "each (no node holds them all): embed, attention, routers and head run on node 0, experts on "
    "the nodes serving them (one libp2p request per node per layer per token; with the KV cache, "
    "so after the prompt each token sends each of its experts one row). "
    "Baseline: `MoEModel.generate` (also with the cache) in one process with the same genesis weights. "
    "Spot checks off.",
    "Greedy; the two produce the same tokens (tests/node/test_devnet_inference.py checks it).",
    "inference.concurrent16 and inference.layer_b*: a devnet with the `bench` preset (d_model 256, "
    "d_ff 1024, 8 experts x 4 layers, random weights: speed only). concurrent16: 16 `blyan_generate` "
    "calls at once on node 0 (greedy, KV cache) against the same 16 one at a time; node 0 runs "
    "their steps in lockstep, one forward for all (node.experts.lockstep), servers pool concurrent "
    "requests (node.experts.batching); "
    "'same tokens' counts generations whose tokens equal their solo run. layer_b*: one MoE layer "
    "(route here, one request per serving daemon, combine here) from a libp2p host in the bench "
    "process to nodes 0 and 2 (which serve all 8 experts between them), against "
    "`MoEModel.moe_forward` on the same rows here; median of the reps.",
])
def bench_inference(run: SectionRun) -> None:
    from node.api.client import RPCClient
    from node.app.devnet import find_free_ports, prepare_devnet, start_nodes, stop_nodes
    from node.cli.connect import find_rpc

    tokens = run.pick(32, 8)
    if run.cfg.quick:  # no daemons: 4 nodes on the simulated network, in this process
        _bench_simulated(run, tokens)
        with run.tempdir() as tmp:
            bench_batching_simulated(run, tmp)
        return
    with tempfile.TemporaryDirectory(prefix="blyan-bench-infer-") as tmp:
        root = Path(tmp)
        try:
            dirs = prepare_devnet(root, 4, find_free_ports(4), find_free_ports(4))
        except Exception as err:  # noqa: BLE001 - the genesis artifact may be absent here
            run.skip(f"devnet genesis unavailable: {err}")
            return
        for d in dirs:  # measure the network path, not the spot checks
            text = (d / "config.toml").read_text().replace("spot_check = 0.05", "spot_check = 0.0")
            (d / "config.toml").write_text(text)
        procs = start_nodes(dirs, log_level="warning")
        try:
            def client() -> RPCClient:
                return RPCClient(*find_rpc(dirs[0]))

            def ready() -> bool:
                try:
                    return len(client().call("blyan_experts")["registry"]) >= 3
                except Exception:  # noqa: BLE001 - not up yet
                    return False

            _wait(ready, time.monotonic() + 120)
            client().call("blyan_generate", {"prompt": PROMPT, "max_tokens": 2})  # warm up
            start = time.perf_counter()
            answer = client().call("blyan_generate", {"prompt": PROMPT, "max_tokens": tokens})
            wall = time.perf_counter() - start
            me = client().call("blyan_experts")["node"]
        finally:
            stop_nodes(procs)
        local = _single_process(root, dirs[0], answer["prompt_tokens"], tokens)
    ours = wall / tokens
    trips = answer["round_trips"] / tokens
    rows = _rows_per_token(answer["rows_sent"])
    run.row(Row(
        name="inference.4nodes", what=f"{tokens} greedy tokens, prompt {PROMPT!r}",
        ours=1 / ours, baseline=1 / local, unit="tokens/s",
        ours_text=f"{1 / ours:.1f} tokens/s, {trips:.1f} round trips/token, {rows:.1f} rows/token",
        baseline_text=f"{1 / local:.1f} tokens/s", baseline_what="MoEModel.generate, one process",
        ratio=local / ours, better="higher", goal=0.5,
        extra={"round_trips_per_token": trips, "s_per_token": ours, "local_s_per_token": local,
               "rows_sent_per_token": rows},
    ))
    _latency_row(run, answer, me, local, tokens)
    with run.tempdir() as tmp:
        bench_batching_daemons(run, tmp)
    bench_pool_wait(run)


def _latency_row(run: SectionRun, answer: dict, me: str, local: float, tokens: int) -> None:
    """Per-token latency after the prompt, p50 and p95, against its floor: the same model's
    compute per token in one process plus this generation's round trips per token times one
    raw py-libp2p request of the mean payload, measured now."""
    import statistics

    from bench_net import measure_raw_request_rtt

    later = sorted(answer["latency_ms"][1:])
    if not later or not answer["round_trips"]:
        run.note("inference.latency: no round trips after the prompt to compare with a floor")
        return
    payload = max(1, sum(answer["bytes_sent"]) // answer["round_trips"])
    raw = measure_raw_request_rtt(payload, run.pick(200, 40))
    # Requests per token after the prompt: one per layer and node other than this one (the plan
    # groups a layer's experts by node); no failovers here (healthy nodes, spot checks off).
    per_token = statistics.mean(sum(len({n for n in layer["experts"].values()} - {me}) for layer in step)
                                for step in answer["layers"][1:])
    floor = local + per_token * raw
    p50 = statistics.median(later) / 1000
    p95 = later[min(len(later) - 1, int(0.95 * len(later)))] / 1000
    run.row(Row(
        name="inference.latency", what=f"per-token latency of {tokens - 1} tokens after the prompt, 4 daemons",
        ours=p50, baseline=floor, unit="s",
        ours_text=f"p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms",
        baseline_text=(f"{floor * 1000:.1f} ms: compute {local * 1000:.2f} ms + {per_token:.2f} round trips x "
                       f"raw RTT {raw * 1000:.2f} ms ({payload} B)"),
        baseline_what="local compute per token + round trips x raw py-libp2p RTT",
        ratio=p50 / floor, better="lower", goal=1.2,
        extra={"p95_s": p95, "raw_rtt_s": raw, "round_trips_per_token": per_token, "payload_bytes": payload},
    ))




def _rows_per_token(rows_sent: list[int]) -> float:
    """Mean expert rows sent to other nodes per token after the prompt's step."""
    later = rows_sent[1:]
    return sum(later) / len(later) if later else 0.0


def _bench_simulated(run: SectionRun, tokens: int) -> None:
    """4 nodes on `SimNetworkHub` under the mock clock: the executor's own cost, no sockets."""
    import random

    import torch
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

    spec = ModelSpec("bench-moe", "0.1.0", 256, 128, 2, 4, 4, 2, 256, 128, 7)
    model = init_seeded(MoEConfig.from_spec(spec), spec.seed).eval()
    prompt = list(PROMPT.encode())
    with tempfile.TemporaryDirectory(prefix="blyan-bench-infer-") as tmp:
        blobs = BlobStore(Path(tmp))
        states = {}
        for name in model.block_names():
            data = encode_block(model.block_state_dict(name))
            blobs.put(data)
            rec = make_tensor_record(name, KIND_EXPERT if ".expert" in name else KIND_MODULE, "0.1.0", data)
            states[name] = ExpertState(rec, codec.hash_of(rec), (), rec.version, 0)
        view = StaticModelView(spec, states)
        result = {}

        async def main() -> None:
            async with SimNetworkHub(seed=1) as hub:
                services = []
                for i, serve in enumerate(assign_experts(spec, 4)):
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
                    await services[0].generate_tokens(prompt, 2)  # warm up (loads shared modules)
                    start = time.perf_counter()
                    result["gen"] = await services[0].generate_tokens(prompt, tokens)
                    result["wall"] = time.perf_counter() - start
                    nursery.cancel_scope.cancel()

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    model.generate(torch.tensor([prompt]), 2)  # warm up
    start = time.perf_counter()
    model.generate(torch.tensor([prompt]), tokens)
    local = (time.perf_counter() - start) / tokens
    ours = result["wall"] / tokens
    trips = result["gen"].round_trips / tokens
    rows = _rows_per_token(result["gen"].rows_sent)
    run.row(Row(
        name="inference.sim4", what=f"{tokens} greedy tokens, 4 simulated nodes (quick mode)",
        ours=1 / ours, baseline=1 / local, unit="tokens/s",
        ours_text=f"{1 / ours:.1f} tokens/s, {trips:.1f} round trips/token, {rows:.1f} rows/token",
        baseline_text=f"{1 / local:.1f} tokens/s", baseline_what="MoEModel.generate, one process",
        ratio=local / ours, better="higher", goal=None,
        extra={"round_trips_per_token": trips, "rows_sent_per_token": rows},
    ))
