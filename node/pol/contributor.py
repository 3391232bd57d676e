"""`blyan train`: fine-tune blocks of the model on approved datasets and write a submission bundle.

    plan = make_training_plan(materials, TrainingOptions(blocks=("layer0.expert0",)))
    result = train_bundle(materials, plan, key, out=Path("bundle"), residual_dir=data_dir / "learning")

The run starts from the blocks' current heads and is deterministic: the batch of step i is drawn
from (seed, i) over the declared datasets' token stream, torch runs with deterministic
algorithms and a fixed thread count, and the hyper-parameters the run uses are read back from
the manifest's fixed-point fields, so a validator rebuilds exactly the same configuration.
Error feedback: the compressed delta carries the residual of the contributor's previous round
(kept in `residual_dir`) when the chain accepted that round; the bundle ships that residual and
the manifest names the round, so a validator recomputes the compression exactly. The new
residual is kept for the next round.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from chain import codec
from chain.crypto import PrivateKey, digest_from_cid
from chain.errors import BlyanError
from chain.learning import (
    LR_SCALE,
    MANIFEST_VERSION,
    PPM,
    BlockBase,
    Checkpoint,
    ComputeEnv,
    DeltaSummary,
    Hyperparameters,
    SignedManifest,
    TrainingManifest,
    compute_manifest_hash,
    sign_manifest,
    to_micro,
)
from chain.tensors import DEFAULT_SUBTILE_SIZE
from consensus.pol import compute_checkpoint_steps
from gpu.delta import (
    CompressionConfig,
    apply_delta,
    compress_delta,
    compute_delta,
    compute_relative_error,
    decode_delta,
)
from gpu.finetune import FinetuneConfig, finetune
from gpu.tiles import compute_tensor_root
from gpu.weights import decode_block, encode_block
from node.pol.bundle import write_bundle
from node.pol.data import MaterialMissing, Materials, build_stream, load_base_model, load_tokenizer

logger = logging.getLogger(__name__)

RESIDUAL_FILE = "residual.safetensors"
RESIDUAL_META = "residual.json"
"""Which round (manifest hash) the kept residual is the residual of."""
DEFAULT_COMPRESSION = CompressionConfig(bits=8)
"""8-bit values with a scale per 4096: 4x smaller than the dense delta, and it keeps the whole
validation gain of a devnet run (measured: 0.230% of 0.230%); top-k at 10% keeps about half of it
in one round, 2% a sixth (docs/BENCHMARKS.md, section pol, has the curve)."""
Progress = Callable[[int, int, float, float], None]
"""(step done, steps, training loss, seconds so far)."""


@dataclass(frozen=True, slots=True)
class TrainingOptions:
    """What a contributor chooses; every field has a default that works on the devnet."""

    blocks: tuple[str, ...] = ("layer0.expert0",)
    """Blocks to train (experts, or shared modules such as "layer0.router")."""
    datasets: tuple[str, ...] = ()
    """Dataset CIDs; empty: every approved training dataset whose bytes are here."""
    steps: int = 320
    """Optimizer steps (about a minute for one devnet expert on 2 cores)."""
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 1e-3
    warmup_steps: int = 16
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    aux_loss_weight: float = 0.01
    seed: int = 0
    threads: int = 1
    compression: CompressionConfig = DEFAULT_COMPRESSION
    round_id: int | None = None
    """Training round; None: one after the blocks' last."""


@dataclass(frozen=True, slots=True)
class TrainingPlan:
    """Options resolved against the chains: the manifest's fields known before training."""

    options: TrainingOptions
    blocks: tuple[BlockBase, ...]
    """Bases (result roots still zero)."""
    datasets: tuple[str, ...]
    hyper: Hyperparameters
    round_id: int


@dataclass(frozen=True, slots=True)
class TrainingResult:
    signed: SignedManifest
    bundle: Path
    train_seconds: float
    tokens: int
    final_loss: float
    compression_error: float


def make_training_plan(m: Materials, options: TrainingOptions) -> TrainingPlan:
    """Check the options against the chains and fix every field the manifest will name."""
    params = m.pact.params.pol
    names = tuple(sorted(set(options.blocks)))
    if not names:
        raise ValueError("train at least one block")
    bases = []
    for name in names:
        block = m.ledger.blocks.get(name)
        if block is None or name == "tokenizer":
            raise ValueError(f"{name!r} is not a trainable block of this model")
        bases.append(BlockBase(name, block.head, block.weights_root, bytes(32)))
    datasets = options.datasets or tuple(_local_training_cids(m, params.min_dataset_tier))
    if not datasets:
        raise MaterialMissing("no approved training dataset has its bytes here")
    for cid in datasets:
        if not m.ledger.is_trainable(cid, params.min_dataset_tier):
            raise ValueError(f"dataset {cid} is not approved for training (or is in the validation set)")
    if not 0 < options.steps <= params.max_steps:
        raise ValueError(f"steps must be in [1, {params.max_steps}] (the genesis bound)")
    last = max(m.ledger.blocks[n].last_round for n in names)
    round_id = last + 1 if options.round_id is None else options.round_id
    return TrainingPlan(options, tuple(bases), tuple(datasets), make_hyperparameters(options, params.checkpoint_every),
                        round_id)


def _local_training_cids(m: Materials, min_tier: int) -> list[str]:
    """Approved training datasets whose bytes this node holds, in CID order."""
    return [cid for cid in m.ledger.training_cids(min_tier) if _has_blob(m, cid)]


def _has_blob(m: Materials, cid: str) -> bool:
    try:
        m.get_blob(digest_from_cid(cid))
    except (MaterialMissing, ValueError):
        return False
    return True


def make_hyperparameters(o: TrainingOptions, k: int) -> Hyperparameters:
    return Hyperparameters(
        steps=o.steps, batch_size=o.batch_size, seq_len=o.seq_len, lr_e9=round(o.lr * LR_SCALE),
        warmup_steps=o.warmup_steps, min_lr_ratio_ppm=round(o.min_lr_ratio * PPM),
        weight_decay_ppm=round(o.weight_decay * PPM), beta1_ppm=900_000, beta2_ppm=950_000,
        grad_clip_ppm=round(o.grad_clip * PPM), aux_loss_weight_ppm=round(o.aux_loss_weight * PPM), seed=o.seed,
        checkpoint_every=k,
    )


def finetune_config_of(blocks: Sequence[str], hyper: Hyperparameters, threads: int) -> FinetuneConfig:
    """The training configuration a manifest describes: the contributor trains with it and a
    validator replays with it, so both read the same floats out of the same integers."""
    return FinetuneConfig(
        blocks=tuple(blocks), steps=hyper.steps, batch_size=hyper.batch_size, seq_len=hyper.seq_len,
        lr=hyper.lr_e9 / LR_SCALE, warmup_steps=hyper.warmup_steps, min_lr_ratio=hyper.min_lr_ratio_ppm / PPM,
        weight_decay=hyper.weight_decay_ppm / PPM, betas=(hyper.beta1_ppm / PPM, hyper.beta2_ppm / PPM),
        grad_clip=hyper.grad_clip_ppm / PPM, aux_loss_weight=hyper.aux_loss_weight_ppm / PPM, seed=hyper.seed,
        threads=threads, checkpoint_every=hyper.checkpoint_every,
    )


def compute_env(threads: int) -> ComputeEnv:
    return ComputeEnv(torch=torch.__version__[:32], threads=threads, device="cpu", machine=platform.machine()[:32])


def train_bundle(m: Materials, plan: TrainingPlan, key: PrivateKey, out: Path, residual_dir: Path | None = None,
                 progress: Progress | None = None) -> TrainingResult:
    """Train, compress, sign and write the bundle to `out`."""
    o = plan.options
    names = [b.name for b in plan.blocks]
    tokenizer = load_tokenizer(m)
    stream = build_stream(m, tokenizer, plan.datasets)
    model = load_base_model(m)
    cfg = finetune_config_of(names, plan.hyper, o.threads)
    cfg.validate(model.cfg)
    base = {f"{n}/{t}": v.detach().clone() for n in names for t, v in model.block_state_dict(n).items()}
    done = _step_reporter(plan.hyper.steps, progress)
    result = finetune(model, stream, cfg, done)
    true_delta = compute_delta(result.final_weights, base)
    carried = load_residual(residual_dir, true_delta, m.ledger.accepted_manifests) if residual_dir else None
    residual, residual_from = carried if carried is not None else (None, bytes(32))
    compressed = compress_delta(true_delta, o.compression, residual)
    residual_blob = encode_block(residual) if residual is not None else b""
    decoded = decode_delta(compressed.blob, {name: tuple(t.shape) for name, t in true_delta.items()})
    error = compute_relative_error(decoded, true_delta)
    result_roots = compute_result_roots(names, apply_delta(base, decoded))
    blocks = tuple(BlockBase(b.name, b.base_head, b.base_root, result_roots[b.name]) for b in plan.blocks)
    manifest = TrainingManifest(
        version=MANIFEST_VERSION, network_id=m.pact.network_id, genesis_hash=m.genesis_hash,
        contributor=key.public_key, round_id=plan.round_id,
        model_head=m.ledger.model_head, blocks=blocks, datasets=plan.datasets,
        tokenizer=m.ledger.tokenizer_head or bytes(32), hyper=plan.hyper,
        checkpoints=describe_checkpoints(result.checkpoints, result.checkpoint_steps, result.batch_chain),
        batch_chain=result.batch_chain[-1], train_losses=tuple(to_micro(x) for x in result.segment_losses),
        env=compute_env(o.threads),
        delta=DeltaSummary(compressed.method, codec.sha256(compressed.blob),
                           compute_tensor_root(compressed.blob, DEFAULT_SUBTILE_SIZE), compressed.raw_bytes,
                           compressed.compressed_bytes, min(2**32 - 1, math.ceil(error * PPM) + 1),
                           residual_from, *_describe_blob(residual_blob)),
    )
    expected = compute_checkpoint_steps(plan.hyper.steps, plan.hyper.checkpoint_every)
    if [c.step for c in manifest.checkpoints] != expected:
        raise RuntimeError("the trainer's checkpoints are not at the steps the manifest must declare")
    signed = sign_manifest(key, manifest)
    write_bundle(out, signed, [*result.checkpoints, compressed.blob, *([residual_blob] if residual_blob else [])])
    if residual_dir is not None:
        save_residual(residual_dir, compressed.residual, compute_manifest_hash(manifest))
    return TrainingResult(signed, Path(out), result.seconds, result.tokens,
                          result.segment_losses[-1] if result.segment_losses else math.nan, error)


def _step_reporter(steps: int, progress: Progress | None) -> Callable[[int, float], None] | None:
    if progress is None:
        return None
    started = time.monotonic()

    def on_step(step: int, loss: float) -> None:
        progress(step + 1, steps, loss, time.monotonic() - started)

    return on_step


def _describe_blob(data: bytes) -> tuple[bytes, int, bytes]:
    """(SHA-256, size, Merkle root) of a blob; zeros for none."""
    if not data:
        return bytes(32), 0, bytes(32)
    return codec.sha256(data), len(data), compute_tensor_root(data, DEFAULT_SUBTILE_SIZE)


def describe_checkpoints(blobs: Sequence[bytes], steps: Sequence[int],
                         chain: Sequence[bytes]) -> tuple[Checkpoint, ...]:
    return tuple(Checkpoint(step, compute_tensor_root(blob, DEFAULT_SUBTILE_SIZE), codec.sha256(blob), len(blob),
                            link) for blob, step, link in zip(blobs, steps, chain, strict=True))


def compute_result_roots(names: Sequence[str], weights: dict[str, Tensor]) -> dict[str, bytes]:
    """Per block: the Merkle root of its canonical tensor blob after the delta."""
    roots = {}
    for name in names:
        tensors = {k.split("/", 1)[1]: v for k, v in weights.items() if k.split("/", 1)[0] == name}
        roots[name] = compute_tensor_root(encode_block(tensors), DEFAULT_SUBTILE_SIZE)
    return roots


def load_residual(residual_dir: Path, like: dict[str, Tensor],
                  accepted: frozenset[bytes]) -> tuple[dict[str, Tensor], bytes] | None:
    """The residual of the contributor's last round and that round's manifest hash, if the chain
    accepted that round (a residual of a round never applied is not carried: what it leaves out
    was never sent) and it is for the same tensors."""
    file, meta = Path(residual_dir) / RESIDUAL_FILE, Path(residual_dir) / RESIDUAL_META
    if not file.exists() or not meta.exists():
        return None
    try:
        source = bytes.fromhex(json.loads(meta.read_text())["manifest"])
        residual = decode_block(file.read_bytes())
    except (OSError, ValueError, KeyError, TypeError, BlyanError) as err:
        logger.warning("ignoring the error-feedback residual in %s: %s", residual_dir, err)
        return None
    if source not in accepted:
        logger.info("the error-feedback residual is of round %s, which the chain did not accept: not carried",
                    source.hex()[:16])
        return None
    if {k: tuple(v.shape) for k, v in residual.items()} != {k: tuple(v.shape) for k, v in like.items()}:
        logger.info("the error-feedback residual is for other tensors; not carried")
        return None
    return residual, source


def save_residual(residual_dir: Path, residual: dict[str, Tensor], manifest_hash: bytes) -> None:
    """Keep this round's residual, for the next round once the chain accepts this one."""
    residual_dir = Path(residual_dir)
    residual_dir.mkdir(parents=True, exist_ok=True)
    for name, data in ((RESIDUAL_FILE, encode_block(residual)),
                       (RESIDUAL_META, json.dumps({"manifest": manifest_hash.hex()}).encode())):
        tmp = residual_dir / (name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(residual_dir / name)
