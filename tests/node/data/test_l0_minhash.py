"""node.data.l0.minhash: signatures, and the near-duplicate index independent of insertion order."""

from __future__ import annotations

import random

import pytest

from chain.params import AuditParams
from chain.payloads import MAX_NEAR_DUPLICATES, NearDuplicate
from node.data.l0.minhash import (
    NearDuplicateIndex,
    compute_lsh_bands,
    compute_minhash,
    compute_shingles,
    estimate_similarity_ppm,
)


def audit_params(**changes: int) -> AuditParams:
    values = dict(max_record_bytes=1 << 20, minhash_perm=128, shingle_words=5, lsh_threshold_ppm=500_000,
                  toxicity_sample=2_000, toxicity_threshold_ppm=500_000)
    return AuditParams(**{**values, **changes})


PARAMS = audit_params()


def make_records(seed: int, count: int = 200, words: int = 12) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(3000)}" for _ in range(words)) for _ in range(count)]


def test_shingles_are_word_windows_lowercased() -> None:
    assert compute_shingles(["A b C d", "one"], 3) == {b"a b c", b"b c d", b"one"}
    assert compute_shingles(["  ", ""], 3) == set()
    assert compute_shingles(["ÉCOLE Über"], 5) == {"École Über".encode()}  # only ASCII is lower-cased


def test_signature_is_datasketch_minhash() -> None:
    from datasketch import MinHash

    records = make_records(1)
    sketch = MinHash(num_perm=128, seed=1, scheme="affine32")
    sketch.update_batch(sorted(compute_shingles(records, 5)))
    signature = compute_minhash(records, PARAMS)
    assert signature == tuple(int(v) for v in sketch.hashvalues)
    assert len(signature) == 128 and all(type(v) is int and 0 <= v < 1 << 32 for v in signature)
    assert compute_minhash([], PARAMS) == () and compute_minhash(["   "], PARAMS) == ()


def test_signature_ignores_record_order() -> None:
    records = make_records(2)
    assert compute_minhash(records, PARAMS) == compute_minhash(list(reversed(records)), PARAMS)


def test_near_duplicate_found_at_high_similarity() -> None:
    original = make_records(3)
    edited = list(original)
    for i in (5, 50, 120):
        edited[i] = "a few changed words on this line"
    index = NearDuplicateIndex(PARAMS)
    index.add("original", compute_minhash(original, PARAMS))
    index.add("unrelated", compute_minhash(make_records(4), PARAMS))
    (found,) = index.query(compute_minhash(edited, PARAMS))
    assert found.cid == "original" and found.similarity_ppm >= 900_000
    assert index.query(compute_minhash(make_records(5), PARAMS)) == ()


def test_query_independent_of_insertion_order() -> None:
    base = compute_minhash(make_records(6), PARAMS)
    rng = random.Random(0)
    held = []
    for i in range(30):
        sig = list(base)
        for j in rng.sample(range(128), rng.randrange(0, 50)):
            sig[j] ^= 1
        held.append((f"cid-{i:02d}", tuple(sig)))
    held += [(f"other-{i}", compute_minhash(make_records(100 + i), PARAMS)) for i in range(10)]
    answers = set()
    for seed in range(4):
        order = list(held)
        random.Random(seed).shuffle(order)
        index = NearDuplicateIndex(PARAMS)
        for cid, sig in order:
            index.add(cid, sig)
        answers.add(index.query(base))
    (answer,) = answers
    assert len(answer) == MAX_NEAR_DUPLICATES
    assert answer == tuple(sorted(answer, key=lambda n: (-n.similarity_ppm, n.cid)))
    assert all(n.similarity_ppm >= PARAMS.lsh_threshold_ppm for n in answer)


def test_similarity_is_integer_ppm() -> None:
    a = tuple(range(128))
    b = a[:96] + tuple(range(1000, 1032))
    assert estimate_similarity_ppm(a, b) == 750_000
    assert estimate_similarity_ppm(a, a[:64]) == 0
    index = NearDuplicateIndex(PARAMS)
    for cid in ("b", "a"):
        index.add(cid, b)
    assert index.query(b) == (NearDuplicate("a", 1_000_000), NearDuplicate("b", 1_000_000))


def test_invalid_signatures_refused() -> None:
    index = NearDuplicateIndex(PARAMS)
    sig = compute_minhash(make_records(7), PARAMS)
    index.add("x", sig)
    index.add("x", sig)                     # the same again: nothing changes
    assert len(index) == 1 and "x" in index
    with pytest.raises(ValueError):
        index.add("x", tuple(reversed(sig)))
    with pytest.raises(ValueError):
        index.add("y", sig[:10])
    with pytest.raises(ValueError):
        index.add("z", (1 << 32,) * 128)
    assert index.query(sig[:10]) == ()


def test_lsh_bands_pinned() -> None:
    assert compute_lsh_bands(500_000, 128) == (25, 5)   # a change moves which near-duplicates LSH finds
