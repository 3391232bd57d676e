"""Wire types of the plan types `pipeline` (protocol `expert_stage`) and `static_delegate`
(protocol `expert_delegate`), and the errors a stage or delegate refuses with.

Both pin the weights with one digest (`compute_heads_digest`): SHA-256 of every block's head
on the parameter chain, in `block_names` order. A node whose heads differ refuses
(`HeadsDiffer`, no penalty: one of the two may simply be a block behind), so a generation never
mixes versions.

A stage request runs hidden rows [T, D] through layers [first, end) of one session (chosen by
the requester, bound to it): with `cached`, the stage keeps those layers' keys and values, and
`start` (the position of the first row) must be where the session's cache stands (0 opens it
afresh); without, it runs the rows statelessly (past the window every step does). `close` ends
the session (with no rows). A delegate request carries a whole generation: prompt, tokens,
sampling (temperature as the bits of a float64), seed and cache flag.
"""

from __future__ import annotations

import math
import struct

from chain import codec
from chain.codec import U16, U32, U64, Bytes, Hash32, Seq, Str, wire
from node.experts.weights import ModelView, block_names
from node.experts.wire import MAX_PEER_ID, ExpertError, InvalidExpertMessage

PROTOCOL_EXPERT_STAGE = "expert_stage"
PROTOCOL_EXPERT_DELEGATE = "expert_delegate"

MAX_STAGE_BYTES = 16 * 1024 * 1024
"""A stage request or response."""
MAX_USES = 1 << 16
"""Expert uses one stage or delegate answer may list."""
MAX_PROMPT_TOKENS = 8192
MAX_DELEGATE_TOKENS = 256
"""New tokens one delegation may ask (as `blyan_generate`)."""
DELEGATE_BASE_S = 5.0
DELEGATE_TOKEN_S = 0.5
"""A delegation of n new tokens may take DELEGATE_BASE_S + n x DELEGATE_TOKEN_S (`compute_delegate_budget`)."""
MAX_TEMPERATURE = 10.0
MAX_DELEGATE_BYTES = 4 * 1024 * 1024
SESSION_ID_BYTES = 16


class PlanError(ExpertError):
    """Root of the errors of the plan types."""


REFUSAL = "refused: "
"""How the reason of a refusal begins (`PlanRefusal`), so that a requester tells it on the wire
from a failure."""


class PlanRefusal(PlanError):
    """An ordinary refusal (busy, a block behind, out of step, not a stage): no strike on the node."""

    def __str__(self) -> str:
        return REFUSAL + super().__str__()


def is_refusal(reason: str) -> bool:
    """Whether a remote error's reason is a `PlanRefusal`."""
    return reason.startswith(REFUSAL)


def compute_delegate_budget(max_new_tokens: int) -> float:
    """Seconds a delegate may spend on a generation of `max_new_tokens`: it stops there (then
    closes its own stage sessions, at most `CLOSE_TIMEOUT_S`), and its requester waits that plus
    one request timeout for the transfer, no longer (`DelegateRunner`)."""
    return DELEGATE_BASE_S + DELEGATE_TOKEN_S * max_new_tokens


DELEGATE_HANDLER_TIMEOUT_S = compute_delegate_budget(MAX_DELEGATE_TOKENS) + 2.0
"""The server-side limit of the delegate protocol's handler: the longest budget, plus the close of
the delegate's own stage sessions (`CLOSE_TIMEOUT_S`, shielded) and a margin."""


class PlanUnsupported(PlanError):
    """A plan type asked for explicitly that the network cannot run now, or an unknown one."""

    def __init__(self, plan: str, reason: str) -> None:
        self.plan, self.reason = plan, reason
        super().__init__(f"plan {plan!r}: {reason}")


class HeadsDiffer(PlanRefusal):
    """A stage or delegate whose parameter-chain heads are not the requester's."""

    def __init__(self, mine: bytes, theirs: bytes) -> None:
        self.mine, self.theirs = mine, theirs
        super().__init__(f"heads differ: here {mine.hex()[:16]}, asked {theirs.hex()[:16]}")


class NotAStage(PlanRefusal):
    """A stage request for layers whose experts this node does not all serve."""


class StageBusy(PlanRefusal):
    """No room for another session (count or memory), or too many steps at once."""


class StageOutOfStep(PlanRefusal):
    """A cached step whose session is unknown, busy, or stands at another position."""


class DelegateOverBudget(PlanError):
    """A delegated generation that ran past `compute_delegate_budget`: stopped, no tokens."""


@wire
class ExpertUse:
    """Who computed one routed expert of one layer (of one step, in a delegate's answer)."""

    step: U32
    """Generation step (0 in a stage answer: it runs one step)."""
    layer: U16
    expert: U16
    node: Str(MAX_PEER_ID)
    """Peer id of the node that computed it ("" for the answering node itself)."""


@wire
class StageRequest:
    session: Bytes(SESSION_ID_BYTES, SESSION_ID_BYTES)
    """Chosen by the requester; sessions are per requester."""
    heads_digest: Hash32
    """`compute_heads_digest` of the requester's heads."""
    first: U16
    """First layer run."""
    end: U16
    """One past the last layer run."""
    cached: bool
    """Use (and extend) the session's KV cache."""
    start: U32
    """Position of the first row (with `cached`: where the session's cache must stand)."""
    d_model: U32
    rows: U32
    """T, the positions of this step (0 only with `close`)."""
    data: Bytes(MAX_STAGE_BYTES - 4096)
    """rows x d_model float32 hidden states, little-endian, row-major."""
    close: bool
    """End the session (no rows)."""


@wire
class StageResponse:
    rows: U32
    data: Bytes(MAX_STAGE_BYTES - 4096 - 64 * MAX_USES)
    """rows x d_model float32: the hidden states after layer end-1."""
    uses: Seq(ExpertUse, MAX_USES)
    """Per layer of the range, who computed each routed expert."""
    round_trips: U32
    """Expert requests the stage itself sent to other nodes."""


@wire
class DelegateRequest:
    heads_digest: Hash32
    prompt: Seq(U32, MAX_PROMPT_TOKENS, min_len=1)
    max_new_tokens: U16
    temperature_bits: U64
    """IEEE-754 float64 bits of the temperature (0 is greedy)."""
    seed: U64
    use_cache: bool


@wire
class DelegateResponse:
    tokens: Seq(U32, MAX_DELEGATE_TOKENS)
    """The new tokens."""
    uses: Seq(ExpertUse, MAX_USES)
    round_trips: U32
    """Expert requests the delegate sent to other nodes."""
    failovers: U32


@wire
class PinnedHead:
    name: Str(64)
    head: Hash32


@wire
class PinnedHeads:
    heads: Seq(PinnedHead, 1 << 20)


def compute_heads_digest(view: ModelView) -> bytes:
    """SHA-256 of every block's head (blocks the chain lacks are left out), in `block_names` order."""
    pinned = []
    for name in block_names(view.spec):
        state = view.get_state(name)
        if state is not None:
            pinned.append(PinnedHead(name, state.head))
    return codec.hash_of(PinnedHeads(tuple(pinned)))


def encode_temperature(t: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", float(t)))[0]


def decode_temperature(bits: int) -> float:
    """The temperature; `InvalidExpertMessage` unless finite in [0, MAX_TEMPERATURE]."""
    t = struct.unpack("<d", struct.pack("<Q", bits))[0]
    if not (math.isfinite(t) and 0.0 <= t <= MAX_TEMPERATURE):
        raise InvalidExpertMessage(f"temperature {t} outside [0, {MAX_TEMPERATURE}]")
    return t


def validate_stage_request(req: StageRequest, n_layers: int, d_model: int, max_seq_len: int) -> None:
    """The request's shape fits the model (`InvalidExpertMessage` otherwise)."""
    if req.close:
        if req.rows or req.data:
            raise InvalidExpertMessage("a close carries no rows")
        return
    if not req.first < req.end <= n_layers:
        raise InvalidExpertMessage(f"layers [{req.first}, {req.end}) not within [0, {n_layers})")
    if req.d_model != d_model:
        raise InvalidExpertMessage(f"d_model {req.d_model}, the model's is {d_model}")
    if not 1 <= req.rows <= max_seq_len or len(req.data) != req.rows * d_model * 4:
        raise InvalidExpertMessage(f"{len(req.data)} bytes for {req.rows} rows (1..{max_seq_len}) x {d_model}")
    if req.cached and req.start + req.rows > max_seq_len:
        raise InvalidExpertMessage(f"positions {req.start}..{req.start + req.rows - 1} beyond {max_seq_len}")


def validate_uses(uses: tuple[ExpertUse, ...], layers: range, steps: int, n_experts: int, top_k: int,
                  rows: int | None = None) -> None:
    """Uses name layers of `layers`, steps < `steps`, experts < n_experts, each once per (step,
    layer), at most top_k x rows of them per (step, layer) when `rows` is known."""
    seen: dict[tuple[int, int], set[int]] = {}
    for use in uses:
        if use.layer not in layers or use.step >= steps or use.expert >= n_experts:
            raise InvalidExpertMessage(f"use of layer{use.layer}.expert{use.expert} at step {use.step} out of range")
        experts = seen.setdefault((use.step, use.layer), set())
        if use.expert in experts:
            raise InvalidExpertMessage(f"layer{use.layer}.expert{use.expert} listed twice")
        experts.add(use.expert)
    if rows is not None and any(len(e) > min(n_experts, top_k * rows) for e in seen.values()):
        raise InvalidExpertMessage("more routed experts than the rows can choose")


class PlansExhausted(PlanError):
    """Every plan tried for a generation failed (at most `max_attempts`)."""

    def __init__(self, failures: list[str]) -> None:
        self.failures = list(failures)
        super().__init__(f"{len(self.failures)} plans failed: {'; '.join(self.failures)}")


class PlanFailed(PlanError):
    """A stage or delegate that failed this generation (timeout, unreachable, refused, wrong
    answer): the generation falls back to the next plan without it."""

    def __init__(self, node: str, reason: str) -> None:
        self.node, self.reason = node, reason
        super().__init__(f"{node}: {reason}")
