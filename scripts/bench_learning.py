"""Benchmark rows of learning (`gpu/finetune.py`): the training overhead of the proof trail, and
replay determinism. `run_training_section(quick)` returns the rows for a section to add:

    @section("learning", "Learning: ...")
    def bench_learning(run: SectionRun) -> None:
        out = run_training_section(run.cfg.quick)
        for row in out["rows"]:
            run.row(row)
        for text in out["notes"]:
            run.note(text)

    python scripts/bench_learning.py [--quick]   # the rows alone, as JSON
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from typing import Any

from benchlib import ROOT, Row, fmt_time

DEVNET = ROOT / "genesis" / "prebuilt" / "devnet"
TRAINED_BLOCK = "layer0.expert1"
STREAM_TOKENS = 200_000
CHECKPOINT_EVERY = 16
OVERHEAD_GOAL = 0.9
DETERMINISM_GOAL = 1.0
FULL_RUN = {"steps": 256, "repeat": 3, "batch_size": 16, "seq_len": 128, "checkpoint_every": CHECKPOINT_EVERY}
"""The issue's setting: 256 steps of 16 x 128 tokens, three samples of each side."""
QUICK_RUN = {"steps": 8, "repeat": 1, "batch_size": 8, "seq_len": 32, "checkpoint_every": 4}
"""A smoke test of the same code (well under a second): not figures to quote."""


def make_training_notes(steps: int, batch_size: int, seq_len: int, k: int) -> list[str]:
    """What the rows measure, for the sizes of this run."""
    return [
        "Model: the shipped devnet model (genesis/prebuilt/devnet, 1.2M parameters), one expert "
        f"({TRAINED_BLOCK}) trained, every other block frozen; {steps} steps of batches of {batch_size} x "
        f"{seq_len} tokens drawn from a random stream of {STREAM_TOKENS:,} token ids (timing does not depend "
        "on the text); one torch thread, deterministic algorithms.",
        "`learning.train.overhead`: ours is `gpu.finetune.finetune` (the batch of each step drawn from "
        f"(seed, step), its hash chained, a checkpoint blob of weights and AdamW state every {k} steps and at "
        "the last, each loss read back) plus the Merkle root of every checkpoint; the baseline is "
        "`plain_finetune_loop`: the same optimizer steps on the same batches as a plain torch loop (no hashes, "
        "no checkpoints, no loss read back). Both start from copies of the same model; samples alternate.",
        "`learning.replay.determinism`: every segment between two checkpoints of one run replayed by "
        "`replay_segment` from its start checkpoint on a fresh copy of the base model; a segment counts "
        "when its end checkpoint has the claimed bytes and its batch hashes chain to the claimed value.",
    ]


def load_devnet_model() -> Any:
    """The devnet model of the shipped genesis artifact, every block checked against its manifest."""
    from genesis.build import get_spec, load_artifact
    from gpu.model import MoEConfig, MoEModel
    from gpu.weights import decode_block

    artifact = load_artifact(DEVNET)
    model = MoEModel(MoEConfig.from_spec(get_spec(artifact.manifest)))
    for name, blob in artifact.blocks.items():
        model.load_block_state_dict(name, decode_block(blob))
    return model.eval()


def random_stream(vocab_size: int, tokens: int = STREAM_TOKENS, seed: int = 0) -> Any:
    import torch

    return torch.randint(0, vocab_size, (tokens,), generator=torch.Generator().manual_seed(seed))  # [n]


def _time_finetune(base: Any, stream: Any, cfg: Any) -> tuple[float, Any]:
    """Seconds of a run as a contributor makes it (training, trail, checkpoint roots), and its result."""
    from gpu.finetune import compute_checkpoint_root, finetune

    model = copy.deepcopy(base)
    started = time.perf_counter()
    result = finetune(model, stream, cfg)
    for blob in result.checkpoints:
        compute_checkpoint_root(blob)
    return time.perf_counter() - started, result


def _replay_all(base: Any, stream: Any, cfg: Any, result: Any) -> dict[str, float]:
    """Replay every segment of `result`; how many land exactly, the largest distance, the time."""
    from gpu.finetune import checkpoint_weights, compare_weights, compute_batch_chain, replay_segment

    steps = result.checkpoint_steps
    exact, worst_l2 = 0, 0.0
    started = time.perf_counter()
    for i in range(len(steps) - 1):
        replay = replay_segment(copy.deepcopy(base), stream, cfg, result.checkpoints[i], steps[i], steps[i + 1])
        chained = compute_batch_chain(result.batch_chain[i], replay.batch_hashes) == result.batch_chain[i + 1]
        exact += int(replay.end_blob == result.checkpoints[i + 1] and chained)
        distance = compare_weights(checkpoint_weights(replay.end_blob), checkpoint_weights(result.checkpoints[i + 1]))
        worst_l2 = max(worst_l2, distance.l2)
    return {"segments": float(len(steps) - 1), "exact": float(exact), "max_l2": worst_l2,
            "seconds": time.perf_counter() - started}


def _overhead_row(steps: int, ours: list[float], plain: list[float], tokens_per_step: int) -> Row:
    ours_s, plain_s = statistics.median(ours), statistics.median(plain)

    def text(seconds: float, samples: list[float]) -> str:
        return (f"{fmt_time(seconds / steps)}/step · {steps / seconds:.3g} steps/s "
                f"(max {fmt_time(max(samples) / steps)}/step, n={len(samples)})")

    return Row(
        name="learning.train.overhead",
        what=f"{steps} fine-tuning steps of one devnet expert with the proof trail",
        ours=steps / ours_s, baseline=steps / plain_s, unit="steps/s",
        ours_text=text(ours_s, ours), baseline_text=text(plain_s, plain),
        baseline_what="plain torch loop, same optimizer steps and batches",
        ratio=plain_s / ours_s, better="higher", goal=OVERHEAD_GOAL,
        extra={"ours_s_per_step": ours_s / steps, "baseline_s_per_step": plain_s / steps,
               "ours_tokens_per_s": steps * tokens_per_step / ours_s},
    )


def _determinism_row(steps: int, k: int, replay: dict[str, float], train_seconds: float) -> Row:
    share = replay["exact"] / replay["segments"]
    return Row(
        name="learning.replay.determinism",
        what=f"segments of a {steps}-step run (k={k}) replayed bit-exact on this machine",
        ours=share, baseline=1.0, unit="share",
        ours_text=f"{replay['exact']:.0f} of {replay['segments']:.0f} bit-exact (max l2 {replay['max_l2']:.2g})",
        baseline_text="1.0", baseline_what="every segment",
        ratio=share, better="higher", goal=DETERMINISM_GOAL,
        extra={"replay_seconds": replay["seconds"], "train_seconds": train_seconds, "max_l2": replay["max_l2"]},
    )


def run_training_section(quick: bool) -> dict[str, Any]:
    """The rows `learning.train.overhead` and `learning.replay.determinism`, notes and raw figures."""
    from dataclasses import replace

    from gpu.finetune import FinetuneConfig, plain_finetune_loop

    sizes = QUICK_RUN if quick else FULL_RUN
    steps, repeat = sizes["steps"], sizes["repeat"]
    cfg = FinetuneConfig(blocks=(TRAINED_BLOCK,), steps=steps, batch_size=sizes["batch_size"],
                         seq_len=sizes["seq_len"], checkpoint_every=sizes["checkpoint_every"])
    base = load_devnet_model()
    stream = random_stream(base.cfg.vocab_size)
    warm = replace(cfg, steps=2)  # first-call costs (allocator, kernels) out of the samples
    _time_finetune(base, stream, warm)
    plain_finetune_loop(copy.deepcopy(base), stream, warm)
    ours, plain, results = [], [], []
    for _ in range(repeat):
        seconds, result = _time_finetune(base, stream, cfg)
        ours.append(seconds)
        results.append(result)
        plain.append(plain_finetune_loop(copy.deepcopy(base), stream, cfg))
    replay = _replay_all(base, stream, cfg, results[0])
    identical = all(r.checkpoints == results[0].checkpoints for r in results)
    rows = [_overhead_row(steps, ours, plain, cfg.batch_size * cfg.seq_len),
            _determinism_row(steps, cfg.checkpoint_every, replay, ours[0])]
    figures = {
        "steps": steps, "s_per_step": statistics.median(ours) / steps,
        "plain_s_per_step": statistics.median(plain) / steps, "overhead_ratio": rows[0].ratio,
        "replay_exact_share": rows[1].ratio, "replay_seconds": replay["seconds"],
        "checkpoints": len(results[0].checkpoints), "checkpoint_bytes": len(results[0].checkpoints[0]),
        "runs_identical": identical,
    }
    notes = make_training_notes(steps, cfg.batch_size, cfg.seq_len, cfg.checkpoint_every)
    notes = [*notes, f"Checkpoint blob: {figures['checkpoint_bytes']:,} bytes; the {repeat} timed "
             f"run(s) gave {'identical' if identical else 'DIFFERENT'} checkpoints; replaying every segment "
             f"took {replay['seconds']:.1f} s against {ours[0]:.1f} s of training."]
    return {"rows": rows, "notes": notes, "figures": figures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench_learning.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="8 steps of 8 x 32 tokens, one sample (instead of 256 of 16 x 128, three)")
    args = parser.parse_args(argv)
    out = run_training_section(args.quick)
    doc = {"rows": [r.to_json() for r in out["rows"]], "notes": out["notes"], "figures": out["figures"]}
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
