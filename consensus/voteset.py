"""The prevotes and precommits of one chain and height, tallied by stake.

The caller has already checked each vote's signature and that its signer is in the validator
set (`chain.commit.validate_signed_vote`); a VoteSet only counts. It keeps the first vote of each
validator for each round and step; a second, different one is equivocation, returned as
`DuplicateVoteEvidence` (once per validator, round and step) and not counted.

Memory is bounded twice: votes for rounds more than `max_round_ahead` beyond the caller's current
round are ignored (honest peers re-gossip them once we get closer), and no more than `max_votes`
votes are stored in all. With one vote per validator, round and step, honest traffic needs
2 * validators * rounds entries.
"""

from __future__ import annotations

from dataclasses import dataclass

from chain.payloads import DuplicateVoteEvidence
from chain.types import ValidatorSet
from chain.votes import STEP_PRECOMMIT, STEP_PREVOTE, SignedVote

DEFAULT_MAX_ROUND_AHEAD = 10
DEFAULT_MAX_VOTES = 200_000


@dataclass(frozen=True, slots=True)
class AddVoteResult:
    """What `VoteSet.add` did with a vote."""

    added: bool
    """True when the vote was new and is now counted."""
    evidence: DuplicateVoteEvidence | None = None
    """Proof of equivocation, the first time a validator's second vote for a round and step shows."""
    reason: str = ""
    """Why the vote was not counted (empty when it was)."""


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
        self._votes: dict[tuple[int, int], dict[bytes, SignedVote]] = {}
        self._tally: dict[tuple[int, int], dict[bytes, int]] = {}
        self._voters: dict[int, set[bytes]] = {}
        self._equivocated: set[tuple[int, int, bytes]] = set()
        self._count = 0

    def __len__(self) -> int:
        return self._count

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
            return AddVoteResult(False, reason=f"round {vote.round} too far ahead of {current_round}")
        key = (vote.round, vote.step)
        earlier = self._votes.get(key, {}).get(vote.validator)
        if earlier is not None:
            return self._on_second_vote(earlier, signed)
        if self._count >= self.max_votes:
            return AddVoteResult(False, reason="vote set full")
        self._votes.setdefault(key, {})[vote.validator] = signed
        tally = self._tally.setdefault(key, {})
        tally[vote.block_hash] = tally.get(vote.block_hash, 0) + power
        self._voters.setdefault(vote.round, set()).add(vote.validator)
        self._count += 1
        return AddVoteResult(True)

    def _on_second_vote(self, earlier: SignedVote, signed: SignedVote) -> AddVoteResult:
        if earlier.vote == signed.vote:
            return AddVoteResult(False, reason="duplicate vote")
        vote = signed.vote
        offence = (vote.round, vote.step, vote.validator)
        if offence in self._equivocated:
            return AddVoteResult(False, reason="equivocation already reported")
        self._equivocated.add(offence)
        a, b = sorted((earlier, signed), key=lambda s: s.vote.block_hash)
        return AddVoteResult(False, DuplicateVoteEvidence(a, b), reason="conflicting vote")

    # --- queries --------------------------------------------------------------------------

    @property
    def rounds(self) -> list[int]:
        """Rounds with at least one vote, ascending."""
        return sorted(self._voters)

    def get_vote(self, round: int, step: int, validator: bytes) -> SignedVote | None:
        return self._votes.get((round, step), {}).get(validator)

    def get_votes(self, round: int, step: int, block_hash: bytes) -> list[SignedVote]:
        """The votes for `block_hash` at a round and step, sorted by validator."""
        votes = self._votes.get((round, step), {})
        return [votes[a] for a in sorted(votes) if votes[a].vote.block_hash == block_hash]

    def get_voters(self, round: int) -> frozenset[bytes]:
        """Validators with any vote (prevote or precommit) in `round`."""
        return frozenset(self._voters.get(round, ()))

    def get_power(self, round: int, step: int, block_hash: bytes) -> int:
        return self._tally.get((round, step), {}).get(block_hash, 0)

    def get_power_any(self, round: int, step: int) -> int:
        return sum(self._tally.get((round, step), {}).values())

    def has_two_thirds_for(self, round: int, step: int, block_hash: bytes) -> bool:
        """More than 2/3 of the power voted for `block_hash` (NIL for nil): "2f+1 for v"."""
        return self.validators.is_quorum(self.get_power(round, step, block_hash))

    def has_two_thirds_any(self, round: int, step: int) -> bool:
        """More than 2/3 of the power voted at all, for anything: "2f+1 for *"."""
        return self.validators.is_quorum(self.get_power_any(round, step))

    def get_two_thirds_majority(self, round: int, step: int) -> bytes | None:
        """The block hash (possibly NIL) with more than 2/3 of the power, if one has it."""
        for block_hash, power in self._tally.get((round, step), {}).items():
            if self.validators.is_quorum(power):
                return block_hash
        return None

    def has_one_third_any(self, round: int) -> bool:
        """Validators with more than 1/3 of the power voted in `round`: "f+1", one is correct."""
        return 3 * self.validators.power_of(set(self._voters.get(round, ()))) > self.validators.total_power

    def get_skip_round(self, current_round: int) -> int | None:
        """The highest round above `current_round` in which f+1 of the power voted, if any."""
        higher = [r for r in self._voters if r > current_round and self.has_one_third_any(r)]
        return max(higher, default=None)
