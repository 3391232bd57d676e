"""`blyan lineage`: the tree, JSON and JSON-LD of an expert, a dataset or a claim, from a data
dir's store or over RPC (`blyan_getLineage`), and its usage errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from pyld import jsonld

from chain.lineage import PROV, block_urn, claim_urn, dataset_urn
from node.cli import lineage as lineage_cli
from tests.chain.attest_support import EXPERT, TRAIN_CID, make_world
from tests.node.api.test_lineage_methods import call


@click.group()
def blyan() -> None:
    """The `blyan` group with only this module's verbs (as `node.cli.main` registers them)."""


lineage_cli.register(blyan)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(blyan, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A data dir with no node running: the command reads its store (and closes it)."""
    world = make_world()
    monkeypatch.setattr(lineage_cli, "open_store", lambda data_dir: (None, world.store))
    return world


def test_cli_lineage_tree_of_expert_from_a_data_dir(local, tmp_path: Path) -> None:
    code, out, err = run("lineage", "--expert", EXPERT, "--data-dir", str(tmp_path))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{EXPERT}@{local.claim_hash.hex()[:12]} [BlockVersion] version 1.0.1, head"
    assert any(line.startswith("├─ wasGeneratedBy claim ") and "accepted" in line and "loss 2.0000 -> 1.9000" in line
               for line in lines)
    assert any("used " + TRAIN_CID in line and "approved, gold" in line for line in lines)
    assert any("[BlockVersion] version 1.0.0, genesis" in line for line in lines)


def test_cli_lineage_json_of_dataset_from_a_data_dir(local, tmp_path: Path) -> None:
    code, out, err = run("lineage", "--dataset", TRAIN_CID, "--json", "--data-dir", str(tmp_path))
    assert code == 0, err
    doc = json.loads(out)
    assert doc["subject"] == dataset_urn(TRAIN_CID) and doc["truncated"] is False


def test_cli_lineage_jsonld_of_claim_over_rpc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world()
    asked = []

    class Client:
        def call(self, method: str, params: Any) -> Any:
            asked.append((method, params))
            return call(world.store, params)

    monkeypatch.setattr(lineage_cli, "make_client", lambda data_dir, url, cookie: Client())
    code, out, err = run("lineage", "--claim", world.claim_hash.hex(), "--jsonld", "--rpc", "http://127.0.0.1:1",
                         "--cookie", str(tmp_path / "cookie"))
    assert code == 0, err
    assert asked == [("blyan_getLineage", {"claim": world.claim_hash.hex(), "jsonld": True})]
    quads = jsonld.to_rdf(json.loads(out), {"format": "application/n-quads"})
    made = block_urn(EXPERT, world.claim_hash)
    assert f"<{made}> <{PROV}wasGeneratedBy> <{claim_urn(world.claim_hash)}> ." in quads
    assert f"<{claim_urn(world.claim_hash)}> <{PROV}used> <{dataset_urn(TRAIN_CID)}> ." in quads


def test_cli_lineage_invalid_unknown_expert_exits_1(local, tmp_path: Path) -> None:
    code, out, err = run("lineage", "--expert", "layer9.expert9", "--data-dir", str(tmp_path))
    assert code == 1 and out == "" and "no expert 'layer9.expert9'" in err


@pytest.mark.parametrize("args, message", [
    ((), "exactly one of"),
    (("--expert", EXPERT, "--dataset", TRAIN_CID), "exactly one of"),
    (("--claim", "xyz"), "not hex"),
    (("--claim", "ab" * 16), "32 bytes"),
    (("--expert", EXPERT), "--data-dir"),
])
def test_cli_lineage_invalid_usage_exits_2(args: tuple[str, ...], message: str) -> None:
    code, _, err = run("lineage", *args)
    assert code == 2 and message in err
