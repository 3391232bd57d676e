"""Deterministic fine-tuning of some blocks of the MoE model, with the trail a verifier replays.

A contributor trains a few blocks (usually one expert; shared modules such as a router when asked)
while every other block stays frozen. The run is a pure function of (base weights, token stream,
FinetuneConfig) on one machine kind and torch build: the code path of `gpu.train` (deterministic
algorithms, a fixed thread count, AdamW with `foreach=False` over parameters in sorted-name order),
and batch `i` drawn by a generator seeded from (seed, i) alone, so a replay from any step draws the
same batches without replaying a sampler.

The trail: the hash of every batch's token ids, chained in order from 32 zero bytes; a checkpoint
at step 0 (the base), every k steps and at the last step; the mean training loss of each segment
between checkpoints. A checkpoint is one canonical safetensors blob (`gpu.weights.encode_block`):

    "<block>/<tensor>"      a trained weight, e.g. "layer0.expert1/w1.weight"
    "<block>/<tensor>#m"    its AdamW exp_avg
    "<block>/<tensor>#v"    its AdamW exp_avg_sq
    "#step"                 int64 [], the optimizer steps taken (every trained tensor takes each one)

Loading it into the base model and a fresh optimizer and running on lands on the same bytes as the
uninterrupted run. Every trained tensor takes every optimizer step: gradients start as zeros rather
than None, so an expert that no token reached in a batch still moves with its momentum and all
tensors share one step count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from chain.crypto import sha256
from chain.errors import BlyanError, DecodingError
from chain.tensors import DEFAULT_SUBTILE_SIZE
from gpu.model import InvalidBlockTensors, MoEConfig, MoEModel
from gpu.tiles import compute_tensor_root
from gpu.train import TrainConfig, compute_lr, deterministic_torch, evaluate_loss, sample_batch
from gpu.weights import decode_block, encode_block

ZERO_CHAIN = bytes(32)
"""The batch hash chain before the first batch."""
CHECKPOINT_SUBTILE_SIZE = DEFAULT_SUBTILE_SIZE
"""Subtile size of a checkpoint's Merkle root (256 KiB, as every tensor block)."""
STEP_KEY = "#step"
MOMENT_SUFFIXES = ("#m", "#v")  # exp_avg, exp_avg_sq

NamedParams = list[tuple[str, nn.Parameter]]


class InvalidCheckpoint(BlyanError):
    """A checkpoint blob that does not fit the model, the trained blocks or the run."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"checkpoint: {reason}")


@dataclass(frozen=True, slots=True)
class FinetuneConfig:
    blocks: tuple[str, ...]  # the blocks trained, sorted; every other block is frozen
    steps: int  # optimizer steps
    batch_size: int = 16  # sequences per step
    seq_len: int = 128  # tokens per sequence; at most the model's max_seq_len
    lr: float = 1e-3  # peak learning rate
    warmup_steps: int = 20  # linear warm-up from 0
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step
    weight_decay: float = 0.0  # AdamW, on matrices only
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW
    grad_clip: float = 1.0  # max global grad norm of the trained parameters
    aux_loss_weight: float = 0.01  # weight of the load-balancing loss
    seed: int = 0  # batch i is drawn from (seed, i) alone
    threads: int = 1  # torch intra-op threads: results may depend on it
    checkpoint_every: int = 16  # k: a checkpoint every k steps, and at the last step

    def validate(self, model_cfg: MoEConfig) -> None:
        """`ValueError` unless this run fits a model of `model_cfg`."""
        if min(self.steps, self.batch_size, self.threads, self.checkpoint_every) <= 0:
            raise ValueError(f"finetune sizes must be positive: {self}")
        if not 1 <= self.seq_len <= model_cfg.max_seq_len:
            raise ValueError(f"seq_len {self.seq_len} outside [1, the model's {model_cfg.max_seq_len}]")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1 or not self.lr > 0:
            raise ValueError(f"bad schedule: lr {self.lr}, warm-up {self.warmup_steps}, floor {self.min_lr_ratio}")
        if not all(0 <= b < 1 for b in self.betas) or self.weight_decay < 0 or not self.grad_clip > 0:
            raise ValueError(f"bad optimizer settings: betas {self.betas}, decay {self.weight_decay}, "
                             f"clip {self.grad_clip}")
        if self.aux_loss_weight < 0 or self.seed < 0:
            raise ValueError(f"negative aux_loss_weight {self.aux_loss_weight} or seed {self.seed}")
        if not self.blocks or list(self.blocks) != sorted(set(self.blocks)):
            raise ValueError(f"blocks must be sorted, distinct and not empty: {self.blocks}")
        unknown = sorted(set(self.blocks) - set(compute_block_names(model_cfg)))
        if unknown:
            raise ValueError(f"the model has no block {unknown[0]!r}")

    def to_train_config(self) -> TrainConfig:
        """The `gpu.train` config of the same schedule and optimizer (for `compute_lr`)."""
        return TrainConfig(
            steps=self.steps, batch_size=self.batch_size, seq_len=self.seq_len, lr=self.lr,
            min_lr_ratio=self.min_lr_ratio, warmup_steps=self.warmup_steps, weight_decay=self.weight_decay,
            betas=self.betas, grad_clip=self.grad_clip, aux_loss_weight=self.aux_loss_weight,
            seed=self.seed, threads=self.threads,
        )


@dataclass(frozen=True, slots=True)
class FinetuneResult:
    checkpoints: tuple[bytes, ...]
    """Checkpoint blobs: the base at step 0, then every k steps, and the last step."""
    checkpoint_steps: tuple[int, ...]
    """The step of each checkpoint."""
    batch_chain: tuple[bytes, ...]
    """The batch hash chain at each checkpoint: its value after the batches before that step."""
    segment_losses: tuple[float, ...]
    """Mean training cross-entropy (nats/token) of each segment between two checkpoints."""
    final_weights: dict[str, Tensor]
    """The trained tensors after the last step, as "<block>/<tensor>"."""
    seconds: float
    """Wall time of the run (not part of its determinism)."""
    tokens: int
    """Training tokens seen (steps * batch_size * seq_len)."""


@dataclass(frozen=True, slots=True)
class ReplayResult:
    end_blob: bytes
    """The checkpoint blob at the segment's end step."""
    batch_hashes: tuple[bytes, ...]
    """The hash of each batch of the segment, in order."""
    losses: tuple[float, ...]
    """The training cross-entropy of each step of the segment."""


@dataclass(frozen=True, slots=True)
class WeightDistance:
    exact: bool
    """Same names, shapes, dtypes and bytes."""
    l2: float
    """||a - b|| / ||b|| over every tensor flattened together."""
    linf: float
    """Largest absolute difference of one value."""
    cosine: float
    """Cosine similarity of the flattened weights a and b (of the weights, not of the updates)."""


# --- names, batches, the batch chain ----------------------------------------------------------


def compute_block_names(cfg: MoEConfig) -> list[str]:
    """The block names of a model of `cfg`, in `MoEModel.block_names()` order (built on meta)."""
    with torch.device("meta"):
        return MoEModel(cfg).block_names()


def compute_checkpoint_steps(steps: int, k: int) -> tuple[int, ...]:
    """0, k, 2k, ... and the last step."""
    marks = list(range(0, steps, k))
    return (*marks, steps) if marks[-1] != steps else tuple(marks)


def compute_batch_seed(seed: int, step: int) -> int:
    """The generator seed of batch `step`: a function of (seed, step) alone."""
    digest = sha256(f"blyan-finetune-batch/{seed}/{step}".encode())
    return int.from_bytes(digest[:8], "big") >> 1


def make_batch(stream: Tensor, seed: int, step: int, batch_size: int, seq_len: int) -> tuple[Tensor, Tensor]:
    """The batch of `step`: `batch_size` windows at random offsets of the 1-D stream, [B, T] each."""
    gen = torch.Generator().manual_seed(compute_batch_seed(seed, step))
    return sample_batch(stream, gen, batch_size, seq_len)  # [B, T], [B, T]


def hash_batch(x: Tensor, y: Tensor) -> bytes:
    """sha256 of the token ids as little-endian int64, inputs then targets."""
    raw = [t.detach().to("cpu", torch.int64).contiguous().numpy().astype("<i8").tobytes() for t in (x, y)]
    return sha256(raw[0] + raw[1])


def chain_batch_hash(prev: bytes, batch_hash: bytes) -> bytes:
    """The next value of the batch hash chain: sha256(prev || batch_hash)."""
    return sha256(prev + batch_hash)


def compute_batch_chain(prev: bytes, batch_hashes: Iterable[bytes]) -> bytes:
    """`prev` with every batch hash chained onto it, in order."""
    for batch_hash in batch_hashes:
        prev = chain_batch_hash(prev, batch_hash)
    return prev


def validate_stream(stream: Tensor, vocab_size: int, seq_len: int) -> None:
    """`ValueError` unless `stream` is 1-D int64 token ids of the vocabulary, long enough for a window."""
    if stream.dim() != 1 or stream.dtype != torch.int64:
        raise ValueError(f"the stream must be 1-D int64, not {stream.dtype}{list(stream.shape)}")
    if stream.numel() < seq_len + 2:
        raise ValueError(f"a stream of {stream.numel()} tokens is shorter than a window of {seq_len}")
    if int(stream.min()) < 0 or int(stream.max()) >= vocab_size:
        raise ValueError(f"the stream holds token ids outside [0, {vocab_size})")


# --- parameters and optimizer -----------------------------------------------------------------


def get_trained_parameters(model: MoEModel, blocks: Sequence[str]) -> NamedParams:
    """The trained parameters as ("<block>/<tensor>", parameter), sorted by name."""
    named = [(f"{b}/{n}", p) for b in blocks for n, p in model.get_block(b).named_parameters()]
    return sorted(named, key=lambda item: item[0])


def make_finetune_optimizer(model: MoEModel, cfg: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW over the trained parameters only, in sorted-name order; decay on matrices, none on norms."""
    params = [p for _, p in get_trained_parameters(model, cfg.blocks)]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, foreach=False)


def _set_adam_state(opt: torch.optim.AdamW, param: nn.Parameter, m: Tensor, v: Tensor, step: int) -> None:
    # the layout torch's AdamW initializes lazily (a CPU scalar step when neither fused nor capturable)
    opt.state[param] = {"step": torch.tensor(float(step), dtype=torch.float32), "exp_avg": m, "exp_avg_sq": v}


def _prime(opt: torch.optim.AdamW, named: NamedParams) -> None:
    """Zero gradients and, where the optimizer has none yet, a zero state: every tensor steps every step."""
    for _, p in named:
        p.grad = torch.zeros_like(p)
        if not opt.state[p]:
            _set_adam_state(opt, p, torch.zeros_like(p), torch.zeros_like(p), 0)


@contextmanager
def _trained_only(model: MoEModel, blocks: Sequence[str]) -> Iterator[NamedParams]:
    """Inside, only the trained parameters require gradients; the flags as they were after, no grads."""
    named = get_trained_parameters(model, blocks)
    trained = {id(p) for _, p in named}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(id(p) in trained)
    try:
        yield named
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
            p.grad = None


# --- checkpoints ------------------------------------------------------------------------------


def encode_checkpoint(model: MoEModel, optimizer: torch.optim.AdamW, blocks: Sequence[str], step: int) -> bytes:
    """The canonical checkpoint blob of the trained blocks' weights and AdamW state at `step`."""
    tensors: dict[str, Tensor] = {STEP_KEY: torch.tensor(step, dtype=torch.int64)}  # []
    for name, p in get_trained_parameters(model, blocks):
        state = optimizer.state.get(p) or {}
        taken = int(state["step"]) if state else 0
        if taken != step:
            raise ValueError(f"{name} has taken {taken} optimizer steps, not {step}")
        zeros = torch.zeros_like(p)
        tensors[name] = p.detach()
        tensors[name + "#m"] = state.get("exp_avg", zeros).detach()
        tensors[name + "#v"] = state.get("exp_avg_sq", zeros).detach()
    return encode_block(tensors)


def _decode_checkpoint(blob: bytes, named: NamedParams) -> tuple[dict[str, Tensor], int]:
    try:
        tensors = decode_block(blob)
    except DecodingError as err:
        raise InvalidCheckpoint(f"not a canonical tensor blob ({err})") from err
    expected = {STEP_KEY} | {n + s for n, _ in named for s in ("", *MOMENT_SUFFIXES)}
    if set(tensors) != expected:
        extra, missing = sorted(set(tensors) - expected), sorted(expected - set(tensors))
        raise InvalidCheckpoint(f"holds {extra[:3]} it should not, lacks {missing[:3]}")
    step = tensors[STEP_KEY]
    if step.dtype != torch.int64 or step.dim() != 0 or int(step) < 0:
        raise InvalidCheckpoint(f"{STEP_KEY} is {step.dtype}{list(step.shape)}, not a count")
    for name, p in named:
        for key in (name + s for s in ("", *MOMENT_SUFFIXES)):
            got = tensors[key]
            if got.shape != p.shape or got.dtype != p.dtype:
                raise InvalidCheckpoint(f"{key} is {got.dtype}{list(got.shape)}, not {p.dtype}{list(p.shape)}")
    return tensors, int(step)


def load_checkpoint(model: MoEModel, optimizer: torch.optim.AdamW, blob: bytes, blocks: Sequence[str]) -> int:
    """Load a checkpoint into the trained blocks and the optimizer's state; its step.

    `InvalidCheckpoint`, with the model and optimizer untouched, unless the blob is canonical and
    holds exactly the blocks' tensors and moments, with their shapes and dtypes, and a step."""
    named = get_trained_parameters(model, blocks)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if any(id(p) not in in_optimizer for _, p in named):
        raise ValueError("the optimizer does not hold every trained parameter")
    tensors, step = _decode_checkpoint(blob, named)
    try:
        for block in blocks:
            prefix = block + "/"
            model.load_block_state_dict(block, {k[len(prefix):]: v for k, v in tensors.items()
                                                if k.startswith(prefix) and "#" not in k})
    except InvalidBlockTensors as err:
        raise InvalidCheckpoint(f"block {err.block}: {err.reason}") from err
    for name, p in named:
        _set_adam_state(optimizer, p, tensors[name + "#m"].clone(), tensors[name + "#v"].clone(), step)
    return step


def checkpoint_weights(blob: bytes) -> dict[str, Tensor]:
    """The trained weights of a checkpoint blob, as "<block>/<tensor>" (no optimizer state)."""
    try:
        tensors = decode_block(blob)
    except DecodingError as err:
        raise InvalidCheckpoint(f"not a canonical tensor blob ({err})") from err
    return {name: t for name, t in tensors.items() if "#" not in name}


def compute_checkpoint_root(blob: bytes) -> bytes:
    """The Merkle root of a checkpoint blob (what a manifest addresses it by)."""
    return compute_tensor_root(blob, CHECKPOINT_SUBTILE_SIZE)


# --- training ---------------------------------------------------------------------------------


def _train_step(model: MoEModel, opt: torch.optim.AdamW, params: list[nn.Parameter], x: Tensor, y: Tensor,
                lr: float, cfg: FinetuneConfig) -> Tensor:
    """One optimizer step on the batch (x, y) [B, T]; the cross-entropy before it, detached."""
    for group in opt.param_groups:
        group["lr"] = lr
    _, loss, aux = model(x, y)  # [B, T, V], [], []
    opt.zero_grad(set_to_none=False)
    objective = loss + cfg.aux_loss_weight * aux  # []
    if objective.requires_grad:  # no token of the batch reached a trained block: zero gradients
        objective.backward()
    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=False)
    opt.step()
    return loss.detach()


def _run_steps(model: MoEModel, opt: torch.optim.AdamW, named: NamedParams, stream: Tensor,
               cfg: FinetuneConfig, start: int, end: int) -> Iterator[tuple[int, bytes, float]]:
    """Steps start..end-1, yielding (step, batch hash, loss) after each: what a run and a replay share."""
    schedule = cfg.to_train_config()
    params = [p for _, p in named]
    model.train()
    for step in range(start, end):
        x, y = make_batch(stream, cfg.seed, step, cfg.batch_size, cfg.seq_len)  # [B, T], [B, T]
        loss = _train_step(model, opt, params, x, y, compute_lr(step, schedule), cfg)
        yield step, hash_batch(x, y), float(loss)
    model.eval()


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def finetune(
    model: MoEModel,
    stream: Tensor,
    cfg: FinetuneConfig,
    on_step: Callable[[int, float], None] | None = None,
) -> FinetuneResult:
    """Train `cfg.blocks` of `model` in place on the 1-D token stream; `on_step(step, loss)` after each."""
    cfg.validate(model.cfg)
    validate_stream(stream, model.cfg.vocab_size, cfg.seq_len)
    marks = compute_checkpoint_steps(cfg.steps, cfg.checkpoint_every)
    started = time.monotonic()
    with deterministic_torch(cfg.threads), _trained_only(model, cfg.blocks) as named:
        opt = make_finetune_optimizer(model, cfg)
        _prime(opt, named)
        blobs, chains, segment_losses = [encode_checkpoint(model, opt, cfg.blocks, 0)], [ZERO_CHAIN], []
        chain, losses = ZERO_CHAIN, []
        for step, batch_hash, loss in _run_steps(model, opt, named, stream, cfg, 0, cfg.steps):
            chain = chain_batch_hash(chain, batch_hash)
            losses.append(loss)
            if on_step is not None:
                on_step(step, loss)
            if step + 1 == marks[len(blobs)]:
                blobs.append(encode_checkpoint(model, opt, cfg.blocks, step + 1))
                chains.append(chain)
                segment_losses.append(_mean(losses[marks[len(blobs) - 2]:]))
        final = {name: p.detach().clone() for name, p in named}
    return FinetuneResult(
        checkpoints=tuple(blobs),
        checkpoint_steps=marks,
        batch_chain=tuple(chains),
        segment_losses=tuple(segment_losses),
        final_weights=final,
        seconds=time.monotonic() - started,
        tokens=cfg.steps * cfg.batch_size * cfg.seq_len,
    )


def replay_segment(
    model: MoEModel, stream: Tensor, cfg: FinetuneConfig, start_blob: bytes, start_step: int, end_step: int
) -> ReplayResult:
    """Load the checkpoint at `start_step` into `model` (its other blocks the base) and a fresh
    optimizer, run steps start_step..end_step-1 with the run's batches and schedule, and encode
    the checkpoint at `end_step`. `model` is left at the end of the segment."""
    cfg.validate(model.cfg)
    validate_stream(stream, model.cfg.vocab_size, cfg.seq_len)
    if not 0 <= start_step < end_step <= cfg.steps:
        raise ValueError(f"segment {start_step}..{end_step} outside a run of {cfg.steps} steps")
    hashes, losses = [], []
    with deterministic_torch(cfg.threads), _trained_only(model, cfg.blocks) as named:
        opt = make_finetune_optimizer(model, cfg)
        loaded = load_checkpoint(model, opt, start_blob, cfg.blocks)
        if loaded != start_step:
            raise InvalidCheckpoint(f"at step {loaded}, the segment starts at {start_step}")
        _prime(opt, named)
        for _, batch_hash, loss in _run_steps(model, opt, named, stream, cfg, start_step, end_step):
            hashes.append(batch_hash)
            losses.append(loss)
        end_blob = encode_checkpoint(model, opt, cfg.blocks, end_step)
    return ReplayResult(end_blob=end_blob, batch_hashes=tuple(hashes), losses=tuple(losses))


def plain_finetune_loop(model: MoEModel, stream: Tensor, cfg: FinetuneConfig) -> float:
    """Seconds of the same optimizer steps as `finetune` on the same batches, as a plain torch loop:
    no batch hashes, no checkpoints, no loss read back. The reference of the overhead benchmark."""
    cfg.validate(model.cfg)
    schedule = cfg.to_train_config()
    started = time.monotonic()
    with deterministic_torch(cfg.threads), _trained_only(model, cfg.blocks) as named:
        opt = make_finetune_optimizer(model, cfg)
        _prime(opt, named)
        params = [p for _, p in named]
        model.train()
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = compute_lr(step, schedule)
            x, y = make_batch(stream, cfg.seed, step, cfg.batch_size, cfg.seq_len)  # [B, T], [B, T]
            _, loss, aux = model(x, y)  # [B, T, V], [], []
            opt.zero_grad(set_to_none=False)
            (loss + cfg.aux_loss_weight * aux).backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=False)
            opt.step()
        model.eval()
    return time.monotonic() - started


# --- measurements -----------------------------------------------------------------------------


def _raw(t: Tensor) -> bytes:
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()  # [numel * itemsize]


def compare_weights(a: dict[str, Tensor], b: dict[str, Tensor]) -> WeightDistance:
    """How far weights `a` (e.g. replayed) are from `b` (e.g. claimed); `InvalidCheckpoint` unless
    both name the same tensors with the same shapes."""
    if set(a) != set(b):
        raise InvalidCheckpoint(f"the weights name different tensors: {sorted(set(a) ^ set(b))[:3]}")
    for name in a:
        if a[name].shape != b[name].shape:
            raise InvalidCheckpoint(f"{name} is {list(a[name].shape)}, not {list(b[name].shape)}")
    names = sorted(a)
    if all(a[n].dtype == b[n].dtype and _raw(a[n]) == _raw(b[n]) for n in names):
        return WeightDistance(exact=True, l2=0.0, linf=0.0, cosine=1.0)
    flat_a = torch.cat([a[n].detach().reshape(-1).double() for n in names])  # [P]
    flat_b = torch.cat([b[n].detach().reshape(-1).double() for n in names])  # [P]
    diff = flat_a - flat_b  # [P]
    norm_a, norm_b, norm_diff = (float(t.norm()) for t in (flat_a, flat_b, diff))
    if norm_b > 0:
        l2 = norm_diff / norm_b
    else:
        l2 = 0.0 if norm_diff == 0 else math.inf
    if norm_a > 0 and norm_b > 0:
        cosine = float(flat_a @ flat_b) / (norm_a * norm_b)
    else:
        cosine = 1.0 if norm_a == norm_b else 0.0
    linf = float(diff.abs().max()) if diff.numel() else 0.0
    return WeightDistance(exact=False, l2=l2, linf=linf, cosine=cosine)


def evaluate_windows(model: MoEModel, stream: Tensor, seq_len: int, windows: int, threads: int) -> float:
    """Mean cross-entropy (nats/token) on the first `windows` non-overlapping windows of `stream`
    (all of them when it holds fewer), in order: `gpu.train.evaluate_loss`'s way."""
    if not 1 <= seq_len <= model.cfg.max_seq_len:
        raise ValueError(f"seq_len {seq_len} outside [1, the model's {model.cfg.max_seq_len}]")
    validate_stream(stream, model.cfg.vocab_size, seq_len)
    return evaluate_loss(model, stream, TrainConfig(seq_len=seq_len, eval_windows=windows, threads=threads))
