"""Model presets of a devnet genesis: "devnet" (the shipped, trained artifact) and "bench".

"bench" has larger experts (d_model 256, d_ff 1024, 8 experts per layer, 4 layers), so that
compute, not only round trips, shows in the benchmarks. Its weights are random (`init_seeded`
from the spec's seed: the same bytes on every machine), never trained: it is for speed only,
its text is noise. It is built on the fly (a second or two), never stored in the repository; it
reuses the devnet's tokenizer (same vocabulary) and corpus list, so a bench devnet runs every
service a devnet runs.
"""

from __future__ import annotations

import functools

from chain.tensors import ModelSpec
from genesis.devnet import Prebuilt, load_prebuilt

DEVNET = "devnet"
BENCH = "bench"
PRESETS = (DEVNET, BENCH)

BENCH_SPEC = ModelSpec(
    name="blyan-bench-moe",
    version="0.1.0",
    vocab_size=2048,  # the devnet tokenizer's
    d_model=256,
    n_layers=4,
    n_heads=8,  # head size 32
    n_experts=8,
    top_k=2,
    d_ff=1024,  # an expert: 2 x 256 x 1024 float32 = 2 MiB
    max_seq_len=256,
    seed=20261204,
)


@functools.cache
def build_bench() -> Prebuilt:
    """The bench model: `BENCH_SPEC` at random init, the devnet's tokenizer and corpus list."""
    from genesis.build import WEIGHTS_VERSION, compute_block_kind  # torch: only when asked
    from gpu.model import MoEConfig, init_seeded
    from gpu.weights import encode_block, make_tensor_record

    devnet = load_prebuilt()
    model = init_seeded(MoEConfig.from_spec(BENCH_SPEC), BENCH_SPEC.seed)
    records, blobs = [], []
    for name in model.block_names():
        data = encode_block(model.block_state_dict(name))
        records.append(make_tensor_record(name, compute_block_kind(name), WEIGHTS_VERSION, data))
        blobs.append(data)
    tokenizer = devnet.tensors[-1]  # model blocks first, then the tokenizer (`make_records`)
    return Prebuilt(BENCH_SPEC, (*records, tokenizer), (*blobs, devnet.blobs[-1]), devnet.corpus)


def load_preset(name: str) -> Prebuilt:
    """The model, tokenizer and corpus of a preset (`ValueError` for an unknown name)."""
    if name == DEVNET:
        return load_prebuilt()
    if name == BENCH:
        return build_bench()
    raise ValueError(f"unknown genesis preset {name!r}; known: {', '.join(PRESETS)}")
