"""Distributed inference over the simulated network: exact tokens, the KV cache, spot checks, failover.

Every test runs under `autojump_clock`; nodes compute inline (`InlineCompute`) so the mock
clock never jumps while torch runs. Waits are on conditions (`hub.wait_idle()`), never sleeps.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import trio
import trio.testing

from chain import codec
from chain.blobs import BlobStore
from chain.crypto import PrivateKey
from chain.records import ExpertState
from chain.tensors import KIND_EXPERT, KIND_MODULE, ModelSpec
from gpu.model import KVCache, MoEConfig, init_seeded, select_step_input
from gpu.weights import encode_block, make_tensor_record
from node.experts.config import ExpertsConfig
from node.experts.inference import Executor, Generation, InlineCompute
from node.experts.service import ExpertService
from node.experts.weights import StaticModelView, get_expert_heads
from node.experts.wire import ForwardItem, ForwardOutput, ForwardRequest, encode_rows
from p2p.network import RemoteError
from p2p.sim import SimNetworkHub

NETWORK = "testnet"
SPEC = ModelSpec(name="tiny-moe", version="0.1.0", vocab_size=256, d_model=32, n_layers=2, n_heads=2,
                 n_experts=4, top_k=2, d_ff=64, max_seq_len=24, seed=11)
PROMPT = list(b"Hello, experts")


def build_weights(blob_dir: Path, spec: ModelSpec = SPEC) -> tuple[StaticModelView, BlobStore, torch.nn.Module]:
    """A seeded model written as blobs, its chain states, and the model itself (the reference)."""
    model = init_seeded(MoEConfig.from_spec(spec), spec.seed)
    blobs = BlobStore(blob_dir)
    states = {}
    for name in model.block_names():
        data = encode_block(model.block_state_dict(name))
        blobs.put(data)
        rec = make_tensor_record(name, KIND_EXPERT if ".expert" in name else KIND_MODULE, "0.1.0", data)
        states[name] = ExpertState(rec, codec.hash_of(rec), (), rec.version, 0)
    return StaticModelView(spec, states), blobs, model.eval()


def reference_tokens(model: torch.nn.Module, prompt: list[int], n: int, temperature: float = 0.0,
                     seed: int = 0, use_cache: bool = True) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    out = model.generate(torch.tensor([prompt]), n, temperature=temperature, generator=gen, use_cache=use_cache)
    return out[0, len(prompt):].tolist()


def ring(i: int, n_layers: int = SPEC.n_layers, n_experts: int = SPEC.n_experts) -> tuple[str, ...]:
    """Node i serves experts i and i+1 of every layer: no node holds them all, two replicas each."""
    return tuple(f"layer{layer}.expert{(i + r) % n_experts}" for layer in range(n_layers) for r in range(2))


def make_service(net, view, blobs, serve, cls=ExpertService, **config) -> ExpertService:
    settings = {"spot_check": 0.0, "local_fallback": False, "request_timeout_s": 2.0, **config}
    return cls(net, PrivateKey.from_label(f"node-{net.local_id}"), view, blobs,
               ExpertsConfig(serve=serve, **settings), network_id=NETWORK, clock=net,
               compute=InlineCompute(), rng=random.Random(net.local_id))


async def start_all(nursery: trio.Nursery, hub: SimNetworkHub, services: list[ExpertService]) -> None:
    for svc in services:
        await nursery.start(svc.run)
    for svc in services:
        await svc.announce()
    await hub.wait_idle()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_distributed_greedy_matches_single_process(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    view, blobs, model = build_weights(tmp_path / "blobs")
    prompt = PROMPT[: 4 + seed]
    async with SimNetworkHub(seed=seed) as hub:
        services = [make_service(hub.add_node(f"n{i}"), view, blobs, ring(i)) for i in range(4)]
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, services)
            assert all(len(s.local.served) < SPEC.n_layers * SPEC.n_experts for s in services)
            gen = await services[seed % 4].generate_tokens(prompt, 10)
            nursery.cancel_scope.cancel()
    assert gen.tokens == reference_tokens(model, prompt, 10)
    remote = {node for step in gen.layers for used in step for node in used.values() if node}
    assert remote, "some experts must have run on other nodes"
    assert gen.failovers == 0 and not gen.faults


async def test_sampling_with_a_seed_matches_single_process(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    view, blobs, model = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=5) as hub:
        services = [make_service(hub.add_node(f"n{i}"), view, blobs, ring(i)) for i in range(4)]
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, services)
            gen = await services[2].generate_tokens(PROMPT, 8, temperature=0.8, seed=42)
            nursery.cancel_scope.cancel()
    assert gen.tokens == reference_tokens(model, PROMPT, 8, temperature=0.8, seed=42)


ROWS_PER_TOKEN = SPEC.n_layers * SPEC.top_k  # expert input rows of one position


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("length", [1, 7, SPEC.max_seq_len - 1, SPEC.max_seq_len, SPEC.max_seq_len + 2])
async def test_cached_generation_matches_single_process(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, length: int, use_cache: bool
) -> None:
    """Greedy and seeded sampling; 6 new tokens run past max_seq_len for the longer prompts."""
    view, blobs, model = build_weights(tmp_path / "blobs")
    prompt = (PROMPT * 2)[:length]
    async with SimNetworkHub(seed=length) as hub:
        services = [make_service(hub.add_node(f"n{i}"), view, blobs, ring(i)) for i in range(4)]
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, services)
            greedy = await services[0].generate_tokens(prompt, 6, use_cache=use_cache)
            sampled = await services[1].generate_tokens(prompt, 6, 0.8, 42, use_cache=use_cache)
            nursery.cancel_scope.cancel()
    assert greedy.tokens == reference_tokens(model, prompt, 6, use_cache=use_cache)
    assert sampled.tokens == reference_tokens(model, prompt, 6, 0.8, 42, use_cache=use_cache)
    S = SPEC.max_seq_len  # step t runs a sequence of length + t tokens
    if use_cache and length <= S:
        positions = [length] + [1 if length + t <= S else S for t in range(1, 6)]
    else:
        positions = [min(length + t, S) for t in range(6)]
    assert greedy.cache == (use_cache and length <= S) and greedy.positions == positions


async def test_cached_executor_logits_equal_single_process(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Step by step, the executor's logits with a cache are `MoEModel`'s with a cache, bit for bit."""
    view, blobs, model = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=2) as hub:
        servers = [make_service(hub.add_node(f"n{i}"), view, blobs, ring(i)) for i in range(4)]
        client = make_service(hub.add_node("client"), view, blobs, ("none",))
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers, client])
            executor = Executor(client.net, client.protocol, await client.shared_model(), client.local,
                                client.registry, client.inference, client.compute, client.rng)
            idx, mine, ref, gen = torch.tensor([PROMPT]), KVCache(model.cfg), KVCache(model.cfg), Generation(PROMPT)
            for _ in range(SPEC.max_seq_len - len(PROMPT) + 1):  # until the cache is full
                step, mine = select_step_input(idx, mine, SPEC.max_seq_len)  # [1, T_step]
                logits, _ = await executor.forward(step, get_expert_heads(client.view), gen, mine)
                with torch.no_grad():
                    expected = model(step, cache=ref)[0]  # [1, T_step, V]
                assert torch.equal(logits, expected)
                idx = torch.cat([idx, logits[:, -1:].argmax(-1)], dim=1)  # [1, L+1]
            nursery.cancel_scope.cancel()
    assert mine is not None and mine.length == SPEC.max_seq_len
    assert gen.positions == [len(PROMPT)] + [1] * (SPEC.max_seq_len - len(PROMPT))


class Counter(ExpertService):
    """Serves as usual, and logs the rows of every item it is asked, in arrival order."""

    log: list[int]

    def compute_outputs(self, req: ForwardRequest) -> list[ForwardOutput]:
        self.log.extend(item.rows for item in req.items)
        return super().compute_outputs(req)


async def test_cached_generation_sends_one_row_per_expert_and_token(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    view, blobs, model = build_weights(tmp_path / "blobs")
    n = 8  # 14 + 8 positions fit in max_seq_len = 24
    runs, logs = {}, {}
    for use_cache in (True, False):
        log: list[int] = []
        async with SimNetworkHub(seed=3) as hub:
            servers = [make_service(hub.add_node(f"n{i}"), view, blobs, ring(i), cls=Counter) for i in range(4)]
            for server in servers:
                server.log = log  # one log: requests arrive token by token
            client = make_service(hub.add_node("client"), view, blobs, ("none",))
            async with trio.open_nursery() as nursery:
                await start_all(nursery, hub, [*servers, client])
                runs[use_cache] = await client.generate_tokens(PROMPT, n, use_cache=use_cache)
                nursery.cancel_scope.cancel()
        logs[use_cache] = log
    cached, uncached = runs[True], runs[False]
    assert cached.tokens == uncached.tokens == reference_tokens(model, PROMPT, n)
    prefill = len(PROMPT) * ROWS_PER_TOKEN
    assert cached.rows_sent == [prefill] + [ROWS_PER_TOKEN] * (n - 1)
    assert uncached.rows_sent == [(len(PROMPT) + t) * ROWS_PER_TOKEN for t in range(n)]
    assert sum(logs[True]) == sum(cached.rows_sent) and sum(logs[False]) == sum(uncached.rows_sent)
    cut = next(i for i in range(len(logs[True]) + 1) if sum(logs[True][:i]) == prefill)
    after = logs[True][cut:]
    assert after == [1] * len(after) and len(after) == (n - 1) * ROWS_PER_TOKEN  # one row per request item
    pairs = zip(cached.bytes_sent[1:], uncached.bytes_sent[1:], strict=True)
    assert all(mine < 0.2 * theirs for mine, theirs in pairs)  # 1 row vs 15 to 21 per expert
    assert cached.cache and not uncached.cache

class Liar(ExpertService):
    """Serves every expert, and answers wrongly."""

    def compute_outputs(self, req: ForwardRequest) -> list[ForwardOutput]:
        return [ForwardOutput(o.expert, o.block_hash, o.rows,
                              encode_rows(torch.frombuffer(bytearray(o.data), dtype=torch.float32) + 0.5))
                for o in super().compute_outputs(req)]


async def test_wrong_expert_output_is_caught_by_spot_check_and_penalised(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    view, blobs, model = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=9) as hub:
        client = make_service(hub.add_node("client"), view, blobs, ("none",), spot_check=1.0, local_fallback=True)
        liar = make_service(hub.add_node("liar"), view, blobs, ("auto",), cls=Liar)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [client, liar])
            gen = await client.generate_tokens(PROMPT, 4)
            nursery.cancel_scope.cancel()
        assert client.net.score("liar") < 0
    assert "liar" in gen.faults and gen.spot_checks >= 1
    assert gen.tokens == reference_tokens(model, PROMPT, 4), "the checked (local) outputs are used"


class Victim(ExpertService):
    """Crashes (its whole node) while answering its `crash_at`-th request."""

    hub: SimNetworkHub
    crash_at = 3

    async def on_forward(self, requester: str, data: bytes) -> bytes:
        if self.served_requests + 1 == self.crash_at:
            self.hub.crash(self.net.local_id)
            await trio.lowlevel.checkpoint()  # cancelled here: the request is never answered
        return await super().on_forward(requester, data)


async def test_lost_serving_peer_mid_generation_finishes_through_a_replica(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    view, blobs, model = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=4) as hub:
        nets = [hub.add_node(f"n{i}") for i in range(4)]
        services = [make_service(net, view, blobs, ring(i), cls=Victim if i == 1 else ExpertService)
                    for i, net in enumerate(nets)]
        services[1].hub = hub
        client = make_service(hub.add_node("client"), view, blobs, ("none",))
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*services, client])
            gen = await client.generate_tokens(PROMPT, 8)
            nursery.cancel_scope.cancel()
    assert not nets[1].alive
    assert services[1].served_requests == Victim.crash_at - 1
    assert gen.failovers >= 1
    assert gen.tokens == reference_tokens(model, PROMPT, 8)
    late = gen.layers[-1]
    assert all(node != "n1" for used in late for node in used.values())


async def test_server_refuses_weights_it_does_not_serve(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    view, blobs, _ = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=1) as hub:
        server = make_service(hub.add_node("server"), view, blobs, ("layer0.expert0",))
        asker = hub.add_node("asker")
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            head = view.get_state("layer0.expert0").head
            row = encode_rows(torch.zeros(1, SPEC.d_model))
            for expert, block_hash in ((0, b"\x01" * 32), (1, view.get_state("layer0.expert1").head)):
                req = ForwardRequest(0, SPEC.d_model, (ForwardItem(expert, block_hash, 1, row),))
                with pytest.raises(RemoteError, match="not served"):
                    await asker.request("server", server.protocol, codec.encode(req), timeout=2.0)
            ok = ForwardRequest(0, SPEC.d_model, (ForwardItem(0, head, 1, row),))
            assert await asker.request("server", server.protocol, codec.encode(ok), timeout=2.0)
            assert server.net.score("asker") == 0  # a refused hash is not misbehaviour
            with pytest.raises(RemoteError):
                await asker.request("server", server.protocol, b"\x93garbage", timeout=2.0)
            assert server.net.score("asker") < 0  # a malformed request is
            nursery.cancel_scope.cancel()
