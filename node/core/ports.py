"""What a service may ask of the node: the interface services act through.

Services (sync, the JSON-RPC API, experts, PoL, data quality, the simulator's checkers) never
reach into the engine. They subscribe to its `Feed` and act through a
`NodeHandle`: read the chains, submit a transaction, hand over blocks fetched from peers. The
engine implements it; a test can implement it with a fake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from chain.state import State
from chain.store import ChainStore
from chain.types import Block, CommitCertificate, Transaction, ValidatorSet
from consensus.mempool import AddResult
from node.core.feed import Feed
from p2p.network import Network, PeerId


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What became of blocks handed to the node by catch-up."""

    imported: int
    """Blocks checked against their commits and stored, in order from the first."""
    height: int
    """The chain's height afterwards."""
    needs_reward_height: int = 0
    """Non-zero when a block could not be checked because the validator set that decides it is
    not known yet: the reward chain must first reach this height."""


class SystemSource(Protocol):
    """A service that gives a chain's proposer system transactions (PoL certificates...).

    Both calls are synchronous and quick: the runner asks them whenever it considers starting
    a height and whenever it proposes."""

    def make_system_txs(self, state: State) -> list[Transaction]:
        """System transactions a block on `state` should carry now."""

    def has_system_work(self, state: State) -> bool:
        """Whether a block is wanted on `state` even with no pending transaction."""


class NodeHandle(Protocol):
    """The node's engine, as services see it."""

    @property
    def store(self) -> ChainStore:
        """The chains (read them; only the engine writes)."""

    @property
    def network(self) -> Network:
        """The node's network (services register their own topics and protocols on it)."""

    @property
    def network_id(self) -> str:
        """Network id of the genesis."""

    @property
    def address(self) -> bytes | None:
        """This node's account address (None: no key)."""

    @property
    def feed(self) -> Feed:
        """Finalized blocks and gossip events."""

    def validators(self) -> ValidatorSet:
        """The validator set in force now."""

    def consensus_state(self) -> dict[str, Any]:
        """Per chain name: height, round, step, proposal and vote tallies (for operators)."""

    def get_validator_set(self, vs_hash: bytes) -> ValidatorSet | None:
        """Any validator set this node has known, by hash (sets before epoch changes too)."""

    def submit_tx(self, tx: Transaction) -> AddResult:
        """Admit a transaction to its chain's mempool and gossip it."""

    def is_pending(self, chain_id: int, tx_hash: bytes) -> bool:
        """Whether a transaction waits in a mempool."""

    def count_pending(self, chain_id: int, sender: bytes) -> int:
        """Transactions of `sender` waiting in a mempool."""

    def next_nonce(self, chain_id: int, sender: bytes) -> int:
        """The nonce `sender`'s next transaction should take: the first one from its committed
        nonce that no pending transaction holds (so a dropped transaction's gap is filled)."""

    def penalize(self, peer: PeerId, reason: str, weight: float = 1.0) -> None:
        """Penalise a peer for what it sent (reported on the feed)."""

    async def import_blocks(self, chain_id: int, peer: PeerId, blocks: tuple[Block, ...],
                            last_commit: CommitCertificate | None, target: int) -> ImportReport:
        """Check consecutive finalized blocks from a peer (each against its commit) and store
        them; a peer whose blocks are invalid is penalised. Consensus on the chain resumes once
        it reaches `target`, the height the peer reported."""

    def add_system_source(self, chain_id: int, source: SystemSource) -> None:
        """Ask `source` for system transactions whenever `chain_id` proposes."""

    def poke(self, chain_id: int) -> None:
        """A source has new work for `chain_id`: let its runner consider a height now."""
