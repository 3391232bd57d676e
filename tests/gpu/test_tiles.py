"""Tiles of a tensor blob: each honest tile verifies alone, any corruption or mix-up is caught."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chain import codec
from chain.errors import CorruptBlob
from chain.merkle import compute_proof, compute_root
from chain.tensors import DEFAULT_SUBTILE_SIZE, DEFAULT_TILE_SIZE, KIND_MODULE, TILE_MERKLE_ARITY
from gpu.tiles import (
    MAX_SUBTILES_PER_TILE,
    CorruptTile,
    TileProof,
    compute_subtile_hashes,
    compute_tensor_root,
    compute_tile_count,
    compute_tile_proof,
    compute_tile_proof_from_hashes,
    compute_tile_proofs,
    get_tile,
    verify_record_tile,
    verify_tile,
)
from gpu.weights import encode_block, make_tensor_record


def _blob(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes without long repeats (so distinct tiles differ)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}/{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def _fields(data: bytes, tile_size: int, subtile_size: int) -> dict[str, object]:
    return {
        "merkle_root": compute_tensor_root(data, subtile_size),
        "size": len(data),
        "tile_size": tile_size,
        "subtile_size": subtile_size,
    }


geometry = st.tuples(
    st.integers(min_value=1, max_value=3000),  # size
    st.integers(min_value=1, max_value=64),  # subtile size
    st.integers(min_value=1, max_value=9),  # subtiles per tile
    st.integers(min_value=0, max_value=2**16),  # content seed
)


# --- subtile hashes and the root ------------------------------------------------------------


def test_subtile_hashes_last_short() -> None:
    data = _blob(10)
    assert compute_subtile_hashes(data, 4) == [
        hashlib.sha256(data[0:4]).digest(),
        hashlib.sha256(data[4:8]).digest(),
        hashlib.sha256(data[8:10]).digest(),
    ]


def test_tensor_root_is_chain_merkle_root() -> None:
    data = _blob(1000)
    leaves = [hashlib.sha256(data[i : i + 64]).digest() for i in range(0, 1000, 64)]
    assert compute_tensor_root(data, 64) == compute_root(leaves, TILE_MERKLE_ARITY)
    assert compute_tensor_root(memoryview(data), 64) == compute_tensor_root(bytearray(data), 64)


def test_invalid_empty_blob() -> None:
    with pytest.raises(ValueError):
        compute_subtile_hashes(b"", 4)
    with pytest.raises(ValueError):
        compute_tile_proofs(b"", 8, 4)
    proof = TileProof(tile_index=0, subtiles=())
    with pytest.raises(CorruptTile):
        verify_tile(b"", 0, proof, merkle_root=bytes(32), size=0, tile_size=8, subtile_size=4)


@pytest.mark.parametrize(("tile_size", "subtile_size"), [(0, 4), (8, 0), (10, 4), (2, 4)])
def test_invalid_geometry(tile_size: int, subtile_size: int) -> None:
    data = _blob(40)
    with pytest.raises(ValueError):
        compute_tile_proof(data, 0, tile_size, subtile_size)
    proof = TileProof(tile_index=0, subtiles=())
    with pytest.raises(CorruptTile):
        verify_tile(data[:8], 0, proof, merkle_root=bytes(32), size=40,
                    tile_size=tile_size, subtile_size=subtile_size)


def test_invalid_too_many_subtiles_per_tile() -> None:
    with pytest.raises(ValueError):
        compute_tile_proof(_blob(10), 0, MAX_SUBTILES_PER_TILE + 1, 1)


# --- honest tiles ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(geometry)
def test_every_honest_tile_verifies_alone(geo: tuple[int, int, int, int]) -> None:
    size, subtile_size, per_tile, seed = geo
    tile_size = subtile_size * per_tile
    data = _blob(size, seed)
    fields = _fields(data, tile_size, subtile_size)
    proofs = compute_tile_proofs(data, tile_size, subtile_size)
    assert len(proofs) == compute_tile_count(size, tile_size)
    assert b"".join(bytes(get_tile(data, i, tile_size)) for i in range(len(proofs))) == data
    for i, proof in enumerate(proofs):
        verify_tile(bytes(get_tile(data, i, tile_size)), i, proof, **fields)
    for i in {0, len(proofs) // 2, len(proofs) - 1}:
        assert proofs[i] == compute_tile_proof(data, i, tile_size, subtile_size)
        assert codec.decode(TileProof, codec.encode(proofs[i])) == proofs[i]


def test_proofs_match_chain_compute_proof() -> None:
    data = _blob(5000)
    leaves = compute_subtile_hashes(data, 16)
    per_tile = 5
    for proof in compute_tile_proofs(data, 16 * per_tile, 16):
        first = proof.tile_index * per_tile
        for offset, sub in enumerate(proof.subtiles):
            assert sub == compute_proof(leaves, first + offset, TILE_MERKLE_ARITY)


def test_default_geometry_tiles_verify() -> None:
    size = 2 * DEFAULT_TILE_SIZE + 3 * DEFAULT_SUBTILE_SIZE + 7  # last tile and subtile short
    data = _blob(size)
    fields = _fields(data, DEFAULT_TILE_SIZE, DEFAULT_SUBTILE_SIZE)
    proofs = compute_tile_proofs(data, DEFAULT_TILE_SIZE, DEFAULT_SUBTILE_SIZE)
    assert [len(p.subtiles) for p in proofs] == [16, 16, 4]
    for i, proof in enumerate(proofs):
        verify_tile(get_tile(data, i, DEFAULT_TILE_SIZE), i, proof, **fields)


def test_record_tile_verifies() -> None:
    data = encode_block({"w": torch.arange(300, dtype=torch.float32).reshape(20, 15)})
    record = make_tensor_record("layer0.expert0", KIND_MODULE, "0.1.0", data, 256, 64)
    for i, proof in enumerate(compute_tile_proofs(data, 256, 64)):
        verify_record_tile(record, i, get_tile(data, i, 256), proof)
    bad = dataclasses.replace(record, merkle_root=bytes(32))
    with pytest.raises(CorruptBlob):
        verify_record_tile(bad, 0, get_tile(data, 0, 256), compute_tile_proof(data, 0, 256, 64))


# --- corruptions ----------------------------------------------------------------------------


def test_every_single_byte_corruption_detected() -> None:
    """Exhaustive on a small blob: each byte of each tile, flipped, fails verification."""
    size, tile_size, subtile_size = 700, 96, 16
    data = _blob(size)
    fields = _fields(data, tile_size, subtile_size)
    proofs = compute_tile_proofs(data, tile_size, subtile_size)
    for i, proof in enumerate(proofs):
        tile = bytearray(get_tile(data, i, tile_size))
        for pos in range(len(tile)):
            tile[pos] ^= 0xFF
            with pytest.raises(CorruptTile) as info:
                verify_tile(tile, i, proof, **fields)
            assert info.value.tile_index == i
            tile[pos] ^= 0xFF
        verify_tile(tile, i, proof, **fields)


@settings(max_examples=150, deadline=None)
@given(geometry, st.data())
def test_corruption_detected(geo: tuple[int, int, int, int], draw: st.DataObject) -> None:
    size, subtile_size, per_tile, seed = geo
    tile_size = subtile_size * per_tile
    data = _blob(size, seed)
    fields = _fields(data, tile_size, subtile_size)
    index = draw.draw(st.integers(0, compute_tile_count(size, tile_size) - 1))
    tile = bytearray(get_tile(data, index, tile_size))
    pos = draw.draw(st.integers(0, len(tile) - 1))
    tile[pos] ^= draw.draw(st.integers(1, 255))
    with pytest.raises(CorruptTile):
        verify_tile(tile, index, compute_tile_proof(data, index, tile_size, subtile_size), **fields)


@settings(max_examples=100, deadline=None)
@given(geometry, st.data())
def test_wrong_length_rejected(geo: tuple[int, int, int, int], draw: st.DataObject) -> None:
    size, subtile_size, per_tile, seed = geo
    tile_size = subtile_size * per_tile
    data = _blob(size, seed)
    index = draw.draw(st.integers(0, compute_tile_count(size, tile_size) - 1))
    tile = bytes(get_tile(data, index, tile_size))
    proof = compute_tile_proof(data, index, tile_size, subtile_size)
    fields = _fields(data, tile_size, subtile_size)
    cut = draw.draw(st.integers(0, len(tile) - 1))
    extra = draw.draw(st.binary(min_size=1, max_size=8))
    for wrong in (tile[:cut], tile + extra, extra + tile):
        with pytest.raises(CorruptTile):
            verify_tile(wrong, index, proof, **fields)


@settings(max_examples=100, deadline=None)
@given(geometry, st.data())
def test_wrong_root_rejected(geo: tuple[int, int, int, int], draw: st.DataObject) -> None:
    size, subtile_size, per_tile, seed = geo
    tile_size = subtile_size * per_tile
    data = _blob(size, seed)
    index = draw.draw(st.integers(0, compute_tile_count(size, tile_size) - 1))
    fields = _fields(data, tile_size, subtile_size)
    bit = draw.draw(st.integers(0, 255))
    root = bytearray(fields["merkle_root"])
    root[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(CorruptTile):
        verify_tile(get_tile(data, index, tile_size), index,
                    compute_tile_proof(data, index, tile_size, subtile_size),
                    **{**fields, "merkle_root": bytes(root)})


@settings(max_examples=100, deadline=None)
@given(geometry, st.data())
def test_wrong_size_rejected_by_last_tile(
    geo: tuple[int, int, int, int], draw: st.DataObject
) -> None:
    """The root binds the subtile count, the last tile's length binds the exact size.

    (A tile before the last proves its bytes whatever the size within the last subtile.)"""
    size, subtile_size, per_tile, seed = geo
    tile_size = subtile_size * per_tile
    data = _blob(size, seed)
    last = compute_tile_count(size, tile_size) - 1
    proof = compute_tile_proof(data, last, tile_size, subtile_size)
    delta = draw.draw(st.integers(1, 2 * tile_size) | st.integers(-size, -1))
    fields = {**_fields(data, tile_size, subtile_size), "size": size + delta}
    with pytest.raises(CorruptTile):
        verify_tile(get_tile(data, last, tile_size), last, proof, **fields)


# --- tiles and proofs never mix -------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(geometry)
def test_proof_for_tile_i_never_verifies_tile_j(geo: tuple[int, int, int, int]) -> None:
    size, subtile_size, per_tile, seed = geo
    tile_size = subtile_size * per_tile
    data = _blob(size, seed)
    fields = _fields(data, tile_size, subtile_size)
    proofs = compute_tile_proofs(data, tile_size, subtile_size)
    tiles = [bytes(get_tile(data, i, tile_size)) for i in range(len(proofs))]
    for i, proof in enumerate(proofs[:6]):
        for j, tile in enumerate(tiles[:6]):
            if i == j:
                continue
            relabelled = dataclasses.replace(proof, tile_index=j)
            attempts = [(tile, j, proof), (tile, j, relabelled)]
            if tile != tiles[i]:  # equal bytes at i would be an honest tile, not a mix-up
                attempts.append((tile, i, proof))
            for attempt in attempts:
                with pytest.raises(CorruptTile):
                    verify_tile(*attempt, **fields)


def test_invalid_tile_index() -> None:
    data = _blob(100)
    fields = _fields(data, 32, 8)
    proof = compute_tile_proof(data, 3, 32, 8)
    with pytest.raises(IndexError):
        compute_tile_proof(data, 4, 32, 8)
    with pytest.raises(CorruptTile):
        verify_tile(get_tile(data, 3, 32), 4, dataclasses.replace(proof, tile_index=4), **fields)


def test_invalid_subtile_proof_count() -> None:
    data = _blob(100)
    fields = _fields(data, 32, 8)
    proof = compute_tile_proof(data, 1, 32, 8)
    subs = proof.subtiles
    for wrong in (subs[:-1], subs + subs[:1], subs[::-1]):
        forged = dataclasses.replace(proof, subtiles=wrong)
        with pytest.raises(CorruptTile):
            verify_tile(get_tile(data, 1, 32), 1, forged, **fields)


# --- proofs from kept hashes, tampered proofs, reordered subtiles ---------------------------


@settings(max_examples=100, deadline=None)
@given(geometry, st.data())
def test_proof_from_hashes_equals_proof_from_bytes(
    geo: tuple[int, int, int, int], draw: st.DataObject
) -> None:
    size, subtile_size, per_tile, seed = geo
    tile_size = subtile_size * per_tile
    data = _blob(size, seed)
    index = draw.draw(st.integers(0, compute_tile_count(size, tile_size) - 1))
    hashes = compute_subtile_hashes(data, subtile_size)
    proof = compute_tile_proof_from_hashes(hashes, index, tile_size, subtile_size)
    assert proof == compute_tile_proof(data, index, tile_size, subtile_size)
    with pytest.raises(IndexError):
        compute_tile_proof_from_hashes(hashes, compute_tile_count(size, tile_size), tile_size,
                                       subtile_size)


@settings(max_examples=150, deadline=None)
@given(geometry, st.data())
def test_tampered_proof_rejected(geo: tuple[int, int, int, int], draw: st.DataObject) -> None:
    """Any change to a subtile proof (a sibling hash, its position, the leaf count, the arity)
    makes the honest tile fail."""
    size, subtile_size, per_tile, seed = geo
    tile_size = subtile_size * per_tile
    data = _blob(size, seed)
    fields = _fields(data, tile_size, subtile_size)
    index = draw.draw(st.integers(0, compute_tile_count(size, tile_size) - 1))
    tile = get_tile(data, index, tile_size)
    proof = compute_tile_proof(data, index, tile_size, subtile_size)
    which = draw.draw(st.integers(0, len(proof.subtiles) - 1))
    sub = proof.subtiles[which]
    siblings = [(lvl, pos) for lvl, group in enumerate(sub.path) for pos in range(len(group))]
    kinds = ["index", "count", "arity"] + (["sibling"] if siblings else [])
    kind = draw.draw(st.sampled_from(kinds))
    if kind == "sibling":
        lvl, pos = draw.draw(st.sampled_from(siblings))
        bit = draw.draw(st.integers(0, 255))
        group = list(sub.path[lvl])
        flipped = bytearray(group[pos])
        flipped[bit // 8] ^= 1 << (bit % 8)
        group[pos] = bytes(flipped)
        path = sub.path[:lvl] + (tuple(group),) + sub.path[lvl + 1 :]
        forged = dataclasses.replace(sub, path=path)
    elif kind == "index":
        forged = dataclasses.replace(sub, index=sub.index + draw.draw(st.integers(1, 5)))
    elif kind == "count":
        forged = dataclasses.replace(sub, count=sub.count + draw.draw(st.integers(1, 5)))
    else:
        forged = dataclasses.replace(sub, arity=draw.draw(st.sampled_from([2, 4, 16])))
    subtiles = proof.subtiles[:which] + (forged,) + proof.subtiles[which + 1 :]
    with pytest.raises(CorruptTile) as info:
        verify_tile(tile, index, dataclasses.replace(proof, subtiles=subtiles), **fields)
    assert info.value.tile_index == index


@settings(max_examples=100, deadline=None)
@given(geometry, st.data())
def test_reordered_subtiles_rejected(geo: tuple[int, int, int, int], draw: st.DataObject) -> None:
    """Two different full subtiles of a tile swapped: every byte is genuine, the order is not."""
    size, subtile_size, per_tile, seed = geo
    tile_size = subtile_size * per_tile
    data = _blob(size, seed)
    fields = _fields(data, tile_size, subtile_size)
    index = draw.draw(st.integers(0, compute_tile_count(size, tile_size) - 1))
    tile = bytes(get_tile(data, index, tile_size))
    full = len(tile) // subtile_size
    if full < 2:
        return
    i, j = sorted(draw.draw(st.lists(st.integers(0, full - 1), min_size=2, max_size=2, unique=True)))
    a, b = tile[i * subtile_size : (i + 1) * subtile_size], tile[j * subtile_size : (j + 1) * subtile_size]
    if a == b:
        return
    swapped = (tile[: i * subtile_size] + b + tile[(i + 1) * subtile_size : j * subtile_size] + a
               + tile[(j + 1) * subtile_size :])
    with pytest.raises(CorruptTile):
        verify_tile(swapped, index, compute_tile_proof(data, index, tile_size, subtile_size), **fields)
