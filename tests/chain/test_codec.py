"""The canonical codec: pinned bytes, and rejection of non-canonical and ill-typed bytes.

The golden hex below was derived by hand from the msgpack spec
(https://github.com/msgpack/msgpack/blob/master/spec.md): a dataclass is a fixarray
(0x90 | n) of its fields in order; a union member is `[TAG, [fields...]]`; bytes are bin8
(0xc4 len); short strings fixstr (0xa0 | len), 32..255-byte strings str8 (0xd9 len); None is
nil (0xc0); True is 0xc3; integers use the narrowest of positive fixint (< 0x80), uint8 (0xcc),
uint16 (0xcd), uint32 (0xce), uint64 (0xcf), negative fixint / int8..int64.

Round trips of every wire type and fuzzed bad bytes are in test_codec_properties.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chain import codec, merkle, tensors
from chain.codec import Str, decode, encode, wire
from chain.errors import DecodingError
from chain.learning import SegmentCheck
from chain.merkle import MerkleProof
from chain.payloads import (
    AuditVerdict,
    Transfer,
)
from chain.tensors import TensorInfo
from chain.types import (
    Block,
    BlockHeader,
    CommitCertificate,
    CommitSig,
    Transaction,
    TxBody,
    Validator,
    ValidatorSet,
    Vote,
)


@wire
class AuditCheck:
    """A (name, bool, detail) struct for the bool and str8 golden bytes (the shape of the audit
    checks of pact 5)."""

    name: Str(32)
    passed: bool
    detail: Str(256)


# --- golden bytes ---------------------------------------------------------------------------

ADDR_0_19 = bytes(range(20))
TRANSFER = Transfer(to=ADDR_0_19, amount=1000)
TRANSFER_HEX = (
    "92"  # fixarray, 2 fields
    "c414" + ADDR_0_19.hex()  # bin8, 20 bytes
    + "cd03e8"  # uint16 1000
)


def test_golden_transfer() -> None:
    assert encode(TRANSFER).hex() == TRANSFER_HEX
    assert decode(Transfer, bytes.fromhex(TRANSFER_HEX)) == TRANSFER


VOTE = Vote(
    chain_id=2, height=300, round=0, step=2, block_hash=b"\xab" * 32, validator=b"\x11" * 20
)
VOTE_HEX = (
    "96"  # fixarray, 6 fields
    "02"  # chain_id: positive fixint
    "cd012c"  # height 300: uint16
    "00"  # round 0
    "02"  # step
    "c420" + "ab" * 32  # block_hash: bin8, 32 bytes
    + "c414" + "11" * 20  # validator: bin8, 20 bytes
)


def test_golden_vote() -> None:
    assert encode(VOTE).hex() == VOTE_HEX
    assert decode(Vote, bytes.fromhex(VOTE_HEX)) == VOTE


TX_BODY = TxBody(chain_id=2, sender=bytes(32), nonce=7, payload=TRANSFER)
TX_BODY_HEX = (
    "94"  # fixarray, 4 fields
    "02"  # chain_id
    "c420" + "00" * 32  # sender
    + "07"  # nonce
    + "92" + "1e" + TRANSFER_HEX  # payload: [TAG 30, [fields]]
)


def test_golden_tx_body_tagged_union() -> None:
    assert encode(TX_BODY).hex() == TX_BODY_HEX
    assert decode(TxBody, bytes.fromhex(TX_BODY_HEX)) == TX_BODY


HEADER = BlockHeader(
    chain_id=2,
    height=1,
    prev_hash=b"\x01" * 32,
    time_ms=2**32,
    proposer=b"\x22" * 20,
    validators_hash=b"\x33" * 32,
    next_validators_hash=b"\x3a" * 32,
    tx_root=b"\x44" * 32,
    state_root=b"\x55" * 32,
    last_commit_hash=bytes(32),
)
HEADER_HEX = (
    "9a"  # fixarray, 10 fields
    "02"  # chain_id
    "01"  # height
    "c420" + "01" * 32  # prev_hash
    + "cf0000000100000000"  # time_ms 2**32: uint64 (one past uint32)
    + "c414" + "22" * 20  # proposer
    + "c420" + "33" * 32  # validators_hash
    + "c420" + "3a" * 32  # next_validators_hash
    + "c420" + "44" * 32  # tx_root
    + "c420" + "55" * 32  # state_root
    + "c420" + "00" * 32  # last_commit_hash
)
COMMIT = CommitCertificate(
    chain_id=2,
    height=127,
    round=128,
    block_hash=b"\x66" * 32,
    signatures=(CommitSig(validator=b"\x77" * 20, signature=b"\x88" * 64),),
)
COMMIT_HEX = (
    "95"  # fixarray, 5 fields
    "02"  # chain_id
    "7f"  # height 127: largest positive fixint
    "cc80"  # round 128: uint8
    "c420" + "66" * 32  # block_hash
    + "91"  # signatures: fixarray, 1 item
    + "92" + "c414" + "77" * 20 + "c440" + "88" * 64  # CommitSig
)


def test_golden_block_last_commit_none() -> None:
    block = Block(header=HEADER, txs=(), last_commit=None)
    expected = "93" + HEADER_HEX + "90" + "c0"  # txs: empty fixarray; None: nil
    assert encode(block).hex() == expected
    assert decode(Block, bytes.fromhex(expected)) == block


def test_golden_block_last_commit_some() -> None:
    tx = Transaction(body=TX_BODY, signature=b"\x99" * 64)
    block = Block(header=HEADER, txs=(tx,), last_commit=COMMIT)
    tx_hex = "92" + TX_BODY_HEX + "c440" + "99" * 64
    expected = "93" + HEADER_HEX + "91" + tx_hex + COMMIT_HEX  # Some(x) is x itself
    assert encode(block).hex() == expected
    assert decode(Block, bytes.fromhex(expected)) == block


TENSOR_INFO = TensorInfo(name="w1", dtype="BF16", shape=(4096, 14336))
TENSOR_INFO_HEX = (
    "93"  # fixarray, 3 fields
    "a2" + b"w1".hex()  # fixstr
    + "a4" + b"BF16".hex()
    + "92" + "cd1000" + "cd3800"  # shape: [4096, 14336] as uint16s
)


def test_golden_tensor_info() -> None:
    assert encode(TENSOR_INFO).hex() == TENSOR_INFO_HEX
    assert decode(TensorInfo, bytes.fromhex(TENSOR_INFO_HEX)) == TENSOR_INFO


def test_golden_bool_and_str8() -> None:
    detail = "x" * 32  # 32 bytes: one past fixstr, so str8
    check = AuditCheck(name="pii", passed=True, detail=detail)
    expected = "93" + "a3" + b"pii".hex() + "c3" + "d920" + b"x".hex() * 32
    assert encode(check).hex() == expected
    assert decode(AuditCheck, bytes.fromhex(expected)) == check
    check = SegmentCheck(index=0, exact=False, l2_ppm=2**32 - 1, linf_ppm=0, cosine_ppm=1)
    expected = "95" + "00" + "c2" + "ce" + "ff" * 4 + "00" + "01"
    assert encode(check).hex() == expected
    assert decode(SegmentCheck, bytes.fromhex(expected)) == check


def test_golden_merkle_proof() -> None:
    proof = MerkleProof(arity=2, index=1, count=3, path=((b"\xaa" * 32,), (b"\xbb" * 32,)))
    expected = "94" + "02" + "01" + "03" + "92" + "91c420" + "aa" * 32 + "91c420" + "bb" * 32
    assert encode(proof).hex() == expected


# --- non-canonical and ill-typed encodings ----------------------------------------------------


def _raises(cls: type, data: bytes) -> DecodingError:
    with pytest.raises(DecodingError) as info:
        decode(cls, data)
    return info.value


def _packed(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_invalid_int_in_wider_type() -> None:
    for wide in ("cc05", "cd0005", "ce00000005", "cf0000000000000005", "d005", "d10005"):
        data = bytes.fromhex("92c414" + ADDR_0_19.hex() + wide)
        err = _raises(Transfer, data)
        # The value is in range, so only the final re-encoding check catches it; today that
        # check names only the root (the field itself would be better).
        assert err.field in ("Transfer", "Transfer.amount")
        assert "non-canonical" in err.reason
    # 1000 as uint32 instead of uint16
    err = _raises(Transfer, bytes.fromhex("92c414" + ADDR_0_19.hex() + "ce000003e8"))
    assert "non-canonical" in err.reason


def test_invalid_str8_header_for_short_string() -> None:
    data = bytes.fromhex("93" + "d902" + b"w1".hex() + "a4" + b"BF16".hex() + "92cd1000cd3800")
    err = _raises(TensorInfo, data)
    assert err.field in ("TensorInfo", "TensorInfo.name")
    assert "non-canonical" in err.reason
    # str16 for a 32-byte string that str8 holds
    data = bytes.fromhex("93a3" + b"pii".hex() + "c3" + "da0020" + b"x".hex() * 32)
    assert "non-canonical" in _raises(AuditCheck, data).reason


def test_invalid_wide_bin_and_array_headers() -> None:
    bin16 = bytes.fromhex("92c50014" + ADDR_0_19.hex() + "cd03e8")
    assert "non-canonical" in _raises(Transfer, bin16).reason
    array16 = bytes.fromhex("dc0002c414" + ADDR_0_19.hex() + "cd03e8")
    assert "non-canonical" in _raises(Transfer, array16).reason


def test_invalid_map_instead_of_array() -> None:
    err = _raises(Transfer, _packed({"to": ADDR_0_19, "amount": 1000}))
    assert err.field == "Transfer"
    assert "expected array" in err.reason
    err = _raises(TxBody, _packed([2, bytes(32), 7, {"30": [ADDR_0_19, 1000]}]))
    assert err.field == "TxBody.payload"
    # integer map keys are refused by the unpacker itself (strict_map_key)
    err = _raises(TxBody, _packed([2, bytes(32), 7, {30: [ADDR_0_19, 1000]}]))
    assert err.field == "TxBody"
    assert "malformed msgpack" in err.reason


def test_invalid_float_where_int_expected() -> None:
    err = _raises(Transfer, _packed([ADDR_0_19, 1000.0]))
    assert err.field == "Transfer.amount"
    assert "expected integer, got float" in err.reason
    assert "Transfer.amount" in str(err)


def test_invalid_bool_where_int_expected() -> None:
    err = _raises(Transfer, _packed([ADDR_0_19, True]))
    assert err.field == "Transfer.amount"
    assert "got bool" in err.reason


def test_invalid_int_where_bool_expected() -> None:
    err = _raises(AuditCheck, _packed(["pii", 1, ""]))
    assert err.field == "AuditCheck.passed"


def test_invalid_none_where_value_expected() -> None:
    err = _raises(Transfer, _packed([ADDR_0_19, None]))
    assert err.field == "Transfer.amount"


def test_invalid_str_and_bytes_swapped() -> None:
    err = _raises(Transfer, _packed(["a" * 20, 1000]))
    assert err.field == "Transfer.to"
    assert "expected bytes" in err.reason
    err = _raises(TensorInfo, _packed([b"w1", "BF16", [1]]))
    assert err.field == "TensorInfo.name"
    assert "expected string" in err.reason


def test_invalid_arity() -> None:
    err = _raises(Transfer, _packed([ADDR_0_19, 1000, 0]))
    assert err.field == "Transfer"
    assert "needs 2 fields, got 3" in err.reason
    err = _raises(Transfer, _packed([ADDR_0_19]))
    assert "needs 2 fields, got 1" in err.reason
    err = _raises(Transfer, _packed([]))
    assert "got 0" in err.reason


def test_invalid_bytes_over_cap() -> None:
    err = _raises(Transfer, _packed([bytes(21), 1000]))
    assert err.field == "Transfer.to"
    assert "length 21" in err.reason
    err = _raises(Transfer, _packed([bytes(19), 1000]))
    assert "length 19" in err.reason
    err = _raises(TensorInfo, _packed(["n" * 65, "F32", []]))
    assert err.field == "TensorInfo.name"
    err = _raises(TensorInfo, _packed(["é" * 33, "F32", []]))  # 33 chars, 66 UTF-8 bytes
    assert err.field == "TensorInfo.name"
    assert "66 bytes" in err.reason
    err = _raises(TensorInfo, _packed(["w", "F32", [1] * (tensors.MAX_DIMS + 1)]))
    assert err.field == "TensorInfo.shape"


def test_invalid_int_out_of_range() -> None:
    wire = codec.to_wire(VOTE)
    wire[0] = 256
    err = _raises(Vote, _packed(wire))
    assert err.field == "Vote.chain_id"
    assert "256" in err.reason
    err = _raises(Transfer, _packed([ADDR_0_19, -1]))
    assert err.field == "Transfer.amount"
    wire = codec.to_wire(VOTE)
    wire[2] = 2**32
    assert _raises(Vote, _packed(wire)).field == "Vote.round"


def test_invalid_unknown_union_tag() -> None:
    err = _raises(TxBody, _packed([2, bytes(32), 7, [99, [ADDR_0_19, 1000]]]))
    assert err.field == "TxBody.payload"
    assert "unknown tag 99" in err.reason
    err = _raises(TxBody, _packed([2, bytes(32), 7, [True, [ADDR_0_19, 1000]]]))
    assert "unknown tag" in err.reason
    err = _raises(TxBody, _packed([2, bytes(32), 7, [30]]))
    assert "expected [tag, fields]" in err.reason
    # the right tag with another member's fields
    err = _raises(TxBody, _packed([2, bytes(32), 7, [AuditVerdict.TAG, [ADDR_0_19, 1000]]]))
    assert err.field == "TxBody.payload<AuditVerdict>"


def test_invalid_field_path_is_nested() -> None:
    tx = Transaction(body=TX_BODY, signature=b"\x99" * 64)
    wire = codec.to_wire(Block(header=HEADER, txs=(tx, tx), last_commit=COMMIT))
    wire[1][1][0][3][1][1] = 1000.5  # txs[1].body.payload.amount
    err = _raises(Block, _packed(wire))
    assert err.field == "Block.txs[1].body.payload<Transfer>.amount"
    wire = codec.to_wire(Block(header=HEADER, txs=(), last_commit=COMMIT))
    wire[2][4][0][1] = bytes(63)  # last_commit.signatures[0].signature
    err = _raises(Block, _packed(wire))
    assert err.field == "Block.last_commit.signatures[0].signature"


def test_invalid_merkle_proof_paths() -> None:
    good = codec.to_wire(MerkleProof(arity=2, index=0, count=2, path=((bytes(32),),)))
    bad = [good[0], good[1], good[2], [[bytes(32)]] * (merkle.MAX_DEPTH + 1)]
    assert _raises(MerkleProof, _packed(bad)).field == "MerkleProof.path"
    bad = [good[0], good[1], good[2], [[bytes(32)] * merkle.MAX_ARITY]]
    assert _raises(MerkleProof, _packed(bad)).field == "MerkleProof.path[0]"
    bad = [good[0], good[1], good[2], [[bytes(32), bytes(31)]]]
    assert _raises(MerkleProof, _packed(bad)).field == "MerkleProof.path[0][1]"


def test_invalid_validator_set_order() -> None:
    a = Validator(address=b"\x01" * 20, public_key=bytes(32), power=1)
    b = Validator(address=b"\x02" * 20, public_key=bytes(32), power=1)
    for members in ([b, a], [a, a]):
        wire = [0, [codec.to_wire(v) for v in members]]
        err = _raises(ValidatorSet, _packed(wire))
        assert err.field == "ValidatorSet"
        assert "sorted" in err.reason
    ordered = _packed([0, [codec.to_wire(a), codec.to_wire(b)]])
    assert decode(ValidatorSet, ordered).validators == (a, b)


def test_invalid_malformed_msgpack() -> None:
    valid = encode(TRANSFER)
    for data in (b"", b"\xc1", valid + b"\x00", valid[:-1], b"\x92\xa2\xff\xfe\x00"):
        err = _raises(Transfer, data)
        assert err.field == "Transfer"
    ext = b"\x92" + msgpack.packb(msgpack.ExtType(1, ADDR_0_19)) + b"\xcd\x03\xe8"
    assert _raises(Transfer, ext).field == "Transfer.to"


def test_invalid_optional_is_not_a_wrapper() -> None:
    # Some(x) is encoded as x, not [x]; a one-element array is not a CommitCertificate.
    block = codec.to_wire(Block(header=HEADER, txs=(), last_commit=COMMIT))
    block[2] = [block[2]]
    err = _raises(Block, _packed(block))
    assert err.field == "Block.last_commit"


# --- size cap -------------------------------------------------------------------------------


def test_invalid_over_max_size() -> None:
    raw = encode(TRANSFER)
    assert decode(Transfer, raw, max_size=len(raw)) == TRANSFER
    err = _raises_with_cap(Transfer, raw, len(raw) - 1)
    assert err.field == "Transfer"
    assert str(len(raw)) in err.reason
    txs = (Transaction(TX_BODY, bytes(64)),) * 50
    big = encode(Block(header=HEADER, txs=txs, last_commit=None))
    _raises_with_cap(Block, big, 1024)


def test_invalid_over_default_max_size() -> None:
    data = b"\x00" * (codec.DEFAULT_MAX_SIZE + 1)
    err = _raises(Transfer, data)
    assert "exceed" in err.reason


def _raises_with_cap(cls: type, data: bytes, cap: int) -> DecodingError:
    with pytest.raises(DecodingError) as info:
        decode(cls, data, max_size=cap)
    return info.value


# --- encoding side --------------------------------------------------------------------------


def test_invalid_encode_rejects_ill_typed_values() -> None:
    with pytest.raises(codec.EncodingError, match="Transfer.amount"):
        encode(Transfer(to=ADDR_0_19, amount=-1))
    with pytest.raises(codec.EncodingError, match="Transfer.amount"):
        encode(Transfer(to=ADDR_0_19, amount=True))
    with pytest.raises(codec.EncodingError, match="Transfer.to"):
        encode(Transfer(to=bytearray(20), amount=1))  # type: ignore[arg-type]
    with pytest.raises(codec.EncodingError, match="TensorInfo.shape"):
        encode(TensorInfo(name="w", dtype="F32", shape=[1, 2]))  # type: ignore[arg-type]
    with pytest.raises(codec.EncodingError, match="TxBody.payload"):
        wrong_member: Any = VOTE
        encode(TxBody(chain_id=0, sender=bytes(32), nonce=0, payload=wrong_member))


@given(st.integers(0, 70_000))
def test_array_header_size_matches_msgpack(n: int) -> None:
    import msgpack

    from chain.codec import compute_array_header_size

    assert compute_array_header_size(n) == len(msgpack.packb([None] * n)) - n


def test_block_size_from_parts_equals_the_encoding() -> None:
    from chain.transition import EncodedTx, compute_block_size
    from chain.types import Block
    from genesis.history import make_test_history

    history = make_test_history(3, other_blocks=0, txs_per_block=20)
    for h in (1, 2, 3):
        block = history.store.get_block(2, h)
        assert compute_block_size(block, [EncodedTx.of(tx) for tx in block.txs]) == len(codec.encode(block))
    empty = Block(block.header, (), block.last_commit)
    assert compute_block_size(empty, []) == len(codec.encode(empty))


def test_encode_with_field_gives_both_encodings() -> None:
    from genesis.history import make_test_history

    tx = make_test_history(1, other_blocks=0).store.get_block(2, 1).txs[0]
    whole, body = codec.encode_with_field(tx, "body")
    assert whole == codec.encode(tx) and body == codec.encode(tx.body)


def test_remembered_transaction_forms_are_never_shared_out() -> None:
    tx = Transaction(body=TX_BODY, signature=b"\x99" * 64)
    first = codec.encode(tx)
    form = codec.to_wire(tx)
    form[1] = b"\x00" * 64  # a caller's change to its copy ...
    assert codec.encode(tx) == first  # ... is not the remembered form
    twin = Transaction(body=TX_BODY, signature=b"\x99" * 64)
    assert codec.encode(twin) == first
    other = Transaction(body=TX_BODY, signature=b"\x98" * 64)
    assert codec.encode(other) != first
    codec.clear_memos()
    assert codec.encode(tx) == first


def test_remembered_records_decode_to_equal_objects_and_keep_every_check() -> None:
    from chain.records import Account

    acct = Account(5, 6, 7, bytes(32))
    data = codec.encode(acct)
    assert codec.decode(Account, data) == acct
    with pytest.raises(DecodingError):
        codec.decode(Account, data, max_size=len(data) - 1)
    codec.clear_memos()
    assert codec.decode(Account, data) == acct


def _walked(obj: Any) -> bytes:
    """The encoding by the generic field-by-field walk alone (no generated fast path, no memo)."""
    flats = {cls: schema.flat for cls, schema in codec._SCHEMAS.items()}
    try:
        for schema in codec._SCHEMAS.values():
            schema.flat = None
        codec.clear_memos()
        return msgpack.packb(codec._SCHEMAS[type(obj)]._walk(obj, type(obj).__name__), use_bin_type=True)
    finally:
        for cls, flat in flats.items():
            codec._SCHEMAS[cls].flat = flat
        codec.clear_memos()


def test_generated_forms_equal_the_generic_walk() -> None:
    from chain.records import Account
    from chain.types import Block
    from genesis.history import make_test_history

    store = make_test_history(2, other_blocks=0, txs_per_block=5).store
    block = store.get_block(2, 2)
    assert isinstance(block, Block) and block.last_commit is not None
    assert codec._SCHEMAS[Account].flat is not None and codec._SCHEMAS[Block].flat is not None
    codec.clear_memos()
    for obj in (block, block.header, block.last_commit, *block.txs, Account(1, 2, 3, bytes(32)), TRANSFER):
        assert encode(obj) == _walked(obj)
        assert decode(type(obj), encode(obj)) == obj


def test_invalid_encode_names_the_field_inside_a_sequence() -> None:
    from chain.types import Block
    from genesis.history import make_test_history

    block = make_test_history(1, other_blocks=0, txs_per_block=3).store.get_block(2, 1)
    assert isinstance(block, Block)
    bad_body = dataclasses.replace(block.txs[1].body, nonce=-1)
    bad = dataclasses.replace(block, txs=(block.txs[0], dataclasses.replace(block.txs[1], body=bad_body)))
    with pytest.raises(codec.EncodingError, match=r"Block\.txs\[1\]\.body\.nonce"):
        encode(bad)
    with pytest.raises(codec.EncodingError, match=r"BlockHeader\.height"):
        encode(dataclasses.replace(block.header, height=True))


def test_remembered_bytes_and_hashes_are_by_identity() -> None:
    tx = Transaction(body=TX_BODY, signature=b"\x97" * 64)
    twin = Transaction(body=TX_BODY, signature=b"\x97" * 64)
    assert codec.hash_of(tx) == hashlib.sha256(encode(tx)).digest() == codec.hash_of(twin)
    assert codec.hash_of(tx) is codec.hash_of(tx)  # remembered
    other = Transaction(body=TX_BODY, signature=b"\x96" * 64)
    assert codec.hash_of(other) != codec.hash_of(tx)
    codec.clear_memos()
    assert codec.hash_of(tx) == hashlib.sha256(_walked(tx)).digest()


def test_encode_from_many_threads_gives_the_same_bytes() -> None:
    import threading

    from chain.records import Account

    accounts = [Account(i, 2 * i, 3 * i, bytes([i % 256]) * 32) for i in range(2_000)]
    expected = [_walked(a) for a in accounts]
    results: dict[int, list[bytes]] = {}

    def run(k: int) -> None:
        results[k] = [encode(a) for a in accounts]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[k] == expected for k in range(4))
