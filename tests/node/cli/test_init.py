"""`blyan init` and `blyan chain show` end to end, as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from chain.crypto import load_key
from node.cli.main import main

pytestmark = pytest.mark.slow


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def devnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("node") / "data"
    code, out = run("init", "--network", "devnet", "--data-dir", str(data), "--json")
    assert code == 0, out
    return data


def test_init_creates_key_config_genesis_and_chains(devnet_dir: Path) -> None:
    assert (devnet_dir / "node.key").stat().st_mode & 0o777 == 0o600
    assert (devnet_dir / "config.toml").exists()
    assert (devnet_dir / "genesis.pact").exists()
    assert any((devnet_dir / "blobs").iterdir()), "model blobs are written"
    code, out = run("chain", "show", "--data-dir", str(devnet_dir), "--json")
    assert code == 0, out
    shown = json.loads(out)
    assert shown["network"] == "devnet"
    assert set(shown["chains"]) == {"parameter", "dataset", "reward"}
    for chain in shown["chains"].values():
        assert chain["height"] == 0
        assert len(chain["head"]) == 64 and len(chain["state_root"]) == 64


def test_init_twice_keeps_the_key(devnet_dir: Path) -> None:
    before = load_key(devnet_dir / "node.key").seed
    code, out = run("init", "--network", "devnet", "--data-dir", str(devnet_dir), "--json")
    assert code == 0, out
    result = json.loads(out)
    assert result["created_key"] is False and result["created_chains"] is False
    assert load_key(devnet_dir / "node.key").seed == before


def test_init_same_genesis_on_every_machine(devnet_dir: Path, tmp_path: Path) -> None:
    code, out = run("init", "--network", "devnet", "--data-dir", str(tmp_path / "b"), "--json")
    assert code == 0, out
    other = json.loads(out)["genesis_hash"]
    mine = json.loads(run("chain", "show", "--data-dir", str(devnet_dir), "--json")[1])["genesis_hash"]
    assert other == mine


def test_invalid_init_of_another_networks_dir(devnet_dir: Path) -> None:
    code, out = run("init", "--network", "testnet", "--data-dir", str(devnet_dir))
    assert code == 1
    assert "belongs to network 'devnet'" in out


def test_invalid_init_unknown_network_without_genesis(tmp_path: Path) -> None:
    code, out = run("init", "--network", "nowhere", "--data-dir", str(tmp_path / "x"))
    assert code == 1
    assert "no built-in genesis" in out


def test_chain_show_while_another_process_holds_the_store(devnet_dir: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from node.app.datadir import open_store; cfg, s = open_store(sys.argv[1]);"
         "print('held', flush=True); sys.stdin.read()", str(devnet_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run(
            [sys.executable, "-m", "node", "chain", "show", "--data-dir", str(devnet_dir)],
            capture_output=True, text=True, env={**os.environ},
        )
        assert proc.returncode == 1
        assert "in use by another process" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_dev_validator_key_is_the_devnet_validator(tmp_path: Path) -> None:
    from genesis.devnet import dev_validator_key

    code, out = run("init", "--network", "devnet", "--data-dir", str(tmp_path / "v"),
                    "--dev-validator", "2", "--json")
    assert code == 0, out
    assert load_key(tmp_path / "v" / "node.key").seed == dev_validator_key(2).seed
