"""scripts/bench.py: the quick run writes every section with numeric ratios; the helpers behind it."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "scripts" / "bench.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("blyan_bench_under_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


bench = load_bench()

_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def table_rows(markdown: str, section: str) -> list[list[str]]:
    """The data rows of the table under `## section:`, as lists of cells."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {section}:"))
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("| `"):
            rows.append([c.strip() for c in _UNESCAPED_PIPE.split(line)[1:-1]])
    return rows


@pytest.mark.slow
def test_quick_run_writes_every_section_with_numeric_ratios(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out), "--json", "--tmpdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,  # the finality section starts 4 daemons even in --quick
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    markdown = out.read_text()
    doc = json.loads(proc.stdout)

    assert markdown.startswith("# Benchmarks")
    assert "--quick" in markdown and "Date (UTC):" in markdown
    for key in ("| cpu |", "| cores |", "| ram |", "| python |", "| torch |"):
        assert key in markdown, key
    assert [s["name"] for s in doc["sections"]] == list(bench.SECTIONS)
    for name in ("codec", "chain", "blobs", "state"):
        assert name in bench.SECTIONS

    for section in doc["sections"]:
        name = section["name"]
        assert section["error"] is None, section["error"]
        assert section["skipped"] is None
        rows = table_rows(markdown, name)
        assert rows, f"section {name} has no table rows"
        assert len(rows) == len(section["rows"])
        for cells, row in zip(rows, section["rows"], strict=True):
            assert len(cells) == 7, cells
            assert cells[0] == f"`{row['name']}`"
            ratio = float(cells[4])
            assert math.isfinite(ratio) and ratio > 0, cells
            assert ratio == pytest.approx(row["ratio"], rel=0.01)
            assert row["ours"] > 0 and row["baseline"] > 0
            assert cells[6] in ("pass", "FAIL", "—")

    names = {r["name"] for s in doc["sections"] for r in s["rows"]}
    for expected in ("codec.tx.encode", "codec.tx.decode", "codec.block.encode",
                     "codec.block.decode", "chain.import", "chain.import+commit"):
        assert expected in names
    assert any(n.startswith("blobs.put.") for n in names)
    assert any(n.startswith("blobs.get_verify.") for n in names)


def test_only_runs_the_named_sections(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calls = []

    @bench.section("probe-a", "Probe A")
    def probe_a(run) -> None:
        calls.append("a")
        ours, base = run.time_pair(lambda: None, lambda: None, repeat=2, number=10)
        run.time_row("probe.a", "nothing", ours, base, "nothing either")

    @bench.section("probe-b", "Probe B")
    def probe_b(run) -> None:
        calls.append("b")
        run.skip("no accelerator here")

    try:
        out = tmp_path / "b.md"
        assert bench.main(["--only", "probe-b,probe-a", "--out", str(out)]) == 0
        markdown = out.read_text()
    finally:
        del bench.SECTIONS["probe-a"], bench.SECTIONS["probe-b"]
    assert calls == ["a", "b"]  # registry order, not argument order
    assert "## probe-a: Probe A" in markdown and "`probe.a`" in markdown
    assert "Skipped: no accelerator here" in markdown
    assert "## codec" not in markdown
    assert "probe.a" in capsys.readouterr().out


def test_an_only_run_splices_its_sections_into_the_existing_report(tmp_path: Path) -> None:
    """`--only X` into an existing report replaces X's section (with a note of when it ran) and
    keeps every other section's figures as they were."""

    @bench.section("probe-c", "Probe C")
    def probe_c(run) -> None:
        ours, base = run.time_pair(lambda: None, lambda: None, repeat=2, number=10)
        run.time_row("probe.c", "nothing", ours, base, "nothing either")

    out = tmp_path / "report.md"
    out.write_text("# Benchmarks\n\n- Date (UTC): then\n\n## codec: Codec\n\n| `codec.x` | kept |\n\n"
                   "## probe-c: Probe C\n\n| `probe.c` | OLD FIGURE |\n\n## sync: Sync\n\nkept too\n")
    try:
        assert bench.main(["--only", "probe-c", "--out", str(out)]) == 0
    finally:
        del bench.SECTIONS["probe-c"]
    markdown = out.read_text()
    assert "| `codec.x` | kept |" in markdown and "kept too" in markdown and "- Date (UTC): then" in markdown
    assert "OLD FIGURE" not in markdown and markdown.count("## probe-c: Probe C") == 1
    section = markdown[markdown.index("## probe-c"):markdown.index("## sync")]
    assert "`probe.c`" in section and "This section was run on its own (`" in section
    assert markdown.index("## codec") < markdown.index("## probe-c") < markdown.index("## sync")


def test_merge_appends_a_section_the_report_lacks() -> None:
    merged = bench.merge_sections("# B\n\n## a: A\n\nx\n", "# B\n\n## new: New\n\ny\n", ["new"], "ran alone")
    assert merged.index("## a: A") < merged.index("## new: New") and merged.rstrip().endswith("ran alone")


def test_unknown_section_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(["--only", "nope"])
    assert exc.value.code == 2


def test_a_failing_section_is_reported_and_fails_the_run(tmp_path: Path) -> None:
    @bench.section("probe-broken", "Broken")
    def broken(run) -> None:
        raise RuntimeError("boom")

    try:
        out = tmp_path / "b.md"
        assert bench.main(["--only", "probe-broken", "--out", str(out)]) == 1
    finally:
        del bench.SECTIONS["probe-broken"]
    assert "RuntimeError: boom" in out.read_text()


def test_stat_median_and_nearest_rank_p95() -> None:
    stat = bench.Stat.of([float(x) for x in range(1, 21)])
    assert stat.median == 10.5
    assert stat.p95 == 19.0
    assert stat.samples == 20
    assert bench.Stat.of([2.0]).p95 == 2.0


def test_goal_direction() -> None:
    def row(ratio: float, better: str, goal: float | None) -> object:
        return bench.Row("r", "w", 1.0, 1.0, "s", "", "", "", ratio, better, goal)

    assert row(0.9, "lower", 1.0).passed is True
    assert row(1.1, "lower", 1.0).passed is False
    assert row(0.3, "higher", 0.25).passed is True
    assert row(0.2, "higher", 0.25).passed is False
    assert row(5.0, "lower", None).passed is None
    assert row(1.1, "lower", 1.0).goal_text == "≤ 1"
    assert row(0.3, "higher", 0.25).goal_text == "≥ 0.25"
