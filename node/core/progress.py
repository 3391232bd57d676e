"""Sync progress: a rate over a sliding window and the line the logs print."""

from __future__ import annotations

from collections import deque

BAR_WIDTH = 20


class RateMeter:
    """Units per second over the last `window` samples of (time, position)."""

    def __init__(self, window: int = 16) -> None:
        self._samples: deque[tuple[float, int]] = deque(maxlen=window)

    def add(self, now: float, position: int) -> None:
        self._samples.append((now, position))

    def reset(self) -> None:
        self._samples.clear()

    @property
    def rate(self) -> float | None:
        """Units per second, or None before two samples spanning some time."""
        if len(self._samples) < 2:
            return None
        (t0, p0), (t1, p1) = self._samples[0], self._samples[-1]
        if t1 <= t0:
            return None
        return (p1 - p0) / (t1 - t0)


def compute_eta(done: int, total: int, rate: float | None) -> float | None:
    """Seconds left at `rate`, None when unknown."""
    if rate is None or rate <= 0:
        return None
    return max(0, total - done) / rate


def format_progress(done: int, total: int, rate: float | None, unit: str = "blocks") -> str:
    """`[########------------]  40%  400/1000 blocks, 123.4 blocks/s, ~5 s left`."""
    total = max(total, done, 1)
    filled = min(BAR_WIDTH, BAR_WIDTH * done // total)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    line = f"[{bar}] {100 * done // total:3d}% {done}/{total} {unit}"
    if rate is not None:
        line += f", {rate:.1f} {unit}/s"
    eta = compute_eta(done, total, rate)
    if eta is not None and done < total:
        line += f", ~{eta:.0f} s left"
    return line
