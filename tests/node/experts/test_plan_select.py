"""Plan selection (pure): stage chains, delegates, the auto rule, signatures, the plan cache, and
the plan types' wire types."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chain import codec
from node.experts.delegate import find_wrong_greedy_token
from node.experts.plan import LOCAL
from node.experts.plan_select import (
    AUTO,
    DYNAMIC,
    PIPELINE,
    STATIC_DELEGATE,
    Candidate,
    PlanCache,
    PlanChoice,
    Stage,
    choose_delegate,
    find_stage_chain,
    is_plan_live,
    select_plan,
)
from node.experts.plan_wire import (
    DelegateRequest,
    ExpertUse,
    PlanUnsupported,
    StageRequest,
    decode_temperature,
    encode_temperature,
    validate_stage_request,
    validate_uses,
)
from node.experts.wire import InvalidExpertMessage

L, E = 4, 3
DIGEST = b"\x07" * 32


def layers(*ids: int) -> frozenset[tuple[int, int]]:
    return frozenset((layer, e) for layer in ids for e in range(E))


def brute_force_fewest(cands: list[Candidate]) -> int | None:
    """Fewest stages by trying every sequence of (node, range) up to L stages."""
    spans = [(c.node, a, b) for c in cands for a in range(L) for b in range(a + 1, L + 1)
             if all((layer, e) in c.experts for layer in range(a, b) for e in range(E))]
    for n in range(1, L + 1):
        for seq in itertools.product(spans, repeat=n):
            if seq[0][1] == 0 and seq[-1][2] == L and all(x[2] == y[1] for x, y in itertools.pairwise(seq)):
                return n
    return None


coverage = st.lists(st.tuples(st.sets(st.integers(0, L - 1)), st.integers(1, 9)), min_size=0, max_size=4)


@settings(max_examples=150)
@given(coverage)
def test_stage_chain_is_a_fewest_stage_cover(nodes: list[tuple[set[int], int]]) -> None:
    cands = [Candidate(f"p{i}", layers(*ls), cost / 10) for i, (ls, cost) in enumerate(nodes)]
    chain = find_stage_chain(cands, L, E)
    fewest = brute_force_fewest(cands)
    if fewest is None:
        assert chain is None
        return
    assert chain is not None and len(chain) == fewest
    assert chain[0].first == 0 and chain[-1].end == L
    by_node = {c.node: c for c in cands}
    for a, b in itertools.pairwise(chain):
        assert a.end == b.first
    for s in chain:
        assert all((layer, e) in by_node[s.node].experts for layer in range(s.first, s.end) for e in range(E))
    assert find_stage_chain(list(reversed(cands)), L, E) == chain, "deterministic under input order"


def test_stage_chain_prefers_lower_cost_among_fewest() -> None:
    slow = Candidate("a", layers(0, 1, 2, 3), 1.0)
    fast = Candidate("b", layers(0, 1, 2, 3), 0.1)
    assert find_stage_chain([slow, fast], L, E) == (Stage("b", 0, L),)
    halves = [Candidate("c", layers(0, 1), 0.01), Candidate("d", layers(2, 3), 0.01)]
    assert find_stage_chain([slow, *halves], L, E) == (Stage("a", 0, L),), "fewest stages first"
    assert find_stage_chain(halves, L, E) == (Stage("c", 0, 2), Stage("d", 2, 4))
    assert find_stage_chain([Candidate("x", layers(0, 1, 3), 0.0)], L, E) is None


def test_a_local_stage_costs_no_round_trip() -> None:
    here = Candidate(LOCAL, layers(0, 1), 0.0)
    whole = Candidate("a", layers(0, 1, 2, 3), 0.1)
    back = Candidate("b", layers(2, 3), 0.1)
    assert find_stage_chain([here, whole, back], L, E) == (Stage("a", 0, L),)  # same round trips and cost: fewer stages
    assert find_stage_chain([here, replace(whole, cost=0.2), back], L, E) == (Stage(LOCAL, 0, 2), Stage("b", 2, 4))
    assert find_stage_chain([here, Candidate("c", layers(1, 2, 3), 0.1)], L, E) == (
        Stage(LOCAL, 0, 1), Stage("c", 1, 4))
    group = frozenset({(0, 0)}) | layers(1, 2, 3)
    choice = select_plan(AUTO, [back], group, L, E, DIGEST, local=layers(0, 1))
    assert choice.kind == PIPELINE and choice.stages == (Stage(LOCAL, 0, 2), Stage("b", 2, 4))


def test_delegate_covers_most_of_the_group_then_most_overall() -> None:
    group = frozenset({(0, 1)}) | layers(1, 2, 3)
    a = Candidate("a", layers(0), 0.0)
    b = Candidate("b", layers(1, 2), 0.5)
    c = Candidate("c", layers(1, 2) | {(0, 0)}, 0.9)
    assert choose_delegate([a, b, c], group) == c  # ties on the group, c serves more overall
    assert choose_delegate([a, b], group) == b
    assert choose_delegate([], group) is None


def test_auto_rule_and_explicit_refusals() -> None:
    group = frozenset({(0, 0)}) | layers(1, 2, 3)
    full = Candidate("full", layers(0, 1, 2, 3), 0.2)
    halves = [Candidate("h0", layers(0, 1), 0.1), Candidate("h1", layers(2, 3), 0.1)]
    assert select_plan(AUTO, [full, *halves], group, L, E, DIGEST).nodes == ["full"]  # a chain of one, no delegate
    assert select_plan(AUTO, halves, group, L, E, DIGEST).kind == PIPELINE
    assert select_plan(AUTO, halves[:1], group, L, E, DIGEST).kind == DYNAMIC
    assert select_plan(AUTO, [full], group, L, E, DIGEST, local=group).kind == DYNAMIC  # all served here
    assert select_plan(AUTO, [full], group, L, E, DIGEST, allow_delegate=False).kind == PIPELINE
    assert select_plan(STATIC_DELEGATE, halves, group, L, E, DIGEST).nodes == ["h1"]  # 6 of the group, h0 4
    with pytest.raises(PlanUnsupported, match="no chain"):
        select_plan(PIPELINE, halves[:1], group, L, E, DIGEST)
    with pytest.raises(PlanUnsupported, match="no serving node"):
        select_plan(STATIC_DELEGATE, [], group, L, E, DIGEST)
    with pytest.raises(PlanUnsupported, match="a prompt of 8193 tokens"):  # more than one request carries
        select_plan(STATIC_DELEGATE, [full], group, L, E, DIGEST, prompt_tokens=8193)
    with pytest.raises(PlanUnsupported, match="257 new tokens"):
        select_plan(STATIC_DELEGATE, [full], group, L, E, DIGEST, max_new_tokens=257)
    assert select_plan(STATIC_DELEGATE, [full], group, L, E, DIGEST, prompt_tokens=8192,
                       max_new_tokens=256).nodes == ["full"]
    with pytest.raises(PlanUnsupported, match="unknown plan type"):
        select_plan("fast", halves, group, L, E, DIGEST)


def test_signature_covers_type_nodes_ranges_and_heads() -> None:
    base = PlanChoice(PIPELINE, (Stage("a", 0, 2), Stage("b", 2, 4)), DIGEST)
    assert base.signature == PlanChoice(PIPELINE, (Stage("a", 0, 2), Stage("b", 2, 4)), DIGEST).signature
    others = [PlanChoice(STATIC_DELEGATE, base.stages, DIGEST),
              PlanChoice(PIPELINE, (Stage("a", 0, 1), Stage("b", 1, 4)), DIGEST),
              PlanChoice(PIPELINE, (Stage("c", 0, 2), Stage("b", 2, 4)), DIGEST),
              PlanChoice(PIPELINE, base.stages, b"\x08" * 32)]
    assert len({base.signature, *(o.signature for o in others)}) == 5


def test_plan_liveness_and_cache_bound() -> None:
    choice = PlanChoice(PIPELINE, (Stage("a", 0, 2), Stage("b", 2, 4)), DIGEST)
    live = [Candidate("a", layers(0, 1), 0.1), Candidate("b", layers(2, 3), 0.1)]
    assert is_plan_live(choice, live, E)
    assert not is_plan_live(choice, live[:1], E)
    assert not is_plan_live(choice, [live[0], Candidate("b", layers(2), 0.1)], E)
    cache = PlanCache(max_entries=2)
    keys = [(AUTO, True, frozenset({(0, i)}), DIGEST) for i in range(3)]
    for k in keys:
        cache.put(k, choice)
    assert cache.get(keys[0]) is None and cache.get(keys[2]) is choice and len(cache.entries) == 2


@given(st.floats(min_value=0, max_value=10, allow_nan=False))
def test_temperature_round_trips_exactly(t: float) -> None:
    assert decode_temperature(encode_temperature(t)) == t


@pytest.mark.parametrize("bad", [-0.5, 10.5, math.inf, math.nan])
def test_invalid_temperature(bad: float) -> None:
    with pytest.raises(InvalidExpertMessage):
        decode_temperature(encode_temperature(bad))


@given(st.binary(min_size=16, max_size=16), st.integers(0, 3), st.integers(1, 4), st.booleans(), st.integers(0, 20),
       st.integers(1, 4))
def test_stage_request_round_trips(session: bytes, first: int, span: int, cached: bool, start: int, rows: int) -> None:
    req = StageRequest(session, DIGEST, first, first + span, cached, start, 2, rows, b"\0" * (rows * 8), False)
    assert codec.decode(StageRequest, codec.encode(req)) == req


def test_invalid_stage_requests() -> None:
    ok = StageRequest(b"s" * 16, DIGEST, 0, 2, True, 0, 2, 1, b"\0" * 8, False)
    validate_stage_request(ok, 4, 2, 8)
    for bad in (StageRequest(b"s" * 16, DIGEST, 2, 2, True, 0, 2, 1, b"\0" * 8, False),
                StageRequest(b"s" * 16, DIGEST, 0, 5, True, 0, 2, 1, b"\0" * 8, False),
                StageRequest(b"s" * 16, DIGEST, 0, 2, True, 0, 3, 1, b"\0" * 8, False),
                StageRequest(b"s" * 16, DIGEST, 0, 2, True, 8, 2, 1, b"\0" * 8, False),
                StageRequest(b"s" * 16, DIGEST, 0, 2, True, 0, 2, 9, b"\0" * 72, False),
                StageRequest(b"s" * 16, DIGEST, 0, 0, False, 0, 0, 1, b"\0" * 8, True)):
        with pytest.raises(InvalidExpertMessage):
            validate_stage_request(bad, 4, 2, 8)
    with pytest.raises(codec.EncodingError):
        codec.encode(StageRequest(b"s" * 15, DIGEST, 0, 2, True, 0, 2, 1, b"\0" * 8, False))


def test_delegate_request_needs_a_prompt() -> None:
    req = DelegateRequest(DIGEST, (1, 2), 3, encode_temperature(0.8), 42, True)
    assert codec.decode(DelegateRequest, codec.encode(req)) == req
    with pytest.raises(codec.EncodingError):
        codec.encode(DelegateRequest(DIGEST, (), 3, 0, 0, True))


def test_invalid_uses() -> None:
    ok = (ExpertUse(0, 1, 0, "a"), ExpertUse(0, 1, 2, ""))
    validate_uses(ok, range(1, 2), 1, E, 2, rows=1)
    for bad in ((ExpertUse(0, 0, 0, "a"),), (ExpertUse(1, 1, 0, "a"),), (ExpertUse(0, 1, E, "a"),),
                (ExpertUse(0, 1, 0, "a"), ExpertUse(0, 1, 0, "b"))):
        with pytest.raises(InvalidExpertMessage):
            validate_uses(bad, range(1, 2), 1, E, 2)
    with pytest.raises(InvalidExpertMessage, match="more routed experts"):
        validate_uses((*ok, ExpertUse(0, 1, 1, "c")), range(1, 2), 1, E, 2, rows=1)


@given(st.lists(st.floats(-50, 50, allow_nan=False), min_size=2, max_size=16), st.data())
def test_greedy_check_accepts_near_ties_and_catches_others(row: list[float], data: st.DataObject) -> None:
    """A token within tolerance of the maximum logit passes (an honest delegate's near-tie);
    one below it by more is caught, at its step."""
    logits = torch.tensor([row, row])  # [2, V]
    best = max(row)
    scale = max(1.0, max(abs(v) for v in row))
    token = data.draw(st.integers(0, len(row) - 1))
    ok = row[token] >= best - 1e-4 * scale
    argmax = int(torch.argmax(logits[0]))
    assert find_wrong_greedy_token(logits, [argmax, argmax], 1e-4) is None
    assert find_wrong_greedy_token(logits, [argmax, token], 1e-4) == (None if ok else 1)
    tied = torch.tensor([[1.0, 1.0 - 1e-6, -3.0]])  # float noise between two near-equal logits
    assert find_wrong_greedy_token(tied, [1], 1e-4) is None
    assert find_wrong_greedy_token(tied, [2], 1e-4) == 0


def test_a_delegation_ends_before_a_persistent_stream_gives_up_on_its_answer() -> None:
    """A requester that gave up on a delegation keeps its stream until the late answer; the
    channel closes only after MAX_ANSWER_WAIT_S, which must outlast the delegate's handler."""
    from node.experts.plan_wire import DELEGATE_HANDLER_TIMEOUT_S
    from p2p.libp2p_channels import MAX_ANSWER_WAIT_S

    assert DELEGATE_HANDLER_TIMEOUT_S < MAX_ANSWER_WAIT_S
