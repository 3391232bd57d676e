"""Static delegation: one node runs a whole generation for another (protocol `expert_delegate`).

Server (`DelegateServer.on_delegate`): refuses a malformed request (penalised), tokens outside
the vocabulary, more than `MAX_DELEGATE_TOKENS`, a temperature that is not finite in [0, 10]
(all malformed), other heads (`HeadsDiffer`), and, when it has no room (`StageBusy`): more than
`MAX_DELEGATIONS` at once, more than `MAX_DELEGATIONS_PER_PEER` of one requester, or more work
(prompt tokens x new tokens) in progress than `MAX_DELEGATE_WORK`. Then it runs the generation
itself under `auto` without delegation, at the heads the request pinned (its own experts local;
the others through a pipeline chain whose LOCAL stage is its own range, or dynamically from
peers; never delegated again), within `compute_delegate_budget` (past it: `DelegateOverBudget`),
and answers the tokens, who computed each expert, and its own round trips. The protocol's
handler runs under `DELEGATE_HANDLER_TIMEOUT_S`, the longest budget, not the network's default.

Client (`DelegateRunner`): one request per generation; its deadline is the budget, plus the
delegate's closing of its stage sessions (`CLOSE_TIMEOUT_S`) and one request timeout
(`compute_delegate_deadline`). A failure raises `PlanFailed`; a refusal (`is_refusal`) costs the delegate no
strike, a timeout, an unreachable delegate or a malformed answer does (the latter is also
penalised). With probability `spot_check`, a greedy generation is checked here: one forward over
prompt + returned tokens (the dynamic path, at the pinned heads) and every returned token must be
within `tolerance` (relative to the logits' scale) of the maximum logit at its position, so that
a near-tie does not penalise an honest delegate; a delegate caught is penalised
(`wrong_output_penalty`) and the generation falls back to another plan. Not checked: sampled
generations (temperature > 0: every token has a positive probability, and replaying the draw on
logits that differ within tolerance may pick another token), generations longer than the window
(one forward cannot replay a sliding window), and checks skipped when the heads moved.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, NoReturn

import torch
import trio
from torch import Tensor

from chain import codec
from node.experts.inference import Generation
from node.experts.plan_select import AUTO
from node.experts.plan_wire import (
    MAX_DELEGATE_BYTES,
    MAX_DELEGATE_TOKENS,
    MAX_PROMPT_TOKENS,
    DelegateOverBudget,
    DelegateRequest,
    DelegateResponse,
    ExpertUse,
    HeadsDiffer,
    PlanFailed,
    StageBusy,
    compute_delegate_budget,
    compute_heads_digest,
    decode_temperature,
    encode_temperature,
    is_refusal,
    validate_uses,
)
from node.experts.stage import CLOSE_TIMEOUT_S, MALFORMED_PENALTY, PlanHost
from node.experts.weights import ExpertKey
from node.experts.wire import ExpertError, InvalidExpertMessage, decode_message
from p2p.network import PeerId, RemoteError, RequestFailed

logger = logging.getLogger(__name__)

MAX_DELEGATIONS = 2
"""Generations run for others at once."""
MAX_DELEGATIONS_PER_PEER = 1
"""So that one requester cannot take every delegation slot."""
MAX_DELEGATE_WORK = MAX_PROMPT_TOKENS * MAX_DELEGATE_TOKENS
"""Prompt tokens x new tokens of the delegations in progress (one request of the largest size fits)."""


def validate_delegate_request(req: DelegateRequest, vocab_size: int) -> float:
    """The temperature; `InvalidExpertMessage` for a request no model could run."""
    if not 1 <= req.max_new_tokens <= MAX_DELEGATE_TOKENS:
        raise InvalidExpertMessage(f"max_new_tokens {req.max_new_tokens} not in [1, {MAX_DELEGATE_TOKENS}]")
    if any(t >= vocab_size for t in req.prompt):
        raise InvalidExpertMessage(f"a prompt token outside the vocabulary of {vocab_size}")
    if req.seed >= 2**63:
        raise InvalidExpertMessage("seed beyond 2**63")
    return decode_temperature(req.temperature_bits)


def find_wrong_greedy_token(logits: Tensor, tokens: list[int], tolerance: float) -> int | None:
    """The first step whose token is not within `tolerance` (relative to the logits' scale) of
    the maximum logit at its position; None when every token could be greedy's. `logits` [n, V]."""
    for step, token in enumerate(tokens):
        row = logits[step]  # [V]
        best = float(row.max())
        if float(row[token]) < best - tolerance * max(1.0, float(row.abs().max())):
            return step
    return None


def compute_delegate_deadline(max_new_tokens: int, request_timeout_s: float) -> float:
    """The requester's wait: the delegate's budget, its closing of stage sessions, one request timeout."""
    return compute_delegate_budget(max_new_tokens) + CLOSE_TIMEOUT_S + request_timeout_s


class DelegateServer:
    def __init__(self, host: PlanHost) -> None:
        self.host = host
        self.inflight = 0
        self.served = 0
        self.by_peer: Counter[PeerId] = Counter()
        self.work = 0
        """Prompt tokens x new tokens in progress."""

    def reserve(self, requester: PeerId, work: int) -> None:
        """Take a slot for `work`, or `StageBusy` with the reason."""
        if self.inflight >= MAX_DELEGATIONS:
            raise StageBusy(f"{self.inflight} delegated generations in progress")
        if self.by_peer[requester] >= MAX_DELEGATIONS_PER_PEER:
            raise StageBusy(f"{MAX_DELEGATIONS_PER_PEER} delegated generation of this requester in progress")
        if self.work + work > MAX_DELEGATE_WORK:
            raise StageBusy(f"{self.work} prompt x new tokens in progress: no room for {work} more")
        self.inflight += 1
        self.by_peer[requester] += 1
        self.work += work

    def release(self, requester: PeerId, work: int) -> None:
        self.inflight -= 1
        self.by_peer[requester] -= 1
        if not self.by_peer[requester]:
            del self.by_peer[requester]
        self.work -= work

    async def on_delegate(self, requester: PeerId, data: bytes) -> bytes:
        host = self.host
        try:
            req = decode_message(DelegateRequest, data, MAX_DELEGATE_BYTES)
            temperature = validate_delegate_request(req, host.view.spec.vocab_size)
        except InvalidExpertMessage:
            host.net.penalize(requester, "malformed expert-delegate request", MALFORMED_PENALTY)
            raise
        mine = compute_heads_digest(host.view)
        if req.heads_digest != mine:
            raise HeadsDiffer(mine, req.heads_digest)
        work = len(req.prompt) * req.max_new_tokens
        self.reserve(requester, work)
        budget = compute_delegate_budget(req.max_new_tokens)
        try:
            with trio.move_on_after(budget) as scope:
                gen = await host.generate_tokens(list(req.prompt), req.max_new_tokens, temperature, req.seed,
                                                 req.use_cache, AUTO, allow_delegate=False,
                                                 heads_digest=req.heads_digest)
        finally:
            self.release(requester, work)
        if scope.cancelled_caught:
            raise DelegateOverBudget(f"{req.max_new_tokens} tokens not generated within {budget:g}s")
        self.served += 1
        uses = tuple(ExpertUse(step, layer, e, node) for step, layers in enumerate(gen.layers)
                     for layer, used in enumerate(layers) for e, node in sorted(used.items()))
        return codec.encode(DelegateResponse(tuple(gen.tokens), uses, gen.round_trips, gen.failovers))


class DelegateRunner:
    def __init__(self, host: PlanHost, node: str, model: Any, heads: dict[ExpertKey, bytes],
                 heads_digest: bytes) -> None:
        self.host, self.node, self.model, self.heads, self.heads_digest = host, node, model, heads, heads_digest

    async def run(self, gen: Generation, max_new_tokens: int, temperature: float, seed: int,
                  use_cache: bool) -> None:
        """The whole generation on the delegate; its tokens and trace into `gen`."""
        host, spec = self.host, self.host.view.spec
        req = DelegateRequest(self.heads_digest, tuple(gen.prompt), max_new_tokens, encode_temperature(temperature),
                              seed, use_cache)
        began = trio.current_time()
        gen.round_trips += 1
        try:
            data = await host.net.request(
                self.node, host.delegate_protocol, codec.encode(req),
                timeout=compute_delegate_deadline(max_new_tokens, host.inference.request_timeout_s),
                max_response_bytes=MAX_DELEGATE_BYTES)
        except RequestFailed as err:
            if not (isinstance(err, RemoteError) and is_refusal(err.reason)):
                host.registry.record_failure(self.node, trio.current_time())
            raise PlanFailed(self.node, f"delegate: {err.reason}") from err
        try:
            resp = decode_message(DelegateResponse, data, MAX_DELEGATE_BYTES)
            if len(resp.tokens) != max_new_tokens or any(t >= spec.vocab_size for t in resp.tokens):
                raise InvalidExpertMessage(f"{len(resp.tokens)} tokens for {max_new_tokens}, or out of vocabulary")
            validate_uses(resp.uses, range(spec.n_layers), max_new_tokens, spec.n_experts, spec.top_k)
        except InvalidExpertMessage as err:
            self.punish(gen, f"invalid delegate answer: {err}")
        if temperature == 0.0:
            await self.spot_check(gen, list(resp.tokens))
        elapsed = trio.current_time() - began
        gen.tokens = list(resp.tokens)
        gen.latency_s = [elapsed / max_new_tokens] * max_new_tokens  # one answer: the mean per token
        gen.layers = [[{u.expert: u.node or self.node for u in resp.uses if u.step == step and u.layer == layer}
                       for layer in range(spec.n_layers)] for step in range(max_new_tokens)]
        gen.remote_round_trips += resp.round_trips
        gen.failovers += resp.failovers

    def punish(self, gen: Generation, reason: str) -> NoReturn:
        """Penalise and strike the delegate, and fail the plan."""
        host = self.host
        host.net.penalize(self.node, reason, host.inference.wrong_output_penalty)
        host.registry.record_failure(self.node, trio.current_time())
        gen.faults.append(self.node)
        raise PlanFailed(self.node, reason)

    async def spot_check(self, gen: Generation, tokens: list[int]) -> None:
        """With probability `spot_check`: greedy's tokens checked against one forward here (see
        the module's docstring); skipped past the window or when the heads moved."""
        host, cfg = self.host, self.model.cfg
        if host.inference.spot_check <= 0 or host.rng.random() >= host.inference.spot_check:
            return
        P = len(gen.prompt)
        if P + len(tokens) - 1 > cfg.max_seq_len or compute_heads_digest(host.view) != self.heads_digest:
            return
        idx = torch.tensor([gen.prompt + tokens[:-1]], dtype=torch.long)  # [1, P + n - 1]
        try:
            logits, _ = await host.executor(self.model).forward(idx, self.heads, Generation(prompt=[]), None)
        except ExpertError as err:  # no reference to check against: the answer stands unchecked
            logger.info("spot check of delegate %s not run: %s", self.node, err)
            return
        gen.spot_checks += 1
        wrong = await host.compute.run(find_wrong_greedy_token, logits[0, P - 1:], tokens,
                                       host.inference.tolerance)
        if wrong is not None:
            logger.warning("delegate %s answered token %d that greedy would not pick: penalised", self.node, wrong)
            self.punish(gen, f"wrong output: token {wrong} is not greedy's (spot check)")
