"""`chain.ledger`: what learning reads of the parameter and dataset chains, from a store opened on
the learning world's genesis and after a delta is accepted, and its JSON form for the RPC."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

import pytest

from chain import codec
from chain.kv import MemoryKV
from chain.ledger import LedgerView, read_ledger_view
from chain.pact import GenesisPact
from chain.params import TIER_GOLD, TIER_SILVER
from chain.payloads import DeltaClaim
from chain.records import STATUS_APPROVED
from chain.store import ChainStore
from chain.tensors import TOKENIZER_BLOCK
from chain.types import CHAIN_DATASET, CHAIN_PARAMETER
from genesis.learningkit import LEARNING_CONTRIBUTOR, LEARNING_VALIDATOR, LearningWorld, make_learning_world
from genesis.roundkit import accept_delta, make_manifest
from genesis.testkit import LocalChains


@pytest.fixture(scope="module")
def world() -> LearningWorld:
    return make_learning_world()


@pytest.fixture(scope="module")
def view(world: LearningWorld) -> LedgerView:
    store = ChainStore.open(MemoryKV(), world.pact)
    return read_ledger_view(store.state(CHAIN_PARAMETER), store.state(CHAIN_DATASET))


# --- from genesis -------------------------------------------------------------------------------


def test_ledger_blocks_are_the_genesis_records(world: LearningWorld, view: LedgerView) -> None:
    assert set(view.blocks) == {rec.name for rec in world.pact.tensors}
    for rec in world.pact.tensors:
        block = view.blocks[rec.name]
        assert block.name == rec.name and block.record == rec
        assert block.head == codec.hash_of(rec)
        assert block.weights_root == rec.merkle_root
        assert (block.deltas, block.last_round) == (0, 0)


def test_ledger_tokenizer_head(world: LearningWorld, view: LedgerView) -> None:
    tokenizer = next(rec for rec in world.pact.tensors if rec.name == TOKENIZER_BLOCK)
    assert view.tokenizer_head == codec.hash_of(tokenizer)


def test_ledger_datasets_approved_with_tier_and_role(world: LearningWorld, view: LedgerView) -> None:
    assert set(view.datasets) == {d.cid for d in world.pact.datasets}
    roles = {d.role for d in world.pact.datasets}
    assert roles == {"train", "validation"}
    for ds in world.pact.datasets:
        got = view.datasets[ds.cid]
        assert (got.cid, got.status, got.tier, got.role, got.size) == (ds.cid, STATUS_APPROVED, ds.tier, ds.role,
                                                                      ds.size)
    assert view.datasets[world.noise].tier == TIER_SILVER
    assert all(view.datasets[cid].tier == TIER_GOLD for cid in world.train)


def test_ledger_validation_in_pact_order(world: LearningWorld, view: LedgerView) -> None:
    in_pact = tuple(d.cid for d in world.pact.datasets if d.role == "validation")
    assert view.validation == in_pact == world.validation
    assert len(view.validation) == 2


def test_ledger_trainable_datasets(world: LearningWorld, view: LedgerView) -> None:
    assert view.training_cids(TIER_SILVER) == sorted((*world.train, world.noise))
    assert view.training_cids(TIER_GOLD) == sorted(world.train)
    assert not any(view.is_trainable(cid, 0) for cid in world.validation)
    assert not view.is_trainable("bafkrei-unknown", 0)


def test_ledger_nothing_accepted_at_genesis(view: LedgerView) -> None:
    assert view.accepted_manifests == frozenset()


def test_ledger_read_is_deterministic(world: LearningWorld, view: LedgerView) -> None:
    store = ChainStore.open(MemoryKV(), world.pact)
    assert read_ledger_view(store.state(CHAIN_PARAMETER), store.state(CHAIN_DATASET)) == view


# --- JSON ---------------------------------------------------------------------------------------


def test_ledger_json_round_trip(view: LedgerView) -> None:
    data = view.to_json()
    assert LedgerView.from_json(data) == view
    through_text = json.loads(json.dumps(data))
    assert LedgerView.from_json(through_text) == view
    assert LedgerView.from_json(through_text).to_json() == data


def test_ledger_json_round_trip_with_accepted_manifests(view: LedgerView) -> None:
    seen = LedgerView(view.blocks, view.datasets, view.validation, frozenset({b"\x01" * 32, b"\xfe" * 32}))
    data = json.loads(json.dumps(seen.to_json()))
    assert data["accepted_manifests"] == sorted([("01" * 32), ("fe" * 32)])
    assert LedgerView.from_json(data) == seen


def _first_block(data: dict) -> dict:
    return data["blocks"][sorted(data["blocks"])[0]]


def _del(key: str) -> Callable[[dict], object]:
    return lambda d: d.pop(key)


MALFORMED: dict[str, Callable[[dict], object]] = {
    "no-blocks": _del("blocks"),
    "no-datasets": _del("datasets"),
    "no-validation": _del("validation"),
    "no-accepted": _del("accepted_manifests"),
    "blocks-a-list": lambda d: d.update(blocks=[1, 2]),
    "head-not-hex": lambda d: _first_block(d).update(head="zz" * 32),
    "head-short": lambda d: _first_block(d).update(head="ab" * 31),
    "head-long": lambda d: _first_block(d).update(head="ab" * 33),
    "head-a-number": lambda d: _first_block(d).update(head=7),
    "root-short": lambda d: _first_block(d).update(weights_root="00"),
    "record-truncated": lambda d: _first_block(d).update(record=_first_block(d)["record"][:-2]),
    "record-odd-hex": lambda d: _first_block(d).update(record=_first_block(d)["record"][:-1]),
    "record-garbage": lambda d: _first_block(d).update(record="c1" * 8),
    "record-trailing-bytes": lambda d: _first_block(d).update(record=_first_block(d)["record"] + "00"),
    "deltas-not-a-number": lambda d: _first_block(d).update(deltas="many"),
    "no-last-round": lambda d: _first_block(d).pop("last_round"),
    "dataset-without-cid": lambda d: d["datasets"][0].pop("cid"),
    "dataset-status-none": lambda d: d["datasets"][0].update(status=None),
    "datasets-a-dict": lambda d: d.update(datasets={"a": 1}),
    "accepted-short-hash": lambda d: d.update(accepted_manifests=["ab"]),
    "accepted-not-hex": lambda d: d.update(accepted_manifests=["xy" * 32]),
    "accepted-numbers": lambda d: d.update(accepted_manifests=[1]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_ledger_from_json_malformed(view: LedgerView, case: str) -> None:
    data = copy.deepcopy(view.to_json())
    MALFORMED[case](data)
    with pytest.raises(ValueError):
        LedgerView.from_json(data)


@pytest.mark.parametrize("data", [None, [], "ledger", 3], ids=["none", "list", "str", "int"])
def test_ledger_from_json_not_an_object(data: object) -> None:
    with pytest.raises(ValueError):
        LedgerView.from_json(data)  # type: ignore[arg-type]


# --- after a delta is accepted ------------------------------------------------------------------


def _accept_delta(pact: GenesisPact, name: str) -> tuple[LocalChains, DeltaClaim]:
    chains = LocalChains.create(pact, [LEARNING_VALIDATOR])
    before = read_ledger_view(chains.states[CHAIN_PARAMETER], chains.states[CHAIN_DATASET])
    signed = make_manifest(LEARNING_CONTRIBUTOR, pact.network_id, [(name, before.blocks[name].head)], 1)
    return chains, accept_delta(chains, LEARNING_CONTRIBUTOR, signed)


def test_ledger_after_a_delta(world: LearningWorld, view: LedgerView) -> None:
    name = "layer0.expert0"
    chains, claim = _accept_delta(world.pact, name)
    after = read_ledger_view(chains.states[CHAIN_PARAMETER], chains.states[CHAIN_DATASET])
    assert after.accepted_manifests == frozenset({claim.manifest_hash})
    block = after.blocks[name]
    assert block.head == codec.hash_of(claim)
    assert block.weights_root == claim.blocks[0].result_root
    assert (block.deltas, block.last_round) == (1, claim.round_id)
    assert block.record == view.blocks[name].record  # deltas apply to the genesis record
    assert {n: b for n, b in after.blocks.items() if n != name} == {n: b for n, b in view.blocks.items() if n != name}
    assert (after.datasets, after.validation) == (view.datasets, view.validation)
    assert LedgerView.from_json(json.loads(json.dumps(after.to_json()))) == after
