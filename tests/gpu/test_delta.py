"""The delta codec: round trips, exact decoding, error feedback, canonical blobs, and every malformed blob refused."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from chain.errors import BlyanError
from chain.heads import is_compression_method
from chain.tensors import KIND_EXPERT
from gpu.delta import (
    FULL_DENSITY,
    MAX_DELTA_ELEMENTS,
    CompressionConfig,
    InvalidDelta,
    apply_delta,
    compress_delta,
    compute_delta,
    compute_kept,
    compute_norms,
    compute_relative_error,
    decode_delta,
    is_finite,
    read_method,
)
from gpu.weights import decode_block, encode_block, make_tensor_record

ROOT = Path(__file__).resolve().parents[2]
TOPK_INT2 = CompressionConfig(chunk=1024, density_ppm=100_000, bits=2)
LOWRANK = CompressionConfig(rank=8, bits=8)


def _delta(seed: int = 0, scale: float = 1e-3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "layer0.expert1/w1.weight": torch.randn(96, 48, generator=gen) * scale,  # [F, D]
        "layer0.expert1/w2.weight": torch.randn(48, 96, generator=gen) * scale,  # [D, F]
        "layer0.router/norm.weight": torch.randn(48, generator=gen) * scale,  # [D]
    }


def _rank_r(m: int, n: int, r: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(m, r, generator=gen) @ torch.randn(r, n, generator=gen) * 1e-2  # [m, n]


def _reencode(blob: bytes, **changes: torch.Tensor | None) -> bytes:
    """The blob with some parts replaced (or removed with None), canonically re-encoded."""
    parts = decode_block(blob)
    for key, value in changes.items():
        if value is None:
            parts.pop(key)
        else:
            parts[key] = value
    return encode_block(parts)


def _meta_blob(blob: bytes, edit: object) -> bytes:
    """The blob with its meta JSON passed through `edit` (a function of the parsed dict)."""
    meta = json.loads(decode_block(blob)["meta"].numpy().tobytes())
    text = edit(meta)
    raw = text if isinstance(text, bytes) else json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    return _reencode(blob, meta=torch.tensor(list(raw), dtype=torch.uint8))


# --- the method string ---------------------------------------------------------------------------


@pytest.mark.parametrize(("cfg", "method"), [
    (CompressionConfig(), "dense"),
    (CompressionConfig(bits=8), "int8"),
    (CompressionConfig(chunk=1024, bits=4), "int4(chunk=1024)"),
    (CompressionConfig(density_ppm=20_000, bits=2), "topk(chunk=4096,density=20000)+int2"),
    (CompressionConfig(density_ppm=20_000), "topk(chunk=4096,density=20000)"),
    (CompressionConfig(rank=8, bits=8), "lowrank(rank=8)+int8"),
    (CompressionConfig(rank=4, density_ppm=300_000, bits=4), "lowrank(rank=4)+topk(chunk=4096,density=300000)+int4"),
    (CompressionConfig(chunk=512), "dense(chunk=512)"),
])
def test_method_canonical_strings(cfg: CompressionConfig, method: str) -> None:
    assert cfg.method == method
    assert CompressionConfig.parse(method) == cfg
    assert is_compression_method(method)


configs = st.builds(
    CompressionConfig,
    chunk=st.sampled_from([1, 3, 64, 100, 1024, 4096]),
    density_ppm=st.sampled_from([1, 10_000, 333_333, FULL_DENSITY]),
    bits=st.sampled_from([8, 4, 2]),
    rank=st.sampled_from([0, 1]),
) | st.builds(CompressionConfig, chunk=st.sampled_from([7, 4096]), density_ppm=st.sampled_from([50_000, FULL_DENSITY]))


@given(configs)
def test_method_parse_inverse(cfg: CompressionConfig) -> None:
    assert CompressionConfig.parse(cfg.method) == cfg
    assert is_compression_method(cfg.method)


@pytest.mark.parametrize("method", [
    "", "int3", "dense+int8", "int8+topk(chunk=4096,density=10)", "topk(chunk=4096)", "topk(density=10,chunk=4096)",
    "int8(chunk=4096)", "lowrank(rank=8)", "lowrank(rank=3)+int8", "topk(chunk=04096,density=10)", "int8+int8",
    "topk(chunk=4096,density=1000000)", "int8(rank=2)", "lowrank(rank=8,rank=8)+int8", "INT8", "int8 ", "x" * 97,
])
def test_parse_invalid_method(method: str) -> None:
    with pytest.raises(ValueError):
        CompressionConfig.parse(method)


@pytest.mark.parametrize("fields", [
    {"chunk": 0}, {"chunk": 1 << 21}, {"density_ppm": 0}, {"density_ppm": FULL_DENSITY + 1}, {"bits": 16},
    {"bits": 1}, {"rank": -1}, {"rank": 8}, {"rank": 3, "bits": 8}, {"chunk": 4096.0}, {"bits": True},
])
def test_validate_invalid_config(fields: dict) -> None:
    with pytest.raises(ValueError):
        CompressionConfig(**fields)


# --- round trips ---------------------------------------------------------------------------------


def test_dense_round_trip_exact() -> None:
    delta = _delta()
    out = compress_delta(delta, CompressionConfig())
    decoded = decode_delta(out.blob)
    assert list(decoded) == sorted(delta)
    assert all(torch.equal(decoded[k], delta[k]) for k in delta)
    assert out.error_l2 == 0.0 and out.method == "dense"
    assert out.raw_bytes == 4 * sum(t.numel() for t in delta.values()) and out.compressed_bytes == len(out.blob)
    assert all(not t.any() for t in out.residual.values())


def test_int8_round_trip_error_small() -> None:
    delta = _delta()
    out = compress_delta(delta, CompressionConfig(chunk=256, bits=8))
    decoded = decode_delta(out.blob)
    for name, x in delta.items():
        flat, dec = x.reshape(-1), decoded[name].reshape(-1)
        for start in range(0, flat.numel(), 256):
            chunk = flat[start : start + 256]
            bound = float(chunk.abs().max()) / 127 / 2 * (1 + 1e-5)
            assert float((dec[start : start + 256] - chunk).abs().max()) <= bound
    assert 0 < out.error_l2 < 0.01
    assert 3.5 < out.ratio < 4


def test_topk_keeps_the_k_largest_per_chunk() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1000, generator=gen)  # [n]: chunks of 128, the last one 104 long
    cfg = CompressionConfig(chunk=128, density_ppm=50_000)
    decoded = decode_delta(compress_delta({"b/t": x}, cfg).blob)["b/t"]
    for start in range(0, 1000, 128):
        chunk, dec = x[start : start + 128], decoded[start : start + 128]
        kept = dec != 0
        assert int(kept.sum()) == compute_kept(chunk.numel(), cfg.density_ppm)
        assert torch.equal(dec[kept], chunk[kept])
        assert float(chunk[kept].abs().min()) >= float(chunk[~kept].abs().max())


def test_topk_ties_go_to_the_lower_index() -> None:
    x = torch.tensor([1.0, -2.0, 2.0, 0.5, -2.0, 2.0])  # [6]
    decoded = decode_delta(compress_delta({"b/t": x}, CompressionConfig(chunk=6, density_ppm=500_000)).blob)
    assert decoded["b/t"].tolist() == [0.0, -2.0, 2.0, 0.0, -2.0, 0.0]


def test_lowrank_of_a_rank_r_matrix_close() -> None:
    x = _rank_r(256, 128, 8)
    out = compress_delta({"b/w": x}, LOWRANK)
    assert out.error_l2 < 0.02
    assert out.ratio > 10


def test_lowrank_skips_tensors_it_would_not_shrink() -> None:
    gen = torch.Generator().manual_seed(2)
    delta = {"b/v": torch.randn(40, generator=gen), "b/thin": torch.randn(3, 4, generator=gen),
             "b/w": _rank_r(64, 64, 2)}
    decoded = decode_delta(compress_delta(delta, CompressionConfig(rank=2, bits=8)).blob)
    assert all(compute_relative_error({k: decoded[k]}, {k: delta[k]}) < 0.02 for k in delta)


def test_compression_ratio_over_100_at_1pct_2bit() -> None:
    gen = torch.Generator().manual_seed(0)
    delta = {"b/w": torch.randn(1024, 1024, generator=gen)}  # 1M elements
    out = compress_delta(delta, CompressionConfig(chunk=4096, density_ppm=10_000, bits=2))
    assert out.ratio >= 100


def test_error_feedback_cumulative_sum_converges() -> None:
    delta = {"b/w": torch.randn(64, 64, generator=torch.Generator().manual_seed(1))}
    residual, total = None, torch.zeros(64, 64)
    errors = {}
    for n in range(1, 65):
        out = compress_delta(delta, TOPK_INT2, residual)
        residual = out.residual
        total += decode_delta(out.blob)["b/w"]
        errors[n] = float((total - n * delta["b/w"]).norm() / (n * delta["b/w"]).norm())
    assert errors[1] > 0.5
    assert all(errors[n] * n < 4 for n in (16, 32, 64))  # about 1/n once the residual has settled
    assert errors[64] < errors[32] < errors[16] < 0.25


def test_residual_is_what_the_blob_misses() -> None:
    delta, carried = _delta(0), _delta(1, scale=1e-4)
    out = compress_delta(delta, TOPK_INT2, carried)
    decoded = decode_delta(out.blob)
    for name in delta:
        assert torch.equal(out.residual[name], (delta[name] + carried[name]) - decoded[name])
    assert out.error_l2 == compute_relative_error(decoded, delta)


def test_zero_delta_error_zero() -> None:
    for cfg in (CompressionConfig(), TOPK_INT2, LOWRANK):
        out = compress_delta({"b/w": torch.zeros(32, 32)}, cfg)
        assert out.error_l2 == 0.0
        assert not decode_delta(out.blob)["b/w"].any()


# --- determinism and canonical bytes -------------------------------------------------------------


@pytest.mark.parametrize("cfg", [CompressionConfig(), TOPK_INT2, LOWRANK, CompressionConfig(chunk=100, bits=4)])
def test_compress_canonical(cfg: CompressionConfig) -> None:
    a, b = compress_delta(_delta(), cfg), compress_delta(_delta(), cfg)
    assert a.blob == b.blob
    tensors = decode_block(a.blob)
    assert len(tensors) <= 4 and "meta" in tensors
    make_tensor_record("layer0.expert1", KIND_EXPERT, "1.0.0", a.blob)  # a tensor block like any other


def test_decode_twice_identical_bytes() -> None:
    blob = compress_delta(_delta(), LOWRANK).blob
    first, second = decode_delta(blob), decode_delta(blob)
    assert encode_block(first) == encode_block(second)


CHILD = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from gpu.delta import CompressionConfig, compress_delta, decode_delta
from gpu.weights import encode_block
torch.set_num_threads(2)
gen = torch.Generator().manual_seed(5)
delta = {"b/w": torch.randn(128, 96, generator=gen) * 1e-3, "b/v": torch.randn(300, generator=gen)}
for i, cfg in enumerate([CompressionConfig(rank=8, bits=8), CompressionConfig(chunk=64, density_ppm=100000, bits=4)]):
    blob = compress_delta(delta, cfg).blob
    open(sys.argv[2] + f".{i}.blob", "wb").write(blob)
    open(sys.argv[2] + f".{i}.decoded", "wb").write(encode_block(decode_delta(blob)))
"""


def test_decode_in_another_process_same_bytes(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(tmp_path / "out")], check=True, timeout=120)
    gen = torch.Generator().manual_seed(5)
    delta = {"b/w": torch.randn(128, 96, generator=gen) * 1e-3, "b/v": torch.randn(300, generator=gen)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the child ran with 2
    try:
        for i, cfg in enumerate([LOWRANK, CompressionConfig(chunk=64, density_ppm=100_000, bits=4)]):
            blob = (tmp_path / f"out.{i}.blob").read_bytes()
            assert encode_block(decode_delta(blob)) == (tmp_path / f"out.{i}.decoded").read_bytes()
            if cfg.rank == 0:  # an SVD may round differently with other thread counts; decoding may not
                assert compress_delta(delta, cfg).blob == blob
    finally:
        torch.set_num_threads(threads)


# --- deltas, norms -------------------------------------------------------------------------------


def test_compute_and_apply_delta_round_trip() -> None:
    base, trained = _delta(0, 1.0), _delta(1, 1.0)
    delta = compute_delta(trained, base)
    result = apply_delta(base, decode_delta(compress_delta(delta, CompressionConfig()).blob))
    assert all(torch.equal(result[k], base[k] + (trained[k] - base[k])) for k in base)


@pytest.mark.parametrize("other", [
    {"b/x": torch.zeros(3)}, {"b/w": torch.zeros(4)}, {"b/w": torch.zeros(3, dtype=torch.float64)}, {"b/w": [0.0] * 3},
])
def test_invalid_apply_and_compute_mismatch(other: dict) -> None:
    with pytest.raises(InvalidDelta):
        apply_delta({"b/w": torch.zeros(3)}, other)
    with pytest.raises(InvalidDelta):
        compute_delta(other, {"b/w": torch.zeros(3)})


def test_compute_norms_exact() -> None:
    delta = {"a": torch.tensor([3.0, -4.0]), "b": torch.tensor([[12.0]]), "c": torch.tensor([1e-45, -1e-44])}
    l2, linf = compute_norms(delta)
    assert l2 == 13.0 and linf == 12.0
    big = _delta(2, 1.0)
    reference = math.sqrt(math.fsum(float(v) ** 2 for t in big.values() for v in t.reshape(-1).tolist()))
    assert compute_norms(big)[0] == reference


def test_is_finite_and_invalid_non_finite() -> None:
    for bad in (math.nan, math.inf, -math.inf):
        delta = {"b/w": torch.tensor([0.0, bad])}
        assert not is_finite(delta)
        with pytest.raises(InvalidDelta):
            compute_norms(delta)
        with pytest.raises(InvalidDelta):
            compress_delta(delta, CompressionConfig())
    assert is_finite(_delta())


@pytest.mark.parametrize("delta", [
    {}, {"": torch.zeros(2)}, {"b/w": torch.zeros(0)}, {"b/w": torch.zeros(2, dtype=torch.int64)}, {"b/w": [1.0]},
])
def test_invalid_compress_input(delta: dict) -> None:
    with pytest.raises(InvalidDelta):
        compress_delta(delta, CompressionConfig())


def test_invalid_residual_mismatch() -> None:
    with pytest.raises(InvalidDelta):
        compress_delta({"b/w": torch.zeros(4)}, CompressionConfig(), {"b/w": torch.zeros(5)})


# --- malformed blobs -----------------------------------------------------------------------------


def _topk_blob() -> bytes:
    return compress_delta({"b/w": torch.randn(280, generator=torch.Generator().manual_seed(0))},
                          CompressionConfig(chunk=100, density_ppm=50_000, bits=8)).blob  # chunks keep 5, 5, 4


def _indices(values: list[int]) -> torch.Tensor:
    """Packed 7-bit indices (chunk 100), as the blob holds them."""
    bits = np.array([(v >> i) & 1 for v in values for i in range(7)], dtype=np.uint8)
    return torch.from_numpy(np.packbits(bits, bitorder="little"))


GOOD_INDICES = [0, 1, 2, 3, 4] * 2 + [0, 1, 2, 3]
ONE_BYTE = torch.ones(1, dtype=torch.uint8)
LAST_BIT = torch.tensor([0] * 12 + [128], dtype=torch.uint8)  # a padding bit of the 13-byte indices


def test_indices_helper_matches_encoder() -> None:
    blob = _reencode(_topk_blob(), indices=_indices(GOOD_INDICES))
    assert decode_delta(blob)["b/w"].shape == (280,)


@pytest.mark.parametrize(("name", "make"), [
    ("not safetensors", lambda b: b"hello world, not a blob"),
    ("truncated", lambda b: b[:-1]),
    ("trailing byte", lambda b: b + b"\0"),
    ("not canonical", lambda b: save(decode_block(b))),
    ("wrong dtype", lambda b: _reencode(b, values=decode_block(b)["values"].to(torch.int8))),
    ("scales as float64", lambda b: _reencode(b, scales=decode_block(b)["scales"].double())),
    ("index out of range", lambda b: _reencode(b, indices=_indices([0, 1, 2, 3, 100] + GOOD_INDICES[5:]))),
    ("index past the end", lambda b: _reencode(b, indices=_indices(GOOD_INDICES[:10] + [0, 1, 2, 90]))),
    ("indices not increasing", lambda b: _reencode(b, indices=_indices([0, 2, 1, 3, 4] + GOOD_INDICES[5:]))),
    ("index repeated", lambda b: _reencode(b, indices=_indices([0, 1, 1, 3, 4] + GOOD_INDICES[5:]))),
    ("too many values", lambda b: _reencode(b, values=torch.cat([decode_block(b)["values"], ONE_BYTE]))),
    ("too few values", lambda b: _reencode(b, values=decode_block(b)["values"][:-1].clone())),
    ("too many indices", lambda b: _reencode(b, indices=_indices(GOOD_INDICES + [5]))),
    ("padding bits set", lambda b: _reencode(b, indices=_indices(GOOD_INDICES) | LAST_BIT)),
    ("code out of range", lambda b: _reencode(b, values=torch.full((14,), 255, dtype=torch.uint8))),
    ("nan scale", lambda b: _reencode(b, scales=torch.tensor([1.0, math.nan, 1.0]))),
    ("inf scale", lambda b: _reencode(b, scales=torch.tensor([1.0, math.inf, 1.0]))),
    ("negative scale", lambda b: _reencode(b, scales=torch.tensor([1.0, -1.0, 1.0]))),
    ("negative zero scale", lambda b: _reencode(b, scales=torch.tensor([1.0, -0.0, 1.0]))),
    ("overflowing scale", lambda b: _reencode(b, scales=torch.tensor([1.0, 3e38, 1.0]))),
    ("missing part", lambda b: _reencode(b, scales=None)),
    ("extra part", lambda b: _reencode(b, extra=torch.zeros(1))),
    ("missing meta", lambda b: _reencode(b, meta=None)),
    ("meta not json", lambda b: _meta_blob(b, lambda m: b"{not json")),
    ("meta deep", lambda b: _meta_blob(b, lambda m: b"[" * 100_000)),
    ("meta not ascii", lambda b: _meta_blob(b, lambda m: '{"é":1}'.encode())),
    ("meta not canonical", lambda b: _meta_blob(b, lambda m: json.dumps(m, indent=1).encode())),
    ("unknown method", lambda b: _meta_blob(b, lambda m: m.update(method="zstd"))),
    ("non-canonical method", lambda b: _meta_blob(b, lambda m: m.update(method="topk(density=50000,chunk=100)+int8"))),
    ("other method", lambda b: _meta_blob(b, lambda m: m.update(method="topk(chunk=100,density=60000)+int8"))),
    ("method not a string", lambda b: _meta_blob(b, lambda m: m.update(method=8))),
    ("version", lambda b: _meta_blob(b, lambda m: m.update(version=2))),
    ("version float", lambda b: _meta_blob(b, lambda m: m.update(version=1.0))),
    ("extra key", lambda b: _meta_blob(b, lambda m: m.update(extra=1))),
    ("shape mismatch", lambda b: _meta_blob(b, lambda m: m.update(tensors={"b/w": [281]}))),
    ("zero dimension", lambda b: _meta_blob(b, lambda m: m.update(tensors={"b/w": [280, 0]}))),
    ("bool dimension", lambda b: _meta_blob(b, lambda m: m.update(tensors={"b/w": [280, True]}))),
    ("float dimension", lambda b: _meta_blob(b, lambda m: m.update(tensors={"b/w": [280.0]}))),
    ("too many dims", lambda b: _meta_blob(b, lambda m: m.update(tensors={"b/w": [280] + [1] * 8}))),
    ("too many elements", lambda b: _meta_blob(b, lambda m: m.update(tensors={"b/w": [MAX_DELTA_ELEMENTS, 2]}))),
    ("no tensors", lambda b: _meta_blob(b, lambda m: m.update(tensors={}))),
    ("empty name", lambda b: _meta_blob(b, lambda m: m.update(tensors={"": [280]}))),
    ("tensors a list", lambda b: _meta_blob(b, lambda m: m.update(tensors=[280]))),
])
def test_invalid_blob(name: str, make: object) -> None:
    blob = make(_topk_blob())
    with pytest.raises(InvalidDelta):
        decode_delta(blob)


def test_invalid_blob_over_max_bytes() -> None:
    blob = _topk_blob()
    decode_delta(blob, max_bytes=len(blob))
    with pytest.raises(InvalidDelta, match="over the cap"):
        decode_delta(blob, max_bytes=len(blob) - 1)


def test_invalid_blob_not_bytes() -> None:
    with pytest.raises(InvalidDelta):
        decode_delta(5)  # type: ignore[arg-type]


def test_invalid_expected_shapes() -> None:
    blob = _topk_blob()
    assert decode_delta(blob, {"b/w": (280,)})["b/w"].shape == (280,)
    for expected in ({"b/w": (2, 140)}, {"b/v": (280,)}, {"b/w": (280,), "b/v": (1,)}):
        with pytest.raises(InvalidDelta):
            decode_delta(blob, expected)


def test_read_method() -> None:
    assert read_method(_topk_blob()) == "topk(chunk=100,density=50000)+int8"
    with pytest.raises(InvalidDelta):
        read_method(b"nope")


def test_invalid_delta_is_a_blyan_error() -> None:
    err = InvalidDelta("why")
    assert isinstance(err, BlyanError) and err.reason == "why"


# --- properties ----------------------------------------------------------------------------------

small_deltas = st.dictionaries(
    st.sampled_from(["a/w", "a/v", "b/w"]),
    st.tuples(st.lists(st.integers(1, 9), min_size=1, max_size=3), st.integers(0, 2**31)),
    min_size=1, max_size=3,
).map(lambda d: {k: torch.randn(*shape, generator=torch.Generator().manual_seed(s)) * 10.0 ** (s % 7 - 3)
                 for k, (shape, s) in d.items()})


@settings(max_examples=60)
@given(small_deltas, configs.filter(lambda c: c.rank == 0))
def test_round_trip_within_config_error(delta: dict, cfg: CompressionConfig) -> None:
    decoded = decode_delta(compress_delta(delta, cfg).blob, {k: tuple(v.shape) for k, v in delta.items()})
    qmax = (1 << (cfg.bits - 1)) - 1
    for name, x in delta.items():
        flat, dec = x.reshape(-1), decoded[name].reshape(-1)
        for start in range(0, flat.numel(), cfg.chunk):
            chunk, got = flat[start : start + cfg.chunk], dec[start : start + cfg.chunk]
            k = compute_kept(chunk.numel(), cfg.density_ppm)
            order = torch.sort(chunk.abs(), descending=True, stable=True).indices
            kept, dropped = order[:k], order[k:]
            assert not got[dropped].any()
            bound = 0.0 if cfg.bits == 32 else float(chunk.abs().max()) / qmax / 2 * (1 + 1e-5)
            assert float((got[kept] - chunk[kept]).abs().max()) <= bound


@settings(max_examples=30)
@given(st.integers(2, 40), st.integers(2, 40), st.sampled_from([1, 2, 4]), st.integers(0, 2**31))
def test_lowrank_round_trip_near_svd(m: int, n: int, rank: int, seed: int) -> None:
    x = torch.randn(m, n, generator=torch.Generator().manual_seed(seed))  # [m, n]
    decoded = decode_delta(compress_delta({"b/w": x}, CompressionConfig(rank=rank, bits=8)).blob)["b/w"]
    s = torch.linalg.svdvals(x.double())
    optimal = float(s[rank:].norm()) if rank * (m + n) < m * n else 0.0
    assert float((decoded.double() - x.double()).norm()) <= optimal + 0.05 * float(x.norm())


def _sample_blobs() -> list[bytes]:
    delta = {"a/w": _rank_r(24, 20, 2), "a/v": torch.randn(37, generator=torch.Generator().manual_seed(9))}
    cfgs = [CompressionConfig(), CompressionConfig(chunk=16, density_ppm=200_000, bits=2),
            CompressionConfig(chunk=8, rank=2, density_ppm=500_000, bits=4), CompressionConfig(chunk=10, bits=8)]
    return [compress_delta(delta, cfg).blob for cfg in cfgs]


SAMPLES = _sample_blobs()


@settings(max_examples=300)
@given(st.sampled_from(range(len(SAMPLES))), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                     min_size=1, max_size=4), st.integers(0, 10**6))
def test_mutated_blobs_only_invalid_delta(which: int, edits: list, cut: int) -> None:
    blob = bytearray(SAMPLES[which])
    for at, byte in edits:
        blob[at % len(blob)] = byte
    for data in (bytes(blob), bytes(blob[: cut % len(blob)]), SAMPLES[which][: cut % len(SAMPLES[which])]):
        try:
            decode_delta(data)
        except InvalidDelta:
            pass


@settings(max_examples=300)
@given(st.sampled_from(range(len(SAMPLES))), st.sampled_from(["values", "indices", "scales", "meta"]),
       st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3), st.integers(-3, 3))
def test_mutated_parts_only_invalid_delta(which: int, key: str, edits: list, grow: int) -> None:
    """Mutations inside the parts of a canonical file, so they reach the codec's own checks."""
    parts = decode_block(SAMPLES[which])
    if key not in parts:
        return
    raw = bytearray(parts[key].view(torch.uint8).numpy().tobytes())
    for at, byte in edits:
        raw[at % len(raw)] = byte
    raw = raw + bytes(4 * grow) if grow > 0 else raw[: len(raw) + 4 * grow] or raw
    part = torch.tensor(list(raw), dtype=torch.uint8)
    if parts[key].dtype == torch.float32 and len(raw) % 4 == 0:
        part = part.view(torch.float32)
    try:
        decoded = decode_delta(_reencode(SAMPLES[which], **{key: part}))
    except InvalidDelta:
        return
    assert is_finite(decoded)


@settings(max_examples=200)
@given(st.binary(max_size=400))
def test_random_bytes_only_invalid_delta(data: bytes) -> None:
    with pytest.raises(InvalidDelta):
        decode_delta(data)


def test_config_replace_revalidates() -> None:
    with pytest.raises(ValueError):
        replace(CompressionConfig(bits=8), rank=3)
