"""Wire types of the model on the parameter chain: the model spec and tensor blocks."""

from __future__ import annotations

from chain.codec import U8, U16, U32, U64, Hash32, Seq, Str, wire

MAX_TENSORS_PER_BLOCK = 64
MAX_DIMS = 8

KIND_EXPERT = 1
KIND_MODULE = 2
KIND_TOKENIZER = 3
TENSOR_KINDS = (KIND_EXPERT, KIND_MODULE, KIND_TOKENIZER)
TOKENIZER_BLOCK = "tokenizer"
"""Name of the one KIND_TOKENIZER block: a safetensors file with one uint8 tensor, the JSON."""

DEFAULT_TILE_SIZE = 4 * 1024 * 1024
DEFAULT_SUBTILE_SIZE = 256 * 1024
TILE_MERKLE_ARITY = 8
MAX_SUBTILES_PER_TILE = 1024
"""A tile proof carries one Merkle proof per subtile, at most this many."""


@wire
class TensorInfo:
    """One tensor inside a tensor block's safetensors file."""

    name: Str(64)
    """Tensor name inside the file, e.g. "w1"."""
    dtype: Str(16)
    """safetensors dtype: "F32", "BF16", "F16", "I8"."""
    shape: Seq(U64, MAX_DIMS)
    """Dimensions."""


@wire
class TensorRecord:
    """A tensor block: a safetensors blob, tiled, with a Merkle root over its subtiles."""

    name: Str(64)
    """Expert or module name: "layer0.expert3", "layer1.attn", "embed", "tokenizer"."""
    kind: U8
    """KIND_EXPERT, KIND_MODULE or KIND_TOKENIZER."""
    version: Str(32)
    """SemVer of the weights, e.g. "1.0.0"; a delta bumps the patch, a snapshot the minor."""
    blob_id: Hash32
    """SHA-256 of the whole file."""
    size: U64
    """File size in bytes."""
    merkle_root: Hash32
    """8-ary Merkle root over the SHA-256 of each subtile."""
    tile_size: U32
    """Bytes per tile (a multiple of subtile_size)."""
    subtile_size: U32
    """Bytes per subtile."""
    tensors: Seq(TensorInfo, MAX_TENSORS_PER_BLOCK)
    """What the file holds."""


@wire
class ModelSpec:
    """The architecture every node builds, from genesis."""

    name: Str(64)
    """Model family name."""
    version: Str(32)
    """SemVer of the architecture."""
    vocab_size: U32
    """Tokenizer vocabulary."""
    d_model: U32
    """Hidden size."""
    n_layers: U16
    """Decoder layers."""
    n_heads: U16
    """Attention heads per layer."""
    n_experts: U16
    """Experts per layer."""
    top_k: U8
    """Experts each token is routed to."""
    d_ff: U32
    """Hidden size inside an expert."""
    max_seq_len: U32
    """Context length."""
    seed: U64
    """Seed of the initial weights."""
