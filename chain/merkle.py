"""A k-ary Merkle tree over 32-byte leaf hashes, with inclusion proofs.

- an inner node is `sha256(0x01 || children...)` over a group of at most `arity` children
  (the last group of a level may be short; it is never padded);
- the root binds the leaf count: `sha256(0x02 || count_u64 || top)`, so trees of different
  sizes never share a root, and the empty tree has the root `sha256(0x02 || 0)`.

The transaction root uses arity 2; tensor tiles use arity 8 over subtile hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from chain.codec import U8, U64, Hash32, Seq, wire

MAX_ARITY = 64
MAX_DEPTH = 64


def _node(children: Sequence[bytes]) -> bytes:
    return hashlib.sha256(b"\x01" + b"".join(children)).digest()


def _seal(count: int, top: bytes) -> bytes:
    return hashlib.sha256(b"\x02" + count.to_bytes(8, "big") + top).digest()


def _check_arity(arity: int) -> None:
    if not 2 <= arity <= MAX_ARITY:
        raise ValueError(f"arity must be in [2, {MAX_ARITY}], got {arity}")


def compute_levels(leaves: Sequence[bytes], arity: int) -> list[list[bytes]]:
    """Every level of the tree, leaves first, the single top node last."""
    _check_arity(arity)
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append([_node(below[i : i + arity]) for i in range(0, len(below), arity)])
    return levels


def compute_root(leaves: Sequence[bytes], arity: int = 2) -> bytes:
    if not leaves:
        _check_arity(arity)
        return _seal(0, b"")
    return _seal(len(leaves), compute_levels(leaves, arity)[-1][0])


def update_levels(levels: list[list[bytes]], changed: dict[int, bytes], arity: int) -> list[list[bytes]]:
    """The levels of the same-sized tree with leaves `changed` (index -> new hash) replaced:
    only the paths above them are hashed again (k paths of depth d: k*d hashes, not n/(a-1)).
    `levels` is left as it was."""
    _check_arity(arity)
    if not levels or not levels[0]:
        raise ValueError("no tree to update")
    count = len(levels[0])
    if any(not 0 <= i < count for i in changed):
        raise ValueError(f"a changed leaf is outside the {count} leaves")
    out = [list(levels[0])]
    for i, leaf in changed.items():
        out[0][i] = leaf
    dirty = set(changed)
    for depth in range(1, len(levels)):
        below, level = out[-1], list(levels[depth])
        parents = {i // arity for i in dirty}
        for p in parents:
            level[p] = _node(below[p * arity : p * arity + arity])
        out.append(level)
        dirty = parents
    return out


def seal_levels(levels: list[list[bytes]]) -> bytes:
    """The root of a tree given all its levels (`compute_levels`, `update_levels`)."""
    if not levels or not levels[0]:
        return _seal(0, b"")
    return _seal(len(levels[0]), levels[-1][0])


@wire
class MerkleProof:
    """An inclusion proof of one leaf."""

    arity: U8
    """Children per inner node."""
    index: U64
    """Position of the leaf among all leaves."""
    count: U64
    """Number of leaves in the tree."""
    path: Seq(Seq(Hash32, MAX_ARITY - 1), MAX_DEPTH)
    """Per level, bottom up: the other members of the leaf's group, in order."""


def compute_proof(leaves: Sequence[bytes], index: int, arity: int = 2) -> MerkleProof:
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} of {len(leaves)}")
    levels = compute_levels(leaves, arity)
    path = []
    pos = index
    for level in levels[:-1]:
        start = pos - pos % arity
        group = level[start : start + arity]
        path.append(tuple(h for i, h in enumerate(group) if start + i != pos))
        pos //= arity
    return MerkleProof(arity=arity, index=index, count=len(leaves), path=tuple(path))


def is_valid_proof(leaf: bytes, proof: MerkleProof, root: bytes) -> bool:
    """True when `leaf` sits at `proof.index` in the tree whose root is `root`."""
    arity, pos, width = proof.arity, proof.index, proof.count
    if not 2 <= arity <= MAX_ARITY or not 0 <= pos < width:
        return False
    node = leaf
    levels = 0
    while width > 1:
        if levels >= len(proof.path):
            return False
        start = pos - pos % arity
        group_size = min(arity, width - start)
        siblings = proof.path[levels]
        if len(siblings) != group_size - 1:
            return False
        offset = pos - start
        node = _node((*siblings[:offset], node, *siblings[offset:]))
        pos //= arity
        width = (width + arity - 1) // arity
        levels += 1
    if levels != len(proof.path):
        return False
    return _seal(proof.count, node) == root
