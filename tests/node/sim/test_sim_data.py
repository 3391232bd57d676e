"""Data quality in the simulator: real content, the real L0 audit and L1 score on every
validator, forged reports caught, honeypots submitted and revealed, and validators that
rubber-stamp or vote at random losing reputation."""

from __future__ import annotations

from dataclasses import replace

import pytest

from node.sim.data import BAD_KINDS, KINDS, forge_clean, make_content
from node.sim.scenario import SimConfig
from node.sim.simulation import run_sim

DATA = SimConfig(seed=5, nodes=5, validators=5, byzantine=1, byzantine_kinds=("rubber_stamp_data",),
                 duration=60.0, liveness_bound=25.0, tx_rate=3.0)


def _decided(report: dict) -> dict[str, int]:
    return report["datasets"]["outcomes"]


@pytest.mark.slow
def test_forged_reports_are_rejected_and_rubber_stamps_lose_weight() -> None:
    report = run_sim(DATA)
    assert report["ok"], report["violations"]
    outcomes = _decided(report)
    approved_bad = {k: n for k, n in outcomes.items() if k.split(":")[0] in BAD_KINDS and ":approved" in k}
    assert not approved_bad, outcomes
    assert any(k.split(":")[0] in BAD_KINDS and k.endswith(":rejected") for k in outcomes), outcomes
    # the honeypots are submitted first, decided, and their labels revealed (one is silver: the
    # rubber stamp's gold on it is graded wrong)
    assert report["datasets"]["honeypots_revealed"] == 3, report["datasets"]
    assert outcomes.get("honeypot:approved/silver") == 1, outcomes
    rep = report["datasets"]["reputation_ppm"]
    stamp = rep["n0"]
    honest = [v for name, v in rep.items() if name != "n0"]
    assert stamp < min(honest), rep


@pytest.mark.slow
def test_random_voters_lose_weight_and_the_run_replays() -> None:
    cfg = replace(DATA, seed=9, nodes=4, validators=4, byzantine_kinds=("random_data_votes",))
    first, second = run_sim(cfg), run_sim(cfg)
    assert first["ok"], first["violations"]
    assert first["digest"] == second["digest"] and first["datasets"] == second["datasets"]
    rep = first["datasets"]["reputation_ppm"]
    assert rep["n0"] < min(v for name, v in rep.items() if name != "n0"), rep


def test_honeypot_labels_are_what_the_reference_score_gives() -> None:
    from genesis.params import devnet_params
    from node.sim.honeypots import label_of, make_honeypots

    honeypots = make_honeypots()
    assert len({h.cid for h in honeypots}) == 3
    assert {h.tier for h in honeypots} - {3}, "some label must not be gold (a rubber stamp's vote)"
    assert all(label_of(h.data, devnet_params().dataset) == h.tier for h in honeypots)


def test_every_kind_is_made_and_forging_clears_findings() -> None:
    import random

    from chain.unixfs import compute_dataset_cid
    from genesis.params import devnet_params
    from node.data.l0.audit import run_l0_audit
    from node.data.l0.minhash import NearDuplicateIndex

    params = devnet_params().dataset
    rng = random.Random(1)
    earlier = [make_content("clean", rng, [])]
    for kind in sorted(set(KINDS)):
        data = make_content(kind, rng, earlier)
        index = NearDuplicateIndex(params.audit)
        index.add(compute_dataset_cid(earlier[0]), _signature(earlier[0], params))
        report = run_l0_audit(data, cid=compute_dataset_cid(data), format="text", anchor_height=1,
                              params=params.audit, index=index)
        from chain.dataset import find_policy_violations

        violations = find_policy_violations(report, params.policy)
        assert bool(violations) == (kind in BAD_KINDS), (kind, violations)
        assert not find_policy_violations(forge_clean(report), params.policy)


def _signature(data: bytes, params) -> tuple[int, ...]:
    from node.data.l0.audit import compute_signature

    return compute_signature(data, "text", params.audit)
