"""Distributed inference: the shared modules run here, experts wherever they are served.

Per generated token the executor runs the model exactly as `MoEModel.generate` does, piece by
piece: embed, then per layer attention and router here; the router's choices become a plan
(`node.experts.plan`: one request per node per layer); remote tasks run concurrently, each with
a deadline; a task that fails (timeout, unreachable, refused, malformed or inconsistent answer)
is re-planned onto the next replica, or onto local compute when this node can load the weights,
a bounded number of times. Every answer names the block hashes used; a wrong one is rejected
and its sender penalised. With probability `spot_check` an answer is recomputed here (when this
node can load the weights) and a peer whose output disagrees beyond `tolerance` is penalised;
the local result is used.

With the KV cache (the default) keys and values stay on this node, in a `KVCache`, and the rule
of `gpu.model.select_step_input` decides what a step runs: the prompt once, then one row per
token, so a later token sends each of its top_k experts per layer one row instead of the whole
context; past `max_seq_len` positions slide and every step runs the window again.

Torch work goes through a `Compute` (a worker thread with a limiter in the daemon; inline in the
simulator, where a thread would let the mock clock jump past every deadline).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
import trio
from torch import Tensor

from chain import codec
from gpu.model import KVCache, MoEModel, Routing, combine_expert_outputs, select_step_input
from node.experts.batching import BatchAbandoned, RequestBatcher
from node.experts.plan import LOCAL, NodeTask, build_layer_plan, compute_routes
from node.experts.registry import ExpertRegistry
from node.experts.weights import ExpertKey, LocalExperts
from node.experts.wire import (
    ExpertError,
    ForwardItem,
    ForwardRequest,
    encode_rows,
    is_close,
)
from p2p.network import Network, RequestFailed

logger = logging.getLogger(__name__)


class InferenceFailed(ExpertError):
    """A layer whose experts could not be computed within the allowed attempts."""

    def __init__(self, layer: int, reason: str) -> None:
        self.layer, self.reason = layer, reason
        super().__init__(f"layer {layer}: {reason}")


@dataclass(frozen=True, slots=True)
class InferenceConfig:
    request_timeout_s: float = 5.0  # deadline of one expert-forward request
    max_attempts: int = 4  # plans per layer and token before giving up
    spot_check: float = 0.05  # probability of recomputing a remote answer here
    tolerance: float = 1e-4  # max |difference| allowed, relative to the output's scale
    wrong_output_penalty: float = 5.0  # score a peer loses for a wrong answer
    local_fallback: bool = True  # compute here from the blob store when no replica answers

    def __post_init__(self) -> None:
        if not (self.request_timeout_s > 0 and self.max_attempts >= 1 and 0 <= self.spot_check <= 1):
            raise ValueError(f"invalid inference config {self}")


class Compute(Protocol):
    async def run(self, fn: Callable[..., Any], *args: Any) -> Any: ...


class ThreadCompute:
    """Torch off the event loop: one worker thread at a time per limiter (blocking work stays off the event loop)."""

    def __init__(self, limiter: trio.CapacityLimiter | None = None) -> None:
        self.limiter = limiter or trio.CapacityLimiter(1)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)


class InlineCompute:
    """Torch on the event loop: for the simulator, where the clock must not move while it runs."""

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return fn(*args)


@dataclass(slots=True)
class Generation:
    """One `generate` call's result and its trace."""

    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    """New tokens only."""
    latency_s: list[float] = field(default_factory=list)
    """Per new token."""
    layers: list[list[dict[int, str]]] = field(default_factory=list)
    """Per new token, per layer: expert -> node that computed it (LOCAL for this node)."""
    round_trips: int = 0
    spot_checks: int = 0
    faults: list[str] = field(default_factory=list)
    """Peers caught with wrong answers (one entry per fault)."""
    failovers: int = 0
    """Tasks re-planned after a failure."""
    cache: bool = False
    """Whether the KV cache was used (asked for, and the prompt fit in the window)."""
    positions: list[int] = field(default_factory=list)
    """Per new token (per `forward`), positions run: prompt, then 1 with the cache; else the window."""
    rows_sent: list[int] = field(default_factory=list)
    """Per new token, expert input rows sent to other nodes (all layers and requests, retries too)."""
    bytes_sent: list[int] = field(default_factory=list)
    """Per new token, bytes of the expert requests sent to other nodes."""
    plan: dict = field(default_factory=lambda: {"type": "dynamic"})
    """The plan run last (`node.experts.plan_select.PlanChoice.describe`)."""
    fallbacks: list[str] = field(default_factory=list)
    """Plans that failed and were replaced, each with its reason."""
    remote_round_trips: int = 0
    """Expert requests that stages or a delegate sent on this generation's behalf."""


class Executor:
    def __init__(
        self, net: Network, protocol: str, model: MoEModel, local: LocalExperts,
        registry: ExpertRegistry, config: InferenceConfig, compute: Compute, rng: random.Random,
        batcher: RequestBatcher | None = None,
    ) -> None:
        self.net, self.protocol, self.model = net, protocol, model
        self.local, self.registry, self.config = local, registry, config
        self.compute, self.rng = compute, rng
        self.batcher = batcher or RequestBatcher(net, protocol, penalty=config.wrong_output_penalty)
        """Sends the requests, merged with concurrent generations' when it is shared (`node.experts.batching`)."""

    async def generate(self, prompt: list[int], max_new_tokens: int, heads: dict[ExpertKey, bytes],
                       temperature: float = 0.0, seed: int = 0, use_cache: bool = True) -> Generation:
        """`MoEModel.generate` for one sequence, with experts computed across the network."""
        if not prompt:
            raise ValueError("empty prompt")
        cfg = self.model.cfg
        gen = Generation(prompt=list(prompt), cache=use_cache and len(prompt) <= cfg.max_seq_len)
        generator = torch.Generator().manual_seed(seed)
        idx = torch.tensor([prompt], dtype=torch.long)  # [1, T]
        cache = KVCache(cfg) if use_cache else None
        for _ in range(max_new_tokens):
            start = trio.current_time()
            step, cache = select_step_input(idx, cache, cfg.max_seq_len)  # [1, T_step]
            logits, trace = await self.forward(step, heads, gen, cache)
            last = logits[:, -1, :]  # [1, V]
            token = await self.compute.run(_pick, last, temperature, generator)  # [1, 1]
            idx = torch.cat([idx, token], dim=1)  # [1, T+1]
            gen.tokens.append(int(token))
            gen.latency_s.append(trio.current_time() - start)
            gen.layers.append(trace)
        return gen

    async def forward(self, idx: Tensor, heads: dict[ExpertKey, bytes], gen: Generation,
                      cache: KVCache | None = None) -> tuple[Tensor, list[dict[int, str]]]:
        """Logits [B, T, V] of `idx` [B, T], and per layer which node computed each expert.

        With a cache, `idx` follows its positions and is appended, as in `MoEModel.forward`.
        Each call adds one entry to `gen.positions`, `gen.rows_sent` and `gen.bytes_sent`.
        """
        model, trace = self.model, []
        gen.positions.append(idx.shape[1])
        gen.rows_sent.append(0)
        gen.bytes_sent.append(0)
        start = 0 if cache is None else cache.length
        x = await self.compute.run(_no_grad(model.embed_tokens), idx, start)  # [B, T, D]
        x, last = await self._run_layers(x, range(model.cfg.n_layers), heads, gen, trace,
                                         lambda layer, x: model.attn_forward(layer, x, cache))
        logits = await self.compute.run(_no_grad(_combine_then), last, x, model.head_forward)  # [B, T, V]
        return logits, trace

    async def forward_seqs(self, idxs: list[Tensor], caches: list[KVCache | None], heads: dict[ExpertKey, bytes],
                           gens: list[Generation]) -> tuple[list[Tensor], list[list[dict[int, str]]]]:
        """One step of each of M generations as one forward: per sequence its logits [1, T_i, V]
        of `idxs[i]` [1, T_i] (following `caches[i]` as in `forward`), and per layer who computed
        its experts. Each layer's experts are asked once per node for the rows of all M.

        Each `gens[i]` gets the entries `forward` gives it: its positions, its own rows sent
        (retries excluded) and that share of the bytes; and the round trips, failovers, spot
        checks and faults of the shared forward, which its step waited on.
        """
        model, shared = self.model, Generation(prompt=[], rows_sent=[0], bytes_sent=[0])
        lengths = [idx.shape[1] for idx in idxs]
        starts = [0 if c is None else c.length for c in caches]
        x = await self.compute.run(_no_grad(model.embed_seqs), idxs, starts)  # [1, N, D]
        traces: list[list[dict[int, str]]] = [[] for _ in idxs]
        sent = [0] * len(idxs)

        def attend(layer: int, x: Tensor) -> Tensor:
            return model.attn_forward_seqs(layer, x, lengths, caches)  # [1, N, D]

        def record(layer: int, choices: list[list[int]], used: dict[int, str]) -> None:
            at = 0
            for i, T in enumerate(lengths):
                mine = choices[at : at + T]
                traces[i].append({e: used[e] for e in sorted({e for row in mine for e in row})})
                sent[i] += sum(used[e] != LOCAL for row in mine for e in row)
                at += T

        x, last = await self._run_layers(x, range(model.cfg.n_layers), heads, shared, [], attend, record)
        logits = await self.compute.run(_no_grad(_combine_then), last, x, model.head_forward)  # [1, N, V]
        out, at = [], 0
        for gen, T, rows in zip(gens, lengths, sent, strict=True):
            out.append(logits[:, at : at + T])  # [1, T, V]
            at += T
            gen.positions.append(T)
            gen.rows_sent.append(rows)
            gen.bytes_sent.append(shared.bytes_sent[0] * rows // max(shared.rows_sent[0], 1))
            gen.round_trips += shared.round_trips
            gen.failovers += shared.failovers
            gen.spot_checks += shared.spot_checks
            gen.faults.extend(shared.faults)
        return out, traces

    async def run_layers(self, x: Tensor, layers: range, heads: dict[ExpertKey, bytes], gen: Generation,
                         cache: KVCache | None, trace: list[dict[int, str]]) -> Tensor:
        """Hidden states [B, T, D] through `layers` (attention, router, experts); one entry per
        layer appended to `trace`. A pipeline stage runs its range with this."""
        model = self.model
        x, last = await self._run_layers(x, layers, heads, gen, trace,
                                         lambda layer, x: model.attn_forward(layer, x, cache))
        return await self.compute.run(_no_grad(_combine_then), last, x, None)  # [B, T, D]

    async def _run_layers(self, x: Tensor, layers: range, heads: dict[ExpertKey, bytes], gen: Generation,
                          trace: list[dict[int, str]], attend: Callable[[int, Tensor], Tensor],
                          record: Callable[[int, list[list[int]], dict[int, str]], None] | None = None,
                          ) -> tuple[Tensor, tuple[Routing, dict[int, Tensor]] | None]:
        """`layers` up to the last one's expert outputs, which are returned (with its routing)
        for the caller to add (`_combine_then`) in its next piece of local work. Between two
        layers' experts the local work is one trip to the compute thread: the last layer's
        combine, then `attend(layer, x)` and the router (operation for operation as apart)."""
        last = None
        for layer in layers:
            x, routing = await self.compute.run(_no_grad(_enter_layer), self.model, layer, x, last, attend)
            choices = routing.experts.tolist()  # N x [k]
            outputs, used = await self.run_experts(layer, routing.hidden, choices, heads, gen)
            last = (routing, outputs)
            trace.append(used)
            if record is not None:
                record(layer, choices, used)
        return x, last

    async def run_experts(self, layer: int, hidden: Tensor, choices: list[list[int]],
                          heads: dict[ExpertKey, bytes], gen: Generation) -> tuple[dict[int, Tensor], dict[int, str]]:
        """Every routed expert's output on its rows of `hidden` [N, D]; and who computed it."""
        routes = compute_routes(choices)
        outputs: dict[int, Tensor] = {}
        used: dict[int, str] = {}
        pending = dict(routes)
        exclude: set[str] = set()
        for _attempt in range(self.config.max_attempts):
            plan = self._plan(layer, pending, heads, exclude)
            failed: list[NodeTask] = []
            async with trio.open_nursery() as nursery:
                for task in plan.tasks:
                    nursery.start_soon(self._run_task, layer, task, hidden, heads, outputs, used, failed, gen)
            if not failed:
                return outputs, used
            gen.failovers += len(failed)
            exclude.update(t.node for t in failed)
            pending = {e: rows for t in failed for e, rows in t.experts.items()}
        raise InferenceFailed(layer, f"experts {sorted(pending)} failed {self.config.max_attempts} times")

    def _plan(self, layer: int, pending: dict[int, tuple[int, ...]], heads: dict[ExpertKey, bytes],
              exclude: set[str]) -> list[NodeTask]:
        now = trio.current_time()
        wanted = {(layer, e): heads[(layer, e)] for e in pending}
        served = [] if LOCAL in exclude else [e for e in pending if self.local.is_served((layer, e), heads[(layer, e)])]
        candidates = {k[1]: v for k, v in self.registry.find_nodes_for(wanted, now, exclude).items()}
        loadable = []
        if self.config.local_fallback and LOCAL not in exclude:
            loadable = [e for e in pending if self.local.can_load((layer, e), heads[(layer, e)])]
        return build_layer_plan(layer, pending, served, candidates, loadable)

    async def _run_task(self, layer: int, task: NodeTask, hidden: Tensor, heads: dict[ExpertKey, bytes],
                        outputs: dict[int, Tensor], used: dict[int, str], failed: list[NodeTask],
                        gen: Generation) -> None:
        try:
            if task.node == LOCAL:
                got = await self._compute_local(layer, task, hidden, heads)
            else:
                got = await self._request(layer, task, hidden, heads, gen)
        except (RequestFailed, ExpertError) as err:
            logger.info("layer %d experts %s on %s failed: %s", layer, sorted(task.experts), task.node or "local", err)
            if task.node != LOCAL and not isinstance(err, BatchAbandoned):  # not the peer's fault
                self.registry.record_failure(task.node, trio.current_time())
            failed.append(task)
            return
        outputs.update(got)
        used.update({e: task.node for e in task.experts})

    async def _compute_local(self, layer: int, task: NodeTask, hidden: Tensor,
                             heads: dict[ExpertKey, bytes]) -> dict[int, Tensor]:
        def run() -> dict[int, Tensor]:  # every expert of the task in one trip to the compute thread
            return {e: self.local.forward((layer, e), heads[(layer, e)], hidden[torch.tensor(rows)])  # [n_e, D]
                    for e, rows in task.experts.items()}

        return await self.compute.run(run)

    async def _request(self, layer: int, task: NodeTask, hidden: Tensor, heads: dict[ExpertKey, bytes],
                       gen: Generation) -> dict[int, Tensor]:
        d_model = hidden.shape[-1]
        rows_of = {e: hidden[torch.tensor(rows)] for e, rows in task.experts.items()}  # e -> [n_e, D]
        req = ForwardRequest(layer, d_model, tuple(
            ForwardItem(e, heads[(layer, e)], len(rows), encode_rows(rows_of[e]))
            for e, rows in task.experts.items()))
        start = trio.current_time()
        payload = codec.encode(req)
        gen.round_trips += 1
        gen.rows_sent[-1] += sum(item.rows for item in req.items)
        gen.bytes_sent[-1] += len(payload)
        got = await self.batcher.request(self, task.node, req, payload, self.config.request_timeout_s)
        self.registry.record_latency(task.node, trio.current_time() - start)
        if self.config.spot_check > 0 and self.rng.random() < self.config.spot_check:
            got = await self._spot_check(layer, task.node, rows_of, got, heads, gen)
        return got

    async def _spot_check(self, layer: int, peer: str, rows_of: dict[int, Tensor], got: dict[int, Tensor],
                          heads: dict[ExpertKey, bytes], gen: Generation) -> dict[int, Tensor]:
        """Recompute what this node can; a disagreeing peer is penalised and its answer replaced."""
        checked = dict(got)
        for expert, x in rows_of.items():
            key = (layer, expert)
            if not self.local.can_load(key, heads[key]):
                continue
            gen.spot_checks += 1
            mine = await self.compute.run(self.local.forward, key, heads[key], x)
            if not is_close(got[expert], mine, self.config.tolerance):
                logger.warning("peer %s answered layer%d.expert%d wrongly: penalised", peer, layer, expert)
                self.net.penalize(peer, f"wrong output for layer{layer}.expert{expert}",
                                  self.config.wrong_output_penalty)
                self.registry.record_failure(peer, trio.current_time())
                gen.faults.append(peer)
                checked[expert] = mine
        return checked


def _no_grad(fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        with torch.no_grad():
            return fn(*args)
    return run


def _combine(routing: Routing, outputs: dict[int, Tensor], x: Tensor) -> Tensor:
    return x + combine_expert_outputs(routing, outputs).view_as(x)  # [B, T, D]


def _combine_then(last: tuple[Routing, dict[int, Tensor]] | None, x: Tensor,
                  then: Callable[[Tensor], Tensor] | None) -> Tensor:
    """`x` [B, T, D] with the last layer's expert outputs added (if any), then `then` of it."""
    if last is not None:
        x = _combine(*last, x)  # [B, T, D]
    return x if then is None else then(x)


def _enter_layer(model: MoEModel, layer: int, x: Tensor, last: tuple[Routing, dict[int, Tensor]] | None,
                 attend: Callable[[int, Tensor], Tensor]) -> tuple[Tensor, Routing]:
    """The previous layer's combine (if any), then `layer`'s attention and router."""
    x = attend(layer, _combine_then(last, x, None))  # [B, T, D]
    return x, model.route(layer, x)


def _pick(last: Tensor, temperature: float, generator: torch.Generator) -> Tensor:
    """The next token from last-position logits [B, V], as `MoEModel.generate` picks it."""
    if temperature == 0:
        return last.argmax(dim=-1, keepdim=True)  # [B, 1]
    probs = F.softmax(last / temperature, dim=-1)  # [B, V]
    return torch.multinomial(probs, 1, generator=generator)  # [B, 1]
