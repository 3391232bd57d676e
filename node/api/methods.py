"""The JSON-RPC methods of a node, by name, and the OpenRPC document that describes them."""

from __future__ import annotations

from typing import Any

from chain.types import CHAIN_IDS, CHAIN_NAMES
from node.api.attest_methods import get_attestation
from node.api.chain_methods import (
    get_account_info,
    get_block,
    get_consensus_state,
    get_peers,
    get_status,
    get_transaction,
    send_transaction,
)
from node.api.data_methods import get_dataset, get_dataset_job, list_datasets, submit_dataset, upload_dataset
from node.api.expert_methods import MAX_GENERATE_TOKENS, MAX_PROMPT_CHARS, generate, get_experts
from node.api.learning_methods import get_ledger_view
from node.api.lineage_methods import get_lineage
from node.api.params import Method, Param
from node.api.pol_methods import get_claim, get_pol_votes, get_round, list_claims, submit_delta
from node.api.services import Services
from node.api.snapshot_methods import get_snapshots, request_snapshot

OPENRPC_VERSION = "1.2.6"
API_VERSION = "0.1.0"

HEX = {"type": "string", "pattern": "^[0-9a-fA-F]*$"}
HASH_HEX = {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}
CHAIN = {"oneOf": [{"type": "string", "enum": list(CHAIN_NAMES.values())},
                   {"type": "integer", "enum": list(CHAIN_IDS)}]}
ADDRESS = {"type": "string", "pattern": "^bly1[0-9a-f]{40}$"}


def discover(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    return openrpc_document()


_CHAIN_HEAD = {"type": "object", "properties": {"id": {"type": "integer"}, "height": {"type": "integer"},
                                               "head": HASH_HEX}}
_NONCES = {"type": "object", "properties": {"nonce": {"type": "integer"}, "next_nonce": {"type": "integer"}}}

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("blyan_status", "Network, identity, peers and the head of each chain.", (), {
        "type": "object", "properties": {
            "network": {"type": "string"}, "genesis_hash": HASH_HEX, "node_id": {"type": "string"},
            "address": {"oneOf": [ADDRESS, {"type": "null"}]}, "peers": {"type": "integer"},
            "chains": {"type": "object", "additionalProperties": _CHAIN_HEAD},
            "syncing": {"type": "boolean"},
            "sync": {"type": "object", "description": "Per chain: our height and the highest a peer reported."},
            "is_validator": {"type": "boolean"}}}, get_status),
    Method("blyan_consensusState", "Per chain, where consensus stands: height, round, step, proposer, the "
           "proposal seen, and the stake behind each prevote and precommit target of the current round.", (), {
        "type": "object", "additionalProperties": {"type": "object", "properties": {
            "started": {"type": "boolean"}, "height": {"type": "integer"}, "round": {"type": "integer"},
            "step": {"type": "string"}, "proposer": ADDRESS, "proposal": {"oneOf": [HASH_HEX, {"type": "null"}]},
            "total_power": {"type": "integer"}, "votes": {"type": "object"}}}}, get_consensus_state),
    Method("blyan_getBlock", "A block by height or hash: its header (bytes in hex) and transaction hashes.", (
        Param("chain", CHAIN, "Chain name or id."),
        Param("block", {"oneOf": [{"type": "integer", "minimum": 0}, HASH_HEX]}, "Height, or block hash in hex."),
    ), {"oneOf": [{"type": "null"}, {"type": "object", "properties": {
        "chain": {"type": "string"}, "hash": HASH_HEX, "header": {"type": "object"},
        "txs": {"type": "array", "items": HASH_HEX}, "has_last_commit": {"type": "boolean"}}}]}, get_block),
    Method("blyan_sendTransaction", "Submit a signed transaction (hex of its canonical encoding) to the mempool. "
           "One that cannot be final from the node's state is refused with an error naming why (-32020 invalid "
           "or bad signature, -32021 nonce too low, -32022 nonce gap, -32023 nonce taken, -32024 fails against "
           "state such as insufficient balance or stake, -32025 mempool full); the error's data holds outcome, "
           "reason and tx_hash.", (
        Param("tx", HEX, "Hex of codec.encode(Transaction)."),
    ), {"type": "object", "properties": {
        "accepted": {"type": "boolean"}, "outcome": {"type": "string", "enum": ["added", "duplicate"]},
        "reason": {"type": "string"}, "tx_hash": HASH_HEX}}, send_transaction),
    Method("blyan_getTransaction", "Where a transaction is, by hash, on any chain: final (chain, height, index), "
           "pending (chain) or unknown.", (
        Param("hash", HASH_HEX, "Transaction hash in hex."),
        Param("chain", CHAIN, "Chain name or id: search only it (the older positional order [chain, hash] "
              "is accepted too).", required=False),
    ), {"type": "object", "properties": {
        "status": {"type": "string", "enum": ["final", "pending", "unknown"]}, "chain": {"type": "string"},
        "height": {"type": "integer"}, "index": {"type": "integer"}}}, get_transaction),
    Method("blyan_getAccount", "Balance, stake, unbonding and the nonce on each chain of an address.", (
        Param("address", ADDRESS, "Account address (bly1...)."),
    ), {"type": "object", "properties": {
        "address": ADDRESS, "balance": {"type": "integer"}, "stake": {"type": "integer"},
        "unbonding": {"type": "integer"},
        "nonces": {"type": "object", "additionalProperties": _NONCES}}}, get_account_info),
    Method("blyan_peers", "Connected peers.", (), {
        "type": "array", "items": {"type": "object", "properties": {"id": {"type": "string"}}}}, get_peers),
    Method("blyan_generate", "Generate text with the network's model: experts run on the nodes serving them.", (
        Param("prompt", {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS}, "Prompt text."),
        Param("max_tokens", {"type": "integer", "minimum": 1, "maximum": MAX_GENERATE_TOKENS},
              "New tokens to generate (default 16).", required=False),
        Param("temperature", {"type": "number", "minimum": 0}, "0 (default) is greedy.", required=False),
        Param("seed", {"type": "integer", "minimum": 0}, "Sampling seed (default 0).", required=False),
        Param("cache", {"type": "boolean"}, "Keep a KV cache: after the prompt, one row per token goes "
              "to the experts (default true).", required=False),
        Param("plan", {"type": "string", "enum": ["auto", "dynamic", "static_delegate", "pipeline"]},
              "Plan type (default auto: the fastest the network supports); one it cannot run is refused.",
              required=False),
    ), {"type": "object", "properties": {
        "prompt_tokens": {"type": "array", "items": {"type": "integer"}},
        "tokens": {"type": "array", "items": {"type": "integer"}}, "text": {"type": "string"},
        "latency_ms": {"type": "array", "items": {"type": "number"}, "description": "Per new token."},
        "layers": {"type": "array", "description": "Per token, per layer: expert -> node that computed it."},
        "plan": {"type": "object", "description": "The plan run: type, signature, nodes, stages (layer ranges)."},
        "fallbacks": {"type": "array", "items": {"type": "string"}, "description": "Plans that failed, why."},
        "round_trips": {"type": "integer", "description": "Requests this node sent."},
        "remote_round_trips": {"type": "integer", "description": "Expert requests stages or the delegate sent."},
        "failovers": {"type": "integer"},
        "spot_checks": {"type": "integer"}, "faults": {"type": "array", "items": {"type": "string"}},
        "cache": {"type": "boolean", "description": "Whether the KV cache was used."},
        "positions": {"type": "array", "items": {"type": "integer"}, "description": "Per token, positions run."},
        "rows_sent": {"type": "array", "items": {"type": "integer"},
                      "description": "Per token, expert input rows sent to other nodes."},
        "bytes_sent": {"type": "array", "items": {"type": "integer"},
                       "description": "Per token, bytes of expert requests sent to other nodes."}}},
        generate, target="experts"),
    Method("blyan_experts", "Experts this node serves and the registry of serving peers.", (), {
        "type": "object", "properties": {
            "node": {"type": "string"}, "tier": {"type": "integer"}, "load": {"type": "integer"},
            "serving": {"type": "array"}, "registry": {"type": "array"}}}, get_experts, target="experts"),
    Method("blyan_getLedgerView", "What learning reads of the chains: every block's head, weights root and "
           "record, datasets with status, tier and role, the validation set, accepted manifests.", (), {
        "type": "object", "properties": {
            "blocks": {"type": "object"}, "datasets": {"type": "array"},
            "validation": {"type": "array", "items": {"type": "string"}},
            "accepted_manifests": {"type": "array", "items": HASH_HEX}}}, get_ledger_view),
    Method("blyan_getAttestation", "An accepted claim's attestation: metrics, contributor, training, the PoL "
           "certificate, the validator set and the commit of the block that certified it, with the canonical bytes "
           "that check offline (`blyan attest verify`); -32030 when the claim is not accepted or not held.", (
        Param("claim", HASH_HEX, "Claim hash in hex."),
    ), {"type": "object", "properties": {"schema": {"type": "string"}, "canonical": {"type": "object"}}},
        get_attestation),
    Method("blyan_submitDelta", "Submit a training bundle (a directory on this node's machine, signed by this "
           "node's key): its blobs are kept and served, its claim is committed, then revealed once the commitment "
           "is final; -32031 with the reason when it cannot be submitted.", (
        Param("bundle", {"type": "string"}, "Path of the bundle directory."),
    ), {"type": "object", "properties": {"claim": HASH_HEX, "status": {"type": "string"}}}, submit_delta,
        target="submissions"),
    Method("blyan_getClaim", "A delta claim: committed or revealing (this node's own), voting, certified, "
           "accepted, rejected or expired with the reason, its heights, losses and voters.", (
        Param("claim", HASH_HEX, "Claim hash in hex."),
    ), {"oneOf": [{"type": "null"}, {"type": "object"}]}, get_claim),
    Method("blyan_listClaims", "Revealed claims, newest first, and this node's submissions not revealed yet.", (),
           {"type": "array", "items": {"type": "object"}}, list_claims),
    Method("blyan_getPolVotes", "The PoL votes on a claim: those in the certificate or rejection that decided it, "
           "else the vote pool's, each with its verdict and signature.", (
        Param("claim", HASH_HEX, "Claim hash in hex."),
    ), {"type": "object", "properties": {"votes": {"type": "array"}}}, get_pol_votes),
    Method("blyan_getRound", "The current learning round: height, round, when it closes, its certified claims, "
           "and this node's PoL service.", (), {"type": "object"}, get_round),
    Method("blyan_requestSnapshot", "Ask this node's snapshot service to sign the snapshot of a block (its delta "
           "chain compacted into one blob) once its head is materialised here, whatever its count of deltas; "
           "the snapshot is committed when validators of > 2/3 of the power have signed it.", (
        Param("block", {"type": "string"}, "Block name, e.g. layer0.expert1."),
    ), {"type": "object", "properties": {"block": {"type": "string"}, "requested": {"type": "boolean"}}},
        request_snapshot, target="snapshots"),
    Method("blyan_getSnapshots", "This node's snapshot service: own signatures on current heads, claims in its "
           "pool, snapshot_every.", (), {"type": "object"}, get_snapshots, target="snapshots"),
    Method("blyan_uploadDataset", "Send a chunk of a dataset file to this node (base64, at most 512 KiB of "
           "content a call, at the offset received so far); without `upload` a new upload begins. -32040 with "
           "the reason when refused (a wrong offset, over the network's largest dataset).", (
        Param("upload", {"oneOf": [{"type": "null"}, {"type": "string"}]}, "Upload id (null: begin one).", False),
        Param("offset", {"type": "integer", "minimum": 0}, "Bytes of the upload received so far.", False),
        Param("data", {"type": "string"}, "The chunk, base64."),
    ), {"type": "object", "properties": {"upload": {"type": "string"}, "received": {"type": "integer"}}},
        upload_dataset, target="data"),
    Method("blyan_submitDataset", "Submit an uploaded dataset, signed by this node's key: the node computes its "
           "CID, runs the L0 audit against the datasets the chain holds, does the proof of work on the current "
           "block and sends the submission; returns a job to follow with blyan_getDatasetJob. -32040 with the "
           "reason when it can never succeed (no key, unknown format, no license).", (
        Param("upload", {"type": "string"}, "Upload id."),
        Param("format", {"type": "string"}, "text, markdown, jsonl, csv or text/x-python."),
        Param("license", {"type": "string"}, "SPDX identifier."),
    ), {"type": "object", "properties": {"job": {"type": "string"}, "stage": {"type": "string"}}},
        submit_dataset, target="data"),
    Method("blyan_getDatasetJob", "A dataset submission in progress: its stage (queued, audit, work, submit, "
           "submitted, refused), the fraction done, the L0 report, the submission hash or the reason.", (
        Param("job", {"type": "string"}, "Job id (the upload id)."),
    ), {"oneOf": [{"type": "null"}, {"type": "object"}]}, get_dataset_job, target="data"),
    Method("blyan_getDataset", "A dataset by CID: lifecycle state, tier, the submitted L0 report, audit verdicts "
           "and tier votes, and what this validator computed of it.", (
        Param("cid", {"type": "string"}, "Dataset CID."),
    ), {"oneOf": [{"type": "null"}, {"type": "object"}]}, get_dataset),
    Method("blyan_listDatasets", "The datasets of the dataset chain, newest first (genesis ones last), at most "
           "`limit`.", (
        Param("status", {"type": "string"}, "pending, audited, voted, approved or rejected.", False),
        Param("limit", {"type": "integer", "minimum": 1, "maximum": 256}, "At most this many (default 256).", False),
    ), {"type": "array", "items": {"type": "object"}}, list_datasets),
    Method("blyan_getLineage", "Provenance of an expert's head, a dataset or a claim: datasets -> training "
           "manifest -> delta claim -> block versions, with contributors; a plain graph, or JSON-LD with W3C PROV-O "
           "terms and an inline @context (jsonld). Give exactly one of expert, dataset, claim; -32050 when the "
           "chain does not hold it.", (
        Param("expert", {"type": "string"}, "Block name, e.g. layer0.expert1.", False),
        Param("dataset", {"type": "string"}, "Dataset CID.", False),
        Param("claim", HASH_HEX, "Claim hash in hex.", False),
        Param("jsonld", {"type": "boolean"}, "JSON-LD (PROV-O) instead of the plain graph (default false).", False),
    ), {"type": "object", "properties": {"subject": {"type": "string"}, "nodes": {"type": "array"},
                                         "edges": {"type": "array"}, "@context": {"type": "object"},
                                         "@graph": {"type": "array"}}}, get_lineage),
    Method("rpc.discover", "This OpenRPC document.", (), {"type": "object"}, discover),
)}


def openrpc_document() -> dict[str, Any]:
    return {
        "openrpc": OPENRPC_VERSION,
        "info": {"title": "Blyan node JSON-RPC", "version": API_VERSION},
        "methods": [{
            "name": m.name,
            "summary": m.summary,
            "paramStructure": "either",
            "params": [{"name": p.name, "description": p.description, "required": p.required, "schema": p.schema}
                       for p in m.params],
            "result": {"name": "result", "schema": m.result},
        } for m in METHODS.values()],
    }
