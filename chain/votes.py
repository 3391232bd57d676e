"""Consensus votes and commit certificates (wire types only; verification lives in chain.commit)."""

from __future__ import annotations

from chain.codec import U8, U32, U64, Address, Hash32, Seq, Signature, wire
from chain.crypto import ZERO_HASH

MAX_VALIDATORS = 256

STEP_PREVOTE = 1
STEP_PRECOMMIT = 2

NIL = ZERO_HASH
"""The block hash a vote for nil carries."""


@wire
class Vote:
    """A prevote or precommit for a block (or nil) at one chain, height and round."""

    chain_id: U8
    """Chain the vote is about."""
    height: U64
    """Height being decided."""
    round: U32
    """Consensus round."""
    step: U8
    """STEP_PREVOTE or STEP_PRECOMMIT."""
    block_hash: Hash32
    """Block voted for; NIL (all zero) for nil."""
    validator: Address
    """Voter."""


@wire
class SignedVote:
    """A vote with its Ed25519 signature (kind "vote")."""

    vote: Vote
    """The vote."""
    signature: Signature
    """Signature over encode(vote) with KIND_VOTE on the network."""


@wire
class CommitSig:
    """One precommit signature inside a commit certificate."""

    validator: Address
    """Signer."""
    signature: Signature
    """Signature over the precommit Vote for the certified block."""


@wire
class CommitCertificate:
    """Precommits of more than 2/3 of the power for one block: proof that it is final."""

    chain_id: U8
    """Chain of the block."""
    height: U64
    """Height of the block."""
    round: U32
    """Round in which it was decided."""
    block_hash: Hash32
    """Hash of the block's header."""
    signatures: Seq(CommitSig, MAX_VALIDATORS)
    """Precommits, sorted by validator address."""


