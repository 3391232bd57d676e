"""The commit feed: finalized blocks and gossip events, fanned out to any number of services.

    feed = Feed()
    sub = feed.subscribe("metrics", maxlen=4096)      # its own bounded queue
    feed.publish(Committed(...))                        # never blocks, never raises
    async for event in sub: ...                         # a service's task, or
    for event in sub.drain(): ...                       # read what is pending, without a task

Publishing appends to every subscriber's queue and returns: consensus never waits for a service.
A subscriber whose queue is full loses the new event and counts it in `dropped` (it lags; it is
never allowed to stall the engine). Events are frozen dataclasses; `kinds` filters what a
subscriber receives.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import trio

from chain.state import State
from chain.types import Block
from chain.votes import SignedVote

# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Committed:
    """A block was finalized (or imported by catch-up) and stored."""

    chain_id: int
    """Chain."""
    block: Block
    """The block."""
    state: State
    """The state it produced (immutable: holding it costs only what later blocks replace)."""
    changes: dict[bytes, bytes | None]
    """State entries the block wrote (None: deleted)."""
    synced: bool
    """True when it came from a peer by catch-up, False when decided by this node's consensus."""
    seconds: float
    """From checking the block to having it stored."""


@dataclass(frozen=True, slots=True)
class VoteSigned:
    """This node signed a consensus vote."""

    signed: SignedVote
    """The vote and its signature."""


@dataclass(frozen=True, slots=True)
class RoundStarted:
    """A consensus round of a height started here."""

    chain_id: int
    """Chain."""
    height: int
    """Height being decided."""
    round: int
    """Round entered."""


@dataclass(frozen=True, slots=True)
class Penalized:
    """This node penalised a peer for what it sent."""

    peer: str
    """The peer."""
    reason: str
    """Why."""


@dataclass(frozen=True, slots=True)
class TxAdmitted:
    """A transaction entered a mempool (from this node's RPC or from gossip)."""

    chain_id: int
    """Chain."""
    tx_hash: bytes
    """Transaction hash."""
    local: bool
    """Submitted here rather than received by gossip."""


@dataclass(frozen=True, slots=True)
class PeerAhead:
    """A peer showed a finalized height of a chain above ours: catch up from it."""

    chain_id: int
    """Chain."""
    peer: str
    """The peer that is ahead."""
    height: int
    """A height it has finalized."""


@dataclass(frozen=True, slots=True)
class PolVerified:
    """This validator ran the verifier on a revealed claim and signed its PoL vote."""

    claim_hash: bytes
    """The claim."""
    accepted: bool
    """The verdict."""
    reason: str
    """Why not ("" when accepted)."""
    seconds: float
    """Fetching and verifying."""


Event = Committed | VoteSigned | RoundStarted | Penalized | TxAdmitted | PeerAhead | PolVerified

# --- the feed ---------------------------------------------------------------------------------


class Subscription:
    """One subscriber's bounded queue of events."""

    def __init__(self, name: str, kinds: tuple[type, ...] | None, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError("a subscription needs room for at least one event")
        self.name = name
        """Who subscribed (metrics label)."""
        self.kinds = kinds
        """Event classes delivered; None: all."""
        self.maxlen = maxlen
        """Queue bound."""
        self.delivered = 0
        """Events queued so far."""
        self.dropped = 0
        """Events lost because the queue was full."""
        self.closed = False
        self._queue: deque[Event] = deque()
        self._lot = trio.lowlevel.ParkingLot()

    def offer(self, event: Event) -> None:
        """Queue `event` if this subscriber wants it and has room; never blocks."""
        if self.closed or (self.kinds is not None and not isinstance(event, self.kinds)):
            return
        if len(self._queue) >= self.maxlen:
            self.dropped += 1
            return
        self._queue.append(event)
        self.delivered += 1
        self._lot.unpark_all()

    def drain(self) -> list[Event]:
        """Every queued event, oldest first, removed from the queue."""
        events = list(self._queue)
        self._queue.clear()
        return events

    def __len__(self) -> int:
        return len(self._queue)

    async def receive(self) -> Event:
        """The next event, waiting for one."""
        while not self._queue:
            if self.closed:
                raise trio.EndOfChannel
            await self._lot.park()
        return self._queue.popleft()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            try:
                yield await self.receive()
            except trio.EndOfChannel:
                return

    def close(self) -> None:
        self.closed = True
        self._lot.unpark_all()


class Feed:
    """Fan-out of a node's events to its subscribers."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []

    def subscribe(self, name: str, kinds: Iterable[type] | None = None, maxlen: int = 1024) -> Subscription:
        sub = Subscription(name, None if kinds is None else tuple(kinds), maxlen)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        if sub in self._subs:
            self._subs.remove(sub)

    def publish(self, event: Event) -> None:
        for sub in self._subs:
            sub.offer(event)

    def subscriptions(self) -> list[Subscription]:
        return list(self._subs)
