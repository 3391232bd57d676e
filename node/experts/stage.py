"""Pipeline stages: a node runs a range of layers for a requester, and the requester's side of it.

Server (`StageServer.on_stage`, protocol `expert_stage`): a stage runs layers [first, end) --
attention, router and experts -- on the hidden rows it is sent and answers the hidden rows after
them. It refuses, before any compute: a malformed request or rows (penalised; rows are decoded
and checked before any session is touched), other heads (`HeadsDiffer`), a range whose experts
it does not all serve (`NotAStage`: it would only proxy dynamic requests), more than
`MAX_STAGE_INFLIGHT` steps at once, `MAX_STAGE_INFLIGHT_PER_PEER` of one requester, or no room
for a session (`StageBusy`; a new session is reserved before the shared model loads, so
concurrent opens cannot exceed the limits), a cached step of an unknown or busy session or at
another position (`StageOutOfStep`). Its experts run locally through the same
`Executor.run_layers` as the generating node's (experts it lacks, e.g. after a head moved, go to
peers dynamically). With the cache, a session keeps the keys and values of its layers; sessions
are per requester, bounded (`MAX_SESSIONS`, `MAX_SESSIONS_PER_PEER`, `MAX_SESSION_BYTES` of
caches), expire `SESSION_TTL_S` after their last step (swept on each request) or end with a
close; a step that fails half-way drops its session (its cache holds some layers' keys and not
others').

Client (`PipelineRunner`): the generating node embeds, sends each step through the chain of
stages and runs the head (a LOCAL stage, a range it serves whole, runs here with its own cache);
of the remote stages' layers it holds no keys, only the position where their caches stand
(`RemoteCache`, which `select_step_input` reads as it reads a `KVCache`). It keeps one session
per stage, keyed by (node, first layer): a chain may use one node for two ranges. It runs at the
weights pinned for the generation (shared model, expert heads, digest). A failed stage raises
`PlanFailed`; a timeout, an unreachable stage or an invalid answer strikes it (the latter is
also penalised), a refusal (`is_refusal`: busy, heads differ, out of step, not a stage) does
not. With probability `spot_check`, a step that needs no earlier keys (stateless, or a session's
first: the prompt) is recomputed here when this node can load every expert of the range and its
digest is still the pinned one (else the recomputation would use other weights); a disagreeing
stage is penalised and the plan fails over. Later cached steps are not checked (this node holds
none of the stage's keys).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import trio
from torch import Tensor

from chain import codec
from gpu.model import KVCache
from node.experts.inference import Compute, Executor, Generation, InferenceConfig, _no_grad
from node.experts.lockstep import LockstepDecoder
from node.experts.plan import LOCAL
from node.experts.plan_select import PlanCache, Stage
from node.experts.plan_wire import (
    MAX_STAGE_BYTES,
    ExpertUse,
    HeadsDiffer,
    NotAStage,
    PlanFailed,
    StageBusy,
    StageOutOfStep,
    StageRequest,
    StageResponse,
    compute_heads_digest,
    is_refusal,
    validate_stage_request,
    validate_uses,
)
from node.experts.registry import ExpertRegistry
from node.experts.weights import ExpertKey, LocalExperts, ModelView, get_expert_heads
from node.experts.wire import InvalidExpertMessage, decode_message, decode_rows, encode_rows, is_close
from p2p.network import Network, PeerId, RemoteError, RequestFailed

logger = logging.getLogger(__name__)

MAX_SESSIONS = 64
MAX_SESSIONS_PER_PEER = 8
"""So that one requester cannot take every session."""
SESSION_TTL_S = 60.0
MAX_SESSION_BYTES = 256 << 20
"""KV caches all sessions may hold (each counted at its capacity)."""
MAX_STAGE_INFLIGHT = 4
MAX_STAGE_INFLIGHT_PER_PEER = 2
"""So that one requester cannot take every step slot."""
MALFORMED_PENALTY = 1.0
CLOSE_TIMEOUT_S = 1.0


class PlanHost(Protocol):
    """What the plan types need of the expert service."""

    net: Network
    view: ModelView
    local: LocalExperts
    registry: ExpertRegistry
    inference: InferenceConfig
    compute: Compute
    rng: random.Random
    stage_protocol: str
    delegate_protocol: str
    plan_cache: PlanCache
    lockstep: LockstepDecoder

    async def shared_model(self) -> Any: ...

    def executor(self, model: Any) -> Executor: ...

    async def generate_tokens(self, prompt: list[int], max_tokens: int, temperature: float = 0.0, seed: int = 0,
                              use_cache: bool = True, plan: str = "dynamic", allow_delegate: bool = True,
                              heads_digest: bytes | None = None) -> Generation: ...


@dataclass(slots=True)
class StageSession:
    first: int
    end: int
    heads_digest: bytes
    model: Any
    """The shared model at open: a session runs on one version (None while it loads)."""
    cache: KVCache | None
    nbytes: int
    expires_at: float
    busy: bool = False


@dataclass(slots=True)
class RemoteCache:
    """The position where the stages' caches stand; read by `select_step_input` as a `KVCache`."""

    capacity: int
    length: int = 0


def session_bytes(first: int, end: int, max_seq_len: int, d_model: int) -> int:
    """Keys and values of layers [first, end) at full capacity, float32, one sequence."""
    return 2 * (end - first) * max_seq_len * d_model * 4


class StageServer:
    def __init__(self, host: PlanHost) -> None:
        self.host = host
        self.sessions: dict[tuple[PeerId, bytes], StageSession] = {}
        self.inflight = 0
        self.inflight_by_peer: Counter[PeerId] = Counter()
        self.served_steps = 0

    def expire(self, now: float) -> None:
        for key in [k for k, s in self.sessions.items() if s.expires_at <= now and not s.busy]:
            del self.sessions[key]

    async def on_stage(self, requester: PeerId, data: bytes) -> bytes:
        host, spec = self.host, self.host.view.spec
        try:
            req = decode_message(StageRequest, data, MAX_STAGE_BYTES)
            validate_stage_request(req, spec.n_layers, spec.d_model, spec.max_seq_len)
        except InvalidExpertMessage:
            host.net.penalize(requester, "malformed expert-stage request", MALFORMED_PENALTY)
            raise
        self.expire(trio.current_time())
        key = (requester, req.session)
        if req.close:
            if key in self.sessions and not self.sessions[key].busy:
                del self.sessions[key]
            return codec.encode(StageResponse(0, b"", (), 0))
        try:
            x = decode_rows(req.data, req.rows, req.d_model).view(1, req.rows, req.d_model)  # [1, T, D]
        except InvalidExpertMessage:
            host.net.penalize(requester, "malformed expert-stage rows", MALFORMED_PENALTY)
            raise
        mine = compute_heads_digest(host.view)
        if req.heads_digest != mine:
            raise HeadsDiffer(mine, req.heads_digest)
        heads = get_expert_heads(host.view)
        self.validate_coverage(req.first, req.end, heads)
        if self.inflight >= MAX_STAGE_INFLIGHT:
            raise StageBusy(f"{self.inflight} stage steps in progress")
        if self.inflight_by_peer[requester] >= MAX_STAGE_INFLIGHT_PER_PEER:
            raise StageBusy(f"{MAX_STAGE_INFLIGHT_PER_PEER} stage steps of this requester in progress")
        self.inflight += 1
        self.inflight_by_peer[requester] += 1
        try:
            session = await self.get_session(key, req) if req.cached else None
            return await self.run_step(key, req, x, session, heads)
        finally:
            self.inflight -= 1
            self.inflight_by_peer[requester] -= 1
            if not self.inflight_by_peer[requester]:
                del self.inflight_by_peer[requester]

    def validate_coverage(self, first: int, end: int, heads: dict[ExpertKey, bytes]) -> None:
        spec = self.host.view.spec
        for layer in range(first, end):
            for e in range(spec.n_experts):
                if not self.host.local.is_served((layer, e), heads.get((layer, e), b"")):
                    raise NotAStage(f"layer{layer}.expert{e} is not served here: not a stage for "
                                    f"layers [{first}, {end})")

    async def get_session(self, key: tuple[PeerId, bytes], req: StageRequest) -> StageSession:
        """The session of a cached step: opened afresh at start 0, else the one standing at `start`."""
        spec = self.host.view.spec
        held = self.sessions.get(key)
        if held is not None and held.busy:
            raise StageOutOfStep("the session is running another step")
        if req.start == 0:
            self.sessions.pop(key, None)
            nbytes = session_bytes(req.first, req.end, spec.max_seq_len, spec.d_model)
            used = sum(s.nbytes for s in self.sessions.values())
            if len(self.sessions) >= MAX_SESSIONS or used + nbytes > MAX_SESSION_BYTES:
                raise StageBusy(f"{len(self.sessions)} sessions holding {used >> 20} MiB: no room for another")
            if sum(peer == key[0] for peer, _ in self.sessions) >= MAX_SESSIONS_PER_PEER:
                raise StageBusy(f"{MAX_SESSIONS_PER_PEER} sessions of this requester already: no room for another")
            # reserved before the model loads, so that concurrent opens cannot exceed the limits
            session = StageSession(req.first, req.end, req.heads_digest, None, None, nbytes,
                                   trio.current_time() + SESSION_TTL_S, busy=True)
            self.sessions[key] = session
            try:
                session.model = await self.host.shared_model()
            except BaseException:
                self.sessions.pop(key, None)
                raise
            session.cache = KVCache(session.model.cfg)
            session.busy = False
            return session
        if held is None:
            raise StageOutOfStep("unknown session (expired, closed, or never opened)")
        if (held.first, held.end, held.heads_digest) != (req.first, req.end, req.heads_digest):
            raise StageOutOfStep("the session was opened for other layers or heads")
        if held.cache.lengths[req.first] != req.start:
            raise StageOutOfStep(f"the session stands at position {held.cache.lengths[req.first]}, "
                                 f"not {req.start}")
        return held

    async def run_step(self, key: tuple[PeerId, bytes], req: StageRequest, x: Tensor, session: StageSession | None,
                       heads: dict[ExpertKey, bytes]) -> bytes:
        model = session.model if session is not None else await self.host.shared_model()
        gen = Generation(prompt=[])
        gen.rows_sent.append(0)
        gen.bytes_sent.append(0)
        trace: list[dict[int, str]] = []
        if session is not None:
            session.busy = True
        try:
            y = await self.host.executor(model).run_layers(
                x, range(req.first, req.end), heads, gen, None if session is None else session.cache, trace)
        except BaseException:
            if session is not None:  # some layers appended, others not: the cache is no use
                self.sessions.pop(key, None)
            raise
        finally:
            if session is not None:
                session.busy = False
                session.expires_at = trio.current_time() + SESSION_TTL_S
        self.served_steps += 1
        uses = tuple(ExpertUse(0, req.first + i, e, node) for i, used in enumerate(trace)
                     for e, node in sorted(used.items()))
        return codec.encode(StageResponse(req.rows, encode_rows(y.reshape(req.rows, req.d_model)), uses,
                                          gen.round_trips))

    def describe(self) -> dict:
        return {"sessions": len(self.sessions), "served_steps": self.served_steps,
                "session_bytes": sum(s.nbytes for s in self.sessions.values())}


class PipelineRunner:
    """The requester's side: embed here, each stage of the chain in turn, head here."""

    def __init__(self, host: PlanHost, model: Any, stages: tuple[Stage, ...], heads: dict[ExpertKey, bytes],
                 heads_digest: bytes) -> None:
        self.host, self.model, self.stages, self.heads, self.heads_digest = host, model, stages, heads, heads_digest
        self.compute = host.compute
        self.sessions = {(s.node, s.first): host.rng.randbytes(16) for s in stages if s.node != LOCAL}
        """One session per remote stage: a chain may use one node for two ranges."""
        self.opened: set[tuple[str, int]] = set()
        self.local_cache: KVCache | None = None
        """Keys and values of the LOCAL stage's layers."""

    def new_cache(self) -> RemoteCache:
        self.local_cache = KVCache(self.model.cfg)
        return RemoteCache(self.model.cfg.max_seq_len)

    async def forward(self, idx: Tensor, cache: RemoteCache | None, gen: Generation) -> tuple[Tensor, list]:
        """Logits [1, T, V] of `idx` [1, T] after `cache.length` positions; per layer who computed each expert."""
        T = idx.shape[1]
        gen.positions.append(T)
        gen.rows_sent.append(0)
        gen.bytes_sent.append(0)
        start = 0 if cache is None else cache.length
        x = await self.host.compute.run(_no_grad(self.model.embed_tokens), idx, start)  # [1, T, D]
        trace: list[dict[int, str]] = []
        for stage in self.stages:
            if stage.node == LOCAL:  # a range this node serves whole: no round trip
                x = await self.host.executor(self.model).run_layers(
                    x, range(stage.first, stage.end), self.heads, gen,
                    None if cache is None else self.local_cache, trace)  # [1, T, D]
            else:
                x = await self.run_stage(stage, x, cache, start, gen, trace)  # [1, T, D]
        if cache is not None:
            cache.length += T
        logits = await self.host.compute.run(_no_grad(self.model.head_forward), x)  # [1, T, V]
        return logits, trace

    async def next_token(self, idx: Tensor, cache: RemoteCache | None, gen: Generation,
                         pick: Callable[[Tensor], Tensor]) -> tuple[Tensor, list]:
        """`forward`, then the token [1, 1] that `pick` chooses from its last logits [1, V]."""
        logits, trace = await self.forward(idx, cache, gen)
        return await self.compute.run(pick, logits[:, -1, :]), trace

    async def run_stage(self, stage: Stage, x: Tensor, cache: RemoteCache | None, start: int, gen: Generation,
                        trace: list[dict[int, str]]) -> Tensor:
        host, cfg = self.host, self.model.cfg
        T, D = x.shape[1], x.shape[2]
        req = StageRequest(self.sessions[(stage.node, stage.first)], self.heads_digest, stage.first, stage.end,
                           cache is not None, start, D, T, encode_rows(x.reshape(T, D)), False)
        payload = codec.encode(req)
        gen.round_trips += 1
        gen.rows_sent[-1] += T
        gen.bytes_sent[-1] += len(payload)
        began = trio.current_time()
        if cache is not None:
            self.opened.add((stage.node, stage.first))
        try:
            data = await host.net.request(stage.node, host.stage_protocol, payload,
                                          timeout=host.inference.request_timeout_s, max_response_bytes=MAX_STAGE_BYTES)
        except RequestFailed as err:
            if not (isinstance(err, RemoteError) and is_refusal(err.reason)):  # a refusal is no strike
                host.registry.record_failure(stage.node, trio.current_time())
            raise PlanFailed(stage.node, f"stage [{stage.first}, {stage.end}): {err.reason}") from err
        try:
            resp = decode_message(StageResponse, data, MAX_STAGE_BYTES)
            if resp.rows != T:
                raise InvalidExpertMessage(f"{resp.rows} rows answered for {T}")
            y = decode_rows(resp.data, T, D).view(1, T, D)  # [1, T, D]
            validate_uses(resp.uses, range(stage.first, stage.end), 1, cfg.n_experts, cfg.top_k, T)
            if {u.layer for u in resp.uses} != set(range(stage.first, stage.end)):
                raise InvalidExpertMessage("a layer of the range without routed experts")
        except InvalidExpertMessage as err:
            host.net.penalize(stage.node, f"invalid stage answer: {err}", host.inference.wrong_output_penalty)
            host.registry.record_failure(stage.node, trio.current_time())
            raise PlanFailed(stage.node, f"invalid stage answer: {err}") from err
        host.registry.record_latency(stage.node, trio.current_time() - began)
        gen.remote_round_trips += resp.round_trips
        if cache is None or start == 0:
            await self.spot_check(stage, x, y, cache is not None, gen)
        for layer in range(stage.first, stage.end):
            trace.append({u.expert: u.node or stage.node for u in resp.uses if u.layer == layer})
        return y

    async def spot_check(self, stage: Stage, x: Tensor, y: Tensor, cached: bool, gen: Generation) -> None:
        """With probability `spot_check`, when this node can load every expert of the range,
        recompute a step that needs no earlier keys (stateless, or a session's first) here; a
        stage whose rows disagree beyond `tolerance` is penalised and the plan fails over."""
        host, cfg, heads = self.host, self.model.cfg, self.heads
        if host.inference.spot_check <= 0 or host.rng.random() >= host.inference.spot_check:
            return
        if compute_heads_digest(host.view) != self.heads_digest:  # this node's weights moved on: no reference
            return
        keys = [(layer, e) for layer in range(stage.first, stage.end) for e in range(cfg.n_experts)]
        if not all(host.local.can_load(k, heads.get(k, b"")) for k in keys):
            return
        gen.spot_checks += 1
        local_only = Executor(host.net, "", self.model, host.local, ExpertRegistry(),
                              replace(host.inference, local_fallback=True, spot_check=0.0), host.compute, host.rng)
        scratch = Generation(prompt=[], rows_sent=[0], bytes_sent=[0])
        mine = await local_only.run_layers(x, range(stage.first, stage.end), heads, scratch,
                                           KVCache(cfg) if cached else None, [])  # [1, T, D]
        if not is_close(y, mine, host.inference.tolerance):
            logger.warning("stage %s answered layers [%d, %d) wrongly: penalised", stage.node, stage.first, stage.end)
            host.net.penalize(stage.node, f"wrong output for layers [{stage.first}, {stage.end})",
                              host.inference.wrong_output_penalty)
            host.registry.record_failure(stage.node, trio.current_time())
            gen.faults.append(stage.node)
            raise PlanFailed(stage.node, f"wrong output for layers [{stage.first}, {stage.end}) (spot check)")

    async def close(self) -> None:
        """End the sessions opened (best effort: an unanswered close only leaves one to expire)."""
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
            for stage in self.stages:
                if (stage.node, stage.first) not in self.opened:
                    continue
                req = StageRequest(self.sessions[(stage.node, stage.first)], self.heads_digest, 0, 0, False, 0, 0, 0,
                                   b"", True)
                try:
                    await self.host.net.request(stage.node, self.host.stage_protocol, codec.encode(req),
                                                timeout=CLOSE_TIMEOUT_S, max_response_bytes=1024)
                except RequestFailed as err:
                    logger.debug("closing the session on %s: %s", stage.node, err)
