"""`blyan train`, `blyan pol verify` and `blyan delta inspect` as a contributor and a validator run
them: on a data dir of the learning world's genesis, with no node running (the store is read
directly) and beside a running node (the chains over its RPC), and with an MLflow store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from chain import codec
from chain.blobs import BlobStore
from chain.errors import BlyanError
from genesis.learningkit import make_learning_world
from node.api.config import RPCConfig
from node.app.config import BLOBS_DIR, CONFIG_FILE, NODE_INFO_FILE, P2PConfig, load_config, save_config
from node.app.devnet import find_free_ports
from node.cli.main import main

pytestmark = pytest.mark.slow

TRAIN = ["--steps", "16", "--batch-size", "4", "--seq-len", "64", "--lr", "3e-3"]
DEADLINE_S = 90.0


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node data dir of the learning world (its model blobs and datasets in the blob store)."""
    world = make_learning_world()
    root = tmp_path_factory.mktemp("learning")
    pact_file = root / "genesis.pact"
    pact_file.write_bytes(codec.encode(world.pact))
    data = root / "node"
    code, out = run("init", "--network", world.pact.network_id, "--genesis", str(pact_file), "--data-dir", str(data))
    assert code == 0, out
    blobs = BlobStore(data / BLOBS_DIR)
    for blob in world.blobs.values():
        blobs.put(blob)
    config = replace(load_config(data / CONFIG_FILE), p2p=P2PConfig(listen=f"/ip4/127.0.0.1/tcp/{find_free_ports(1)}"),
                     rpc=RPCConfig(port=find_free_ports(1)))
    save_config(config, data / CONFIG_FILE)
    return data


def test_train_then_verify_accepts_with_a_gain(data_dir: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    code, out = run("train", "--data-dir", str(data_dir), "--out", str(bundle), *TRAIN, "--json")
    assert code == 0, out
    trained = json.loads(out)
    assert trained["steps"] == 16 and trained["checkpoints"] == 5 and trained["delta"]["method"] == "int8"
    code, out = run("pol", "verify", str(bundle), "--data-dir", str(data_dir), "--json")
    verdict = json.loads(out)
    assert code == 0 and verdict["accepted"], verdict
    assert verdict["new_loss"] < verdict["base_loss"] and verdict["gain"] > 0
    assert verdict["segments"] and all(s["exact"] for s in verdict["segments"])
    code, out = run("delta", "inspect", str(bundle), "--json")
    inspected = json.loads(out)
    assert code == 0 and inspected["blocks"] == ["layer0.expert0"] and inspected["method"] == "int8"
    assert 3.9 < inspected["ratio"] < 4.1 and inspected["l2"] > 0


def test_verify_rejects_and_exits_one(data_dir: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    code, out = run("train", "--data-dir", str(data_dir), "--out", str(bundle), *TRAIN, "--json")
    assert code == 0, out
    checkpoint = next((bundle / "blobs").iterdir())
    checkpoint.write_bytes(checkpoint.read_bytes()[:-1])
    code, out = run("pol", "verify", str(bundle), "--data-dir", str(data_dir))
    assert code == 1 and out.startswith("rejected (")


def test_train_refuses_what_it_cannot_do(data_dir: Path, tmp_path: Path) -> None:
    code, out = run("train", "--data-dir", str(data_dir), "--out", str(tmp_path / "b"), "--block", "layer9.expert9")
    assert code == 1 and "not a trainable block" in out
    code, out = run("train", "--data-dir", str(data_dir), "--out", str(tmp_path / "b"), "--compression", "zip")
    assert code == 1 and "error:" in out


def test_train_logs_to_mlflow(data_dir: Path, tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    code, out = run("train", "--data-dir", str(data_dir), "--out", str(tmp_path / "bundle"), *TRAIN,
                    "--mlflow-uri", f"file:{store}", "--json")
    assert code == 0, out
    client = mlflow.tracking.MlflowClient(tracking_uri=f"file:{store}")
    [experiment] = [e for e in client.search_experiments() if e.name == "blyan-train"]
    [run_info] = client.search_runs([experiment.experiment_id])
    assert run_info.data.params["steps"] == "16"
    assert len(client.get_metric_history(run_info.info.run_id, "train_loss")) == 16
    assert run_info.data.metrics["delta_ratio"] > 3.9


def test_train_beside_a_running_node(data_dir: Path, tmp_path: Path) -> None:
    """The daemon holds the LevelDB lock: `blyan train` reads the chains over its RPC."""
    log = open(tmp_path / "node.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "node", "--log-level", "info", "node", "run", "--data-dir",
                             str(data_dir)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not _rpc_up(data_dir):
            assert proc.poll() is None, (tmp_path / "node.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the node did not come up"
            time.sleep(0.2)
        code, out = run("train", "--data-dir", str(data_dir), "--out", str(tmp_path / "bundle"), *TRAIN, "--json")
        assert code == 0, out
        assert json.loads(out)["steps"] == 16
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode == 0, (tmp_path / "node.log").read_text()[-2000:]
    assert not (data_dir / NODE_INFO_FILE).exists()


def _rpc_up(data_dir: Path) -> bool:
    from node.api.client import RPCClient
    from node.cli.connect import find_rpc

    if not (data_dir / NODE_INFO_FILE).exists():
        return False
    try:
        RPCClient(*find_rpc(data_dir)).call("blyan_status")
    except (BlyanError, OSError):
        return False
    return True
