"""An accepted delta's attestation: one self-contained JSON file that checks offline.

    doc = build_attestation(store, claim_hash)      # a node that holds the chain
    problems = verify_attestation(doc)              # anyone, later, with nothing but the file

The file holds the canonical bytes that prove the claim (`doc["canonical"]`, hex): the signed
training manifest, the claim, each signed PoL vote, the validator set that decided the block
that certified the claim, that block's header, the `CertifyDelta` transaction and its Merkle
proof against the header's transaction root, and the block's commit certificate (the
precommits of more than 2/3 of the set's power over the block hash). Everything else in the
file (metrics, contributor, training, certificate, validator set, finality) is a readable
rendering of those bytes: `verify_attestation` (`chain.attest_check`) renders them again and
reports every number that differs, so the readable part is never trusted.

A few values are the exporting node's word, not proven by the bytes (`UNCHECKED`): that the
round close applied the claim (status, applied height), the dataset sizes and the validation
set its dataset chain holds now. The verdicts carry one aggregate validation loss, not one per
validation dataset: the file says so rather than invent numbers.

This is not `chain.payloads.Attestation` (validators' signatures over one hash, for snapshots).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chain import codec, crypto, merkle
from chain.errors import BlyanError
from chain.learning import LR_SCALE, PPM, SignedManifest, compute_manifest_hash
from chain.merkle import MerkleProof
from chain.pact import compute_genesis_validators
from chain.payloads import CertifyDelta, DeltaClaim, SignedPolVote
from chain.records import (
    CLAIM_ACCEPTED,
    CLAIM_STATUS_NAMES,
    KEY_VALIDATION_SET,
    ClaimRecord,
    DatasetRecord,
    cid_key,
    claim_key,
    dataset_key,
)
from chain.reward import get_validator_set
from chain.store import ChainStore
from chain.types import (
    CHAIN_DATASET,
    CHAIN_NAMES,
    CHAIN_PARAMETER,
    CHAIN_REWARD,
    BlockHeader,
    CommitCertificate,
    Transaction,
    ValidatorSet,
)

SCHEMA = "blyan-attestation/1"
MAX_CANONICAL_BYTES = 1 << 20
"""Cap on each canonical part when a file is decoded."""
UNCHECKED = (
    "claim.status",
    "claim.applied_height",
    "contributor.datasets[].size",
    "metrics.validation_datasets",
)
"""Fields the exporting node states and the canonical bytes do not prove."""
PER_DATASET_NOTE = ("PoL verdicts carry one aggregate validation loss over the whole validation set; "
                    "no per-dataset numbers are on the chain")
REF_BYTES = 32


class AttestationError(BlyanError):
    """An attestation that cannot be built from this node's chains."""


class ClaimNotAccepted(AttestationError):
    """The claim exists but was not applied: only accepted claims are attested."""

    def __init__(self, claim_hash: bytes, status: str) -> None:
        self.claim_hash = claim_hash
        self.status = status
        super().__init__(f"claim {claim_hash.hex()[:16]} is {status}, not accepted: only accepted claims are attested")


@dataclass(frozen=True, slots=True)
class Parts:
    """The canonical parts of an attestation, decoded."""

    manifest: SignedManifest
    """The contributor's signed training manifest."""
    claim: DeltaClaim
    """The claim it makes."""
    votes: tuple[SignedPolVote, ...]
    """The certifying PoL votes, sorted by validator."""
    validators: ValidatorSet
    """The set that decided the certifying block."""
    header: BlockHeader
    """The certifying block's header."""
    tx: Transaction
    """The `CertifyDelta` system transaction."""
    proof: MerkleProof
    """Its inclusion in `header.tx_root`."""
    commit: CommitCertificate
    """Precommits for the certifying block."""


@dataclass(frozen=True, slots=True)
class Extras:
    """What the exporting node states beyond the canonical bytes (`UNCHECKED`)."""

    status: str
    """The claim's status on the exporter's chain ("accepted")."""
    applied_height: int
    """Height of the round close that applied it."""
    dataset_sizes: dict[str, int | None]
    """Training dataset CID -> bytes, as the exporter's dataset chain has it (None: unknown)."""
    validation_datasets: tuple[str, ...]
    """CIDs of the validation set on the exporter's dataset chain now."""


def compute_median_losses(votes: tuple[SignedPolVote, ...]) -> tuple[int, int]:
    """(base, new) validation loss in micro-nats per token, as the chain takes them."""
    base = [sv.vote.verdict.base_loss for sv in votes]
    new = [sv.vote.verdict.new_loss for sv in votes]
    return int(statistics.median_low(base)), int(statistics.median_low(new))


# --- building -------------------------------------------------------------------------------


def build_attestation(store: ChainStore, claim_hash: bytes,
                      get_set: Callable[[bytes], ValidatorSet | None] | None = None) -> dict[str, Any]:
    """The attestation of an accepted claim; `get_set` finds a validator set by hash (default:
    the sets saved in the store, the reward chain's current one and the genesis one)."""
    raw = store.state(CHAIN_PARAMETER).get(claim_key(claim_hash))
    if raw is None:
        raise AttestationError(f"no revealed claim {claim_hash.hex()[:16]} on the parameter chain")
    rec = codec.decode(ClaimRecord, raw)
    if rec.status != CLAIM_ACCEPTED:
        raise ClaimNotAccepted(claim_hash, CLAIM_STATUS_NAMES.get(rec.status, str(rec.status)))
    block = store.get_block(CHAIN_PARAMETER, rec.decided_height)
    if block is None:
        raise AttestationError(f"parameter block {rec.decided_height}, which certified the claim, is not held here")
    index = _find_certify(block.txs, claim_hash)
    if index is None:
        raise AttestationError(f"parameter block {rec.decided_height} holds no certificate of the claim")
    commit = store.get_commit(CHAIN_PARAMETER, rec.decided_height)
    if commit is None:
        raise AttestationError(f"the commit of parameter block {rec.decided_height} is not known here yet")
    validators = _find_set(store, block.header.validators_hash, get_set)
    tx = block.txs[index]
    parts = Parts(
        manifest=rec.manifest, claim=rec.claim, votes=tuple(tx.body.payload.certificate.votes),
        validators=validators, header=block.header, tx=tx,
        proof=merkle.compute_proof([t.hash() for t in block.txs], index, 2), commit=commit,
    )
    extras = Extras(CLAIM_STATUS_NAMES[rec.status], rec.applied_height, _dataset_sizes(store, rec.manifest),
                    _validation_set(store))
    return {"schema": SCHEMA, **render(parts, extras), "canonical": encode_parts(parts)}


def _find_certify(txs: tuple[Transaction, ...], claim_hash: bytes) -> int | None:
    for i, tx in enumerate(txs):
        p = tx.body.payload
        if isinstance(p, CertifyDelta) and p.claim_hash == claim_hash:
            return i
    return None


def _find_set(store: ChainStore, vs_hash: bytes,
              get_set: Callable[[bytes], ValidatorSet | None] | None) -> ValidatorSet:
    found = get_set(vs_hash) if get_set is not None else None
    if found is None:
        known = store.load_validator_sets()
        for vs in (get_validator_set(store.state(CHAIN_REWARD)), compute_genesis_validators(store.pact)):
            known.setdefault(vs.hash(), vs)
        found = known.get(vs_hash)
    if found is None:
        raise AttestationError(f"validator set {vs_hash.hex()[:16]}, which decided the block, is not known here")
    return found


def _dataset_sizes(store: ChainStore, signed: SignedManifest) -> dict[str, int | None]:
    state = store.state(CHAIN_DATASET)
    sizes: dict[str, int | None] = {}
    for cid in signed.manifest.datasets:
        ref = state.get(cid_key(cid))
        raw = None if ref is None else state.get(dataset_key(ref))
        sizes[cid] = None if raw is None else codec.decode(DatasetRecord, raw).size
    return sizes


def _validation_set(store: ChainStore) -> tuple[str, ...]:
    state = store.state(CHAIN_DATASET)
    raw = state.get(KEY_VALIDATION_SET) or b""
    cids = []
    for i in range(0, len(raw), REF_BYTES):
        rec = state.get(dataset_key(raw[i:i + REF_BYTES]))
        if rec is not None:
            cids.append(codec.decode(DatasetRecord, rec).cid)
    return tuple(cids)


def encode_parts(parts: Parts) -> dict[str, Any]:
    return {
        "manifest": codec.encode(parts.manifest).hex(),
        "claim": codec.encode(parts.claim).hex(),
        "votes": [codec.encode(sv).hex() for sv in parts.votes],
        "validator_set": codec.encode(parts.validators).hex(),
        "header": codec.encode(parts.header).hex(),
        "certify_tx": codec.encode(parts.tx).hex(),
        "tx_proof": codec.encode(parts.proof).hex(),
        "commit": codec.encode(parts.commit).hex(),
    }


# --- the readable rendering of the canonical parts ------------------------------------------


def render(parts: Parts, extras: Extras) -> dict[str, Any]:
    """Every readable section of the file, computed from the canonical parts (and the extras)."""
    m = parts.manifest.manifest
    return {
        "network": {"id": m.network_id, "genesis_hash": m.genesis_hash.hex()},
        "claim": render_claim(parts, extras),
        "metrics": render_metrics(parts.votes, extras),
        "contributor": render_contributor(parts.manifest, extras),
        "training": render_training(parts.manifest),
        "certificate": render_certificate(parts),
        "validator_set": render_validator_set(parts.validators),
        "finality": render_finality(parts),
        "unchecked": list(UNCHECKED),
    }


def render_claim(parts: Parts, extras: Extras) -> dict[str, Any]:
    c = parts.claim
    return {
        "hash": codec.hash_of(c).hex(), "status": extras.status, "round_id": c.round_id,
        "manifest_hash": c.manifest_hash.hex(), "contributor": crypto.format_address(c.contributor),
        "blocks": [{"name": b.name, "base": b.base.hex(), "result_root": b.result_root.hex()} for b in c.blocks],
        "delta": {"blob": c.delta_blob.hex(), "root": c.delta_root.hex(), "size": c.delta_size,
                  "raw_size": c.raw_size, "compression": c.compression, "ratio_ppm": c.ratio_ppm},
        "certified_height": parts.header.height, "applied_height": extras.applied_height,
    }


def render_metrics(votes: tuple[SignedPolVote, ...], extras: Extras) -> dict[str, Any]:
    base, new = compute_median_losses(votes) if votes else (0, 0)
    before, after = _loss_metrics(base), _loss_metrics(new)
    gain_ppm = 0 if base == 0 or new >= base else (base - new) * PPM // base
    return {
        "unit": "validation loss in nats per token; perplexity = exp(loss)",
        "aggregation": "median (low) of the certifying validators' measurements",
        "baseline": before,
        "new": after,
        "delta": {
            "validation_loss": (new - base) / PPM,
            "validation_loss_micro_nats": new - base,
            "validation_loss_relative": None if base == 0 else (new - base) / base,
            "perplexity": _sub(after["perplexity"], before["perplexity"]),
            "perplexity_relative": (None if not before["perplexity"] or after["perplexity"] is None
                                    else (after["perplexity"] - before["perplexity"]) / before["perplexity"]),
            "gain_ppm": gain_ppm,
        },
        "per_dataset": None,
        "per_dataset_note": PER_DATASET_NOTE,
        "validation_datasets": list(extras.validation_datasets),
    }


def _loss_metrics(micro: int) -> dict[str, Any]:
    loss = micro / PPM
    return {"validation_loss": loss, "validation_loss_micro_nats": micro,
            "perplexity": math.exp(loss) if loss < 700 else None}


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def render_contributor(signed: SignedManifest, extras: Extras) -> dict[str, Any]:
    m = signed.manifest
    return {
        "address": crypto.format_address(crypto.address_of(m.contributor)),
        "public_key": m.contributor.hex(),
        "manifest_hash": compute_manifest_hash(m).hex(),
        "manifest_signature": signed.signature.hex(),
        "datasets": [{"cid": cid, "size": extras.dataset_sizes.get(cid)} for cid in m.datasets],
    }


def render_training(signed: SignedManifest) -> dict[str, Any]:
    m = signed.manifest
    h, d = m.hyper, m.delta
    hyper = to_jsonable(h)
    hyper.update({"learning_rate": h.lr_e9 / LR_SCALE, "min_lr_ratio": h.min_lr_ratio_ppm / PPM,
                  "weight_decay": h.weight_decay_ppm / PPM, "beta1": h.beta1_ppm / PPM, "beta2": h.beta2_ppm / PPM,
                  "grad_clip": h.grad_clip_ppm / PPM, "aux_loss_weight": h.aux_loss_weight_ppm / PPM})
    return {
        "version": m.version, "round_id": m.round_id, "tokenizer": m.tokenizer.hex(),
        "seeds": {"batch_order": h.seed},
        "hyperparameters": hyper,
        "environment": to_jsonable(m.env),
        "blocks": to_jsonable(m.blocks),
        "datasets": list(m.datasets),
        "checkpoints": to_jsonable(m.checkpoints),
        "batch_chain": m.batch_chain.hex(),
        "train_losses": [{"segment": i, "loss": v / PPM, "loss_micro_nats": v} for i, v in enumerate(m.train_losses)],
        "delta": {**to_jsonable(d), "error": d.error_ppm / PPM},
    }


def render_certificate(parts: Parts) -> dict[str, Any]:
    vs = parts.validators
    votes = []
    for sv in parts.votes:
        v = sv.vote.verdict
        votes.append({
            "validator": crypto.format_address(sv.vote.validator), "public_key": v.validator.hex(),
            "power": _power_of(vs, sv.vote.validator),
            "accepted": v.accepted, "reason": v.reason,
            "base_loss": v.base_loss / PPM, "base_loss_micro_nats": v.base_loss,
            "new_loss": v.new_loss / PPM, "new_loss_micro_nats": v.new_loss,
            "segments": [{"index": s.index, "exact": s.exact, "l2_ppm": s.l2_ppm, "l2": s.l2_ppm / PPM,
                          "linf_ppm": s.linf_ppm, "linf": s.linf_ppm / PPM, "cosine_ppm": s.cosine_ppm,
                          "cosine": s.cosine_ppm / PPM} for s in v.segments],
            "compression_error_ppm": v.compression_error_ppm, "compression_error": v.compression_error_ppm / PPM,
            "signature": sv.signature.hex(),
        })
    return {
        "claim_hash": codec.hash_of(parts.claim).hex(),
        "votes": votes,
        "accepting_power": vs.power_of({sv.vote.validator for sv in parts.votes}),
        "total_power": vs.total_power,
        "quorum": "more than 2/3 of the total power",
    }


def render_validator_set(vs: ValidatorSet) -> dict[str, Any]:
    return {
        "hash": vs.hash().hex(), "epoch": vs.epoch, "total_power": vs.total_power,
        "validators": [{"address": crypto.format_address(v.address), "public_key": v.public_key.hex(),
                        "power": v.power} for v in vs.validators],
    }


def render_finality(parts: Parts) -> dict[str, Any]:
    h, c, vs = parts.header, parts.commit, parts.validators
    sigs = [{"validator": crypto.format_address(s.validator), "power": _power_of(vs, s.validator),
             "signature": s.signature.hex()} for s in c.signatures]
    return {
        "chain": CHAIN_NAMES.get(h.chain_id, str(h.chain_id)), "height": h.height,
        "block_hash": codec.hash_of(h).hex(), "time_ms": h.time_ms,
        "proposer": crypto.format_address(h.proposer), "prev_hash": h.prev_hash.hex(),
        "tx_root": h.tx_root.hex(), "state_root": h.state_root.hex(), "validators_hash": h.validators_hash.hex(),
        "certify_tx_hash": parts.tx.hash().hex(), "certify_tx_index": parts.proof.index,
        "block_txs": parts.proof.count,
        "commit": {"round": c.round, "power": vs.power_of({s.validator for s in c.signatures}),
                   "signatures": sigs},
    }


def _power_of(vs: ValidatorSet, address: bytes) -> int | None:
    member = vs.get(address)
    return None if member is None else member.power


def to_jsonable(value: Any) -> Any:
    """A wire object as JSON: bytes as hex, nested objects as dicts of their fields."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {name: to_jsonable(getattr(value, name)) for name in value.__dataclass_fields__}
    return value
