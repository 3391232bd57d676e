"""Equivocation evidence waiting to be slashed on the reward chain.

Evidence reaches the pool from our own vote sets and from gossip. It is checked once on the way
in (`chain.commit.validate_evidence`), kept once per offence (`chain.commit.evidence_key`), and
skipped when the reward state has already slashed that offence. A proposer of the reward chain
turns what is pending into system `Slash` transactions with `make_slash_txs`; when a block
carrying them commits, the engine calls `mark_included`.
"""

from __future__ import annotations

from collections.abc import Iterable

from chain.commit import InvalidEvidence, evidence_key, validate_evidence
from chain.payloads import DuplicateVoteEvidence, Slash
from chain.records import slashed_key, tombstone_key
from chain.state import Overlay, State
from chain.types import CHAIN_REWARD, ZERO_PUBKEY, ZERO_SIGNATURE, Transaction, TxBody, ValidatorSet

DEFAULT_MAX_ITEMS = 256


def is_slashed(view: State | Overlay, key: bytes) -> bool:
    """Whether the reward state already slashed this offence, or its validator (tombstoned:
    one equivocation slashes once and removes the validator at the next epoch)."""
    return view.get(slashed_key(key)) is not None or view.get(tombstone_key(key[:20])) is not None


def compute_slash_tx(ev: DuplicateVoteEvidence) -> Transaction:
    """The system transaction that slashes the offence `ev` proves (no sender, nonce, signature)."""
    return Transaction(TxBody(CHAIN_REWARD, ZERO_PUBKEY, 0, Slash(ev)), ZERO_SIGNATURE)


class EvidencePool:
    """Valid, not yet slashed evidence, one per offence, at most `max_items`."""

    def __init__(self, max_items: int = DEFAULT_MAX_ITEMS) -> None:
        if max_items < 1:
            raise ValueError("max_items must be positive")
        self.max_items = max_items
        self._pending: dict[bytes, DuplicateVoteEvidence] = {}
        """By evidence key."""
        self._included: dict[bytes, None] = {}
        """Keys of offences seen in committed blocks, oldest first, at most `max_items`."""

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, key: object) -> bool:
        return key in self._pending

    def add(
        self,
        ev: DuplicateVoteEvidence,
        network_id: str,
        validators: ValidatorSet,
        reward_state: State | Overlay | None = None,
    ) -> bool:
        """Keep `ev` if it is new; False when already known, slashed, included or the pool is full.

        Raises `chain.commit.InvalidEvidence` when `ev` proves nothing (gossip: reject).
        """
        validate_evidence(ev, network_id, validators)
        key = evidence_key(ev)
        if key in self._pending or key in self._included:
            return False
        if reward_state is not None and is_slashed(reward_state, key):
            return False
        if len(self._pending) >= self.max_items:
            return False
        self._pending[key] = ev
        return True

    def pending(self) -> list[DuplicateVoteEvidence]:
        """Pending evidence, oldest offence first (height, then evidence key)."""
        keys = sorted(self._pending, key=lambda k: (self._pending[k].vote_a.vote.height, k))
        return [self._pending[k] for k in keys]

    def mark_included(self, evidence: Iterable[DuplicateVoteEvidence]) -> None:
        """Forget evidence that a committed block slashed, and ignore it if it comes again."""
        for ev in evidence:
            key = evidence_key(ev)
            self._pending.pop(key, None)
            self._included.pop(key, None)
            self._included[key] = None
            while len(self._included) > self.max_items:
                del self._included[next(iter(self._included))]

    def prune(self, network_id: str, validators: ValidatorSet, reward_state: State | Overlay) -> int:
        """Drop evidence already slashed or no longer valid (the validator set changed).

        Returns how many were dropped."""
        dropped = 0
        for key in sorted(self._pending):
            ev = self._pending[key]
            try:
                validate_evidence(ev, network_id, validators)
            except InvalidEvidence:
                stale = True
            else:
                stale = is_slashed(reward_state, key)
            if stale:
                del self._pending[key]
                dropped += 1
        return dropped


def make_slash_txs(
    pool: EvidencePool, reward_state: State | Overlay, limit: int | None = None
) -> list[Transaction]:
    """Slash transactions for the pool's pending offences not yet slashed in `reward_state`.

    One per validator: a slash tombstones its validator, so a second in the same block fails."""
    txs = []
    offenders: set[bytes] = set()
    for ev in pool.pending():
        if limit is not None and len(txs) >= limit:
            break
        offender = ev.vote_a.vote.validator
        if offender not in offenders and not is_slashed(reward_state, evidence_key(ev)):
            offenders.add(offender)
            txs.append(compute_slash_tx(ev))
    return txs
