"""Signing and checking votes, commit certificates, attestations and equivocation evidence."""

from __future__ import annotations

from chain import crypto
from chain.codec import encode
from chain.errors import BlyanError, InvalidSignature
from chain.payloads import Attestation, DuplicateVoteEvidence
from chain.types import ValidatorSet
from chain.votes import (
    NIL,
    STEP_PRECOMMIT,
    STEP_PREVOTE,
    CommitCertificate,
    CommitSig,
    SignedVote,
    Vote,
)


class InvalidCommit(BlyanError):
    """A commit certificate that does not prove finality of its block."""


class InvalidEvidence(BlyanError):
    """Evidence that does not prove equivocation."""


def sign_vote(key: crypto.PrivateKey, network_id: str, vote: Vote) -> SignedVote:
    return SignedVote(vote, key.sign(network_id, crypto.KIND_VOTE, encode(vote)))


_VALID_VOTES: dict[tuple[int, int, str], tuple[SignedVote, ValidatorSet]] = {}
"""(id of the signed vote, id of the set, network) -> the two objects, for votes that passed:
decoding shares one object per distinct bytes (`codec.decode`), so the simulator's thousand
nodes check each vote once in all, not once each. Holding the objects keeps their ids unique."""
_VALID_VOTES_ENTRIES = 16_384


def validate_signed_vote(signed: SignedVote, network_id: str, validators: ValidatorSet) -> None:
    """Raise unless the vote is well formed and signed by a member of `validators`."""
    key = (id(signed), id(validators), network_id)
    known = _VALID_VOTES.get(key)
    if known is not None and known[0] is signed and known[1] is validators:
        return
    _check_signed_vote(signed, network_id, validators)
    if len(_VALID_VOTES) >= _VALID_VOTES_ENTRIES:
        _VALID_VOTES.clear()
    _VALID_VOTES[key] = (signed, validators)


def _check_signed_vote(signed: SignedVote, network_id: str, validators: ValidatorSet) -> None:
    vote = signed.vote
    if vote.step not in (STEP_PREVOTE, STEP_PRECOMMIT):
        raise InvalidSignature(f"unknown vote step {vote.step}")
    member = validators.get(vote.validator)
    if member is None:
        raise InvalidSignature("vote from a non-validator")
    crypto.verify(member.public_key, network_id, crypto.KIND_VOTE, encode(vote), signed.signature)


def verify_commit(
    chain_id: int,
    height: int,
    block_hash: bytes,
    cert: CommitCertificate,
    validators: ValidatorSet,
    network_id: str,
) -> None:
    """Raise `InvalidCommit` unless `cert` holds precommits of >2/3 of the power for the block."""
    if (cert.chain_id, cert.height, cert.block_hash) != (chain_id, height, block_hash):
        raise InvalidCommit("certificate is for another block")
    if block_hash == NIL:
        raise InvalidCommit("certificate for nil")
    signers = [s.validator for s in cert.signatures]
    if signers != sorted(set(signers)):
        raise InvalidCommit("signatures not sorted by validator or duplicated")
    power = 0
    for sig in cert.signatures:
        member = validators.get(sig.validator)
        if member is None:
            raise InvalidCommit("signature of a non-validator")
        vote = Vote(chain_id, height, cert.round, STEP_PRECOMMIT, block_hash, sig.validator)
        try:
            crypto.verify(member.public_key, network_id, crypto.KIND_VOTE, encode(vote), sig.signature)
        except InvalidSignature as err:
            raise InvalidCommit(f"bad precommit signature of {sig.validator.hex()}") from err
        power += member.power
    if not validators.is_quorum(power):
        raise InvalidCommit(f"precommit power {power} of {validators.total_power} is not > 2/3")


def make_commit(precommits: list[SignedVote]) -> CommitCertificate:
    """A certificate from precommits for one block (the caller checked quorum)."""
    first = precommits[0].vote
    sigs = sorted(
        (CommitSig(p.vote.validator, p.signature) for p in precommits), key=lambda s: s.validator
    )
    return CommitCertificate(first.chain_id, first.height, first.round, first.block_hash, tuple(sigs))


def sign_attestation(
    keys: list[crypto.PrivateKey], network_id: str, message_hash: bytes
) -> Attestation:
    pairs = sorted(
        ((k.address, k.sign(network_id, crypto.KIND_ATTESTATION, message_hash)) for k in keys)
    )
    return Attestation(message_hash, tuple(a for a, _ in pairs), tuple(s for _, s in pairs))


def verify_attestation(att: Attestation, network_id: str, validators: ValidatorSet) -> None:
    """Raise `InvalidSignature` unless >2/3 of the power signed `att.message_hash`."""
    if len(att.signers) != len(att.signatures):
        raise InvalidSignature("attestation has unpaired signatures")
    if list(att.signers) != sorted(set(att.signers)):
        raise InvalidSignature("attestation signers not sorted or duplicated")
    power = 0
    for signer, sig in zip(att.signers, att.signatures, strict=True):
        member = validators.get(signer)
        if member is None:
            raise InvalidSignature("attestation signed by a non-validator")
        crypto.verify(member.public_key, network_id, crypto.KIND_ATTESTATION, att.message_hash, sig)
        power += member.power
    if not validators.is_quorum(power):
        raise InvalidSignature("attestation power is not > 2/3")


def validate_evidence(
    ev: DuplicateVoteEvidence, network_id: str, validators: ValidatorSet
) -> None:
    """Raise `InvalidEvidence` unless the two votes prove that one validator equivocated."""
    a, b = ev.vote_a.vote, ev.vote_b.vote
    if (a.chain_id, a.height, a.round, a.step, a.validator) != (
        b.chain_id, b.height, b.round, b.step, b.validator
    ):
        raise InvalidEvidence("votes are not for the same chain, height, round, step and validator")
    if a.block_hash >= b.block_hash:
        raise InvalidEvidence("votes must differ and be ordered by block hash")
    try:
        validate_signed_vote(ev.vote_a, network_id, validators)
        validate_signed_vote(ev.vote_b, network_id, validators)
    except InvalidSignature as err:
        raise InvalidEvidence(str(err)) from err


def evidence_key(ev: DuplicateVoteEvidence) -> bytes:
    """One offence, one key: a validator is slashed once per chain, height, round and step."""
    v = ev.vote_a.vote
    return (
        v.validator + bytes([v.chain_id]) + v.height.to_bytes(8, "big")
        + v.round.to_bytes(4, "big") + bytes([v.step])
    )
