"""Lineage (`chain.lineage`): the provenance graph of a genesis expert and dataset, of a submitted
dataset, of applied and pending claims, and its JSON-LD, which pyld expands to N-Quads holding
the W3C PROV-O triples (with the inline context alone: no document is ever fetched)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pyld import jsonld

from chain import codec, crypto
from chain.commit import sign_attestation
from chain.learning import sign_manifest
from chain.lineage import (
    ASSOCIATED_WITH,
    ATTRIBUTED_TO,
    DERIVED_FROM,
    GENERATED_BY,
    GENESIS_ACTIVITY,
    GENESIS_AGENT,
    PROV,
    USED,
    LineageGraph,
    UnknownSubject,
    account_urn,
    block_urn,
    claim_urn,
    dataset_urn,
    lineage_of,
    lineage_of_claim,
    lineage_of_dataset,
    lineage_of_expert,
    manifest_urn,
    model_urn,
    to_json,
    to_jsonld,
)
from chain.payloads import CommitSnapshot, DeltaClaim, SnapshotClaim
from chain.records import ExpertState, expert_key
from chain.rounds import compute_round, get_model_head
from chain.state import Overlay
from chain.types import CHAIN_DATASET, CHAIN_PARAMETER
from genesis.roundkit import accept_delta, make_manifest, tensor_record
from genesis.testkit import LocalChains, sign_tx, system_tx
from tests.chain.attest_support import EXPERT, TRAIN_CID, TRAINER, UNKNOWN_CID, make_chains, make_world
from tests.chain.dataset_support import make_submission

SUBMITTED_BYTES = b"a dataset a contributor submitted"
SUBMITTED_CID = crypto.cid_raw(SUBMITTED_BYTES)


def states(chains: LocalChains):
    return chains.states[CHAIN_PARAMETER], chains.states[CHAIN_DATASET]


def genesis_head(chains: LocalChains) -> bytes:
    """The hash of EXPERT's genesis record (its first head)."""
    return codec.hash_of(codec.decode(ExpertState, chains.states[CHAIN_PARAMETER].get(expert_key(EXPERT))).record)


def submit_dataset(chains: LocalChains) -> None:
    state = chains.states[CHAIN_DATASET]
    params = chains.pact.params
    sub = make_submission(state, chains.pact.network_id, TRAINER.address, SUBMITTED_CID, len(SUBMITTED_BYTES), params)
    tx = sign_tx(TRAINER, chains.pact.network_id, CHAIN_DATASET, 0, sub)
    _, rejected = chains.advance(CHAIN_DATASET, [tx])
    assert not rejected, rejected


def train(chains: LocalChains, tag: bytes, datasets: tuple[str, ...]) -> DeltaClaim:
    """Accept a delta on EXPERT's head whose manifest names `datasets`."""
    state = chains.states[CHAIN_PARAMETER]
    head = codec.decode(ExpertState, state.get(expert_key(EXPERT))).head
    signed = make_manifest(TRAINER, chains.pact.network_id, [(EXPERT, head)],
                           compute_round(state.height + 1, chains.context()), tag=tag,
                           model_head=get_model_head(Overlay(state)))
    return accept_delta(chains, TRAINER, sign_manifest(TRAINER, replace(signed.manifest, datasets=datasets)))


@pytest.fixture(scope="module")
def trained():
    """A submitted dataset, then two applied claims on EXPERT: the first used it."""
    chains = make_chains()
    submit_dataset(chains)
    first = train(chains, b"first", (TRAIN_CID, SUBMITTED_CID))
    second = train(chains, b"second", (TRAIN_CID,))
    return chains, codec.hash_of(first), codec.hash_of(second)


def no_fetch(url: str, options: dict) -> dict:
    raise AssertionError(f"the JSON-LD processor tried to fetch {url}")


def nquads(graph: LineageGraph) -> set[str]:
    text = jsonld.to_rdf(to_jsonld(graph), {"format": "application/n-quads", "documentLoader": no_fetch})
    return set(text.splitlines())


def triple(subject: str, relation: str, obj: str) -> str:
    return f"<{subject}> <{PROV}{relation}> <{obj}> ."


def has_edge(graph: LineageGraph, source: str, relation: str, target: str) -> bool:
    return target in graph.get_targets(source, relation)


# --- genesis --------------------------------------------------------------------------------


def test_lineage_of_genesis_expert() -> None:
    chains = make_chains()
    head = genesis_head(chains)
    graph = lineage_of_expert(*states(chains), EXPERT)
    subject = block_urn(EXPERT, head)
    assert graph.subject == subject and not graph.truncated
    node = graph.get_node(subject)
    assert node.kind == "entity" and node.type == "BlockVersion"
    assert node.attributes["version"] == "1.0.0" and node.attributes["origin"] == "genesis"
    assert node.attributes["isHead"] is True and node.attributes["blockKind"] == "expert"
    assert has_edge(graph, subject, GENERATED_BY, GENESIS_ACTIVITY)
    assert has_edge(graph, subject, ATTRIBUTED_TO, GENESIS_AGENT)
    assert graph.get_node(GENESIS_AGENT).kind == "agent" and graph.get_node(GENESIS_ACTIVITY).kind == "activity"
    quads = nquads(graph)
    assert triple(subject, GENERATED_BY, GENESIS_ACTIVITY) in quads
    assert triple(subject, ATTRIBUTED_TO, GENESIS_AGENT) in quads
    assert f"<{subject}> <http://www.w3.org/1999/02/22-rdf-syntax-ns#type> <{PROV}Entity> ." in quads


def test_lineage_of_genesis_dataset() -> None:
    chains = make_chains()
    graph = lineage_of_dataset(*states(chains), TRAIN_CID)
    subject = dataset_urn(TRAIN_CID)
    assert graph.subject == subject
    attrs = graph.get_node(subject).attributes
    assert attrs["status"] == "approved" and attrs["tier"] == "gold" and attrs["genesis"] is True
    assert attrs["role"] == "train" and attrs["size"] == 123_456 and "submission" not in attrs
    assert has_edge(graph, subject, ATTRIBUTED_TO, GENESIS_AGENT)
    assert not [e for e in graph.edges if e.relation == USED]  # no claim used it yet
    quads = nquads(graph)
    assert triple(subject, ATTRIBUTED_TO, GENESIS_AGENT) in quads
    assert f'<{subject}> <https://blyan.network/ns#cid> "{TRAIN_CID}" .' in quads


# --- applied claims -------------------------------------------------------------------------


def test_lineage_of_expert_after_two_claims(trained) -> None:
    chains, first, second = trained
    root = block_urn(EXPERT, genesis_head(chains))
    v1, v2 = block_urn(EXPERT, first), block_urn(EXPERT, second)
    graph = lineage_of_expert(*states(chains), EXPERT)
    assert graph.subject == v2 and not graph.truncated
    assert [graph.get_node(v).attributes["version"] for v in (root, v1, v2)] == ["1.0.0", "1.0.1", "1.0.2"]
    assert graph.get_node(v2).attributes["isHead"] is True and graph.get_node(v1).attributes["isHead"] is False
    trainer = account_urn(TRAINER.address)
    for version, base, claim in ((v1, root, first), (v2, v1, second)):
        assert has_edge(graph, version, DERIVED_FROM, base)
        assert has_edge(graph, version, GENERATED_BY, claim_urn(claim))
        assert has_edge(graph, version, ATTRIBUTED_TO, trainer)
        assert has_edge(graph, claim_urn(claim), USED, base)
        assert has_edge(graph, claim_urn(claim), USED, dataset_urn(TRAIN_CID))
        assert has_edge(graph, claim_urn(claim), ASSOCIATED_WITH, trainer)
    assert has_edge(graph, claim_urn(first), USED, dataset_urn(SUBMITTED_CID))
    assert not has_edge(graph, claim_urn(second), USED, dataset_urn(SUBMITTED_CID))
    assert has_edge(graph, model_urn(second), DERIVED_FROM, model_urn(first))
    claim = graph.get_node(claim_urn(second)).attributes
    assert claim["status"] == "accepted" and claim["baseLoss"] == 2.0 and claim["newLoss"] == 1.9
    assert claim["gain"] == pytest.approx(0.05)
    quads = nquads(graph)
    assert triple(v2, DERIVED_FROM, v1) in quads and triple(v1, DERIVED_FROM, root) in quads
    assert triple(v2, GENERATED_BY, claim_urn(second)) in quads
    assert triple(claim_urn(first), USED, dataset_urn(SUBMITTED_CID)) in quads
    assert triple(claim_urn(first), USED, root) in quads
    assert triple(v1, ATTRIBUTED_TO, trainer) in quads
    assert triple(claim_urn(first), ASSOCIATED_WITH, trainer) in quads


def test_lineage_of_expert_bounded(trained) -> None:
    chains, first, second = trained
    graph = lineage_of_expert(*states(chains), EXPERT, max_versions=1)
    assert graph.truncated
    assert graph.get_node(claim_urn(second)) is not None
    assert graph.get_node(block_urn(EXPERT, first)) is not None  # the base it used, not expanded
    assert graph.get_targets(block_urn(EXPERT, first), GENERATED_BY) == [claim_urn(first)]
    assert graph.get_node(claim_urn(first)).attributes == {"status": "accepted"}


def test_lineage_of_submitted_dataset(trained) -> None:
    chains, first, _ = trained
    graph = lineage_of_dataset(*states(chains), SUBMITTED_CID)
    subject = dataset_urn(SUBMITTED_CID)
    attrs = graph.get_node(subject).attributes
    assert attrs["status"] == "pending" and "tier" not in attrs and attrs["genesis"] is False
    assert attrs["submittedHeight"] == 1 and len(attrs["submission"]) == 64
    trainer = account_urn(TRAINER.address)
    assert has_edge(graph, subject, ATTRIBUTED_TO, trainer)
    users = [e.source for e in graph.edges if e.relation == USED and e.target == subject]
    assert users == [claim_urn(first)]
    assert has_edge(graph, block_urn(EXPERT, first), GENERATED_BY, claim_urn(first))
    quads = nquads(graph)
    assert triple(subject, ATTRIBUTED_TO, trainer) in quads
    assert triple(claim_urn(first), USED, subject) in quads
    assert triple(block_urn(EXPERT, first), GENERATED_BY, claim_urn(first)) in quads
    bounded = lineage_of_dataset(*states(chains), SUBMITTED_CID, max_claims=0)
    assert bounded.truncated and bounded.get_node(claim_urn(first)) is None


def test_lineage_of_genesis_dataset_used_by_every_claim_newest_first(trained) -> None:
    chains, first, second = trained
    graph = lineage_of_dataset(*states(chains), TRAIN_CID)
    users = [e.source for e in graph.edges if e.relation == USED and e.target == dataset_urn(TRAIN_CID)]
    assert users == [claim_urn(second), claim_urn(first)]


def test_lineage_of_applied_claim(trained) -> None:
    chains, first, second = trained
    graph = lineage_of_claim(*states(chains), second)
    subject = claim_urn(second)
    assert graph.subject == subject and graph.get_node(subject).kind == "activity"
    attrs = graph.get_node(subject).attributes
    assert attrs["appliedHeight"] > attrs["revealHeight"] > attrs["commitHeight"] > 0
    v1, v2 = block_urn(EXPERT, first), block_urn(EXPERT, second)
    assert has_edge(graph, v2, GENERATED_BY, subject) and has_edge(graph, v2, DERIVED_FROM, v1)
    assert has_edge(graph, v1, GENERATED_BY, claim_urn(first))  # where its base came from
    manifests = [t for t in graph.get_targets(subject, USED) if t.startswith("urn:blyan:manifest:")]
    assert len(manifests) == 1 and has_edge(graph, manifests[0], ATTRIBUTED_TO, account_urn(TRAINER.address))
    assert has_edge(graph, subject, USED, model_urn(first))
    assert has_edge(graph, model_urn(second), GENERATED_BY, subject)
    assert graph.get_node(v2).attributes["version"] == "1.0.2"
    quads = nquads(graph)
    assert triple(v2, GENERATED_BY, subject) in quads and triple(v2, DERIVED_FROM, v1) in quads
    assert triple(subject, USED, manifests[0]) in quads and triple(subject, USED, v1) in quads


def test_lineage_of_claim_not_applied_generates_nothing() -> None:
    world = make_world(close_round=False)
    p, d = world.chains.states[CHAIN_PARAMETER], world.chains.states[CHAIN_DATASET]
    graph = lineage_of_claim(p, d, world.claim_hash)
    subject = claim_urn(world.claim_hash)
    assert graph.get_node(subject).attributes["status"] == "certified"
    assert not [e for e in graph.edges if e.relation == GENERATED_BY and e.target == subject]
    assert has_edge(graph, subject, USED, manifest_urn(world.claim.manifest_hash))
    unknown = graph.get_node(dataset_urn(UNKNOWN_CID))
    assert unknown.attributes == {"cid": UNKNOWN_CID, "status": "unknown"}


def test_lineage_of_expert_starts_at_its_last_snapshot() -> None:
    chains = make_chains()
    before = codec.hash_of(train(chains, b"before", (TRAIN_CID,)))
    snapshot = replace(tensor_record(EXPERT, 9), version="1.1.0")
    message = codec.hash_of(SnapshotClaim(before, snapshot))
    attestation = sign_attestation(chains.keys[1:], chains.pact.network_id, message)
    _, rejected = chains.advance(CHAIN_PARAMETER, [system_tx(CHAIN_PARAMETER, CommitSnapshot(before, snapshot,
                                                                                               attestation))])
    assert not rejected, rejected
    after = codec.hash_of(train(chains, b"after", (TRAIN_CID,)))
    graph = lineage_of_expert(*states(chains), EXPERT)
    root, head = block_urn(EXPERT, message), block_urn(EXPERT, after)
    assert graph.subject == head and graph.get_node(head).attributes["version"] == "1.1.1"
    attrs = graph.get_node(root).attributes
    assert attrs["origin"] == "snapshot" and attrs["version"] == "1.1.0" and attrs["isHead"] is False
    assert has_edge(graph, head, DERIVED_FROM, root)
    assert graph.get_targets(root, GENERATED_BY) == []  # what it compacted is not in the state
    assert graph.get_node(claim_urn(before)) is None
    assert triple(head, DERIVED_FROM, root) in nquads(graph)


# --- encodings ------------------------------------------------------------------------------


def test_jsonld_context_is_inline_and_keeps_every_attribute(trained) -> None:
    chains, _, _ = trained
    graph = lineage_of_expert(*states(chains), EXPERT)
    doc = to_jsonld(graph)
    assert isinstance(doc["@context"], dict) and doc["@context"]["prov"] == PROV
    expanded = {n["@id"]: n for n in jsonld.expand(doc, {"documentLoader": no_fetch})}
    for node in graph.nodes:
        keys = {k for k in expanded[node.id] if k.startswith("https://blyan.network/ns#")}
        assert keys == {f"https://blyan.network/ns#{a}" for a in node.attributes}, node.id
    assert to_json(graph)["subject"] == graph.subject
    assert len(to_json(graph)["edges"]) == len(graph.edges)


# --- unknown subjects -----------------------------------------------------------------------


def test_invalid_unknown_subjects() -> None:
    p, d = states(make_chains())
    with pytest.raises(UnknownSubject) as info:
        lineage_of_expert(p, d, "layer9.expert9")
    assert info.value.kind == "expert" and info.value.subject == "layer9.expert9"
    with pytest.raises(UnknownSubject, match="dataset"):
        lineage_of_dataset(p, d, UNKNOWN_CID)
    with pytest.raises(UnknownSubject, match="claim"):
        lineage_of_claim(p, d, bytes(32))
    with pytest.raises(UnknownSubject):
        lineage_of(p, d, "claim", b"\x01" * 32)
    with pytest.raises(ValueError):
        lineage_of(p, d, "claim", "not bytes")
