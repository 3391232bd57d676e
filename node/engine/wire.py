"""Messages the engine sends over a `Network`: gossip payloads and request/response bodies."""

from __future__ import annotations

from chain.codec import U8, U16, U64, Hash32, Seq, Str, wire
from chain.payloads import DuplicateVoteEvidence
from chain.types import Block, CommitCertificate, Transaction
from chain.votes import SignedVote
from consensus.messages import SignedProposal

MAX_BLOCKS_PER_RESPONSE = 64

# Topic and protocol names (namespaced by network id with p2p.network.topic_name).
TOPIC_PROPOSALS = "proposals"
TOPIC_VOTES = "votes"
TOPIC_TXS = "txs"
TOPIC_EVIDENCE = "evidence"
TOPIC_STATUS = "status"
PROTOCOL_BLOCKS = "blocks"
PROTOCOL_PROPOSAL = "proposal"
PROTOCOL_HANDSHAKE = "handshake"


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
class ChainHead:
    chain_id: U8
    """Chain."""
    height: U64
    """Finalized height."""


@wire
class StatusMsg:
    """A node's finalized heights, gossiped now and then so that laggards learn they lag."""

    heads: Seq(ChainHead, 8)
    """One per chain."""


@wire
class Handshake:
    """What two peers exchange first: a peer of another network or genesis is refused."""

    network_id: Str(32)
    """Network id."""
    genesis_hash: Hash32
    """Hash of the Genesis Pact."""
    heads: Seq(ChainHead, 8)
    """Finalized heights."""


@wire
class BlocksRequest:
    chain_id: U8
    """Chain."""
    start: U64
    """First height wanted."""
    count: U16
    """How many, at most MAX_BLOCKS_PER_RESPONSE."""


@wire
class BlocksResponse:
    """Consecutive finalized blocks and the commit certificate of the last one."""

    blocks: Seq(Block, MAX_BLOCKS_PER_RESPONSE)
    """Blocks from the requested start height."""
    last_commit: CommitCertificate | None
    """Commit of the last block (the others' commits ride in their successors)."""


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
