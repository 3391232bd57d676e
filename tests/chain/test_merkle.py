"""The k-ary Merkle tree: pinned roots, proofs that verify, and proofs that must not."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain import codec
from chain.errors import DecodingError
from chain.merkle import (
    MAX_ARITY,
    MerkleProof,
    compute_levels,
    compute_proof,
    compute_root,
    is_valid_proof,
    seal_levels,
    update_levels,
)


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _inner(*children: bytes) -> bytes:
    return _h(b"\x01" + b"".join(children))


def _seal(count: int, top: bytes) -> bytes:
    return _h(b"\x02" + count.to_bytes(8, "big") + top)


def _leaves(n: int, salt: bytes = b"") -> list[bytes]:
    """n distinct leaf hashes."""
    return [_h(salt + i.to_bytes(4, "big")) for i in range(n)]


A, B, C, D, E = _leaves(5)


# --- pinned roots ---------------------------------------------------------------------------


def test_root_empty() -> None:
    assert compute_root([]) == _h(b"\x02" + bytes(8))
    assert compute_root([], 16) == compute_root([], 2)


def test_root_single_leaf() -> None:
    assert compute_root([A]) == _seal(1, A)


def test_root_small_binary_trees() -> None:
    assert compute_root([A, B]) == _seal(2, _inner(A, B))
    # the short last group is hashed alone, never padded or promoted
    assert compute_root([A, B, C]) == _seal(3, _inner(_inner(A, B), _inner(C)))
    assert compute_root([A, B, C, D, E]) == _seal(
        5, _inner(_inner(_inner(A, B), _inner(C, D)), _inner(_inner(E)))
    )


def test_root_small_ternary_tree() -> None:
    assert compute_root([A, B, C, D, E], 3) == _seal(5, _inner(_inner(A, B, C), _inner(D, E)))


def test_root_golden_hex() -> None:
    leaves = [bytes([i]) * 32 for i in range(3)]
    root = compute_root(leaves)
    assert root == _seal(3, _inner(_inner(leaves[0], leaves[1]), _inner(leaves[2])))
    assert root.hex() == "1246f245497363061b1c5bee285bf4cdcf4dda029d6e8c026f5819ad4b6d705f"
    assert compute_root([]).hex() == (  # sha256(b"\x02" + 8 zero bytes)
        "4322fd2bc0a137d1375b37b3b2e2b4715b3d3dd7ca9682438d4fea0f8437fad3"
    )


def test_levels_shape() -> None:
    levels = compute_levels(_leaves(10), 3)
    assert [len(level) for level in levels] == [10, 4, 2, 1]


# --- roots bind the leaf count --------------------------------------------------------------


def test_roots_of_different_counts_differ() -> None:
    assert compute_root([A]) != compute_root([A, A])
    assert compute_root([]) != compute_root([bytes(32)])
    assert compute_root([A, B]) != compute_root([A, B, B])


def test_root_of_inner_nodes_differs_from_root_of_leaves() -> None:
    # [A, B, C, D] and [inner(A, B), inner(C, D)] share their top node; the count sets them apart
    level1 = [_inner(A, B), _inner(C, D)]
    assert compute_levels(level1, 2)[-1] == compute_levels([A, B, C, D], 2)[-1]
    assert compute_root(level1) != compute_root([A, B, C, D])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), arity=st.integers(2, 16))
def test_root_changes_with_duplicated_last_leaf(n: int, arity: int) -> None:
    leaves = _leaves(n)
    assert compute_root(leaves, arity) != compute_root(leaves + leaves[-1:], arity)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), arity=st.integers(2, 16), data=st.data())
def test_root_changes_with_any_leaf(n: int, arity: int, data: st.DataObject) -> None:
    leaves = _leaves(n)
    i = data.draw(st.integers(0, n - 1))
    changed = leaves[:i] + [_h(b"other" + leaves[i])] + leaves[i + 1 :]
    assert compute_root(leaves, arity) != compute_root(changed, arity)
    assert compute_root(leaves, arity) != compute_root(leaves[:-1], arity)


# --- arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize("arity", [-1, 0, 1, MAX_ARITY + 1, 256])
def test_invalid_arity(arity: int) -> None:
    with pytest.raises(ValueError):
        compute_root([A, B], arity)
    with pytest.raises(ValueError):
        compute_root([], arity)
    with pytest.raises(ValueError):
        compute_proof([A, B], 0, arity)


@pytest.mark.parametrize(("n", "index"), [(0, 0), (3, 3), (3, -1), (1, 5)])
def test_invalid_proof_index(n: int, index: int) -> None:
    with pytest.raises(IndexError):
        compute_proof(_leaves(n), index)


def test_proof_shape() -> None:
    proof = compute_proof([A, B, C, D, E], 4, 2)
    assert proof == MerkleProof(
        arity=2, index=4, count=5, path=((), (), (_inner(_inner(A, B), _inner(C, D)),))
    )
    assert compute_proof([A], 0) == MerkleProof(arity=2, index=0, count=1, path=())


def test_invalid_proof_out_of_range_fields() -> None:
    leaves = [A, B, C]
    root = compute_root(leaves)
    proof = compute_proof(leaves, 1)
    assert is_valid_proof(B, proof, root)
    for changes in (
        {"arity": 1},
        {"arity": 0},
        {"arity": MAX_ARITY + 1},
        {"index": 3},
        {"index": 2**64 - 1},
        {"count": 0},
        {"count": 1},
        {"count": 4},
        {"count": 2**64 - 1},
        {"path": proof.path[:-1]},
        {"path": (*proof.path, ())},
        {"path": ()},
    ):
        assert not is_valid_proof(B, dataclasses.replace(proof, **changes), root), changes


# --- proofs (property) ----------------------------------------------------------------------

trees = st.tuples(st.integers(0, 300), st.integers(2, 16), st.binary(max_size=4))


def _flip(value: bytes, bit: int) -> bytes:
    i, b = divmod(bit % (8 * len(value)), 8)
    return value[:i] + bytes([value[i] ^ (1 << b)]) + value[i + 1 :]


@settings(max_examples=60, deadline=None)
@given(tree=trees)
def test_every_leaf_proof_verifies(tree: tuple[int, int, bytes]) -> None:
    n, arity, salt = tree
    leaves = _leaves(n, salt)
    root = compute_root(leaves, arity)
    for i, leaf in enumerate(leaves):
        proof = compute_proof(leaves, i, arity)
        assert proof.count == n and proof.index == i and proof.arity == arity
        assert is_valid_proof(leaf, proof, root)


@settings(max_examples=80, deadline=None)
@given(tree=trees, data=st.data())
def test_invalid_proof_never_verifies_anything_else(
    tree: tuple[int, int, bytes], data: st.DataObject
) -> None:
    n, arity, salt = tree
    if n == 0:
        return
    leaves = _leaves(n, salt)
    root = compute_root(leaves, arity)
    i = data.draw(st.integers(0, n - 1), label="index")
    leaf = leaves[i]
    proof = compute_proof(leaves, i, arity)
    assert is_valid_proof(leaf, proof, root)

    # another leaf, another index, another root
    for j in {0, n - 1, (i + 1) % n, data.draw(st.integers(0, n - 1))} - {i}:
        assert not is_valid_proof(leaves[j], proof, root)
        assert not is_valid_proof(leaf, dataclasses.replace(proof, index=j), root)
    assert not is_valid_proof(_h(b"not a leaf"), proof, root)
    assert not is_valid_proof(_flip(leaf, data.draw(st.integers(0, 255))), proof, root)
    assert not is_valid_proof(leaf, proof, compute_root(leaves + [leaf], arity))
    assert not is_valid_proof(leaf, proof, _flip(root, data.draw(st.integers(0, 255))))
    # The arity is a parameter of the context, not bound in the root: a tree that fits in one
    # group has the same root under any larger arity. Once both arities split the leaves, a
    # proof made for one never verifies under the other.
    other_arity = arity + 1 if arity < 16 else 2
    if n > max(arity, other_arity):
        assert not is_valid_proof(leaf, dataclasses.replace(proof, arity=other_arity), root)

    # changed count
    for count in {n - 1, n + 1, 2 * n}:
        assert not is_valid_proof(leaf, dataclasses.replace(proof, count=count), root)

    # every sibling of every level, one bit flipped
    for level, siblings in enumerate(proof.path):
        for k in range(len(siblings)):
            bit = data.draw(st.integers(0, 255))
            mutated = siblings[:k] + (_flip(siblings[k], bit),) + siblings[k + 1 :]
            path = proof.path[:level] + (mutated,) + proof.path[level + 1 :]
            assert not is_valid_proof(leaf, dataclasses.replace(proof, path=path), root)
        # a sibling dropped, added or swapped
        if siblings:
            path = proof.path[:level] + (siblings[1:],) + proof.path[level + 1 :]
            assert not is_valid_proof(leaf, dataclasses.replace(proof, path=path), root)
        path = proof.path[:level] + (siblings + (leaf,),) + proof.path[level + 1 :]
        assert not is_valid_proof(leaf, dataclasses.replace(proof, path=path), root)
        if len(siblings) >= 2:
            swapped = (siblings[1], siblings[0], *siblings[2:])
            path = proof.path[:level] + (swapped,) + proof.path[level + 1 :]
            assert not is_valid_proof(leaf, dataclasses.replace(proof, path=path), root)
    # levels dropped or added
    if proof.path:
        assert not is_valid_proof(leaf, dataclasses.replace(proof, path=proof.path[1:]), root)
        assert not is_valid_proof(leaf, dataclasses.replace(proof, path=proof.path[:-1]), root)
    assert not is_valid_proof(leaf, dataclasses.replace(proof, path=(*proof.path, ())), root)


@pytest.mark.parametrize("arity", range(2, 17))
def test_sweep_counts_first_middle_last_leaf_verify(arity: int) -> None:
    for n in range(1, 301):
        leaves = _leaves(n)
        root = compute_root(leaves, arity)
        for i in {0, n // 2, n - 1}:
            proof = compute_proof(leaves, i, arity)
            assert is_valid_proof(leaves[i], proof, root), (n, i)
            assert not is_valid_proof(leaves[i], proof, compute_root(leaves[:-1], arity))


def test_arity_not_bound_when_one_group_holds_every_leaf() -> None:
    proof = compute_proof([A, B], 0, 2)
    assert compute_root([A, B], 2) == compute_root([A, B], 3)
    assert is_valid_proof(A, dataclasses.replace(proof, arity=3), compute_root([A, B], 2))


def test_duplicate_leaves_each_verify_at_their_own_index() -> None:
    leaves = [A, B, A, A]
    root = compute_root(leaves)
    for i in range(4):
        assert is_valid_proof(leaves[i], compute_proof(leaves, i), root)
    assert not is_valid_proof(A, compute_proof(leaves, 1), root)


# --- proofs through the codec ---------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(tree=trees, data=st.data())
def test_proof_codec_round_trip(tree: tuple[int, int, bytes], data: st.DataObject) -> None:
    n, arity, salt = tree
    if n == 0:
        return
    leaves = _leaves(n, salt)
    i = data.draw(st.integers(0, n - 1))
    proof = compute_proof(leaves, i, arity)
    raw = codec.encode(proof)
    back = codec.decode(MerkleProof, raw)
    assert back == proof
    assert codec.encode(back) == raw
    assert is_valid_proof(leaves[i], back, compute_root(leaves, arity))


def test_proof_golden_bytes() -> None:
    proof = compute_proof([A, B, C], 2, 2)
    expected = (
        "94" "02" "02" "03"  # fixarray(4), arity 2, index 2, count 3
        "92"  # path: 2 levels
        "90"  # level 0: C's group is [C], no siblings
        "91" "c420" + _inner(A, B).hex()  # level 1: one sibling
    )
    assert codec.encode(proof).hex() == expected


@settings(max_examples=200, deadline=None)
@given(
    arity=st.integers(0, 255),
    index=st.integers(0, 2**64 - 1) | st.integers(0, 40),
    count=st.integers(0, 2**64 - 1) | st.integers(0, 40),
    path=st.lists(
        st.lists(st.binary(min_size=32, max_size=32), max_size=4).map(tuple), max_size=8
    ).map(tuple),
)
def test_arbitrary_decoded_proofs_never_raise(
    arity: int, index: int, count: int, path: tuple[tuple[bytes, ...], ...]
) -> None:
    proof = codec.decode(MerkleProof, codec.encode(MerkleProof(arity, index, count, path)))
    assert is_valid_proof(A, proof, compute_root([A, B, C])) in (True, False)


def test_invalid_proof_bytes() -> None:
    raw = codec.encode(compute_proof([A, B, C], 0))
    with pytest.raises(DecodingError):
        codec.decode(MerkleProof, raw[:-1])
    with pytest.raises(DecodingError):
        codec.decode(MerkleProof, raw + b"\x00")


@settings(deadline=None, max_examples=200)
@given(n=st.integers(1, 300), arity=st.integers(2, 16), data=st.data())
def test_update_levels_equals_recomputing(n: int, arity: int, data) -> None:
    leaves = _leaves(n)
    levels = compute_levels(leaves, arity)
    before = [list(level) for level in levels]
    changed = data.draw(st.dictionaries(st.integers(0, n - 1), st.binary(min_size=32, max_size=32), max_size=8))
    updated = update_levels(levels, changed, arity)
    new_leaves = [changed.get(i, leaf) for i, leaf in enumerate(leaves)]
    assert updated == compute_levels(new_leaves, arity)
    assert seal_levels(updated) == compute_root(new_leaves, arity)
    assert levels == before  # the old tree is left as it was


def test_update_levels_refuses_what_is_not_a_leaf() -> None:
    levels = compute_levels(_leaves(5), 2)
    with pytest.raises(ValueError, match="outside"):
        update_levels(levels, {5: bytes(32)}, 2)
    with pytest.raises(ValueError, match="no tree"):
        update_levels([], {}, 2)
    assert seal_levels([]) == compute_root([], 2)
