"""The byte-level BPE tokenizer of the model, and the parameter-chain block that carries it.

Training uses `tokenizers` (byte-level pre-tokenizer and decoder, no normalizer), so any text
round-trips exactly: `decode_ids(tok, encode_text(tok, text)) == text`. The tokenizer's bytes are
its JSON, made canonical here (compact, sorted keys, ASCII) so that the same corpus and settings
give the same bytes whatever the library's own serializer does.

On the chain the tokenizer is a tensor block like any other, so that the blob store, tiles and
Merkle proofs need no special case: a canonical safetensors file (`gpu.weights.encode_block`)
holding one 1-D uint8 tensor, `TOKENIZER_TENSOR`, whose bytes are the JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from chain.errors import BlyanError, DecodingError
from chain.tensors import KIND_TOKENIZER, TOKENIZER_BLOCK, TensorRecord
from gpu.weights import decode_block, encode_block, make_tensor_record

EOT = "<|endoftext|>"
TOKENIZER_TENSOR = "json"
MAX_TOKENIZER_BYTES = 16 * 1024 * 1024


class InvalidTokenizer(BlyanError):
    """Bytes that are not a canonical tokenizer (or tokenizer block) of this node's kind."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid tokenizer: {reason}")


@dataclass(frozen=True, slots=True)
class TokenizerConfig:
    vocab_size: int = 2048  # target vocabulary, special tokens included
    min_frequency: int = 2  # a pair merges only if it occurs this often
    special_tokens: tuple[str, ...] = (EOT,)  # ids 0.. in this order


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig = TokenizerConfig()) -> bytes:
    """Train a byte-level BPE on `texts` (in the order given) and return its canonical JSON."""
    # the result does not depend on TOKENIZERS_PARALLELISM (checked: same bytes either way)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(cfg.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return encode_tokenizer(tok)


def encode_tokenizer(tok: Tokenizer) -> bytes:
    """The canonical JSON bytes of a tokenizer."""
    obj = json.loads(tok.to_str())
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def decode_tokenizer(data: bytes) -> Tokenizer:
    """A tokenizer from its canonical JSON; `InvalidTokenizer` for anything else."""
    if len(data) > MAX_TOKENIZER_BYTES:
        raise InvalidTokenizer(f"{len(data)} bytes, more than {MAX_TOKENIZER_BYTES}")
    try:
        tok = Tokenizer.from_str(bytes(data).decode("ascii"))
    except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exception
        raise InvalidTokenizer(f"not a tokenizer JSON: {err}") from err
    if not isinstance(tok.model, models.BPE) or not isinstance(tok.decoder, decoders.ByteLevel):
        raise InvalidTokenizer("not a byte-level BPE")
    if encode_tokenizer(tok) != data:
        raise InvalidTokenizer("not the canonical encoding")
    return tok


def get_vocab_size(tok: Tokenizer) -> int:
    return tok.get_vocab_size(with_added_tokens=True)


def get_eot_id(tok: Tokenizer) -> int:
    token_id = tok.token_to_id(EOT)
    if token_id is None:
        raise InvalidTokenizer(f"no {EOT} token")
    return token_id


def encode_text(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def encode_texts(tok: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """`encode_text` of each text (in a batch: the library may use threads; order is kept)."""
    return [enc.ids for enc in tok.encode_batch(list(texts), add_special_tokens=False)]


def decode_ids(tok: Tokenizer, ids: Sequence[int]) -> str:
    return tok.decode(list(ids), skip_special_tokens=False)


# --- the tokenizer as a parameter-chain block ----------------------------------------------


def encode_tokenizer_block(tokenizer_json: bytes) -> bytes:
    """The tensor-block blob (canonical safetensors) that carries a tokenizer's JSON."""
    raw = torch.frombuffer(bytearray(tokenizer_json), dtype=torch.uint8)  # [n]
    return encode_block({TOKENIZER_TENSOR: raw})


def decode_tokenizer_block(data: bytes) -> bytes:
    """The tokenizer JSON inside a tokenizer block; `InvalidTokenizer` if it is not one."""
    try:
        tensors = decode_block(data)
    except DecodingError as err:
        raise InvalidTokenizer(f"not a tensor block: {err}") from err
    raw = tensors.get(TOKENIZER_TENSOR)
    if set(tensors) != {TOKENIZER_TENSOR} or raw.dtype != torch.uint8 or raw.dim() != 1:
        raise InvalidTokenizer(f"a tokenizer block holds one 1-D uint8 {TOKENIZER_TENSOR!r}")
    return raw.numpy().tobytes()


def load_tokenizer_block(data: bytes) -> Tokenizer:
    """The tokenizer a tokenizer block carries (what a node reads from its blob store)."""
    return decode_tokenizer(decode_tokenizer_block(data))


def make_tokenizer_record(tokenizer_json: bytes, version: str) -> tuple[TensorRecord, bytes]:
    """The chain record of a tokenizer and the blob it names."""
    decode_tokenizer(tokenizer_json)
    blob = encode_tokenizer_block(tokenizer_json)
    return make_tensor_record(TOKENIZER_BLOCK, KIND_TOKENIZER, version, blob), blob
