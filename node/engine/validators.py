"""Every validator set this node has known, by hash: in memory and in the node's KV.

A restarted node must still check commits made by a set from before an epoch change, and a
syncing node must check each block with the set its header names, so no set is ever forgotten.
"""

from __future__ import annotations

from chain import codec
from chain.codec import decode
from chain.kv import COL_NODE
from chain.records import KEY_VALIDATORS
from chain.store import ChainStore
from chain.types import CHAIN_REWARD, ValidatorSet

_VSET_PREFIX = COL_NODE + b"vset"


def load_validator_sets(store: ChainStore) -> dict[bytes, ValidatorSet]:
    """Every validator set this node has known (by hash), from disk."""
    sets = {}
    for _, raw in store.kv.iterate(_VSET_PREFIX):
        vs = decode(ValidatorSet, raw)
        sets[vs.hash()] = vs
    return sets


def save_validator_set(store: ChainStore, vs: ValidatorSet) -> None:
    store.kv.put(_VSET_PREFIX + vs.hash(), codec.encode(vs))


class KnownValidatorSets:
    """The sets in force now and before, kept as the reward chain moves."""

    def __init__(self, store: ChainStore) -> None:
        self.store = store
        self._sets: dict[bytes, ValidatorSet] = load_validator_sets(store)
        self.remember_current()

    def get(self, vs_hash: bytes) -> ValidatorSet | None:
        return self._sets.get(vs_hash)

    def current(self) -> ValidatorSet:
        """The validator set in force now: the reward chain's current one."""
        return decode(ValidatorSet, self.store.state(CHAIN_REWARD).get(KEY_VALIDATORS))

    def remember_current(self) -> None:
        """Keep the current set (called after each reward-chain block)."""
        vs = self.current()
        if vs.hash() not in self._sets:
            self._sets[vs.hash()] = vs
            save_validator_set(self.store, vs)
