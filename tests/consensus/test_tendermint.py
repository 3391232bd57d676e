"""Tendermint state machine (consensus/tendermint.py), one test per rule of Algorithm 1.

Line numbers refer to "The latest gossip on BFT consensus" (Buchman, Kwon, Milosevic, 2018).
The unit tests drive one machine by hand; the harness at the end runs four machines with real
Ed25519 keys, delivering every message instantly and firing timeouts in deadline order.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.commit import (
    make_commit,
    sign_vote,
    validate_evidence,
    validate_signed_vote,
    verify_commit,
)
from chain.crypto import PrivateKey, sha256
from chain.types import ValidatorSet, make_validator_set
from chain.votes import NIL, STEP_PRECOMMIT, STEP_PREVOTE, CommitCertificate, SignedVote, Vote
from consensus.messages import Proposal, SignedProposal, sign_proposal, validate_signed_proposal
from consensus.proposer import compute_proposer
from consensus.tendermint import (
    Action,
    BroadcastProposal,
    BroadcastVote,
    Decide,
    ReportEvidence,
    RequestValue,
    ScheduleTimeout,
    Step,
    Tendermint,
    TendermintConfig,
    TimeoutKind,
)

NET = "test-net"
CHAIN = 0
H = 1
A = b"\xaa" * 32
B = b"\xbb" * 32
CONFIG = TendermintConfig.for_tests()


# --- helpers for driving one machine -------------------------------------------------------


class Cluster:
    """Four equal validators; `machine` belongs to `me`, the others' messages are forged here."""

    def __init__(self, me_is_proposer_of: int | None = None, powers: tuple[int, ...] = (10,) * 4):
        keys = [PrivateKey.from_label(f"tendermint-{i}") for i in range(len(powers))]
        members = [(k.public_key, p) for k, p in zip(keys, powers)]
        self.vals: ValidatorSet = make_validator_set(0, members)
        self.keys = {k.address: k for k in keys}
        if me_is_proposer_of is None:  # a validator that proposes in none of rounds 0..2
            busy = {compute_proposer(self.vals, H, r) for r in range(3)}
            self.me = next(v.address for v in self.vals.validators if v.address not in busy)
        else:
            self.me = compute_proposer(self.vals, H, me_is_proposer_of)
        self.others = [v.address for v in self.vals.validators if v.address != self.me]
        self.machine = Tendermint(CHAIN, H, self.vals, self.me, CONFIG)

    def proposal(self, round: int, block: bytes, pol_round: int = -1) -> SignedProposal:
        proposer = compute_proposer(self.vals, H, round)
        proposal = Proposal(CHAIN, H, round, block, pol_round, proposer)
        return sign_proposal(self.keys[proposer], NET, proposal)

    def vote(self, who: bytes, round: int, step: int, block: bytes) -> SignedVote:
        return sign_vote(self.keys[who], NET, Vote(CHAIN, H, round, step, block, who))

    def votes(self, n: int, round: int, step: int, block: bytes) -> list[Action]:
        """Deliver `step` votes for `block` from the first n other validators."""
        out: list[Action] = []
        for who in self.others[:n]:
            out += self.machine.on_vote(self.vote(who, round, step, block))
        return out

    def lock_on(self, block: bytes, round: int = 0) -> None:
        """Bring the machine to round `round` + 1 with lockedValue = block, lockedRound = round."""
        m = self.machine
        if m.step == Step.NEW:
            m.start()
        if m.round < round:
            self.votes(2, round, STEP_PREVOTE, NIL)  # f+1 in `round`: jump there (line 55)
        m.on_proposal(self.proposal(round, block), True)
        self.votes(3, round, STEP_PREVOTE, block)
        assert m.state.locked_value == block and m.state.locked_round == round
        m.on_timeout(TimeoutKind.PRECOMMIT, H, round)
        assert m.round == round + 1


def votes_in(actions: list[Action]) -> list[Vote]:
    return [a.vote for a in actions if isinstance(a, BroadcastVote)]


def timeouts_in(actions: list[Action]) -> list[ScheduleTimeout]:
    return [a for a in actions if isinstance(a, ScheduleTimeout)]


def prevote(c: Cluster, round: int, block: bytes) -> Vote:
    return Vote(CHAIN, H, round, STEP_PREVOTE, block, c.me)


def precommit(c: Cluster, round: int, block: bytes) -> Vote:
    return Vote(CHAIN, H, round, STEP_PRECOMMIT, block, c.me)


# --- lines 11-21: StartRound ---------------------------------------------------------------


def test_line11_start_round_schedules_timeout_propose() -> None:
    c = Cluster()
    actions = c.machine.start()
    assert actions == [ScheduleTimeout(TimeoutKind.PROPOSE, H, 0, CONFIG.timeout_propose_ms)]
    assert (c.machine.round, c.machine.step) == (0, Step.PROPOSE)


def test_line16_proposer_requests_value_then_proposes() -> None:
    c = Cluster(me_is_proposer_of=0)
    actions = c.machine.start()
    assert RequestValue(H, 0) in actions
    assert c.machine.on_value(A) == [BroadcastProposal(Proposal(CHAIN, H, 0, A, -1, c.me))]
    assert c.machine.on_value(B) == []  # one proposal per round


def test_line15_proposer_reproposes_valid_value_with_valid_round() -> None:
    c = Cluster(me_is_proposer_of=1)
    m = c.machine
    m.start()
    m.on_timeout(TimeoutKind.PROPOSE, H, 0)  # prevote nil in round 0
    m.on_proposal(c.proposal(0, A), True)
    c.votes(3, 0, STEP_PREVOTE, A)  # line 36: lock, validValue = A, validRound = 0
    assert (m.state.valid_value, m.state.valid_round) == (A, 0)
    actions = m.on_timeout(TimeoutKind.PRECOMMIT, H, 0)
    assert BroadcastProposal(Proposal(CHAIN, H, 1, A, 0, c.me)) in actions
    assert not any(isinstance(a, RequestValue) for a in actions)


def test_on_value_for_a_past_round_is_ignored() -> None:
    c = Cluster(me_is_proposer_of=0)
    c.machine.start()
    c.machine.on_timeout(TimeoutKind.PRECOMMIT, H, 0)
    assert c.machine.on_value(A) == []


# --- lines 22-27 ---------------------------------------------------------------------------


def test_line22_prevote_proposal_when_unlocked() -> None:
    c = Cluster()
    c.machine.start()
    actions = c.machine.on_proposal(c.proposal(0, A), True)
    assert votes_in(actions) == [prevote(c, 0, A)]
    assert c.machine.step == Step.PREVOTE


def test_line22_prevote_nil_when_invalid() -> None:
    c = Cluster()
    c.machine.start()
    actions = c.machine.on_proposal(c.proposal(0, A), False)
    assert votes_in(actions) == [prevote(c, 0, NIL)]


def test_line22_prevote_locked_value_when_reproposed() -> None:
    c = Cluster()
    c.lock_on(A, round=0)
    actions = c.machine.on_proposal(c.proposal(1, A), True)
    assert votes_in(actions) == [prevote(c, 1, A)]


def test_locked_validator_does_not_prevote_other_value() -> None:
    c = Cluster()
    c.lock_on(A, round=0)
    actions = c.machine.on_proposal(c.proposal(1, B), True)
    assert votes_in(actions) == [prevote(c, 1, NIL)]
    assert c.machine.state.locked_value == A


def test_line22_proposal_before_start_acts_at_start() -> None:
    c = Cluster()
    assert c.machine.on_proposal(c.proposal(0, A), True) == []
    assert votes_in(c.machine.start()) == [prevote(c, 0, A)]


# --- lines 28-33 ---------------------------------------------------------------------------


def test_line28_prevote_for_pol_value_when_locked_round_le_vr() -> None:
    c = Cluster()
    c.lock_on(A, round=0)
    m = c.machine
    c.votes(2, 2, STEP_PREVOTE, NIL)  # move to round 2 (line 55)
    assert m.round == 2
    c.votes(3, 1, STEP_PREVOTE, B)  # a polka for B in round 1, which we missed
    actions = m.on_proposal(c.proposal(2, B, pol_round=1), True)
    assert votes_in(actions) == [prevote(c, 2, B)]


def test_line28_prevote_nil_when_locked_round_gt_vr() -> None:
    c = Cluster()
    c.votes(3, 0, STEP_PREVOTE, B)  # a polka for B in round 0, before we start
    c.machine.start()
    c.machine.on_timeout(TimeoutKind.PRECOMMIT, H, 0)
    c.lock_on(A, round=1)
    c.votes(2, 2, STEP_PREVOTE, NIL)
    actions = c.machine.on_proposal(c.proposal(2, B, pol_round=0), True)
    assert votes_in(actions) == [prevote(c, 2, NIL)]


def test_line28_prevote_nil_for_invalid_pol_value() -> None:
    c = Cluster()
    c.machine.start()
    c.machine.on_timeout(TimeoutKind.PRECOMMIT, H, 0)
    c.votes(3, 0, STEP_PREVOTE, B)
    actions = c.machine.on_proposal(c.proposal(1, B, pol_round=0), False)
    assert votes_in(actions) == [prevote(c, 1, NIL)]


def test_line28_waits_for_the_polka_then_prevotes() -> None:
    c = Cluster()
    c.machine.start()
    c.machine.on_timeout(TimeoutKind.PRECOMMIT, H, 0)
    assert c.machine.on_proposal(c.proposal(1, B, pol_round=0), True) == []
    assert c.votes(2, 0, STEP_PREVOTE, B) == []
    actions = c.machine.on_vote(c.vote(c.others[2], 0, STEP_PREVOTE, B))
    assert votes_in(actions) == [prevote(c, 1, B)]


# --- lines 34-35 ---------------------------------------------------------------------------


def test_line34_timeout_prevote_on_any_prevote_quorum() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    m.on_proposal(c.proposal(0, A), True)
    actions = m.on_vote(c.vote(c.others[0], 0, STEP_PREVOTE, A))
    actions += m.on_vote(c.vote(c.others[1], 0, STEP_PREVOTE, NIL))
    assert timeouts_in(actions) == []
    actions = m.on_vote(c.vote(c.others[2], 0, STEP_PREVOTE, B))
    expected = ScheduleTimeout(TimeoutKind.PREVOTE, H, 0, CONFIG.timeout_prevote_ms)
    assert timeouts_in(actions) == [expected]
    assert votes_in(actions) == []
    assert m.on_vote(c.vote(c.me, 0, STEP_PREVOTE, A)) == []  # only the first time


# --- lines 36-43 ---------------------------------------------------------------------------


def test_line36_lock_and_precommit_on_polka() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    m.on_proposal(c.proposal(0, A), True)
    actions = c.votes(3, 0, STEP_PREVOTE, A)
    assert votes_in(actions) == [precommit(c, 0, A)]
    s = m.state
    assert (s.locked_value, s.locked_round, s.valid_value, s.valid_round) == (A, 0, A, 0)
    assert m.step == Step.PRECOMMIT


def test_line36_polka_before_proposal_fires_on_proposal() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    m.on_timeout(TimeoutKind.PROPOSE, H, 0)  # prevote nil, step prevote
    assert votes_in(c.votes(3, 0, STEP_PREVOTE, A)) == []
    assert m.get_wanted_proposals() == [(0, A)]
    actions = m.on_proposal(c.proposal(0, A), True)
    assert votes_in(actions) == [precommit(c, 0, A)]
    assert m.state.locked_value == A
    assert m.get_wanted_proposals() == []


def test_line36_polka_counts_an_equivocators_vote_for_the_proposed_block() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    m.on_proposal(c.proposal(0, A), True)
    cheat = c.others[0]
    m.on_vote(c.vote(cheat, 0, STEP_PREVOTE, NIL))
    c.votes(3, 0, STEP_PREVOTE, A)  # cheat's A is its second vote, others[1] and [2] vote A
    assert m.state.locked_value == A and m.votes.get_power(0, STEP_PREVOTE, A) == 30


def test_line36_in_precommit_step_sets_valid_value_without_locking() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    m.on_timeout(TimeoutKind.PROPOSE, H, 0)
    m.on_timeout(TimeoutKind.PREVOTE, H, 0)  # precommit nil
    m.on_proposal(c.proposal(0, A), True)
    assert votes_in(c.votes(3, 0, STEP_PREVOTE, A)) == []
    s = m.state
    assert (s.locked_value, s.locked_round, s.valid_value, s.valid_round) == (None, -1, A, 0)


def test_line36_no_lock_on_polka_for_invalid_block() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    m.on_proposal(c.proposal(0, A), False)
    assert votes_in(c.votes(3, 0, STEP_PREVOTE, A)) == []
    assert m.state.locked_value is None and m.step == Step.PREVOTE


# --- lines 44-48 ---------------------------------------------------------------------------


def test_line44_precommit_nil_on_nil_polka() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    m.on_timeout(TimeoutKind.PROPOSE, H, 0)
    actions = c.votes(3, 0, STEP_PREVOTE, NIL)
    assert votes_in(actions) == [precommit(c, 0, NIL)]
    assert m.step == Step.PRECOMMIT and m.state.locked_value is None


def test_line47_timeout_precommit_on_any_precommit_quorum() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    actions = c.machine.on_vote(c.vote(c.others[0], 0, STEP_PRECOMMIT, A))
    actions += c.machine.on_vote(c.vote(c.others[1], 0, STEP_PRECOMMIT, NIL))
    actions += c.machine.on_vote(c.vote(c.others[2], 0, STEP_PRECOMMIT, B))
    expected = ScheduleTimeout(TimeoutKind.PRECOMMIT, H, 0, CONFIG.timeout_precommit_ms)
    assert timeouts_in(actions) == [expected]
    assert m.step == Step.PROPOSE  # whatever the step
    assert m.on_vote(c.vote(c.me, 0, STEP_PRECOMMIT, NIL)) == []  # only the first time


# --- lines 49-54 ---------------------------------------------------------------------------


def test_line49_decide_on_precommit_quorum() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    m.on_proposal(c.proposal(0, A), True)
    c.votes(3, 0, STEP_PREVOTE, A)
    actions = c.votes(3, 0, STEP_PRECOMMIT, A)
    decides = [a for a in actions if isinstance(a, Decide)]
    assert len(decides) == 1
    d = decides[0]
    assert (d.height, d.round, d.block_hash) == (H, 0, A)
    verify_commit(CHAIN, H, A, d.commit, c.vals, NET)
    assert m.step == Step.COMMIT and m.decision == A
    assert m.on_vote(c.vote(c.me, 0, STEP_PRECOMMIT, A)) == []
    assert m.on_timeout(TimeoutKind.PRECOMMIT, H, 0) == []


def test_line49_decide_when_proposal_arrives_after_precommits() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    assert not any(isinstance(a, Decide) for a in c.votes(3, 0, STEP_PRECOMMIT, A))
    assert m.get_wanted_proposals() == [(0, A)]
    actions = m.on_proposal(c.proposal(0, A), True)
    assert [a.block_hash for a in actions if isinstance(a, Decide)] == [A]


def test_line49_decide_for_an_earlier_round() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    m.on_proposal(c.proposal(0, A), True)
    c.votes(2, 1, STEP_PREVOTE, NIL)  # f+1 in round 1: we leave round 0 (line 55)
    assert m.round == 1
    actions = c.votes(3, 0, STEP_PRECOMMIT, A)
    assert [(a.round, a.block_hash) for a in actions if isinstance(a, Decide)] == [(0, A)]


def test_line49_no_decision_for_invalid_block() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    m.on_proposal(c.proposal(0, A), False)
    actions = c.votes(3, 0, STEP_PRECOMMIT, A)
    assert not any(isinstance(a, Decide) for a in actions)
    assert m.decision is None


def test_line49_catch_up_from_a_commit_certificate() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    m.on_timeout(TimeoutKind.PROPOSE, H, 0)
    cheat = c.others[0]
    m.on_vote(c.vote(cheat, 0, STEP_PRECOMMIT, NIL))  # the equivocator's other vote came first
    precommits = [c.vote(who, 0, STEP_PRECOMMIT, A) for who in c.others]
    assert not any(isinstance(a, Decide) for v in precommits[1:] for a in m.on_vote(v))
    commit = make_commit(precommits)
    assert m.on_commit(commit) == [Decide(H, 0, A, commit)]
    assert m.decision == A and m.step == Step.COMMIT
    assert m.on_commit(commit) == []


# --- lines 55-56 ---------------------------------------------------------------------------


def test_line55_skip_to_higher_round_on_f_plus_1() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    assert c.votes(1, 3, STEP_PREVOTE, NIL) == []
    assert m.round == 0
    actions = c.votes(2, 3, STEP_PRECOMMIT, NIL)
    assert m.round == 3 and m.step == Step.PROPOSE
    delay = CONFIG.get_timeout_ms(TimeoutKind.PROPOSE, 3)
    assert ScheduleTimeout(TimeoutKind.PROPOSE, H, 3, delay) in actions


def test_line55_proposal_counts_as_a_message_of_its_round() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    proposer = compute_proposer(c.vals, H, 2)
    voter = next(a for a in c.others if a != proposer)
    m.on_vote(c.vote(voter, 2, STEP_PREVOTE, B))
    actions = m.on_proposal(c.proposal(2, B), True)
    assert m.round == 2
    assert votes_in(actions) == [prevote(c, 2, B)]  # and line 22 fires in the new round


def test_line55_far_future_round_ignored() -> None:
    c = Cluster()
    c.machine.start()
    far = CONFIG.max_round_ahead + 1
    c.votes(3, far, STEP_PREVOTE, NIL)
    assert c.machine.on_proposal(c.proposal(far, A), True) == []
    assert c.machine.proposal_for_round(far) is None
    assert c.machine.round == 0


# --- lines 57-67: timeouts -----------------------------------------------------------------


def test_line57_timeout_propose_prevotes_nil() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    actions = m.on_timeout(TimeoutKind.PROPOSE, H, 0)
    assert votes_in(actions) == [prevote(c, 0, NIL)]
    assert m.step == Step.PREVOTE
    assert m.on_proposal(c.proposal(0, A), True) == []  # too late: never a second prevote


def test_line57_stale_timeouts_ignored() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    m.on_proposal(c.proposal(0, A), True)
    assert m.on_timeout(TimeoutKind.PROPOSE, H, 0) == []  # step is prevote already
    assert m.on_timeout(TimeoutKind.PROPOSE, H + 1, 0) == []
    assert m.on_timeout(TimeoutKind.PREVOTE, H, 1) == []
    assert m.on_timeout(TimeoutKind.PRECOMMIT, H, 1) == []
    assert m.round == 0


def test_line61_timeout_prevote_precommits_nil() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    m.on_proposal(c.proposal(0, A), True)
    assert m.on_timeout(TimeoutKind.PREVOTE, H, 0) == [BroadcastVote(precommit(c, 0, NIL))]
    assert m.step == Step.PRECOMMIT
    assert m.on_timeout(TimeoutKind.PREVOTE, H, 0) == []


def test_line65_timeout_precommit_next_round() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    actions = m.on_timeout(TimeoutKind.PRECOMMIT, H, 0)
    assert (m.round, m.step) == (1, Step.PROPOSE)
    assert timeouts_in(actions) == [
        ScheduleTimeout(TimeoutKind.PROPOSE, H, 1, CONFIG.get_timeout_ms(TimeoutKind.PROPOSE, 1))
    ]


def test_timeouts_grow_with_round() -> None:
    cfg = TendermintConfig(timeout_propose_ms=3000, timeout_prevote_ms=1000,
                           timeout_precommit_ms=1200, timeout_delta_ms=500)
    bases = {TimeoutKind.PROPOSE: 3000, TimeoutKind.PREVOTE: 1000, TimeoutKind.PRECOMMIT: 1200}
    for kind, base in bases.items():
        assert [cfg.get_timeout_ms(kind, r) for r in range(4)] == [base + 500 * r for r in range(4)]
    c = Cluster()
    c.machine.start()
    delays = [
        timeouts_in(c.machine.on_timeout(TimeoutKind.PRECOMMIT, H, r))[0].delay_ms for r in range(3)
    ]
    assert delays[0] < delays[1] < delays[2]


def test_invalid_config_rejected() -> None:
    with pytest.raises(ValueError):
        TendermintConfig(timeout_propose_ms=0)
    with pytest.raises(ValueError):
        TendermintConfig(timeout_delta_ms=-1)


# --- evidence, bad input, observers --------------------------------------------------------


def test_equivocation_reported() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    cheat = c.others[0]
    assert m.on_vote(c.vote(cheat, 0, STEP_PREVOTE, A)) == []
    actions = m.on_vote(c.vote(cheat, 0, STEP_PREVOTE, B))
    reports = [a for a in actions if isinstance(a, ReportEvidence)]
    assert len(reports) == 1
    validate_evidence(reports[0].evidence, NET, c.vals)
    assert m.votes.get_power(0, STEP_PREVOTE, B) == 0


def test_proposal_from_wrong_proposer_ignored() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    impostor = next(a for a in c.others if a != compute_proposer(c.vals, H, 0))
    sp = sign_proposal(c.keys[impostor], NET, Proposal(CHAIN, H, 0, A, -1, impostor))
    assert m.on_proposal(sp, True) == []
    assert m.proposal_for_round(0) is None


def test_second_proposal_for_a_round_ignored_unless_a_quorum_names_it() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    m.on_proposal(c.proposal(0, A), True)
    assert m.on_proposal(c.proposal(0, B), True) == []
    assert m.proposal_for_round(0).block_hash == A
    c.votes(3, 0, STEP_PRECOMMIT, B)  # the others saw B: follow the quorum
    actions = m.on_proposal(c.proposal(0, B), True)
    assert [a.block_hash for a in actions if isinstance(a, Decide)] == [B]


def test_votes_for_another_height_ignored() -> None:
    c = Cluster()
    m = c.machine
    m.start()
    for who in c.others:
        sv = sign_vote(c.keys[who], NET, Vote(CHAIN, H + 1, 0, STEP_PREVOTE, NIL, who))
        assert m.on_vote(sv) == []
    assert len(m.votes) == 0


def test_observer_decides_without_voting() -> None:
    c = Cluster()
    m = Tendermint(CHAIN, H, c.vals, None, CONFIG)
    c.machine = m
    c.others = [v.address for v in c.vals.validators]
    actions = m.start() + m.on_proposal(c.proposal(0, A), True)
    actions += c.votes(4, 0, STEP_PREVOTE, A) + c.votes(4, 0, STEP_PRECOMMIT, A)
    assert votes_in(actions) == []
    assert m.decision == A


# --- a tiny network: four machines, instant delivery, timeouts in deadline order -----------


def block_hash_for(height: int, round: int, proposer: bytes) -> bytes:
    return sha256(b"block" + height.to_bytes(8, "big") + round.to_bytes(4, "big") + proposer)


@dataclass
class Network:
    """The engines of all nodes in one loop: sign, check, gossip (to the sender too), keep time.

    Messages and timeouts share one queue ordered by virtual time. With `seed`, each message
    takes a random latency of up to `max_latency_ms`; without, delivery is instant and in order.
    """

    powers: tuple[int, ...] = (10, 10, 10, 10)
    silent: frozenset[int] = frozenset()
    seed: int | None = None
    max_latency_ms: int = 0
    invalid: frozenset[bytes] = frozenset()
    equivocating_proposer: bool = False
    double_voters: frozenset[int] = frozenset()
    height: int = H
    now: int = 0
    machines: dict[bytes, Tendermint] = field(default_factory=dict)
    decisions: dict[bytes, Decide] = field(default_factory=dict)
    evidence: list[ReportEvidence] = field(default_factory=list)
    signed: dict[tuple[bytes, int, int], bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ks = [PrivateKey.from_label(f"net-{i}") for i in range(len(self.powers))]
        self.vals = make_validator_set(0, [(k.public_key, p) for k, p in zip(ks, self.powers)])
        self.keys = {k.address: k for k in ks}
        self.order = [v.address for v in self.vals.validators]
        self.machines = {
            a: Tendermint(CHAIN, self.height, self.vals, a, CONFIG)
            for i, a in enumerate(self.order) if i not in self.silent
        }
        self.queue: list[tuple[int, int, bytes, object]] = []
        self.seq = itertools.count()
        self.rng = random.Random(self.seed)

    def proposer(self, round: int) -> int:
        return self.order.index(compute_proposer(self.vals, self.height, round))

    def push(self, delay_ms: int, to: bytes, item: object) -> None:
        heapq.heappush(self.queue, (self.now + delay_ms, next(self.seq), to, item))

    def gossip(self, msg: object) -> None:
        for to in self.machines:
            self.push(self.rng.randint(0, self.max_latency_ms), to, msg)

    def handle(self, me: bytes, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, RequestValue):
                self.push(0, me, ("value", block_hash_for(a.height, a.round, me)))
            elif isinstance(a, BroadcastProposal):
                self.broadcast_proposal(me, a.proposal)
            elif isinstance(a, BroadcastVote):
                self.broadcast_vote(me, a.vote)
            elif isinstance(a, ScheduleTimeout):
                self.push(a.delay_ms, me, a)
            elif isinstance(a, Decide):
                verify_commit(CHAIN, a.height, a.block_hash, a.commit, self.vals, NET)
                self.decisions[me] = a
                self.gossip(a.commit)  # what block sync would serve to peers still deciding
            else:
                self.evidence.append(a)

    def broadcast_vote(self, me: bytes, v: Vote) -> None:
        earlier = self.signed.setdefault((me, v.round, v.step), v.block_hash)
        assert earlier == v.block_hash, "the machine asked for a double sign"
        sv = sign_vote(self.keys[me], NET, v)
        if self.order.index(me) not in self.double_voters:
            self.gossip(sv)
            return
        other = replace(v, block_hash=B if v.block_hash == NIL else NIL)
        twin = sign_vote(self.keys[me], NET, other)
        for i, to in enumerate(self.machines):  # a Byzantine validator: each half sees one first
            first, second = (sv, twin) if i % 2 else (twin, sv)
            delay = self.rng.randint(0, self.max_latency_ms)
            self.push(delay, to, first)
            self.push(delay + self.max_latency_ms + 1, to, second)

    def broadcast_proposal(self, me: bytes, proposal: Proposal) -> None:
        sp = sign_proposal(self.keys[me], NET, proposal)
        validate_signed_proposal(sp, NET, self.vals)
        if not (self.equivocating_proposer and proposal.round == 0):
            self.gossip(sp)
            return
        other = replace(proposal, block_hash=sha256(b"other" + proposal.block_hash))
        twin = sign_proposal(self.keys[me], NET, other)
        for i, to in enumerate(self.machines):  # half the nodes see one block, half the other
            self.push(self.rng.randint(0, self.max_latency_ms), to, sp if i % 2 else twin)

    def deliver(self, to: bytes, item: object) -> None:
        m = self.machines[to]
        if isinstance(item, tuple):
            out = m.on_value(item[1])
        elif isinstance(item, ScheduleTimeout):
            out = m.on_timeout(item.kind, item.height, item.round)
        elif isinstance(item, SignedProposal):
            out = m.on_proposal(item, item.proposal.block_hash not in self.invalid)
        elif isinstance(item, CommitCertificate):
            verify_commit(CHAIN, item.height, item.block_hash, item, self.vals, NET)
            out = m.on_commit(item)
        else:
            assert isinstance(item, SignedVote)
            validate_signed_vote(item, NET, self.vals)
            out = m.on_vote(item)
        self.handle(to, out)

    def run(self, max_events: int = 20_000, drain: bool = False) -> dict[bytes, Decide]:
        """Until every machine decided (then, with `drain`, until nothing is left to deliver)."""
        for addr, m in self.machines.items():
            self.handle(addr, m.start())
        for _ in range(max_events):
            if not self.queue or (len(self.decisions) == len(self.machines) and not drain):
                break
            self.now, _, to, item = heapq.heappop(self.queue)
            self.deliver(to, item)
        return self.decisions


def test_network_all_decide_same_block_in_round_0() -> None:
    net = Network()
    decisions = net.run()
    assert len(decisions) == 4
    proposer = net.vals.validators[net.proposer(0)].address
    expected = (0, block_hash_for(H, 0, proposer))
    assert {(d.round, d.block_hash) for d in decisions.values()} == {expected}
    assert net.now == 0  # no timeout was needed
    assert net.evidence == []


def test_network_one_silent_validator_still_decides() -> None:
    probe = Network()
    silent = next(i for i in range(4) if i != probe.proposer(0))
    net = Network(silent=frozenset({silent}))
    decisions = net.run()
    assert len(decisions) == 3
    assert {(d.round, d.block_hash) for d in decisions.values()} == {
        (0, block_hash_for(H, 0, net.vals.validators[net.proposer(0)].address))
    }


def test_network_silent_proposer_decides_in_round_1_after_timeouts() -> None:
    probe = Network()
    net = Network(silent=frozenset({probe.proposer(0)}))
    decisions = net.run()
    assert len(decisions) == 3
    proposer_1 = net.vals.validators[net.proposer(1)].address
    expected = (1, block_hash_for(H, 1, proposer_1))
    assert {(d.round, d.block_hash) for d in decisions.values()} == {expected}
    assert net.now >= CONFIG.timeout_propose_ms  # round 0 ended by timeouts


def test_network_invalid_proposal_moves_to_next_round() -> None:
    probe = Network()
    bad = block_hash_for(H, 0, probe.vals.validators[probe.proposer(0)].address)
    net = Network(invalid=frozenset({bad}))
    decisions = net.run()
    assert len(decisions) == 4
    assert {d.round for d in decisions.values()} == {1}
    assert bad not in {d.block_hash for d in decisions.values()}


@pytest.mark.parametrize("seed", range(12))
def test_network_random_delivery_order_agrees(seed: int) -> None:
    powers = (10, 20, 25, 25)  # any one validator holds less than 1/3
    probe = Network(powers=powers)
    silent = frozenset({probe.proposer(0)}) if seed % 3 == 0 else frozenset()
    net = Network(seed=seed, silent=silent, powers=powers)
    decisions = net.run()
    assert len(decisions) == len(net.machines)
    assert len({d.block_hash for d in decisions.values()}) == 1


def test_network_consecutive_heights_rotate_proposers() -> None:
    proposers = []
    for height in range(1, 6):
        net = Network(height=height)
        decisions = net.run()
        assert len({d.block_hash for d in decisions.values()}) == 1 and len(decisions) == 4
        proposers.append(net.proposer(0))
    assert len(set(proposers[:4])) == 4


@pytest.mark.parametrize("seed", range(8))
def test_network_random_latency_agrees_and_decides(seed: int) -> None:
    net = Network(seed=seed, max_latency_ms=700, powers=(10, 20, 25, 25))
    decisions = net.run()
    assert len(decisions) == 4
    assert len({d.block_hash for d in decisions.values()}) == 1


@pytest.mark.parametrize("seed", range(6))
def test_network_equivocating_proposer_cannot_split_the_decision(seed: int) -> None:
    net = Network(seed=seed, max_latency_ms=200 * (seed % 3), equivocating_proposer=True)
    decisions = net.run()
    assert len(decisions) == 4
    assert len({d.block_hash for d in decisions.values()}) == 1


@pytest.mark.parametrize("seed", range(4))
def test_network_double_voter_is_reported_and_cannot_split_the_decision(seed: int) -> None:
    net = Network(seed=seed, max_latency_ms=300, double_voters=frozenset({seed % 4}))
    decisions = net.run(drain=True)
    honest = [a for i, a in enumerate(net.order) if i != seed % 4]
    assert all(a in decisions for a in honest)
    assert len({decisions[a].block_hash for a in honest}) == 1
    assert net.evidence
    for report in net.evidence:
        validate_evidence(report.evidence, NET, net.vals)
        assert report.evidence.vote_a.vote.validator == net.order[seed % 4]


@settings(max_examples=40)
@given(
    seed=st.integers(0, 2**32 - 1),
    latency=st.sampled_from([0, 50, 400, 1500]),
    fault=st.sampled_from(["none", "silent", "double", "equivocating-proposer"]),
    who=st.integers(0, 3),
)
def test_network_agreement_and_termination_with_one_fault(
    seed: int, latency: int, fault: str, who: int
) -> None:
    net = Network(
        seed=seed,
        max_latency_ms=latency,
        silent=frozenset({who}) if fault == "silent" else frozenset(),
        double_voters=frozenset({who}) if fault == "double" else frozenset(),
        equivocating_proposer=fault == "equivocating-proposer",
    )
    decisions = net.run()
    faulty = {who} if fault in ("silent", "double") else set()
    honest = [a for i, a in enumerate(net.order) if i not in faulty]
    assert all(a in decisions for a in honest)
    assert len({decisions[a].block_hash for a in honest}) == 1


def test_network_replays_exactly_for_a_seed() -> None:
    runs = [Network(seed=7, max_latency_ms=900, double_voters=frozenset({2})) for _ in range(2)]
    outcomes = [
        (sorted((a, d.round, d.block_hash) for a, d in net.run().items()), net.now) for net in runs
    ]
    assert outcomes[0] == outcomes[1]
