"""Every validator set this node has known, by hash: in memory and in the store.

A restarted node must still check commits made by a set from before an epoch change, and a
syncing node must check each block with the set its header names, so no set is ever forgotten.
"""

from __future__ import annotations

from chain.reward import get_validator_set
from chain.store import ChainStore
from chain.types import CHAIN_REWARD, ValidatorSet


class KnownValidatorSets:
    """The sets in force now and before, kept as the reward chain moves."""

    def __init__(self, store: ChainStore) -> None:
        self.store = store
        self._sets: dict[bytes, ValidatorSet] = store.load_validator_sets()
        self.remember_current()

    def get(self, vs_hash: bytes) -> ValidatorSet | None:
        return self._sets.get(vs_hash)

    def current(self) -> ValidatorSet:
        """The validator set in force now: the reward chain's current one."""
        return get_validator_set(self.store.state(CHAIN_REWARD))

    def remember_current(self) -> None:
        """Keep the current set (called after each reward-chain block)."""
        vs = self.current()
        if vs.hash() not in self._sets:
            self._sets[vs.hash()] = vs
            self.store.save_validator_set(vs)
