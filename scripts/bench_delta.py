"""Benchmark rows of delta compression (`gpu/delta.py`): ratio and error per setting, encode and
decode time. `run_delta_section(model_dir, quick)` returns the rows for a section to add:

    @section("delta", DELTA_TITLE, notes=DELTA_NOTES)
    def bench_delta(run: SectionRun) -> None:
        out = run_delta_section(None, run.cfg.quick)
        for row in out["rows"]:
            run.row(row)
        for text in out["notes"]:
            run.note(text)

`get_settings()` are the compression settings worth measuring (also for the curve of ratio against
the share of the validation gain kept, which needs real fine-tuning: scripts/bench_pol.py). Torch is
imported only when a section runs (importing it earlier would slow every other section's samples:
each one starts with a full garbage collection, which then walks torch's heap too).

    python scripts/bench_delta.py [--quick] [--model-dir DIR]   # the rows alone, as JSON
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchlib import ROOT, Config, Row, SectionResult, SectionRun

if TYPE_CHECKING:
    from gpu.delta import CompressionConfig

DEVNET = ROOT / "genesis" / "prebuilt" / "devnet"
DELTA_TITLE = "Delta compression: ratio, error, encode and decode time"
LOW_RANK, NOISE, SCALE = 4, 0.5, 0.01  # the synthetic fine-tuning delta (see DELTA_NOTES)

SETTINGS: list[dict[str, int]] = [
    {},  # dense float32: the reference
    {"bits": 8},
    *({"density_ppm": d, "bits": b} for d in (100_000, 30_000, 10_000) for b in (8, 4, 2)),
    *({"rank": r, "bits": b} for r, b in ((2, 4), (4, 4), (4, 8), (8, 8))),
]
"""`CompressionConfig` fields (chunk 4096): dense, int8, top-k 10% / 3% / 1% with int8 / int4 / int2,
low rank 2 / 4 with int4, low rank 4 / 8 with int8."""
TIMED = ["dense", "int8", "topk1%.int2", "lowrank8.int8"]
"""Labels of the settings whose encode and decode are timed."""
QUICK_RATIOS = [*TIMED, "topk10%.int2"]
"""Labels of the settings a quick run compresses."""

DELTA_NOTES = [
    "Delta: every expert block of the shipped devnet model (genesis/prebuilt/devnet, 8 experts, "
    "w1 256x128 and w2 128x256, 524,288 parameters), perturbed as a fine-tuning step might: per "
    f"tensor, {SCALE} x the tensor's std x (a random rank-{LOW_RANK} matrix + {NOISE} x gaussian "
    "noise), seeded. A real fine-tuning delta may be less low-rank; pass one as `delta=` to measure it.",
    "`delta.ratio.*`: raw (dense float32) bytes over the blob's bytes, headers included; the text "
    "adds the relative l2 error ||decode - delta|| / ||delta|| (one round, no error feedback).",
    "`delta.encode.*`: `compress_delta` (top-k, quantization, SVD, packing, canonical safetensors, "
    "and a decode of its own blob for the residual) against `gpu.weights.encode_block` of the dense "
    "delta. `delta.decode.*`: `decode_delta` (every check of the blob) then `apply_delta` to the "
    "base, against a plain torch `base + delta` of the dense delta already in memory.",
]


def get_settings(labels: list[str] | None = None) -> list[CompressionConfig]:
    """The settings, in `SETTINGS` order; only those of `labels` when given (see `get_label`)."""
    from gpu.delta import CompressionConfig

    settings = [CompressionConfig(**fields) for fields in SETTINGS]
    if labels is None:
        return settings
    unknown = set(labels) - {get_label(cfg) for cfg in settings}
    if unknown:
        raise ValueError(f"no setting labelled {sorted(unknown)}")
    return [cfg for cfg in settings if get_label(cfg) in labels]


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Inside, the objects alive now are out of the collector's sight (`gc.freeze`): each timing
    sample starts with `gc.collect()`, and torch allocates enough to trigger automatic ones; both
    would otherwise walk the whole heap of the run (torch's, the other sections' fixtures: ~0.15 s
    each here). Nested uses leave the outermost to unfreeze."""
    if gc.get_freeze_count():
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def load_expert_weights(model_dir: Path | None = None) -> dict[str, Any]:
    """Every expert tensor of a genesis artifact directory, by qualified name "<block>/<tensor>"."""
    from genesis.build import load_artifact
    from gpu.weights import decode_block

    artifact = load_artifact(model_dir or DEVNET)
    return {f"{block}/{name}": t for block, blob in artifact.blocks.items() if ".expert" in block
            for name, t in decode_block(blob).items()}


def make_delta(base: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """A fine-tuning-like delta of `base`: low rank plus noise, scaled to each tensor's spread."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in sorted(base.items()):
        m, n = w.shape[0], w.numel() // w.shape[0]
        low = torch.randn(m, LOW_RANK, generator=gen) @ torch.randn(LOW_RANK, n, generator=gen)  # [m, n]
        noise = torch.randn(m, n, generator=gen)  # [m, n]
        out[name] = (SCALE * float(w.std()) * (low / math.sqrt(LOW_RANK) + NOISE * noise)).reshape(w.shape)
    return out


def get_label(cfg: CompressionConfig) -> str:
    """A row-name suffix: "dense", "int8", "topk1%.int2", "lowrank8.int8"."""
    parts = [f"lowrank{cfg.rank}"] if cfg.rank else []
    if cfg.is_topk:
        parts.append(f"topk{cfg.density_ppm / 10_000:g}%")
    parts.append(f"int{cfg.bits}" if cfg.bits < 32 else "dense" if not parts else "f32")
    return ".".join(parts)


def _ratio_row(cfg: CompressionConfig, out: Any, params: int) -> Row:
    return Row(
        name=f"delta.ratio.{get_label(cfg)}",
        what=f"{cfg.method} of a {params:,}-parameter expert delta",
        ours=out.ratio, baseline=1.0, unit="x",
        ours_text=f"{out.ratio:,.1f}x · {out.compressed_bytes:,} bytes · error {out.error_l2:.3g}",
        baseline_text=f"1x · {out.raw_bytes:,} bytes", baseline_what="dense float32",
        ratio=out.ratio, better="higher",
        extra={"compressed_bytes": float(out.compressed_bytes), "raw_bytes": float(out.raw_bytes),
               "error_l2": out.error_l2},
    )


def _time_rows(run: SectionRun, cfg: CompressionConfig, base: dict[str, Any], delta: dict[str, Any]) -> None:
    from gpu.delta import apply_delta, compress_delta, decode_delta
    from gpu.weights import encode_block

    repeat = run.pick(7, 3)
    blob = compress_delta(delta, cfg).blob
    size = 4 * sum(t.numel() for t in delta.values())
    ours, plain = run.time_pair(lambda: compress_delta(delta, cfg), lambda: encode_block(delta), repeat)
    run.time_row(f"delta.encode.{get_label(cfg)}", f"compress_delta {cfg.method}", ours, plain,
                 "encode_block of the dense delta", size=size)
    ours, plain = run.time_pair(lambda: apply_delta(base, decode_delta(blob)),
                                lambda: {k: base[k] + delta[k] for k in base}, repeat)
    run.time_row(f"delta.decode.{get_label(cfg)}", f"decode_delta + apply_delta, {cfg.method}", ours, plain,
                 "torch base + dense delta", size=size)


def run_delta_section(model_dir: Path | None, quick: bool, delta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rows `delta.ratio.*` for every setting, `delta.encode.*` and `delta.decode.*` for a few; notes
    and raw figures. `model_dir` is a genesis artifact directory (None: the shipped devnet)."""
    import torch

    from gpu.delta import compress_delta

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the node decodes; and the figures do not depend on the core count
    try:
        base = load_expert_weights(model_dir)
        delta = make_delta(base) if delta is None else delta
        base = {k: base[k] for k in delta}
        params = sum(t.numel() for t in delta.values())
        run = SectionRun(Config(quick=quick, tmpdir=Path(tempfile.gettempdir())), SectionResult("delta", DELTA_TITLE))
        figures: dict[str, Any] = {"parameters": params, "settings": {}}
        for cfg in get_settings(QUICK_RATIOS if quick else None):
            out = compress_delta(delta, cfg)
            run.row(_ratio_row(cfg, out, params))
            figures["settings"][cfg.method] = {"ratio": out.ratio, "error_l2": out.error_l2,
                                               "compressed_bytes": out.compressed_bytes}
        with frozen_heap():
            for cfg in get_settings(TIMED[1:3] if quick else TIMED):
                _time_rows(run, cfg, base, delta)
    finally:
        torch.set_num_threads(threads)
    return {"rows": run.result.rows, "notes": list(DELTA_NOTES), "figures": figures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench_delta.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few settings and three samples")
    parser.add_argument("--model-dir", type=Path, default=None, help="a genesis artifact directory (default: devnet)")
    args = parser.parse_args(argv)
    out = run_delta_section(args.model_dir, args.quick)
    doc = {"rows": [r.to_json() for r in out["rows"]], "notes": out["notes"], "figures": out["figures"]}
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
