"""Toxicity of a seeded sample of records, by the offline classifier of `alt-profanity-check` (a
linear model over word n-grams shipped inside the package, loaded once, lazily: about 1 s).

The sample: a partial Fisher-Yates shuffle of the record indices whose draws are
sha256(b"blyan-l0-sample/1\\0" + CID + draw number) modulo the indices left, so it costs one hash a
sampled record, whatever the dataset's size, and is the same in every Python (no `random`).
Each sampled record is cut to MAX_SCORED_CHARS characters and scored in batches of BATCH.

A record counts as flagged when its probability, rounded to four decimals (half to even, of
the float `p * 10_000`), times 100 reaches `threshold_ppm`. The rounding absorbs the last-bit
differences another CPU's floating point could make in the model's dot products; what is left
is a record whose probability lies within about 1e-16 of a rounding boundary next to the
threshold, which could count on one machine and not on another. The classifier's scores
cluster near 0 and 1, far from the usual thresholds.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence

SAMPLE_DOMAIN = b"blyan-l0-sample/1\x00"
MAX_SCORED_CHARS = 2_000
BATCH = 512

_predict: Callable[[list[str]], Sequence[float]] | None = None
_lock = threading.Lock()


def _load_classifier() -> Callable[[list[str]], Sequence[float]]:
    global _predict
    with _lock:
        if _predict is None:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scikit-learn's notes on the pickled model's version
                from profanity_check import predict_prob
            _predict = predict_prob
        return _predict


def sample_indices(count: int, cid: str, size: int) -> list[int]:
    """`size` distinct indices of range(count) chosen by the CID (all when fewer), ascending."""
    if count <= size:
        return list(range(count))
    seed = SAMPLE_DOMAIN + cid.encode() + b"\x00"
    swapped: dict[int, int] = {}
    picked = []
    for i in range(size):
        draw = int.from_bytes(hashlib.sha256(seed + i.to_bytes(8, "big")).digest(), "big")
        j = i + draw % (count - i)
        picked.append(swapped.get(j, j))
        swapped[j] = swapped.get(i, i)
    return sorted(picked)


def is_flagged(probability: float, threshold_ppm: int) -> bool:
    """Whether a score, rounded to four decimals, is at or above `threshold_ppm`."""
    return round(probability * 10_000) * 100 >= threshold_ppm


def count_toxic(records: Sequence[str], cid: str, sample: int, threshold_ppm: int) -> tuple[int, int]:
    """(records scored, records flagged) of the CID's sample of `records`."""
    picked = [records[i][:MAX_SCORED_CHARS] for i in sample_indices(len(records), cid, sample)]
    if not picked:
        return 0, 0
    predict = _load_classifier()
    flagged = 0
    for start in range(0, len(picked), BATCH):
        flagged += sum(is_flagged(float(p), threshold_ppm) for p in predict(picked[start:start + BATCH]))
    return len(picked), flagged
