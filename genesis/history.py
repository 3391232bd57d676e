"""Finalized chain history written straight into a `ChainStore`, for tests and benchmarks.

Blocks are built, applied and certified by every validator key as a network would (no engine, no
network); the deciding validator set follows the reward chain's epoch boundaries exactly as
`node.engine.runner` does, so a store made here looks like the store of a node that took part.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chain import crypto
from chain.commit import verify_commit
from chain.context import Context
from chain.kv import MemoryKV
from chain.pact import GenesisPact
from chain.params import ChainParams
from chain.payloads import Transfer
from chain.reward import get_validator_set
from chain.state import State
from chain.store import ChainStore
from chain.transition import apply_block, build_block, get_nonce
from chain.types import (
    CHAIN_DATASET,
    CHAIN_IDS,
    CHAIN_PARAMETER,
    CHAIN_REWARD,
    Block,
    CommitCertificate,
    Transaction,
    ValidatorSet,
)
from genesis.testkit import account_keys, certify, make_pact, sign_tx, validator_keys


@dataclass
class ChainHistory:
    """Grow the chains of `store`, validated and certified by `keys` (all the validators)."""

    store: ChainStore
    keys: list[crypto.PrivateKey]
    sets: dict[bytes, ValidatorSet] = field(default_factory=dict)
    """Every validator set met, by hash."""
    commits: dict[int, CommitCertificate | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        current = get_validator_set(self.store.state(CHAIN_REWARD))
        self.sets[current.hash()] = current
        for chain_id in CHAIN_IDS:
            self.commits.setdefault(chain_id, self.store.get_commit(chain_id, self.store.height(chain_id)))

    @property
    def network_id(self) -> str:
        return self.store.pact.network_id

    def _sets_for(self, chain_id: int) -> tuple[ValidatorSet, ValidatorSet | None]:
        state = self.store.state(chain_id)
        head = self.store.get_header(chain_id, state.height)
        deciding = self.sets[head.next_validators_hash]
        previous = self.sets.get(head.validators_hash) if state.height > 0 else None
        return deciding, previous

    def context(self, chain_id: int) -> Context:
        deciding, previous = self._sets_for(chain_id)
        return Context(self.network_id, self.store.pact.params, deciding, previous,
                       earnings=lambda c, h: None, next_validators=self.sets.get)

    def advance(self, chain_id: int, txs: list[Transaction]) -> tuple[Block, State]:
        """Build, check, certify and store the next block of `chain_id` with `txs`."""
        state = self.store.state(chain_id)
        ctx = self.context(chain_id)
        proposer = self.keys[state.height % len(self.keys)].address
        latest = self.sets[max(self.sets, key=lambda h: self.sets[h].epoch)]
        block, rejected = build_block(state, txs, ctx, proposer, state.time_ms + 1_000,
                                      self.commits[chain_id], next_validators=latest)
        if rejected:
            raise ValueError(f"history block rejected {len(rejected)} transactions: {rejected[0][1]}")
        new_state = self.import_block(block, certify(block, self.keys, self.network_id), ctx)
        return block, new_state

    def import_block(self, block: Block, commit: CommitCertificate, ctx: Context | None = None) -> State:
        """Check `block` against `commit` and the chain's rules, store it and follow the set it
        names next: what catch-up does with a synced block, without an engine."""
        chain_id = block.header.chain_id
        ctx = ctx or self.context(chain_id)
        verify_commit(chain_id, block.header.height, block.hash(), commit, ctx.validators, self.network_id)
        new_state, changes = apply_block(self.store.state(chain_id), block, ctx)
        self.store.commit_block(block, new_state, changes, commit)
        self.commits[chain_id] = commit
        if chain_id == CHAIN_REWARD:
            nxt = get_validator_set(new_state)
            self.sets.setdefault(nxt.hash(), nxt)
        return new_state

    def grow_reward(self, n_blocks: int, payer: crypto.PrivateKey | None = None, txs_per_block: int = 0) -> None:
        """`n_blocks` reward blocks, each with `txs_per_block` transfers from `payer` (funded)."""
        for _ in range(n_blocks):
            txs = []
            if payer is not None and txs_per_block:
                acct_nonce = self._nonce(payer)
                txs = [sign_tx(payer, self.network_id, CHAIN_REWARD, acct_nonce + i,
                               Transfer(crypto.PrivateKey.from_label(f"history-{i}").address, 1))
                       for i in range(txs_per_block)]
            self.advance(CHAIN_REWARD, txs)

    def _nonce(self, key: crypto.PrivateKey) -> int:
        return get_nonce(self.store.state(CHAIN_REWARD), key.address)


def make_test_history(reward_blocks: int, other_blocks: int = 3, txs_per_block: int = 2,
                      params: ChainParams | None = None) -> ChainHistory:
    """A store of the test pact (4 validators, one funded payer) with `other_blocks` empty blocks
    on the parameter and dataset chains and `reward_blocks` reward blocks of transfers."""
    history = ChainHistory(ChainStore.open(MemoryKV(), make_test_pact(params)), TEST_KEYS)
    for chain_id in (CHAIN_PARAMETER, CHAIN_DATASET):
        for _ in range(other_blocks):
            history.advance(chain_id, [])
    history.grow_reward(reward_blocks, TEST_PAYER, txs_per_block=txs_per_block)
    return history


def make_test_pact(params: ChainParams | None = None) -> GenesisPact:
    return make_pact(TEST_KEYS, [(TEST_PAYER.address, 10**12)], params=params)


TEST_KEYS = validator_keys(4)
TEST_PAYER = account_keys(1, prefix="history-payer")[0]
