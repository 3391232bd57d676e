"""Batching of expert forwards, on both sides of the expert-forward protocol.

Client (`RequestBatcher`): concurrent generations on one node whose requests for the same layer
go to the same peer join one `ForwardRequest` (rows for the same expert concatenated into one
item), and each gets its own rows of the answer back. A request waits for company at most
`max_delay_s`, and not at all once every generation taking part (`joined`) is waiting on the
batcher: then nothing else is coming. A lone generation therefore never waits.

Server (`ForwardPool`): concurrent requests for the same layer, from one client or many, are
computed as one request (one forward per expert over the concatenated rows), then split back.
A request waits at most `max_delay_s` from the batch's first, and the batch goes as soon as
`quiet_s` pass with no newcomer or it holds `max_rows` rows; past `max_queued_rows` waiting,
requests are refused (`Overloaded`). A request whose handler is cancelled before its batch
starts (its deadline passed) leaves the batch and is not computed.

Both are leaderless: the first waiter of a batch that finds it due sends (or computes) it for
all, so no background task is needed; a leader cancelled midway fails its batch's other members
(`BatchAbandoned`), who re-plan as after any failed request. Merging is byte-level (rows are
float32 row-major), so a member's rows are exactly its own; the forward over more rows is a
different matmul, which on CPU (MKL) may round some rows differently in the last bit: see
docs/ARCHITECTURE.md, "Batching".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio
from torch import Tensor

from chain import codec
from node.experts.wire import (
    MAX_FORWARD_BYTES,
    MAX_ITEM_BYTES,
    ExpertError,
    ForwardItem,
    ForwardOutput,
    ForwardRequest,
    ForwardResponse,
    InvalidExpertMessage,
    decode_message,
    decode_rows,
    validate_response,
)
from p2p.network import Network, RequestFailed

Merged = tuple[ForwardRequest, list[dict[int, int]]]
"""A merged request, and per member request the first row of each of its experts in it."""


class Overloaded(ExpertError):
    """Too many forward requests (or rows) in progress here."""


class BatchAbandoned(ExpertError):
    """The member of a batch that was sending or computing it was cancelled first."""


@dataclass(frozen=True, slots=True)
class BatchConfig:
    max_delay_s: float = 0.002  # longest a request waits for others to join it
    quiet_s: float = 0.0005  # server: a batch goes once no request joined it for this long
    max_rows: int = 4096  # rows of one batch; a full batch goes at once
    max_queued_rows: int = 65536  # server: rows waiting or computing; beyond, Overloaded

    @classmethod
    def for_clients(cls) -> BatchConfig:
        """The client side's: a batch waits for generations computing or awaiting an answer
        elsewhere, whose requests come a round trip later (on a loaded loopback devnet, tens of
        ms; 2 ms split 16 concurrent generations into ~4 requests where 1 would do)."""
        return cls(max_delay_s=0.02)

    def __post_init__(self) -> None:
        if not (self.max_delay_s >= 0 and self.quiet_s >= 0 and self.max_rows >= 1
                and self.max_queued_rows >= 1 and math.isfinite(self.max_delay_s + self.quiet_s)):
            raise ValueError(f"invalid batch config {self}")


@dataclass(slots=True, eq=False)
class _Job:
    req: ForwardRequest
    member: object = None
    """Client: the generation that asked."""
    result: object = None
    error: Exception | None = None

    @property
    def rows(self) -> int:
        return sum(it.rows for it in self.req.items)

    @property
    def nbytes(self) -> int:
        return sum(len(it.data) for it in self.req.items)


@dataclass(slots=True, eq=False)
class _Batch:
    key: tuple
    opened: float
    last_join: float
    jobs: list[_Job] = field(default_factory=list)
    hashes: dict[int, bytes] = field(default_factory=dict)
    """Expert -> block hash asked (one version per expert in a batch)."""
    started: bool = False
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def rows(self) -> int:
        return sum(j.rows for j in self.jobs)

    def accepts(self, job: _Job, max_rows: int) -> bool:
        """Whether `job` fits: not started, same weights for shared experts, within the caps."""
        if self.started:
            return False
        if not self.jobs:
            return True
        if any(self.hashes.get(it.expert, it.block_hash) != it.block_hash for it in job.req.items):
            return False
        return (self.rows + job.rows <= max_rows
                and sum(j.nbytes for j in self.jobs) + job.nbytes <= MAX_ITEM_BYTES)

    def add(self, job: _Job, now: float) -> None:
        self.jobs.append(job)
        self.hashes.update((it.expert, it.block_hash) for it in job.req.items)
        self.last_join = now

    def remove(self, job: _Job) -> None:
        if job in self.jobs:
            self.jobs.remove(job)
            self.hashes = {it.expert: it.block_hash for j in self.jobs for it in j.req.items}


def merge_requests(reqs: list[ForwardRequest]) -> Merged:
    """One request holding every request's rows: per expert (ascending) the rows of each
    request in order. Requests share layer and d_model and agree on each expert's block hash."""
    layer, d_model = reqs[0].layer, reqs[0].d_model
    parts: dict[int, list[ForwardItem]] = {}
    offsets: list[dict[int, int]] = []
    for req in reqs:
        if (req.layer, req.d_model) != (layer, d_model):
            raise ValueError("requests of different layers or widths cannot merge")
        mine = {}
        for it in req.items:
            mine[it.expert] = sum(p.rows for p in parts.get(it.expert, ()))
            parts.setdefault(it.expert, []).append(it)
        offsets.append(mine)
    items = []
    for expert in sorted(parts):
        group = parts[expert]
        if len({p.block_hash for p in group}) != 1:
            raise ValueError(f"expert {expert} asked at different block hashes")
        items.append(ForwardItem(expert, group[0].block_hash, sum(p.rows for p in group),
                                 b"".join(p.data for p in group)))
    return ForwardRequest(layer, d_model, tuple(items)), offsets


def split_outputs(outputs: list[ForwardOutput] | tuple[ForwardOutput, ...], req: ForwardRequest,
                  offsets: dict[int, int], d_model: int) -> list[ForwardOutput]:
    """`req`'s own outputs from those of the merged request (its rows start at `offsets`)."""
    by_expert = {o.expert: o for o in outputs}
    width = d_model * 4
    mine = []
    for it in req.items:
        out, start = by_expert[it.expert], offsets[it.expert]
        data = out.data[start * width:(start + it.rows) * width]
        mine.append(ForwardOutput(it.expert, out.block_hash, it.rows, data))
    return mine


class _Gatherer:
    """Open batches by key, and waiting until one is due (the rule is the subclass's)."""

    def __init__(self, config: BatchConfig) -> None:
        self.config = config
        self._open: dict[tuple, _Batch] = {}
        self._changed = trio.Event()
        self.batches_run = 0
        """Batches sent or computed."""
        self.requests_merged = 0
        """Requests that went in a batch with others."""

    def _join(self, key: tuple, job: _Job) -> _Batch:
        now = trio.current_time()
        batch = self._open.get(key)
        if batch is None or not batch.accepts(job, self.config.max_rows):
            batch = _Batch(key, now, now)
            self._open[key] = batch
        batch.add(job, now)
        if batch.rows >= self.config.max_rows:
            self._close(batch)
        self._poke()
        return batch

    def _close(self, batch: _Batch) -> None:
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _due_at(self, batch: _Batch) -> float:
        """When `batch` goes at the latest, given what is known now."""
        raise NotImplementedError

    async def _wait_until_due(self, batch: _Batch) -> None:
        """Bounded: returns by `opened + max_delay_s` at the latest (or once it started)."""
        while not batch.started and batch.rows < self.config.max_rows:
            due = self._due_at(batch)
            if trio.current_time() >= due:
                return
            changed = self._changed
            with trio.move_on_at(due):
                await changed.wait()

    async def _wait_or_leave(self, batch: _Batch, job: _Job) -> None:
        """`_wait_until_due`; cancelled first, `job` leaves the batch (unless it started)."""
        try:
            await trio.sleep(0)  # requests made in the same moment (a member's to other peers) join first
            await self._wait_until_due(batch)
        except BaseException:
            if not batch.started:
                batch.remove(job)
                self._on_left(job)
                if not batch.jobs:
                    self._close(batch)
                self._poke()
            raise

    def _on_left(self, job: _Job) -> None:
        """`job` is no longer waiting in an unsent batch (it left, or its batch started)."""

    def _start(self, batch: _Batch) -> list[_Job]:
        batch.started = True
        self._close(batch)
        for job in batch.jobs:
            self._on_left(job)
        self.batches_run += 1
        if len(batch.jobs) > 1:
            self.requests_merged += len(batch.jobs)
        return list(batch.jobs)


class ForwardPool(_Gatherer):
    """Server side: concurrent requests of a layer computed as one (see the module doc)."""

    def __init__(self, run_compute: Callable[[Callable, ForwardRequest], object],
                 compute_outputs: Callable[[ForwardRequest], list[ForwardOutput]],
                 config: BatchConfig | None = None) -> None:
        super().__init__(config or BatchConfig())
        self.run_compute = run_compute
        """`Compute.run`: where torch work goes."""
        self.compute_outputs = compute_outputs
        self.queued_rows = 0
        """Rows waiting or computing."""

    async def forward(self, req: ForwardRequest) -> list[ForwardOutput]:
        """`compute_outputs(req)`, computed together with the requests of the same layer that
        arrive meanwhile. Raises `Overloaded` on arrival when too many rows wait already."""
        job = _Job(req)
        if self.queued_rows + job.rows > self.config.max_queued_rows and self.queued_rows:
            raise Overloaded(f"{self.queued_rows} rows of expert requests waiting here")
        self.queued_rows += job.rows
        try:
            batch = self._join((req.layer, req.d_model), job)
            await self._wait_or_leave(batch, job)  # cancelled while waiting: not computed for nothing
            if not batch.started:
                await self._compute(batch)
            else:
                await batch.done.wait()
        finally:
            self.queued_rows -= job.rows
        if job.error is not None:
            raise job.error
        return job.result

    def _due_at(self, batch: _Batch) -> float:
        return min(batch.opened + self.config.max_delay_s, batch.last_join + self.config.quiet_s)

    async def _compute(self, batch: _Batch) -> None:
        jobs = self._start(batch)
        try:
            if len(jobs) == 1:
                await self._compute_alone(jobs[0])
            else:
                merged, offsets = merge_requests([j.req for j in jobs])
                try:
                    outputs = await self.run_compute(self.compute_outputs, merged)
                    validate_response(ForwardResponse(tuple(outputs)), merged)
                except ExpertError:  # one member's rows (non-finite...): compute each alone
                    for job in jobs:
                        await self._compute_alone(job)
                else:
                    for job, offs in zip(jobs, offsets, strict=True):
                        job.result = split_outputs(outputs, job.req, offs, merged.d_model)
        finally:
            for job in jobs:
                if job.result is None and job.error is None:
                    job.error = BatchAbandoned("the request computing this batch was cancelled")
            batch.done.set()

    async def _compute_alone(self, job: _Job) -> None:
        try:
            job.result = await self.run_compute(self.compute_outputs, job.req)
        except ExpertError as err:
            job.error = err


class RequestBatcher(_Gatherer):
    """Client side: concurrent generations' requests to one peer for one layer sent as one."""

    def __init__(self, net: Network, protocol: str, config: BatchConfig | None = None,
                 penalty: float = 5.0) -> None:
        super().__init__(config or BatchConfig.for_clients())
        self.net, self.protocol, self.penalty = net, protocol, penalty
        self._joined: dict[int, object] = {}
        self._waiting: dict[int, int] = {}
        """Member -> its requests waiting in batches not sent yet."""

    @contextmanager
    def joined(self, member: object) -> Iterator[None]:
        """While inside, batches wait (up to `max_delay_s`) until `member` has a request waiting
        too: it is computing, or waiting for an answer, and will ask again soon."""
        self._joined[id(member)] = member
        try:
            yield
        finally:
            del self._joined[id(member)]
            self._poke()

    @contextmanager
    def parked(self, member: object) -> Iterator[None]:
        """While inside, `member` counts as having a request waiting: it waits on work that
        another member carries here (`node.experts.lockstep`: a decode step run for it)."""
        key = id(member)
        self._waiting[key] = self._waiting.get(key, 0) + 1
        self._poke()
        try:
            yield
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]

    async def request(self, member: object, peer: str, req: ForwardRequest, payload: bytes,
                      timeout: float) -> dict[int, Tensor]:
        """Expert -> output rows [n_e, D] for `req` (`payload` is its encoding), sent to `peer`
        alone or merged with other members' requests. Raises what a request raises
        (`RequestFailed`, `InvalidExpertMessage`: the peer is penalised once, here) or
        `BatchAbandoned`."""
        job = _Job(req, member)
        self._waiting[id(member)] = self._waiting.get(id(member), 0) + 1
        batch = self._join((peer, req.layer, req.d_model), job)
        await self._wait_or_leave(batch, job)
        if not batch.started:
            await self._send(batch, peer, payload, timeout)
        else:
            await batch.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _on_left(self, job: _Job) -> None:
        key = id(job.member)
        self._waiting[key] -= 1
        if not self._waiting[key]:
            del self._waiting[key]

    def _due_at(self, batch: _Batch) -> float:
        if all(m in self._waiting for m in self._joined):
            return -math.inf  # every generation taking part waits here: nothing else is coming
        return batch.opened + self.config.max_delay_s

    async def _send(self, batch: _Batch, peer: str, payload: bytes, timeout: float) -> None:
        jobs = self._start(batch)
        try:
            merged, offsets = merge_requests([j.req for j in jobs])
            data = await self.net.request(peer, self.protocol, payload if len(jobs) == 1 else codec.encode(merged),
                                          timeout=timeout, max_response_bytes=MAX_FORWARD_BYTES)
            try:
                resp = decode_message(ForwardResponse, data, MAX_FORWARD_BYTES)
                validate_response(resp, merged)
                outs = {o.expert: decode_rows(o.data, o.rows, merged.d_model) for o in resp.outputs}  # e -> [n, D]
            except InvalidExpertMessage as err:
                self.net.penalize(peer, f"invalid expert answer: {err}", self.penalty)
                raise
            for job, offs in zip(jobs, offsets, strict=True):
                job.result = {it.expert: outs[it.expert][offs[it.expert]:offs[it.expert] + it.rows]
                              for it in job.req.items}  # e -> [n_e, D]
        except (RequestFailed, ExpertError) as err:
            for job in jobs:
                job.error = err
        finally:
            for job in jobs:
                if job.result is None and job.error is None:
                    job.error = BatchAbandoned("the generation sending this batch was cancelled")
            batch.done.set()
