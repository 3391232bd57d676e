"""The deterministic network simulation: replayable seeds and sweeps that stay green."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys

import pytest

from node.sim.scenario import SimConfig, sweep_config
from node.sim.simulation import run_sim

FAST = SimConfig(seed=11, nodes=4, validators=4, byzantine=1, faults=("crash", "partition", "loss", "reorder"),
                 duration=40.0, liveness_bound=20.0)


def _strip(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "wall_seconds"}


def test_same_seed_same_digest_byte_for_byte() -> None:
    first, second = run_sim(FAST), run_sim(FAST)
    assert first["ok"], first["violations"]
    assert first["digest"] == second["digest"]
    assert _strip(first) == _strip(second)
    assert sum(first["heights"].values()) > 0


def test_other_seed_other_run() -> None:
    from dataclasses import replace

    assert run_sim(replace(FAST, seed=12))["digest"] != run_sim(FAST)["digest"]


def test_same_digest_across_processes_and_hash_seeds() -> None:
    """Nothing may depend on Python's salted str/bytes hashing or on the process."""
    digests = set()
    for hash_seed in ("0", "12345"):
        out = subprocess.run(
            [sys.executable, "-m", "node", "--log-level", "error", "sim", "--nodes", "4", "--byzantine", "1",
             "--faults", "crash,partition,loss,reorder", "--seed", "11", "--duration", "40", "--json"],
            capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": hash_seed}, timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        digests.add(json.loads(out.stdout)["digest"])
    digests.add(run_sim(SimConfig(**{**_config_args(FAST), "liveness_bound": 20.0}))["digest"])
    assert len(digests) == 1


def _config_args(cfg: SimConfig) -> dict:
    return {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}


def test_report_has_the_fields_the_cli_promises() -> None:
    report = run_sim(FAST)
    for key in ("seed", "nodes", "validators", "byzantine", "sim_seconds", "wall_seconds", "heights",
                "safety", "liveness", "ledger_balanced", "state_roots_agree", "digest"):
        assert key in report
    assert set(report["heights"]) == {"parameter", "dataset", "reward"}
    assert report["replay"].startswith("blyan sim ") and "--seed 11" in report["replay"]


def test_cli_exit_code_and_replay_line_on_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from node.cli.main import main
    from node.sim import checks

    def broken(stores, heights, submitted, datasets, liveness_bound, violations):
        violations.append(checks.Violation("liveness", "injected for the test"))
        return False

    monkeypatch.setattr(checks, "check_liveness", broken)
    result = CliRunner().invoke(main, ["sim", "--seed", "3", "--duration", "30"])
    assert result.exit_code == 1
    assert "liveness violated: injected for the test" in result.output
    assert "replay: blyan sim --nodes 4" in result.output


def _sweep_one(seed: int) -> tuple[int, bool, list]:
    logging.disable(logging.CRITICAL)
    report = run_sim(sweep_config(seed))
    return seed, report["ok"], report["violations"][:3] + [report["replay"]]


def sweep(seeds: range) -> list[tuple[int, list]]:
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(min(2, os.cpu_count() or 1)) as pool:
        return [(seed, detail) for seed, ok, detail in pool.imap_unordered(_sweep_one, seeds) if not ok]


@pytest.mark.slow
def test_sweep_200_seeds_across_fault_mixes() -> None:
    failures = sweep(range(200))
    assert not failures, failures[:5]


@pytest.mark.long
def test_sweep_10000_seeds() -> None:
    failures = sweep(range(10_000))
    assert not failures, failures[:5]


def test_a_sparse_peer_graph_keeps_consensus_and_sync() -> None:
    """Each node connected to about 6 of 23 others: handshakes, catch-up and consensus requests
    go to neighbours only, under crashes, partitions and loss; every chain invariant holds
    (datasets aside: see the next test)."""
    cfg = SimConfig(seed=3, nodes=24, validators=7, byzantine=1, faults=("crash", "partition", "loss"),
                    duration=50.0, liveness_bound=25.0, peers_per_node=6)
    report = run_sim(cfg)
    chain_invariants = [v for v in report["violations"] if "transactions not final" not in v["detail"]]
    assert not chain_invariants, chain_invariants[:3]
    assert report["safety"] and report["validity"] and report["ledger_balanced"]
    assert "--peers 6" in report["replay"] and report["heights"]["reward"] > 10


@pytest.mark.xfail(strict=True, reason="not built yet: a validator fetches a dataset from its connected peers "
                   "only, and no holder may be among them (no provider records); strict, so that it fails "
                   "loudly once holder discovery lands")
def test_a_sparse_peer_graph_audits_every_dataset() -> None:
    cfg = SimConfig(seed=3, nodes=16, validators=7, byzantine=1, faults=("crash", "partition", "loss"),
                    duration=50.0, liveness_bound=25.0, peers_per_node=4)
    report = run_sim(cfg)
    assert report["ok"], report["violations"][:3]


def test_validator_set_change_mid_run_keeps_finality() -> None:
    """Two nodes stake and a genesis validator leaves; the set changes at epoch boundaries
    while every invariant holds and the chains keep finalizing under the new set."""
    from chain.kv import MemoryKV  # noqa: F401 - the sim's stores
    from chain.reward import get_validator_set
    from chain.store import ChainStore
    from chain.types import CHAIN_REWARD
    from node.sim.simulation import Simulation
    from p2p.sim import run_simulation

    cfg = SimConfig(seed=5, nodes=6, validators=4, faults=("loss",), duration=60.0, liveness_bound=25.0,
                    tx_rate=3.0, epoch_length=10, rotate_validators=True)
    sim = Simulation(cfg)
    report = run_simulation(sim.main, seed=cfg.seed)
    assert report["ok"], report["violations"]
    store = ChainStore.open(sim.nodes[0].kv)
    final = get_validator_set(store.state(CHAIN_REWARD))
    members = {v.address for v in final.validators}
    assert sim.nodes[4].key.address in members and sim.nodes[5].key.address in members
    assert sim.nodes[3].key.address not in members
    assert final.epoch >= 1
    top = store.height(CHAIN_REWARD)
    signers = [{sig.validator for sig in store.get_commit(CHAIN_REWARD, h).signatures}
               for h in range(1, top + 1) if store.get_commit(CHAIN_REWARD, h) is not None]
    joined = [i for i, who in enumerate(signers) if sim.nodes[4].key.address in who]
    assert joined, "the joiners never signed a commit"
    assert joined[0] > 0, "they signed only after joining"
    assert len(signers) - joined[0] >= 3, "finality went on under the new set"
    assert sim.nodes[3].key.address not in signers[-1]


def test_equivocator_is_slashed_through_the_chain() -> None:
    """Evidence is detected, gossiped, put in a reward block, and the offender's stake burned."""
    from chain.records import tombstone_key
    from chain.reward import get_account, get_supply
    from chain.store import ChainStore
    from chain.types import CHAIN_REWARD
    from node.sim.simulation import Simulation
    from p2p.sim import run_simulation

    cfg = SimConfig(seed=2, nodes=4, validators=4, byzantine=1, duration=40.0, liveness_bound=20.0,
                    byzantine_kinds=("equivocate",))
    sim = Simulation(cfg)
    report = run_simulation(sim.main, seed=cfg.seed)
    assert report["ok"], report["violations"]
    offender = sim.nodes[0].key.address
    for node in sim.nodes[1:]:
        state = ChainStore.open(node.kv).state(CHAIN_REWARD)
        assert state.get(tombstone_key(offender)) is not None
        assert get_account(state, offender).stake < 1_000_000
        assert get_supply(state).burned > 0


def test_invalid_proposer_is_penalised_and_the_chain_goes_on() -> None:
    """A validator proposing blocks with a wrong state root: honest nodes prevote nil, penalise
    it (gossip REJECT), and still finalize everything."""
    cfg = SimConfig(seed=4, nodes=4, validators=4, byzantine=1, duration=40.0, liveness_bound=20.0,
                    byzantine_kinds=("invalid_proposals",))
    report = run_sim(cfg)
    assert report["ok"], report["violations"]
    assert report["penalties"] > 0, report
