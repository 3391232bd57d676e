"""Running a simulation: `trio.run` under a mock clock, with trio's own scheduler seeded."""

from __future__ import annotations

import importlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import trio
import trio.testing

from p2p.sim.faults import derive_seed

logger = logging.getLogger(__name__)

T = TypeVar("T")


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
