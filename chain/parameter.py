"""Parameter chain rules: the rules table. Learning rounds (commit, reveal, PoL votes, a round's
close) live in `chain.rounds`, the blocks' heads and what a claim must say about them in
`chain.heads`; snapshots (a delta chain compacted into full weights) here.
"""

from __future__ import annotations

from chain import codec, commit
from chain.context import TxEnv
from chain.errors import InvalidSignature, InvalidTransaction
from chain.heads import bump_version, get_expert
from chain.payloads import CertifyDelta, CommitDelta, CommitSnapshot, RejectDelta, RevealDelta, SnapshotClaim
from chain.records import ExpertState, expert_key
from chain.rounds import apply_certify, apply_commit, apply_reject, apply_reveal, end_block
from chain.rules import ChainRules
from chain.state import Overlay
from chain.tensors import MAX_SUBTILES_PER_TILE, TensorRecord
from chain.types import CHAIN_PARAMETER


def validate_tensor_record(rec: TensorRecord) -> None:
    if rec.subtile_size == 0 or rec.tile_size == 0 or rec.tile_size % rec.subtile_size:
        raise InvalidTransaction("tile size must be a positive multiple of the subtile size")
    if rec.tile_size // rec.subtile_size > MAX_SUBTILES_PER_TILE:
        raise InvalidTransaction(f"more than {MAX_SUBTILES_PER_TILE} subtiles per tile cannot be proven")
    if rec.size == 0:
        raise InvalidTransaction("empty tensor block")
    if not rec.tensors:
        raise InvalidTransaction("a tensor block holds at least one tensor")


def validate_snapshot_record(expert: ExpertState, tensor: TensorRecord) -> None:
    """What a snapshot of `expert` at its head must be, its attestation aside: something to
    compact, the same kind, the minor version bumped, a valid record."""
    if not expert.deltas:
        raise InvalidTransaction("nothing to compact: no deltas since the last snapshot")
    if tensor.kind != expert.record.kind:
        raise InvalidTransaction("snapshot changes the kind of the block")
    version = bump_version(expert.version, 1)
    if tensor.version != version:
        raise InvalidTransaction(f"snapshot version {tensor.version!r}, expected {version!r}")
    validate_tensor_record(tensor)


def apply_snapshot(view: Overlay, env: TxEnv, p: CommitSnapshot) -> None:
    """A system transaction: the attestation of > 2/3 of the power over the snapshot claim is
    what authorises it (validators sign it once they have built the weights the head names:
    `node.experts.snapshots`), so any proposer may carry it unsigned."""
    name = p.tensor.name
    expert = get_expert(view, name)
    if expert is None:
        raise InvalidTransaction(f"no expert {name!r}")
    if p.base != expert.head:
        raise InvalidTransaction("snapshot base is not the expert's head")
    validate_snapshot_record(expert, p.tensor)
    message = codec.hash_of(SnapshotClaim(p.base, p.tensor))
    if p.attestation.message_hash != message:
        raise InvalidTransaction("attestation is for another snapshot")
    try:
        commit.verify_attestation(p.attestation, env.ctx.network_id, env.ctx.validators)
    except InvalidSignature as err:
        raise InvalidTransaction(f"snapshot attestation: {err}") from err
    view.put_record(
        expert_key(name),
        ExpertState(
            record=p.tensor, head=message, deltas=(), version=p.tensor.version,
            last_round=expert.last_round,
        ),
    )


RULES = ChainRules(
    chain_id=CHAIN_PARAMETER,
    apply={
        CommitDelta: apply_commit,
        RevealDelta: apply_reveal,
        CertifyDelta: apply_certify,
        RejectDelta: apply_reject,
        CommitSnapshot: apply_snapshot,
    },
    end_block=end_block,
    system=frozenset({CertifyDelta, RejectDelta, CommitSnapshot}),
)
