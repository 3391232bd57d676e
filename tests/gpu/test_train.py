"""Training: determinism (same run, same bytes), learning, schedule, evaluation and baseline."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from gpu.model import MoEConfig, init_seeded
from gpu.train import (
    TrainConfig,
    compute_baseline_loss,
    compute_lr,
    compute_unigram_loss,
    deterministic_torch,
    evaluate_loss,
    get_eval_windows,
    sample_batch,
    train_model,
)
from gpu.weights import encode_block

TINY = MoEConfig(
    vocab_size=32, d_model=32, n_layers=2, n_heads=4, n_experts=4, top_k=2, d_ff=64, max_seq_len=16
)
RUN = TrainConfig(steps=6, batch_size=4, seq_len=16, lr=1e-2, warmup_steps=2, threads=1, eval_windows=32)


def _stream(n: int, seed: int) -> torch.Tensor:
    """A learnable stream: next = 3 * prev + 1 mod 32, with a random token one time in eight."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, TINY.vocab_size, (n,), generator=gen)
    jump = torch.rand(n, generator=gen) < 0.125
    out = [0]
    for i in range(1, n):
        out.append(int(noise[i]) if jump[i] else (3 * out[-1] + 1) % TINY.vocab_size)
    return torch.tensor(out, dtype=torch.long)


def _blobs(cfg: TrainConfig, stream: torch.Tensor) -> dict[str, bytes]:
    model = init_seeded(TINY, 7)
    train_model(model, stream, cfg)
    return {name: encode_block(model.block_state_dict(name)) for name in model.block_names()}


def test_train_deterministic() -> None:
    stream = _stream(2000, 0)
    first = _blobs(RUN, stream)
    assert first == _blobs(RUN, stream)
    assert first != {n: encode_block(init_seeded(TINY, 7).block_state_dict(n)) for n in first}


def test_train_depends_on_sampler_seed() -> None:
    stream = _stream(2000, 0)
    other = replace(RUN, seed=1)
    assert _blobs(RUN, stream) != _blobs(other, stream)


def test_train_lowers_validation_loss() -> None:
    train, val = _stream(4000, 1), _stream(1000, 2)
    cfg = TrainConfig(steps=80, batch_size=8, seq_len=16, lr=1e-2, warmup_steps=5, threads=1,
                      eval_windows=32)
    model = init_seeded(TINY, 3)
    before = evaluate_loss(model, val, cfg)
    report = train_model(model, train, cfg)
    after = evaluate_loss(model, val, cfg)
    baseline = compute_baseline_loss(train, val, cfg, TINY.vocab_size)
    assert before == pytest.approx(math.log(TINY.vocab_size), abs=0.1)
    assert after < baseline - 0.5 < before
    assert report.steps == 80 and report.tokens == 80 * 8 * 16
    assert report.final_train_loss < before


def test_deterministic_torch_restores_settings() -> None:
    threads = torch.get_num_threads()
    was = torch.are_deterministic_algorithms_enabled()
    with deterministic_torch(1):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == was


def test_lr_schedule() -> None:
    cfg = TrainConfig(steps=100, lr=1.0, min_lr_ratio=0.1, warmup_steps=10)
    assert compute_lr(0, cfg) == pytest.approx(0.1)
    assert compute_lr(9, cfg) == pytest.approx(1.0)
    assert compute_lr(10, cfg) == pytest.approx(1.0)
    assert compute_lr(55, cfg) == pytest.approx(0.55)
    assert compute_lr(100, cfg) == pytest.approx(0.1)
    lrs = [compute_lr(s, cfg) for s in range(10, 100)]
    assert lrs == sorted(lrs, reverse=True)


def test_sample_batch_targets_shifted() -> None:
    stream = torch.arange(100)
    x, y = sample_batch(stream, torch.Generator().manual_seed(0), 5, 8)
    assert x.shape == y.shape == (5, 8)
    assert torch.equal(y, x + 1)


def test_eval_windows_cover_stream_start() -> None:
    x, y = get_eval_windows(torch.arange(50), 8, 100)
    assert x.shape == (6, 8) and x[0, 0] == 0 and y[-1, -1] == 48


def test_unigram_loss_add_one() -> None:
    train = torch.tensor([0, 0, 0, 1])  # counts + 1: [4, 2, 1, 1] over 8
    assert compute_unigram_loss(train, torch.tensor([0]), 4) == pytest.approx(math.log(2))
    assert compute_unigram_loss(train, torch.tensor([2, 3]), 4) == pytest.approx(math.log(8))


@pytest.mark.parametrize("field", ["steps", "batch_size", "seq_len", "threads"])
def test_invalid_config(field: str) -> None:
    with pytest.raises(ValueError):
        TrainConfig(**{field: 0})
