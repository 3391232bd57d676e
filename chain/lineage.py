"""Lineage: dataset -> training manifest -> delta claim -> expert head, as a provenance graph.

Read from the parameter-chain and dataset-chain states (pure), for one subject: an expert (or
any block of the model) by name, a dataset by CID, a claim by hash. The graph speaks W3C PROV-O
(https://www.w3.org/TR/prov-o/):

    entities    a dataset (`urn:blyan:dataset:<cid>`), a training manifest
                (`urn:blyan:manifest:<hex>`), a version of a block (`urn:blyan:block:<name>@<head
                hex>`: the genesis record, a snapshot, or the claim that made it its head), a
                version of the whole model (`urn:blyan:model:<head hex>`, zero: genesis)
    activities  a claim (`urn:blyan:claim:<hex>`: the training its manifest describes, with the PoL
                that decided it), the genesis (`urn:blyan:activity:genesis`)
    agents      an account (`urn:blyan:account:bly1...`), the Genesis Pact (`urn:blyan:agent:genesis`)

and the relations `used` (a claim used its datasets, its manifest, the base versions of its blocks
and the model it was trained on), `wasGeneratedBy` (an applied claim generated the new versions),
`wasDerivedFrom` (a version derives from the one before), `wasAttributedTo` (datasets, manifests
and versions to their contributor) and `wasAssociatedWith` (a claim with its contributor).

`to_jsonld` writes a graph as JSON-LD with its `@context` inline, so a JSON-LD processor expands it
without fetching anything.

What a query reads: an expert, its delta chain since the last snapshot (point lookups, the newest
`max_versions`); a claim, point lookups; a dataset, one walk over the parameter state's keys for
its claim records (the one kind of record scanned; the newest `max_claims` kept). History
compacted by a snapshot is not in the state: a snapshot version is a root of the graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from chain import codec
from chain.crypto import format_address
from chain.errors import BlyanError
from chain.heads import get_expert
from chain.params import TIER_NAMES
from chain.records import (
    CLAIM_ACCEPTED,
    CLAIM_STATUS_NAMES,
    STATUS_APPROVED,
    STATUS_NAMES,
    ClaimRecord,
    DatasetRecord,
    ExpertState,
    cid_key,
    dataset_key,
    is_claim_key,
)
from chain.rounds import compute_gain_ppm, get_claim
from chain.state import Overlay, State
from chain.tensors import KIND_EXPERT, KIND_MODULE, KIND_TOKENIZER
from chain.types import ZERO_ADDRESS, ZERO_HASH

PROV = "http://www.w3.org/ns/prov#"
BLYAN = "https://blyan.network/ns#"
RDFS = "http://www.w3.org/2000/01/rdf-schema#"

ENTITY = "entity"
ACTIVITY = "activity"
AGENT = "agent"
PROV_CLASSES = {ENTITY: "prov:Entity", ACTIVITY: "prov:Activity", AGENT: "prov:Agent"}

USED = "used"
GENERATED_BY = "wasGeneratedBy"
DERIVED_FROM = "wasDerivedFrom"
ATTRIBUTED_TO = "wasAttributedTo"
ASSOCIATED_WITH = "wasAssociatedWith"
RELATIONS = (USED, GENERATED_BY, DERIVED_FROM, ATTRIBUTED_TO, ASSOCIATED_WITH)

GENESIS_AGENT = "urn:blyan:agent:genesis"
GENESIS_ACTIVITY = "urn:blyan:activity:genesis"
MAX_VERSIONS = 64
"""Versions of an expert a query expands, newest first."""
MAX_CLAIMS = 64
"""Claims that used a dataset a query expands, newest reveal first."""
PPM = 1_000_000
BLOCK_KINDS = {KIND_EXPERT: "expert", KIND_MODULE: "module", KIND_TOKENIZER: "tokenizer"}

Attribute = str | int | float | bool


class UnknownSubject(BlyanError):
    """The expert, dataset or claim a lineage query names is not on the chain."""

    def __init__(self, kind: str, subject: str) -> None:
        self.kind = kind
        self.subject = subject
        super().__init__(f"no {kind} {subject!r} on this chain")


@dataclass(frozen=True, slots=True)
class LineageNode:
    id: str
    """URN of the thing."""
    kind: str
    """ENTITY, ACTIVITY or AGENT (its PROV class)."""
    type: str
    """Its class in the blyan vocabulary: Dataset, TrainingManifest, BlockVersion, ModelVersion,
    DeltaClaim, Genesis, Account, GenesisPact."""
    label: str
    """A short human name."""
    attributes: Mapping[str, Attribute]
    """Properties in the blyan vocabulary (hashes in hex, losses in nats per token)."""


@dataclass(frozen=True, slots=True)
class LineageEdge:
    source: str
    """URN of the subject of the relation."""
    relation: str
    """One of RELATIONS (a PROV-O property)."""
    target: str
    """URN of its object."""


@dataclass(frozen=True, slots=True)
class LineageGraph:
    subject: str
    """URN of what the query named."""
    nodes: tuple[LineageNode, ...]
    """Every node, in the order found."""
    edges: tuple[LineageEdge, ...]
    """Every relation, once each."""
    truncated: bool
    """Whether the query left out older versions or claims (its bound)."""

    def get_node(self, node_id: str) -> LineageNode | None:
        return next((n for n in self.nodes if n.id == node_id), None)

    def get_targets(self, source: str, relation: str) -> list[str]:
        return [e.target for e in self.edges if e.source == source and e.relation == relation]


# --- ids ------------------------------------------------------------------------------------


def dataset_urn(cid: str) -> str:
    return f"urn:blyan:dataset:{cid}"


def claim_urn(claim_hash: bytes) -> str:
    return f"urn:blyan:claim:{claim_hash.hex()}"


def manifest_urn(manifest_hash: bytes) -> str:
    return f"urn:blyan:manifest:{manifest_hash.hex()}"


def block_urn(name: str, head: bytes) -> str:
    return f"urn:blyan:block:{name}@{head.hex()}"


def model_urn(head: bytes) -> str:
    return f"urn:blyan:model:{head.hex()}"


def account_urn(address: bytes) -> str:
    return f"urn:blyan:account:{format_address(address)}"


# --- queries --------------------------------------------------------------------------------


def lineage_of_expert(param_state: State, dataset_state: State, name: str, *,
                      max_versions: int = MAX_VERSIONS) -> LineageGraph:
    """An expert's (or module's) head and the versions before it back to its genesis record or
    last snapshot: the claims that made each, what they used and who trained them. Point lookups
    only: the expert's delta list (at most 4096) and the newest `max_versions` of its claims."""
    b = _Builder(param_state, dataset_state)
    expert = get_expert(b.params, name)
    if expert is None:
        raise UnknownSubject("expert", name)
    deltas = list(expert.deltas)
    kept = deltas[-max_versions:] if max_versions > 0 else []
    truncated = len(kept) < len(deltas)
    if not truncated:
        b.add_root(name, expert)
    for claim_hash in kept:
        rec = get_claim(b.params, claim_hash)
        if rec is not None:
            b.add_claim(claim_hash, rec)
    b.add_version(name, expert.head, version=expert.version, isHead=True)
    return b.build(block_urn(name, expert.head), truncated)


def lineage_of_dataset(param_state: State, dataset_state: State, cid: str, *,
                       max_claims: int = MAX_CLAIMS) -> LineageGraph:
    """A dataset: who submitted it (or genesis), its status and tier, and the claims whose
    manifests used it with what they made, the newest `max_claims` of them.

    Not a point lookup: no index maps a CID to the claims that used it, so this walks the keys of
    the parameter state in memory (as `blyan_listClaims` does) and decodes only the claim records
    whose bytes hold the CID. Keep it off a per-block path; one RPC query is fine."""
    b = _Builder(param_state, dataset_state)
    if b.datasets.get(cid_key(cid)) is None:
        raise UnknownSubject("dataset", cid)
    subject = b.add_dataset(cid)
    needle = cid.encode()
    found = []
    for key, raw in param_state.items():
        if is_claim_key(key) and needle in raw:
            rec = codec.decode(ClaimRecord, raw)
            if cid in rec.manifest.manifest.datasets:
                found.append((rec.reveal_height, key[1:], rec))
    found.sort(key=lambda t: (t[0], t[1]), reverse=True)
    for _, claim_hash, rec in found[:max(0, max_claims)]:
        b.add_claim(claim_hash, rec)
    return b.build(subject, len(found) > max(0, max_claims))


def lineage_of_claim(param_state: State, dataset_state: State, claim_hash: bytes) -> LineageGraph:
    """A claim: its contributor, manifest, datasets, base versions and model, where it stands,
    and the versions it made if applied. Point lookups only."""
    b = _Builder(param_state, dataset_state)
    rec = get_claim(b.params, claim_hash)
    if rec is None:
        raise UnknownSubject("claim", claim_hash.hex())
    b.add_claim(claim_hash, rec)
    return b.build(claim_urn(claim_hash), False)


def lineage_of(param_state: State, dataset_state: State, kind: str, subject: str | bytes) -> LineageGraph:
    """The lineage of `subject` by its kind: an "expert" by name, a "dataset" by CID, a "claim"
    by hash; raises `UnknownSubject` when the chain does not hold it."""
    if kind == "expert" and isinstance(subject, str):
        return lineage_of_expert(param_state, dataset_state, subject)
    if kind == "dataset" and isinstance(subject, str):
        return lineage_of_dataset(param_state, dataset_state, subject)
    if kind == "claim" and isinstance(subject, bytes):
        return lineage_of_claim(param_state, dataset_state, subject)
    raise ValueError(f"no lineage query for a {kind} given as {type(subject).__name__}")


# --- building -------------------------------------------------------------------------------


class _Builder:
    """Nodes and edges found so far: a node added twice keeps the union of its attributes."""

    def __init__(self, param_state: State, dataset_state: State) -> None:
        self.params = Overlay(param_state)
        self.datasets = Overlay(dataset_state)
        self.nodes: dict[str, LineageNode] = {}
        self.edges: dict[LineageEdge, None] = {}

    def add(self, node_id: str, kind: str, type_: str, label: str, /, **attributes: Attribute) -> str:
        old = self.nodes.get(node_id)
        merged = {**old.attributes, **attributes} if old is not None else attributes
        self.nodes[node_id] = LineageNode(node_id, kind, type_, label, merged)
        return node_id

    def link(self, source: str, relation: str, target: str) -> None:
        self.edges[LineageEdge(source, relation, target)] = None

    def build(self, subject: str, truncated: bool) -> LineageGraph:
        nodes = tuple(replace(n, attributes=MappingProxyType(dict(n.attributes))) for n in self.nodes.values())
        return LineageGraph(subject, nodes, tuple(self.edges), truncated)

    def add_genesis(self) -> None:
        self.add(GENESIS_AGENT, AGENT, "GenesisPact", "genesis pact")
        self.add(GENESIS_ACTIVITY, ACTIVITY, "Genesis", "genesis")
        self.link(GENESIS_ACTIVITY, ASSOCIATED_WITH, GENESIS_AGENT)

    def add_agent(self, address: bytes) -> str:
        if address == ZERO_ADDRESS:
            self.add_genesis()
            return GENESIS_AGENT
        text = format_address(address)
        return self.add(account_urn(address), AGENT, "Account", text, address=text)

    def add_dataset(self, cid: str) -> str:
        node = dataset_urn(cid)
        ref = self.datasets.get(cid_key(cid))
        rec = None if ref is None else self.datasets.get_record(dataset_key(ref), DatasetRecord)
        if rec is None:
            return self.add(node, ENTITY, "Dataset", cid, cid=cid, status="unknown")
        genesis = rec.contributor == ZERO_ADDRESS and rec.submitted_height == 0
        attrs: dict[str, Attribute] = {
            "cid": cid, "size": rec.size, "format": rec.format, "license": rec.license, "role": rec.role,
            "status": STATUS_NAMES.get(rec.status, str(rec.status)), "genesis": genesis,
            "submittedHeight": rec.submitted_height, "decidedHeight": rec.decided_height,
        }
        if rec.status == STATUS_APPROVED:
            attrs["tier"] = TIER_NAMES.get(rec.tier, str(rec.tier))
        if not genesis:
            attrs["submission"] = ref.hex()
        self.add(node, ENTITY, "Dataset", cid, **attrs)
        self.link(node, ATTRIBUTED_TO, self.add_agent(rec.contributor))
        if genesis:
            self.link(node, GENERATED_BY, GENESIS_ACTIVITY)
        return node

    def add_version(self, name: str, head: bytes, /, **attributes: Attribute) -> str:
        return self.add(block_urn(name, head), ENTITY, "BlockVersion", f"{name}@{head.hex()[:12]}",
                        name=name, head=head.hex(), **attributes)

    def add_model(self, head: bytes) -> str:
        label = "model@genesis" if head == ZERO_HASH else f"model@{head.hex()[:12]}"
        return self.add(model_urn(head), ENTITY, "ModelVersion", label, head=head.hex())

    def add_origin(self, name: str, head: bytes) -> None:
        """What made version `head` of block `name`, when the chain says: a claim, or genesis (a
        snapshot's base is not in the state)."""
        rec = get_claim(self.params, head)
        if rec is not None:
            self.add(claim_urn(head), ACTIVITY, "DeltaClaim", f"claim {head.hex()[:12]}",
                     status=CLAIM_STATUS_NAMES.get(rec.status, str(rec.status)))
            self.link(block_urn(name, head), GENERATED_BY, claim_urn(head))
            return
        expert = get_expert(self.params, name)
        if expert is not None and head == self.get_root(name, expert):
            self.add_root(name, expert)

    def get_root(self, name: str, expert: ExpertState) -> bytes | None:
        """The version the expert's delta chain starts from: its genesis record or last snapshot."""
        if not expert.deltas:
            return expert.head
        return _base_of(get_claim(self.params, expert.deltas[0]), name)

    def add_root(self, name: str, expert: ExpertState) -> None:
        """The expert's full-weights version (`expert.record`): genesis, or a snapshot whose own
        history the state no longer holds."""
        root = self.get_root(name, expert)
        if root is None:
            return
        r = expert.record
        origin = "genesis" if root == codec.hash_of(r) else "snapshot"
        node = self.add_version(name, root, version=r.version, blockKind=BLOCK_KINDS.get(r.kind, str(r.kind)),
                                merkleRoot=r.merkle_root.hex(), blobId=r.blob_id.hex(), size=r.size, origin=origin,
                                isHead=root == expert.head)
        if origin == "genesis":
            self.add_genesis()
            self.link(node, GENERATED_BY, GENESIS_ACTIVITY)
            self.link(node, ATTRIBUTED_TO, GENESIS_AGENT)

    def get_version_facts(self, name: str, claim_hash: bytes) -> dict[str, Attribute]:
        """SemVer and whether it is the head, of the version an applied claim made of `name`
        (known while the claim is in the expert's delta chain)."""
        expert = get_expert(self.params, name)
        if expert is None or claim_hash not in expert.deltas:
            return {}
        facts: dict[str, Attribute] = {"isHead": expert.head == claim_hash}
        version = _patch_version(expert.record.version, expert.deltas.index(claim_hash) + 1)
        if version is not None:
            facts["version"] = version
        return facts

    def add_claim(self, claim_hash: bytes, rec: ClaimRecord) -> str:
        """The claim's activity, its manifest, contributor, datasets, bases and model used, and
        (once applied) the versions it generated."""
        c, man = rec.claim, rec.manifest.manifest
        node = self.add(claim_urn(claim_hash), ACTIVITY, "DeltaClaim", f"claim {claim_hash.hex()[:12]}",
                        **_claim_attributes(claim_hash, rec))
        contributor = self.add_agent(c.contributor)
        self.link(node, ASSOCIATED_WITH, contributor)
        manifest = self.add(manifest_urn(c.manifest_hash), ENTITY, "TrainingManifest",
                            f"manifest {c.manifest_hash.hex()[:12]}", manifestHash=c.manifest_hash.hex(),
                            round=man.round_id, steps=man.hyper.steps, seed=man.hyper.seed,
                            batchChain=man.batch_chain.hex(), device=man.env.device)
        self.link(manifest, ATTRIBUTED_TO, contributor)
        self.link(node, USED, manifest)
        for cid in man.datasets:
            self.link(node, USED, self.add_dataset(cid))
        base_model = self.add_model(rec.model_head)
        self.link(node, USED, base_model)
        for change in c.blocks:
            base = self.add_version(change.name, change.base)
            self.add_origin(change.name, change.base)
            self.link(node, USED, base)
            if rec.status != CLAIM_ACCEPTED:
                continue
            made = self.add_version(change.name, claim_hash, resultRoot=change.result_root.hex(),
                                    appliedHeight=rec.applied_height,
                                    **self.get_version_facts(change.name, claim_hash))
            self.link(made, GENERATED_BY, node)
            self.link(made, DERIVED_FROM, base)
            self.link(made, ATTRIBUTED_TO, contributor)
        if rec.status == CLAIM_ACCEPTED:
            model = self.add_model(claim_hash)
            self.link(model, GENERATED_BY, node)
            self.link(model, DERIVED_FROM, base_model)
        return node


def _claim_attributes(claim_hash: bytes, rec: ClaimRecord) -> dict[str, Attribute]:
    c = rec.claim
    attrs: dict[str, Attribute] = {
        "claimHash": claim_hash.hex(), "status": CLAIM_STATUS_NAMES.get(rec.status, str(rec.status)),
        "round": c.round_id, "contributor": format_address(c.contributor), "deltaBlob": c.delta_blob.hex(),
        "deltaSize": c.delta_size, "rawSize": c.raw_size, "compression": c.compression, "ratioPpm": c.ratio_ppm,
        "modelHead": rec.model_head.hex(), "commitHeight": rec.commit_height, "revealHeight": rec.reveal_height,
        "decidedHeight": rec.decided_height, "appliedHeight": rec.applied_height, "voters": len(rec.voters),
    }
    if rec.base_loss_ppm:
        attrs.update(baseLoss=rec.base_loss_ppm / PPM, newLoss=rec.new_loss_ppm / PPM,
                     gain=compute_gain_ppm(rec.base_loss_ppm, rec.new_loss_ppm) / PPM)
    if rec.reason:
        attrs["reason"] = rec.reason
    return attrs


def _base_of(rec: ClaimRecord | None, name: str) -> bytes | None:
    if rec is None:
        return None
    return next((ch.base for ch in rec.claim.blocks if ch.name == name), None)


def _patch_version(version: str, bumps: int) -> str | None:
    """SemVer `version` after `bumps` deltas (each bumps the patch); None if not SemVer."""
    try:
        major, minor, patch = (int(x) for x in version.split("."))
    except ValueError:
        return None
    return f"{major}.{minor}.{patch + bumps}"


# --- encodings ------------------------------------------------------------------------------


def to_json(graph: LineageGraph) -> dict[str, Any]:
    """The graph as plain JSON (what `blyan lineage` prints as a tree)."""
    return {
        "subject": graph.subject, "truncated": graph.truncated,
        "nodes": [{"id": n.id, "kind": n.kind, "type": n.type, "label": n.label, "attributes": dict(n.attributes)}
                  for n in graph.nodes],
        "edges": [{"source": e.source, "relation": e.relation, "target": e.target} for e in graph.edges],
    }


def compute_context(graph: LineageGraph) -> dict[str, Any]:
    """The inline JSON-LD context: PROV-O relations as IRI-valued terms, every attribute a term
    of the blyan vocabulary."""
    context: dict[str, Any] = {"prov": PROV, "blyan": BLYAN, "rdfs": RDFS, "label": "rdfs:label"}
    for relation in RELATIONS:
        context[relation] = {"@id": f"prov:{relation}", "@type": "@id"}
    for name in sorted({a for n in graph.nodes for a in n.attributes}):
        context[name] = f"blyan:{name}"
    return context


def to_jsonld(graph: LineageGraph) -> dict[str, Any]:
    """The graph as JSON-LD with W3C PROV-O terms; the `@context` is inline (no remote fetch)."""
    out: dict[str, dict[str, Any]] = {}
    for n in graph.nodes:
        out[n.id] = {"@id": n.id, "@type": [PROV_CLASSES[n.kind], f"blyan:{n.type}"], "label": n.label,
                     **n.attributes}
    for e in graph.edges:
        out[e.source].setdefault(e.relation, []).append(e.target)
    return {"@context": compute_context(graph), "@graph": list(out.values())}
