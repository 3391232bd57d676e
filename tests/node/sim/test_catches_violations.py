"""The checker must be able to fail: break consensus on purpose and watch the sweep catch it."""

from __future__ import annotations

import logging

import pytest

from chain.types import ValidatorSet
from node.sim.simulation import SimConfig, run_sim

MAX_SEEDS = 40


def first_safety_violation(make_config, seeds: range) -> dict | None:
    for seed in seeds:
        report = run_sim(make_config(seed))
        if not report["safety"]:
            return report
    return None


@pytest.fixture(autouse=True)
def quiet() -> None:
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def test_honest_config_is_safe_on_the_same_seeds() -> None:
    """The scenario below, with the algorithm intact: no violation on the seeds it uses."""

    def config(seed: int) -> SimConfig:
        return SimConfig(seed=seed, nodes=7, validators=7, byzantine=1, faults=("partition",),
                         duration=40.0, liveness_bound=20.0, tx_rate=4.0, byzantine_kinds=("equivocate",))

    assert first_safety_violation(config, range(8)) is None


@pytest.mark.slow
def test_half_quorum_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Count 1/2 of the power instead of 2/3: one equivocator bridging a partition of the
    honest validators lets both sides decide, and the sweep must flag it."""
    monkeypatch.setattr(ValidatorSet, "is_quorum", lambda self, power: 2 * power > self.total_power)

    def config(seed: int) -> SimConfig:
        return SimConfig(seed=seed, nodes=7, validators=7, byzantine=1, faults=("partition",),
                         duration=40.0, liveness_bound=20.0, tx_rate=4.0, byzantine_kinds=("equivocate",))

    report = first_safety_violation(config, range(MAX_SEEDS))
    assert report is not None, f"no safety violation found in {MAX_SEEDS} seeds"
    assert not report["ok"]
    assert any(v["invariant"] == "safety" for v in report["violations"])
    assert report["replay"].startswith("blyan sim --nodes 7")
    # ... and the failing seed replays exactly.
    again = run_sim(config(report["seed"]))
    assert again["digest"] == report["digest"] and not again["safety"]


@pytest.mark.slow
def test_one_third_equivocators_under_partition_are_flagged() -> None:
    """F >= V/3 is outside what BFT promises: the report must be able to say so."""

    def config(seed: int) -> SimConfig:
        return SimConfig(seed=seed, nodes=4, validators=4, byzantine=2, faults=("partition",),
                         duration=40.0, liveness_bound=20.0, tx_rate=4.0, byzantine_kinds=("equivocate",))

    report = first_safety_violation(config, range(MAX_SEEDS))
    assert report is not None, f"no safety violation found in {MAX_SEEDS} seeds"
    assert any(v["invariant"] == "safety" for v in report["violations"])
