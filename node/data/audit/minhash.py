"""MinHash signatures of datasets and the near-duplicate index the L0 audit queries.

A signature is datasketch's MinHash (seed 1, the `affine32` permutation scheme, its SHA-1
32-bit hash of each shingle) over the word shingles of the lower-cased records
(`shingle_words` consecutive words; a shorter record is one shingle): the same values on every
machine. The index is an LSH over them (datasketch's `MinHashLSH` at `lsh_threshold_ppm`);
a query estimates the Jaccard similarity of each candidate exactly from the two signatures
(the share of equal values, in integer millionths), so the answer does not depend on the order
datasets were added in.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from chain.params import AuditParams
from chain.payloads import MAX_NEAR_DUPLICATES, NearDuplicate

SEED = 1
SCHEME = "affine32"


def shingles(records: Sequence[str], size: int) -> set[str]:
    """The distinct shingles of the records (`size` words joined by one space)."""
    out: set[str] = set()
    for record in set(records):  # a repeated record adds nothing
        words = record.lower().split()
        if not words:
            continue
        if len(words) <= size:
            out.add(" ".join(words))
        elif size == 0:
            out.add("")  # what the slices words[i:i] give
        else:
            out.update(map(" ".join, zip(*(words[i:] for i in range(size)), strict=False)))
    return out


def compute_minhash(records: Sequence[str], params: AuditParams) -> tuple[int, ...]:
    """The signature of these records (empty when they hold no word)."""
    grams = shingles(records, params.shingle_words)
    if not grams:
        return ()
    return tuple(int(v) for v in compute_minhash_of(grams, params.minhash_perm))


def compute_minhash_of(grams: Iterable[str], num_perm: int) -> np.ndarray:
    """datasketch's `MinHash(num_perm, seed=SEED, scheme=SCHEME).update_batch` over the UTF-8 of
    `grams`, value for value: its SHA-1 32-bit hash (the first four digest bytes, little-endian),
    MurmurHash3's 32-bit finaliser, then min over `a * h + b mod 2**32` for each permutation. Done
    here in blocks, so that memory stays at BLOCK x num_perm values rather than all shingles x
    num_perm, and without a Python int per shingle (the test pins it to datasketch's own)."""
    a, b = _permutations(num_perm)
    sha1 = hashlib.sha1
    digests = b"".join([sha1(g.encode()).digest()[:4] for g in grams])
    hv = np.frombuffer(digests, dtype="<u4").astype(np.uint32)
    hv ^= hv >> np.uint32(16)
    hv *= np.uint32(0x85EBCA6B)
    hv ^= hv >> np.uint32(13)
    hv *= np.uint32(0xC2B2AE35)
    hv ^= hv >> np.uint32(16)
    out = np.full(num_perm, np.uint32(0xFFFFFFFF), dtype=np.uint32)
    for start in range(0, len(hv), BLOCK):
        block = hv[start:start + BLOCK, None] * a
        block += b
        np.minimum(out, block.min(axis=0), out=out)
    return out


BLOCK = 4096
"""Shingles per block of `compute_minhash_of`."""


@functools.lru_cache(maxsize=8)
def _permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=SEED, scheme=SCHEME).permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def estimate_similarity_ppm(a: Sequence[int], b: Sequence[int]) -> int:
    if not a or len(a) != len(b):
        return 0
    return sum(x == y for x, y in zip(a, b, strict=True)) * 1_000_000 // len(a)


class NearDuplicateIndex:
    """(CID, signature) of held datasets; `query` finds those near a signature."""

    def __init__(self, params: AuditParams) -> None:
        from datasketch import MinHashLSH

        self.params = params
        self._lsh = MinHashLSH(threshold=params.lsh_threshold_ppm / 1e6, num_perm=params.minhash_perm)
        self._signatures: dict[str, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self._signatures)

    def add(self, cid: str, signature: Sequence[int]) -> None:
        """Hold `cid` (once; a signature of another length than the network's, or with a value
        that is not a 32-bit unsigned integer, is ignored)."""
        if cid in self._signatures or not _is_signature(signature, self.params.minhash_perm):
            return
        from datasketch import MinHash

        sig = tuple(int(v) for v in signature)
        self._signatures[cid] = sig
        self._lsh.insert(cid, MinHash(num_perm=len(sig), seed=SEED, hashvalues=sig, scheme=SCHEME))

    def query(self, signature: Sequence[int]) -> tuple[NearDuplicate, ...]:
        """Held datasets at or above the LSH threshold, most similar first, at most MAX_NEAR_DUPLICATES."""
        if not self._signatures or not _is_signature(signature, self.params.minhash_perm):
            return ()
        from datasketch import MinHash

        sig = tuple(int(v) for v in signature)
        probe = MinHash(num_perm=len(sig), seed=SEED, hashvalues=sig, scheme=SCHEME)
        found = []
        for cid in self._lsh.query(probe):
            sim = estimate_similarity_ppm(sig, self._signatures[cid])
            if sim >= self.params.lsh_threshold_ppm:
                found.append(NearDuplicate(cid, sim))
        found.sort(key=lambda n: (-n.similarity_ppm, n.cid))
        return tuple(found[:MAX_NEAR_DUPLICATES])


def _is_signature(signature: Sequence[int], perm: int) -> bool:
    return len(signature) == perm and all(type(v) is int and 0 <= v < 1 << 32 for v in signature)
