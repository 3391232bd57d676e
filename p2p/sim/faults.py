"""Faults of the simulated wire: seeds derived by hashing, and what a directed link does to each
message (latency, jitter, loss, duplication, reordering)."""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

from chain.errors import ConfigError

_MASK64 = (1 << 64) - 1


class LinkRandom:
    """A link's own random stream: SplitMix64 from a derived seed. A link needs only
    `random()` and `uniform()`, and a run has up to N*(N-1) links: this costs one int per link
    (a `random.Random` keeps 2.5 KiB of Mersenne Twister state and takes microseconds to seed)."""

    __slots__ = ("_state",)

    def __init__(self, seed: int) -> None:
        self._state = seed & _MASK64

    def random(self) -> float:
        """A float in [0, 1) with 53 random bits."""
        self._state = z = (self._state + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return ((z ^ (z >> 31)) >> 11) * (1.0 / (1 << 53))

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.random()


def derive_seed(seed: int, *labels: str) -> int:
    """A 64-bit seed from `seed` and labels (sha256: Python's `hash` of str is salted)."""
    text = "\x1f".join([str(seed), *labels]).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big")


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Faults of a directed link. Bandwidth is not modelled."""

    latency_ms: tuple[float, float] = (10.0, 50.0)
    """One-way base latency, drawn uniformly from [lo, hi] per message."""
    jitter_ms: float = 0.0
    """Extra delay drawn uniformly from [0, jitter_ms] per message."""
    loss: float = 0.0
    """Probability that a gossip copy is lost."""
    duplicate: float = 0.0
    """Probability that a gossip copy arrives twice (the second with its own delay)."""
    reorder: float = 0.0
    """Probability that a message is held back by an extra [0, reorder_ms] (reordering)."""
    reorder_ms: float = 200.0
    """Largest extra delay of a held-back message."""

    def __post_init__(self) -> None:
        lo, hi = self.latency_ms
        if not 0 <= lo <= hi or not math.isfinite(hi):
            raise ConfigError(f"latency_ms must be 0 <= lo <= hi < inf, got {self.latency_ms}")
        for name in ("jitter_ms", "reorder_ms"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be >= 0 and finite, got {value}")
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {value}")

    @classmethod
    def fixed(cls, latency_ms: float) -> FaultConfig:
        """A perfect link with a constant latency."""
        return cls(latency_ms=(latency_ms, latency_ms))

    def sample_delay(self, rng: random.Random | LinkRandom) -> float:
        """One message's delay in seconds."""
        lo, hi = self.latency_ms
        ms = rng.uniform(lo, hi) if hi > lo else lo
        if self.jitter_ms:
            ms += rng.uniform(0.0, self.jitter_ms)
        if self.reorder and rng.random() < self.reorder:
            ms += rng.uniform(0.0, self.reorder_ms)
        return ms / 1000.0
