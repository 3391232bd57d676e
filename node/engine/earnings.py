"""Earnings the parameter and dataset chains recorded and the reward chain has not paid yet.

The reward chain's proposer turns each into a `Reward` system transaction; a reward-chain block
that pays one removes it. The set is rebuilt from the stored states at start.
"""

from __future__ import annotations

from chain.codec import decode
from chain.payloads import Reward
from chain.records import Earning, earning_key, is_earning_key, is_paid_key, paid_key, parse_earning_key, parse_paid_key
from chain.store import ChainStore
from chain.types import (
    CHAIN_DATASET,
    CHAIN_PARAMETER,
    CHAIN_REWARD,
    ZERO_PUBKEY,
    ZERO_SIGNATURE,
    Transaction,
    TxBody,
)

MAX_REWARDS_PER_BLOCK = 256
EARNING_CHAINS = (CHAIN_PARAMETER, CHAIN_DATASET)


class PendingEarnings:
    """(source chain, transaction hash) -> earning, for every earning not paid yet."""

    def __init__(self, store: ChainStore) -> None:
        self.store = store
        self._pending: dict[tuple[int, bytes], Earning] = {}
        reward = store.state(CHAIN_REWARD)
        for chain_id in EARNING_CHAINS:
            for key, value in store.state(chain_id).items():
                if is_earning_key(key) and reward.get(paid_key(chain_id, parse_earning_key(key))) is None:
                    self._pending[(chain_id, parse_earning_key(key))] = decode(Earning, value)

    def __bool__(self) -> bool:
        return bool(self._pending)

    def __len__(self) -> int:
        return len(self._pending)

    def get(self, chain_id: int, tx_hash: bytes) -> Earning | None:
        """An earning as the source chain's state records it (paid or not)."""
        if chain_id not in EARNING_CHAINS:
            return None
        raw = self.store.state(chain_id).get(earning_key(tx_hash))
        return None if raw is None else decode(Earning, raw)

    def on_committed(self, chain_id: int, changes: dict[bytes, bytes | None]) -> None:
        """A block of `chain_id` wrote `changes`: new earnings, or payments on the reward chain."""
        if chain_id == CHAIN_REWARD:
            for key in changes:
                if is_paid_key(key):
                    self._pending.pop(parse_paid_key(key), None)
            return
        for key, value in changes.items():
            if is_earning_key(key) and value is not None:
                self._pending[(chain_id, parse_earning_key(key))] = decode(Earning, value)

    def make_reward_txs(self) -> list[Transaction]:
        """Reward system transactions for the oldest-keyed pending earnings."""
        txs = []
        for (source, tx_hash), earning in sorted(self._pending.items())[:MAX_REWARDS_PER_BLOCK]:
            payload = Reward(source, tx_hash, earning.recipient, earning.amount)
            txs.append(Transaction(TxBody(CHAIN_REWARD, ZERO_PUBKEY, 0, payload), ZERO_SIGNATURE))
        return txs
