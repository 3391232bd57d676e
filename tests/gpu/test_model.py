"""The MoE model: seeded init, shapes, training, per-block blobs, layerwise composition, generation
(with and without the KV cache).

Also the tensor-block encoding of `gpu.weights`, which every block round trip goes through.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from chain.errors import DecodingError
from chain.tensors import KIND_EXPERT, ModelSpec, TensorInfo
from gpu.model import (
    InvalidBlockTensors,
    KVCache,
    MoEConfig,
    MoEModel,
    combine_expert_outputs,
    init_seeded,
    select_step_input,
)
from gpu.tiles import compute_tensor_root
from gpu.weights import decode_block, encode_block, make_tensor_record

TINY = MoEConfig(
    vocab_size=32, d_model=32, n_layers=2, n_heads=4, n_experts=4, top_k=2, d_ff=64, max_seq_len=16
)


def _tokens(batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY.vocab_size, (batch, length), generator=gen)


def _blobs(model: MoEModel) -> dict[str, bytes]:
    return {name: encode_block(model.block_state_dict(name)) for name in model.block_names()}


def _fields(cfg: MoEConfig) -> dict[str, int]:
    return {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}


# --- config and init ------------------------------------------------------------------------


def test_block_names_fixed_order() -> None:
    model = MoEModel(MoEConfig(n_layers=1, n_experts=2))
    assert model.block_names() == [
        "embed", "layer0.attn", "layer0.router", "layer0.expert0", "layer0.expert1", "head",
    ]
    params = {id(p) for p in model.parameters()}
    in_blocks = {id(p) for n in model.block_names() for p in model.get_block(n).parameters()}
    assert params == in_blocks  # every weight lives in exactly the named blocks


def test_config_from_spec() -> None:
    spec = ModelSpec(name="m", version="0.1.0", vocab_size=50, d_model=16, n_layers=3, n_heads=2,
                     n_experts=5, top_k=1, d_ff=24, max_seq_len=8, seed=7)
    assert MoEConfig.from_spec(spec) == MoEConfig(50, 16, 3, 2, 5, 1, 24, 8)


@pytest.mark.parametrize("changes", [{"n_heads": 5}, {"top_k": 5}, {"top_k": 0}, {"d_ff": 0}])
def test_invalid_config(changes: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        MoEConfig(**{**_fields(TINY), **changes})


def test_init_seeded_deterministic() -> None:
    rng_before = torch.get_rng_state()
    first = _blobs(init_seeded(TINY, 42))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone
    assert first == _blobs(init_seeded(TINY, 42))
    other = _blobs(init_seeded(TINY, 43))
    assert all(first[name] != other[name] for name in first)


def test_init_block_depends_on_seed_and_name_only() -> None:
    wider = init_seeded(MoEConfig(**{**_fields(TINY), "n_experts": 6}), 42)
    base = init_seeded(TINY, 42)
    for name in ("embed", "layer0.attn", "layer1.expert3", "head"):
        assert _blobs(base)[name] == _blobs(wider)[name]


def test_init_golden_block() -> None:
    """Pins the seeded init: a change here changes every genesis blob id."""
    blob = encode_block(init_seeded(TINY, 0).block_state_dict("layer0.expert0"))
    assert hashlib.sha256(blob).hexdigest() == GOLDEN_EXPERT_SHA256


# --- forward and training -------------------------------------------------------------------


def test_forward_shapes() -> None:
    model = init_seeded(TINY, 1)
    idx = _tokens(3, 10)
    logits, loss, aux = model(idx)
    assert logits.shape == (3, 10, TINY.vocab_size)
    assert loss is None
    assert aux.shape == () and torch.isfinite(aux) and aux > 0
    _, loss, _ = model(idx, targets=idx)
    assert loss is not None and loss.shape == () and torch.isfinite(loss)


def test_invalid_sequence_too_long() -> None:
    with pytest.raises(ValueError):
        init_seeded(TINY, 1)(_tokens(1, TINY.max_seq_len + 1))


def test_routing_top_k() -> None:
    model = init_seeded(TINY, 1)
    routing = model.route(0, model.attn_forward(0, model.embed_tokens(_tokens())))
    assert routing.experts.shape == routing.weights.shape == (24, TINY.top_k)
    assert torch.allclose(routing.weights.sum(-1), torch.ones(24))
    assert all(len(set(row.tolist())) == TINY.top_k for row in routing.experts)
    assert (routing.weights[:, 0] >= routing.weights[:, 1]).all()


def test_training_loss_decreases() -> None:
    model = init_seeded(TINY, 3)
    pattern = torch.tensor([1, 5, 9, 2, 7, 3])
    seq = pattern.repeat(3)[: TINY.max_seq_len + 1].unsqueeze(0).repeat(4, 1)  # [4, 17]
    x, y = seq[:, :-1], seq[:, 1:]  # [4, 16] each
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        _, loss, aux = model(x, y)
        (loss + 0.01 * aux).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    assert all(p.grad is None for p in model.parameters())


# --- blocks as blobs ------------------------------------------------------------------------


def test_block_round_trip_reproduces_outputs() -> None:
    source, target = init_seeded(TINY, 1), init_seeded(TINY, 2)
    idx = _tokens()
    assert not torch.equal(source(idx)[0], target(idx)[0])
    for name in source.block_names():
        blob = encode_block(source.block_state_dict(name))
        target.load_block_state_dict(name, decode_block(blob))
    assert _blobs(source) == _blobs(target)
    with torch.no_grad():
        for a, b in zip(source(idx, idx), target(idx, idx), strict=True):
            assert torch.equal(a, b)


def test_invalid_block_tensors() -> None:
    model = init_seeded(TINY, 1)
    good = model.block_state_dict("layer0.expert0")
    bad_cases = [
        {k: v for k, v in good.items() if k != "w1.weight"},
        {**good, "extra": torch.zeros(1)},
        {**good, "w1.weight": torch.zeros(3, 3)},
        {**good, "w1.weight": good["w1.weight"].half()},
    ]
    for tensors in bad_cases:
        with pytest.raises(InvalidBlockTensors) as info:
            model.load_block_state_dict("layer0.expert0", tensors)
        assert info.value.block == "layer0.expert0"
    with pytest.raises(KeyError):
        model.block_state_dict("layer9.expert0")


def test_encode_block_deterministic_and_readable() -> None:
    tensors = {
        "b": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "a": torch.ones(4, dtype=torch.bfloat16),
    }
    data = encode_block(tensors)
    assert data == encode_block(dict(reversed(tensors.items())))
    assert data == encode_block({k: v.t().contiguous().t() for k, v in tensors.items()})
    header_len = int.from_bytes(data[:8], "little")
    assert header_len % 8 == 0
    assert data[8 : 8 + header_len].rstrip(b" ").startswith(b'{"__metadata__":{"format":"pt"},"a":')
    loaded = safetensors_load(data)  # any safetensors reader takes it
    assert set(loaded) == {"a", "b"} and all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def test_encode_block_golden() -> None:
    data = encode_block({"w": torch.tensor([[1.0, -2.0]]), "i": torch.tensor(3, dtype=torch.int8)})
    assert data == GOLDEN_BLOCK


def test_decode_block_dtypes() -> None:
    tensors = {
        "f32": torch.randn(3, 2),
        "bf16": torch.randn(5).bfloat16(),
        "f16": torch.randn(2, 2).half(),
        "i8": torch.tensor([-3, 4], dtype=torch.int8),
        "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "noncontiguous": torch.randn(4, 3).t(),
    }
    data = encode_block(tensors)
    decoded = decode_block(data)
    assert set(decoded) == set(tensors)
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    for name, tensor in tensors.items():  # aligned for zero-copy views
        assert (8 + header_len + header[name]["data_offsets"][0]) % tensor.element_size() == 0
    for name, tensor in tensors.items():
        assert decoded[name].dtype == tensor.dtype and torch.equal(decoded[name], tensor)


def test_invalid_block_bytes() -> None:
    tensors = {"w": torch.randn(4, 4)}
    library = safetensors_save(tensors, metadata={"other": "x"})
    data = encode_block(tensors)
    for bad in (b"", b"garbage", data[:-1], data + b"\0", library):
        with pytest.raises(DecodingError):
            decode_block(bad)


def test_make_tensor_record() -> None:
    model = init_seeded(TINY, 1)
    data = encode_block(model.block_state_dict("layer1.expert2"))
    record = make_tensor_record("layer1.expert2", KIND_EXPERT, "0.1.0", data, 4096, 1024)
    assert record.blob_id == hashlib.sha256(data).digest()
    assert record.size == len(data)
    assert record.merkle_root == compute_tensor_root(data, 1024)
    assert (record.tile_size, record.subtile_size) == (4096, 1024)
    assert record.tensors == (
        TensorInfo(name="w1.weight", dtype="F32", shape=(TINY.d_ff, TINY.d_model)),
        TensorInfo(name="w2.weight", dtype="F32", shape=(TINY.d_model, TINY.d_ff)),
    )
    with pytest.raises(ValueError):
        make_tensor_record("x", KIND_EXPERT, "0.1.0", data, 1000, 300)
    with pytest.raises(DecodingError):
        make_tensor_record("x", KIND_EXPERT, "0.1.0", b"\0" * 16)


# --- layerwise composition ------------------------------------------------------------------


def test_layerwise_composition_equals_forward() -> None:
    model = init_seeded(TINY, 5)
    idx = _tokens(2, 16, seed=9)
    with torch.no_grad():
        logits, _, aux = model(idx)
        x = model.embed_tokens(idx)
        aux_sum = torch.zeros(())
        for layer in range(TINY.n_layers):
            x = model.attn_forward(layer, x)
            routing = model.route(layer, x)
            outputs = {}
            for expert in range(TINY.n_experts):  # as a remote executor would: per expert
                rows, _ = routing.select(expert)
                if len(rows):
                    outputs[expert] = model.expert_forward(layer, expert, routing.hidden[rows])
            x = x + combine_expert_outputs(routing, outputs).view_as(x)
            aux_sum = aux_sum + routing.aux_loss
        assert torch.equal(model.head_forward(x), logits)
        assert torch.equal(aux_sum / TINY.n_layers, aux)


def test_invalid_combine_missing_expert() -> None:
    model = init_seeded(TINY, 5)
    with torch.no_grad():
        routing = model.route(0, model.embed_tokens(_tokens()))
        with pytest.raises(ValueError):
            combine_expert_outputs(routing, {})


# --- generation -----------------------------------------------------------------------------


def test_generate_greedy_deterministic() -> None:
    model = init_seeded(TINY, 7)
    prompt = _tokens(2, 4)
    out = model.generate(prompt, 14)  # runs past max_seq_len: the context is cropped
    assert out.shape == (2, 18) and torch.equal(out[:, :4], prompt)
    assert torch.equal(out, init_seeded(TINY, 7).generate(prompt, 14))
    with torch.no_grad():
        step = model(prompt)[0][:, -1].argmax(-1)
    assert torch.equal(out[:, 4], step)


def test_generate_sampling_seeded() -> None:
    model = init_seeded(TINY, 7)
    prompt = _tokens(1, 3)
    first = model.generate(prompt, 8, temperature=1.0, generator=torch.Generator().manual_seed(1))
    again = model.generate(prompt, 8, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again)



# --- the KV cache ---------------------------------------------------------------------------


def _step_logits(model: MoEModel, prompt: torch.Tensor, n: int, use_cache: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy generation step by step by the rule of `generate`: (tokens [B, n], last logits [n, B, V])."""
    idx, cache, lasts = prompt, KVCache(model.cfg) if use_cache else None, []
    with torch.no_grad():
        for _ in range(n):
            step, cache = select_step_input(idx, cache, model.cfg.max_seq_len)  # [B, T_step]
            lasts.append(model(step, cache=cache)[0][:, -1])  # [B, V]
            idx = torch.cat([idx, lasts[-1].argmax(-1, keepdim=True)], dim=1)  # [B, L+1]
    return idx[:, prompt.shape[1]:], torch.stack(lasts)


def test_kv_cache_prefill_is_the_uncached_forward() -> None:
    model = init_seeded(TINY, 3)
    idx = _tokens(2, 9)
    with torch.no_grad():
        cache = KVCache(TINY)
        assert torch.equal(model(idx, cache=cache)[0], model(idx)[0])  # same ops, same order
    assert cache.length == 9 and all(k.shape == (2, TINY.n_heads, 16, 8) for k in cache.keys)


def test_kv_cache_chunks_match_one_forward() -> None:
    model = init_seeded(TINY, 3)
    idx = _tokens(2, 16)
    with torch.no_grad():
        full = model(idx)[0]  # [B, 16, V]
        cache = KVCache(TINY)
        chunks = [model(idx[:, a:b], cache=cache)[0] for a, b in ((0, 5), (5, 9), (9, 10), (10, 16))]
    assert cache.length == 16
    assert torch.allclose(torch.cat(chunks, dim=1), full, rtol=0, atol=1e-5)  # masked chunk of 4 too


@pytest.mark.parametrize("length", [1, 2, 8, 15, 16])
def test_generate_cache_matches_uncached(length: int) -> None:
    """Within the window and past it (16 new tokens always run past max_seq_len = 16)."""
    model = init_seeded(TINY, 7)
    prompt = _tokens(2, length, seed=length)
    cached = model.generate(prompt, 16)
    assert torch.equal(cached, model.generate(prompt, 16, use_cache=False))
    tokens, logits = _step_logits(model, prompt, 16, use_cache=True)
    ref_tokens, ref_logits = _step_logits(model, prompt, 16, use_cache=False)
    assert torch.equal(tokens, cached[:, length:]) and torch.equal(tokens, ref_tokens)
    assert torch.equal(logits[0], ref_logits[0])  # the prefill is the uncached forward
    assert torch.allclose(logits, ref_logits, rtol=0, atol=1e-5)
    first_slid = TINY.max_seq_len + 1 - length  # from this step the context exceeds the window:
    assert torch.equal(logits[first_slid:], ref_logits[first_slid:])  # recomputed, so identical


def test_generate_cache_sampling_matches_uncached() -> None:
    model = init_seeded(TINY, 7)
    prompt = _tokens(1, 3)
    outs = [model.generate(prompt, 20, temperature=0.9, generator=torch.Generator().manual_seed(4),
                           use_cache=use_cache) for use_cache in (True, False)]
    assert torch.equal(*outs)


@settings(max_examples=12, deadline=None)
@given(length=st.integers(1, TINY.max_seq_len + 2), new=st.integers(1, 2 * TINY.max_seq_len), seed=st.integers(0, 9))
def test_generate_cache_any_prompt_length(length: int, new: int, seed: int) -> None:
    model = init_seeded(TINY, seed)
    prompt = _tokens(1, length, seed=seed)
    assert torch.equal(model.generate(prompt, new), model.generate(prompt, new, use_cache=False))


def test_select_step_input_rule() -> None:
    cache = KVCache(TINY)
    prompt = _tokens(1, 5)
    step, same = select_step_input(prompt, cache, 16)
    assert torch.equal(step, prompt) and same is cache  # prefill: the whole prompt
    with torch.no_grad():
        init_seeded(TINY, 3)(prompt, cache=cache)
    longer = _tokens(1, 6)
    step, same = select_step_input(longer, cache, 16)
    assert torch.equal(step, longer[:, 5:]) and same is cache  # then one row
    past = _tokens(1, 17)
    step, none = select_step_input(past, cache, 16)
    assert torch.equal(step, past[:, 1:]) and none is None  # past the window: the last 16, no cache


def test_invalid_kv_cache_past_capacity() -> None:
    model = init_seeded(TINY, 3)
    cache = KVCache(TINY)
    with torch.no_grad():
        model(_tokens(2, 16), cache=cache)
        with pytest.raises(ValueError, match="positions 16..16 do not fit"):
            model(_tokens(2, 1), cache=cache)  # position 16 has no embedding
        with pytest.raises(ValueError, match="cannot take position 16"):
            model.attn_forward(0, torch.zeros(2, 1, TINY.d_model), cache)
        other = KVCache(TINY)
        model(_tokens(2, 2), cache=other)
        with pytest.raises(ValueError, match=r"\[B, H\]"):
            model.attn_forward(0, torch.zeros(3, 1, TINY.d_model), other)  # another batch size

GOLDEN_EXPERT_SHA256 = "2f31b49d1a7273dcdf2d73c8f033c10fa17e2c6e31c86da8bb2184178c07fec8"
GOLDEN_BLOCK = (
    b'\x90\x00\x00\x00\x00\x00\x00\x00{"__metadata__":{"format":"pt"},'
    b'"i":{"data_offsets":[8,9],"dtype":"I8","shape":[]},'
    b'"w":{"data_offsets":[0,8],"dtype":"F32","shape":[1,2]}}      '
    b"\x00\x00\x80?\x00\x00\x00\xc0\x03"
)
