"""The prevotes and precommits of one chain and height, tallied by stake.

The caller has already checked each vote's signature and that its signer is in the validator
set (`chain.commit.validate_signed_vote`); a VoteSet only counts.

Each validator's first vote in a round and step counts for the block it names and once towards
"any". A second, different vote is equivocation: it comes back as `DuplicateVoteEvidence` (once
per validator, round and step), and it still counts for its own block when that block is a
tracked one (NIL, or a block some proposal of this height named: see `track_block`). The
paper counts messages per value, so a correct process that saw a polka through one of an
equivocator's votes must be able to see it again through the same vote when a later round
re-proposes that block with it as proof, wherever its other vote arrived first. Without that,
one double-voter of four can deadlock a height: two correct validators locked on the block and
one that can never check their proof. Safety is unchanged: two quorums still share a correct
validator. Votes for untracked blocks beyond a validator's first are dropped, so a Byzantine
validator cannot grow the set with made-up hashes.

Memory is bounded twice more: votes for rounds more than `max_round_ahead` beyond the caller's
current round are ignored (honest peers re-gossip them once we get closer), and at most
`max_votes` votes are stored in all.
"""

from __future__ import annotations

from dataclasses import dataclass

from chain.payloads import DuplicateVoteEvidence
from chain.types import ValidatorSet
from chain.votes import NIL, STEP_PRECOMMIT, STEP_PREVOTE, SignedVote

DEFAULT_MAX_ROUND_AHEAD = 10
DEFAULT_MAX_VOTES = 200_000


@dataclass(frozen=True, slots=True)
class AddVoteResult:
    """What `VoteSet.add` did with a vote."""

    added: bool
    """True when the vote now counts (new, for a block not yet counted for its signer)."""
    evidence: DuplicateVoteEvidence | None = None
    """Proof of equivocation, the first time one validator votes twice in a round and step."""
    reason: str = ""
    """Why the vote was not counted, or what was odd about it."""
    decisive: bool = True
    """Whether the vote may have made an upon-rule's precondition true: it took a tally of its
    round and step (for its block, or for any block) above 2/3 of the power, or it is the first
    vote of its signer in a round above the caller's current one (f+1 counts those voters). A
    counted vote that is not decisive changes no rule's outcome, so the state machine need not
    run them again (`consensus.tendermint`)."""


class VoteSet:
    """Votes of one height: dedup, stake tallies per (round, step, block hash), equivocation."""

    def __init__(
        self,
        chain_id: int,
        height: int,
        validators: ValidatorSet,
        max_round_ahead: int = DEFAULT_MAX_ROUND_AHEAD,
        max_votes: int = DEFAULT_MAX_VOTES,
    ) -> None:
        if max_round_ahead < 1 or max_votes < 1:
            raise ValueError("max_round_ahead and max_votes must be positive")
        self.chain_id = chain_id
        self.height = height
        self.validators = validators
        self.max_round_ahead = max_round_ahead
        self.max_votes = max_votes
        self._powers = {v.address: v.power for v in validators.validators}
        self._first: dict[tuple[int, int], dict[bytes, SignedVote]] = {}
        self._by_hash: dict[tuple[int, int], dict[bytes, dict[bytes, SignedVote]]] = {}
        self._tally: dict[tuple[int, int], dict[bytes, int]] = {}
        self._any: dict[tuple[int, int], int] = {}
        self._voters: dict[int, set[bytes]] = {}
        self._tracked: set[bytes] = {NIL}
        self._equivocated: set[tuple[int, int, bytes]] = set()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def track_block(self, block_hash: bytes) -> None:
        """Count equivocators' votes for this block too (call it for each proposed block)."""
        self._tracked.add(block_hash)

    # --- adding ---------------------------------------------------------------------------

    def add(self, signed: SignedVote, current_round: int) -> AddVoteResult:
        """Count a vote whose signature the caller checked; see AddVoteResult for the outcome."""
        vote = signed.vote
        if (vote.chain_id, vote.height) != (self.chain_id, self.height):
            return AddVoteResult(False, reason="vote for another chain or height")
        if vote.step not in (STEP_PREVOTE, STEP_PRECOMMIT):
            return AddVoteResult(False, reason=f"unknown vote step {vote.step}")
        power = self._powers.get(vote.validator)
        if power is None:
            return AddVoteResult(False, reason="vote from a non-validator")
        if vote.round > current_round + self.max_round_ahead:
            reason = f"round {vote.round} too far ahead of {current_round}"
            return AddVoteResult(False, reason=reason)
        key = (vote.round, vote.step)
        first = self._first.get(key, {}).get(vote.validator)
        if first is not None and first.vote == vote:
            return AddVoteResult(False, reason="duplicate vote")
        if self._count >= self.max_votes:
            return AddVoteResult(False, reason="vote set full")
        if first is not None:
            return self._add_conflicting(key, first, signed, power)
        self._first.setdefault(key, {})[vote.validator] = signed
        before_any = self._any.get(key, 0)
        self._any[key] = before_any + power
        voters = self._voters.setdefault(vote.round, set())
        new_voter = vote.validator not in voters
        voters.add(vote.validator)
        crossed = self._count_for_block(key, signed, power)
        decisive = (crossed or self._crosses_quorum(before_any, power)
                    or (new_voter and vote.round > current_round))
        return AddVoteResult(True, decisive=decisive)

    def _add_conflicting(
        self, key: tuple[int, int], first: SignedVote, signed: SignedVote, power: int
    ) -> AddVoteResult:
        vote = signed.vote
        evidence = None
        if (*key, vote.validator) not in self._equivocated:
            self._equivocated.add((*key, vote.validator))
            a, b = sorted((first, signed), key=lambda s: s.vote.block_hash)
            evidence = DuplicateVoteEvidence(a, b)
        counted = self._by_hash.get(key, {}).get(vote.block_hash, {})
        if vote.block_hash not in self._tracked or vote.validator in counted:
            return AddVoteResult(False, evidence, reason="conflicting vote, not counted")
        decisive = self._count_for_block(key, signed, power)
        return AddVoteResult(True, evidence, reason="conflicting vote, counted for its block",
                             decisive=decisive)

    def _count_for_block(self, key: tuple[int, int], signed: SignedVote, power: int) -> bool:
        """Count the vote for its block; whether that took the block's tally above 2/3."""
        vote = signed.vote
        self._by_hash.setdefault(key, {}).setdefault(vote.block_hash, {})[vote.validator] = signed
        tally = self._tally.setdefault(key, {})
        before = tally.get(vote.block_hash, 0)
        tally[vote.block_hash] = before + power
        self._count += 1
        return self._crosses_quorum(before, power)

    def _crosses_quorum(self, before: int, power: int) -> bool:
        quorum = self.validators.is_quorum
        return quorum(before + power) and not quorum(before)

    # --- queries --------------------------------------------------------------------------

    @property
    def rounds(self) -> list[int]:
        """Rounds with at least one vote, ascending."""
        return sorted(self._voters)

    def get_vote(self, round: int, step: int, validator: bytes) -> SignedVote | None:
        """The first vote the validator cast in that round and step."""
        return self._first.get((round, step), {}).get(validator)

    def get_votes(self, round: int, step: int, block_hash: bytes) -> list[SignedVote]:
        """The votes counted for `block_hash` at a round and step, sorted by validator."""
        votes = self._by_hash.get((round, step), {}).get(block_hash, {})
        return [votes[a] for a in sorted(votes)]

    def get_voters(self, round: int) -> frozenset[bytes]:
        """Validators with any vote (prevote or precommit) in `round`."""
        return frozenset(self._voters.get(round, ()))

    def get_power(self, round: int, step: int, block_hash: bytes) -> int:
        return self._tally.get((round, step), {}).get(block_hash, 0)

    def get_tally(self, round: int, step: int) -> dict[bytes, int]:
        """Stake behind each block hash (NIL included) at (round, step), counting only the
        hashes tallied (tracked ones); a copy."""
        return dict(self._tally.get((round, step), {}))

    def get_power_any(self, round: int, step: int) -> int:
        """Power of the validators that voted at all (an equivocator counts once)."""
        return self._any.get((round, step), 0)

    def has_two_thirds_for(self, round: int, step: int, block_hash: bytes) -> bool:
        """More than 2/3 of the power voted for `block_hash` (NIL for nil): "2f+1 for v"."""
        return self.validators.is_quorum(self.get_power(round, step, block_hash))

    def has_two_thirds_any(self, round: int, step: int) -> bool:
        """More than 2/3 of the power voted at all, for anything: "2f+1 for *"."""
        return self.validators.is_quorum(self.get_power_any(round, step))

    def get_two_thirds_majority(self, round: int, step: int) -> bytes | None:
        """The block hash (possibly NIL) with more than 2/3 of the power, if one has it.

        Two can only exist if more than 1/3 of the power equivocated; the first counted wins."""
        for block_hash, power in self._tally.get((round, step), {}).items():
            if self.validators.is_quorum(power):
                return block_hash
        return None

    def has_one_third_any(self, round: int) -> bool:
        """Validators with more than 1/3 of the power voted in `round`: "f+1", one is correct."""
        power = self.validators.power_of(set(self._voters.get(round, ())))
        return 3 * power > self.validators.total_power

    def get_skip_round(self, current_round: int) -> int | None:
        """The highest round above `current_round` in which f+1 of the power voted, if any."""
        higher = [r for r in self._voters if r > current_round and self.has_one_third_any(r)]
        return max(higher, default=None)
