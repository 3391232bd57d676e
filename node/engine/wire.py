"""Consensus messages the engine sends over a `Network`: gossip payloads and proposal requests."""

from __future__ import annotations

from chain.codec import U8, U64, Seq, wire
from chain.payloads import DuplicateVoteEvidence
from chain.types import Block, Transaction
from chain.votes import SignedVote
from consensus.messages import SignedProposal

# Topic and protocol names (namespaced by network id with p2p.network.topic_name).
TOPIC_PROPOSALS = "proposals"
TOPIC_VOTES = "votes"
TOPIC_TXS = "txs"
TOPIC_EVIDENCE = "evidence"
PROTOCOL_PROPOSAL = "proposal"


@wire
class ProposalMsg:
    """A signed proposal and the block it names."""

    signed: SignedProposal
    """The proposal."""
    block: Block
    """The proposed block (its hash is the proposal's block_hash)."""


@wire
class VoteMsg:
    signed: SignedVote
    """A prevote or precommit."""


@wire
class OwnVotes:
    """The votes this node signed at the height it is deciding (kept on disk across restarts)."""

    height: U64
    """Height."""
    votes: Seq(SignedVote, 256)
    """In signing order."""


@wire
class TxMsg:
    tx: Transaction
    """A transaction for some chain's mempool."""


@wire
class EvidenceMsg:
    evidence: DuplicateVoteEvidence
    """Proof that a validator equivocated."""


@wire
class ProposalRequest:
    chain_id: U8
    """Chain."""
    height: U64
    """Height."""
    round: U64
    """Round."""


@wire
class ProposalResponse:
    found: ProposalMsg | None
    """The proposal the responder holds for that round, if any."""
