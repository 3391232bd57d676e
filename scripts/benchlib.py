"""The benchmark framework: timing, rows, the section registry, the machine, the report.

Sections live in scripts/bench_*.py and register with `@section`; scripts/bench.py runs them.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.metadata
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "docs" / "BENCHMARKS.md"
MiB = 1 << 20

# --- results ----------------------------------------------------------------------------------


@dataclass
class Stat:
    """Seconds per operation over several samples."""

    median: float
    p95: float
    samples: int

    @classmethod
    def of(cls, samples: list[float]) -> Stat:
        if not samples:
            raise ValueError("no samples")
        ordered = sorted(samples)
        # nearest rank: the smallest sample with at least 95% of the samples at or below it
        rank = max(1, -(-95 * len(ordered) // 100))
        return cls(statistics.median(ordered), ordered[rank - 1], len(ordered))

    @property
    def rate(self) -> float:
        return 1.0 / self.median


@dataclass
class Row:
    """One benchmark: our figure, the baseline's, their ratio and the goal on that ratio."""

    name: str
    what: str
    ours: float
    """Our figure, in `unit`."""
    baseline: float
    """The baseline's figure, in `unit`."""
    unit: str
    """"s" (a time per operation: lower is better) or a rate such as "tx/s" (higher is better)."""
    ours_text: str
    baseline_text: str
    baseline_what: str
    ratio: float
    """ours / baseline."""
    better: str
    """"lower" or "higher": which way the ratio should go."""
    goal: float | None = None
    """A ceiling on the ratio when lower is better, a floor when higher is better."""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        if self.goal is None:
            return None
        return self.ratio <= self.goal if self.better == "lower" else self.ratio >= self.goal

    @property
    def goal_text(self) -> str:
        if self.goal is None:
            return "—"
        return f"{'≤' if self.better == 'lower' else '≥'} {self.goal:g}"

    @property
    def result_text(self) -> str:
        return {None: "—", True: "pass", False: "FAIL"}[self.passed]

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["passed"] = self.passed
        return out


@dataclass
class SectionResult:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None
    seconds: float = 0.0


class Skip(Exception):
    """Raised by `SectionRun.skip`: the section cannot run on this machine."""


@dataclass
class Config:
    quick: bool
    tmpdir: Path


class SectionRun:
    """What a section function gets: the config, timing helpers, and where rows go."""

    def __init__(self, cfg: Config, result: SectionResult) -> None:
        self.cfg = cfg
        self.result = result

    def pick(self, full: Any, quick: Any) -> Any:
        """`full` normally, `quick` under --quick."""
        return quick if self.cfg.quick else full

    def note(self, text: str) -> None:
        self.result.notes.append(text)

    def skip(self, reason: str) -> None:
        raise Skip(reason)

    @contextmanager
    def tempdir(self) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="blyan-bench-", dir=self.cfg.tmpdir) as d:
            yield Path(d)

    # --- timing ---

    def calibrate(self, fn: Callable[[], object]) -> int:
        """How many calls make one sample last about `min_time` (timeit's autorange, shorter)."""
        min_time = self.pick(0.03, 0.005)
        number = 1
        while True:
            elapsed = _sample(fn, number, None)
            if elapsed >= min_time or number >= 1 << 20:
                return number
            number = max(number * 2, int(number * min_time / max(elapsed, 1e-9) * 1.2))

    def time_pair(
        self,
        ours: Callable[[], object],
        base: Callable[[], object],
        repeat: int,
        number: int | None = None,
        setup_ours: Callable[[], object] | None = None,
        setup_base: Callable[[], object] | None = None,
    ) -> tuple[Stat, Stat]:
        """Per-call time of `ours` and `base`, samples alternated; `number` calls a sample
        (calibrated when None; 1 when there is a setup, which runs untimed before each call)."""
        if setup_ours or setup_base:
            n_ours = n_base = 1
        elif number is None:
            n_ours, n_base = self.calibrate(ours), self.calibrate(base)
        else:
            n_ours = n_base = number
        a: list[float] = []
        b: list[float] = []
        for _ in range(repeat):
            a.append(_sample(ours, n_ours, setup_ours) / n_ours)
            b.append(_sample(base, n_base, setup_base) / n_base)
        return Stat.of(a), Stat.of(b)

    # --- rows ---

    def row(self, row: Row) -> Row:
        self.result.rows.append(row)
        return row

    def time_row(
        self,
        name: str,
        what: str,
        ours: Stat,
        base: Stat,
        baseline_what: str,
        goal: float | None = None,
        per: str = "ops/s",
        size: int | None = None,
    ) -> Row:
        """A row of two times per operation: ratio = our time / the baseline's (lower is better).
        With `size` (bytes per operation) the texts show a throughput in MiB/s instead of ops/s."""

        def text(s: Stat) -> str:
            rate = f"{s.rate * size / MiB:,.0f} MiB/s" if size else f"{fmt_rate(s.rate)} {per}"
            return f"{fmt_time(s.median)} · {rate} (p95 {fmt_time(s.p95)}, n={s.samples})"

        extra = {"ours_p95_s": ours.p95, "baseline_p95_s": base.p95, "ours_per_s": ours.rate,
                 "baseline_per_s": base.rate}
        if size:
            extra["bytes"] = float(size)
        return self.row(Row(
            name=name, what=what, ours=ours.median, baseline=base.median, unit="s",
            ours_text=text(ours), baseline_text=text(base), baseline_what=baseline_what,
            ratio=ours.median / base.median, better="lower", goal=goal, extra=extra,
        ))


def _sample(fn: Callable[[], object], number: int, setup: Callable[[], object] | None) -> float:
    """Seconds for `number` calls of `fn`, garbage collection off (as timeit does)."""
    if setup is not None:
        setup()
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return time.perf_counter() - start
    finally:
        if was_enabled:
            gc.enable()


def fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_rate(per_second: float) -> str:
    for suffix, scale in (("M", 1e6), ("k", 1e3)):
        if per_second >= scale:
            return f"{per_second / scale:.3g}{suffix}"
    return f"{per_second:.3g}"


# --- the registry ------------------------------------------------------------------------------

SectionFn = Callable[[SectionRun], None]


@dataclass
class Section:
    name: str
    title: str
    fn: SectionFn
    notes: list[str]


SECTIONS: dict[str, Section] = {}
"""Registered benchmark sections, in the order they run and are written."""


def section(name: str, title: str, notes: list[str] | None = None) -> Callable[[SectionFn], SectionFn]:
    """Register a benchmark section; `notes` are written under its table."""

    def register(fn: SectionFn) -> SectionFn:
        if name in SECTIONS:
            raise ValueError(f"benchmark section {name!r} registered twice")
        SECTIONS[name] = Section(name, title, fn, list(notes or []))
        return fn

    return register


# --- the machine -------------------------------------------------------------------------------


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)"
    except OSError:
        return "unknown"


def machine_info(tmpdir: Path, load_at_start: str) -> dict[str, str]:
    info = {"platform": platform.platform()}
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cpu"] = model or platform.processor() or platform.machine()
    info["cores"] = str(os.cpu_count())
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram"] = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
                break
    except OSError:
        pass
    info["python"] = f"{platform.python_version()} ({platform.python_implementation()})"
    info["torch"] = torch_info()
    for dist in ("msgpack", "PyNaCl", "plyvel"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    info["temp dir"] = f"{tmpdir} ({filesystem_of(tmpdir)})"
    info["load at start"] = load_at_start
    info["load at end"] = load_average()
    return info


def torch_info() -> str:
    try:
        import torch
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return "not importable"
    text = torch.__version__
    try:
        if torch.cuda.is_available():
            names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
            return f"{text}, CUDA {torch.version.cuda}: {', '.join(sorted(names))}"
    except Exception:  # noqa: BLE001
        pass
    return f"{text} (no CUDA device)"


def filesystem_of(path: Path) -> str:
    """The file system type of the mount holding `path` (Linux), or "unknown"."""
    try:
        best, kind = "", "unknown"
        target = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            mount = parts[1]
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, kind = mount, parts[2]
        return kind
    except OSError:
        return "unknown"


# --- output ------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(
    results: list[SectionResult], machine: dict[str, str], command: str, date: str, quick: bool,
    seconds: float,
) -> str:
    rows = [r for s in results for r in s.rows]
    goals = [r for r in rows if r.passed is not None]
    met = sum(1 for r in goals if r.passed)
    lines = [
        "# Benchmarks",
        "",
        "Generated by `scripts/bench.py`; do not edit by hand, run `bash scripts/bench` again.",
        "",
        f"- Date (UTC): {date}",
        f"- Command: `{command}`",
        f"- Mode: {'quick (small sizes, few repeats: not figures to quote)' if quick else 'full'}",
        f"- Sections: {', '.join(s.name for s in results)} ({seconds:.0f} s in all)",
        f"- Goals met: {met} of {len(goals)}",
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {k} | {_cell(v)} |" for k, v in machine.items()),
        "",
        "## How to read",
        "",
        "Each row runs our code and a baseline doing the irreducible part of the same work on the "
        "same machine in the same run, samples of the two alternated. **ratio = ours ÷ baseline** "
        "in the row's own unit: for times lower is better (1.0 = as fast as the baseline), for "
        "rates (tx/s) higher is better. A goal bounds the ratio (≤ a ceiling for times, ≥ a floor "
        "for rates). Times are medians per operation; p95 and the number of samples are in "
        "brackets. Time samples run with the garbage collector off, as `timeit` does; the chain "
        "import runs with it on. Run on an otherwise idle machine: under load the two sides of a "
        "row do not slow alike (on a shared 2-core VM the signature checks slowed twice as much "
        "as the import), so the load at the start and at the end is recorded above.",
        "",
    ]
    for s in results:
        lines += [f"## {s.name}: {s.title}", ""]
        if s.skipped:
            lines += [f"Skipped: {s.skipped}", ""]
            continue
        if s.error:
            lines += ["**Error**:", "", "```", s.error.rstrip(), "```", ""]
        if s.rows:
            lines += [
                "| benchmark | what | ours | baseline | ratio | goal | result |",
                "| --- | --- | --- | --- | ---: | --- | --- |",
            ]
            for r in s.rows:
                base = f"{r.baseline_text}: {r.baseline_what}"
                lines.append(
                    f"| `{r.name}` | {_cell(r.what)} | {_cell(r.ours_text)} | {_cell(base)} "
                    f"| {r.ratio:.3g} | {r.goal_text} | {r.result_text} |"
                )
            lines.append("")
        if s.notes:
            lines += [*(f"- {_cell(n)}" for n in s.notes), ""]
    return "\n".join(lines)


def render_table(results: list[SectionResult]) -> str:
    header = ("benchmark", "ours", "baseline", "ratio", "goal", "result")
    table = [header]
    for s in results:
        if s.skipped:
            table.append((s.name, f"skipped: {s.skipped}", "", "", "", ""))
        if s.error:
            table.append((s.name, "ERROR (see the markdown)", "", "", "", ""))
        for r in s.rows:
            ours = r.ours_text.split(" (")[0]
            base = r.baseline_text.split(" (")[0]
            table.append((r.name, ours, base, f"{r.ratio:.3g}", r.goal_text, r.result_text))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    out = []
    for i, row in enumerate(table):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def merge_sections(existing: str, fresh: str, names: list[str], note: str) -> str:
    """`existing` (a whole report) with the sections `names` replaced by those of `fresh` (a
    report of just them), each followed by `note` (when, how and under what load it ran). A
    section `existing` lacks is appended. Everything else of `existing` is kept as it was, so a
    `--only` run never erases the figures of the sections it did not run."""

    def split(text: str) -> tuple[str, dict[str, str]]:
        head, *blocks = text.split("\n## ")
        sections = {}
        for block in blocks:
            name = block.split(":", 1)[0].split("\n", 1)[0].strip()
            sections[name] = "## " + block.rstrip("\n") + "\n"
        return head.rstrip("\n") + "\n", sections

    head, old = split(existing)
    _, new = split(fresh)
    for name in names:
        if name in new:
            old[name] = new[name].rstrip("\n") + "\n\n" + note + "\n"
    return head + "\n" + "\n".join(old.values())
