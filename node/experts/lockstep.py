"""Lockstep decoding: concurrent generations on one node take their steps in one forward.

A generation of the dynamic plan runs its prompt, then (with the KV cache) one row per token,
through attention, the router and its experts (`node.experts.inference`). Sixteen generations at
once, each with its own forwards, pay sixteen times the thread hops, torch dispatch and request
handling for rows that could travel together; merging their requests (`RequestBatcher`) saves
round trips but not that. `LockstepDecoder` gathers the steps of generations that share a model
version (prompts and single tokens alike, each after its own cache) and runs them as one
`Executor.forward_seqs`: each projection once over all their rows, attention per sequence over its
own keys, and per layer one request per serving node for all the rows (vLLM's continuous batching
does this per step, prompts included; hivemind's client per expert).

When a step goes, leaderless like `node.experts.batching`: a generation of the dynamic plan is a
member while it runs its steps (`joined`); a step goes as soon as every member has joined it
(nothing else is coming), when the next entry would take it past `max_rows` rows, `max_wait_s`
after it opened while every member missing has had a step start since it last joined one (it is
in a step that runs, or picking its token: it comes back; a newcomer so falls into step with the
others, once, instead of running beside them for good), else `max_delay_s` after it opened. A
lone generation never waits, and a step of one runs `Executor.forward` itself: its tokens are the
single-process ones bit for bit. In a larger step a row may round differently in the last bit
(`gpu.model`), as rows do in a server's pooled forward.

The first member to find its step due runs it for all, shielded from its own cancellation (the
others' caches are being appended; every await inside is bounded by the request deadlines and
attempts of `InferenceConfig`). A member cancelled while waiting leaves the step; one cancelled
after it started stops waiting (its cache moves on, for a generation that is over). Waiting members
are parked in the request batcher (`RequestBatcher.parked`), so that the step's requests go at once
instead of waiting for generations that wait on them. An error of the shared forward is each
member's, as it would have been alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import trio
from torch import Tensor

from gpu.model import KVCache
from node.experts.batching import RequestBatcher
from node.experts.inference import Executor, Generation
from node.experts.weights import ExpertKey

StepResult = tuple[Tensor, list[dict[int, str]], Tensor | None]
"""Of one sequence's step: logits [1, T, V], per layer who computed its experts, and the token
[1, 1] that its `pick` chose (None without one)."""
Pick = Callable[[Tensor], Tensor]
"""The next token [1, 1] from last-position logits [1, V] (a member's temperature and generator)."""


@dataclass(slots=True, eq=False)
class _Entry:
    member: object
    executor: Executor
    heads: dict[ExpertKey, bytes]
    idx: Tensor  # [1, T]
    cache: KVCache | None
    gen: Generation
    pick: Pick | None
    result: StepResult | None = None
    error: Exception | None = None


@dataclass(slots=True, eq=False)
class _Step:
    key: Hashable
    opened: float
    entries: list[_Entry] = field(default_factory=list)
    rows: int = 0
    full: bool = False
    """No room for the next entry: it goes now."""
    started: bool = False
    done: trio.Event = field(default_factory=trio.Event)


class LockstepDecoder:
    """Decode steps of concurrent generations run as one forward (see the module doc)."""

    def __init__(self, batcher: RequestBatcher | None = None, max_delay_s: float = 0.02, max_wait_s: float = 1.0,
                 max_rows: int = 2048) -> None:
        if not (0 <= max_delay_s <= max_wait_s < math.inf and max_rows >= 1):
            raise ValueError(f"invalid lockstep limits: max_delay_s {max_delay_s}, max_wait_s {max_wait_s}, "
                             f"max_rows {max_rows}")
        self.batcher, self.max_delay_s, self.max_wait_s, self.max_rows = batcher, max_delay_s, max_wait_s, max_rows
        self._members: dict[Hashable, set[int]] = {}
        """Key -> ids of the generations running at that version."""
        self._stepped: set[int] = set()
        """Members whose step started and who have not joined another since: they come back
        (with their token) unless they leave."""
        self._open: dict[Hashable, _Step] = {}
        self._changed = trio.Event()
        self.steps_run = 0
        """Forwards run (of one sequence or several)."""
        self.rows_run = 0
        """Sequences' steps run in them (a prompt or a token each)."""

    # --- membership ------------------------------------------------------------------------

    @contextmanager
    def joined(self, key: Hashable, member: object) -> Iterator[None]:
        """While inside, `member` runs at `key` (a model version): steps there wait for it."""
        self._members.setdefault(key, set()).add(id(member))
        self._poke()
        try:
            yield
        finally:
            self._stepped.discard(id(member))
            members = self._members[key]
            members.discard(id(member))
            if not members:
                del self._members[key]
            self._poke()

    # --- a step ----------------------------------------------------------------------------

    async def step(self, key: Hashable, member: object, executor: Executor, heads: dict[ExpertKey, bytes],
                   idx: Tensor, cache: KVCache | None, gen: Generation, pick: Pick | None = None) -> StepResult:
        """`executor.forward(idx, heads, gen, cache)` (`idx` [1, T]) and `pick` of its last
        logits, run together with the other members' steps at `key` (the picks too: one trip to
        the compute thread for all)."""
        entry = _Entry(member, executor, heads, idx, cache, gen, pick)
        step = self._join(key, entry)
        with self._parked(executor):
            await self._wait_or_leave(step, entry)
            if step.started:
                await step.done.wait()
        if not step.started:  # due, and nobody took it: this member runs it
            await self._run(step, entry)
        if entry.error is not None:
            raise entry.error
        assert entry.result is not None  # set by the run, or an error was
        return entry.result

    def _join(self, key: Hashable, entry: _Entry) -> _Step:
        rows = entry.idx.shape[1]
        self._stepped.discard(id(entry.member))
        step = self._open.get(key)
        if step is not None and step.rows + rows > self.max_rows:
            step.full = True  # it goes now; this entry opens the next
            step = None
        if step is None:
            step = self._open[key] = _Step(key, trio.current_time())
        step.entries.append(entry)
        step.rows += rows
        self._poke()
        return step

    def _due_at(self, step: _Step) -> float:
        missing = self._members.get(step.key, set()) - {id(e.member) for e in step.entries}
        if not missing:
            return -math.inf  # every member is here: nothing else is coming
        if missing <= self._stepped:
            return step.opened + self.max_wait_s  # they come when their step ends, with their token
        return step.opened + self.max_delay_s

    async def _wait_or_leave(self, step: _Step, entry: _Entry) -> None:
        """Until `step` is due or started (bounded by `opened + max_delay_s`); cancelled first,
        `entry` leaves it."""
        try:
            while not step.started and not step.full:
                due = self._due_at(step)
                if trio.current_time() >= due:
                    return
                changed = self._changed
                with trio.move_on_at(due):
                    await changed.wait()
        except BaseException:
            if not step.started:
                step.entries.remove(entry)
                step.rows -= entry.idx.shape[1]
                if not step.entries and self._open.get(step.key) is step:
                    del self._open[step.key]
                self._poke()
            raise

    async def _run(self, step: _Step, leader: _Entry) -> None:
        step.started = True
        if self._open.get(step.key) is step:
            del self._open[step.key]
        entries = list(step.entries)
        self.steps_run += 1
        self.rows_run += len(entries)
        self._stepped.update(id(e.member) for e in entries)
        try:
            compute = leader.executor.compute
            if len(entries) == 1:
                logits, trace = await leader.executor.forward(leader.idx, leader.heads, leader.gen, leader.cache)
                token = None if leader.pick is None else await compute.run(leader.pick, logits[:, -1, :])  # [1, 1]
                leader.result = (logits, trace, token)
            else:
                with trio.CancelScope(shield=True):
                    seqs, traces = await leader.executor.forward_seqs(
                        [e.idx for e in entries], [e.cache for e in entries], leader.heads, [e.gen for e in entries])
                    tokens = await compute.run(_pick_all, [e.pick for e in entries], seqs)
                for e, logits, trace, token in zip(entries, seqs, traces, tokens, strict=True):
                    e.result = (logits, trace, token)  # [1, T, V], [1, 1]
        except Exception as err:  # noqa: BLE001 - the shared forward's error is every member's
            for e in entries:
                e.error = err
        finally:
            step.done.set()

    def _parked(self, executor: Executor) -> AbstractContextManager[None]:
        return nullcontext() if self.batcher is None else self.batcher.parked(executor)

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def _pick_all(picks: list[Pick | None], logits: list[Tensor]) -> list[Tensor | None]:
    """Each member's token from its step's last logits (None for a member without a pick)."""
    with torch.no_grad():
        return [None if pick is None else pick(mine[:, -1, :]) for pick, mine in zip(picks, logits, strict=True)]
