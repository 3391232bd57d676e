"""Genesis presets: the "bench" model builds on the fly, is the same bytes every time, makes a
valid devnet pact, and a distributed generation runs on it (simulated network)."""

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
from chain.pact import validate_pact
from chain.records import ExpertState
from chain.tensors import TOKENIZER_BLOCK
from genesis.devnet import build_devnet_pact, load_prebuilt
from genesis.presets import BENCH, BENCH_SPEC, DEVNET, build_bench, load_preset
from gpu.model import MoEConfig, MoEModel
from gpu.weights import decode_block
from node.app.devnet import assign_experts
from node.experts.config import ExpertsConfig
from node.experts.inference import InlineCompute
from node.experts.service import ExpertService
from node.experts.weights import StaticModelView
from p2p.sim import SimNetworkHub


def test_bench_preset_has_the_asked_shape_and_the_devnet_tokenizer() -> None:
    bench = load_preset(BENCH)
    assert (BENCH_SPEC.d_model, BENCH_SPEC.d_ff, BENCH_SPEC.n_experts, BENCH_SPEC.n_layers) == (256, 1024, 8, 4)
    names = [r.name for r in bench.tensors]
    assert names == [*MoEModel(MoEConfig.from_spec(BENCH_SPEC)).block_names(), TOKENIZER_BLOCK]
    assert bench.tensors[-1] == load_prebuilt().tensors[-1]
    assert len(bench.blobs) == len(bench.tensors) and all(r.size == len(b) for r, b in zip(
        bench.tensors, bench.blobs, strict=True))
    w1 = decode_block(bench.blobs[names.index("layer0.expert0")])["w1.weight"]
    assert w1.shape == (1024, 256) and float(w1.std()) > 0  # random init, not zeros


def test_bench_preset_is_deterministic() -> None:
    again = build_bench.__wrapped__()
    assert again.tensors == build_bench().tensors and again.blobs == build_bench().blobs


def test_bench_preset_makes_a_valid_devnet_pact() -> None:
    pact = build_devnet_pact(n_validators=4, prebuilt=load_preset(BENCH))
    validate_pact(pact)
    assert pact.model == BENCH_SPEC
    assert build_devnet_pact(n_validators=4, prebuilt=load_preset(DEVNET)).model == load_prebuilt().spec


def test_invalid_preset_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown genesis preset"):
        load_preset("huge")


async def test_generation_runs_on_the_bench_preset(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """4 simulated nodes, experts spread two replicas each, one client: the tokens are
    `MoEModel.generate`'s with the preset's weights."""
    bench = load_preset(BENCH)
    blobs = BlobStore(tmp_path / "blobs")
    states = {}
    model = MoEModel(MoEConfig.from_spec(BENCH_SPEC))
    for rec, data in zip(bench.tensors, bench.blobs, strict=True):
        blobs.put(data)
        states[rec.name] = ExpertState(rec, codec.hash_of(rec), (), rec.version, 0)
        if rec.name in model.block_names():
            model.load_block_state_dict(rec.name, decode_block(data))
    view = StaticModelView(BENCH_SPEC, states)
    prompt = list(range(5, 17))
    async with SimNetworkHub(seed=1) as hub:
        services = []
        for i, serve in enumerate([*assign_experts(BENCH_SPEC, 4), ("none",)]):
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
            gen = await services[-1].generate_tokens(prompt, 4)
            nursery.cancel_scope.cancel()
    ref = model.eval().generate(torch.tensor([prompt]), 4)[0, len(prompt):].tolist()
    assert gen.tokens == ref
    assert all(node for step in gen.layers for used in step for node in used.values())  # all remote


def test_prepare_devnet_with_the_bench_preset(tmp_path: Path) -> None:
    from node.app.config import BLOBS_DIR, CONFIG_FILE, load_config
    from node.app.datadir import load_pact_file
    from node.app.devnet import DEVNET_PACT_FILE, prepare_devnet

    dirs = prepare_devnet(tmp_path, 2, 31900, 18900, preset=BENCH)
    pact = load_pact_file(tmp_path / DEVNET_PACT_FILE)
    assert pact.model == BENCH_SPEC
    store = BlobStore(dirs[1] / BLOBS_DIR)
    assert all(store.has(r.blob_id) for r in pact.tensors)
    assert len(load_config(dirs[0] / CONFIG_FILE).experts.serve) == BENCH_SPEC.n_layers * BENCH_SPEC.n_experts
