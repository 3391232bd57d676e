"""Heads with accepted deltas: real deltas on the learning world's model, accepted on in-memory
chains, materialised into the blob store, checked against the chain's result roots, served."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from chain.blobs import BlobStore
from chain.ledger import read_ledger_view
from chain.pact import compute_genesis_hash
from chain.types import CHAIN_DATASET, CHAIN_PARAMETER
from gpu.model import Expert, MoEConfig
from gpu.weights import decode_block
from node.experts.materialise import DeltaBlobMissing, Materialiser, MaterialiseRefused
from node.experts.weights import (
    LocalExperts,
    MaterialisedRecords,
    StateModelView,
    WeightsUnavailable,
    build_shared_model,
    is_loadable,
)
from node.pol.data import MaterialMissing, Materials, load_base_model
from tests.node.experts.delta_support import accept, get_accepted, get_state, make_real_delta, make_world_chains

EXPERT = "layer0.expert0"
ROUTER = "layer0.router"


@pytest.fixture
def world(tmp_path: Path):
    world, chains = make_world_chains()
    blobs = BlobStore(tmp_path / "blobs")
    for data in world.blobs.values():
        blobs.put(data)
    return world, chains, blobs


def base_weights(chains, blobs: BlobStore, *names: str) -> dict:
    return {n: decode_block(blobs.get(get_state(chains, n).record.blob_id)) for n in names}


def view_of(world, chains, heads: Materialiser | None) -> StateModelView:
    return StateModelView(world.pact.model, lambda: chains.states[CHAIN_PARAMETER], heads)


def test_materialise_applies_a_real_delta_and_serves_the_new_head(world, tmp_path: Path) -> None:
    world, chains, blobs = world
    real = make_real_delta(chains, base_weights(chains, blobs, EXPERT, ROUTER), seed=1)
    claim_hash, claim = accept(chains, real)
    blobs.put(real.blob)
    heads = Materialiser(blobs, tmp_path / "heads.json")
    state = get_state(chains, EXPERT)
    assert state.head == claim_hash and state.deltas == (claim_hash,)

    record = heads.materialise(EXPERT, state, get_accepted(chains))
    got = decode_block(blobs.get(record.blob_id, verify=True))
    assert set(got) == set(real.results[EXPERT])
    assert all(torch.equal(got[k], real.results[EXPERT][k]) for k in got)
    assert record.merkle_root == next(c.result_root for c in claim.blocks if c.name == EXPERT)
    assert record.version == state.version == "0.1.1"
    heads.materialise(ROUTER, get_state(chains, ROUTER), get_accepted(chains))

    view = view_of(world, chains, heads)
    assert view.get_record(EXPERT) == record
    assert Materialiser(blobs, tmp_path / "heads.json").lookup(EXPERT, claim_hash, record.merkle_root) == record
    local = LocalExperts(view, blobs)
    assert local.serve((0, 0)) == claim_hash
    x = torch.randn(3, world.pact.model.d_model, generator=torch.Generator().manual_seed(0))  # [3, D]
    ref = Expert(MoEConfig.from_spec(world.pact.model))
    ref.load_state_dict(real.results[EXPERT])
    assert torch.equal(local.forward((0, 0), claim_hash, x), ref.eval()(x).detach())
    model = build_shared_model(view, blobs)
    router = model.get_block(ROUTER).state_dict()
    assert all(torch.equal(router[k], real.results[ROUTER][k]) for k in real.results[ROUTER])


def test_head_not_materialised_is_unavailable(world, tmp_path: Path) -> None:
    world, chains, blobs = world
    real = make_real_delta(chains, base_weights(chains, blobs, EXPERT), seed=2)
    claim_hash, _ = accept(chains, real)
    view = view_of(world, chains, Materialiser(blobs, tmp_path / "heads.json"))
    assert view.get_record(EXPERT) is None and not is_loadable(view, EXPERT, blobs)
    with pytest.raises(WeightsUnavailable, match=f"delta {claim_hash.hex()[:16]} not materialised yet"):
        LocalExperts(view, blobs).serve((0, 0))
    with pytest.raises(DeltaBlobMissing) as info:  # the delta blob is not here
        view.heads.materialise(EXPERT, get_state(chains, EXPERT), get_accepted(chains))
    assert info.value.claim.delta_blob == real.signed.manifest.delta.blob_id


def test_invalid_tampered_delta_blob_is_refused(world, tmp_path: Path) -> None:
    world, chains, blobs = world
    real = make_real_delta(chains, base_weights(chains, blobs, EXPERT), seed=3)
    claim_hash, _ = accept(chains, real)
    path = blobs.path_of(blobs.put(real.blob))
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x10
    os.chmod(path, 0o644)
    path.write_bytes(bytes(raw))
    heads = Materialiser(blobs, tmp_path / "heads.json")
    with pytest.raises(MaterialiseRefused, match="delta blob") as info:
        heads.materialise(EXPERT, get_state(chains, EXPERT), get_accepted(chains))
    assert info.value.name == EXPERT and info.value.claim_hash == claim_hash
    assert heads.heads() == []


def test_invalid_result_root_is_refused(world, tmp_path: Path) -> None:
    world, chains, blobs = world
    real = make_real_delta(chains, base_weights(chains, blobs, EXPERT), seed=4, result_roots={EXPERT: b"\x07" * 32})
    claim_hash, _ = accept(chains, real)
    blobs.put(real.blob)
    before = set(blobs.iter_ids())
    heads = Materialiser(blobs, tmp_path / "heads.json")
    with pytest.raises(MaterialiseRefused, match="not the claim's result root") as info:
        heads.materialise(EXPERT, get_state(chains, EXPERT), get_accepted(chains))
    assert info.value.claim_hash == claim_hash
    assert set(blobs.iter_ids()) == before and heads.heads() == []  # nothing stored, never served
    assert view_of(world, chains, heads).get_record(EXPERT) is None


def test_two_deltas_apply_in_order_and_gc_drops_the_superseded(world, tmp_path: Path) -> None:
    world, chains, blobs = world
    genesis_blob = get_state(chains, EXPERT).record.blob_id
    first = make_real_delta(chains, base_weights(chains, blobs, EXPERT), seed=5, tag=b"one")
    h1, _ = accept(chains, first)
    blobs.put(first.blob)
    heads = Materialiser(blobs, tmp_path / "heads.json")
    r1 = heads.materialise(EXPERT, get_state(chains, EXPERT), get_accepted(chains))

    second = make_real_delta(chains, {EXPERT: first.results[EXPERT]}, seed=6, tag=b"two")
    h2, _ = accept(chains, second)
    blobs.put(second.blob)
    state = get_state(chains, EXPERT)
    assert state.deltas == (h1, h2) and state.version == "0.1.2"
    r2 = heads.materialise(EXPERT, state, get_accepted(chains))
    assert heads.built == 2  # resumed from the first version
    got = decode_block(blobs.get(r2.blob_id))
    assert all(torch.equal(got[k], second.results[EXPERT][k]) for k in got)
    fresh = Materialiser(BlobStore(blobs.root), tmp_path / "other.json")  # from the base: same bytes
    assert fresh.materialise(EXPERT, state, get_accepted(chains)) == r2 and fresh.built == 2

    deleted = heads.collect_garbage({state.head}, protect={genesis_blob})
    assert deleted == [r1.blob_id]
    assert not blobs.has(r1.blob_id) and blobs.has(r2.blob_id) and blobs.has(genesis_blob)
    assert heads.heads() == [(EXPERT, h2)]
    assert view_of(world, chains, heads).get_record(EXPERT) == r2


def test_materials_load_a_materialised_head(world, tmp_path: Path) -> None:
    world, chains, blobs = world
    real = make_real_delta(chains, base_weights(chains, blobs, EXPERT), seed=7)
    accept(chains, real)
    blobs.put(real.blob)
    ledger = read_ledger_view(chains.states[CHAIN_PARAMETER], chains.states[CHAIN_DATASET])
    m = Materials(world.pact, compute_genesis_hash(world.pact), ledger, lambda b: blobs.get(b, verify=True))
    with pytest.raises(MaterialMissing, match=f"{EXPERT} has 1 accepted deltas.*not materialised"):
        load_base_model(m)
    heads = Materialiser(blobs, tmp_path / "heads.json")
    record = heads.materialise(EXPERT, get_state(chains, EXPERT), get_accepted(chains))
    live = MaterialisedRecords(view_of(world, chains, heads))
    assert dict(live) == {EXPERT: record}
    for head_records in ({EXPERT: record}, live):
        model = load_base_model(Materials(m.pact, m.genesis_hash, ledger, m.get_blob, head_records))
        weights = model.get_block(EXPERT).state_dict()
        assert all(torch.equal(weights[k], real.results[EXPERT][k]) for k in real.results[EXPERT])
    stale = replace(record, merkle_root=bytes(32))  # a record that is not the chain's head
    with pytest.raises(MaterialMissing, match="not materialised"):
        load_base_model(Materials(m.pact, m.genesis_hash, ledger, m.get_blob, {EXPERT: stale}))
