"""JSON-RPC method `blyan_getLineage`: the provenance of an expert, a dataset or a claim
(`chain.lineage`), as a plain graph or as JSON-LD with W3C PROV-O terms.

An expert or a claim is a few point lookups of the store's state; a dataset walks the parameter
state's keys for its claim records once (as `blyan_listClaims` does), keeping
`chain.lineage.MAX_CLAIMS` of them.
"""

from __future__ import annotations

from typing import Any

from chain.lineage import UnknownSubject, lineage_of, to_json, to_jsonld
from chain.types import CHAIN_DATASET, CHAIN_PARAMETER
from node.api.client import RPCError
from node.api.params import bad_params, parse_hex
from node.api.services import Services

NO_LINEAGE = -32050
"""The expert, dataset or claim named is not on this node's chains."""
SUBJECTS = ("expert", "dataset", "claim")
MAX_NAME = 128


def get_lineage(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    kind, value = _parse_subject(args)
    jsonld = args.get("jsonld", False)
    if not isinstance(jsonld, bool):
        raise bad_params("jsonld must be true or false")
    store = services.node.store
    param_state, dataset_state = store.state(CHAIN_PARAMETER), store.state(CHAIN_DATASET)
    try:
        graph = lineage_of(param_state, dataset_state, kind, value)
    except UnknownSubject as err:
        raise RPCError(NO_LINEAGE, str(err), {"kind": err.kind, "subject": err.subject}) from err
    return to_jsonld(graph) if jsonld else to_json(graph)


def _parse_subject(args: dict[str, Any]) -> tuple[str, str | bytes]:
    given = [k for k in SUBJECTS if args.get(k) is not None]
    if len(given) != 1:
        raise bad_params("give exactly one of expert, dataset or claim")
    kind = given[0]
    value = args[kind]
    if kind == "claim":
        return kind, parse_hex("claim", value, 32)
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise bad_params(f"{kind} must be a non-empty string of at most {MAX_NAME} characters")
    return kind, value

