"""Toxicity of a sample of records by the offline classifier `alt-profanity-check` (a linear
model over character and word n-grams, shipped in the package).

The sample is fixed by the CID (`random.Random(sha256(CID)).sample` of the indices, in file
order: CPython's Mersenne Twister and its `sample` are the same on every platform), each record
truncated to MAX_CHARS. A record counts when its probability, rounded to
four decimals, reaches the threshold: the rounding keeps the count identical across CPUs except
for a record within 0.00005 of the threshold (one that lands there may count on one machine and
not another; it has never been seen in the tests, and the classifier's probabilities cluster at
the ends).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

MAX_CHARS = 2_000
BATCH = 512
_model = None


def _predict(texts: list[str]) -> list[float]:
    global _model
    if _model is None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-learn version notes on the pickled model
            from profanity_check import predict_prob
        _model = predict_prob
    return [float(p) for p in _model(texts)]


def sample_indices(count: int, cid: str, n: int) -> list[int]:
    """`n` record indices chosen by the CID (all when there are fewer), ascending."""
    if count <= n:
        return list(range(count))
    seed = int.from_bytes(hashlib.sha256(b"blyan-l0-sample/1\x00" + cid.encode()).digest(), "big")
    return sorted(random.Random(seed).sample(range(count), n))


def count_toxic(records: Sequence[str], cid: str, sample: int, threshold_ppm: int) -> tuple[int, int]:
    """(records scored, records at or above the threshold)."""
    picked = [records[i][:MAX_CHARS] for i in sample_indices(len(records), cid, sample)]
    flagged = 0
    for start in range(0, len(picked), BATCH):
        for p in _predict(picked[start:start + BATCH]):
            if round(p, 4) * 1_000_000 >= threshold_ppm:
                flagged += 1
    return len(picked), flagged
