"""JSON-RPC methods of data quality: upload and submit a dataset, follow its lifecycle, list the
chain's datasets."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from chain import codec
from chain.crypto import format_address
from chain.errors import BlyanError
from chain.params import TIER_NAMES
from chain.payloads import SubmitDataset
from chain.records import STATUS_NAMES, DatasetRecord, cid_key, dataset_key, is_dataset_key
from chain.state import Overlay
from chain.types import CHAIN_DATASET
from node.api.client import RPCError
from node.api.params import bad_params
from node.api.services import Services
from node.core.jsonable import to_json

DATASET_REFUSED = -32040
"""A dataset this node will not submit (the message says why)."""
NO_DATA_SERVICE = -32041
"""This node runs no data service."""
MAX_CHUNK_BYTES = 512 * 1024
"""Largest chunk one `blyan_uploadDataset` call carries (before base64)."""
MAX_LISTED = 256


def _data(services: Services) -> Any:
    if services.data is None:
        raise RPCError(NO_DATA_SERVICE, "this node runs no data service")
    return services.data


def upload_dataset(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    subs = _data(services).submissions
    upload, offset, chunk = args.get("upload"), args.get("offset", 0), args.get("data", "")
    if not isinstance(chunk, str):
        raise bad_params("data must be base64 text")
    try:
        raw = base64.b64decode(chunk, validate=True)
    except (binascii.Error, ValueError) as err:
        raise bad_params(f"data is not base64: {err}") from err
    if len(raw) > MAX_CHUNK_BYTES:
        raise bad_params(f"a chunk holds at most {MAX_CHUNK_BYTES} bytes, this one {len(raw)}")
    if type(offset) is not int or offset < 0:
        raise bad_params("offset must be a non-negative integer")
    try:
        if upload is None:
            upload = subs.begin_upload()
        elif not isinstance(upload, str):
            raise bad_params("upload must be the id an earlier call returned")
        received = subs.append(upload, offset, raw)
    except BlyanError as err:
        raise RPCError(DATASET_REFUSED, str(err)) from err
    return {"upload": upload, "received": received, "max_bytes": subs.max_bytes}


def submit_dataset(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    subs = _data(services).submissions
    upload, fmt, license_ = args["upload"], args["format"], args["license"]
    if not all(isinstance(v, str) for v in (upload, fmt, license_)):
        raise bad_params("upload, format and license must be strings")
    try:
        job = subs.start(upload, fmt, license_)
    except BlyanError as err:
        raise RPCError(DATASET_REFUSED, f"dataset refused: {err}") from err
    return job.to_json()


def get_dataset_job(services: Services, args: dict[str, Any]) -> dict[str, Any] | None:
    job = _data(services).submissions.jobs.get(args["job"]) if isinstance(args["job"], str) else None
    return None if job is None else job.to_json()


def get_dataset(services: Services, args: dict[str, Any]) -> dict[str, Any] | None:
    """A dataset by CID: its record (lifecycle, tier, votes), the submitted L0 report, and what
    this validator computed of it."""
    cid = args["cid"]
    if not isinstance(cid, str) or not cid:
        raise bad_params("cid must be a CID")
    node = services.node
    state = node.store.state(CHAIN_DATASET)
    submission = state.get(cid_key(cid))
    if submission is None:
        return None
    rec = Overlay(state).get_record(dataset_key(submission), DatasetRecord)
    if rec is None:
        return None
    out = describe_dataset(submission, rec, services)
    report = _submitted_report(services, submission)
    if report is not None:
        out["report"] = to_json(report)
    if services.data is not None:
        mine = services.data.service.describe(submission)
        if mine is not None:
            out["this_validator"] = mine
        out["held_here"] = services.data.store.has(cid)
    return out


def list_datasets(services: Services, args: dict[str, Any]) -> list[dict[str, Any]]:
    """The dataset chain's datasets, newest first, at most `limit` (genesis ones last)."""
    status = args.get("status")
    if status is not None and status not in STATUS_NAMES.values():
        raise bad_params(f"status is one of {', '.join(STATUS_NAMES.values())}")
    limit = args.get("limit", MAX_LISTED)
    if type(limit) is not int or not 1 <= limit <= MAX_LISTED:
        raise bad_params(f"limit must be an integer in [1, {MAX_LISTED}]")
    state = services.node.store.state(CHAIN_DATASET)
    found = []
    for key, raw in state.items():
        if is_dataset_key(key):
            rec = codec.decode(DatasetRecord, raw)
            if status is None or STATUS_NAMES.get(rec.status) == status:
                found.append((rec.submitted_height, rec.cid, key[1:], rec))
    found.sort(key=lambda f: (-f[0], f[1]))
    return [describe_dataset(sub, rec, services, brief=True) for _, _, sub, rec in found[:limit]]


def describe_dataset(submission: bytes, rec: DatasetRecord, services: Services, brief: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "cid": rec.cid, "submission": submission.hex(), "status": STATUS_NAMES.get(rec.status, str(rec.status)),
        "tier": TIER_NAMES.get(rec.tier, str(rec.tier)), "size": rec.size, "format": rec.format,
        "license": rec.license, "role": rec.role, "submitted_height": rec.submitted_height,
        "decided_height": rec.decided_height,
        "contributor": None if rec.submitted_height == 0 else format_address(rec.contributor),
    }
    if brief:
        return out
    out["report_hash"] = rec.report_hash.hex() if rec.submitted_height else None
    out["anchor_height"] = rec.anchor_height
    out["audits"] = [{"validator": format_address(v), "passed": ok}
                     for v, ok in zip(rec.audit_voters, rec.audit_passed, strict=True)]
    out["tier_votes"] = [{"validator": format_address(v), "tier": TIER_NAMES.get(t, str(t))}
                         for v, t in zip(rec.tier_voters, rec.tier_votes, strict=True)]
    return out


def _submitted_report(services: Services, submission: bytes) -> Any:
    store = services.node.store
    location = store.get_tx_location(CHAIN_DATASET, submission)
    if location is None:
        return None
    block = store.get_block(CHAIN_DATASET, location.height)
    if block is None or location.index >= len(block.txs):
        return None
    payload = block.txs[location.index].body.payload
    return payload.audit if isinstance(payload, SubmitDataset) else None
