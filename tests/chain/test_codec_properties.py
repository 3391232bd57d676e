"""Property tests of the canonical codec, from its schema: every wire type round-trips, and bad
bytes (random, random msgpack, mutated, truncated) only ever raise `DecodingError`.

Pinned bytes and hand-made non-canonical encodings are in test_codec.py.
"""

from __future__ import annotations

import importlib
import types
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chain import codec, merkle, params, payloads, tensors, votes
from chain import types as chain_types
from chain.codec import (
    _Bool,
    _Bytes,
    _Int,
    _Optional,
    _schema_for,
    _Seq,
    _Str,
    _Struct,
    _Variant,
    decode,
    encode,
)
from chain.errors import DecodingError
from chain.merkle import MerkleProof
from chain.tensors import TensorInfo
from chain.types import Block, Transaction, Validator, ValidatorSet
from tests.chain.test_codec import COMMIT, HEADER, TX_BODY

try:  # the pact pulls in records/state; its wire types are covered when it imports
    _pact: types.ModuleType | None = importlib.import_module("chain.pact")
except Exception:  # pragma: no cover - depends on modules other engineers are editing
    _pact = None


# --- generic strategies from the codec schema ---------------------------------------------

MAX_ITEMS = 3
"""Cap on generated sequence lengths (unless the schema's minimum is larger)."""
MAX_BLOB = 48
"""Cap on generated variable-length bytes."""
MAX_CHARS = 24
"""Cap on generated string lengths, in characters."""

_STRUCT_STRATEGIES: dict[type, st.SearchStrategy[Any]] = {}


def _fit_utf8(text: str, max_bytes: int) -> str:
    while len(text.encode()) > max_bytes:
        text = text[:-1]
    return text


def strategy_for_node(node: codec._Node) -> st.SearchStrategy[Any]:
    if isinstance(node, _Int):
        return st.integers(node.lo, node.hi)
    if isinstance(node, _Bool):
        return st.booleans()
    if isinstance(node, _Bytes):
        return st.binary(min_size=node.lo, max_size=max(node.lo, min(node.hi, MAX_BLOB)))
    if isinstance(node, _Str):
        lo, hi = node.lo, node.hi
        return (
            st.text(min_size=lo, max_size=max(lo, min(hi, MAX_CHARS)))
            .map(lambda s: _fit_utf8(s, hi))
            .filter(lambda s: len(s.encode()) >= lo)
        )
    if isinstance(node, _Seq):
        hi = max(node.lo, min(node.hi, MAX_ITEMS))
        return st.lists(strategy_for_node(node.elem), min_size=node.lo, max_size=hi).map(tuple)
    if isinstance(node, _Optional):
        return st.none() | strategy_for_node(node.inner)
    if isinstance(node, _Variant):
        return st.one_of([strategy_for(node.by_tag[tag].cls) for tag in sorted(node.by_tag)])
    if isinstance(node, _Struct):
        return strategy_for(node.cls)
    raise TypeError(f"no strategy for schema node {node!r}")


def _build_or_none(cls: type, values: tuple[Any, ...]) -> Any:
    try:
        return cls(*values)
    except ValueError:  # a __post_init__ invariant; filtered out below
        return None


def _validator_sets() -> st.SearchStrategy[ValidatorSet]:
    members = st.lists(
        strategy_for(Validator).filter(lambda v: v.power > 0), max_size=MAX_ITEMS,
        unique_by=lambda v: v.address,
    ).map(lambda vs: tuple(sorted(vs, key=lambda v: v.address)))
    return st.builds(ValidatorSet, epoch=st.integers(0, 2**64 - 1), validators=members)


_OVERRIDES = {ValidatorSet: _validator_sets}


def strategy_for(cls: type) -> st.SearchStrategy[Any]:
    """Valid instances of a wire dataclass, built by walking its codec schema."""
    cached = _STRUCT_STRATEGIES.get(cls)
    if cached is not None:
        return cached
    if cls in _OVERRIDES:
        strategy = st.deferred(_OVERRIDES[cls])
    else:
        struct = _schema_for(cls)
        strategy = (
            st.tuples(*(strategy_for_node(n) for n in struct.nodes))
            .map(lambda values, cls=cls: _build_or_none(cls, values))
            .filter(lambda x: x is not None)
        )
    _STRUCT_STRATEGIES[cls] = strategy
    return strategy


def _reachable(roots: list[type]) -> list[type]:
    seen: dict[type, None] = {}

    def walk(node: codec._Node) -> None:
        if isinstance(node, _Struct):
            if node.cls in seen:
                return
            seen[node.cls] = None
            for child in node.nodes:
                walk(child)
        elif isinstance(node, _Seq):
            walk(node.elem)
        elif isinstance(node, _Optional):
            walk(node.inner)
        elif isinstance(node, _Variant):
            for tag in sorted(node.by_tag):
                walk(node.by_tag[tag])

    for root in roots:
        walk(_schema_for(root))
    return sorted(seen, key=lambda c: (c.__module__, c.__name__))


def _wire_classes_of(module: types.ModuleType) -> list[type]:
    return [
        v for v in vars(module).values()
        if isinstance(v, type) and v.__module__ == module.__name__ and v in codec._SCHEMAS
    ]


_MODULES = [chain_types, votes, payloads, tensors, params, merkle] + ([_pact] if _pact else [])
WIRE_CLASSES = _reachable(
    [Block, MerkleProof] + [c for m in _MODULES for c in _wire_classes_of(m)]
)


def test_wire_classes_cover_the_roots() -> None:
    names = {c.__name__ for c in WIRE_CLASSES}
    expected = {
        "Block", "BlockHeader", "Transaction", "TxBody", "CommitCertificate", "CommitSig",
        "Vote", "SignedVote", "Validator", "ValidatorSet", "MerkleProof", "TensorInfo",
        "TensorRecord", "ModelSpec", "ChainParams", "ConsensusParams", "StakingParams", "DatasetParams",
        "PolParams", "RewardParams", "TrustLevel", "DuplicateVoteEvidence",
        "SnapshotClaim",
    } | {c.__name__ for c in typing.get_args(payloads.Payload)}
    if _pact is not None:
        expected |= {"GenesisPact", "GenesisValidator", "GenesisAccount", "GenesisDataset"}
    assert expected <= names


_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize("cls", WIRE_CLASSES, ids=lambda c: c.__name__)
@_SETTINGS
@given(data=st.data())
def test_round_trip(cls: type, data: st.DataObject) -> None:
    value = data.draw(strategy_for(cls))
    raw = encode(value)
    back = decode(cls, raw)
    assert type(back) is cls
    assert back == value
    assert encode(back) == raw
    assert codec.from_wire(cls, codec.to_wire(value)) == value
    assert codec.hash_of(back) == codec.sha256(raw)


# --- robustness: bad bytes raise DecodingError and nothing else ------------------------------

ROBUST_ROOTS = [Block, Transaction, ValidatorSet, MerkleProof, TensorInfo, votes.SignedVote]
if _pact is not None:
    ROBUST_ROOTS.append(_pact.GenesisPact)


def _decode_or_decoding_error(cls: type, data: bytes) -> None:
    """Decoding either fails with DecodingError or yields a value that re-encodes to `data`."""
    try:
        value = decode(cls, data)
    except DecodingError:
        return
    assert encode(value) == data


@pytest.mark.parametrize("cls", ROBUST_ROOTS, ids=lambda c: c.__name__)
@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_only_raise_decoding_error(cls: type, data: bytes) -> None:
    _decode_or_decoding_error(cls, data)


_msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.binary(max_size=40) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=30,
)


@pytest.mark.parametrize("cls", ROBUST_ROOTS, ids=lambda c: c.__name__)
@settings(max_examples=100, deadline=None)
@given(value=_msgpack_values)
def test_random_msgpack_only_raises_decoding_error(cls: type, value: Any) -> None:
    _decode_or_decoding_error(cls, msgpack.packb(value, use_bin_type=True))


@pytest.mark.parametrize("cls", WIRE_CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_encodings_only_raise_decoding_error(cls: type, data: st.DataObject) -> None:
    raw = encode(data.draw(strategy_for(cls)))
    i = data.draw(st.integers(0, len(raw) - 1))
    mask = data.draw(st.integers(1, 255))
    _decode_or_decoding_error(cls, raw[:i] + bytes([raw[i] ^ mask]) + raw[i + 1 :])
    inserted = data.draw(st.binary(min_size=1, max_size=4))
    _decode_or_decoding_error(cls, raw[:i] + inserted + raw[i:])
    _decode_or_decoding_error(cls, raw[:i] + raw[i + 1 :])
    with pytest.raises(DecodingError):
        decode(cls, raw[:i])  # a strict prefix of one msgpack object is never complete
    with pytest.raises(DecodingError):
        decode(cls, raw + inserted)  # trailing bytes


FULL_BLOCK = Block(header=HEADER, txs=(Transaction(TX_BODY, b"\x99" * 64),), last_commit=COMMIT)


def test_every_truncation_of_a_block_is_rejected() -> None:
    raw = encode(FULL_BLOCK)
    for n in range(len(raw)):
        with pytest.raises(DecodingError):
            decode(Block, raw[:n])


def test_every_single_byte_flip_of_a_block_is_handled() -> None:
    raw = encode(FULL_BLOCK)
    for i in range(len(raw)):
        for mask in (0x01, 0x80, 0xFF):
            _decode_or_decoding_error(Block, raw[:i] + bytes([raw[i] ^ mask]) + raw[i + 1 :])


@settings(max_examples=50, deadline=None)
@given(value=strategy_for(Block), slack=st.integers(1, 64))
def test_max_size_property(value: Block, slack: int) -> None:
    raw = encode(value)
    assert decode(Block, raw, max_size=len(raw)) == value
    if len(raw) > slack:
        with pytest.raises(DecodingError):
            decode(Block, raw, max_size=len(raw) - slack)


