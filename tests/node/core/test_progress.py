"""Sync progress: rate over a window, ETA and the log line."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from node.core.progress import BAR_WIDTH, RateMeter, compute_eta, format_progress


def test_rate_from_the_window() -> None:
    meter = RateMeter(window=3)
    assert meter.rate is None
    meter.add(0.0, 0)
    assert meter.rate is None
    meter.add(1.0, 100)
    assert meter.rate == 100.0
    meter.add(2.0, 300)
    meter.add(3.0, 600)  # the first sample leaves the window
    assert meter.rate == 250.0
    meter.reset()
    assert meter.rate is None


def test_eta_and_line() -> None:
    assert compute_eta(400, 1000, 100.0) == 6.0
    assert compute_eta(400, 1000, None) is None
    assert compute_eta(400, 1000, 0.0) is None
    line = format_progress(400, 1000, 100.0)
    assert line == "[########------------]  40% 400/1000 blocks, 100.0 blocks/s, ~6 s left"
    assert format_progress(1000, 1000, 5.0).startswith("[" + "#" * BAR_WIDTH + "] 100%")


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.none() | st.floats(0, 1e6))
def test_line_never_breaks(done: int, total: int, rate: float | None) -> None:
    line = format_progress(done, total, rate)
    assert line.startswith("[") and line[BAR_WIDTH + 1] == "]"
    assert line.count("#") + line.count("-") >= BAR_WIDTH
