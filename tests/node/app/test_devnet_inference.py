"""Four daemons on loopback, experts spread so that no node holds them all: `blyan chat` through
node 0 gives exactly the tokens of single-process `MoEModel.generate` with the genesis weights."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from chain.blobs import BlobStore
from chain.errors import BlyanError
from node.app.config import BLOBS_DIR, CONFIG_FILE, load_config
from node.app.datadir import load_pact_file
from node.app.devnet import DEVNET_PACT_FILE, prepare_devnet, start_nodes, stop_nodes
from tests.node.app.test_devnet import client_of, free_ports, reachable, wait_for

pytestmark = pytest.mark.slow

DEADLINE_S = 120.0
PROMPT = "The expert"
MAX_TOKENS = 6


def reference_tokens(root: Path, data_dir: Path, prompt_ids: list[int], temperature: float = 0.0, seed: int = 0,
                     use_cache: bool = True) -> list[int]:
    """Single-process generation with the genesis weights from a node's blob store."""
    from gpu.model import MoEConfig, MoEModel
    from gpu.weights import decode_block

    pact = load_pact_file(root / DEVNET_PACT_FILE)
    blobs = BlobStore(data_dir / BLOBS_DIR)
    model = MoEModel(MoEConfig.from_spec(pact.model))
    for rec in pact.tensors:
        if rec.name in model.block_names():
            model.load_block_state_dict(rec.name, decode_block(blobs.get(rec.blob_id)))
    out = model.eval().generate(torch.tensor([prompt_ids]), MAX_TOKENS, temperature=temperature,
                                generator=torch.Generator().manual_seed(seed), use_cache=use_cache)
    return out[0, len(prompt_ids):].tolist()


def corrupt_served_expert(root: Path, data_dir: Path) -> str:
    """Flip a byte in the blob of the first expert `data_dir` serves; its name."""
    pact = load_pact_file(root / DEVNET_PACT_FILE)
    name = sorted(load_config(data_dir / CONFIG_FILE).experts.serve)[0]
    record = next(r for r in pact.tensors if r.name == name)
    path = BlobStore(data_dir / BLOBS_DIR).path_of(record.blob_id)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    return name


def registry_complete(data_dir: Path, others: int) -> bool:
    try:
        found = client_of(data_dir).call("blyan_experts")
    except (BlyanError, OSError):
        return False
    return len(found["registry"]) >= others


def test_chat_through_four_daemons_matches_single_process(tmp_path: Path) -> None:
    dirs = prepare_devnet(tmp_path, 4, free_ports(4), free_ports(4))
    served = [set(load_config(d / CONFIG_FILE).experts.serve) for d in dirs]
    assert all(len(s) < len(set().union(*served)) for s in served), "no node serves every expert"
    corrupted = corrupt_served_expert(tmp_path, dirs[2])
    procs = start_nodes(dirs)
    deadline = time.monotonic() + DEADLINE_S
    try:
        for d in dirs:
            wait_for(f"{d.name} up", lambda d=d: reachable(d), deadline)
        wait_for("node2 repaired its corrupt expert from a peer",
                 lambda: f"repaired {corrupted}" in (dirs[2] / "node.log").read_text(), deadline)
        wait_for("node0 knows the three other servers", lambda: registry_complete(dirs[0], 3), deadline)
        chat = subprocess.run(
            [sys.executable, "-m", "node", "chat", PROMPT, "--max-tokens", str(MAX_TOKENS), "--json",
             "--data-dir", str(dirs[0])], capture_output=True, text=True, timeout=DEADLINE_S)
        assert chat.returncode == 0, chat.stderr
        answer = json.loads(chat.stdout)
        rpc_answer = client_of(dirs[1]).call("blyan_generate", {"prompt": PROMPT, "max_tokens": MAX_TOKENS})
    finally:
        codes = stop_nodes(procs)
    assert codes == [0, 0, 0, 0], [Path(d, "node.log").read_text()[-2000:] for d in dirs]
    prompt_ids = answer["prompt_tokens"]
    assert answer["tokens"] == reference_tokens(tmp_path, dirs[0], prompt_ids)
    assert rpc_answer["tokens"] == answer["tokens"]
    nodes_used = {n for step in answer["layers"] for layer in step for n in layer["experts"].values()}
    assert len(nodes_used) >= 2, "experts ran on other nodes"
    assert answer["round_trips"] >= MAX_TOKENS
    for d in dirs:
        assert "Traceback" not in (d / "node.log").read_text()
    healed = BlobStore(dirs[2] / BLOBS_DIR)
    record = next(r for r in load_pact_file(tmp_path / DEVNET_PACT_FILE).tensors if r.name == corrupted)
    assert healed.get(record.blob_id, verify=True)  # the file is whole again


def chat_json(data_dir: Path, *args: str) -> dict:
    chat = subprocess.run(
        [sys.executable, "-m", "node", "chat", PROMPT, "--max-tokens", str(MAX_TOKENS), "--json",
         "--data-dir", str(data_dir), *args], capture_output=True, text=True, timeout=DEADLINE_S)
    assert chat.returncode == 0, chat.stderr
    return json.loads(chat.stdout)


def test_chat_plans_through_four_daemons_match_single_process(tmp_path: Path) -> None:
    """Layout "ranges": nodes 0 and 2 serve every expert of layer 0, nodes 1 and 3 of layer 1, so a
    pipeline chain of two stages exists (node 0's own, then a remote one); each plan type gives the
    single-process tokens."""
    dirs = prepare_devnet(tmp_path, 4, free_ports(4), free_ports(4), layout="ranges")
    procs = start_nodes(dirs)
    deadline = time.monotonic() + DEADLINE_S
    try:
        for d in dirs:
            wait_for(f"{d.name} up", lambda d=d: reachable(d), deadline)
        wait_for("node0 knows the three other servers", lambda: registry_complete(dirs[0], 3), deadline)
        answers = {plan: chat_json(dirs[0], "--plan", plan) for plan in ("auto", "pipeline", "static_delegate")}
        seeded = chat_json(dirs[0], "--plan", "pipeline", "--temperature", "0.8", "--seed", "5", "--no-cache")
    finally:
        codes = stop_nodes(procs)
    assert codes == [0, 0, 0, 0], [Path(d, "node.log").read_text()[-2000:] for d in dirs]
    expected = reference_tokens(tmp_path, dirs[0], answers["auto"]["prompt_tokens"])
    for plan, answer in answers.items():
        assert answer["tokens"] == expected, plan
        assert answer["fallbacks"] == []
    assert answers["auto"]["plan"]["type"] == "pipeline"  # no node serves the whole group: no delegate
    pipeline = answers["pipeline"]
    assert len(pipeline["plan"]["stages"]) == 2
    assert pipeline["round_trips"] == MAX_TOKENS  # node 0 serves layer 0 whole: a local stage, then one remote
    assert answers["static_delegate"]["round_trips"] == 1 and answers["static_delegate"]["remote_round_trips"] > 0
    assert seeded["plan"]["type"] == "pipeline"
    assert seeded["tokens"] == reference_tokens(tmp_path, dirs[0], seeded["prompt_tokens"], 0.8, 5, False)
    for d in dirs:
        assert "Traceback" not in (d / "node.log").read_text()
