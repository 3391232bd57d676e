"""The byte-level BPE tokenizer: training determinism, canonical bytes, round trips, its block."""

from __future__ import annotations

import functools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chain.tensors import KIND_TOKENIZER, TOKENIZER_BLOCK
from gpu.model import MoEConfig, init_seeded
from gpu.tokenizer import (
    EOT,
    InvalidTokenizer,
    TokenizerConfig,
    decode_ids,
    decode_tokenizer,
    decode_tokenizer_block,
    encode_text,
    encode_tokenizer_block,
    get_eot_id,
    get_vocab_size,
    load_tokenizer_block,
    make_tokenizer_record,
    train_tokenizer,
)
from gpu.weights import encode_block

SMALL = TokenizerConfig(vocab_size=320)
TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i, 'squared is', i * i)\n",
    "import os\nimport sys\n\nif __name__ == '__main__':\n    sys.exit(main())\n",
] * 20


@functools.cache
def _small() -> bytes:
    return train_tokenizer(TEXTS, SMALL)


def test_train_deterministic() -> None:
    assert train_tokenizer(TEXTS, SMALL) == _small()


def test_train_depends_on_corpus() -> None:
    assert train_tokenizer(TEXTS[:2] * 30, SMALL) != _small()


def test_train_vocab_and_special_token() -> None:
    tok = decode_tokenizer(_small())
    assert get_vocab_size(tok) <= SMALL.vocab_size
    assert get_eot_id(tok) == 0
    assert encode_text(tok, EOT) == [0]
    assert get_vocab_size(decode_tokenizer(train_tokenizer(TEXTS * 5, TokenizerConfig(300, 1)))) == 300


def test_encoding_canonical() -> None:
    data = _small()
    assert data.isascii()
    assert json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode() == data


def test_invalid_not_canonical() -> None:
    pretty = json.dumps(json.loads(_small()), indent=1).encode()
    with pytest.raises(InvalidTokenizer, match="canonical"):
        decode_tokenizer(pretty)


@pytest.mark.parametrize("data", [b"", b"{}", b"\xff\xfe", b'{"model": 1}'])
def test_invalid_not_a_tokenizer(data: bytes) -> None:
    with pytest.raises(InvalidTokenizer):
        decode_tokenizer(data)


@given(st.text(max_size=200))
def test_round_trip_any_text(text: str) -> None:
    tok = decode_tokenizer(_small())
    ids = encode_text(tok, text)
    assert all(0 <= i < get_vocab_size(tok) for i in ids)
    assert decode_ids(tok, ids) == text


def test_round_trip_compresses_code() -> None:
    tok = decode_tokenizer(_small())
    text = TEXTS[1]
    assert len(encode_text(tok, text)) < len(text.encode()) / 2


def test_block_round_trip() -> None:
    blob = encode_tokenizer_block(_small())
    assert decode_tokenizer_block(blob) == _small()
    assert load_tokenizer_block(blob).to_str() == decode_tokenizer(_small()).to_str()


def test_record() -> None:
    record, blob = make_tokenizer_record(_small(), "0.1.0")
    assert record.name == TOKENIZER_BLOCK and record.kind == KIND_TOKENIZER
    assert record.size == len(blob)
    (info,) = record.tensors
    assert info.dtype == "U8" and tuple(info.shape) == (len(_small()),)


def test_invalid_block_is_a_model_block() -> None:
    model = init_seeded(MoEConfig(vocab_size=16, d_model=8, n_heads=2, d_ff=8, max_seq_len=4), 0)
    with pytest.raises(InvalidTokenizer, match="uint8"):
        decode_tokenizer_block(encode_block(model.block_state_dict("layer0.expert0")))


def test_invalid_block_garbage() -> None:
    with pytest.raises(InvalidTokenizer, match="tensor block"):
        decode_tokenizer_block(b"not safetensors")
