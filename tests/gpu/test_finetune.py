"""Fine-tuning with a proof trail: resume and replay bit for bit, frozen blocks, batches of (seed, step),
the batch chain, canonical checkpoints, learning, evaluation and the config's checks."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_save

from genesis.testkit import TINY_MODEL
from gpu.finetune import (
    ZERO_CHAIN,
    FinetuneConfig,
    InvalidCheckpoint,
    chain_batch_hash,
    checkpoint_weights,
    compare_weights,
    compute_batch_chain,
    compute_checkpoint_root,
    compute_checkpoint_steps,
    encode_checkpoint,
    evaluate_windows,
    finetune,
    hash_batch,
    load_checkpoint,
    make_batch,
    make_finetune_optimizer,
    plain_finetune_loop,
    replay_segment,
)
from gpu.model import MoEConfig, MoEModel, init_seeded
from gpu.weights import decode_block, encode_block

MODEL = MoEConfig.from_spec(TINY_MODEL)
EXPERT = "layer0.expert1"
RUN = FinetuneConfig(blocks=(EXPERT,), steps=10, batch_size=4, seq_len=16, lr=1e-2, warmup_steps=2,
                     checkpoint_every=3)
WITH_ROUTER = replace(RUN, blocks=(EXPERT, "layer0.router"), weight_decay=0.1)


def _base() -> MoEModel:
    return init_seeded(MODEL, 0)


def _stream(n: int = 2000, seed: int = 0) -> torch.Tensor:
    """A repetitive stream: 12 random tokens, over and over."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, MODEL.vocab_size, (12,), generator=gen).repeat(n // 12 + 1)[:n].clone()


def _blobs(model: MoEModel) -> dict[str, bytes]:
    return {name: encode_block(model.block_state_dict(name)) for name in model.block_names()}


@pytest.fixture(scope="module")
def run() -> tuple[FinetuneConfig, torch.Tensor, object]:
    stream = _stream()
    return RUN, stream, finetune(_base(), stream, RUN)


def test_finetune_checkpoints_every_k_and_at_the_last_step(run) -> None:
    cfg, _, result = run
    assert result.checkpoint_steps == (0, 3, 6, 9, 10) == compute_checkpoint_steps(10, 3)
    assert len(result.checkpoints) == len(result.batch_chain) == 5
    assert len(result.segment_losses) == 4
    assert result.batch_chain[0] == ZERO_CHAIN
    assert result.tokens == 10 * 4 * 16
    assert all(torch.equal(t, result.final_weights[n]) for n, t in checkpoint_weights(result.checkpoints[-1]).items())


def test_finetune_deterministic(run) -> None:
    cfg, stream, result = run
    again = finetune(_base(), stream, cfg)
    assert again.checkpoints == result.checkpoints
    assert again.batch_chain == result.batch_chain
    assert again.segment_losses == result.segment_losses


def test_checkpoint_zero_is_the_base(run) -> None:
    _, _, result = run
    base = {f"{EXPERT}/{k}": v for k, v in _base().block_state_dict(EXPERT).items()}
    assert compare_weights(checkpoint_weights(result.checkpoints[0]), base).exact
    assert not compare_weights(result.final_weights, base).exact


@pytest.mark.parametrize("cfg", [RUN, WITH_ROUTER], ids=["expert", "expert+router"])
def test_resume_from_any_checkpoint_equals_uninterrupted(cfg: FinetuneConfig) -> None:
    stream = _stream()
    result = finetune(_base(), stream, cfg)
    for blob, step in zip(result.checkpoints[:-1], result.checkpoint_steps[:-1], strict=True):
        model = _base()
        resumed = replay_segment(model, stream, cfg, blob, step, cfg.steps)
        assert resumed.end_blob == result.checkpoints[-1], step
        for name, tensor in result.final_weights.items():
            block, key = name.split("/")
            assert torch.equal(model.block_state_dict(block)[key], tensor), (step, name)


def test_replay_segment_reproduces_every_next_checkpoint(run) -> None:
    cfg, stream, result = run
    steps = result.checkpoint_steps
    for i in range(len(steps) - 1):
        replay = replay_segment(_base(), stream, cfg, result.checkpoints[i], steps[i], steps[i + 1])
        assert replay.end_blob == result.checkpoints[i + 1], i
        assert len(replay.batch_hashes) == len(replay.losses) == steps[i + 1] - steps[i]
        assert compute_batch_chain(result.batch_chain[i], replay.batch_hashes) == result.batch_chain[i + 1]
        assert sum(replay.losses) / len(replay.losses) == pytest.approx(result.segment_losses[i], rel=1e-12)


def test_replay_segment_from_a_perturbed_checkpoint_diverges(run) -> None:
    cfg, stream, result = run
    tensors = decode_block(result.checkpoints[1])
    tensors[f"{EXPERT}/w1.weight"] = tensors[f"{EXPERT}/w1.weight"] + 1e-3
    replay = replay_segment(_base(), stream, cfg, encode_block(tensors), 3, 6)
    distance = compare_weights(checkpoint_weights(replay.end_blob), checkpoint_weights(result.checkpoints[2]))
    assert not distance.exact
    assert 0 < distance.l2 < 1 and 0 < distance.linf and 0.9 < distance.cosine < 1


def test_invalid_replay_checkpoint_of_another_step(run) -> None:
    cfg, stream, result = run
    with pytest.raises(InvalidCheckpoint, match="step 3"):
        replay_segment(_base(), stream, cfg, result.checkpoints[1], 6, 9)
    with pytest.raises(ValueError, match="outside"):
        replay_segment(_base(), stream, cfg, result.checkpoints[1], 3, 11)


def test_finetune_leaves_frozen_blocks_untouched() -> None:
    model = _base()
    before = _blobs(model)
    finetune(model, _stream(), WITH_ROUTER)
    after = _blobs(model)
    trained = set(WITH_ROUTER.blocks)
    assert {n for n in before if before[n] != after[n]} == trained
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_plain_loop_takes_the_same_optimizer_steps(run) -> None:
    cfg, stream, result = run
    model = _base()
    seconds = plain_finetune_loop(model, stream, cfg)
    assert seconds > 0
    plain = {f"{EXPERT}/{k}": v for k, v in model.block_state_dict(EXPERT).items()}
    assert compare_weights(plain, result.final_weights).exact


def test_finetune_calls_on_step_after_each_step(run) -> None:
    cfg, stream, _ = run
    seen: list[tuple[int, float]] = []
    finetune(_base(), stream, cfg, on_step=lambda step, loss: seen.append((step, loss)))
    assert [s for s, _ in seen] == list(range(cfg.steps))
    assert all(0 < loss < 10 for _, loss in seen)


# --- batches and the chain ----------------------------------------------------------------------


def test_make_batch_depends_only_on_seed_and_step(run) -> None:
    cfg, stream, result = run
    alone = make_batch(stream, cfg.seed, 7, cfg.batch_size, cfg.seq_len)
    torch.manual_seed(12345)  # the global RNG plays no part
    for step in range(7):
        make_batch(stream, cfg.seed, step, cfg.batch_size, cfg.seq_len)
    again = make_batch(stream, cfg.seed, 7, cfg.batch_size, cfg.seq_len)
    assert all(torch.equal(a, b) for a, b in zip(alone, again, strict=True))
    # inside the run: the segment from 6 to 9 drew step 7 second
    replay = replay_segment(_base(), stream, cfg, result.checkpoints[2], 6, 9)
    assert replay.batch_hashes[1] == hash_batch(*alone)
    assert make_batch(stream, cfg.seed + 1, 7, cfg.batch_size, cfg.seq_len)[0].tolist() != alone[0].tolist()


def test_batch_chain_is_the_chain_of_the_run_batches(run) -> None:
    cfg, stream, result = run
    hashes = [hash_batch(*make_batch(stream, cfg.seed, s, cfg.batch_size, cfg.seq_len)) for s in range(cfg.steps)]
    for step, chain in zip(result.checkpoint_steps, result.batch_chain, strict=True):
        assert compute_batch_chain(ZERO_CHAIN, hashes[:step]) == chain


def test_batch_chain_changes_with_one_token_of_the_stream() -> None:
    stream = torch.arange(MODEL.vocab_size - 6)  # distinct ids: a token's value is its offset
    x, _ = make_batch(stream, RUN.seed, 4, RUN.batch_size, RUN.seq_len)
    changed = stream.clone()
    changed[int(x[0, 0])] += 1
    first, second = finetune(_base(), stream, RUN), finetune(_base(), changed, RUN)
    assert first.batch_chain[0] == second.batch_chain[0] == ZERO_CHAIN
    assert all(a != b for a, b in zip(first.batch_chain[2:], second.batch_chain[2:], strict=True))


def test_hash_batch_is_sha256_of_little_endian_ids() -> None:
    x = torch.tensor([[1, 2], [3, 256]])
    y = torch.tensor([[2, 3], [256, 4]])
    want = hashlib.sha256(x.numpy().astype("<i8").tobytes() + y.numpy().astype("<i8").tobytes()).digest()
    assert hash_batch(x, y) == want
    assert hash_batch(x[:, :1], y[:, :1]) != want
    assert chain_batch_hash(ZERO_CHAIN, want) == hashlib.sha256(bytes(32) + want).digest()


@given(seed=st.integers(0, 2**63), step=st.integers(0, 10**6), batch=st.integers(1, 5), seq=st.integers(1, 20))
def test_make_batch_windows_of_the_stream(seed: int, step: int, batch: int, seq: int) -> None:
    stream = torch.arange(100)
    x, y = make_batch(stream, seed, step, batch, seq)
    assert x.shape == y.shape == (batch, seq)
    assert torch.equal(y - x, torch.ones_like(x))  # next-token targets
    assert torch.equal(x - x[:, :1], torch.arange(seq).expand(batch, seq))  # contiguous windows
    assert int(x.min()) >= 0 and int(y.max()) < 100
    assert torch.equal(make_batch(stream, seed, step, batch, seq)[0], x)


# --- checkpoints --------------------------------------------------------------------------------


def test_encode_checkpoint_is_canonical(run) -> None:
    cfg, stream, result = run
    blob = result.checkpoints[2]
    assert encode_block(decode_block(blob)) == blob
    model = _base()
    opt = make_finetune_optimizer(model, cfg)
    assert load_checkpoint(model, opt, blob, cfg.blocks) == 6
    assert encode_checkpoint(model, opt, cfg.blocks, 6) == blob
    assert encode_checkpoint(model, opt, cfg.blocks, 6) == blob
    tensors = decode_block(blob)
    names = {"layer0.expert1/w1.weight", "layer0.expert1/w2.weight"}
    assert set(tensors) == {"#step"} | names | {n + s for n in names for s in ("#m", "#v")}
    assert tensors["#step"].dtype == torch.int64 and int(tensors["#step"]) == 6
    assert set(checkpoint_weights(blob)) == names
    assert len(compute_checkpoint_root(blob)) == 32


def test_encode_checkpoint_of_a_fresh_optimizer_is_step_zero(run) -> None:
    _, _, result = run
    model = _base()
    opt = make_finetune_optimizer(model, RUN)
    assert encode_checkpoint(model, opt, RUN.blocks, 0) == result.checkpoints[0]
    with pytest.raises(ValueError, match="taken 0 optimizer steps"):
        encode_checkpoint(model, opt, RUN.blocks, 3)


def test_invalid_checkpoint_of_other_blocks(run) -> None:
    _, _, result = run
    model = _base()
    before = _blobs(model)
    opt = make_finetune_optimizer(model, WITH_ROUTER)
    with pytest.raises(InvalidCheckpoint, match="lacks"):
        load_checkpoint(model, opt, result.checkpoints[1], WITH_ROUTER.blocks)
    assert _blobs(model) == before and not opt.state


@pytest.mark.parametrize("edit", ["truncated", "non-canonical", "wrong-shape", "float-step", "extra"])
def test_invalid_checkpoint_blob(run, edit: str) -> None:
    _, _, result = run
    blob = result.checkpoints[1]
    tensors = decode_block(blob)
    if edit == "truncated":
        bad = blob[:-4]
    elif edit == "non-canonical":
        bad = safetensors_save(tensors)  # the library's own layout, not ours
    elif edit == "wrong-shape":
        tensors[f"{EXPERT}/w1.weight#m"] = torch.zeros(3)
        bad = encode_block(tensors)
    elif edit == "float-step":
        tensors["#step"] = torch.tensor(3.0)
        bad = encode_block(tensors)
    else:
        tensors["layer0.attn/qkv.weight"] = torch.zeros(1)
        bad = encode_block(tensors)
    model = _base()
    before = _blobs(model)
    with pytest.raises(InvalidCheckpoint):
        load_checkpoint(model, make_finetune_optimizer(model, RUN), bad, RUN.blocks)
    assert _blobs(model) == before


def test_compare_weights_measures_the_distance() -> None:
    b = {"x/w": torch.tensor([3.0, 4.0]), "y/w": torch.zeros(2)}
    assert compare_weights(b, {k: v.clone() for k, v in b.items()}).exact
    a = {"x/w": torch.tensor([3.0, 4.5]), "y/w": torch.zeros(2)}
    d = compare_weights(a, b)
    assert not d.exact
    assert d.l2 == pytest.approx(0.1) and d.linf == pytest.approx(0.5)
    assert d.cosine == pytest.approx((9 + 18) / (5 * (9 + 4.5**2) ** 0.5))
    negative_zero = {"x/w": torch.tensor([3.0, 4.0]), "y/w": torch.tensor([-0.0, 0.0])}
    assert not compare_weights(negative_zero, b).exact  # bits, not values
    with pytest.raises(InvalidCheckpoint, match="different tensors"):
        compare_weights({"x/w": b["x/w"]}, b)


# --- learning and evaluation --------------------------------------------------------------------


def test_finetune_reduces_the_training_loss() -> None:
    stream = _stream(4000)
    cfg = replace(RUN, steps=30, batch_size=8, seq_len=32, checkpoint_every=10, warmup_steps=3)
    model = _base()
    before = evaluate_windows(model, stream, 32, 16, 1)
    result = finetune(model, stream, cfg)
    after = evaluate_windows(model, stream, 32, 16, 1)
    assert result.segment_losses[-1] < result.segment_losses[0] - 0.05
    assert after < before - 0.1


def test_evaluate_windows_deterministic(run) -> None:
    _, stream, _ = run
    model = _base()
    blobs = _blobs(model)
    first = evaluate_windows(model, stream, 16, 8, 1)
    assert evaluate_windows(model, stream, 16, 8, 1) == first
    assert evaluate_windows(_base(), stream, 16, 8, 1) == first
    assert evaluate_windows(model, stream, 16, 4, 1) != first  # the first 4 windows only
    assert _blobs(model) == blobs
    assert 0 < first < 10
    with pytest.raises(ValueError, match="seq_len"):
        evaluate_windows(model, stream, MODEL.max_seq_len + 1, 8, 1)


# --- the config ---------------------------------------------------------------------------------


@pytest.mark.parametrize("change, match", [
    ({"blocks": ("layer0.expert9",)}, "no block 'layer0.expert9'"),
    ({"blocks": ("layer7.router",)}, "no block"),
    ({"seq_len": MODEL.max_seq_len + 1}, "seq_len"),
    ({"blocks": ()}, "not empty"),
    ({"blocks": ("layer0.router", EXPERT)}, "sorted"),
    ({"blocks": (EXPERT, EXPERT)}, "distinct"),
    ({"steps": 0}, "positive"),
    ({"checkpoint_every": 0}, "positive"),
    ({"lr": 0.0}, "schedule"),
    ({"min_lr_ratio": 1.5}, "schedule"),
    ({"betas": (0.9, 1.0)}, "optimizer"),
    ({"grad_clip": 0.0}, "optimizer"),
])
def test_invalid_finetune_config(change: dict, match: str) -> None:
    cfg = replace(RUN, **change)
    with pytest.raises(ValueError, match=match):
        cfg.validate(MODEL)
    with pytest.raises(ValueError, match=match):
        finetune(_base(), _stream(), cfg)


def test_finetune_config_accepts_the_shipped_default() -> None:
    FinetuneConfig(blocks=(EXPERT,), steps=100, seq_len=MODEL.max_seq_len).validate(MODEL)
    assert RUN.to_train_config().lr == RUN.lr


def test_invalid_stream() -> None:
    with pytest.raises(ValueError, match="1-D int64"):
        finetune(_base(), _stream().float(), RUN)
    with pytest.raises(ValueError, match="outside"):
        finetune(_base(), _stream() + MODEL.vocab_size, RUN)
    with pytest.raises(ValueError, match="shorter"):
        finetune(_base(), _stream(10), RUN)
