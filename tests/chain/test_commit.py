"""Votes, commit certificates, attestations and equivocation evidence (`chain.commit`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from chain.commit import (
    InvalidCommit,
    InvalidEvidence,
    evidence_key,
    make_commit,
    sign_attestation,
    sign_vote,
    validate_evidence,
    validate_signed_vote,
    verify_attestation,
    verify_commit,
)
from chain.crypto import PrivateKey
from chain.errors import InvalidSignature
from chain.payloads import DuplicateVoteEvidence
from chain.types import (
    NIL,
    STEP_PRECOMMIT,
    STEP_PREVOTE,
    CommitCertificate,
    CommitSig,
    SignedVote,
    Vote,
    make_validator_set,
)
from genesis.testkit import validator_keys

NET = "testnet-unit"
CHAIN, HEIGHT = 2, 7
BLOCK = b"\xab" * 32
OTHER = b"\xcd" * 32
KEYS = validator_keys(4)
OUTSIDER = validator_keys(1, prefix="outsider")[0]
VALS = make_validator_set(0, [(k.public_key, 10) for k in KEYS])


def precommit(key: PrivateKey, block: bytes = BLOCK, round_: int = 0, network: str = NET) -> SignedVote:
    return sign_vote(key, network, Vote(CHAIN, HEIGHT, round_, STEP_PRECOMMIT, block, key.address))


def commit_of(keys: list[PrivateKey], **kw: object) -> CommitCertificate:
    return make_commit([precommit(k, **kw) for k in keys])


def test_verify_commit_valid() -> None:
    verify_commit(CHAIN, HEIGHT, BLOCK, commit_of(KEYS), VALS, NET)
    verify_commit(CHAIN, HEIGHT, BLOCK, commit_of(KEYS[:3]), VALS, NET)  # 30 of 40 > 2/3


def test_make_commit_sorts_signatures() -> None:
    cert = make_commit([precommit(k) for k in reversed(KEYS)])
    assert [s.validator for s in cert.signatures] == sorted(k.address for k in KEYS)
    assert (cert.chain_id, cert.height, cert.round, cert.block_hash) == (CHAIN, HEIGHT, 0, BLOCK)


def _forged(cert: CommitCertificate) -> CommitCertificate:
    first = cert.signatures[0]
    forged = CommitSig(first.validator, bytes([first.signature[0] ^ 1]) + first.signature[1:])
    return replace(cert, signatures=(forged, *cert.signatures[1:]))


INVALID_COMMITS: dict[str, tuple[Callable[[], CommitCertificate], str]] = {
    "too-little-power": (lambda: commit_of(KEYS[:2]), "is not > 2/3"),
    "other-block": (lambda: commit_of(KEYS, block=OTHER), "another block"),
    "other-height": (lambda: replace(commit_of(KEYS), height=HEIGHT + 1), "another block"),
    "unsorted": (lambda: replace(commit_of(KEYS), signatures=tuple(reversed(commit_of(KEYS).signatures))),
                 "not sorted"),
    "duplicated": (lambda: replace(commit_of(KEYS[:3]), signatures=commit_of(KEYS[:1]).signatures * 3),
                   "not sorted"),
    "non-validator": (lambda: commit_of([*KEYS[:3], OUTSIDER]), "non-validator"),
    "bad-signature": (lambda: _forged(commit_of(KEYS)), "bad precommit signature"),
    "other-round": (lambda: replace(commit_of(KEYS), round=1), "bad precommit signature"),
    "other-network": (lambda: commit_of(KEYS, network="othernet"), "bad precommit signature"),
}


@pytest.mark.parametrize("case", sorted(INVALID_COMMITS))
def test_invalid_commit(case: str) -> None:
    make, match = INVALID_COMMITS[case]
    with pytest.raises(InvalidCommit, match=match):
        verify_commit(CHAIN, HEIGHT, BLOCK, make(), VALS, NET)


def test_invalid_commit_for_nil() -> None:
    with pytest.raises(InvalidCommit, match="nil"):
        verify_commit(CHAIN, HEIGHT, NIL, commit_of(KEYS, block=NIL), VALS, NET)


def test_validate_signed_vote_valid_and_invalid() -> None:
    validate_signed_vote(precommit(KEYS[0]), NET, VALS)
    with pytest.raises(InvalidSignature, match="non-validator"):
        validate_signed_vote(precommit(OUTSIDER), NET, VALS)
    with pytest.raises(InvalidSignature):
        validate_signed_vote(precommit(KEYS[0], network="othernet"), NET, VALS)
    bad_step = sign_vote(KEYS[0], NET, Vote(CHAIN, HEIGHT, 0, 3, BLOCK, KEYS[0].address))
    with pytest.raises(InvalidSignature, match="unknown vote step"):
        validate_signed_vote(bad_step, NET, VALS)


def test_verify_attestation_valid_and_invalid() -> None:
    message = b"\x11" * 32
    verify_attestation(sign_attestation(KEYS[:3], NET, message), NET, VALS)
    with pytest.raises(InvalidSignature, match="not > 2/3"):
        verify_attestation(sign_attestation(KEYS[:2], NET, message), NET, VALS)
    with pytest.raises(InvalidSignature, match="non-validator"):
        verify_attestation(sign_attestation([*KEYS[:3], OUTSIDER], NET, message), NET, VALS)
    att = sign_attestation(KEYS, NET, message)
    with pytest.raises(InvalidSignature, match="unpaired"):
        verify_attestation(replace(att, signatures=att.signatures[:-1]), NET, VALS)


def _evidence(block_a: bytes = BLOCK, block_b: bytes = OTHER, step: int = STEP_PREVOTE) -> DuplicateVoteEvidence:
    key = KEYS[0]
    a, b = (sign_vote(key, NET, Vote(CHAIN, HEIGHT, 0, step, h, key.address)) for h in sorted((block_a, block_b)))
    return DuplicateVoteEvidence(a, b)


def test_validate_evidence_valid_and_keyed_once() -> None:
    ev = _evidence()
    validate_evidence(ev, NET, VALS)
    assert evidence_key(ev) == evidence_key(_evidence(NIL, BLOCK))  # one offence per h/r/step
    assert evidence_key(ev) != evidence_key(_evidence(step=STEP_PRECOMMIT))


def test_invalid_evidence() -> None:
    ev = _evidence()
    with pytest.raises(InvalidEvidence, match="ordered"):
        validate_evidence(DuplicateVoteEvidence(ev.vote_b, ev.vote_a), NET, VALS)
    with pytest.raises(InvalidEvidence, match="same chain"):
        validate_evidence(DuplicateVoteEvidence(ev.vote_a, precommit(KEYS[0], OTHER)), NET, VALS)
    with pytest.raises(InvalidEvidence):
        validate_evidence(ev, "othernet", VALS)


def test_a_remembered_valid_vote_is_still_checked_against_another_set_network_or_signature() -> None:
    good = precommit(KEYS[0])
    validate_signed_vote(good, NET, VALS)
    validate_signed_vote(good, NET, VALS)  # remembered
    others = make_validator_set(0, [(k.public_key, 10) for k in KEYS[1:]])
    with pytest.raises(InvalidSignature, match="non-validator"):
        validate_signed_vote(good, NET, others)
    with pytest.raises(InvalidSignature):
        validate_signed_vote(good, "othernet", VALS)
    forged = replace(good, signature=bytes(64))  # the same vote, an equal-looking object
    with pytest.raises(InvalidSignature):
        validate_signed_vote(forged, NET, VALS)
