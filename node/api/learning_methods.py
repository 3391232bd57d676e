"""JSON-RPC methods for contributors and validators: what learning reads of the chains."""

from __future__ import annotations

from typing import Any

from chain.ledger import read_ledger_view
from chain.types import CHAIN_DATASET, CHAIN_PARAMETER
from node.api.services import Services


def get_ledger_view(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    """Heads and records of every block, datasets and their approval, the validation set and the
    accepted manifests (`chain.ledger.LedgerView.to_json`), read from the chains' current states."""
    store = services.node.store
    return read_ledger_view(store.state(CHAIN_PARAMETER), store.state(CHAIN_DATASET)).to_json()
