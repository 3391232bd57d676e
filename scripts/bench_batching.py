"""Rows of the "inference" section (scripts/bench_infer.py) on batching, with the `bench` preset:

- 16 concurrent generations against one (throughput), on 4 daemons or, with --quick, 4 nodes of
  the simulated network in this process;
- one remote MoE layer (8 experts, d 256/1024, top-2) served by two daemons (or simulated nodes)
  at batch 1, 8 and 64, against the same layer computed locally (`MoEModel.moe_forward`).
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from benchlib import Row, SectionRun

CONCURRENT = 16
ROUNDS, SOLO = 3, 4
"""Rounds of the concurrency row, and generations run alone in each (the baseline)."""
LAYER_BATCHES = (1, 8, 64)
PROMPTS = [f"Expert {i} of {CONCURRENT}: the" for i in range(CONCURRENT)]


# --- the layer -----------------------------------------------------------------------------


def load_layer_model(spec: Any, blob_of: Any) -> Any:
    """The bench model with the router and experts of layer 0 loaded (blob_of(name) -> bytes)."""
    from gpu.model import MoEConfig, MoEModel
    from gpu.weights import decode_block

    model = MoEModel(MoEConfig.from_spec(spec))
    for name in ["layer0.router"] + [f"layer0.expert{e}" for e in range(spec.n_experts)]:
        model.load_block_state_dict(name, decode_block(blob_of(name)))
    return model.eval()


async def time_remote_layer(net: Any, protocol: str, model: Any, heads: dict, node_of: dict[int, str],
                            batch: int, reps: int) -> tuple[float, float, int]:
    """Median seconds of one MoE layer at `batch` rows with the experts on other nodes (route
    here, one request per node, combine here: what `Executor` does per layer), of the same
    layer computed here, and the largest |difference| seen (float32 units: 1e-6 scale)."""
    import torch
    import trio

    from chain import codec
    from gpu.model import combine_expert_outputs
    from node.experts.batching import RequestBatcher
    from node.experts.plan import compute_routes
    from node.experts.wire import ForwardItem, ForwardRequest, encode_rows

    batcher = RequestBatcher(net, protocol)
    x = torch.randn(1, batch, model.cfg.d_model, generator=torch.Generator().manual_seed(batch))  # [1, B, D]
    remote, local, worst = [], [], 0.0
    for _ in range(reps):
        start = time.perf_counter()
        with torch.no_grad():
            routing = model.route(0, x)
        by_node: dict[str, dict[int, tuple[int, ...]]] = {}
        for expert, rows in compute_routes(routing.experts.tolist()).items():
            by_node.setdefault(node_of[expert], {})[expert] = rows
        outputs: dict[int, Any] = {}

        async def ask(node: str, experts: dict[int, tuple[int, ...]]) -> None:
            req = ForwardRequest(0, model.cfg.d_model, tuple(
                ForwardItem(e, heads[e], len(rows), encode_rows(routing.hidden[torch.tensor(rows)]))
                for e, rows in experts.items()))
            outputs.update(await batcher.request(node, node, req, codec.encode(req), timeout=10.0))

        async with trio.open_nursery() as nursery:
            for node, experts in by_node.items():
                nursery.start_soon(ask, node, experts)
        with torch.no_grad():
            got = x + combine_expert_outputs(routing, outputs).view_as(x)  # [1, B, D]
        remote.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.no_grad():
            want, _ = model.moe_forward(0, x)  # [1, B, D]
        local.append(time.perf_counter() - start)
        worst = max(worst, float((got - want).abs().max()))
    return statistics.median(remote), statistics.median(local), worst


def layer_rows(run: SectionRun, results: dict[int, tuple[float, float, float]], where: str) -> None:
    for batch, (remote, local, worst) in sorted(results.items()):
        run.row(Row(
            name=f"inference.layer_b{batch}",
            what=f"one MoE layer (8 experts, d 256/1024, top-2) at batch {batch}, experts on {where}",
            ours=remote, baseline=local, unit="s",
            ours_text=f"{remote * 1e3:.2f} ms", baseline_text=f"{local * 1e3:.3f} ms",
            baseline_what="the same layer here (MoEModel.moe_forward)",
            ratio=remote / local, better="lower", goal=None,
            extra={"max_abs_diff": worst},
        ))


# --- concurrent generations -----------------------------------------------------------------


def concurrency_row(run: SectionRun, tokens: int, one_s: list[float], ratios: list[float], same: int,
                    compared: int, stats: dict[str, int], where: str) -> None:
    """`ratios`: per round, throughput of 16 at once over that round's one-at-a-time; the row
    gives their median, and the figures of the round that has it."""
    one = tokens / statistics.median(one_s)
    ratio = statistics.median(ratios)
    steps = len(ratios) * CONCURRENT * tokens
    run.row(Row(
        name="inference.concurrent16",
        what=f"{CONCURRENT} concurrent generations of {tokens} tokens (bench preset) vs one, {where}",
        ours=one * ratio, baseline=one, unit="tokens/s",
        ours_text=(f"{one * ratio:.1f} tokens/s (median of {len(ratios)} rounds: "
                   f"{', '.join(f'{r:.1f}x' for r in ratios)}; {stats['sent_requests'] / steps:.2f} requests "
                   f"sent per token; {same}/{compared} same tokens as alone)"),
        baseline_text=f"{one:.1f} tokens/s", baseline_what="one generation at a time",
        ratio=ratio, better="higher", goal=8.0,
        extra={"same_tokens": same, "compared": compared, "requests_per_token": stats["sent_requests"] / steps,
               **{k: float(v) for k, v in stats.items()}},
    ))


def _generate_at_once(generate: Any) -> tuple[dict[int, list[int]], float]:
    """`generate(PROMPTS[i])` for every i in a thread each, started together; results, seconds."""
    together: dict[int, list[int]] = {}
    gate = threading.Barrier(CONCURRENT + 1)

    def worker(i: int) -> None:
        gate.wait()
        together[i] = generate(PROMPTS[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CONCURRENT)]
    for t in threads:
        t.start()
    gate.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return together, time.perf_counter() - start


def bench_batching_daemons(run: SectionRun, root: Path) -> None:
    """4 daemons with the bench preset: both rows."""
    import trio

    from chain import codec
    from chain.blobs import BlobStore
    from genesis.devnet import dev_validator_key
    from genesis.presets import BENCH
    from node.api.client import RPCClient
    from node.app.config import BLOBS_DIR, CONFIG_FILE, load_config
    from node.app.datadir import load_pact_file
    from node.app.devnet import DEVNET_PACT_FILE, find_free_ports, prepare_devnet, start_nodes, stop_nodes
    from node.cli.connect import find_rpc
    from p2p.libp2p_identity import compute_peer_id

    tokens = 8
    base = find_free_ports(4)
    dirs = prepare_devnet(root, 4, base, find_free_ports(4), preset=BENCH)
    for d in dirs:  # measure the network path, not the spot checks
        text = (d / "config.toml").read_text().replace("spot_check = 0.05", "spot_check = 0.0")
        (d / "config.toml").write_text(text)
    procs = start_nodes(dirs, log_level="warning")
    try:
        def client(i: int = 0) -> RPCClient:
            return RPCClient(*find_rpc(dirs[i]), timeout=300.0)

        _wait_ready(client, time.monotonic() + 180)
        client().call("blyan_generate", {"prompt": PROMPTS[0], "max_tokens": 2})  # warm up

        def generate(prompt: str) -> list[int]:
            return client().call("blyan_generate", {"prompt": prompt, "max_tokens": tokens})["tokens"]

        # Rounds of (4 alone, then 16 at once), so that the machine's load drifts over both alike.
        one_s, ratios, same, compared, stats = [], [], 0, 0, {}
        for r in range(ROUNDS):
            alone = {}
            for i in range(r * SOLO, (r + 1) * SOLO):
                start = time.perf_counter()
                alone[i] = generate(PROMPTS[i])
                one_s.append(time.perf_counter() - start)
            before = client().call("blyan_experts")["batching"]
            together, together_s = _generate_at_once(generate)
            after = client().call("blyan_experts")["batching"]
            stats = {k: stats.get(k, 0) + after[k] - before[k] for k in after}
            same += sum(alone[i] == together[i] for i in alone)
            compared += len(alone)
            ratios.append((CONCURRENT * tokens / together_s) / (tokens / statistics.median(one_s[-SOLO:])))
        concurrency_row(run, tokens, one_s, ratios, same, compared, stats, "4 daemons")

        pact = load_pact_file(root / DEVNET_PACT_FILE)
        blobs = BlobStore(dirs[0] / BLOBS_DIR)
        records = {r.name: r for r in pact.tensors}
        model = load_layer_model(pact.model, lambda n: blobs.get(records[n].blob_id))
        heads = {e: codec.hash_of(records[f"layer0.expert{e}"]) for e in range(pact.model.n_experts)}
        servers = (0, 2)  # between them they serve every expert (two replicas over four nodes)
        ids = {i: compute_peer_id(dev_validator_key(i).seed) for i in servers}
        node_of = {}
        for i in servers:
            for name in load_config(dirs[i] / CONFIG_FILE).experts.serve:
                if name.startswith("layer0.expert"):
                    node_of.setdefault(int(name.removeprefix("layer0.expert")), ids[i])
        addrs = tuple(f"/ip4/127.0.0.1/tcp/{base + i}/p2p/{ids[i]}" for i in servers)
        results = trio.run(_layer_over_libp2p, addrs, set(ids.values()), model, heads, node_of, run.pick(30, 5))
        layer_rows(run, results, "2 daemons (libp2p, loopback)")
    finally:
        stop_nodes(procs)


def _wait_ready(client: Any, deadline: float) -> None:
    while True:
        try:
            if len(client().call("blyan_experts")["registry"]) >= 3:
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("devnet did not come up")
        time.sleep(0.5)


async def _layer_over_libp2p(addrs: tuple[str, ...], peers: set[str], model: Any, heads: dict,
                             node_of: dict[int, str], reps: int) -> dict[int, tuple[float, float, float]]:
    """A libp2p host in this process dialling the two serving daemons, timing the layer."""
    import trio

    from node.experts.wire import PROTOCOL_EXPERT_FORWARD
    from p2p.libp2p_net import Libp2pConfig, Libp2pNetwork
    from p2p.network import protocol_name

    config = Libp2pConfig(seed=bytes([7]) * 32, bootstrap=addrs)
    async with Libp2pNetwork.open(config) as net:
        connected = trio.Event()
        net.on_peer_event(lambda peer, up: connected.set() if peers <= set(net.peers()) else None)
        with trio.fail_after(60):
            while not peers <= set(net.peers()):
                await connected.wait()
                connected = trio.Event()
        protocol = protocol_name("devnet", PROTOCOL_EXPERT_FORWARD)
        out = {}
        for batch in LAYER_BATCHES:
            await time_remote_layer(net, protocol, model, heads, node_of, batch, 2)  # warm up
            out[batch] = await time_remote_layer(net, protocol, model, heads, node_of, batch, reps)
        return out


def bench_batching_simulated(run: SectionRun, root: Path) -> None:
    """--quick: both rows on 4 simulated nodes (`SimNetworkHub`, mock clock): CPU cost only."""
    import trio
    import trio.testing

    from chain import codec
    from chain.blobs import BlobStore
    from chain.crypto import PrivateKey
    from chain.records import ExpertState
    from genesis.presets import BENCH, load_preset
    from node.app.devnet import assign_experts
    from node.experts.config import ExpertsConfig
    from node.experts.inference import InlineCompute
    from node.experts.service import ExpertService
    from node.experts.weights import StaticModelView
    from p2p.sim import SimNetworkHub

    preset = load_preset(BENCH)
    spec, tokens = preset.spec, 4
    blobs = BlobStore(root / "blobs")
    states = {}
    for rec, data in zip(preset.tensors, preset.blobs, strict=True):
        blobs.put(data)
        states[rec.name] = ExpertState(rec, codec.hash_of(rec), (), rec.version, 0)
    view = StaticModelView(spec, states)
    prompts = [list(p.encode()) for p in PROMPTS]
    model = load_layer_model(spec, lambda n: blobs.get(states[n].record.blob_id))
    heads = {e: states[f"layer0.expert{e}"].head for e in range(spec.n_experts)}
    result: dict[str, Any] = {}

    async def main() -> None:
        async with SimNetworkHub(seed=1) as hub:
            services = []
            for i, serve in enumerate([*assign_experts(spec, 4), ("none",)]):
                net = hub.add_node(f"n{i}")
                services.append(ExpertService(
                    net, PrivateKey.from_label(f"n{i}"), view, blobs,
                    ExpertsConfig(serve=serve, spot_check=0.0, local_fallback=False),
                    network_id="bench", clock=net, compute=InlineCompute(), rng=random.Random(i)))
            client = services[-1]
            async with trio.open_nursery() as nursery:
                for svc in services:
                    await nursery.start(svc.run)
                for svc in services:
                    await svc.announce()
                await hub.wait_idle()
                await client.generate_tokens(prompts[0], 2)  # warm up
                alone, one_s = [], []
                for p in prompts[:SOLO]:
                    start = time.perf_counter()
                    alone.append((await client.generate_tokens(p, tokens)).tokens)
                    one_s.append(time.perf_counter() - start)
                before = client.describe()["batching"]
                together: dict[int, list[int]] = {}

                async def generate(i: int) -> None:
                    together[i] = (await client.generate_tokens(prompts[i], tokens)).tokens

                start = time.perf_counter()
                async with trio.open_nursery() as gens:
                    for i in range(CONCURRENT):
                        gens.start_soon(generate, i)
                result["together_s"] = time.perf_counter() - start
                after = client.describe()["batching"]
                result["stats"] = {k: after[k] - before[k] for k in after}
                result["same"] = sum(alone[i] == together[i] for i in range(SOLO))
                result["one_s"] = one_s
                node_of = {}
                for i in (0, 2):
                    for (layer, e) in services[i].local.served:
                        if layer == 0:
                            node_of.setdefault(e, f"n{i}")
                layers = {}
                for batch in LAYER_BATCHES:
                    layers[batch] = await time_remote_layer(client.net, client.protocol, model, heads, node_of,
                                                            batch, 5)
                result["layers"] = layers
                nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    one = tokens / statistics.median(result["one_s"])
    ratio = CONCURRENT * tokens / result["together_s"] / one
    concurrency_row(run, tokens, result["one_s"], [ratio], result["same"], SOLO, result["stats"],
                    "4 simulated nodes (quick mode)")
    layer_rows(run, result["layers"], "2 simulated nodes (quick mode)")


# --- the server pool's wait ------------------------------------------------------------------

POOL_CLIENTS = 8
POOL_QUIET_S = (0.0, 0.0005, 0.002)


def bench_pool_wait(run: SectionRun) -> None:
    """Rows inference.pool_quiet_*: one libp2p host serving layer 0's expert 0 of the bench preset
    through a `ForwardPool` (worker thread), and 8 libp2p hosts in this process each sending it a
    one-row request at the same moment, per quiet window: forwards per request (1 = no merging)
    and the median request latency; plus one client alone (the wait's cost)."""
    import trio

    results = trio.run(_pool_wait_all, run.pick(20, 4))
    for quiet, (forwards, many_s, lone_s) in results.items():
        run.row(Row(
            name=f"inference.pool_quiet_{quiet * 1e3:g}ms",
            what=f"{POOL_CLIENTS} clients' one-row requests at once, server pool quiet {quiet * 1e3:g} ms "
                 "(libp2p, one process)",
            ours=many_s, baseline=lone_s, unit="s",
            ours_text=f"{many_s * 1e3:.2f} ms per request, {forwards:.2f} forwards per request",
            baseline_text=f"{lone_s * 1e3:.2f} ms", baseline_what="one client alone, same pool",
            ratio=many_s / lone_s, better="lower", goal=None,
            extra={"forwards_per_request": forwards},
        ))


async def _pool_wait_all(reps: int) -> dict[float, tuple[float, float, float]]:
    from contextlib import AsyncExitStack

    import torch
    import trio

    from chain import codec
    from genesis.presets import BENCH, load_preset
    from gpu.model import Expert, MoEConfig
    from gpu.weights import decode_block
    from node.experts.batching import BatchConfig, ForwardPool
    from node.experts.inference import ThreadCompute
    from node.experts.wire import (
        MAX_FORWARD_BYTES,
        ForwardItem,
        ForwardOutput,
        ForwardRequest,
        ForwardResponse,
        decode_rows,
        encode_rows,
    )
    from p2p.libp2p_net import Libp2pConfig, Libp2pNetwork
    from p2p.network import protocol_name

    preset = load_preset(BENCH)
    names = [r.name for r in preset.tensors]
    expert = Expert(MoEConfig.from_spec(preset.spec))
    expert.load_state_dict(decode_block(preset.blobs[names.index("layer0.expert0")]))
    expert.eval()
    d = preset.spec.d_model

    def compute_outputs(req: ForwardRequest) -> list[ForwardOutput]:
        out = []
        for it in req.items:
            with torch.no_grad():
                y = expert(decode_rows(it.data, it.rows, d))  # [n, D]
            out.append(ForwardOutput(it.expert, it.block_hash, it.rows, encode_rows(y)))
        return out

    pool = ForwardPool(ThreadCompute().run, compute_outputs)
    protocol = protocol_name("bench", "expert_forward")

    async def handler(peer: str, data: bytes) -> bytes:
        return codec.encode(ForwardResponse(tuple(await pool.forward(codec.decode(ForwardRequest, data)))))

    out = {}
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(Libp2pNetwork.open(Libp2pConfig.for_tests(bytes([9]) * 32)))
        server.set_request_handler(protocol, handler, MAX_FORWARD_BYTES)
        boot = (server.listen_addrs()[0],)
        clients = [await stack.enter_async_context(Libp2pNetwork.open(Libp2pConfig.for_tests(bytes([10, i]) * 16,
                                                                                         boot)))
                   for i in range(POOL_CLIENTS)]
        with trio.fail_after(30):
            while len(server.peers()) < POOL_CLIENTS or any(not c.peers() for c in clients):
                await trio.sleep(0.05)  # a benchmark's set-up: libp2p marks no event for "all dialled"
        row = encode_rows(torch.randn(1, d))
        payload = codec.encode(ForwardRequest(0, d, (ForwardItem(0, b"\0" * 32, 1, row),)))

        async def ask(net: Any, times: list[float]) -> None:
            start = trio.current_time()
            await net.request(server.local_id, protocol, payload, timeout=10.0, max_response_bytes=MAX_FORWARD_BYTES)
            times.append(trio.current_time() - start)

        async with trio.open_nursery() as nursery:  # warm up: streams, the thread, the codec
            for net in clients:
                nursery.start_soon(ask, net, [])
        for quiet in POOL_QUIET_S:
            pool.config = BatchConfig(max_delay_s=max(0.002, quiet), quiet_s=quiet)
            many: list[float] = []
            lone: list[float] = []
            forwards = 0
            for _ in range(reps):
                before = pool.batches_run
                async with trio.open_nursery() as nursery:
                    for net in clients:
                        nursery.start_soon(ask, net, many)
                forwards += pool.batches_run - before
                await ask(clients[0], lone)
            out[quiet] = (forwards / (reps * POOL_CLIENTS), statistics.median(many), statistics.median(lone))
    return out
