"""`blyan_getLineage` (`node.api.lineage_methods`) on a store holding a real accepted claim: the
plain graph and JSON-LD for each kind of subject, and its refusals."""

from __future__ import annotations

from typing import Any

import pytest
from pyld import jsonld

from chain import codec
from chain.lineage import PROV, block_urn, claim_urn, dataset_urn, lineage_of_claim, to_json, to_jsonld
from chain.records import ExpertState, expert_key
from chain.store import ChainStore
from chain.types import CHAIN_DATASET, CHAIN_PARAMETER
from node.api.client import INVALID_PARAMS, RPCError
from node.api.lineage_methods import NO_LINEAGE
from node.api.methods import METHODS
from node.api.params import bind_params
from node.api.services import Services
from tests.chain.attest_support import EXPERT, TRAIN_CID, UNKNOWN_CID, make_world


class FakeNode:
    """What `blyan_getLineage` reads of the engine: its store."""

    def __init__(self, store: ChainStore) -> None:
        self.store = store


def call(store: ChainStore, params: Any) -> Any:
    method = METHODS["blyan_getLineage"]
    return method.handler(Services(node=FakeNode(store)), bind_params(method, params))


def error_of(store: ChainStore, params: Any) -> RPCError:
    with pytest.raises(RPCError) as info:
        call(store, params)
    return info.value


@pytest.fixture(scope="module")
def world():
    return make_world()


def test_rpc_lineage_of_claim_plain_and_jsonld(world) -> None:
    store = world.store
    graph = lineage_of_claim(store.state(CHAIN_PARAMETER), store.state(CHAIN_DATASET), world.claim_hash)
    assert call(store, {"claim": world.claim_hash.hex()}) == to_json(graph)
    doc = call(store, {"claim": world.claim_hash.hex(), "jsonld": True})
    assert doc == to_jsonld(graph)
    quads = jsonld.to_rdf(doc, {"format": "application/n-quads"})
    made = block_urn(EXPERT, world.claim_hash)
    assert f"<{made}> <{PROV}wasGeneratedBy> <{claim_urn(world.claim_hash)}> ." in quads


def test_rpc_lineage_of_expert_and_dataset(world) -> None:
    head = codec.decode(ExpertState, world.store.state(CHAIN_PARAMETER).get(expert_key(EXPERT))).head
    out = call(world.store, {"expert": EXPERT})
    assert out["subject"] == block_urn(EXPERT, head) == block_urn(EXPERT, world.claim_hash)
    out = call(world.store, [None, TRAIN_CID])  # positional: expert, dataset, claim, jsonld
    assert out["subject"] == dataset_urn(TRAIN_CID)
    assert {"source": claim_urn(world.claim_hash), "relation": "used", "target": dataset_urn(TRAIN_CID)} \
        in out["edges"]


def test_rpc_lineage_unknown_subject(world) -> None:
    err = error_of(world.store, {"dataset": UNKNOWN_CID})
    assert err.code == NO_LINEAGE and err.data == {"kind": "dataset", "subject": UNKNOWN_CID}
    err = error_of(world.store, {"expert": "layer7.expert7"})
    assert err.code == NO_LINEAGE and err.data["kind"] == "expert"
    assert error_of(world.store, {"claim": "00" * 32}).code == NO_LINEAGE


@pytest.mark.parametrize("params", [
    {},
    {"expert": EXPERT, "dataset": TRAIN_CID},
    {"claim": "abcd"},
    {"claim": 7},
    {"expert": ""},
    {"expert": 3},
    {"dataset": "b" * 200},
    {"expert": EXPERT, "jsonld": "yes"},
    {"expert": EXPERT, "depth": 3},
])
def test_rpc_lineage_invalid_params(world, params: dict) -> None:
    assert error_of(world.store, params).code == INVALID_PARAMS


def test_rpc_lineage_is_in_the_openrpc_document() -> None:
    doc = call_discover()
    method = next(m for m in doc["methods"] if m["name"] == "blyan_getLineage")
    assert [p["name"] for p in method["params"]] == ["expert", "dataset", "claim", "jsonld"]
    assert not any(p["required"] for p in method["params"])


def call_discover() -> Any:
    method = METHODS["rpc.discover"]
    return method.handler(Services(), bind_params(method, None))
