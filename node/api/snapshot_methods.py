"""JSON-RPC methods of snapshot compaction: ask for a block's snapshot, see where they stand."""

from __future__ import annotations

from typing import Any

from chain.heads import get_expert
from chain.state import Overlay
from chain.types import CHAIN_PARAMETER
from node.api.params import bad_params
from node.api.services import Services


def request_snapshot(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    name = args["block"]
    if not isinstance(name, str) or not name:
        raise bad_params("block must be a block name")
    state = get_expert(Overlay(services.node.store.state(CHAIN_PARAMETER)), name)
    if state is None:
        raise bad_params(f"no block {name!r} on the parameter chain")
    if not state.deltas:
        return {"block": name, "head": state.head.hex(), "requested": False, "reason": "no deltas to compact"}
    services.snapshots.request(name)
    return {"block": name, "head": state.head.hex(), "deltas": len(state.deltas), "requested": True,
            "validator": services.snapshots.describe()["validator"]}


def get_snapshots(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    return services.snapshots.describe()
