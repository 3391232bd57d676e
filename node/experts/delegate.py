"""Static delegation: one node runs a whole generation for another (protocol `expert_delegate`).

Server (`DelegateServer.on_delegate`): refuses a malformed request (penalised), tokens outside
the vocabulary, more than `MAX_DELEGATE_TOKENS`, a temperature that is not finite in [0, 10]
(all malformed), other heads (`HeadsDiffer`), and more than `MAX_DELEGATIONS` at once
(`StageBusy`); then runs the generation itself under `auto` without delegation (its own experts
local; the others through a pipeline chain whose LOCAL stage is its own range, or dynamically
from peers; never delegated again) and answers the tokens, who computed each expert, and
its own round trips.

Client (`DelegateRunner`): one request per generation; its deadline is the per-request timeout
times (1 + new tokens), as the delegate may wait that long on its own peers. A failure raises
`PlanFailed` (a malformed or inconsistent answer also penalises the delegate). Not checked: that
the tokens are the model's (a delegate could answer other valid tokens; spot checks cover expert
outputs only).
"""

from __future__ import annotations

import logging

import trio

from chain import codec
from node.experts.inference import Generation
from node.experts.plan_select import AUTO
from node.experts.plan_wire import (
    MAX_DELEGATE_BYTES,
    MAX_DELEGATE_TOKENS,
    DelegateRequest,
    DelegateResponse,
    ExpertUse,
    HeadsDiffer,
    PlanFailed,
    StageBusy,
    compute_heads_digest,
    decode_temperature,
    encode_temperature,
    validate_uses,
)
from node.experts.stage import MALFORMED_PENALTY, PlanHost
from node.experts.wire import InvalidExpertMessage, decode_message
from p2p.network import PeerId, RequestFailed

logger = logging.getLogger(__name__)

MAX_DELEGATIONS = 2
"""Generations run for others at once."""


def validate_delegate_request(req: DelegateRequest, vocab_size: int) -> float:
    """The temperature; `InvalidExpertMessage` for a request no model could run."""
    if not 1 <= req.max_new_tokens <= MAX_DELEGATE_TOKENS:
        raise InvalidExpertMessage(f"max_new_tokens {req.max_new_tokens} not in [1, {MAX_DELEGATE_TOKENS}]")
    if any(t >= vocab_size for t in req.prompt):
        raise InvalidExpertMessage(f"a prompt token outside the vocabulary of {vocab_size}")
    if req.seed >= 2**63:
        raise InvalidExpertMessage("seed beyond 2**63")
    return decode_temperature(req.temperature_bits)


class DelegateServer:
    def __init__(self, host: PlanHost) -> None:
        self.host = host
        self.inflight = 0
        self.served = 0

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
        if self.inflight >= MAX_DELEGATIONS:
            raise StageBusy(f"{self.inflight} delegated generations in progress")
        self.inflight += 1
        try:
            gen = await host.generate_tokens(list(req.prompt), req.max_new_tokens, temperature, req.seed,
                                             req.use_cache, AUTO, allow_delegate=False)
        finally:
            self.inflight -= 1
        self.served += 1
        uses = tuple(ExpertUse(step, layer, e, node) for step, layers in enumerate(gen.layers)
                     for layer, used in enumerate(layers) for e, node in sorted(used.items()))
        return codec.encode(DelegateResponse(tuple(gen.tokens), uses, gen.round_trips, gen.failovers))


class DelegateRunner:
    def __init__(self, host: PlanHost, node: str, heads_digest: bytes) -> None:
        self.host, self.node, self.heads_digest = host, node, heads_digest

    async def run(self, gen: Generation, max_new_tokens: int, temperature: float, seed: int,
                  use_cache: bool) -> None:
        """The whole generation on the delegate; its tokens and trace into `gen`."""
        host, spec = self.host, self.host.view.spec
        req = DelegateRequest(self.heads_digest, tuple(gen.prompt), max_new_tokens, encode_temperature(temperature),
                              seed, use_cache)
        began = trio.current_time()
        gen.round_trips += 1
        try:
            data = await host.net.request(self.node, host.delegate_protocol, codec.encode(req),
                                          timeout=host.inference.request_timeout_s * (1 + max_new_tokens),
                                          max_response_bytes=MAX_DELEGATE_BYTES)
        except RequestFailed as err:
            host.registry.record_failure(self.node, trio.current_time())
            raise PlanFailed(self.node, f"delegate: {err.reason}") from err
        try:
            resp = decode_message(DelegateResponse, data, MAX_DELEGATE_BYTES)
            if len(resp.tokens) != max_new_tokens or any(t >= spec.vocab_size for t in resp.tokens):
                raise InvalidExpertMessage(f"{len(resp.tokens)} tokens for {max_new_tokens}, or out of vocabulary")
            validate_uses(resp.uses, range(spec.n_layers), max_new_tokens, spec.n_experts, spec.top_k)
        except InvalidExpertMessage as err:
            host.net.penalize(self.node, f"invalid delegate answer: {err}", host.inference.wrong_output_penalty)
            host.registry.record_failure(self.node, trio.current_time())
            raise PlanFailed(self.node, f"invalid delegate answer: {err}") from err
        elapsed = trio.current_time() - began
        gen.tokens = list(resp.tokens)
        gen.latency_s = [elapsed / max_new_tokens] * max_new_tokens  # one answer: the mean per token
        gen.layers = [[{u.expert: u.node or self.node for u in resp.uses if u.step == step and u.layer == layer}
                       for layer in range(spec.n_layers)] for step in range(max_new_tokens)]
        gen.remote_round_trips += resp.round_trips
        gen.failovers += resp.failovers
