"""What a chain runner may ask of its node: `ChainPort`, and the proposer's block builder.

A `ChainRunner` holds no pointer to the engine. It is given a port scoped to its chain: the
chain's store and mempool, the validator sets, the system transactions the node owes the chain,
signing, the network, and a few reports back (a commit, evidence, a peer that is ahead). The
engine implements the port (`node.engine.engine`); the runner's unit tests implement it with a
fake. Nothing in a port hands out the engine itself.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Protocol

from chain.context import Context
from chain.params import ChainParams
from chain.payloads import DuplicateVoteEvidence
from chain.state import State
from chain.transition import build_block
from chain.types import Block, BlockHeader, CommitCertificate, Transaction, ValidatorSet
from consensus.mempool import Mempool
from node.engine.config import EngineConfig
from node.engine.signing import OwnVoteLog, Signer, SignGuard
from p2p.network import PeerId


class BlockBuilder:
    """How a proposer fills a block: the chain's `build_block` over the candidates.

    The simulator substitutes a byzantine builder here (a block with a wrong state root);
    honest nodes use this one."""

    def build(self, state: State, candidates: list[Transaction], ctx: Context, proposer: bytes, time_ms: int,
              last_commit: CommitCertificate | None,
              next_validators: ValidatorSet) -> tuple[Block, list[tuple[Transaction, Exception]]]:
        return build_block(state, candidates, ctx, proposer, time_ms, last_commit, next_validators)


class ChainPort(Protocol):
    """The node, as one chain's runner sees it."""

    chain_id: int
    """The runner's chain."""
    node_name: str
    """For logs."""
    network_id: str
    """Signature domain."""
    params: ChainParams
    """Protocol constants from genesis."""
    config: EngineConfig
    """Engine settings."""
    address: bytes | None
    """This node's validator address (None: it does not sign)."""
    mempool: Mempool
    """This chain's mempool."""
    signer: Signer | None
    """Signs votes and proposals (None without a key)."""
    guard: SignGuard
    """Refuses to sign a conflicting message, across restarts."""
    own_votes: OwnVoteLog
    """Own votes of the current height, on disk."""
    builder: BlockBuilder
    """Fills proposed blocks."""
    rng: random.Random
    """Jitter and peer choice (seeded in simulations)."""

    # --- reading ---------------------------------------------------------------------------

    def get_state(self) -> State:
        """The chain's state at its finalized head."""

    def get_header(self, height: int) -> BlockHeader | None:
        """A stored header of the chain."""

    def get_commit(self, height: int) -> CommitCertificate | None:
        """The stored commit certificate of a height of the chain."""

    def get_validator_set(self, vs_hash: bytes) -> ValidatorSet | None:
        """A validator set this node has known, by hash."""

    def get_current_validators(self) -> ValidatorSet:
        """The reward chain's validator set in force now."""

    def make_context(self, validators: ValidatorSet, prev: ValidatorSet | None) -> Context:
        """The transition context for a block decided by `validators`."""

    def now_ms(self) -> int:
        """Wall-clock time for block timestamps."""

    # --- work the node owes the chain ------------------------------------------------------

    def get_system_txs(self) -> list[Transaction]:
        """System transactions to propose first (slashes and rewards on the reward chain)."""

    def has_system_work(self) -> bool:
        """Whether such transactions are pending."""

    # --- talking ---------------------------------------------------------------------------

    async def publish(self, topic: str, msg: object) -> None:
        """Gossip a wire message on one of the engine's topics (short name)."""

    async def request(self, peer: PeerId, protocol: str, msg: object, response: type, max_size: int) -> object:
        """Ask a peer (protocol by short name); raise RequestFailed or DecodingError."""

    def get_peers(self) -> list[PeerId]:
        """Connected peers."""

    def penalize(self, peer: PeerId, reason: str) -> None:
        """Penalise a peer for what it sent."""

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Run a task in the engine's nursery."""

    # --- reports back ----------------------------------------------------------------------

    async def write_block(self, block: Block, state: State, changes: dict[bytes, bytes | None],
                          commit: CommitCertificate) -> None:
        """Store a finalized block and its state in one batch."""

    def on_committed(self, block: Block, state: State, changes: dict[bytes, bytes | None], synced: bool,
                     seconds: float) -> None:
        """A block of this chain was stored: cross-chain bookkeeping and the feed."""

    def report_evidence(self, evidence: DuplicateVoteEvidence) -> None:
        """The machine saw a validator equivocate."""

    def report_round(self, height: int, round: int) -> None:
        """A round of `height` started."""

    def report_peer_ahead(self, peer: PeerId, height: int) -> None:
        """A peer has finalized `height` of this chain, above ours."""
