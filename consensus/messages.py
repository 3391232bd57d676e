"""Consensus proposals: the wire types, signing and checking.

Votes and commit certificates are chain types (`chain.votes`), because blocks carry them; a
proposal only ever travels between validators, so it lives here.
"""

from __future__ import annotations

from chain import crypto
from chain.codec import I64, U8, U32, U64, Address, Hash32, Signature, encode, wire
from chain.errors import BlyanError, InvalidSignature
from chain.types import ValidatorSet
from chain.votes import NIL
from consensus.proposer import compute_proposer

NO_POL_ROUND = -1
"""`Proposal.pol_round` of a fresh value (no earlier round saw a polka for it)."""


class InvalidProposal(BlyanError):
    """A proposal that its supposed proposer did not make, or that breaks a proposal rule."""

    def __init__(self, reason: str, height: int = -1, round: int = -1) -> None:
        self.reason = reason
        self.height = height
        self.round = round
        super().__init__(f"invalid proposal at height {height} round {round}: {reason}")


@wire
class Proposal:
    """The proposer's choice of block for one chain, height and round."""

    chain_id: U8
    """Chain the proposal is for."""
    height: U64
    """Height being decided."""
    round: U32
    """Consensus round."""
    block_hash: Hash32
    """Hash of the proposed block's header (never NIL)."""
    pol_round: I64
    """Round of the polka (>2/3 prevotes) that justifies re-proposing the block; -1 for none."""
    proposer: Address
    """Signer; must be compute_proposer(validators, height, round)."""


@wire
class SignedProposal:
    """A proposal with its Ed25519 signature (kind "proposal")."""

    proposal: Proposal
    """The proposal."""
    signature: Signature
    """Signature over encode(proposal) with KIND_PROPOSAL on the network."""


def sign_proposal(key: crypto.PrivateKey, network_id: str, proposal: Proposal) -> SignedProposal:
    return SignedProposal(proposal, key.sign(network_id, crypto.KIND_PROPOSAL, encode(proposal)))


def validate_signed_proposal(
    signed: SignedProposal, network_id: str, validators: ValidatorSet
) -> None:
    """Raise `InvalidProposal` unless the expected proposer of its height and round signed it.

    The caller still checks that chain and height are the ones it is deciding."""
    p = signed.proposal
    h, r = p.height, p.round
    if not NO_POL_ROUND <= p.pol_round < r:
        raise InvalidProposal(f"pol_round {p.pol_round} is neither -1 nor below the round", h, r)
    if p.block_hash == NIL:
        raise InvalidProposal("proposal for nil", h, r)
    if p.proposer != compute_proposer(validators, h, r):
        raise InvalidProposal("not signed by the proposer of this height and round", h, r)
    member = validators.get(p.proposer)
    if member is None:  # unreachable when compute_proposer holds; kept as the membership rule
        raise InvalidProposal("proposer is not a validator", h, r)
    try:
        crypto.verify(
            member.public_key, network_id, crypto.KIND_PROPOSAL, encode(p), signed.signature
        )
    except InvalidSignature as err:
        raise InvalidProposal("bad proposal signature", h, r) from err
