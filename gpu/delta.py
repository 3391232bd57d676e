"""Weight deltas: trained - base per tensor, compressed into one canonical, self-describing blob.

A delta maps qualified tensor names ("layer0.expert1/w1.weight") to float32 tensors, so one delta
may cover several blocks. `compress_delta` runs the pipeline a `CompressionConfig` names, in order:

    lowrank(rank=r)          a matrix [m, n] with r * (m + n) < m * n becomes U [m, r] @ V [n, r]^T
    topk(chunk=c,density=d)  per chunk of c elements, the ceil(len * d / 10^6) largest magnitudes
    int8 | int4 | int2       per chunk, q = round_half_even(x / s) in +-qmax, s = absmax / qmax
    dense                    none of the above: float32 values as they are

Blob layout (a canonical safetensors file, `gpu.weights.encode_block`), at most four tensors:

    "meta"     U8   canonical JSON {"method": ..., "tensors": {name: shape}, "version": 1}
    "values"   F32  the kept values (bits 32), or U8: the codes q + 2^(b-1) - 1, b bits each
    "indices"  U8   (topk only) each kept value's index inside its chunk, ceil(log2 c) bits each
    "scales"   F32  (int only) one scale per chunk

Streams (a tensor flattened, or its U then its V) follow one another in tensor-name order, each
on a byte boundary, bits packed little-endian, padding bits zero. Counts, offsets and which
matrices are factorised follow from the meta; the decoder checks every size, index, code, scale.

Decoding is bit-identical on every machine: exact integer arithmetic and exactly rounded
elementwise IEEE operations only (a code times its float32 scale; a scatter into zeros). A low-rank
matrix is rebuilt without a float matmul, whose summation order (so its rounding) differs between
BLAS builds: the integer codes multiply in int64, exact (|entries| <= r * 127^2 < 2^53), then each
entry is multiplied once by its row's U scale times its column's V scale (a chunk holds whole rows,
as rank divides chunk), in float64 where that product of two float32 is exact, and rounded to
float32: two roundings, both IEEE. So low rank needs integer codes (no bits 32). Norms are exact
too (sums of squares in integers), so a norm bound gives the same verdict everywhere.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from chain.errors import DecodingError
from chain.tensors import MAX_DIMS
from gpu.delta_ops import (
    InvalidDelta,
    NonFiniteDelta,
    apply_delta,
    compute_delta,
    compute_norms,
    compute_relative_error,
    compute_scaled_sum_squares,
    is_finite,
    validate_same_tensors,
)
from gpu.weights import decode_block, encode_block

__all__ = [  # the delta API in one place: the codec here, the arithmetic from gpu.delta_ops
    "CompressedDelta", "CompressionConfig", "InvalidDelta", "NonFiniteDelta", "apply_delta", "compress_delta",
    "compute_delta", "compute_norms", "compute_relative_error", "compute_scaled_sum_squares", "decode_delta",
    "is_finite", "read_method",
]

DEFAULT_CHUNK = 4096
FULL_DENSITY = 1_000_000  # density_ppm that keeps every element (no top-k)
MAX_CHUNK = 1 << 20
MAX_RANK = 4096
QUANT_BITS = (8, 4, 2)
MAX_DELTA_BYTES = 1 << 29  # default cap on a compressed blob (512 MiB)
MAX_DELTA_ELEMENTS = 1 << 28  # cap on the elements a blob decodes to (1 GiB of float32)
MAX_DELTA_TENSORS = 4096
MAX_NAME_LEN = 256
MAX_META_BYTES = 1 << 20
META_VERSION = 1
PART_META, PART_VALUES, PART_INDICES, PART_SCALES = "meta", "values", "indices", "scales"

_STAGE = re.compile(r"([a-z0-9]+)(?:\(([a-z_]+=[0-9]+(?:,[a-z_]+=[0-9]+)*)\))?")
_STAGE_PARAMS = {"lowrank": {"rank"}, "topk": {"chunk", "density"}, "dense": {"chunk"}}
_STAGE_PARAMS.update({f"int{b}": {"chunk"} for b in QUANT_BITS})
_STAGE_ORDER = {"lowrank": 0, "topk": 1, "dense": 2, "int8": 2, "int4": 2, "int2": 2}
_PACK_SLICE = 1 << 20  # codes packed per step (a multiple of 8: each step starts on a byte)
_SQ_SLICE = 1 << 22  # elements per step of the exact sum of squares and of a low-rank rebuild


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    chunk: int = DEFAULT_CHUNK  # elements per chunk, for top-k and for quantization scales
    density_ppm: int = FULL_DENSITY  # share of each chunk kept by top-k magnitude; 10^6 = all
    bits: int = 32  # 32 = float32 values; 8, 4 or 2 = symmetric per-chunk integer codes
    rank: int = 0  # 0 = none; else 2-D matrices factorised to this rank first (needs bits < 32)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError unless the fields make a pipeline the decoder accepts."""
        for key, low, high in (("chunk", 1, MAX_CHUNK), ("density_ppm", 1, FULL_DENSITY), ("rank", 0, MAX_RANK)):
            value = getattr(self, key)
            if type(value) is not int or not low <= value <= high:
                raise ValueError(f"{key} {value!r} is not an int in {low}..{high}")
        if type(self.bits) is not int or self.bits not in (32, *QUANT_BITS):
            raise ValueError(f"bits {self.bits!r} is not 32, 8, 4 or 2")
        if self.rank and self.bits == 32:
            raise ValueError("low rank needs integer codes (bits 8, 4 or 2): a float matmul is not reproducible")
        if self.rank and self.chunk % self.rank:
            raise ValueError(f"rank {self.rank} must divide chunk {self.chunk} (a chunk holds whole rows)")

    @property
    def is_topk(self) -> bool:
        return self.density_ppm < FULL_DENSITY

    @property
    def method(self) -> str:
        """The canonical pipeline string the chain records, e.g. "topk(chunk=4096,density=20000)+int2"."""
        stages = []
        if self.rank:
            stages.append(f"lowrank(rank={self.rank})")
        if self.is_topk:
            stages.append(f"topk(chunk={self.chunk},density={self.density_ppm})")
        chunk_text = "" if self.is_topk or self.chunk == DEFAULT_CHUNK else f"(chunk={self.chunk})"
        if self.bits < 32:
            stages.append(f"int{self.bits}{chunk_text}")
        elif not stages:
            stages.append(f"dense{chunk_text}")
        return "+".join(stages)

    @classmethod
    def parse(cls, method: str) -> CompressionConfig:
        """The config whose `method` is exactly `method`; ValueError for anything else."""
        if not isinstance(method, str) or not 0 < len(method) <= 96:
            raise ValueError(f"method {method!r} is not a string of 1 to 96 characters")
        fields, last = {}, -1
        for stage in method.split("+"):
            m = _STAGE.fullmatch(stage)
            if m is None or m[1] not in _STAGE_PARAMS:
                raise ValueError(f"unknown compression stage {stage!r}")
            if _STAGE_ORDER[m[1]] <= last:
                raise ValueError(f"stage {stage!r} out of order or repeated")
            last = _STAGE_ORDER[m[1]]
            pairs = [p.split("=") for p in m[2].split(",")] if m[2] else []
            params = dict(pairs)
            if not set(params) <= _STAGE_PARAMS[m[1]] or len(params) != len(pairs):
                raise ValueError(f"stage {stage!r} has unknown or repeated parameters")
            for key, value in params.items():
                fields["density_ppm" if key == "density" else key] = int(value)
            if m[1].startswith("int"):
                fields["bits"] = int(m[1][3:])
        cfg = cls(**fields)
        if cfg.method != method:
            raise ValueError(f"method {method!r} is not canonical: {cfg.method!r}")
        return cfg


@dataclass(frozen=True, slots=True)
class CompressedDelta:
    blob: bytes
    """Canonical safetensors bytes: meta, values, indices, scales (see the module docstring)."""
    method: str
    """The config's canonical method string."""
    raw_bytes: int
    """Dense float32 size of the delta."""
    compressed_bytes: int
    """len(blob)."""
    residual: dict[str, Tensor] = field(compare=False)
    """Error feedback: (delta + residual in) - decode(blob), carried into the next round."""
    error_l2: float
    """||decode(blob) - delta|| / ||delta|| (0 for an all-zero delta)."""

    @property
    def ratio(self) -> float:
        """raw_bytes / compressed_bytes."""
        return self.raw_bytes / self.compressed_bytes


# --- layout -------------------------------------------------------------------------------------


def compute_kept(length: int, density_ppm: int) -> int:
    """Values top-k keeps of a chunk of `length` elements: ceil(length * density / 10^6)."""
    return min(length, -(-length * density_ppm // FULL_DENSITY))


def compute_index_bits(chunk: int) -> int:
    return max(1, (chunk - 1).bit_length())


def is_factorised(shape: tuple[int, ...], rank: int) -> bool:
    """Whether low rank applies to a tensor: a matrix for which r * (m + n) < m * n."""
    return rank > 0 and len(shape) == 2 and rank * (shape[0] + shape[1]) < shape[0] * shape[1]


@dataclass(frozen=True, slots=True)
class StreamLayout:
    """Sizes of one stream's parts in a blob."""

    chunks: int  # chunks of the stream (= scales when quantized)
    count: int  # values kept
    value_units: int  # bytes of packed codes, or float32 values when bits == 32
    index_bytes: int  # bytes of packed indices (0 without top-k)


def compute_layout(n: int, cfg: CompressionConfig) -> StreamLayout:
    full, tail = divmod(n, cfg.chunk)
    count = full * compute_kept(cfg.chunk, cfg.density_ppm) + compute_kept(tail, cfg.density_ppm)
    values = count if cfg.bits == 32 else -(-count * cfg.bits // 8)
    indices = -(-count * compute_index_bits(cfg.chunk) // 8) if cfg.is_topk else 0
    return StreamLayout(full + (tail > 0), count, values, indices)


# --- bits ---------------------------------------------------------------------------------------


def _pack_bits(codes: np.ndarray, bits: int) -> bytes:
    """Codes < 2^bits, `bits` each, little-endian bit order, the last byte zero-padded."""
    if bits == 8:
        return codes.astype(np.uint8).tobytes()
    shifts = np.arange(bits, dtype=np.int64)
    out = []
    for start in range(0, len(codes), _PACK_SLICE):
        part = codes[start : start + _PACK_SLICE].astype(np.int64)  # [L]
        bitmat = ((part[:, None] >> shifts) & 1).astype(np.uint8)  # [L, bits]
        out.append(np.packbits(bitmat.reshape(-1), bitorder="little").tobytes())
    return b"".join(out)


def _unpack_bits(data: np.ndarray, count: int, bits: int) -> np.ndarray:
    """The codes `_pack_bits` wrote; `len(data)` must be ceil(count * bits / 8)."""
    if count * bits % 8 and int(data[-1]) >> (count * bits % 8):
        raise InvalidDelta("padding bits are not zero")
    if bits == 8:
        return data.astype(np.int64)
    weights = np.left_shift(1, np.arange(bits, dtype=np.int64))  # [bits]
    out = []
    for start in range(0, count, _PACK_SLICE):
        n = min(_PACK_SLICE, count - start)
        lo = start * bits // 8
        bitmat = np.unpackbits(data[lo : lo - (-n * bits // 8)], count=n * bits, bitorder="little")
        out.append(bitmat.reshape(n, bits).astype(np.int64) @ weights)  # [n]
    return np.concatenate(out)


def _bytes_tensor(data: bytes) -> Tensor:
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())  # [len]


# --- encoding -----------------------------------------------------------------------------------


def _chunk_rows(x: Tensor, chunk: int) -> list[Tensor]:
    """A flat stream as [full, chunk] rows, then the short last chunk as [1, tail] if any."""
    full = x.numel() // chunk
    rows = [x[: full * chunk].view(full, chunk)] if full else []
    if x.numel() % chunk:
        rows.append(x[full * chunk :].view(1, -1))
    return rows


def _select_topk(rows: Tensor, k: int) -> Tensor:
    """Per row, the indices of the k largest magnitudes (ties: lower index), ascending."""
    order = torch.sort(rows.abs(), dim=1, descending=True, stable=True).indices[:, :k]  # [R, k]
    return torch.sort(order, dim=1).values  # [R, k]


def _quantize(rows: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Integer codes in +-qmax per row and the row's float32 scale absmax / qmax."""
    qmax = (1 << (bits - 1)) - 1
    scale = rows.abs().amax(dim=1) / qmax  # [R]
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # [R]
    q = torch.round(rows / safe[:, None]).clamp(-qmax, qmax).to(torch.int64)  # [R, k]
    return q, scale


def _encode_stream(x: Tensor, cfg: CompressionConfig) -> tuple[bytes | Tensor, bytes, Tensor | None]:
    """One flat float32 stream: (packed codes or float32 values, packed indices, scales)."""
    values, indices, scales = [], [], []
    for rows in _chunk_rows(x, cfg.chunk):  # [R, L]
        if cfg.is_topk:
            local = _select_topk(rows, compute_kept(rows.shape[1], cfg.density_ppm))  # [R, k]
            indices.append(local.reshape(-1))
            rows = rows.gather(1, local)  # [R, k]
        if cfg.bits == 32:
            values.append(rows.reshape(-1))
            continue
        q, scale = _quantize(rows, cfg.bits)
        values.append((q + (1 << (cfg.bits - 1)) - 1).reshape(-1))
        scales.append(scale)
    index_bytes = _pack_bits(torch.cat(indices).numpy(), compute_index_bits(cfg.chunk)) if indices else b""
    if cfg.bits == 32:
        return torch.cat(values), index_bytes, None
    return _pack_bits(torch.cat(values).numpy(), cfg.bits), index_bytes, torch.cat(scales)


def _factorise(x: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """U [m, r], V [n, r] with x ~ U @ V^T: the truncated SVD, sqrt of the singular values on each."""
    u, s, vh = torch.linalg.svd(x.double(), full_matrices=False)  # [m, k], [k], [k, n]
    root = s[:rank].sqrt()  # [r]
    return (u[:, :rank] * root).float(), (vh[:rank].T * root).float()  # [m, r], [n, r]


def _encode_parts(target: dict[str, Tensor], cfg: CompressionConfig) -> dict[str, Tensor]:
    shapes = {name: list(t.shape) for name, t in sorted(target.items())}
    values, indices, scales = [], [], []
    for name in shapes:
        x = target[name]
        streams = list(_factorise(x, cfg.rank)) if is_factorised(tuple(x.shape), cfg.rank) else [x]
        for stream in streams:
            v, i, s = _encode_stream(stream.reshape(-1), cfg)
            values.append(v)
            indices.append(i)
            if s is not None:
                scales.append(s)
    meta = {"method": cfg.method, "tensors": shapes, "version": META_VERSION}
    parts = {PART_META: _bytes_tensor(_canonical_json(meta))}
    parts[PART_VALUES] = torch.cat(values) if cfg.bits == 32 else _bytes_tensor(b"".join(values))
    if cfg.is_topk:
        parts[PART_INDICES] = _bytes_tensor(b"".join(indices))
    if cfg.bits < 32:
        parts[PART_SCALES] = torch.cat(scales)
    return parts


def _canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _prepare(
    delta: dict[str, Tensor], residual: dict[str, Tensor] | None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The delta as float32 and the tensors to compress: the delta plus the residual when given."""
    if not isinstance(delta, dict) or not 0 < len(delta) <= MAX_DELTA_TENSORS:
        raise InvalidDelta(f"a delta holds 1 to {MAX_DELTA_TENSORS} tensors")
    plain = {name: _as_float32(name, tensor) for name, tensor in delta.items()}
    target = plain
    if residual is not None:
        validate_same_tensors(plain, residual, "residual", float32=False)
        target = {name: t + _as_float32(name, residual[name]) for name, t in plain.items()}
    if not is_finite(plain) or not is_finite(target):
        raise NonFiniteDelta("the delta (plus residual) has NaN or infinite values")
    return plain, target


def _as_float32(name: object, tensor: object) -> Tensor:
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LEN:
        raise InvalidDelta(f"tensor name {name!r} is not a string of 1 to {MAX_NAME_LEN} characters")
    if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
        raise InvalidDelta(f"{name}: not a floating-point tensor")
    if tensor.numel() == 0 or tensor.dim() > MAX_DIMS:
        raise InvalidDelta(f"{name}: shape {tuple(tensor.shape)} is empty or has more than {MAX_DIMS} dims")
    return tensor.detach().to("cpu", torch.float32).contiguous()


def compress_delta(
    delta: dict[str, Tensor], cfg: CompressionConfig, residual: dict[str, Tensor] | None = None
) -> CompressedDelta:
    """The blob of `delta` (+ `residual`, error feedback) under `cfg`, its sizes, error and new residual."""
    plain, target = _prepare(delta, residual)
    blob = encode_block(_encode_parts(target, cfg))
    decoded = decode_delta(blob, {name: tuple(t.shape) for name, t in target.items()})
    residual_out = {name: target[name] - decoded[name] for name in target}  # float32
    raw = 4 * sum(t.numel() for t in target.values())
    return CompressedDelta(blob, cfg.method, raw, len(blob), residual_out, compute_relative_error(decoded, plain))


# --- decoding -----------------------------------------------------------------------------------


def decode_delta(
    blob: bytes, expected: dict[str, tuple[int, ...]] | None = None, max_bytes: int = MAX_DELTA_BYTES
) -> dict[str, Tensor]:
    """The float32 delta a blob encodes, the same bytes on every machine; InvalidDelta otherwise.

    `expected` (name -> shape), when given, must be exactly the blob's tensors and shapes."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise InvalidDelta(f"a blob is bytes, not {type(blob).__name__}")
    if len(blob) > max_bytes:
        raise InvalidDelta(f"blob of {len(blob)} bytes is over the cap of {max_bytes}")
    parts = _decode_parts(bytes(blob))
    cfg, shapes = _decode_meta(parts)
    if expected is not None and {n: tuple(s) for n, s in expected.items()} != shapes:
        raise InvalidDelta(f"the blob's {len(shapes)} tensors are not the {len(expected)} expected (names or shapes)")
    _validate_part_sizes(parts, cfg, shapes)
    reader = _Reader(parts, cfg)
    out = {name: reader.read_tensor(shape) for name, shape in shapes.items()}
    if not is_finite(out):
        raise NonFiniteDelta("the blob decodes to NaN or infinite values")
    return out


def read_method(blob: bytes) -> str:
    """The canonical method a blob declares (its meta checked, not its values); InvalidDelta otherwise."""
    return _decode_meta(_decode_parts(bytes(blob)))[0].method


def _decode_parts(blob: bytes) -> dict[str, Tensor]:
    try:
        return decode_block(blob)
    except (DecodingError, ValueError, TypeError, OverflowError) as err:
        raise InvalidDelta(f"not a canonical safetensors blob: {err}") from err


def _decode_meta(parts: dict[str, Tensor]) -> tuple[CompressionConfig, dict[str, tuple[int, ...]]]:
    meta = parts.get(PART_META)
    if meta is None or meta.dtype != torch.uint8 or meta.dim() != 1 or meta.numel() > MAX_META_BYTES:
        raise InvalidDelta(f"no 1-D U8 '{PART_META}' tensor of at most {MAX_META_BYTES} bytes")
    raw = meta.numpy().tobytes()
    try:
        meta = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise InvalidDelta(f"meta is not JSON: {err}") from err
    if not isinstance(meta, dict) or set(meta) != {"method", "tensors", "version"}:
        raise InvalidDelta("meta must hold exactly method, tensors and version")
    if type(meta["version"]) is not int or meta["version"] != META_VERSION:
        raise InvalidDelta(f"unknown delta format version {meta['version']!r}")
    try:
        cfg = CompressionConfig.parse(meta["method"])
    except (ValueError, TypeError) as err:
        raise InvalidDelta(f"unknown method: {err}") from err
    shapes = _decode_shapes(meta["tensors"])
    if _canonical_json(meta) != raw:
        raise InvalidDelta("meta is not canonical JSON")
    return cfg, shapes


def _decode_shapes(tensors: object) -> dict[str, tuple[int, ...]]:
    if not isinstance(tensors, dict) or not 0 < len(tensors) <= MAX_DELTA_TENSORS:
        raise InvalidDelta(f"meta must name 1 to {MAX_DELTA_TENSORS} tensors")
    shapes, total = {}, 0
    for name, shape in tensors.items():
        if not 0 < len(name) <= MAX_NAME_LEN:
            raise InvalidDelta(f"tensor name {name!r} is not 1 to {MAX_NAME_LEN} characters")
        if not isinstance(shape, list) or len(shape) > MAX_DIMS:
            raise InvalidDelta(f"{name}: shape {shape!r} is not a list of at most {MAX_DIMS} dims")
        if not all(type(d) is int and 0 < d <= MAX_DELTA_ELEMENTS for d in shape):
            raise InvalidDelta(f"{name}: shape {shape!r} has a dimension that is not a positive int")
        total += math.prod(shape)
        if total > MAX_DELTA_ELEMENTS:
            raise InvalidDelta(f"the delta has more than {MAX_DELTA_ELEMENTS} elements")
        shapes[name] = tuple(shape)
    return shapes


def _validate_part_sizes(parts: dict[str, Tensor], cfg: CompressionConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    r = cfg.rank
    streams = [[s[0] * r, s[1] * r] if is_factorised(s, r) else [math.prod(s)] for s in shapes.values()]
    layouts = [compute_layout(n, cfg) for counts in streams for n in counts]  # U then V, or the tensor
    want = {PART_VALUES: (torch.float32 if cfg.bits == 32 else torch.uint8, sum(x.value_units for x in layouts))}
    if cfg.is_topk:
        want[PART_INDICES] = (torch.uint8, sum(x.index_bytes for x in layouts))
    if cfg.bits < 32:
        want[PART_SCALES] = (torch.float32, sum(x.chunks for x in layouts))
    if set(parts) != {PART_META, *want}:
        raise InvalidDelta(f"blob parts {sorted(parts)} are not {sorted({PART_META, *want})} for {cfg.method}")
    for key, (dtype, size) in want.items():
        part = parts[key]
        if part.dtype != dtype or part.dim() != 1:
            raise InvalidDelta(f"part {key!r} is {part.dtype} {tuple(part.shape)}, not 1-D {dtype}")
        if part.numel() != size:
            why = "too many values for the declared density" if part.numel() > size else "too few values"
            raise InvalidDelta(f"part {key!r} holds {part.numel()} units, not {size}: {why}")


class _Reader:
    """Walks the parts of a blob whose sizes have been checked, one stream after another."""

    def __init__(self, parts: dict[str, Tensor], cfg: CompressionConfig) -> None:
        self.cfg = cfg
        self.values = parts[PART_VALUES] if cfg.bits == 32 else parts[PART_VALUES].numpy()
        self.indices = parts[PART_INDICES].numpy() if cfg.is_topk else None
        self.scales = parts.get(PART_SCALES)
        if self.scales is not None and not bool((torch.isfinite(self.scales) & ~torch.signbit(self.scales)).all()):
            raise InvalidDelta("a scale is negative, NaN or infinite")
        self.at_values = self.at_indices = self.at_scales = 0

    def read_tensor(self, shape: tuple[int, ...]) -> Tensor:
        if not is_factorised(shape, self.cfg.rank):
            n = math.prod(shape)
            positions, codes, scales = self._read_stream(n)
            values = codes if scales is None else codes.to(torch.float32) * scales  # [k] exact IEEE
            if positions is None:
                return values.reshape(shape)
            return torch.zeros(n, dtype=torch.float32).index_put_((positions,), values).reshape(shape)
        m, n = shape
        qu, su = self._read_factor(m)  # [m, r] int64, [m] float32
        qv, sv = self._read_factor(n)  # [n, r], [n]
        out, step = torch.empty(m, n, dtype=torch.float32), max(1, _SQ_SLICE // n)  # [m, n]
        for rows in (slice(i, i + step) for i in range(0, m, step)):
            product = qu[rows] @ qv.T  # [s, n] int64: exact, so independent of the summation order
            scale = su[rows].double()[:, None] * sv.double()[None, :]  # [s, n] float64: exact
            out[rows] = (product.double() * scale).float()  # [s, n] one rounding to float64, one to float32
        return out

    def _read_factor(self, rows: int) -> tuple[Tensor, Tensor]:
        rank, n = self.cfg.rank, rows * self.cfg.rank
        first_chunk = self.at_scales
        positions, codes, _ = self._read_stream(n, per_value_scales=False)
        dense = codes if positions is None else torch.zeros(n, dtype=torch.int64).index_put_((positions,), codes)
        chunk_of_row = torch.arange(rows, dtype=torch.int64) * rank // self.cfg.chunk  # [rows]
        return dense.view(rows, rank), self.scales[first_chunk + chunk_of_row]  # [rows, r], [rows]

    def _read_stream(self, n: int, per_value_scales: bool = True) -> tuple[Tensor | None, Tensor, Tensor | None]:
        """(positions or None for all, int64 codes or float32 values, each value's scale)."""
        cfg, layout = self.cfg, compute_layout(n, self.cfg)
        counts = torch.full((layout.chunks,), compute_kept(cfg.chunk, cfg.density_ppm))  # [chunks] values kept
        counts[-1] = compute_kept(n - (layout.chunks - 1) * cfg.chunk, cfg.density_ppm)
        positions = self._read_positions(n, layout, counts) if cfg.is_topk else None
        if cfg.bits == 32:
            values = self.values[self.at_values : self.at_values + layout.count]
            self.at_values += layout.count
            return positions, values, None
        packed = self.values[self.at_values : self.at_values + layout.value_units]
        self.at_values += layout.value_units
        qmax = (1 << (cfg.bits - 1)) - 1
        codes = torch.from_numpy(_unpack_bits(packed, layout.count, cfg.bits)) - qmax  # [k]
        if bool((codes < -qmax).any()) or bool((codes > qmax).any()):
            raise InvalidDelta(f"a quantized value is outside +-{qmax}")
        scales = self.scales[self.at_scales : self.at_scales + layout.chunks]  # [chunks]
        self.at_scales += layout.chunks
        return positions, codes, scales.repeat_interleave(counts) if per_value_scales else None

    def _read_positions(self, n: int, layout: StreamLayout, counts: Tensor) -> Tensor:
        """Global positions of the kept values: indices strictly increasing inside each chunk."""
        packed = self.indices[self.at_indices : self.at_indices + layout.index_bytes]
        self.at_indices += layout.index_bytes
        local = torch.from_numpy(_unpack_bits(packed, layout.count, compute_index_bits(self.cfg.chunk)))  # [k]
        chunk_id = torch.repeat_interleave(torch.arange(layout.chunks), counts)  # [k]
        positions = chunk_id * self.cfg.chunk + local  # [k]
        if bool((local >= self.cfg.chunk).any()) or bool((positions >= n).any()):
            raise InvalidDelta("an index is out of range of its chunk")
        same_chunk = chunk_id[1:] == chunk_id[:-1]  # [k - 1]
        if bool((same_chunk & (local[1:] <= local[:-1])).any()):
            raise InvalidDelta("indices are not strictly increasing within a chunk")
        return positions


# --- deltas -------------------------------------------------------------------------------------
