"""JSON-RPC method `blyan_getAttestation`: an accepted claim's self-contained attestation file
(`chain.attest`), built from the node's chains."""

from __future__ import annotations

from typing import Any

from chain.attest import AttestationError, ClaimNotAccepted, build_attestation
from node.api.client import RPCError
from node.api.params import parse_hex
from node.api.services import Services

NO_ATTESTATION = -32030
"""The claim is unknown, not accepted, or its certifying block, commit or validator set is not held here."""


def get_attestation(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    claim_hash = parse_hex("claim", args["claim"], 32)
    node = services.node
    try:
        return build_attestation(node.store, claim_hash, node.get_validator_set)
    except ClaimNotAccepted as err:
        raise RPCError(NO_ATTESTATION, str(err), {"claim": claim_hash.hex(), "status": err.status}) from err
    except AttestationError as err:
        raise RPCError(NO_ATTESTATION, str(err), {"claim": claim_hash.hex()}) from err
