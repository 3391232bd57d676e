"""Tensor blocks as bytes: one canonical safetensors encoding, and the chain record of a blob.

The encoder is written here rather than taken from `safetensors.torch.save`, so that the bytes
(and so every blob id in a genesis) depend on this file alone and not on a library version:
the header is compact JSON with sorted keys and the fixed metadata `{"format": "pt"}`, padded
with spaces to a multiple of 8 bytes; tensor data follow, little-endian and with no gaps, widest
dtype first and then by name, so that every tensor is aligned to its item size for zero-copy
views (`torch.frombuffer` on an mmap). Any safetensors reader loads the result; `decode_block`
accepts nothing else.
"""

from __future__ import annotations

import json
import sys

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _load_safetensors

from chain.crypto import sha256
from chain.errors import DecodingError
from chain.tensors import (
    DEFAULT_SUBTILE_SIZE,
    DEFAULT_TILE_SIZE,
    MAX_DIMS,
    MAX_TENSORS_PER_BLOCK,
    TensorInfo,
    TensorRecord,
)
from gpu.tiles import compute_tensor_root, validate_geometry

METADATA = {"format": "pt"}
HEADER_ALIGN = 8

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}

if sys.byteorder != "little":  # safetensors is little-endian; torch stores native order
    raise ImportError("gpu.weights needs a little-endian machine")


def get_dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype ("F32", "BF16", ...)."""
    name = DTYPE_NAMES.get(dtype)
    if name is None:
        raise ValueError(f"dtype {dtype} has no safetensors name here")
    return name


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)  # [numel]
    return flat.view(torch.uint8).numpy().tobytes()  # [numel * itemsize]


def encode_block(tensors: dict[str, torch.Tensor]) -> bytes:
    """The canonical safetensors bytes of a tensor block."""
    header: dict[str, object] = {"__metadata__": METADATA}
    chunks = []
    offset = 0
    if "__metadata__" in tensors:
        raise ValueError("'__metadata__' is not a tensor name")
    # widest dtype first, then by name: each tensor starts at a multiple of its item size
    for name in sorted(tensors, key=lambda n: (-tensors[n].element_size(), n)):
        tensor = tensors[name]
        raw = _raw_bytes(tensor)
        header[name] = {
            "dtype": get_dtype_name(tensor.dtype),
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    text += b" " * (-len(text) % HEADER_ALIGN)
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def decode_block(data: bytes) -> dict[str, torch.Tensor]:
    """The tensors of a canonical block; `DecodingError` for bytes encode_block would not write."""
    try:
        tensors = _load_safetensors(bytes(data))
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise DecodingError(f"not a safetensors file: {err}", "tensor block") from err
    if encode_block(tensors) != data:
        raise DecodingError("not the canonical encoding", "tensor block")
    return tensors


def compute_tensor_infos(tensors: dict[str, torch.Tensor]) -> tuple[TensorInfo, ...]:
    return tuple(
        TensorInfo(name=name, dtype=get_dtype_name(t.dtype), shape=tuple(int(d) for d in t.shape))
        for name, t in sorted(tensors.items())
    )


def make_tensor_record(
    name: str,
    kind: int,
    version: str,
    data: bytes,
    tile_size: int = DEFAULT_TILE_SIZE,
    subtile_size: int = DEFAULT_SUBTILE_SIZE,
) -> TensorRecord:
    """The chain record of a canonical tensor-block blob."""
    validate_geometry(len(data), tile_size, subtile_size)
    tensors = decode_block(data)
    if not tensors or len(tensors) > MAX_TENSORS_PER_BLOCK:
        raise ValueError(f"a block holds 1 to {MAX_TENSORS_PER_BLOCK} tensors, not {len(tensors)}")
    if any(t.dim() > MAX_DIMS for t in tensors.values()):
        raise ValueError(f"a tensor has more than {MAX_DIMS} dimensions")
    return TensorRecord(
        name=name,
        kind=kind,
        version=version,
        blob_id=sha256(data),
        size=len(data),
        merkle_root=compute_tensor_root(data, subtile_size),
        tile_size=tile_size,
        subtile_size=subtile_size,
        tensors=compute_tensor_infos(tensors),
    )
