"""Reproducible training of the MoE model on a token stream, and its evaluation.

A run is a pure function of (initial weights, token streams, TrainConfig): torch's deterministic
algorithms, a fixed thread count, and batches drawn by a generator seeded from the config, never
from the global RNG. Same machine kind, same torch: same weights, byte for byte. (A different CPU
or torch build may round differently; the manifest of a build records what it ran on.)

Loss is cross-entropy in nats per token, plus `aux_loss_weight` times the Switch load-balancing
loss. The baseline a model must beat is the unigram model of the training tokens with add-one
smoothing, scored on the same validation targets.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from gpu.model import MoEModel


@dataclass(frozen=True, slots=True)
class TrainConfig:
    steps: int = 2400  # optimizer steps
    batch_size: int = 16  # sequences per step
    seq_len: int = 128  # tokens per sequence; at most the model's max_seq_len
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100  # linear warm-up from 0
    weight_decay: float = 0.1  # AdamW, on matrices only
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW
    grad_clip: float = 1.0  # max global grad norm
    aux_loss_weight: float = 0.01  # weight of the load-balancing loss
    seed: int = 0  # seed of the batch sampler
    threads: int = 1  # torch intra-op threads: results may depend on it; 1 does not spin when
    # the cores are shared, and gives the same bytes on any core count
    eval_windows: int = 256  # at most this many validation windows of seq_len

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.seq_len, self.threads, self.eval_windows) <= 0:
            raise ValueError(f"train sizes must be positive: {self}")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"bad schedule: {self}")


@dataclass(frozen=True, slots=True)
class TrainReport:
    steps: int
    """Optimizer steps run."""
    tokens: int
    """Training tokens seen (steps * batch * seq_len)."""
    final_train_loss: float
    """Mean cross-entropy (nats/token) over the last 10% of steps."""
    seconds: float
    """Wall time of the loop (not part of the result's determinism)."""


@contextmanager
def deterministic_torch(threads: int) -> Iterator[None]:
    """Deterministic algorithms and a fixed thread count inside; the previous settings after."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(was_threads)


def compute_lr(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine from lr down to lr * min_lr_ratio at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def sample_batch(stream: Tensor, gen: torch.Generator, batch: int, seq_len: int) -> tuple[Tensor, Tensor]:
    """`batch` random windows of the 1-D stream: inputs and next-token targets, [B, T] each."""
    if stream.numel() < seq_len + 2:
        raise ValueError(f"a stream of {stream.numel()} tokens is shorter than a window")
    starts = torch.randint(0, stream.numel() - seq_len - 1, (batch,), generator=gen)  # [B]
    offsets = torch.arange(seq_len + 1)  # [T+1]
    windows = stream[starts.unsqueeze(1) + offsets]  # [B, T+1]
    return windows[:, :-1], windows[:, 1:]


def make_optimizer(model: MoEModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices, none on norms; parameters in a fixed order."""
    params = [p for _, p in sorted(model.named_parameters())]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, foreach=False)


def train_model(
    model: MoEModel,
    stream: Tensor,
    cfg: TrainConfig,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainReport:
    """Train `model` in place on the 1-D token stream; `on_step(step, loss)` after each step."""
    if cfg.seq_len > model.cfg.max_seq_len:
        raise ValueError(f"seq_len {cfg.seq_len} exceeds the model's {model.cfg.max_seq_len}")
    gen = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    started = time.monotonic()
    with deterministic_torch(cfg.threads):
        opt = make_optimizer(model, cfg)
        model.train()
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = compute_lr(step, cfg)
            x, y = sample_batch(stream, gen, cfg.batch_size, cfg.seq_len)  # [B, T], [B, T]
            _, loss, aux = model(x, y)
            opt.zero_grad(set_to_none=True)
            (loss + cfg.aux_loss_weight * aux).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=False)
            opt.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step, losses[-1])
        model.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    return TrainReport(
        steps=cfg.steps,
        tokens=cfg.steps * cfg.batch_size * cfg.seq_len,
        final_train_loss=sum(tail) / len(tail),
        seconds=time.monotonic() - started,
    )


def get_eval_windows(stream: Tensor, seq_len: int, max_windows: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping windows from the start of the stream: inputs and targets, [W, T] each."""
    count = min(max_windows, (stream.numel() - 1) // seq_len)
    if count <= 0:
        raise ValueError(f"a stream of {stream.numel()} tokens holds no window of {seq_len}")
    x = stream[: count * seq_len].view(count, seq_len)  # [W, T]
    y = stream[1 : count * seq_len + 1].view(count, seq_len)  # [W, T]
    return x, y


@torch.no_grad()
def evaluate_loss(model: MoEModel, stream: Tensor, cfg: TrainConfig, batch: int = 32) -> float:
    """Mean cross-entropy in nats/token of `model` on the eval windows of `stream`."""
    x, y = get_eval_windows(stream, cfg.seq_len, cfg.eval_windows)
    total = 0.0
    with deterministic_torch(cfg.threads):
        model.eval()
        for i in range(0, x.shape[0], batch):
            logits, _, _ = model(x[i : i + batch])  # [b, T, V]
            flat = logits.reshape(-1, logits.shape[-1])  # [b*T, V]
            total += float(F.cross_entropy(flat, y[i : i + batch].reshape(-1), reduction="sum"))
    return total / y.numel()


def compute_unigram_loss(train: Tensor, targets: Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of `targets` under the add-one unigram model of `train`."""
    counts = torch.bincount(train.reshape(-1), minlength=vocab_size).double() + 1.0  # [V]
    log_probs = counts.log() - counts.sum().log()  # [V]
    return float(-log_probs[targets.reshape(-1)].mean())


def compute_baseline_loss(train: Tensor, val: Tensor, cfg: TrainConfig, vocab_size: int) -> float:
    """The unigram baseline on exactly the targets `evaluate_loss` scores."""
    _, y = get_eval_windows(val, cfg.seq_len, cfg.eval_windows)
    return compute_unigram_loss(train, y, vocab_size)


def measure_step_seconds(model: MoEModel, cfg: TrainConfig, steps: int = 4) -> float:
    """Seconds per training step on random tokens (for sizing a run; `model` is left as it was)."""
    probe = copy.deepcopy(model)
    stream = torch.randint(0, model.cfg.vocab_size, (cfg.batch_size * cfg.seq_len * 4,))  # [n]
    train_model(probe, stream, replace(cfg, steps=1, warmup_steps=0))
    return train_model(probe, stream, replace(cfg, steps=steps, warmup_steps=0)).seconds / steps
