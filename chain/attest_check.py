"""Checking an attestation file offline (`chain.attest` builds it): `verify_attestation(doc)`.

The checks, in order: the canonical parts decode; the manifest is signed by its contributor and
is the one the claim names; the certifying block's transaction holds exactly the file's votes
for this claim and sits in the header's transaction root; the validator set is the one the
header names (and, if given, the one the caller trusts); each vote is signed by a member of
that set, for this claim and manifest, and accepts, with more than 2/3 of the power among
them; the commit holds precommits of more than 2/3 of the power over the block hash; and every
readable field equals what the canonical parts say. Each failure is one message naming the
field; [] means the attestation holds.
"""

from __future__ import annotations

import json
import math
from typing import Any

from chain import codec, crypto, merkle
from chain.attest import MAX_CANONICAL_BYTES, SCHEMA, Extras, Parts, render
from chain.commit import InvalidCommit, verify_commit
from chain.errors import DecodingError, InvalidSignature
from chain.learning import SignedManifest, compute_manifest_hash, verify_manifest_signature
from chain.merkle import MerkleProof
from chain.payloads import CertifyDelta, DeltaClaim, SignedPolVote
from chain.rounds import make_claim
from chain.types import (
    CHAIN_PARAMETER,
    ZERO_PUBKEY,
    ZERO_SIGNATURE,
    BlockHeader,
    CommitCertificate,
    Transaction,
    ValidatorSet,
)

SOURCES = {
    "network": "from the manifest", "claim": "from the claim", "metrics": "from the votes",
    "contributor": "from the manifest", "training": "from the manifest", "certificate": "from the votes",
    "validator_set": "from the validator set", "finality": "from the block", "unchecked": "in this schema",
}
"""How a mismatch in each readable section names where the true value comes from."""
REL_TOL = 1e-9
"""Derived floats (exp, ratios) are compared within this relative tolerance across platforms."""


def verify_attestation(doc: Any, trusted_validator_set_hash: bytes | None = None) -> list[str]:
    """Every problem of an attestation file; [] when it holds."""
    if not isinstance(doc, dict):
        return ["the attestation is not a JSON object"]
    if doc.get("schema") != SCHEMA:
        return [f"schema: {_show(doc.get('schema'))} in the file, expected {SCHEMA!r}"]
    problems: list[str] = []
    parts = decode_parts(doc.get("canonical"), problems)
    if parts is None:
        return problems
    network_id = parts.manifest.manifest.network_id
    check_manifest(parts, problems)
    check_block(parts, problems)
    check_validator_set(parts, trusted_validator_set_hash, problems)
    check_votes(parts, network_id, problems)
    try:
        verify_commit(CHAIN_PARAMETER, parts.header.height, codec.hash_of(parts.header), parts.commit,
                      parts.validators, network_id)
    except InvalidCommit as err:
        problems.append(f"canonical.commit: {err}")
    extras = read_extras(doc, problems)
    if extras is not None:
        expected = render(parts, extras)
        for key in sorted(set(doc) - set(expected) - {"schema", "canonical"}):
            problems.append(f"{key}: not a field of {SCHEMA}")
        for key, value in expected.items():
            compare(key, doc.get(key, _ABSENT), value, SOURCES[key], problems)
    return problems


_PART_TYPES = {
    "manifest": SignedManifest, "claim": DeltaClaim, "validator_set": ValidatorSet, "header": BlockHeader,
    "certify_tx": Transaction, "tx_proof": MerkleProof, "commit": CommitCertificate,
}


def decode_parts(canonical: Any, problems: list[str]) -> Parts | None:
    if not isinstance(canonical, dict):
        problems.append("canonical: absent or not an object")
        return None
    decoded: dict[str, Any] = {}
    for name, cls in _PART_TYPES.items():
        decoded[name] = _decode(f"canonical.{name}", cls, canonical.get(name), problems)
    votes = canonical.get("votes")
    if not isinstance(votes, list):
        problems.append("canonical.votes: absent or not a list")
        return None
    decoded["votes"] = tuple(_decode(f"canonical.votes[{i}]", SignedPolVote, v, problems) for i, v in enumerate(votes))
    if any(v is None for v in decoded.values()) or any(v is None for v in decoded["votes"]):
        return None
    return Parts(decoded["manifest"], decoded["claim"], decoded["votes"], decoded["validator_set"], decoded["header"],
                 decoded["certify_tx"], decoded["tx_proof"], decoded["commit"])


def _decode(path: str, cls: type, text: Any, problems: list[str]) -> Any:
    if not isinstance(text, str):
        problems.append(f"{path}: absent or not a hex string")
        return None
    try:
        return codec.decode(cls, bytes.fromhex(text), max_size=MAX_CANONICAL_BYTES)
    except (ValueError, TypeError, DecodingError) as err:  # bad hex, bad bytes, a set out of order
        problems.append(f"{path}: not the canonical bytes of a {cls.__name__}: {err}")
        return None


def check_manifest(parts: Parts, problems: list[str]) -> None:
    try:
        verify_manifest_signature(parts.manifest)
    except InvalidSignature:
        problems.append("canonical.manifest: the signature is not the contributor's over the manifest")
    if compute_manifest_hash(parts.manifest.manifest) != parts.claim.manifest_hash:
        problems.append("canonical.claim: names another manifest than canonical.manifest")
    elif parts.claim != make_claim(parts.manifest.manifest):
        problems.append("canonical.claim: does not say what its manifest says")


def check_block(parts: Parts, problems: list[str]) -> None:
    tx, header = parts.tx, parts.header
    payload = tx.body.payload
    if header.chain_id != CHAIN_PARAMETER:
        problems.append(f"canonical.header: a block of chain {header.chain_id}, not the parameter chain")
    if tx.body.sender != ZERO_PUBKEY or tx.signature != ZERO_SIGNATURE or tx.body.chain_id != CHAIN_PARAMETER:
        problems.append("canonical.certify_tx: not a parameter-chain system transaction")
    if not isinstance(payload, CertifyDelta):
        problems.append(f"canonical.certify_tx: a {type(payload).__name__}, not a CertifyDelta")
    else:
        if payload.claim_hash != codec.hash_of(parts.claim):
            problems.append("canonical.certify_tx: certifies another claim")
        if tuple(payload.certificate.votes) != parts.votes:
            problems.append("canonical.votes: not exactly the votes of the block's CertifyDelta")
    if not merkle.is_valid_proof(tx.hash(), parts.proof, header.tx_root):
        problems.append("canonical.tx_proof: the CertifyDelta is not in the block's transaction root")


def check_validator_set(parts: Parts, trusted: bytes | None, problems: list[str]) -> None:
    vs_hash = parts.validators.hash()
    if vs_hash != parts.header.validators_hash:
        problems.append(f"canonical.validator_set: hash {vs_hash.hex()[:16]} is not the set the block header "
                        f"names ({parts.header.validators_hash.hex()[:16]})")
    if trusted is not None and vs_hash != trusted:
        problems.append(f"canonical.validator_set: hash {vs_hash.hex()[:16]} is not the trusted set "
                        f"{trusted.hex()[:16]}")


def check_votes(parts: Parts, network_id: str, problems: list[str]) -> None:
    vs, claim_hash = parts.validators, codec.hash_of(parts.claim)
    signers = [sv.vote.validator for sv in parts.votes]
    if not signers:
        problems.append("canonical.votes: no PoL votes")
    if signers != sorted(set(signers)):
        problems.append("canonical.votes: not sorted by validator, or one validator twice")
    power = 0
    for i, sv in enumerate(parts.votes):
        where, vote = f"canonical.votes[{i}]", sv.vote
        member = vs.get(vote.validator)
        if member is None:
            problems.append(f"{where}: {crypto.format_address(vote.validator)} is not in the validator set")
            continue
        if vote.claim_hash != claim_hash:
            problems.append(f"{where}: a vote for another claim")
        if vote.verdict.validator != member.public_key or vote.verdict.manifest_hash != parts.claim.manifest_hash:
            problems.append(f"{where}: the verdict names another validator key or manifest")
        if not crypto.is_valid_signature(member.public_key, network_id, crypto.KIND_POL_VOTE, codec.encode(vote),
                                         sv.signature):
            problems.append(f"{where}: bad signature by {crypto.format_address(vote.validator)}")
            continue
        if not vote.verdict.accepted or vote.verdict.new_loss >= vote.verdict.base_loss:
            problems.append(f"{where}: the verdict does not accept an improvement")
            continue
        power += member.power
    if not vs.is_quorum(power):
        problems.append(f"canonical.votes: accepting votes hold {power} of {vs.total_power} power, not more than 2/3")


# --- the readable sections ------------------------------------------------------------------


def read_extras(doc: dict, problems: list[str]) -> Extras | None:
    """The exporter's unchecked values, read from the file itself (so that they render as they are)."""
    claim, contributor, metrics = doc.get("claim"), doc.get("contributor"), doc.get("metrics")
    if not isinstance(claim, dict) or not isinstance(contributor, dict) or not isinstance(metrics, dict):
        problems.append("claim, contributor or metrics: absent or not an object")
        return None
    status, applied = claim.get("status"), claim.get("applied_height")
    datasets, validation = contributor.get("datasets"), metrics.get("validation_datasets")
    if not isinstance(status, str) or not _is_int(applied):
        problems.append("claim.status or claim.applied_height: absent or of the wrong type")
        return None
    if not isinstance(datasets, list) or not all(isinstance(d, dict) and isinstance(d.get("cid"), str)
                                                 and (d.get("size") is None or _is_int(d.get("size")))
                                                 for d in datasets):
        problems.append("contributor.datasets: not a list of {cid, size}")
        return None
    if not isinstance(validation, list) or not all(isinstance(c, str) for c in validation):
        problems.append("metrics.validation_datasets: not a list of CIDs")
        return None
    return Extras(status, applied, {d["cid"]: d.get("size") for d in datasets}, tuple(validation))


class _Absent:
    def __repr__(self) -> str:
        return "absent"


_ABSENT = _Absent()


def compare(path: str, actual: Any, expected: Any, source: str, problems: list[str]) -> None:
    """Report each leaf of `actual` (the file) that differs from `expected` (rendered)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            problems.append(f"{path}: {_show(actual)} in the file, an object {source}")
            return
        for key in sorted(set(actual) - set(expected)):
            problems.append(f"{path}.{key}: not a field of {SCHEMA}")
        for key, value in expected.items():
            compare(f"{path}.{key}", actual.get(key, _ABSENT), value, source, problems)
    elif isinstance(expected, list):
        if not isinstance(actual, list):
            problems.append(f"{path}: {_show(actual)} in the file, a list {source}")
            return
        if len(actual) != len(expected):
            problems.append(f"{path}: {len(actual)} items in the file, {len(expected)} {source}")
        for i, (a, e) in enumerate(zip(actual, expected, strict=False)):
            compare(f"{path}[{i}]", a, e, source, problems)
    elif not _is_same(actual, expected):
        problems.append(f"{path}: {_show(actual)} in the file, {_show(expected)} {source}")


def _is_same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or expected is None or isinstance(expected, str):
        return type(actual) is type(expected) and actual == expected
    if isinstance(expected, int):
        return _is_int(actual) and actual == expected
    if isinstance(expected, float):
        if not isinstance(actual, (int, float)) or isinstance(actual, bool):
            return False
        return math.isclose(actual, expected, rel_tol=REL_TOL, abs_tol=1e-12)
    return actual == expected


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "absent"
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

