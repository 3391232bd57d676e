"""Tendermint state machine (consensus/tendermint.py), one test per rule of Algorithm 1.

Line numbers refer to "The latest gossip on BFT consensus" (Buchman, Kwon, Milosevic, 2018).
These tests drive one machine by hand; test_tendermint_network.py runs four together.
"""

from __future__ import annotations

import dataclasses

import pytest

from chain.commit import (
    make_commit,
    sign_vote,
    validate_evidence,
    verify_commit,
)
from chain.crypto import PrivateKey
from chain.types import ValidatorSet, make_validator_set
from chain.votes import NIL, STEP_PRECOMMIT, STEP_PREVOTE, SignedVote, Vote
from consensus.messages import Proposal, SignedProposal, sign_proposal
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
        members = [(k.public_key, p) for k, p in zip(keys, powers, strict=True)]
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


# --- skipping votes that cannot fire a rule --------------------------------------------------


def test_the_suite_checks_every_skipped_vote() -> None:
    assert Tendermint.check_skipped_votes  # tests/conftest.py sets BLYAN_CHECK_SKIPPED_VOTES


def test_a_skipped_vote_that_would_fire_a_rule_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from consensus import voteset

    c = Cluster()
    c.machine.start()
    c.machine.on_proposal(c.proposal(0, A), True)  # we prevote A
    real_add = voteset.VoteSet.add
    monkeypatch.setattr(voteset.VoteSet, "add",
                        lambda self, signed, round: dataclasses.replace(real_add(self, signed, round), decisive=False))
    c.votes(2, 0, STEP_PREVOTE, A)
    with pytest.raises(RuntimeError, match="not decisive fired a rule"):
        c.votes(3, 0, STEP_PREVOTE, A)  # the third is a polka: lines 36-41 would precommit A


def test_without_the_check_only_decisive_votes_run_the_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Tendermint, "check_skipped_votes", False)
    c = Cluster()
    c.machine.start()
    c.machine.on_proposal(c.proposal(0, A), True)
    runs = []
    real = c.machine._apply_rules
    monkeypatch.setattr(c.machine, "_apply_rules", lambda: runs.append(1) or real())
    c.votes(3, 0, STEP_PREVOTE, A)
    assert len(runs) == 1  # the third prevote, the polka
    assert c.machine.state.locked_value == A
