"""`blyan attest export` and `blyan attest verify`, and the RPC method behind export
(`blyan_getAttestation`), on a store holding a real accepted claim."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from chain.attest import build_attestation
from chain.store import ChainStore
from chain.types import ValidatorSet
from node.api.attest_methods import NO_ATTESTATION
from node.api.client import INVALID_PARAMS, RPCError
from node.api.methods import METHODS
from node.api.params import bind_params
from node.api.services import Services
from node.cli import attest as attest_cli
from node.cli.main import main
from tests.chain.attest_support import make_world


class FakeNode:
    """What `blyan_getAttestation` reads of the engine."""

    def __init__(self, store: ChainStore) -> None:
        self.store = store

    def get_validator_set(self, vs_hash: bytes) -> ValidatorSet | None:
        return None  # the store's own sets are the fallback


def call(store: ChainStore, params: Any) -> Any:
    method = METHODS["blyan_getAttestation"]
    return method.handler(Services(node=FakeNode(store)), bind_params(method, params))


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def world():
    return make_world()


@pytest.fixture
def attestation_file(world, tmp_path: Path) -> Path:
    path = tmp_path / "attestation.json"
    path.write_text(json.dumps(build_attestation(world.store, world.claim_hash)))
    return path


# --- the RPC method -------------------------------------------------------------------------


def test_rpc_get_attestation(world) -> None:
    doc = call(world.store, {"claim": world.claim_hash.hex()})
    assert doc == build_attestation(world.store, world.claim_hash)
    assert call(world.store, [world.claim_hash.hex()]) == doc


def test_rpc_get_attestation_of_a_claim_not_accepted() -> None:
    pending = make_world(close_round=False)
    with pytest.raises(RPCError) as info:
        call(pending.store, {"claim": pending.claim_hash.hex()})
    assert info.value.code == NO_ATTESTATION and info.value.data["status"] == "certified"


def test_rpc_get_attestation_invalid_params(world) -> None:
    with pytest.raises(RPCError) as info:
        call(world.store, {"claim": "abcd"})
    assert info.value.code == INVALID_PARAMS


# --- blyan attest verify --------------------------------------------------------------------


def test_cli_verify_holds(attestation_file: Path) -> None:
    code, out, _ = run("attest", "verify", str(attestation_file))
    assert code == 0, out
    assert "holds" in out and "validation loss 2.0000 -> 1.9000" in out


def test_cli_verify_json(attestation_file: Path) -> None:
    code, out, _ = run("attest", "verify", str(attestation_file), "--json")
    assert code == 0
    assert json.loads(out) == {"ok": True, "problems": [],
                               "claim": json.loads(attestation_file.read_text())["claim"]["hash"]}


def test_cli_verify_invalid_altered_file_exits_1_naming_the_field(attestation_file: Path) -> None:
    doc = json.loads(attestation_file.read_text())
    doc["training"]["hyperparameters"]["steps"] = 400
    attestation_file.write_text(json.dumps(doc))
    code, out, err = run("attest", "verify", str(attestation_file))
    assert code == 1 and out == ""
    assert "training.hyperparameters.steps: 400 in the file, 4 from the manifest" in err
    code, out, _ = run("attest", "verify", str(attestation_file), "--json")
    assert code == 1 and json.loads(out)["problems"] == [
        "training.hyperparameters.steps: 400 in the file, 4 from the manifest"]


def test_cli_verify_trusted_validator_set(attestation_file: Path) -> None:
    trusted = json.loads(attestation_file.read_text())["validator_set"]["hash"]
    assert run("attest", "verify", str(attestation_file), "--validator-set", trusted)[0] == 0
    code, _, err = run("attest", "verify", str(attestation_file), "--validator-set", "11" * 32)
    assert code == 1 and "is not the trusted set" in err


def test_cli_verify_invalid_not_json(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("{not json")
    code, _, err = run("attest", "verify", str(path))
    assert code == 1 and "is not a JSON file" in err


# --- blyan attest export --------------------------------------------------------------------


def test_cli_export_from_a_data_dir_then_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = make_world()  # export closes the store it opened
    monkeypatch.setattr(attest_cli, "open_store", lambda data_dir: (None, fresh.store))
    out = tmp_path / "a.json"
    code, stdout, err = run("attest", "export", "--claim", fresh.claim_hash.hex(), "--out", str(out),
                            "--data-dir", str(tmp_path))
    assert code == 0, err
    assert f"claim {fresh.claim_hash.hex()[:16]}" in stdout
    assert run("attest", "verify", str(out))[0] == 0


def test_cli_export_over_rpc(world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Client:
        def call(self, method: str, params: Any) -> Any:
            assert method == "blyan_getAttestation"
            return call(world.store, params)

    monkeypatch.setattr(attest_cli, "make_client", lambda data_dir, url, cookie: Client())
    out = tmp_path / "a.json"
    code, _, err = run("attest", "export", "--claim", world.claim_hash.hex(), "--out", str(out),
                       "--rpc", "http://127.0.0.1:1", "--cookie", str(tmp_path / "cookie"))
    assert code == 0, err
    assert json.loads(out.read_text()) == build_attestation(world.store, world.claim_hash)


def test_cli_export_invalid_claim_not_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pending = make_world(close_round=False)
    monkeypatch.setattr(attest_cli, "open_store", lambda data_dir: (None, pending.store))
    code, _, err = run("attest", "export", "--claim", pending.claim_hash.hex(), "--out", str(tmp_path / "a.json"),
                       "--data-dir", str(tmp_path))
    assert code == 1 and "is certified, not accepted" in err


def test_cli_export_invalid_claim_hash(tmp_path: Path) -> None:
    code, _, err = run("attest", "export", "--claim", "xyz", "--out", str(tmp_path / "a.json"),
                       "--data-dir", str(tmp_path))
    assert code == 2 and "not hex" in err
