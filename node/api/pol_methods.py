"""JSON-RPC methods of learning rounds: submit a delta, follow claims, votes and rounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chain import codec
from chain.crypto import format_address
from chain.errors import BlyanError
from chain.payloads import CertifyDelta, RejectDelta, SignedPolVote
from chain.records import CLAIM_STATUS_NAMES, CLAIM_VOTING, ClaimRecord, RoundRecord, claim_key, is_claim_key, round_key
from chain.rounds import compute_round_of, get_model_head
from chain.state import Overlay
from chain.types import CHAIN_PARAMETER
from node.api.client import RPCError
from node.api.params import bad_params, parse_hex
from node.api.services import Services

SUBMISSION_REFUSED = -32031
"""A delta bundle this node cannot submit (the message says why)."""
MAX_LISTED = 256


def submit_delta(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    bundle = args["bundle"]
    if not isinstance(bundle, str) or not bundle:
        raise bad_params("bundle must be a path")
    try:
        sub = services.submissions.submit(Path(bundle))
    except BlyanError as err:
        raise RPCError(SUBMISSION_REFUSED, f"submission refused: {err}") from err
    return sub.to_json()


def get_claim(services: Services, args: dict[str, Any]) -> dict[str, Any] | None:
    claim_hash = parse_hex("claim", args["claim"], 32)
    state = services.node.store.state(CHAIN_PARAMETER)
    rec = Overlay(state).get_record(claim_key(claim_hash), ClaimRecord)
    local = _local_submission(services, claim_hash)
    if rec is None:
        return local
    out = describe_claim(claim_hash, rec, services.node.store.pact.params.pol)
    if local is not None:
        out["submission"] = local
    pol = services.pol
    if pol is not None and rec.status == CLAIM_VOTING:  # where the pool stands
        t = pol.pool.tally(claim_hash, services.node.validators())
        out["pool"] = {"accepting_power": t.accepting, "rejecting_power": t.rejecting, "total_power": t.total,
                       "votes": t.voters}
    return out


def list_claims(services: Services, args: dict[str, Any]) -> list[dict[str, Any]]:
    state = services.node.store.state(CHAIN_PARAMETER)
    params = services.node.store.pact.params.pol
    out = []
    view = Overlay(state)
    for key, _ in state.items():
        if is_claim_key(key):
            rec = view.get_record(key, ClaimRecord)
            out.append(describe_claim(key[1:], rec, params, brief=True))
    out.sort(key=lambda c: (c["reveal_height"], c["claim"]), reverse=True)
    seen = {c["claim"] for c in out}
    subs = services.submissions
    if subs is not None:
        for sub in subs.submissions.values():
            if sub.claim_hash.hex() not in seen:
                out.insert(0, {**sub.to_json(), "status": sub.status})
    return out[:MAX_LISTED]


def get_pol_votes(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    """The votes on a claim: those that decided it (from the block that did), else the pool's."""
    claim_hash = parse_hex("claim", args["claim"], 32)
    store = services.node.store
    rec = Overlay(store.state(CHAIN_PARAMETER)).get_record(claim_key(claim_hash), ClaimRecord)
    if rec is None:
        raise bad_params(f"no revealed claim {claim_hash.hex()[:16]} on this node's chain")
    votes: list[SignedPolVote] = []
    source = "pool"
    if rec.decided_height:
        block = store.get_block(CHAIN_PARAMETER, rec.decided_height)
        for tx in block.txs if block is not None else ():
            p = tx.body.payload
            if isinstance(p, CertifyDelta) and p.claim_hash == claim_hash:
                votes, source = list(p.certificate.votes), f"certificate at height {rec.decided_height}"
            elif isinstance(p, RejectDelta) and p.claim_hash == claim_hash:
                votes, source = list(p.votes.votes), f"rejection at height {rec.decided_height}"
    if not votes and services.pol is not None:
        votes = services.pol.pool.votes_of(claim_hash)
    validators = services.node.validators()
    return {"claim": claim_hash.hex(), "status": CLAIM_STATUS_NAMES.get(rec.status, str(rec.status)),
            "source": source, "votes": [describe_vote(sv, validators) for sv in votes]}


def get_round(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    store = services.node.store
    state = store.state(CHAIN_PARAMETER)
    params = store.pact.params.pol
    height = state.height
    round_id = compute_round_of(height + 1, params)
    certified = Overlay(state).get_record(round_key(round_id), RoundRecord)
    out = {"height": height, "round": round_id, "round_length": params.round_length,
           "model_head": get_model_head(Overlay(state)).hex(),
           "closes_at": round_id * params.round_length - 1, "reveal_window": params.reveal_window,
           "vote_window": params.vote_window,
           "certified": [h.hex() for h in certified.certified] if certified else []}
    if services.pol is not None:
        out["pol"] = services.pol.describe()
    return out


def describe_claim(claim_hash: bytes, rec: ClaimRecord, params: Any, brief: bool = False) -> dict[str, Any]:
    c = rec.claim
    out: dict[str, Any] = {
        "claim": claim_hash.hex(), "status": CLAIM_STATUS_NAMES.get(rec.status, str(rec.status)),
        "contributor": format_address(c.contributor), "round": c.round_id,
        "blocks": [{"name": b.name, "base": b.base.hex(), "result_root": b.result_root.hex()} for b in c.blocks],
        "commit_height": rec.commit_height, "reveal_height": rec.reveal_height,
        "decided_height": rec.decided_height, "applied_height": rec.applied_height,
        "base_loss": rec.base_loss_ppm / 1e6 if rec.base_loss_ppm else None,
        "new_loss": rec.new_loss_ppm / 1e6 if rec.new_loss_ppm else None,
        "reason": rec.reason, "voters": [format_address(v) for v in rec.voters],
        "model_head": rec.model_head.hex(),
    }
    if not brief:
        out.update({"manifest_hash": c.manifest_hash.hex(), "delta_blob": c.delta_blob.hex(),
                    "delta_size": c.delta_size, "raw_size": c.raw_size, "compression": c.compression,
                    "provider": rec.provider,
                    "vote_deadline": rec.reveal_height + params.vote_window if rec.status == CLAIM_VOTING else None})
    return out


def describe_vote(sv: SignedPolVote, validators: Any) -> dict[str, Any]:
    v = sv.vote.verdict
    member = validators.get(sv.vote.validator)
    return {"validator": format_address(sv.vote.validator), "power": member.power if member else 0,
            "accepted": v.accepted, "reason": v.reason, "base_loss": v.base_loss / 1e6, "new_loss": v.new_loss / 1e6,
            "segments": [{"index": s.index, "exact": s.exact, "l2_ppm": s.l2_ppm, "cosine_ppm": s.cosine_ppm}
                         for s in v.segments],
            "compression_error_ppm": v.compression_error_ppm, "signature": sv.signature.hex(),
            "vote_hash": codec.hash_of(sv.vote).hex()}


def _local_submission(services: Services, claim_hash: bytes) -> dict[str, Any] | None:
    subs = services.submissions
    sub = subs.submissions.get(claim_hash) if subs is not None else None
    return sub.to_json() if sub is not None else None
