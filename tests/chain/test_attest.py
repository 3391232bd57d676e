"""Attestations of accepted deltas (`chain.attest`, `chain.attest_check`): exported from a store
that holds a real certified and applied claim, checked offline; every altered number, signature
or power is reported by the name of its field; claims not accepted are refused."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from typing import Any

import pytest

from chain import codec
from chain.attest import SCHEMA, UNCHECKED, AttestationError, ClaimNotAccepted, build_attestation
from chain.attest_check import verify_attestation
from chain.learning import Hyperparameters, SignedManifest, TrainingManifest
from chain.payloads import SignedPolVote
from chain.types import CommitCertificate, ValidatorSet
from tests.chain.attest_support import LOSSES, STAKES, TRAIN_CID, TRAIN_SIZE, UNKNOWN_CID, VALIDATION_CID, make_world


@pytest.fixture(scope="module")
def world():
    return make_world()


@pytest.fixture(scope="module")
def exported(world) -> dict[str, Any]:
    return json.loads(json.dumps(build_attestation(world.store, world.claim_hash)))


@pytest.fixture
def doc(exported) -> dict[str, Any]:
    return copy.deepcopy(exported)


def _set(doc: dict, path: str, value: Any) -> None:
    *parents, last = _split(path)
    node = doc
    for key in parents:
        node = node[key]
    node[last] = value


def _get(doc: dict, path: str) -> Any:
    node = doc
    for key in _split(path):
        node = node[key]
    return node


def _split(path: str) -> list[str | int]:
    out: list[str | int] = []
    for part in path.split("."):
        name, _, rest = part.partition("[")
        out.append(name)
        if rest:
            out.extend(int(i) for i in rest.rstrip("]").split("]["))
    return out


def _flip_hex(text: str, at: int = 10) -> str:
    return text[:at] + ("0" if text[at] != "0" else "1") + text[at + 1:]


def _recode(doc: dict, key: str, cls: type, change, index: int | None = None) -> None:
    """Decode a canonical part, change it, and write its canonical bytes back."""
    canonical = doc["canonical"]
    text = canonical[key] if index is None else canonical[key][index]
    new = codec.encode(change(codec.decode(cls, bytes.fromhex(text), max_size=1 << 20))).hex()
    if index is None:
        canonical[key] = new
    else:
        canonical[key][index] = new


# --- export, then verify --------------------------------------------------------------------


def test_attestation_export_then_verify_holds(doc) -> None:
    assert doc["schema"] == SCHEMA
    assert verify_attestation(doc) == []


def test_attestation_metrics_are_the_median_losses(world, doc) -> None:
    base = sorted(b for b, _ in LOSSES)[1]  # median_low of four
    new = sorted(n for _, n in LOSSES)[1]
    m = doc["metrics"]
    assert m["baseline"]["validation_loss_micro_nats"] == base and m["new"]["validation_loss_micro_nats"] == new
    assert m["baseline"]["validation_loss"] == base / 1e6
    assert m["new"]["perplexity"] == pytest.approx(math.exp(new / 1e6))
    assert m["delta"]["validation_loss"] == pytest.approx((new - base) / 1e6)
    assert m["delta"]["validation_loss_relative"] == pytest.approx((new - base) / base)
    assert m["per_dataset"] is None and "aggregate" in m["per_dataset_note"]
    assert m["validation_datasets"] == [VALIDATION_CID]


def test_attestation_names_contributor_training_votes_and_finality(world, doc) -> None:
    man = world.signed.manifest
    c = doc["contributor"]
    assert c["public_key"] == man.contributor.hex()
    assert c["datasets"] == [{"cid": TRAIN_CID, "size": TRAIN_SIZE}, {"cid": UNKNOWN_CID, "size": None}]
    assert doc["training"]["hyperparameters"]["seed"] == man.hyper.seed
    assert doc["training"]["hyperparameters"]["learning_rate"] == man.hyper.lr_e9 / 1e9
    votes = doc["certificate"]["votes"]
    assert len(votes) == len(STAKES) and all(v["accepted"] for v in votes)
    assert sorted(v["power"] for v in votes) == sorted(STAKES)
    assert all(len(v["segments"]) == 1 and len(v["signature"]) == 128 for v in votes)
    assert doc["certificate"]["accepting_power"] == doc["validator_set"]["total_power"] == sum(STAKES)
    f = doc["finality"]
    assert (f["chain"], f["height"]) == ("parameter", doc["claim"]["certified_height"])
    assert f["block_hash"] == world.chains.blocks[0][f["height"] - 1].hash().hex()
    assert len(f["commit"]["signatures"]) == len(STAKES)
    assert doc["claim"]["status"] == "accepted" and doc["claim"]["applied_height"] >= f["height"]
    assert doc["unchecked"] == list(UNCHECKED)


def test_attestation_with_the_trusted_validator_set(doc) -> None:
    assert verify_attestation(doc, bytes.fromhex(doc["validator_set"]["hash"])) == []
    problems = verify_attestation(doc, bytes(32))
    assert problems == [f"canonical.validator_set: hash {doc['validator_set']['hash'][:16]} is not the trusted "
                        f"set {'00' * 8}"]


# --- an altered readable field is named -----------------------------------------------------


@pytest.mark.parametrize(("path", "value", "source"), [
    ("metrics.new.validation_loss", 1.8, "from the votes"),
    ("metrics.baseline.validation_loss_micro_nats", 2_100_000, "from the votes"),
    ("metrics.baseline.perplexity", 7.4, "from the votes"),
    ("metrics.delta.validation_loss_relative", -0.5, "from the votes"),
    ("metrics.delta.gain_ppm", 60_000, "from the votes"),
    ("training.hyperparameters.lr_e9", 2_000_000, "from the manifest"),
    ("training.hyperparameters.learning_rate", 0.002, "from the manifest"),
    ("training.seeds.batch_order", 8, "from the manifest"),
    ("training.environment.device", "cuda", "from the manifest"),
    ("contributor.address", "bly1" + "00" * 20, "from the manifest"),
    ("certificate.votes[1].new_loss", 1.0, "from the votes"),
    ("certificate.votes[2].segments[0].l2_ppm", 1, "from the votes"),
    ("certificate.votes[0].power", 1, "from the votes"),
    ("validator_set.validators[1].power", 99_999, "from the validator set"),
    ("finality.height", 1, "from the block"),
    ("claim.round_id", 9, "from the claim"),
    ("network.id", "mainnet", "from the manifest"),
])
def test_invalid_altered_number_names_the_field(doc, path: str, value: Any, source: str) -> None:
    true = _get(doc, path)
    _set(doc, path, value)
    problems = verify_attestation(doc)
    assert problems == [f"{path}: {json.dumps(value)} in the file, {json.dumps(true)} {source}"]


def test_invalid_altered_loss_message_reads_like_the_spec(doc) -> None:
    _set(doc, "metrics.new.validation_loss", 1.8999)
    assert verify_attestation(doc) == ["metrics.new.validation_loss: 1.8999 in the file, 1.9 from the votes"]


def test_invalid_altered_vote_signature_in_the_readable_part(doc) -> None:
    path = "certificate.votes[0].signature"
    true = _get(doc, path)
    _set(doc, path, _flip_hex(true))
    [problem] = verify_attestation(doc)
    assert problem.startswith(f"{path}: ") and problem.endswith(f'"{true[:76]}... from the votes')


def test_invalid_altered_commit_signature_in_the_readable_part(doc) -> None:
    path = "finality.commit.signatures[2].signature"
    _set(doc, path, _flip_hex(_get(doc, path)))
    [problem] = verify_attestation(doc)
    assert problem.startswith(f"{path}: ") and problem.endswith("from the block")


def test_invalid_missing_and_extra_fields(doc) -> None:
    del doc["training"]["hyperparameters"]["beta1"]
    doc["metrics"]["new"]["accuracy"] = 0.99
    doc["bonus"] = True
    assert verify_attestation(doc) == [
        "bonus: not a field of blyan-attestation/1",
        "metrics.new.accuracy: not a field of blyan-attestation/1",
        "training.hyperparameters.beta1: absent in the file, 0.9 from the manifest",
    ]


def test_invalid_bool_for_a_number(doc) -> None:
    doc["certificate"]["votes"][0]["accepted"] = 1
    assert verify_attestation(doc) == ["certificate.votes[0].accepted: 1 in the file, true from the votes"]


# --- an altered canonical part fails its check ----------------------------------------------


def test_invalid_canonical_vote_signature_byte(doc) -> None:
    def flip(sv: SignedPolVote) -> SignedPolVote:
        return replace(sv, signature=bytes([sv.signature[0] ^ 1]) + sv.signature[1:])

    _recode(doc, "votes", SignedPolVote, flip, index=1)
    problems = verify_attestation(doc)
    assert "canonical.votes: not exactly the votes of the block's CertifyDelta" in problems
    assert any(p.startswith("canonical.votes[1]: bad signature by bly1") for p in problems)
    assert any(p.startswith("certificate.votes[1].signature: ") for p in problems)
    assert any(p.startswith("canonical.votes: accepting votes hold") for p in problems)


def test_invalid_canonical_validator_power(doc) -> None:
    def more_power(vs: ValidatorSet) -> ValidatorSet:
        first = replace(vs.validators[0], power=vs.validators[0].power * 100)
        return replace(vs, validators=(first, *vs.validators[1:]))

    _recode(doc, "validator_set", ValidatorSet, more_power)
    problems = verify_attestation(doc)
    assert any(p.startswith("canonical.validator_set: hash ") and "is not the set the block header names" in p
               for p in problems)
    assert any(p.startswith("validator_set.validators[0].power: ") and p.endswith("from the validator set")
               for p in problems)


def test_invalid_canonical_commit_signature(doc) -> None:
    def flip(c: CommitCertificate) -> CommitCertificate:
        s = c.signatures[0]
        bad = replace(s, signature=s.signature[:5] + bytes([s.signature[5] ^ 0xFF]) + s.signature[6:])
        return replace(c, signatures=(bad, *c.signatures[1:]))

    _recode(doc, "commit", CommitCertificate, flip)
    problems = verify_attestation(doc)
    assert any(p.startswith("canonical.commit: bad precommit signature of ") for p in problems)


def test_invalid_canonical_manifest_changed_without_its_signature(doc) -> None:
    def retune(signed: SignedManifest) -> SignedManifest:
        man: TrainingManifest = signed.manifest
        hyper: Hyperparameters = replace(man.hyper, lr_e9=man.hyper.lr_e9 * 10)
        return replace(signed, manifest=replace(man, hyper=hyper))

    _recode(doc, "manifest", SignedManifest, retune)
    problems = verify_attestation(doc)
    assert "canonical.manifest: the signature is not the contributor's over the manifest" in problems
    assert "canonical.claim: names another manifest than canonical.manifest" in problems


def test_invalid_a_vote_left_out_loses_the_quorum(doc) -> None:
    doc["canonical"]["votes"] = doc["canonical"]["votes"][:2]
    problems = verify_attestation(doc)
    assert "canonical.votes: not exactly the votes of the block's CertifyDelta" in problems
    assert any(p.startswith("canonical.votes: accepting votes hold ") for p in problems)
    assert "certificate.votes: 4 items in the file, 2 from the votes" in problems


def test_invalid_canonical_garbage(doc) -> None:
    doc["canonical"]["header"] = "zz"
    doc["canonical"]["tx_proof"] = "00"
    problems = verify_attestation(doc)
    assert [p.split(":")[0] for p in problems] == ["canonical.header", "canonical.tx_proof"]


@pytest.mark.parametrize("bad", [None, [], {"schema": "blyan-attestation/0"}, {"schema": SCHEMA}])
def test_invalid_not_an_attestation(bad: Any) -> None:
    assert verify_attestation(bad) != []


# --- what cannot be attested ----------------------------------------------------------------


def test_invalid_claim_not_accepted_is_refused() -> None:
    world = make_world(close_round=False)
    with pytest.raises(ClaimNotAccepted, match="is certified, not accepted") as info:
        build_attestation(world.store, world.claim_hash)
    assert info.value.status == "certified" and info.value.claim_hash == world.claim_hash


def test_invalid_unknown_claim_is_refused(world) -> None:
    with pytest.raises(AttestationError, match="no revealed claim"):
        build_attestation(world.store, bytes(32))
