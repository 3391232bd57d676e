"""Proof-of-Learning verdicts, the pure half: what a validator checks of a training manifest, in
which order, and how it judges the measurements its torch half (`gpu.finetune`, `gpu.delta`)
makes. Nothing here runs a model: it takes numbers and returns decisions.

The checks, in this order, each with its `Reason` when it fails (the first failure is the verdict):

 1. signature of the contributor; manifest version, network and genesis;
 2. base heads: every block trained exists, its base is its head now (else `STALE_BASE`) and the
    round comes after its last one;
 3. datasets: each approved for training at the genesis' minimum tier and none of the validation
    set; the tokenizer is the chain's;
 4. hyper-parameters and checkpoints: the genesis k, at most the genesis' steps, a checkpoint at
    0, every k steps and the last step, one loss per segment, a declared compression error within
    the genesis bound;
 5. the delta (measured by the torch half): the blob decodes to the trained blocks' shapes, every
    value finite, its norm within the genesis bound relative to the base;
 6. no accepted claim with the same manifest (a submission replayed);
 7. replay (Jia et al., "Proof-of-Learning: Definitions and Practice", 2021): checkpoint 0 is the
    base; segments chosen by `choose_segments` (the largest updates plus random ones, seeded by
    the manifest hash and the validator's key) replay to their next checkpoint bit for bit on the
    claimed environment, or within the genesis tolerance elsewhere, and their batches hash to the
    chain the manifest declares;
 8. compression honesty: decode(delta) is within the declared error of final - base;
 9. improvement: the validation loss of base + decode(delta) beats the base's by the genesis
    minimum.
"""

from __future__ import annotations

import enum
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from chain import rounds
from chain.errors import BlyanError, InvalidSignature
from chain.learning import (
    MANIFEST_VERSION,
    MAX_SEGMENTS_CHECKED,
    PPM,
    LearningVerdict,
    SegmentCheck,
    SignedManifest,
    TrainingManifest,
    compute_manifest_hash,
    verify_manifest_signature,
)
from chain.ledger import LedgerView
from chain.params import PolParams

MAX_BATCH_SIZE = 1024
"""Sequences per step a manifest may declare: bounds the work of a replay before its batches
are checked against the chain."""


class Reason(enum.Enum):
    """Why a manifest is rejected: the first check that failed."""

    BAD_SIGNATURE = "bad-signature"
    BAD_MANIFEST = "bad-manifest"
    WRONG_NETWORK = "wrong-network"
    WRONG_GENESIS = "wrong-genesis"
    UNKNOWN_BLOCK = "unknown-block"
    STALE_BASE = "stale-base"
    STALE_ROUND = "stale-round"
    DATASET_NOT_APPROVED = "dataset-not-approved"
    VALIDATION_DATASET = "validation-dataset"
    WRONG_TOKENIZER = "wrong-tokenizer"
    BAD_HYPERPARAMETERS = "bad-hyperparameters"
    BAD_CHECKPOINTS = "bad-checkpoints"
    MISSING_BLOB = "missing-blob"
    BAD_BLOB = "bad-blob"
    BAD_SHAPES = "bad-shapes"
    NON_FINITE = "non-finite"
    NORM_TOO_LARGE = "norm-too-large"
    DUPLICATE = "duplicate-manifest"
    BASE_MISMATCH = "base-mismatch"
    BATCH_MISMATCH = "batch-mismatch"
    REPLAY_DIVERGED = "replay-diverged"
    LOSS_MISMATCH = "loss-mismatch"
    COMPRESSION_ERROR = "compression-error"
    RESULT_MISMATCH = "result-mismatch"
    NO_IMPROVEMENT = "no-improvement"


class PolRejection(BlyanError):
    """A manifest failed a check: `reason` names it, `detail` says how."""

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")


@dataclass(frozen=True, slots=True)
class Distance:
    """How far a replayed checkpoint landed from the claimed one."""

    exact: bool
    """Bit-identical."""
    l2: float
    """||replayed - claimed|| / ||claimed||."""
    linf: float
    """Largest absolute difference."""
    cosine: float
    """Cosine similarity of the flattened weights."""


# --- 1-4: the manifest against the chains --------------------------------------------------


def validate_manifest(signed: SignedManifest, ledger: LedgerView, params: PolParams, network_id: str,
                      genesis_hash: bytes) -> None:
    """Checks 1 to 4; raise `PolRejection` at the first that fails."""
    m = signed.manifest
    validate_identity(signed, network_id, genesis_hash)
    validate_bases(m, ledger)
    validate_datasets(m, ledger, params)
    validate_hyperparameters(m, params)


def validate_identity(signed: SignedManifest, network_id: str, genesis_hash: bytes) -> None:
    try:
        verify_manifest_signature(signed)
    except InvalidSignature as err:
        raise PolRejection(Reason.BAD_SIGNATURE, "the manifest is not signed by its contributor") from err
    m = signed.manifest
    if m.version != MANIFEST_VERSION:
        raise PolRejection(Reason.BAD_MANIFEST, f"version {m.version!r}, expected {MANIFEST_VERSION!r}")
    if m.network_id != network_id:
        raise PolRejection(Reason.WRONG_NETWORK, f"for network {m.network_id!r}, not {network_id!r}")
    if m.genesis_hash != genesis_hash:
        raise PolRejection(Reason.WRONG_GENESIS, f"for genesis {m.genesis_hash.hex()[:16]}")


def validate_bases(m: TrainingManifest, ledger: LedgerView) -> None:
    if m.model_head != ledger.model_head:
        raise PolRejection(Reason.STALE_BASE, f"trained on model head {m.model_head.hex()[:16]}, the chain's is "
                           f"{ledger.model_head.hex()[:16]} (another claim was applied since)")
    names = [b.name for b in m.blocks]
    if names != sorted(set(names)):
        raise PolRejection(Reason.BAD_MANIFEST, "blocks not sorted by name or repeated")
    for base in m.blocks:
        block = ledger.blocks.get(base.name)
        if block is None or base.name == "tokenizer":
            raise PolRejection(Reason.UNKNOWN_BLOCK, f"no trainable block {base.name!r}")
        if base.base_head != block.head:
            raise PolRejection(Reason.STALE_BASE, f"{base.name} was trained on {base.base_head.hex()[:16]}, "
                               f"its head is {block.head.hex()[:16]}")
        if base.base_root != block.weights_root:
            raise PolRejection(Reason.BASE_MISMATCH, f"{base.name}: base root is not the head's weights root")
        if m.round_id <= block.last_round:
            raise PolRejection(Reason.STALE_ROUND, f"round {m.round_id} not after {block.last_round} of {base.name}")


def validate_datasets(m: TrainingManifest, ledger: LedgerView, params: PolParams) -> None:
    if len(set(m.datasets)) != len(m.datasets):
        raise PolRejection(Reason.BAD_MANIFEST, "a dataset is declared twice")
    validation = set(ledger.validation)
    for cid in m.datasets:
        if cid in validation:
            raise PolRejection(Reason.VALIDATION_DATASET, f"{cid} is in the validation set")
        if not ledger.is_trainable(cid, params.min_dataset_tier):
            raise PolRejection(Reason.DATASET_NOT_APPROVED, f"{cid} is not approved for training")
    if m.tokenizer != ledger.tokenizer_head:
        raise PolRejection(Reason.WRONG_TOKENIZER, "the tokenizer is not the chain's")


def compute_checkpoint_steps(steps: int, k: int) -> list[int]:
    """0, k, 2k, ... and the last step."""
    marks = list(range(0, steps, k))
    return [*marks, steps] if marks[-1] != steps else marks


def validate_hyperparameters(m: TrainingManifest, params: PolParams) -> None:
    h = m.hyper
    if h.checkpoint_every != params.checkpoint_every:
        raise PolRejection(Reason.BAD_HYPERPARAMETERS, f"checkpoints every {h.checkpoint_every} steps, "
                           f"the genesis says {params.checkpoint_every}")
    if not 0 < h.steps <= params.max_steps:
        raise PolRejection(Reason.BAD_HYPERPARAMETERS, f"{h.steps} steps, at most {params.max_steps}")
    if h.batch_size == 0 or h.seq_len < 2 or h.lr_e9 == 0:
        raise PolRejection(Reason.BAD_HYPERPARAMETERS, "empty batches or no learning rate")
    if h.batch_size > MAX_BATCH_SIZE:
        raise PolRejection(Reason.BAD_HYPERPARAMETERS, f"batches of {h.batch_size}, at most {MAX_BATCH_SIZE} "
                           "(a validator replays them)")
    expected = compute_checkpoint_steps(h.steps, h.checkpoint_every)
    if [c.step for c in m.checkpoints] != expected:
        raise PolRejection(Reason.BAD_CHECKPOINTS, f"checkpoints at steps {[c.step for c in m.checkpoints][:8]}..., "
                           f"expected {expected[:8]}...")
    if m.checkpoints[0].batch_chain != bytes(32) or m.checkpoints[-1].batch_chain != m.batch_chain:
        raise PolRejection(Reason.BAD_CHECKPOINTS, "the batch chain does not start at zero or end at its value")
    if len(m.train_losses) != len(m.checkpoints) - 1:
        raise PolRejection(Reason.BAD_CHECKPOINTS, "one training loss per segment")
    if m.delta.error_ppm > params.max_compression_error_ppm:
        raise PolRejection(Reason.COMPRESSION_ERROR, f"declared error {m.delta.error_ppm} ppm exceeds "
                           f"{params.max_compression_error_ppm}")


# --- 5-6 -------------------------------------------------------------------------------------


def validate_delta_norm(delta_l2: float, base_l2: float, finite: bool, params: PolParams) -> None:
    if not finite:
        raise PolRejection(Reason.NON_FINITE, "the delta holds NaN or infinite values")
    bound = params.max_delta_norm_ppm / PPM * base_l2
    if delta_l2 > bound:
        raise PolRejection(Reason.NORM_TOO_LARGE, f"delta norm {delta_l2:.4g} exceeds {bound:.4g} "
                           f"({params.max_delta_norm_ppm} ppm of the base's {base_l2:.4g})")


def validate_not_duplicate(manifest_hash: bytes, ledger: LedgerView) -> None:
    if manifest_hash in ledger.accepted_manifests:
        raise PolRejection(Reason.DUPLICATE, "a delta of this manifest was accepted already")


# --- 7: replay -------------------------------------------------------------------------------


def compute_segment_seed(manifest_hash: bytes, validator_key: bytes) -> bytes:
    """Nobody controls it in advance: the contributor fixed the manifest before knowing who
    verifies, and a validator cannot pick its key per claim."""
    return hashlib.sha256(b"blyan-pol-segments\0" + manifest_hash + validator_key).digest()


def choose_segments(seed: bytes, update_norms: Sequence[float], top: int, extra: int) -> list[int]:
    """Segments to replay (segment i goes from checkpoint i to i + 1): the `top` with the largest
    updates (ties by index), then `extra` others drawn by `seed`; sorted, at most all of them."""
    n = len(update_norms)
    ranked = sorted(range(n), key=lambda i: (-update_norms[i], i))
    chosen = set(ranked[: min(top, n, MAX_SEGMENTS_CHECKED)])  # the largest first, within the cap
    rest = [i for i in range(n) if i not in chosen]
    rng = random.Random(int.from_bytes(seed, "big"))
    chosen.update(rng.sample(rest, min(extra, len(rest), MAX_SEGMENTS_CHECKED - len(chosen))))
    return sorted(chosen)


def judge_replay(distance: Distance, same_environment: bool, params: PolParams) -> bool:
    """Bit-exact on the claimed environment; within the genesis tolerance elsewhere."""
    if distance.exact:
        return True
    if same_environment:
        return False
    return (distance.l2 * PPM <= params.replay_tolerance_ppm and distance.linf * PPM <= params.replay_linf_ppm
            and distance.cosine * PPM >= params.replay_min_cosine_ppm)


def to_segment_check(index: int, distance: Distance) -> SegmentCheck:
    return SegmentCheck(index, distance.exact, _ppm(distance.l2), _ppm(distance.linf), _ppm(distance.cosine))


# --- 8-9 -------------------------------------------------------------------------------------


def validate_compression(measured_error: float, declared_error_ppm: int) -> None:
    """The decoded delta is within the declared error of final - base (a millionth of slack for
    the rounding of the declaration)."""
    if measured_error * PPM > declared_error_ppm + 1:
        raise PolRejection(Reason.COMPRESSION_ERROR, f"decoded delta is {measured_error:.6f} from final - base, "
                           f"{declared_error_ppm / PPM:.6f} declared")


def is_improvement(base_loss: int, new_loss: int, params: PolParams) -> bool:
    """The chain's rule (`chain.rounds.is_accepting_vote`): the loss fell by the minimum share."""
    return rounds.is_improvement(base_loss, new_loss, params.min_improvement_ppm)


def validate_improvement(base_loss: int, new_loss: int, params: PolParams) -> None:
    if not is_improvement(base_loss, new_loss, params):
        raise PolRejection(Reason.NO_IMPROVEMENT, f"validation loss {base_loss / PPM:.6f} -> {new_loss / PPM:.6f}, "
                           f"a gain of at least {params.min_improvement_ppm} ppm is needed")


# --- the verdict -----------------------------------------------------------------------------


def make_verdict(manifest: TrainingManifest, validator: bytes, rejection: PolRejection | None, base_loss: int = 0,
                 new_loss: int = 0, segments: Sequence[SegmentCheck] = (),
                 compression_error: float = 0.0) -> LearningVerdict:
    return LearningVerdict(
        manifest_hash=compute_manifest_hash(manifest), accepted=rejection is None,
        reason="" if rejection is None else rejection.reason.value, base_loss=base_loss, new_loss=new_loss,
        segments=tuple(segments)[:MAX_SEGMENTS_CHECKED], compression_error_ppm=_ppm(compression_error),
        validator=validator,
    )


def _ppm(value: float) -> int:
    if value != value or value == float("inf"):  # NaN, infinity: as far as it can be
        return 2**32 - 1
    return max(0, min(2**32 - 1, round(value * PPM)))
