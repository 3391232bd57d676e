"""Benchmark sections of learning (issue 10, "Learning I"), in the issue's terms:

    learning   training overhead of the proof trail, replay determinism (scripts/bench_learning.py)
    delta      compression ratio, error, encode and decode time (scripts/bench_delta.py)
    pol        Proof-of-Learning on a real fine-tuning run of genesis.learningkit's world: the curve
               of compression ratio against the share of the validation gain kept, a validator's
               verification cost against the contributor's training, replay determinism

Torch and `node` are imported inside the functions: scripts/bench.py imports this module before any
section runs, and a heap holding torch makes every other section's samples slower (each starts
with a full garbage collection).

    python scripts/bench_pol.py [--quick]   # the pol rows alone, as JSON
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench_delta import DELTA_NOTES, DELTA_TITLE, frozen_heap, get_label, get_settings, run_delta_section
from bench_learning import run_training_section
from benchlib import Config, Row, SectionResult, SectionRun, fmt_time, section

if TYPE_CHECKING:
    from torch import Tensor

    from gpu.delta import CompressionConfig
    from gpu.model import MoEModel
    from node.pol.contributor import TrainingOptions
    from node.pol.data import Materials

TRAIN_FILES = 16
"""Training files of the learning world (60 functions each, about 31k tokens in all; its default is 4)."""
RATIO_GOAL = 100.0
"""pol.compress.best: a setting at least this many times smaller than the dense delta ..."""
SHARE_GOAL = 0.9
"""... that keeps at least this share of the dense delta's validation gain."""
VERIFY_COST_GOAL = 0.05
DETERMINISM_GOAL = 1.0
ROUNDS = 4
"""Rounds of the multi-round runs (error feedback carries the residual from one to the next)."""
ROUND_SETTINGS = ["topk3%.int2", "topk1%.int2", "lowrank2.int4", "lowrank4.int4"]
QUICK_CURVE = ["dense", "int8", "topk1%.int2", "lowrank4.int4"]
QUICK_ROUND_SETTINGS = ["topk1%.int2"]

POL_TITLE = "Proof-of-Learning: compression against the validation gain kept, verification cost, replay"


@dataclass(frozen=True, slots=True)
class Sizes:
    """What one mode of the pol section trains and evaluates."""

    trained: tuple[str, ...] | None
    """Blocks the curve's runs train; None: every expert."""
    curve_steps: int
    """Steps of the one-round run whose true delta every setting compresses."""
    round_steps: int
    """Steps of each of the ROUNDS rounds of a multi-round run."""
    batch_size: int
    seq_len: int
    lr: float
    warmup_steps: int
    eval_windows: int
    eval_seq_len: int
    verify_steps: int
    """Steps of the contributor's run that the validator verifies (the PoL parameters stay devnet's)."""
    verify_batch: tuple[int, int]
    """(batch size, sequence length) of that run."""
    verify_lr: float
    """Its peak learning rate (see FULL)."""


FULL = Sizes(trained=None, curve_steps=256, round_steps=64, batch_size=8, seq_len=128, lr=1e-3, warmup_steps=16,
             eval_windows=64, eval_seq_len=64, verify_steps=1024, verify_batch=(8, 128), verify_lr=1e-4)
"""The contributor's defaults (`TrainingOptions`: batch 8 x 128, lr 1e-3), 256 steps in all for the
curve. The verified run of 1,024 steps uses lr 1e-4 (its delta's l2 norm: 33% of the expert's):
at 3e-4 it reaches 56%, at 1e-3 95% (with the world's default 4 training files; measured while
writing this), past the genesis bound of 50% (`max_delta_norm_ppm`), and the verifier rejects it
before any replay."""
QUICK = Sizes(trained=("layer0.expert0", "layer1.expert0"), curve_steps=8, round_steps=2, batch_size=4, seq_len=64,
              lr=3e-3, warmup_steps=2, eval_windows=8, eval_seq_len=64, verify_steps=32, verify_batch=(2, 16),
              verify_lr=1e-3)
"""A smoke test of the same code in a few seconds: not figures to quote."""


# --- the world ---------------------------------------------------------------------------------


def make_materials(pact: Any, blobs: dict[bytes, bytes]) -> Materials:
    """The world as a validator and a contributor see it: the chains at genesis, blobs from a dict."""
    from chain.kv import MemoryKV
    from chain.ledger import read_ledger_view
    from chain.pact import compute_genesis_hash
    from chain.store import ChainStore
    from chain.types import CHAIN_DATASET, CHAIN_PARAMETER
    from node.pol.data import MaterialMissing, Materials

    def get_blob(blob_id: bytes) -> bytes:
        try:
            return blobs[blob_id]
        except KeyError as err:
            raise MaterialMissing(f"no blob {blob_id.hex()[:16]}") from err

    store = ChainStore.open(MemoryKV(), pact)
    ledger = read_ledger_view(store.state(CHAIN_PARAMETER), store.state(CHAIN_DATASET))
    return Materials(pact, compute_genesis_hash(pact), ledger, get_blob)


class Lab:
    """The learning world with devnet's PoL parameters, its streams and base model: trains the
    experts from given weights and scores weights on the validation stream."""

    def __init__(self, sizes: Sizes) -> None:
        from genesis.learningkit import make_learning_world
        from node.pol.data import build_stream, load_base_model, load_tokenizer, validation_stream

        self.sizes = sizes
        pol = _devnet_pol()
        self.world = make_learning_world(train_files=TRAIN_FILES, checkpoint_every=pol.checkpoint_every,
                                         eval_windows=pol.eval_windows, eval_seq_len=pol.eval_seq_len)
        self.materials = make_materials(self.world.pact, self.world.blobs)
        tokenizer = load_tokenizer(self.materials)
        self.stream = build_stream(self.materials, tokenizer, self.world.train)  # [n]
        self.validation = validation_stream(self.materials, tokenizer)  # [n]
        self.model = load_base_model(self.materials)
        self.blocks = sizes.trained or tuple(sorted(n for n in self.model.block_names() if ".expert" in n))
        self.base = {f"{b}/{t}": v.detach().clone() for b in self.blocks
                     for t, v in self.model.block_state_dict(b).items()}
        self.base_loss = self.evaluate(self.base)

    @property
    def parameters(self) -> int:
        return sum(t.numel() for t in self.base.values())

    def options(self, steps: int, seed: int = 0) -> TrainingOptions:
        from node.pol.contributor import TrainingOptions

        s = self.sizes
        return TrainingOptions(blocks=self.blocks, steps=steps, batch_size=s.batch_size, seq_len=s.seq_len, lr=s.lr,
                               warmup_steps=s.warmup_steps, seed=seed)

    def train(self, start: dict[str, Tensor], options: TrainingOptions) -> dict[str, Tensor]:
        """The experts' weights after `options.steps` steps from `start`: `blyan train`'s configuration
        (`finetune_config_of` of the manifest's fields), one checkpoint at the end."""
        import copy

        from gpu.finetune import finetune
        from node.pol.contributor import finetune_config_of, make_hyperparameters

        model = _with_weights(copy.deepcopy(self.model), start)
        cfg = finetune_config_of(self.blocks, make_hyperparameters(options, options.steps), options.threads)
        return finetune(model, self.stream, cfg).final_weights

    def evaluate(self, weights: dict[str, Tensor]) -> float:
        """Mean validation loss (nats/token) of the base model with `weights` in its experts."""
        import copy

        from gpu.finetune import evaluate_windows

        model = _with_weights(copy.deepcopy(self.model), weights)
        return evaluate_windows(model, self.validation, self.sizes.eval_seq_len, self.sizes.eval_windows, 1)

    def windows(self, seq_len: int, wanted: int) -> int:
        """Validation windows `evaluate_windows` scores: the first `wanted`, or all the stream holds."""
        return min(wanted, (self.validation.numel() - 1) // seq_len)


def _devnet_pol() -> Any:
    from genesis.params import devnet_params

    return devnet_params().pol


def _with_weights(model: MoEModel, weights: dict[str, Tensor]) -> MoEModel:
    blocks: dict[str, dict[str, Tensor]] = {}
    for key, value in weights.items():
        block, tensor = key.split("/", 1)
        blocks.setdefault(block, {})[tensor] = value
    for block, tensors in blocks.items():
        model.load_block_state_dict(block, tensors)
    return model.eval()


# --- (a) the compression curve -----------------------------------------------------------------


@dataclass
class Point:
    """One setting on the curve: its size and the share of the dense delta's gain it keeps."""

    label: str
    method: str
    ratio: float
    compressed_bytes: int
    raw_bytes: int
    error_l2: float
    gain: float
    """Validation loss of the base minus that of base + decode(delta), nats/token."""
    share: float
    """gain / the dense delta's gain (of the same run, or of the dense run of the same rounds)."""
    rounds: int = 1
    feedback: bool = False
    """The residual carried from round to round (error feedback)."""

    @property
    def feedback_text(self) -> str:
        return "error feedback" if self.feedback else "no feedback"

    @property
    def kind(self) -> str:
        return "one round" if self.rounds == 1 else f"{self.rounds} rounds, {self.feedback_text}"


@dataclass
class Curve:
    base_loss: float
    dense_gain: float
    """Gain of the trained weights themselves (one round)."""
    rounds_dense_gain: float = math.nan
    """Gain of ROUNDS dense rounds (the reference of the multi-round points)."""
    points: list[Point] = field(default_factory=list)
    rounds: list[Point] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def _share(gain: float, reference: float) -> float:
    return gain / reference if reference > 0 else 0.0


def measure_curve(lab: Lab, quick: bool) -> Curve:
    """Train once, then compress the true delta (final - base) with every setting, decode, apply
    and score it."""
    from gpu.delta import apply_delta, compress_delta, compute_delta, decode_delta

    started = time.perf_counter()
    final = lab.train(lab.base, lab.options(lab.sizes.curve_steps))
    curve = Curve(lab.base_loss, lab.base_loss - lab.evaluate(final))
    curve.seconds["train"] = time.perf_counter() - started
    started = time.perf_counter()
    delta = compute_delta(final, lab.base)
    for cfg in get_settings(QUICK_CURVE if quick else None):
        out = compress_delta(delta, cfg)
        gain = lab.base_loss - lab.evaluate(apply_delta(lab.base, decode_delta(out.blob)))
        curve.points.append(Point(get_label(cfg), cfg.method, out.ratio, out.compressed_bytes, out.raw_bytes,
                                  out.error_l2, gain, _share(gain, curve.dense_gain)))
    curve.seconds["settings"] = time.perf_counter() - started
    return curve


def run_rounds(lab: Lab, cfg: CompressionConfig | None, feedback: bool) -> tuple[float, list[Any]]:
    """ROUNDS rounds, each trained from the weights the previous one left (base + its decoded delta;
    the trained weights themselves when `cfg` is None); the residual carried into the next round's
    compression when `feedback`. The final gain and each round's `CompressedDelta`."""
    from gpu.delta import apply_delta, compress_delta, compute_delta, decode_delta

    current, residual, outs = lab.base, None, []
    for r in range(ROUNDS):
        trained = lab.train(current, lab.options(lab.sizes.round_steps, seed=r))
        if cfg is None:
            current = trained
            continue
        out = compress_delta(compute_delta(trained, current), cfg, residual if feedback else None)
        residual = out.residual if feedback else None
        current = apply_delta(current, decode_delta(out.blob))
        outs.append(out)
    return lab.base_loss - lab.evaluate(current), outs


def measure_rounds(lab: Lab, curve: Curve, quick: bool) -> None:
    """The multi-round points: each setting with and without error feedback, against dense rounds."""
    started = time.perf_counter()
    curve.rounds_dense_gain, _ = run_rounds(lab, None, False)
    for cfg in get_settings(QUICK_ROUND_SETTINGS if quick else ROUND_SETTINGS):
        for feedback in (True, False):
            gain, outs = run_rounds(lab, cfg, feedback)
            compressed = sum(o.compressed_bytes for o in outs) / len(outs)
            raw = outs[0].raw_bytes
            curve.rounds.append(Point(get_label(cfg), cfg.method, raw / compressed, round(compressed), raw,
                                      sum(o.error_l2 for o in outs) / len(outs), gain,
                                      _share(gain, curve.rounds_dense_gain), ROUNDS, feedback))
    curve.seconds["rounds"] = time.perf_counter() - started


def _point_row(p: Point, reference_gain: float, what: str, name: str) -> Row:
    return Row(
        name=name, what=what, ours=p.ratio, baseline=1.0, unit="x",
        ours_text=f"{p.ratio:,.1f}x · {p.compressed_bytes:,} B · keeps {p.share:.1%} of the gain "
                  f"({p.gain:.3f} nats/token) · error {p.error_l2:.3g}",
        baseline_text=f"1x · {p.raw_bytes:,} B · gain {reference_gain:.3f} nats/token",
        baseline_what="the dense float32 delta", ratio=p.ratio, better="higher",
        extra={"share_kept": p.share, "gain": p.gain, "error_l2": p.error_l2,
               "compressed_bytes": float(p.compressed_bytes), "raw_bytes": float(p.raw_bytes)},
    )


def curve_rows(lab: Lab, curve: Curve) -> list[Row]:
    s = lab.sizes
    rows = [_point_row(p, curve.dense_gain, f"{p.method} of the true delta of a {s.curve_steps}-step run",
                       f"pol.compress.{p.label}") for p in curve.points]
    for p in curve.rounds:
        tag = f"ef{p.rounds}" if p.feedback else f"rounds{p.rounds}"
        what = f"{p.method}, {p.rounds} rounds of {s.round_steps} steps, {p.feedback_text} (vs {p.rounds} dense rounds)"
        rows.append(_point_row(p, curve.rounds_dense_gain, what, f"pol.compress.{tag}.{p.label}"))
    kept = [p for p in curve.points + curve.rounds if p.share >= SHARE_GOAL]
    best = max(kept, key=lambda p: p.ratio) if kept else curve.points[0]
    rows.append(Row(
        name="pol.compress.best",
        what=f"highest ratio keeping ≥ {SHARE_GOAL:.0%} of the gain: {best.method} ({best.kind})",
        ours=best.ratio, baseline=1.0, unit="x",
        ours_text=f"{best.ratio:,.1f}x keeping {best.share:.1%}" + ("" if kept else " (no setting kept enough)"),
        baseline_text="1x", baseline_what="the dense float32 delta", ratio=best.ratio, better="higher",
        goal=RATIO_GOAL, extra={"share_kept": best.share},
    ))
    return rows


def curve_notes(lab: Lab, curve: Curve) -> list[str]:
    s = lab.sizes
    windows = lab.windows(s.eval_seq_len, s.eval_windows)
    return [
        f"`pol.compress.*`: {'every expert' if s.trained is None else ', '.join(s.trained)} ({len(lab.blocks)} "
        f"blocks, {lab.parameters:,} parameters) "
        f"of the devnet model fine-tuned on the learning world's training datasets ({lab.stream.numel():,} "
        f"tokens) with `blyan train`'s configuration (`finetune_config_of`: batch {s.batch_size} x {s.seq_len}, "
        f"lr {s.lr:g}, warm-up {s.warmup_steps}, cosine to 10%, AdamW, one thread). The true delta "
        "(trained - base) is compressed with each setting of scripts/bench_delta.py, decoded and applied; "
        f"its gain is the base's validation loss minus the new one ({windows} windows of {s.eval_seq_len} "
        f"tokens of the world's validation stream, {lab.validation.numel():,} tokens, all of it); the share "
        "kept is gain / the gain of the trained weights themselves.",
        f"Base loss {curve.base_loss:.4f} nats/token; the {s.curve_steps}-step run's dense gain "
        f"{curve.dense_gain:.4f} ({curve.seconds.get('train', 0):.1f} s of training, the settings "
        f"{curve.seconds.get('settings', 0):.1f} s).",
        f"`pol.compress.ef{ROUNDS}.*` / `rounds{ROUNDS}.*`: {ROUNDS} rounds of {s.round_steps} steps (seeds "
        f"0..{ROUNDS - 1}), each trained from the weights the previous round left, base + decode(delta), as "
        "a network would hold them; `ef` carries each round's compression residual into the next round's "
        "(compress_delta's error feedback, SparseLoCo-style), `rounds` drops it. The share is against "
        f"{ROUNDS} dense rounds of the same steps (gain {curve.rounds_dense_gain:.4f}; "
        f"{curve.seconds.get('rounds', 0):.1f} s for every multi-round run). The ratio is the mean over rounds.",
        "`pol.compress.best`: among every row above (one round or several), the highest ratio whose share "
        f"kept is ≥ {SHARE_GOAL:.0%}; goal ≥ {RATIO_GOAL:g}x.",
        f"Caveat: the dense runs take the validation loss from {curve.base_loss:.2f} to "
        f"{curve.base_loss - curve.dense_gain:.2f} ({ROUNDS} rounds: {curve.base_loss - curve.rounds_dense_gain:.2f}) "
        "nats/token. Where that is most of what the world's pattern allows (the full run), the gain saturates, "
        "and a compressed multi-round run catches up more easily than it would on a task with more left to learn.",
    ]


# --- (b) verification cost and (c) replay determinism ----------------------------------------


def measure_verification(run: SectionRun, lab: Lab) -> dict[str, Any]:
    """A contributor's `train_bundle` with the contributor's defaults, then `verify_bundle` of it."""
    from genesis.learningkit import LEARNING_CONTRIBUTOR, LEARNING_VALIDATOR
    from node.pol.bundle import Bundle
    from node.pol.contributor import TrainingOptions, make_training_plan, train_bundle
    from node.pol.verifier import verify_bundle

    batch, seq = lab.sizes.verify_batch
    options = TrainingOptions(steps=lab.sizes.verify_steps, batch_size=batch, seq_len=seq, lr=lab.sizes.verify_lr,
                              datasets=lab.world.train)
    plan = make_training_plan(lab.materials, options)
    with run.tempdir() as d:
        started = time.perf_counter()
        result = train_bundle(lab.materials, plan, LEARNING_CONTRIBUTOR, d / "bundle")
        bundle_seconds = time.perf_counter() - started
        started = time.perf_counter()
        bundle = Bundle.load(d / "bundle")
        report = verify_bundle(lab.materials, bundle, LEARNING_VALIDATOR.public_key)
        verify_seconds = time.perf_counter() - started
    if not report.measurements.segments:
        raise RuntimeError(f"the verifier replayed no segment: {report.rejection}")
    return {"options": options, "result": result, "report": report, "bundle_seconds": bundle_seconds,
            "verify_seconds": verify_seconds, "checkpoints": len(bundle.manifest.checkpoints)}


def verification_rows(lab: Lab, v: dict[str, Any]) -> list[Row]:
    o, result, report = v["options"], v["result"], v["report"]
    m, pol = report.measurements, lab.materials.pact.params.pol
    seconds, train = v["verify_seconds"], result.train_seconds
    segments = m.segments
    exact = sum(1 for s in segments if s["exact"])
    verdict = "accepted" if report.accepted else f"rejected: {report.verdict.reason}"
    parts = ", ".join(f"{k} {fmt_time(x)}" for k, x in m.seconds.items())
    cost = Row(
        name="pol.verify.cost",
        what=f"verify_bundle of a {o.steps}-step run ({o.batch_size} x {o.seq_len}, k={pol.checkpoint_every}, "
             f"{pol.top_segments} top + {pol.random_segments} random segments, {pol.eval_windows} windows of "
             f"{pol.eval_seq_len}): {verdict}",
        ours=seconds, baseline=train, unit="s",
        ours_text=f"{fmt_time(seconds)} ({parts}; {len(segments)} segments replayed)",
        baseline_text=f"{fmt_time(train)} for {o.steps} steps ({result.tokens / train:,.0f} tokens/s)",
        baseline_what="the contributor's training (finetune with its trail)", ratio=seconds / train,
        better="lower", goal=VERIFY_COST_GOAL,
        extra={"train_bundle_s": v["bundle_seconds"], **{f"{k}_s": x for k, x in m.seconds.items()}},
    )
    share = exact / len(segments)
    determinism = Row(
        name="pol.replay.determinism",
        what=f"segments of that run the verifier replayed bit-exact (same environment: {m.same_environment})",
        ours=share, baseline=1.0, unit="share", ours_text=f"{exact} of {len(segments)} bit-exact",
        baseline_text="1.0", baseline_what="every segment replayed", ratio=share, better="higher",
        goal=DETERMINISM_GOAL, extra={"segments": float(len(segments)), "exact": float(exact)},
    )
    return [cost, determinism]


def verification_notes(lab: Lab, v: dict[str, Any]) -> list[str]:
    from node.pol.contributor import TrainingOptions

    o, result, report = v["options"], v["result"], v["report"]
    lr = "" if o.lr == TrainingOptions().lr else (
        f" but lr {o.lr:g} (at the default {TrainingOptions().lr:g} a 1,024-step delta's norm passes the genesis "
        "bound and the verifier rejects it before any replay)")
    m, pol = report.measurements, lab.materials.pact.params.pol
    loss = (f"validation loss {m.base_loss:.4f} -> {m.new_loss:.4f}" if m.new_loss is not None
            else "no validation loss measured")
    signed = result.signed.manifest.delta
    return [
        "`pol.verify.cost`: `node.pol.contributor.train_bundle` on the learning world with the contributor's "
        f"defaults (`TrainingOptions`: {', '.join(o.blocks)}, its default compression; here {o.steps} steps of "
        f"{o.batch_size} x {o.seq_len}){lr}, and devnet's PoL parameters (k, segments, windows), then "
        "`Bundle.load` + `node.pol.verifier.verify_bundle` timed whole: static checks (manifest, base, "
        "delta decode and norm), replay (every checkpoint read and hashed for the update norms, the chosen "
        "segments recomputed), evaluate (compression honesty, result roots, base and new validation loss). "
        "Ratio = verification seconds / the training seconds `train_bundle` reports (finetune's wall time; "
        f"the whole `train_bundle` with compression and writing took {v['bundle_seconds']:.1f} s).",
        f"Verdict: {'accepted' if report.accepted else f'rejected ({report.rejection})'}; {loss} (the "
        f"validation stream holds {lab.windows(pol.eval_seq_len, pol.eval_windows)} of the {pol.eval_windows} "
        f"windows of {pol.eval_seq_len} asked); {v['checkpoints']} checkpoints, segments "
        f"{[s['index'] for s in m.segments]} replayed; delta {signed.method} at "
        f"{signed.raw_bytes / signed.compressed_bytes:.1f}x, l2 {m.delta_l2 or 0:.3g} against the base's "
        f"{m.base_l2 or 0:.3g}; final training loss {result.final_loss:.4f}.",
        "`pol.replay.determinism`: the share of the segments that verification replayed whose end "
        "checkpoint matched the claimed bytes (the verifier's `measurements.segments[].exact`).",
    ]


# --- the sections ------------------------------------------------------------------------------


@section("learning", "Learning: training overhead of the proof trail, replay determinism")
def bench_learning(run: SectionRun) -> None:
    with frozen_heap():  # the other sections' objects out of the collector's way (both sides alike)
        out = run_training_section(run.cfg.quick)
    for row in out["rows"]:
        run.row(row)
    for text in out["notes"]:
        run.note(text)


@section("delta", DELTA_TITLE, notes=list(DELTA_NOTES))
def bench_delta(run: SectionRun) -> None:
    out = run_delta_section(None, run.cfg.quick)
    for row in out["rows"]:
        run.row(row)


@section("pol", POL_TITLE)
def bench_pol(run: SectionRun) -> None:
    import torch

    quick = run.cfg.quick
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as training and verification run (the manifest's one thread), compression too
    try:
        with frozen_heap():  # the other sections' objects out of the collector's way
            lab = Lab(run.pick(FULL, QUICK))
            curve = measure_curve(lab, quick)
            measure_rounds(lab, curve, quick)
            verification = measure_verification(run, lab)
    finally:
        torch.set_num_threads(threads)
    for row in [*curve_rows(lab, curve), *verification_rows(lab, verification)]:
        run.row(row)
    for text in [*curve_notes(lab, curve), *verification_notes(lab, verification)]:
        run.note(text)


def main(argv: list[str] | None = None) -> int:
    import tempfile
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="scripts/bench_pol.py", description="The pol benchmark rows, as JSON.")
    parser.add_argument("--quick", action="store_true", help="tiny runs (seconds) instead of the issue's sizes")
    args = parser.parse_args(argv)
    result = SectionResult("pol", POL_TITLE)
    bench_pol(SectionRun(Config(quick=args.quick, tmpdir=Path(tempfile.gettempdir())), result))
    print(json.dumps({"rows": [r.to_json() for r in result.rows], "notes": result.notes}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
