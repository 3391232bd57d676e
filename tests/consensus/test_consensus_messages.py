"""Proposal wire format, signing and checking (consensus/messages.py)."""

from __future__ import annotations

import msgpack
import pytest

from chain.codec import decode, encode
from chain.crypto import PrivateKey
from chain.errors import DecodingError
from chain.types import ValidatorSet, make_validator_set
from chain.votes import NIL
from consensus.messages import (
    InvalidProposal,
    Proposal,
    SignedProposal,
    sign_proposal,
    validate_signed_proposal,
)
from consensus.proposer import compute_proposer

NET = "test-net"
BLOCK = b"\x11" * 32


@pytest.fixture
def keys() -> dict[bytes, PrivateKey]:
    ks = [PrivateKey.from_label(f"messages-{i}") for i in range(4)]
    return {k.address: k for k in ks}


@pytest.fixture
def vals(keys: dict[bytes, PrivateKey]) -> ValidatorSet:
    return make_validator_set(0, [(k.public_key, 10) for k in keys.values()])


def signed_by_proposer(
    keys: dict[bytes, PrivateKey], vals: ValidatorSet, round: int = 0, pol_round: int = -1
) -> SignedProposal:
    proposer = compute_proposer(vals, 3, round)
    proposal = Proposal(2, 3, round, BLOCK, pol_round, proposer)
    return sign_proposal(keys[proposer], NET, proposal)


def test_proposal_golden_bytes() -> None:
    proposal = Proposal(1, 7, 2, b"\x22" * 32, -1, b"\x33" * 20)
    assert encode(proposal) == (
        bytes([0x96, 0x01, 0x07, 0x02, 0xC4, 0x20]) + b"\x22" * 32
        + bytes([0xFF, 0xC4, 0x14]) + b"\x33" * 20
    )


def test_signed_proposal_round_trip(keys: dict[bytes, PrivateKey], vals: ValidatorSet) -> None:
    sp = signed_by_proposer(keys, vals, round=2, pol_round=1)
    assert decode(SignedProposal, encode(sp)) == sp


def test_invalid_proposal_bytes_with_short_hash() -> None:
    raw = msgpack.packb([1, 7, 2, b"\x22" * 31, -1, b"\x33" * 20], use_bin_type=True)
    with pytest.raises(DecodingError, match="block_hash"):
        decode(Proposal, raw)


def test_validate_signed_proposal_accepts_expected_proposer(
    keys: dict[bytes, PrivateKey], vals: ValidatorSet
) -> None:
    validate_signed_proposal(signed_by_proposer(keys, vals), NET, vals)
    validate_signed_proposal(signed_by_proposer(keys, vals, round=3, pol_round=2), NET, vals)


def test_invalid_proposal_from_wrong_proposer(
    keys: dict[bytes, PrivateKey], vals: ValidatorSet
) -> None:
    other = next(a for a in keys if a != compute_proposer(vals, 3, 0))
    sp = sign_proposal(keys[other], NET, Proposal(2, 3, 0, BLOCK, -1, other))
    with pytest.raises(InvalidProposal, match="proposer"):
        validate_signed_proposal(sp, NET, vals)


def test_invalid_proposal_signature(keys: dict[bytes, PrivateKey], vals: ValidatorSet) -> None:
    sp = signed_by_proposer(keys, vals)
    with pytest.raises(InvalidProposal, match="signature"):
        validate_signed_proposal(sp, "other-net", vals)
    forged = SignedProposal(sp.proposal, bytes(64))
    with pytest.raises(InvalidProposal, match="signature"):
        validate_signed_proposal(forged, NET, vals)


def test_invalid_proposal_pol_round_not_below_round(
    keys: dict[bytes, PrivateKey], vals: ValidatorSet
) -> None:
    with pytest.raises(InvalidProposal, match="pol_round"):
        validate_signed_proposal(signed_by_proposer(keys, vals, round=1, pol_round=1), NET, vals)
    with pytest.raises(InvalidProposal, match="pol_round"):
        validate_signed_proposal(signed_by_proposer(keys, vals, round=1, pol_round=-2), NET, vals)


def test_invalid_proposal_for_nil(keys: dict[bytes, PrivateKey], vals: ValidatorSet) -> None:
    proposer = compute_proposer(vals, 3, 0)
    sp = sign_proposal(keys[proposer], NET, Proposal(2, 3, 0, NIL, -1, proposer))
    with pytest.raises(InvalidProposal, match="nil"):
        validate_signed_proposal(sp, NET, vals)
