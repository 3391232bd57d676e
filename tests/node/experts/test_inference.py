"""Distributed inference over the simulated network: exact tokens, spot checks, failover.

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
from gpu.model import MoEConfig, init_seeded
from gpu.weights import encode_block, make_tensor_record
from node.experts.config import ExpertsConfig
from node.experts.inference import InlineCompute
from node.experts.service import ExpertService
from node.experts.weights import StaticModelView
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
                     seed: int = 0) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    out = model.generate(torch.tensor([prompt]), n, temperature=temperature, generator=gen)
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
