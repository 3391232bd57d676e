"""The snapshot attestation pool: validators' signatures over snapshot claims, tallied into the
`CommitSnapshot` system transaction a parameter-chain proposer includes.

    SnapshotSignature(base, tensor, validator, signature) ─ gossip "snapshot-attest" ─> pool
    signatures of > 2/3 of the power over one (base, tensor) ─> CommitSnapshot(base, tensor,
        Attestation(hash_of(SnapshotClaim(base, tensor)), signers, signatures))

A validator signs the snapshot claim exactly as `chain.commit.sign_attestation` does (kind
`attestation`, the claim's hash as the message), so the pool's signatures assemble into the
attestation the chain checks. A signature enters the pool only if the chain would take it: a
validator of the set in force, a good signature, a record the chain accepts for the block at
that head (`chain.parameter.validate_snapshot_record`); one snapshot per validator and head (a
second, different one is refused). A signature over a head that is not the block's head here is
ignored: stale, or this node is behind (the signer rebroadcasts it).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from chain import codec, crypto
from chain.codec import Address, Hash32, Signature, wire
from chain.errors import InvalidSignature, InvalidTransaction
from chain.heads import bump_version, get_expert
from chain.parameter import validate_snapshot_record
from chain.payloads import MAX_POL_VOTES, Attestation, CommitSnapshot, SnapshotClaim
from chain.records import ExpertState
from chain.state import Overlay, State
from chain.tensors import TensorRecord
from chain.types import CHAIN_PARAMETER, ZERO_PUBKEY, ZERO_SIGNATURE, Transaction, TxBody, ValidatorSet
from node.core.pools import PoolAdd, PoolOutcome

MAX_SNAPSHOT_SIGNATURE_BYTES = 16 * 1024
"""A signature on the wire: a tensor record of 64 tensors is well under."""
MAX_SNAPSHOTS = 1024
"""Snapshot claims the pool tracks at once (the oldest are dropped first)."""


@wire
class SnapshotSignature:
    """One validator's signature over a snapshot claim (gossip topic "snapshot-attest")."""

    base: Hash32
    """The head compacted."""
    tensor: TensorRecord
    """The full weights at that head (the materialised blob, the minor version bumped)."""
    validator: Address
    """The signer."""
    signature: Signature
    """Over hash_of(SnapshotClaim(base, tensor)), kind `attestation`."""


AddOutcome = PoolOutcome
AddSignature = PoolAdd


@dataclass(slots=True)
class _Claim:
    base: bytes
    tensor: TensorRecord
    signatures: dict[bytes, bytes] = field(default_factory=dict)
    """Validator address -> signature."""


def compute_snapshot_message(base: bytes, tensor: TensorRecord) -> bytes:
    return codec.hash_of(SnapshotClaim(base, tensor))


def compute_snapshot_record(state: ExpertState, materialised: TensorRecord) -> TensorRecord:
    """The record a snapshot of `state` names: the materialised weights of its head (blob,
    size, root, tiling, tensors), at the minor version bump the chain expects."""
    return TensorRecord(
        name=state.record.name, kind=state.record.kind, version=bump_version(state.version, 1),
        blob_id=materialised.blob_id, size=materialised.size, merkle_root=materialised.merkle_root,
        tile_size=materialised.tile_size, subtile_size=materialised.subtile_size, tensors=materialised.tensors,
    )


def sign_snapshot(key: crypto.PrivateKey, network_id: str, base: bytes, tensor: TensorRecord) -> SnapshotSignature:
    message = compute_snapshot_message(base, tensor)
    return SnapshotSignature(base, tensor, key.address, key.sign(network_id, crypto.KIND_ATTESTATION, message))


def validate_snapshot_signature(sig: SnapshotSignature, network_id: str, validators: ValidatorSet) -> None:
    """Raise `InvalidSignature` unless a validator of `validators` signed the claim."""
    member = validators.get(sig.validator)
    if member is None:
        raise InvalidSignature("snapshot signed by a non-validator")
    crypto.verify(member.public_key, network_id, crypto.KIND_ATTESTATION,
                  compute_snapshot_message(sig.base, sig.tensor), sig.signature)


class SnapshotPool:
    """Signatures by snapshot claim and validator."""

    def __init__(self, network_id: str) -> None:
        self.network_id = network_id
        self._claims: OrderedDict[bytes, _Claim] = OrderedDict()
        """Claim hash (the attested message) -> its signatures."""
        self._signed: dict[tuple[bytes, bytes], bytes] = {}
        """(base, validator) -> the claim hash it signed."""

    def claims(self) -> list[bytes]:
        return list(self._claims)

    def signers_of(self, message: bytes) -> list[bytes]:
        claim = self._claims.get(message)
        return sorted(claim.signatures) if claim is not None else []

    def add(self, sig: SnapshotSignature, state: State, validators: ValidatorSet) -> AddSignature:
        """Check a signature against the chain's rules and keep it."""
        try:
            validate_snapshot_signature(sig, self.network_id, validators)
        except InvalidSignature as err:
            return AddSignature(AddOutcome.INVALID, str(err))
        expert = get_expert(Overlay(state), sig.tensor.name)
        if expert is None:
            return AddSignature(AddOutcome.INVALID, f"no block {sig.tensor.name!r}")
        if sig.base != expert.head:
            return AddSignature(AddOutcome.STALE)
        try:
            validate_snapshot_record(expert, sig.tensor)
        except InvalidTransaction as err:
            return AddSignature(AddOutcome.INVALID, err.reason)
        message = compute_snapshot_message(sig.base, sig.tensor)
        held = self._signed.get((sig.base, sig.validator))
        if held is not None:
            if held == message:
                return AddSignature(AddOutcome.DUPLICATE)
            return AddSignature(AddOutcome.INVALID, "a second, different snapshot of one head by one validator")
        claim = self._claims.setdefault(message, _Claim(sig.base, sig.tensor))
        claim.signatures[sig.validator] = sig.signature
        self._signed[(sig.base, sig.validator)] = message
        self._claims.move_to_end(message)
        while len(self._claims) > MAX_SNAPSHOTS:
            self._drop(next(iter(self._claims)))
        return AddSignature(AddOutcome.ADDED)

    def prune(self, state: State) -> None:
        """Forget the claims whose base is no longer their block's head."""
        view = Overlay(state)
        for message, claim in list(self._claims.items()):
            expert = get_expert(view, claim.tensor.name)
            if expert is None or expert.head != claim.base:
                self._drop(message)

    def _drop(self, message: bytes) -> None:
        claim = self._claims.pop(message)
        for validator in claim.signatures:
            self._signed.pop((claim.base, validator), None)

    def make_system_txs(self, state: State, validators: ValidatorSet) -> list[Transaction]:
        """A `CommitSnapshot` for every claim on a current head whose signers hold > 2/3 of the
        power of `validators`."""
        txs = []
        view = Overlay(state)
        for message, claim in self._claims.items():
            expert = get_expert(view, claim.tensor.name)
            if expert is None or expert.head != claim.base:
                continue
            attestation = make_attestation(message, claim.signatures, validators)
            if attestation is not None:
                payload = CommitSnapshot(claim.base, claim.tensor, attestation)
                txs.append(Transaction(TxBody(CHAIN_PARAMETER, ZERO_PUBKEY, 0, payload), ZERO_SIGNATURE))
        return txs


def make_attestation(message: bytes, signatures: dict[bytes, bytes], validators: ValidatorSet) -> Attestation | None:
    """The attestation by the members of `validators` among the signers, the most powerful
    first (at most MAX_POL_VOTES), if they hold > 2/3 of the power; None otherwise."""
    members = [(m.power, addr) for addr in signatures if (m := validators.get(addr)) is not None]
    chosen = sorted(members, key=lambda pa: (-pa[0], pa[1]))[:MAX_POL_VOTES]
    if not validators.is_quorum(sum(p for p, _ in chosen)):
        return None
    signers = sorted(addr for _, addr in chosen)
    return Attestation(message, tuple(signers), tuple(signatures[a] for a in signers))
