"""What travels on the simulated wire: a copy in flight, a request waiting for its response, and
the state of one directed link. Internal to `p2p.sim`."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import trio

from p2p.network import PeerId
from p2p.sim.faults import LinkRandom


class Parking:
    """One task asleep until woken: a cheaper `trio.Event` for a task that waits again and
    again (no cancel scope, no Event to allocate each time); cancellable."""

    __slots__ = ("task",)

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None

    async def park(self) -> None:
        self.task = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self.task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def wake(self) -> None:
        """Wake the parked task, if one is parked (else nothing)."""
        task = self.task
        if task is not None:
            self.task = None
            trio.lowlevel.reschedule(task)


class Pending:
    """A request waiting for its response."""

    __slots__ = ("done", "response", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.response = b""
        self.error: str | None = None

    def resolve(self, response: bytes, error: str | None) -> None:
        if not self.done.is_set():
            self.response, self.error = response, error
            self.done.set()


@dataclass(slots=True)
class Delivery:
    """One item on a node's delivery heap."""

    kind: str  # "gossip" | "request" | "event"
    src: PeerId
    src_incarnation: int
    name: str = ""
    data: bytes = b""
    pending: Pending | None = None
    deadline: float = math.inf
    connected: bool = False
    data_hash: bytes | None = None
    """sha256 of `data` for the trace, computed once for all the copies of a publish."""

    def get_data_hash(self) -> bytes:
        if self.data_hash is None:
            self.data_hash = hashlib.sha256(self.data).digest()
        return self.data_hash


HeapEntry = tuple[float, PeerId, int, Delivery]
"""(due time, sender, per-link sequence, item): the order in which a node's deliveries pop."""


@dataclass(slots=True)
class Link:
    """A directed link: its own RNG (derived from the seed), its sequence and in-flight count."""

    rng: LinkRandom
    seq: int = 0
    in_flight: int = 0
