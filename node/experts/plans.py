"""Running a generation under a plan type, with fallback (`generate_planned`).

The weights are pinned once per generation (`pin_weights`): the shared model, the expert heads
and their digest, all of one version; every runner and spot check of the generation uses those
(a block committed meanwhile changes none of them; a spot check skips when the digest moved, a
delegate refuses a generation pinned at heads it no longer has). The plan is chosen once per
generation (`node.experts.plan_select.select_plan`) and kept in a small cache by (type asked,
expert group, heads digest); a cached plan is reused while its nodes are live and still serve
their ranges. A `dynamic` choice is never cached: it has no nodes to go stale, so a cached one
would outlive the announcements that would now make a pipeline possible. The expert group is
the prompt's pre-route: embed, attention and router of layer 0 run here on the prompt (no round
trip), naming the layer-0 experts it needs; later layers depend on expert outputs, so their
whole layer is in the group.

The step loop is `Executor.generate`'s, with the runner of the plan (dynamic: the executor;
pipeline: `PipelineRunner`) and the same `select_step_input` rule. When a stage or the delegate
fails (`PlanFailed`), the next plan is chosen without the failed nodes (`auto` rules; a delegate
only while no token is out, since it restarts the generation) and the KV cache is rebuilt by
replaying the same steps (the prompt, then one token at a time) so that the result stays bit for
bit the single-process one; at most `max_attempts` plans. Each try is bounded by its request
deadlines. `Generation.fallbacks` records each failed plan and why.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
import trio
from torch import Tensor

from gpu.model import KVCache, select_step_input
from node.experts.delegate import DelegateRunner
from node.experts.inference import Executor, Generation, _pick
from node.experts.lockstep import LockstepDecoder
from node.experts.plan import LOCAL
from node.experts.plan_select import (
    AUTO,
    DYNAMIC,
    PIPELINE,
    STATIC_DELEGATE,
    Candidate,
    PlanChoice,
    get_candidates,
    is_plan_live,
    select_plan,
)
from node.experts.plan_wire import HeadsDiffer, PlanFailed, PlansExhausted, compute_heads_digest
from node.experts.stage import PipelineRunner, PlanHost, RemoteCache
from node.experts.weights import ExpertKey, get_expert_heads

logger = logging.getLogger(__name__)


class DynamicRunner:
    def __init__(self, executor: Executor, heads: dict[ExpertKey, bytes], heads_digest: bytes = b"",
                 lockstep: LockstepDecoder | None = None) -> None:
        self.executor, self.heads = executor, heads
        self.model, self.compute = executor.model, executor.compute
        self.lockstep = lockstep
        """Where steps join other generations' (`node.experts.lockstep`); None: alone."""
        self._key = (id(self.model), heads_digest)

    def new_cache(self) -> KVCache:
        return KVCache(self.executor.model.cfg)

    @contextlib.contextmanager
    def joined(self) -> Iterator[None]:
        """While inside, this generation is one that the node's request batcher and lockstep
        decoder wait for."""
        with self.executor.batcher.joined(self.executor):
            if self.lockstep is None:
                yield
                return
            with self.lockstep.joined(self._key, self):
                yield

    async def forward(self, idx: Tensor, cache: KVCache | None, gen: Generation) -> tuple[Tensor, list]:
        """One step, in lockstep with the other generations running at the same version."""
        if self.lockstep is None:
            return await self.executor.forward(idx, self.heads, gen, cache)
        logits, trace, _ = await self.lockstep.step(self._key, self, self.executor, self.heads, idx, cache, gen)
        return logits, trace

    async def next_token(self, idx: Tensor, cache: KVCache | None, gen: Generation,
                         pick: Callable[[Tensor], Tensor]) -> tuple[Tensor, list]:
        """`forward`, then the token [1, 1] that `pick` chooses from its last logits [1, V]."""
        if self.lockstep is None:
            logits, trace = await self.forward(idx, cache, gen)
            return await self.compute.run(pick, logits[:, -1, :]), trace  # [1, 1]
        _, trace, token = await self.lockstep.step(self._key, self, self.executor, self.heads, idx, cache, gen, pick)
        assert token is not None  # a step given a pick returns its token
        return token, trace

    async def close(self) -> None:
        return None


def compute_prompt_group(model: Any, prompt: list[int]) -> frozenset[ExpertKey]:
    """Layer 0's experts routed by the prompt (its last window), and every expert of later layers."""
    cfg = model.cfg
    with torch.no_grad():
        idx = torch.tensor([prompt[-cfg.max_seq_len:]], dtype=torch.long)  # [1, T]
        x = model.attn_forward(0, model.embed_tokens(idx, 0))  # [1, T, D]
        first = {int(e) for e in model.route(0, x).experts.flatten()}
    return frozenset({(0, e) for e in first} | {(layer, e) for layer in range(1, cfg.n_layers)
                                                for e in range(cfg.n_experts)})


class PlanChooser:
    """Choosing (and caching) the plan of one generation on one host."""

    def __init__(self, host: PlanHost, model: Any, group: frozenset[ExpertKey], heads: dict[ExpertKey, bytes],
                 digest: bytes, prompt_tokens: int, max_new_tokens: int) -> None:
        self.host, self.model, self.group, self.heads, self.digest = host, model, group, heads, digest
        self.prompt_tokens, self.max_new_tokens = prompt_tokens, max_new_tokens
        self.exclude: set[str] = set()

    def choose(self, asked: str, allow_delegate: bool) -> PlanChoice:
        """The plan for `asked`: the cached one while it is live (first choice only), else `select_plan`."""
        cfg, host, heads = self.model.cfg, self.host, self.heads
        candidates = get_candidates(host.registry, heads, trio.current_time(), self.exclude)
        local = frozenset(k for k, h in heads.items() if host.local.is_served(k, h))
        key = (asked, allow_delegate, self.group, self.digest)
        held = host.plan_cache.get(key) if not self.exclude else None
        if held is not None and is_plan_live(held, [*candidates, Candidate(LOCAL, local, 0.0)], cfg.n_experts):
            return held
        choice = select_plan(asked, candidates, self.group, cfg.n_layers, cfg.n_experts, self.digest,
                             allow_delegate, local, self.prompt_tokens, self.max_new_tokens)
        if not self.exclude and choice.kind != DYNAMIC:
            host.plan_cache.put(key, choice)
        return choice


PIN_ATTEMPTS = 3


async def pin_weights(host: PlanHost) -> tuple[Any, dict[ExpertKey, bytes], bytes]:
    """(shared model, expert heads, heads digest) of one version: the digest is read before and
    after the model loads, and the load repeated (at most `PIN_ATTEMPTS` times) while it moved."""
    for _ in range(PIN_ATTEMPTS):
        before = compute_heads_digest(host.view)
        model = await host.shared_model()
        digest = compute_heads_digest(host.view)
        if digest == before:
            return model, get_expert_heads(host.view), digest
    raise PlanFailed("", f"the parameter chain moved during {PIN_ATTEMPTS} loads of the shared model")


async def generate_planned(host: PlanHost, prompt: list[int], max_new_tokens: int, temperature: float = 0.0,
                           seed: int = 0, use_cache: bool = True, plan: str = AUTO,
                           allow_delegate: bool = True, heads_digest: bytes | None = None) -> Generation:
    """`MoEModel.generate` for one sequence under plan type `plan` ("auto": the rule of
    `select_plan`; without `allow_delegate`, as a delegate runs, never a delegate);
    `PlanUnsupported` at once when a type asked cannot run; `HeadsDiffer` when `heads_digest`
    (a delegate's requester pinned it) is not this node's."""
    if not prompt:
        raise ValueError("empty prompt")
    model, heads, digest = await pin_weights(host)
    if heads_digest is not None and heads_digest != digest:
        raise HeadsDiffer(digest, heads_digest)
    cfg = model.cfg
    group = frozenset() if plan == DYNAMIC else await host.compute.run(compute_prompt_group, model, prompt)
    chooser = PlanChooser(host, model, group, heads, digest, len(prompt), max_new_tokens)
    choice = chooser.choose(plan, allow_delegate)
    gen = Generation(prompt=list(prompt), cache=use_cache and len(prompt) <= cfg.max_seq_len)
    generator = torch.Generator().manual_seed(seed)
    for _attempt in range(host.inference.max_attempts):
        gen.plan = choice.describe()
        try:
            if choice.kind == STATIC_DELEGATE:
                await DelegateRunner(host, choice.stages[0].node, model, heads, digest).run(
                    gen, max_new_tokens, temperature, seed, use_cache)
                return gen
            await run_steps(_runner(host, model, heads, choice), gen, max_new_tokens, temperature, generator, use_cache)
            return gen
        except PlanFailed as err:
            logger.info("plan %s failed on %s: %s; falling back", choice.kind, err.node, err.reason)
            gen.fallbacks.append(f"{choice.kind}: {err}")
            chooser.exclude.add(err.node)
            choice = chooser.choose(AUTO, allow_delegate and not gen.tokens)
    raise PlansExhausted(gen.fallbacks)


def _runner(host: PlanHost, model: Any, heads: dict[ExpertKey, bytes],
            choice: PlanChoice) -> DynamicRunner | PipelineRunner:
    if choice.kind == PIPELINE:
        return PipelineRunner(host, model, choice.stages, heads, choice.heads_digest)
    return DynamicRunner(host.executor(model), heads, choice.heads_digest, host.lockstep)


async def run_steps(runner: DynamicRunner | PipelineRunner, gen: Generation, max_new_tokens: int,
                    temperature: float, generator: torch.Generator, use_cache: bool) -> None:
    """The tokens still to generate, as `Executor.generate` does, appended to `gen`; a runner
    taking over from another first replays the steps already run."""
    S = runner.model.cfg.max_seq_len
    idx = torch.tensor([gen.prompt + gen.tokens], dtype=torch.long)  # [1, L]
    pick = functools.partial(_pick, temperature=temperature, generator=generator)
    joined = runner.joined() if isinstance(runner, DynamicRunner) else contextlib.nullcontext()
    try:
        with joined:
            cache = await replay(runner, gen, idx, use_cache, S)
            while len(gen.tokens) < max_new_tokens:
                start = trio.current_time()
                step, cache = select_step_input(idx, cache, S)  # [1, T_step]
                token, trace = await runner.next_token(step, cache, gen, pick)  # [1, 1]
                idx = torch.cat([idx, token], dim=1)  # [1, L+1]
                gen.tokens.append(int(token))
                gen.latency_s.append(trio.current_time() - start)
                gen.layers.append(trace)
    finally:
        await runner.close()


async def replay(runner: DynamicRunner | PipelineRunner, gen: Generation, idx: Tensor, use_cache: bool,
                 S: int) -> KVCache | RemoteCache | None:
    """A fresh cache standing where the generation stands: the steps that built it run again
    (the prompt, then each token so far), so its keys are those of the first run bit for bit."""
    cache = runner.new_cache() if use_cache else None
    for length in range(len(gen.prompt), idx.shape[1]):
        step, cache = select_step_input(idx[:, :length], cache, S)  # [1, T_step]
        if cache is None:  # past the window: no step needs a cache any more
            return None
        await runner.forward(step, cache, gen)
    return cache
