"""MinHash signatures of datasets and the index of held datasets the near-duplicate check queries.

A signature is datasketch's MinHash (`scheme="affine32"`, seed 1, its SHA-1 32-bit hash of each
shingle; datasketch 2.0's default, named so that a release with another default cannot change
it) of the set of word shingles of the records: `shingle_words` consecutive words, a shorter
record being one shingle. Words are the record's UTF-8 bytes lower-cased in ASCII and split at
ASCII whitespace (`bytes.lower().split()`), so they do not depend on Python's Unicode tables.
The values are uint32, so the tuple fits the report's U32s exactly.

The index finds candidates through datasketch's `MinHashLSH` tuned at `lsh_threshold_ppm`, then
estimates each candidate's Jaccard similarity exactly from the two signatures (equal values out of
`minhash_perm`, integer millionths): the answer depends on the held set, not on the order it was
added in. LSH may miss a pair whose similarity is just above the threshold (its false
negatives are a function of the two signatures, so every node misses the same pairs).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from chain.params import AuditParams
from chain.payloads import MAX_MINHASH_PERM, MAX_NEAR_DUPLICATES, NearDuplicate

SEED = 1
SCHEME = "affine32"
CHUNK = 16_384
"""Shingles hashed per `update_batch` (it builds a CHUNK x minhash_perm array)."""


def compute_shingles(records: Sequence[str], size: int) -> set[bytes]:
    """The set of `size`-word shingles of the records."""
    out: set[bytes] = set()
    size = max(size, 1)
    # Each distinct record once (a set has no repeats to add), encoded and lower-cased in one go (NUL
    # cannot occur in a record: formats refuses it).
    for record in "\x00".join(set(records)).encode().lower().split(b"\x00"):
        words = record.split()
        if len(words) <= size:
            if words:
                out.add(b" ".join(words))
            continue
        out.update(map(b" ".join, zip(*(words[k:] for k in range(size)), strict=False)))
    return out


def compute_minhash(records: Sequence[str], params: AuditParams) -> tuple[int, ...]:
    """The signature of the records' shingles (empty when they hold no word)."""
    shingles = compute_shingles(records, params.shingle_words)
    if not shingles:
        return ()
    _validate_perm(params.minhash_perm)
    sketch = _empty_minhash(params.minhash_perm)
    batch = list(shingles)
    for start in range(0, len(batch), CHUNK):
        sketch.update_batch(batch[start:start + CHUNK])
    return tuple(int(v) for v in sketch.hashvalues)


def estimate_similarity_ppm(a: Sequence[int], b: Sequence[int]) -> int:
    """Share of equal positions of two signatures of one length, in millionths (0 if they differ in length)."""
    if not a or len(a) != len(b):
        return 0
    return sum(x == y for x, y in zip(a, b, strict=True)) * 1_000_000 // len(a)


def _validate_perm(perm: int) -> None:
    if not 1 <= perm <= MAX_MINHASH_PERM:
        raise ValueError(f"minhash_perm {perm} outside 1..{MAX_MINHASH_PERM}")


@functools.lru_cache(maxsize=16)
def compute_lsh_bands(threshold_ppm: int, perm: int) -> tuple[int, int]:
    """(bands, rows per band) datasketch's MinHashLSH picks for this threshold: computed once, as
    it integrates its error curves some 700 times (128 permutations at 0.5 give 25 bands of 5)."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold_ppm / 1e6, num_perm=perm)
    return lsh.b, lsh.r


class NearDuplicateIndex:
    """(CID, signature) of the held datasets; `query` finds those near a signature."""

    def __init__(self, params: AuditParams) -> None:
        from datasketch import MinHashLSH

        _validate_perm(params.minhash_perm)
        self.params = params
        self._lsh = MinHashLSH(num_perm=params.minhash_perm,
                               params=compute_lsh_bands(params.lsh_threshold_ppm, params.minhash_perm))
        self._signatures: dict[str, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self._signatures)

    def __contains__(self, cid: object) -> bool:
        return cid in self._signatures

    def add(self, cid: str, signature: Sequence[int]) -> None:
        """Hold `cid`. Adding it again with the same signature changes nothing; with another one,
        or a signature not of `minhash_perm` values below 2**32, raises ValueError."""
        sig = tuple(int(v) for v in signature)
        if not _is_signature(sig, self.params.minhash_perm):
            raise ValueError(f"signature of {cid!r} is not {self.params.minhash_perm} 32-bit values")
        held = self._signatures.get(cid)
        if held is not None:
            if held != sig:
                raise ValueError(f"{cid!r} is held with another signature")
            return
        self._signatures[cid] = sig
        self._lsh.insert(cid, _as_minhash(sig))

    def query(self, signature: Sequence[int]) -> tuple[NearDuplicate, ...]:
        """Held datasets at or above `lsh_threshold_ppm`, by (-similarity, CID), at most MAX_NEAR_DUPLICATES;
        none for a signature that is not of `minhash_perm` values below 2**32 (no held one can be near it)."""
        sig = tuple(int(v) for v in signature)
        if not self._signatures or not _is_signature(sig, self.params.minhash_perm):
            return ()
        found = []
        for cid in self._lsh.query(_as_minhash(sig)):
            similarity = estimate_similarity_ppm(sig, self._signatures[cid])
            if similarity >= self.params.lsh_threshold_ppm:
                found.append(NearDuplicate(cid, similarity))
        found.sort(key=lambda n: (-n.similarity_ppm, n.cid))
        return tuple(found[:MAX_NEAR_DUPLICATES])


def _is_signature(sig: tuple[int, ...], perm: int) -> bool:
    return len(sig) == perm and all(0 <= v < 1 << 32 for v in sig)


@functools.lru_cache(maxsize=16)
def _permutations(perm: int) -> object:
    from datasketch import MinHash

    return MinHash(num_perm=perm, seed=SEED, scheme=SCHEME).permutations


def _empty_minhash(perm: int) -> Any:
    from datasketch import MinHash

    # The permutations are drawn once per size (drawing them costs more than a small update).
    return MinHash(num_perm=perm, seed=SEED, scheme=SCHEME, permutations=_permutations(perm))


def _as_minhash(sig: tuple[int, ...]) -> Any:
    import numpy as np
    from datasketch import MinHash

    return MinHash(seed=SEED, hashvalues=np.array(sig, dtype=np.uint32), scheme=SCHEME,
                   permutations=_permutations(len(sig)))
