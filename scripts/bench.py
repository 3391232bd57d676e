#!/usr/bin/env python3
"""Blyan benchmarks: our code against a plain baseline, on the same machine, in the same run.

Every row times one thing of ours and one baseline that does the irreducible part of the same
work (plain msgpack, raw PyNaCl, a plain file write, ...) and reports the ratio of the two, so a
figure means the same on a laptop and on a server. Samples of ours and of the baseline are taken
alternately, so that a machine that slows down mid-run slows both. A row may carry a goal on its
ratio; the run reports which goals are met.

    bash scripts/bench                    # everything; writes docs/BENCHMARKS.md
    bash scripts/bench --only codec,blobs # some sections
    bash scripts/bench --quick --out /tmp/b.md --json

Adding a section (a later issue's consensus simulation, gossip latency, tile loads, ...):

    @section("gossip", "Gossip latency", notes=["what the baseline is, caveats"])
    def bench_gossip(run: SectionRun) -> None:
        ours, base = run.time_pair(lambda: ..., lambda: ..., repeat=run.pick(15, 3))
        run.time_row("gossip.fanout", "what is timed", ours, base, "what the baseline does",
                     goal=2.0)

`run.skip("no GPU")` marks a section that cannot run here. `run.row(...)` takes any figures
(throughputs, latencies) when a time ratio does not fit.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import bench_core  # noqa: E402,F401 - registers its sections
import bench_data  # noqa: E402,F401 - registers its sections (data)
import bench_devnet  # noqa: E402,F401 - registers its sections (finality, gossip16)
import bench_fastsync  # noqa: E402,F401 - registers its sections
import bench_gpu  # noqa: E402,F401 - registers its sections
import bench_infer  # noqa: E402,F401 - registers its sections
import bench_net  # noqa: E402,F401 - registers its sections
import bench_plans  # noqa: E402,F401 - registers its sections (plans)
import bench_pol  # noqa: E402,F401 - registers its sections (learning, delta, pol)
import bench_rounds  # noqa: E402,F401 - registers its sections (rounds)
from benchlib import (  # noqa: E402 - the path above comes first
    DEFAULT_OUT,
    SECTIONS,
    Config,
    Row,
    Section,
    SectionResult,
    SectionRun,
    Skip,
    Stat,
    fmt_rate,
    fmt_time,
    load_average,
    machine_info,
    merge_sections,
    render_markdown,
    render_table,
    section,
)

__all__ = ["SECTIONS", "Row", "Section", "SectionRun", "Stat", "fmt_rate", "fmt_time", "main", "section"]


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench.py",
        description="Run Blyan's benchmarks against their baselines; write a markdown report.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few repeats (for tests; figures not to quote)")
    parser.add_argument("--only", metavar="NAME[,NAME]",
                        help=f"run only these sections, of: {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="where to write the markdown (default: docs/BENCHMARKS.md)")
    parser.add_argument("--json", action="store_true",
                        help="print the results as JSON on stdout instead of the table")
    parser.add_argument("--tmpdir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the LevelDB and blob benchmarks write (default: system temp)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SECTIONS]
        if unknown or not names:
            parser.error(f"unknown section(s) {', '.join(unknown) or '(none)'}; "
                         f"known: {', '.join(SECTIONS)}")
        args.sections = [n for n in SECTIONS if n in names]
    else:
        args.sections = list(SECTIONS)
    return args


def run_sections(names: list[str], cfg: Config, log: Callable[[str], None]) -> list[SectionResult]:
    results = []
    for name in names:
        sec = SECTIONS[name]
        result = SectionResult(sec.name, sec.title, notes=list(sec.notes))
        log(f"bench: {name} ...")
        start = time.perf_counter()
        try:
            sec.fn(SectionRun(cfg, result))
        except Skip as skip:
            result.skipped = str(skip)
        except Exception:  # noqa: BLE001 - report it and go on with the other sections
            result.error = traceback.format_exc()
            log(result.error)
        result.seconds = time.perf_counter() - start
        log(f"bench: {name} done in {result.seconds:.1f} s")
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = os.environ.get("BLYAN_BENCH_COMMAND") or shlex.join(
        ["python", "scripts/bench.py", *(sys.argv[1:] if argv is None else argv)]
    )
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    load_at_start = load_average()
    started = time.perf_counter()
    cfg = Config(quick=args.quick, tmpdir=args.tmpdir)
    results = run_sections(args.sections, cfg, log)
    seconds = time.perf_counter() - started
    machine = machine_info(args.tmpdir, load_at_start)  # after the runs: importing torch is not free
    markdown = render_markdown(results, machine, command, date, args.quick, seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.only and args.out.exists():  # keep the other sections' figures: splice these in
        note = (f"This section was run on its own (`{command}`, {date}, same report's machine; load "
                f"{machine.get('load at start', '?')} at the start, {machine.get('load at end', '?')} at the end).")
        markdown = merge_sections(args.out.read_text(), markdown, args.sections, note)
    args.out.write_text(markdown.rstrip("\n") + "\n")
    log(f"bench: wrote {args.out}")

    rows = [r for s in results for r in s.rows]
    if args.json:
        doc = {
            "date": date, "command": command, "quick": args.quick, "machine": machine,
            "seconds": seconds,
            "sections": [
                {"name": s.name, "title": s.title, "skipped": s.skipped, "error": s.error,
                 "seconds": s.seconds, "notes": s.notes, "rows": [r.to_json() for r in s.rows]}
                for s in results
            ],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(render_table(results))
        missed = [r.name for r in rows if r.passed is False]
        print(f"\ngoals met: {sum(1 for r in rows if r.passed)} of "
              f"{sum(1 for r in rows if r.passed is not None)}"
              + (f"; missed: {', '.join(missed)}" if missed else ""))
    if any(s.error for s in results):
        return 1
    if args.strict and any(r.passed is False for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
