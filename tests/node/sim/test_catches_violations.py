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


# --- learning: plant what must never be, in a copy of an honest node's store ---------------------


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory):
    """A learning run (an honest delta and a forged one), its workdir kept for planting."""
    from node.sim.simulation import Simulation
    from p2p.sim import run_simulation

    cfg = SimConfig(seed=3, nodes=4, validators=4, duration=30.0, liveness_bound=15.0, deltas=1,
                    forgeries=("wrong_result",))
    sim = Simulation(cfg, workdir=tmp_path_factory.mktemp("learned"))
    report = run_simulation(sim.main, seed=cfg.seed)
    assert report["ok"], report["violations"]
    assert report["learning"]["honest_accepted"] == 1
    return sim


def _copy_with(kv, chain_id: int, key: bytes, value: bytes):
    """A copy of a store's KV with one state entry replaced and the chain's head record made to
    match it: what a node that applied something else would hold."""
    from dataclasses import replace

    from chain import codec
    from chain.kv import COL_META, COL_STATE, MemoryKV
    from chain.state import State
    from chain.store import ChainMeta

    copy = MemoryKV()
    copy.write_batch(list(kv.iterate(b"")), [])
    prefix = COL_STATE + bytes([chain_id])
    copy.put(prefix + key, value)
    meta = codec.decode(ChainMeta, copy.get(COL_META + bytes([chain_id])))
    items = {k[len(prefix):]: v for k, v in copy.iterate(prefix)}
    root = State.from_items(chain_id, meta.height, meta.head, meta.time_ms, items).root
    copy.put(COL_META + bytes([chain_id]), codec.encode(replace(meta, state_root=root)))
    return copy


def test_forged_delta_marked_accepted_in_a_copied_store_is_caught(learned) -> None:
    from dataclasses import replace

    from chain import codec
    from chain.records import CLAIM_ACCEPTED, ExpertState, claim_key, expert_key
    from chain.rounds import get_claim
    from chain.state import Overlay
    from chain.store import ChainStore
    from chain.types import CHAIN_PARAMETER
    from node.sim import checks

    [(forged, who)] = learned.learning.forged.items()
    honest = {n.name: ChainStore.open(n.kv) for n in learned.nodes}
    assert checks.check_no_forged_accepted(honest, learned.learning.forged, []) and checks.check_heads(honest, [])
    view = Overlay(honest["n0"].state(CHAIN_PARAMETER))
    rec = get_claim(view, forged)
    lying = _copy_with(learned.nodes[0].kv, CHAIN_PARAMETER, claim_key(forged),
                       codec.encode(replace(rec, status=CLAIM_ACCEPTED)))
    violations: list = []
    stores = {**honest, "copy": ChainStore.open(lying)}
    assert not checks.check_no_forged_accepted(stores, learned.learning.forged, violations)
    assert [(v.invariant, v.detail.split(":")[0]) for v in violations] == [("no-forged-accepted", "copy")]
    assert who in violations[0].detail
    # The forged claim made the head of its block: both invariants see it.
    name = rec.claim.blocks[0].name
    head = view.get_record(expert_key(name), ExpertState)
    moved = _copy_with(learned.nodes[0].kv, CHAIN_PARAMETER, expert_key(name),
                       codec.encode(replace(head, head=forged, deltas=(*head.deltas, forged))))
    violations = []
    stores = {**honest, "copy": ChainStore.open(moved)}
    assert not checks.check_heads(stores, violations)
    assert not checks.check_no_forged_accepted(stores, learned.learning.forged, violations)
    assert {v.invariant for v in violations} == {"heads", "no-forged-accepted"}


def test_accepted_delta_that_does_not_verify_again_is_caught(learned, tmp_path) -> None:
    """Re-verify the run's accepted delta from a blob store whose copy of the delta is altered:
    the replay's re-verification must fail it (and say so)."""
    from chain.blobs import BlobStore
    from chain.store import ChainStore
    from node.sim import checks

    honest = {n.name: ChainStore.open(n.kv) for n in learned.nodes}
    ref = learned.nodes[1]
    [accepted] = [c for c in learned.learning.contributions if c.kind == "honest"]
    blobs = BlobStore(tmp_path / "blobs")
    for blob_id in ref.blobs.iter_ids():
        blobs.put(ref.blobs.get(blob_id))
    delta = ref.blobs.path_of(_delta_id(accepted.bundle))
    target = blobs.path_of(_delta_id(accepted.bundle))
    target.chmod(0o644)
    target.write_bytes(delta.read_bytes()[:-1] + bytes([delta.read_bytes()[-1] ^ 1]))
    violations: list = []
    reverifier = checks.Reverifier(learned.learning.make_reverify(blobs, ref.key.public_key), violations)
    assert checks.check_validity(learned.pact, honest, violations, on_import=reverifier.on_import)
    assert not reverifier.check_complete(honest["n1"])
    assert [v.invariant for v in violations] == ["reverify"]
    assert accepted.claim_hash.hex()[:16] in violations[0].detail and "bad-blob" in violations[0].detail
    # With the node's own blobs it verifies again.
    violations = []
    reverifier = checks.Reverifier(learned.learning.make_reverify(ref.blobs, ref.key.public_key), violations)
    checks.check_validity(learned.pact, honest, violations, on_import=reverifier.on_import)
    assert reverifier.check_complete(honest["n1"]) and not violations
    assert reverifier.checked == [accepted.claim_hash.hex()]


def test_different_materialised_bytes_for_a_head_are_caught(learned) -> None:
    from chain.crypto import sha256
    from chain.store import ChainStore
    from node.sim import checks

    stores = {n.name: ChainStore.open(n.kv) for n in learned.nodes}
    real = learned.learning.make_materialise(learned.nodes)
    built: list[str] = []

    def noting(node, name, state, store):
        blob_id = real(node, name, state, store)
        if blob_id is not None:  # None: the node never fetched the delta (a claim decided before its turn)
            built.append(node)
        return blob_id

    assert checks.check_materialised(stores, noting, []) == len(built) >= 2  # one head with a delta
    liar = built[-1]

    def other_bytes_on_one_node(node, name, state, store):
        blob_id = real(node, name, state, store)
        return sha256(b"other weights") if node == liar else blob_id

    violations: list = []
    assert checks.check_materialised(stores, other_bytes_on_one_node, violations) == -1
    assert [v.invariant for v in violations] == ["materialised"] and violations[0].detail.startswith(f"{liar} ")


def _delta_id(bundle) -> bytes:
    from chain import codec
    from chain.learning import SignedManifest
    from node.pol.bundle import MANIFEST_FILE

    return codec.decode(SignedManifest, (bundle / MANIFEST_FILE).read_bytes()).manifest.delta.blob_id


@pytest.mark.slow
def test_more_than_two_thirds_lying_validators_are_caught() -> None:
    """Outside what PoL promises: three of four validators accept a forged delta and reject the
    honest one. The forged delta becomes a head, and the report must say so."""
    cfg = SimConfig(seed=4, nodes=4, validators=4, byzantine=3, byzantine_kinds=("false_pol_votes",),
                    duration=30.0, liveness_bound=15.0, deltas=1, forgeries=("wrong_result",))
    report = run_sim(cfg)
    assert not report["ok"] and not report["learning"]["ok"]
    flagged = {v["invariant"] for v in report["violations"]}
    assert {"no-forged-accepted", "reverify"} <= flagged, report["violations"]
    claims = {c["kind"]: c["status"] for c in report["learning"]["claims"]}
    assert claims == {"honest": "rejected", "wrong_result": "accepted"}
    assert "--byzantine-kinds false_pol_votes" in report["replay"]
