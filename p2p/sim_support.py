"""Pieces of the simulator that stand alone: seeds, link faults, counters, trace events, and
running a simulation with trio's scheduler seeded (`p2p.sim` re-exports them)."""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import trio
import trio.testing

from chain.errors import BlyanError, ConfigError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SimError(BlyanError):
    """A simulation scenario that misuses the hub (unknown or duplicate node, bad partition)."""


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

    def sample_delay(self, rng: random.Random) -> float:
        """One message's delay in seconds."""
        lo, hi = self.latency_ms
        ms = rng.uniform(lo, hi) if hi > lo else lo
        if self.jitter_ms:
            ms += rng.uniform(0.0, self.jitter_ms)
        if self.reorder and rng.random() < self.reorder:
            ms += rng.uniform(0.0, self.reorder_ms)
        return ms / 1000.0


@dataclass(slots=True)
class SimStats:
    """Counters of a hub. For gossip, at any instant:
    `sent + duplicated == delivered + dropped_* + copies in flight`."""

    sent: int = 0
    """Gossip copies addressed to live subscribers (before faults)."""
    delivered: int = 0
    """Gossip copies handed to a handler (or rejected for size)."""
    duplicated: int = 0
    """Extra copies made by duplication."""
    dropped_loss: int = 0
    dropped_partition: int = 0
    dropped_crash: int = 0
    """Copies from or to a node that crashed before they arrived."""
    dropped_banned: int = 0
    dropped_overflow: int = 0
    """Copies dropped because their link already had `max_in_flight_per_link` in flight."""
    accepted: int = 0
    ignored: int = 0
    rejected: int = 0
    requests: int = 0
    responses: int = 0
    """Requests answered successfully."""
    request_timeouts: int = 0
    request_unreachable: int = 0
    request_errors: int = 0
    """RemoteError and ResponseTooLarge."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One event of a run, kept when the hub has `trace_limit > 0`."""

    time: float
    kind: str
    """gossip, request, response, connect, disconnect, or drop-<reason>."""
    src: PeerId
    dst: PeerId
    name: str
    """Topic or protocol ("" for peer events)."""
    data: bytes


def _trio_run_module() -> Any:
    try:
        return importlib.import_module("trio._core._run")
    except ImportError:  # pragma: no cover - a trio release that moved its internals
        return None


@contextmanager
def deterministic_scheduler(seed: int) -> Iterator[None]:
    """Make trio's choice among tasks runnable at one instant a function of `seed` while the
    block runs (wrap `trio.run` with it).

    Trio shuffles each batch of runnable tasks with a module-level RNG (trio issue #32); its own
    tests and pytest-trio switch on the deterministic mode and seed that RNG, as this does. That
    is private API: should a trio release move it, a warning is logged and runs stay correct;
    the hub still orders its deliveries itself, only the interleaving of a node's own tasks at
    one instant may then vary between runs."""
    run_module = _trio_run_module()
    rng = getattr(run_module, "_r", None)
    flag_name = "_ALLOW_DETERMINISTIC_SCHEDULING"
    if not isinstance(rng, random.Random) or not hasattr(run_module, flag_name):
        logger.warning("trio's scheduler RNG not found: task interleaving is not seeded")
        yield
        return
    state, flag = rng.getstate(), run_module._ALLOW_DETERMINISTIC_SCHEDULING
    run_module._ALLOW_DETERMINISTIC_SCHEDULING = True
    rng.seed(derive_seed(seed, "trio-scheduler"))
    try:
        yield
    finally:
        rng.setstate(state)
        run_module._ALLOW_DETERMINISTIC_SCHEDULING = flag


def run_simulation(async_fn: Callable[..., Awaitable[T]], *args: Any, seed: int) -> T:
    """`trio.run(async_fn, *args)` under `MockClock(autojump_threshold=0)` with trio's
    scheduler seeded: with a hub seeded alike, the whole run is a pure function of `seed`."""
    with deterministic_scheduler(seed):
        return trio.run(async_fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))
