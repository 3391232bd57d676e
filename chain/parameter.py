"""Parameter chain rules: accepted deltas (compare-and-swap on the expert head) and snapshots.

An expert's head is the hash of its last block: the genesis `TensorRecord`, then each accepted
`DeltaClaim` (which names the previous head as its base), then each `SnapshotClaim`.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import replace

from chain import codec, commit, crypto
from chain.context import Context, TxEnv
from chain.errors import InvalidSignature, InvalidTransaction
from chain.payloads import CommitSnapshot, DeltaClaim, PolCertificate, SnapshotClaim, SubmitDelta
from chain.records import AcceptedDelta, Earning, ExpertState, delta_key, earning_key, expert_key, manifest_key
from chain.rules import ChainRules
from chain.state import Overlay
from chain.tensors import MAX_SUBTILES_PER_TILE, TensorRecord
from chain.types import CHAIN_PARAMETER, ValidatorSet

MAX_DELTAS_BEFORE_SNAPSHOT = 4096
COMPRESSION_STAGES = frozenset({"dense", "topk", "lowrank", "int8", "int4", "int2"})
"""Stages of a compression pipeline (`gpu.delta.CompressionConfig.method`)."""
_STAGE = re.compile(r"([a-z0-9]+)(?:\(([a-z_]+=[0-9]+(?:,[a-z_]+=[0-9]+)*)\))?")


def get_expert(view: Overlay, name: str) -> ExpertState | None:
    return view.get_record(expert_key(name), ExpertState)


def bump_version(version: str, part: int) -> str:
    """SemVer bump: part 2 = patch, 1 = minor (resets patch)."""
    try:
        major, minor, patch = (int(x) for x in version.split("."))
    except ValueError as err:
        raise InvalidTransaction(f"version {version!r} is not SemVer") from err
    if part == 1:
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


def validate_tensor_record(rec: TensorRecord) -> None:
    if rec.subtile_size == 0 or rec.tile_size == 0 or rec.tile_size % rec.subtile_size:
        raise InvalidTransaction("tile size must be a positive multiple of the subtile size")
    if rec.tile_size // rec.subtile_size > MAX_SUBTILES_PER_TILE:
        raise InvalidTransaction(f"more than {MAX_SUBTILES_PER_TILE} subtiles per tile cannot be proven")
    if rec.size == 0:
        raise InvalidTransaction("empty tensor block")
    if not rec.tensors:
        raise InvalidTransaction("a tensor block holds at least one tensor")


def validate_pol_certificate(
    cert: PolCertificate, claim_hash: bytes, ctx: Context, validators: ValidatorSet
) -> tuple[int, int]:
    """Check every vote and that accepting votes hold >2/3 of the power; return median losses."""
    signers = [sv.vote.validator for sv in cert.votes]
    if signers != sorted(set(signers)):
        raise InvalidTransaction("PoL votes not sorted by validator or duplicated")
    power = 0
    base_losses, new_losses = [], []
    for sv in cert.votes:
        vote = sv.vote
        member = validators.get(vote.validator)
        if member is None:
            raise InvalidTransaction("PoL vote from a non-validator")
        if vote.claim_hash != claim_hash:
            raise InvalidTransaction("PoL vote is for another claim")
        try:
            crypto.verify(member.public_key, ctx.network_id, crypto.KIND_POL_VOTE, codec.encode(vote), sv.signature)
        except InvalidSignature as err:
            raise InvalidTransaction("bad PoL vote signature") from err
        if not is_accepting_vote(vote.base_loss_ppm, vote.new_loss_ppm, vote.replay_ok, ctx):
            raise InvalidTransaction("a certificate holds only accepting votes")
        power += member.power
        base_losses.append(vote.base_loss_ppm)
        new_losses.append(vote.new_loss_ppm)
    if not validators.is_quorum(power):
        raise InvalidTransaction(f"PoL votes hold {power} of {validators.total_power} power, not > 2/3")
    return int(statistics.median_low(base_losses)), int(statistics.median_low(new_losses))


def is_accepting_vote(base_loss: int, new_loss: int, replay_ok: bool, ctx: Context) -> bool:
    """Replay within tolerance and the loss improved by at least the genesis minimum."""
    needed = base_loss * ctx.params.pol.min_improvement_ppm // 1_000_000
    return replay_ok and new_loss < base_loss and base_loss - new_loss >= needed


def is_compression_method(method: str) -> bool:
    """Stages joined by "+", each a known name with optional integer parameters:
    "topk(chunk=4096,density=20000)+int2", "lowrank(rank=8)+int8", "dense"."""
    stages = method.split("+")
    for stage in stages:
        m = _STAGE.fullmatch(stage)
        if m is None or m[1] not in COMPRESSION_STAGES:
            return False
    return True


def validate_delta_claim(view: Overlay, claim: DeltaClaim) -> list[ExpertState]:
    """The claim's own rules; returns the state of each block it changes, in its order."""
    names = [change.name for change in claim.blocks]
    if names != sorted(set(names)):
        raise InvalidTransaction("delta blocks not sorted by name or repeated")
    if view.get(manifest_key(claim.manifest_hash)) is not None:
        raise InvalidTransaction("a delta of this training manifest was accepted already")
    if not is_compression_method(claim.compression):
        raise InvalidTransaction(f"unknown compression {claim.compression!r}")
    if claim.delta_size == 0 or claim.raw_size == 0 or claim.ratio_ppm == 0 or claim.ratio_ppm > 1_000_000:
        raise InvalidTransaction("delta sizes and ratio must be positive, ratio at most 1")
    states = []
    for change in claim.blocks:
        expert = get_expert(view, change.name)
        if expert is None:
            raise InvalidTransaction(f"no expert {change.name!r} (nor module of that name)")
        if change.base != expert.head:
            raise InvalidTransaction(f"delta base of {change.name} is not its head (trained on a stale base)")
        if claim.round_id <= expert.last_round:
            raise InvalidTransaction(f"round {claim.round_id} not after {expert.last_round} of {change.name}")
        if len(expert.deltas) >= MAX_DELTAS_BEFORE_SNAPSHOT:
            raise InvalidTransaction(f"{change.name} needs a snapshot before more deltas")
        states.append(expert)
    return states


def apply_delta(view: Overlay, env: TxEnv, p: SubmitDelta) -> None:
    claim: DeltaClaim = p.claim
    states = validate_delta_claim(view, claim)
    claim_hash = codec.hash_of(claim)
    base_loss, new_loss = validate_pol_certificate(p.certificate, claim_hash, env.ctx, env.ctx.validators)
    for change, expert in zip(claim.blocks, states, strict=True):
        view.put_record(
            expert_key(change.name),
            replace(
                expert, head=claim_hash, deltas=(*expert.deltas, claim_hash),
                version=bump_version(expert.version, 2), last_round=claim.round_id,
            ),
        )
    view.put(manifest_key(claim.manifest_hash), claim_hash)
    view.put_record(delta_key(claim_hash), AcceptedDelta(claim, env.height, base_loss, new_loss))
    view.put_record(earning_key(env.tx_hash), Earning(claim.contributor, env.ctx.params.rewards.delta_reward, "delta"))


def apply_snapshot(view: Overlay, env: TxEnv, p: CommitSnapshot) -> None:
    name = p.tensor.name
    expert = get_expert(view, name)
    if expert is None:
        raise InvalidTransaction(f"no expert {name!r}")
    if p.base != expert.head:
        raise InvalidTransaction("snapshot base is not the expert's head")
    if not expert.deltas:
        raise InvalidTransaction("nothing to compact: no deltas since the last snapshot")
    if p.tensor.kind != expert.record.kind:
        raise InvalidTransaction("snapshot changes the kind of the block")
    validate_tensor_record(p.tensor)
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
            record=p.tensor, head=message, deltas=(), version=bump_version(expert.version, 1),
            last_round=expert.last_round,
        ),
    )


def end_block(view: Overlay, height: int, ctx: Context) -> None:
    """Nothing happens at the end of a parameter block."""


RULES = ChainRules(
    chain_id=CHAIN_PARAMETER,
    apply={SubmitDelta: apply_delta, CommitSnapshot: apply_snapshot},
    end_block=end_block,
)
