"""Tendermint consensus for one chain and one height, as a pure event-driven state machine.

This is Algorithm 1 of "The latest gossip on BFT consensus" (Buchman, Kwon, Milosevic, 2018).
Each upon-rule is one method named after what it reacts to, with the paper's line numbers; the
paper's variables keep their meaning (`locked_value` is lockedValue_p, and so on). A value is a
block, named here by its hash; valid(v) is the flag the engine passes with each proposal, after
running the chain's block checks on it.

Inputs are the `on_*` methods (and `start`); each returns the actions the engine must carry out:

- `RequestValue`: we propose this round and hold no validValue; answer with `on_value(hash)`.
- `BroadcastProposal` / `BroadcastVote`: unsigned; the engine signs, gossips, and feeds the
  signed message back to this machine like any peer's (`on_proposal(sp, True)`, `on_vote`).
  The machine never asks for two votes in one round and step, but only the engine can keep
  that promise across a restart: it records what its key signed before sending it.
- `ScheduleTimeout`: call `on_timeout(kind, height, round)` after `delay_ms`; stale timeouts are
  harmless, so the engine never cancels one.
- `Decide`: the height is final, with its commit certificate. The machine then only collects
  votes (and evidence); the engine starts a new machine for the next height, and keeps serving
  the certificate to peers still deciding this height (they catch up through `on_commit`).
- `ReportEvidence`: a validator signed two different votes for one round and step.

Rules fire whenever their preconditions hold, whatever the order messages came in: every input
stores what it brought, then `_apply_rules` runs the rules to a fixpoint. Votes and proposals for
a later round are kept (up to `max_round_ahead` rounds ahead) and act once that round starts;
messages for another height are ignored (the engine buffers those for the next machine). The
machine reads no clock and does no IO: time reaches it only as `on_timeout`.

Two choices beyond the paper, both as in CometBFT: the proposer schedules timeoutPropose too (so a
round ends even if the engine never answers RequestValue), and a second, different proposal for a
round replaces the first only when a quorum of that round's votes names its block (so a node that
an equivocating proposer fed a different block can still follow the decision).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum

from chain.commit import make_commit
from chain.payloads import DuplicateVoteEvidence
from chain.types import ValidatorSet
from chain.votes import NIL, STEP_PRECOMMIT, STEP_PREVOTE, CommitCertificate, SignedVote, Vote
from consensus.messages import NO_POL_ROUND, Proposal, SignedProposal
from consensus.proposer import compute_proposer
from consensus.voteset import DEFAULT_MAX_ROUND_AHEAD, DEFAULT_MAX_VOTES, VoteSet


class Step(IntEnum):
    """step_p of the paper, plus NEW (not started) and COMMIT (decided)."""

    NEW = 0
    PROPOSE = 1
    PREVOTE = 2
    PRECOMMIT = 3
    COMMIT = 4


class TimeoutKind(Enum):
    PROPOSE = "propose"
    PREVOTE = "prevote"
    PRECOMMIT = "precommit"


@dataclass(frozen=True, slots=True)
class TendermintConfig:
    """Round timeouts and memory bounds. A timeout grows linearly: base + round * delta."""

    timeout_propose_ms: int = 3000
    """Wait for the round's proposal (CometBFT's default)."""
    timeout_prevote_ms: int = 1000
    """Wait, after 2f+1 prevotes of any kind, for a polka."""
    timeout_precommit_ms: int = 1000
    """Wait, after 2f+1 precommits of any kind, for a commit quorum before the next round."""
    timeout_delta_ms: int = 500
    """Added to every timeout per round, so that rounds eventually outlast network delay."""
    max_round_ahead: int = DEFAULT_MAX_ROUND_AHEAD
    """Votes and proposals further ahead of the current round are ignored."""
    max_votes: int = DEFAULT_MAX_VOTES
    """At most this many votes are kept for one height."""

    def __post_init__(self) -> None:
        timeouts = (self.timeout_propose_ms, self.timeout_prevote_ms, self.timeout_precommit_ms)
        if min(timeouts) <= 0 or self.timeout_delta_ms < 0:
            raise ValueError("timeouts must be positive and timeout_delta_ms not negative")
        if self.max_round_ahead < 1 or self.max_votes < 1:
            raise ValueError("max_round_ahead and max_votes must be positive")

    @classmethod
    def for_tests(cls) -> TendermintConfig:
        return cls(timeout_propose_ms=300, timeout_prevote_ms=100, timeout_precommit_ms=100,
                   timeout_delta_ms=50)

    def get_timeout_ms(self, kind: TimeoutKind, round: int) -> int:
        base = {
            TimeoutKind.PROPOSE: self.timeout_propose_ms,
            TimeoutKind.PREVOTE: self.timeout_prevote_ms,
            TimeoutKind.PRECOMMIT: self.timeout_precommit_ms,
        }[kind]
        return base + round * self.timeout_delta_ms


# --- actions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestValue:
    """We propose at (height, round) and hold no validValue: build a block, call on_value."""

    height: int
    round: int


@dataclass(frozen=True, slots=True)
class BroadcastProposal:
    """Sign and gossip this proposal (and deliver it back to us with valid=True)."""

    proposal: Proposal


@dataclass(frozen=True, slots=True)
class BroadcastVote:
    """Sign and gossip this vote (and deliver it back to us through on_vote)."""

    vote: Vote


@dataclass(frozen=True, slots=True)
class ScheduleTimeout:
    """Call on_timeout(kind, height, round) after delay_ms."""

    kind: TimeoutKind
    height: int
    round: int
    delay_ms: int


@dataclass(frozen=True, slots=True)
class Decide:
    """The block is final at this height; `commit` holds the >2/3 precommits for it."""

    height: int
    round: int
    block_hash: bytes
    commit: CommitCertificate


@dataclass(frozen=True, slots=True)
class ReportEvidence:
    """A validator equivocated; the evidence can go into a block to slash it."""

    evidence: DuplicateVoteEvidence


Action = (
    RequestValue | BroadcastProposal | BroadcastVote | ScheduleTimeout | Decide | ReportEvidence
)


CHECK_SKIPS_ENV = "BLYAN_CHECK_SKIPPED_VOTES"
_MAX_FIRINGS = 1000
"""Each rule fires at most once per round and step, so one input settles long before this."""


# --- state --------------------------------------------------------------------------------


@dataclass(slots=True)
class HeightState:
    """The paper's per-process variables for the height being decided."""

    height: int
    """h_p."""
    round: int = 0
    """round_p."""
    step: Step = Step.NEW
    """step_p."""
    locked_value: bytes | None = None
    """lockedValue_p (a block hash); None for nil."""
    locked_round: int = -1
    """lockedRound_p."""
    valid_value: bytes | None = None
    """validValue_p (a block hash); None for nil."""
    valid_round: int = -1
    """validRound_p."""
    decision: bytes | None = None
    """decision_p[h_p] (a block hash) once decided."""
    decision_round: int = -1
    """Round of the decision."""


@dataclass(frozen=True, slots=True)
class SeenProposal:
    """A proposal from the right proposer, with the engine's verdict on its block."""

    signed: SignedProposal
    valid: bool

    @property
    def block_hash(self) -> bytes:
        return self.signed.proposal.block_hash

    @property
    def pol_round(self) -> int:
        return self.signed.proposal.pol_round


class Tendermint:
    """Algorithm 1 for one chain and height. `address` is ours; None (or a non-member) observes."""

    check_skipped_votes = os.environ.get(CHECK_SKIPS_ENV) == "1"
    """Tests (the suite sets `CHECK_SKIPS_ENV`, so simulator workers and daemons inherit it): run
    the rules after a counted vote that `VoteSet.add` judged not decisive too, and raise if one
    fires, since skipping them would have lost that firing."""

    def __init__(
        self,
        chain_id: int,
        height: int,
        validators: ValidatorSet,
        address: bytes | None,
        config: TendermintConfig = TendermintConfig(),
    ) -> None:
        if validators.total_power <= 0:
            raise ValueError("Tendermint needs a validator set with power")
        self.chain_id = chain_id
        self.validators = validators
        self.address = address if address is not None and validators.get(address) else None
        self.config = config
        self.state = HeightState(height)
        self.votes = VoteSet(chain_id, height, validators, config.max_round_ahead, config.max_votes)
        self._proposals: dict[int, SeenProposal] = {}
        self._proposers: dict[int, bytes] = {}
        self._voted: set[tuple[int, int]] = set()  # (round, step) we have voted in
        self._proposed: set[int] = set()  # rounds we have proposed in
        self._value_round = -1  # round of the RequestValue not yet answered
        self._fired: dict[int, int] = {34: -1, 36: -1, 47: -1}  # "first time" rule -> its round

    # --- accessors ------------------------------------------------------------------------

    @property
    def height(self) -> int:
        return self.state.height

    @property
    def round(self) -> int:
        return self.state.round

    @property
    def step(self) -> Step:
        return self.state.step

    @property
    def decision(self) -> bytes | None:
        return self.state.decision

    def is_validator(self) -> bool:
        return self.address is not None

    def get_proposer(self, round: int) -> bytes:
        proposer = self._proposers.get(round)
        if proposer is None:
            proposer = compute_proposer(self.validators, self.state.height, round)
            self._proposers[round] = proposer
        return proposer

    def proposal_for_round(self, round: int) -> SeenProposal | None:
        return self._proposals.get(round)

    def get_wanted_proposals(self) -> list[tuple[int, bytes]]:
        """(round, block hash) pairs that a vote quorum names but no proposal we hold carries.

        The engine may ask peers for these proposals; once delivered, the rules that waited on
        them fire."""
        wanted = []
        for r in self.votes.rounds:
            seen = self._proposals.get(r)
            for step in (STEP_PRECOMMIT, STEP_PREVOTE):
                v = self.votes.get_two_thirds_majority(r, step)
                if v is not None and v != NIL and (seen is None or seen.block_hash != v):
                    wanted.append((r, v))
                    break
        return wanted

    # --- inputs ---------------------------------------------------------------------------

    def start(self) -> list[Action]:
        """Begin the height at round 0 (StartRound(0))."""
        if self.state.step != Step.NEW:
            return []
        return self._start_round(0) + self._apply_rules()

    def on_proposal(self, signed: SignedProposal, valid: bool) -> list[Action]:
        """A proposal whose signature the engine checked (validate_signed_proposal); valid(v)."""
        p = signed.proposal
        if not self._is_acceptable_proposal(p):
            return []
        seen = self._proposals.get(p.round)
        if seen is not None and seen.signed.proposal == p and valid and not seen.valid:
            # valid(v) could not be decided before (the engine lacked something it depends on):
            # now it holds, and every rule that waits on it may fire.
            self._proposals[p.round] = SeenProposal(signed, True)
            return self._apply_rules()
        if seen is not None and (seen.signed.proposal == p or not self._is_wanted(p)):
            return []
        self._proposals[p.round] = SeenProposal(signed, valid)
        self.votes.track_block(p.block_hash)
        return self._apply_rules()

    def restore_own_votes(self, votes: list[SignedVote]) -> None:
        """After a restart, before `start`: the votes we signed at this height before. We never
        vote again in their round and step, and a precommit for a block locks us on it again
        (lines 36-41), so a crash cannot make us forget a lock."""
        s = self.state
        for signed in votes:
            v = signed.vote
            if v.validator != self.address or v.height != s.height or v.chain_id != self.chain_id:
                continue
            self._voted.add((v.round, v.step))
            self.votes.add(signed, v.round)
            if v.step == STEP_PRECOMMIT and v.block_hash != NIL and v.round > s.locked_round:
                s.locked_value, s.locked_round = v.block_hash, v.round

    def on_vote(self, signed: SignedVote) -> list[Action]:
        """A vote whose signature the engine checked (chain.commit.validate_signed_vote)."""
        result = self.votes.add(signed, self.state.round)
        actions: list[Action] = [ReportEvidence(result.evidence)] if result.evidence else []
        if result.added and result.decisive:
            actions += self._apply_rules()
        elif result.added and self.check_skipped_votes and self._apply_rules():
            raise RuntimeError(f"a vote judged not decisive fired a rule: {signed.vote}")
        return actions

    def on_commit(self, commit: CommitCertificate) -> list[Action]:
        """Catch up from a commit certificate for this height that a peer sent (block sync, or
        the commit gossiped by a peer that decided). The engine verified it (verify_commit) and
        holds and checked its block. Line 49 on the certificate's precommits rather than on our
        own tally, which may never reach a quorum: if an equivocator's other vote reached us
        first, we count that one, and the validators that decided have stopped voting."""
        s = self.state
        if s.step == Step.COMMIT or (commit.chain_id, commit.height) != (self.chain_id, s.height):
            return []
        s.decision, s.decision_round, s.step = commit.block_hash, commit.round, Step.COMMIT
        return [Decide(s.height, commit.round, commit.block_hash, commit)]

    def on_value(self, block_hash: bytes) -> list[Action]:
        """The engine's answer to RequestValue: the block to propose (line 16, getValue())."""
        s = self.state
        if s.step in (Step.NEW, Step.COMMIT) or self._value_round != s.round or block_hash == NIL:
            return []
        self._value_round = -1
        return self._propose(s.round, block_hash, NO_POL_ROUND)

    def on_timeout(self, kind: TimeoutKind, height: int, round: int) -> list[Action]:
        """A timeout scheduled by ScheduleTimeout has expired."""
        s = self.state
        if height != s.height or round != s.round or s.step in (Step.NEW, Step.COMMIT):
            return []
        if kind is TimeoutKind.PROPOSE:
            actions = self._on_timeout_propose()
        elif kind is TimeoutKind.PREVOTE:
            actions = self._on_timeout_prevote()
        else:
            actions = self._on_timeout_precommit()
        return actions + self._apply_rules()

    # --- lines 11-21: StartRound, and proposing -------------------------------------------

    def _start_round(self, round: int) -> list[Action]:
        """Lines 11-21: enter `round`; propose validValue or ask for a value, else wait."""
        s = self.state
        s.round = round
        s.step = Step.PROPOSE
        actions: list[Action] = []
        if self.address is not None and self.get_proposer(round) == self.address:
            if s.valid_value is not None:
                actions += self._propose(round, s.valid_value, s.valid_round)  # lines 15, 17
            else:
                self._value_round = round
                actions.append(RequestValue(s.height, round))  # line 16, answered by on_value
        # Line 19 (for every process; see the module note).
        actions.append(self._schedule(TimeoutKind.PROPOSE, round))
        return actions

    def _propose(self, round: int, block_hash: bytes, pol_round: int) -> list[Action]:
        """Line 17: broadcast ⟨PROPOSAL, h_p, round_p, proposal, validRound_p⟩ (once a round)."""
        if self.address is None or round in self._proposed:
            return []
        self._proposed.add(round)
        proposal = Proposal(
            self.chain_id, self.state.height, round, block_hash, pol_round, self.address
        )
        return [BroadcastProposal(proposal)]

    # --- the upon-rules -------------------------------------------------------------------

    def _apply_rules(self) -> list[Action]:
        """Fire the first rule whose precondition holds, again and again, until none does."""
        rules: tuple[Callable[[], list[Action] | None], ...] = (
            self._upon_commit_quorum,  # 49
            self._upon_f_plus_one_higher_round,  # 55
            self._upon_proposal,  # 22
            self._upon_proposal_with_polka,  # 28
            self._upon_prevote_quorum_any,  # 34
            self._upon_polka_for_proposal,  # 36
            self._upon_polka_for_nil,  # 44
            self._upon_precommit_quorum_any,  # 47
        )
        actions: list[Action] = []
        for _ in range(_MAX_FIRINGS):
            if self.state.step in (Step.NEW, Step.COMMIT):
                return actions
            fired = next((out for out in (rule() for rule in rules) if out is not None), None)
            if fired is None:
                return actions
            actions += fired
        raise RuntimeError("consensus rules did not settle: a rule fires without changing state")

    def _upon_proposal(self) -> list[Action] | None:
        """Lines 22-27: ⟨PROPOSAL, h_p, round_p, v, -1⟩ while step_p = propose."""
        s = self.state
        seen = self._proposals.get(s.round)
        if s.step != Step.PROPOSE or seen is None or seen.pol_round != NO_POL_ROUND:
            return None
        v = seen.block_hash
        accept = seen.valid and (s.locked_round == -1 or s.locked_value == v)  # line 23
        s.step = Step.PREVOTE  # line 27
        return self._vote(STEP_PREVOTE, v if accept else NIL)  # lines 24, 26

    def _upon_proposal_with_polka(self) -> list[Action] | None:
        """Lines 28-33: ⟨PROPOSAL, h_p, round_p, v, vr⟩ and 2f+1 ⟨PREVOTE, h_p, vr, id(v)⟩
        while step_p = propose and 0 <= vr < round_p."""
        s = self.state
        seen = self._proposals.get(s.round)
        if s.step != Step.PROPOSE or seen is None or not 0 <= seen.pol_round < s.round:
            return None
        v, vr = seen.block_hash, seen.pol_round
        if not self.votes.has_two_thirds_for(vr, STEP_PREVOTE, v):
            return None
        accept = seen.valid and (s.locked_round <= vr or s.locked_value == v)  # line 29
        s.step = Step.PREVOTE  # line 33
        return self._vote(STEP_PREVOTE, v if accept else NIL)  # lines 30, 32

    def _upon_prevote_quorum_any(self) -> list[Action] | None:
        """Lines 34-35: 2f+1 ⟨PREVOTE, h_p, round_p, *⟩ while step_p = prevote, first time."""
        s = self.state
        if s.step != Step.PREVOTE or self._fired[34] == s.round:
            return None
        if not self.votes.has_two_thirds_any(s.round, STEP_PREVOTE):
            return None
        self._fired[34] = s.round
        return [self._schedule(TimeoutKind.PREVOTE, s.round)]

    def _upon_polka_for_proposal(self) -> list[Action] | None:
        """Lines 36-43: ⟨PROPOSAL, h_p, round_p, v, *⟩ and 2f+1 ⟨PREVOTE, h_p, round_p, id(v)⟩
        while valid(v) and step_p >= prevote, for the first time: lock (if still prevoting) and
        remember v as validValue."""
        s = self.state
        seen = self._proposals.get(s.round)
        if s.step < Step.PREVOTE or self._fired[36] == s.round or seen is None or not seen.valid:
            return None
        v = seen.block_hash
        if not self.votes.has_two_thirds_for(s.round, STEP_PREVOTE, v):
            return None
        self._fired[36] = s.round
        actions: list[Action] = []
        if s.step == Step.PREVOTE:  # lines 37-41
            s.locked_value, s.locked_round = v, s.round
            actions = self._vote(STEP_PRECOMMIT, v)
            s.step = Step.PRECOMMIT
        s.valid_value, s.valid_round = v, s.round  # lines 42-43
        return actions

    def _upon_polka_for_nil(self) -> list[Action] | None:
        """Lines 44-46: 2f+1 ⟨PREVOTE, h_p, round_p, nil⟩ while step_p = prevote."""
        s = self.state
        if s.step != Step.PREVOTE or not self.votes.has_two_thirds_for(s.round, STEP_PREVOTE, NIL):
            return None
        s.step = Step.PRECOMMIT
        return self._vote(STEP_PRECOMMIT, NIL)

    def _upon_precommit_quorum_any(self) -> list[Action] | None:
        """Lines 47-48: 2f+1 ⟨PRECOMMIT, h_p, round_p, *⟩ for the first time."""
        s = self.state
        if self._fired[47] == s.round or not self.votes.has_two_thirds_any(s.round, STEP_PRECOMMIT):
            return None
        self._fired[47] = s.round
        return [self._schedule(TimeoutKind.PRECOMMIT, s.round)]

    def _upon_commit_quorum(self) -> list[Action] | None:
        """Lines 49-54: ⟨PROPOSAL, h_p, r, v, *⟩ and 2f+1 ⟨PRECOMMIT, h_p, r, id(v)⟩ for any
        round r, while decision_p[h_p] = nil and valid(v): decide. Lines 52-54 (next height) are
        the engine's: it starts a fresh machine."""
        for r in self.votes.rounds:
            v = self.votes.get_two_thirds_majority(r, STEP_PRECOMMIT)
            seen = self._proposals.get(r)
            if v is None or v == NIL or seen is None or seen.block_hash != v or not seen.valid:
                continue
            s = self.state
            s.decision, s.decision_round, s.step = v, r, Step.COMMIT
            commit = make_commit(self.votes.get_votes(r, STEP_PRECOMMIT, v))
            return [Decide(s.height, r, v, commit)]
        return None

    def _upon_f_plus_one_higher_round(self) -> list[Action] | None:
        """Lines 55-56: f+1 ⟨*, h_p, round, *, *⟩ with round > round_p: StartRound(round).

        "f+1" is more than 1/3 of the power, counting the voters of the round and its proposer.
        Of several such rounds, the highest is taken."""
        s = self.state
        later = {r for r in [*self.votes.rounds, *self._proposals] if r > s.round}
        for r in sorted(later, reverse=True):
            senders = set(self.votes.get_voters(r))
            if r in self._proposals:
                senders.add(self._proposals[r].signed.proposal.proposer)
            if 3 * self.validators.power_of(senders) > self.validators.total_power:
                return self._start_round(r)
        return None

    # --- lines 57-67: timeouts ------------------------------------------------------------

    def _on_timeout_propose(self) -> list[Action]:
        """Lines 57-60: still proposing at the timeout: prevote nil."""
        if self.state.step != Step.PROPOSE:
            return []
        self.state.step = Step.PREVOTE
        return self._vote(STEP_PREVOTE, NIL)

    def _on_timeout_prevote(self) -> list[Action]:
        """Lines 61-64: still prevoting at the timeout: precommit nil."""
        if self.state.step != Step.PREVOTE:
            return []
        self.state.step = Step.PRECOMMIT
        return self._vote(STEP_PRECOMMIT, NIL)

    def _on_timeout_precommit(self) -> list[Action]:
        """Lines 65-67: the round is over: StartRound(round_p + 1)."""
        return self._start_round(self.state.round + 1)

    # --- helpers --------------------------------------------------------------------------

    def _vote(self, step: int, block_hash: bytes) -> list[Action]:
        """broadcast ⟨PREVOTE|PRECOMMIT, h_p, round_p, block_hash⟩; one vote a round and step."""
        s = self.state
        if self.address is None or (s.round, step) in self._voted:
            return []
        self._voted.add((s.round, step))
        vote = Vote(self.chain_id, s.height, s.round, step, block_hash, self.address)
        return [BroadcastVote(vote)]

    def _schedule(self, kind: TimeoutKind, round: int) -> ScheduleTimeout:
        delay_ms = self.config.get_timeout_ms(kind, round)
        return ScheduleTimeout(kind, self.state.height, round, delay_ms)

    def _is_acceptable_proposal(self, p: Proposal) -> bool:
        """Structural checks the state machine relies on (the engine checked the signature)."""
        return (
            p.chain_id == self.chain_id
            and p.height == self.state.height
            and p.round <= self.state.round + self.config.max_round_ahead
            and NO_POL_ROUND <= p.pol_round < p.round
            and p.block_hash != NIL
            and p.proposer == self.get_proposer(p.round)
        )

    def _is_wanted(self, p: Proposal) -> bool:
        return (p.round, p.block_hash) in self.get_wanted_proposals()
