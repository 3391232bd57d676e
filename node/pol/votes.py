"""The PoL vote pool: validators' signed votes on revealed claims, tallied into the system
transactions a parameter-chain proposer includes.

    accepting votes of > 2/3 of the power        -> CertifyDelta(claim, those votes)
    rejecting votes leaving no quorum possible   -> RejectDelta(claim, those votes)

A vote enters the pool only if the chain's own rule would take it (`chain.rounds.validate_votes`
on that one vote: a validator of the set in force, its key in the verdict, the claim's manifest,
a good signature), so a certificate built here is valid when proposed; the chain checks it again.
A vote for a claim this node has not seen revealed yet waits in a small buffer (its reveal may be
a block behind here). The pool also says when the parameter chain must make blocks with no
transaction: a round holds certified claims and its close has not come yet.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

from chain.context import Context
from chain.errors import BlyanError
from chain.params import ChainParams
from chain.payloads import MAX_POL_VOTES, CertifyDelta, PolCertificate, RejectDelta, SignedPolVote
from chain.records import CLAIM_VOTING, ClaimRecord, RoundRecord, round_key
from chain.rounds import compute_round_of, get_claim, is_accepting_vote, validate_votes
from chain.state import Overlay, State
from chain.types import CHAIN_PARAMETER, ZERO_PUBKEY, ZERO_SIGNATURE, Transaction, TxBody, ValidatorSet
from node.core.pools import PoolAdd, PoolOutcome

logger = logging.getLogger(__name__)

MAX_CLAIMS = 1024
"""Claims the pool tracks votes for at once (older ones are dropped first)."""
MAX_EARLY_VOTES = 1024
"""Votes held for claims not revealed here yet."""


VoteOutcome = PoolOutcome
AddVote = PoolAdd


@dataclass(frozen=True, slots=True)
class Tally:
    """Where one claim's votes stand."""

    accepting: int
    rejecting: int
    total: int
    voters: int


class VotePool:
    """Votes by claim and validator."""

    def __init__(self, network_id: str, params: ChainParams) -> None:
        self.network_id = network_id
        self.params = params
        self._votes: OrderedDict[bytes, dict[bytes, SignedPolVote]] = OrderedDict()
        self._early: OrderedDict[tuple[bytes, bytes], SignedPolVote] = OrderedDict()

    def context(self, validators: ValidatorSet) -> Context:
        return Context(self.network_id, self.params, validators)

    def votes_of(self, claim_hash: bytes) -> list[SignedPolVote]:
        """The pool's votes on a claim, sorted by validator."""
        return [v for _, v in sorted(self._votes.get(claim_hash, {}).items())]

    def claims(self) -> list[bytes]:
        return list(self._votes)

    def add(self, signed: SignedPolVote, state: State, validators: ValidatorSet) -> AddVote:
        """Check a vote against the chain's rule and keep it."""
        vote = signed.vote
        rec = get_claim(Overlay(state), vote.claim_hash)
        if rec is None:
            key = (vote.claim_hash, vote.validator)
            if key in self._early:
                return AddVote(VoteOutcome.DUPLICATE)
            if validators.get(vote.validator) is None:
                return AddVote(VoteOutcome.INVALID, "PoL vote from a non-validator")
            self._early[key] = signed
            while len(self._early) > MAX_EARLY_VOTES:
                self._early.popitem(last=False)
            return AddVote(VoteOutcome.EARLY)
        if rec.status != CLAIM_VOTING:
            return AddVote(VoteOutcome.CLOSED)
        held = self._votes.get(vote.claim_hash, {}).get(vote.validator)
        if held is not None:
            return AddVote(VoteOutcome.DUPLICATE if held == signed else VoteOutcome.INVALID,
                           "" if held == signed else "a second, different PoL vote by one validator")
        reason = check_vote(signed, rec, self.context(validators))
        if reason:
            return AddVote(VoteOutcome.INVALID, reason)
        self._votes.setdefault(vote.claim_hash, {})[vote.validator] = signed
        self._votes.move_to_end(vote.claim_hash)
        while len(self._votes) > MAX_CLAIMS:
            self._votes.popitem(last=False)
        return AddVote(VoteOutcome.ADDED)

    def on_revealed(self, claim_hashes: list[bytes], state: State, validators: ValidatorSet) -> int:
        """Claims became known: count the votes that came early. Returns how many were added."""
        added = 0
        wanted = set(claim_hashes)
        for key in [k for k in self._early if k[0] in wanted]:
            signed = self._early.pop(key)
            if self.add(signed, state, validators).outcome is VoteOutcome.ADDED:
                added += 1
        return added

    def prune(self, state: State) -> None:
        """Forget the votes of claims that are no longer open (certified, rejected, expired)."""
        view = Overlay(state)
        for claim_hash in list(self._votes):
            rec = get_claim(view, claim_hash)
            if rec is not None and rec.status != CLAIM_VOTING:
                del self._votes[claim_hash]

    def tally(self, claim_hash: bytes, validators: ValidatorSet) -> Tally:
        ctx = self.context(validators)
        accepting = rejecting = 0
        votes = self._votes.get(claim_hash, {})
        for addr, signed in votes.items():
            member = validators.get(addr)
            if member is None:
                continue
            if is_accepting_vote(signed.vote, ctx):
                accepting += member.power
            else:
                rejecting += member.power
        return Tally(accepting, rejecting, validators.total_power, len(votes))

    def make_system_txs(self, state: State, validators: ValidatorSet) -> list[Transaction]:
        """A certificate or a rejection for every open claim whose votes decide it."""
        txs = []
        view = Overlay(state)
        ctx = self.context(validators)
        for claim_hash, votes in self._votes.items():
            rec = get_claim(view, claim_hash)
            if rec is None or rec.status != CLAIM_VOTING:
                continue
            payload = decide(claim_hash, list(votes.values()), rec, ctx, validators)
            if payload is not None:
                txs.append(Transaction(TxBody(CHAIN_PARAMETER, ZERO_PUBKEY, 0, payload), ZERO_SIGNATURE))
        return txs

    def has_decision(self, state: State, validators: ValidatorSet) -> bool:
        return bool(self.make_system_txs(state, validators))


def check_vote(signed: SignedPolVote, rec: ClaimRecord, ctx: Context) -> str:
    """Why the chain would refuse this vote in a certificate or rejection ("" if it takes it)."""
    try:
        validate_votes(PolCertificate((signed,)), rec, signed.vote.claim_hash, ctx, ctx.validators,
                       accepting=is_accepting_vote(signed.vote, ctx))
    except BlyanError as err:
        return str(err)
    return ""


def decide(claim_hash: bytes, votes: list[SignedPolVote], rec: ClaimRecord, ctx: Context,
           validators: ValidatorSet) -> CertifyDelta | RejectDelta | None:
    """The payload that decides the claim by these votes (each checked when it entered the pool),
    or None while they do not."""
    accepting, rejecting = [], []
    for signed in votes:
        member = validators.get(signed.vote.validator)
        if member is None:
            continue
        (accepting if is_accepting_vote(signed.vote, ctx) else rejecting).append((member.power, signed))
    for_power = sum(p for p, _ in accepting)
    against_power = sum(p for p, _ in rejecting)
    if validators.is_quorum(for_power):
        return CertifyDelta(claim_hash, _certificate(accepting))
    if against_power and not validators.is_quorum(validators.total_power - against_power):
        return RejectDelta(claim_hash, _certificate(rejecting))
    return None


def _certificate(weighted: list[tuple[int, SignedPolVote]]) -> PolCertificate:
    chosen = sorted(weighted, key=lambda pv: -pv[0])[:MAX_POL_VOTES]
    return PolCertificate(tuple(sorted((sv for _, sv in chosen), key=lambda sv: sv.vote.validator)))


def is_round_waiting(state: State, params: ChainParams) -> bool:
    """Certified claims wait for the close of the round the next block is in: the parameter
    chain must make blocks (empty if need be) until it comes."""
    round_id = compute_round_of(state.height + 1, params.pol)
    return Overlay(state).get_record(round_key(round_id), RoundRecord) is not None
