"""A learning round on four daemon processes over libp2p, as a contributor runs it from the
README: `blyan train` on node 1, `blyan delta submit`, the four validators fetch the bundle over
the tile protocol, verify it, vote; the delta is final within a bounded time, every node serves
the new head, `blyan_generate` with a fixed seed then equals the single-process model with the
delta applied (and differs from before), and the attestation verifies offline (and fails with one
altered number)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chain import crypto
from node.app.devnet import find_free_ports as free_ports
from node.app.devnet import prepare_devnet, start_nodes, stop_nodes
from tests.node.app.test_devnet import client_of, final_height, reachable, send_transfer, wait_for

pytestmark = pytest.mark.slow

UP_S = 90.0
ROUND_S = 240.0
"""Submission to the head moving: commit, reveal, four verifications of the default 320-step bundle on two
cores, the round's close."""
PROMPT = "def add(a, b):"
SEEDS = (1, 2, 3, 4, 5, 6)
TOKENS = 32


def generate(data_dir: Path, seed: int) -> dict:
    return client_of(data_dir).call("blyan_generate", {"prompt": PROMPT, "max_tokens": TOKENS, "seed": seed,
                                                       "temperature": 0.8})


def blyan(*args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def claim_status(data_dir: Path, claim: str) -> dict | None:
    from chain.errors import BlyanError

    try:
        return client_of(data_dir).call("blyan_getClaim", {"claim": claim})
    except (BlyanError, OSError):
        return None


def test_contributor_trains_submits_validators_verify_and_the_network_serves_the_new_head(tmp_path: Path) -> None:
    dirs = prepare_devnet(tmp_path, 4, free_ports(4), free_ports(4))
    procs = start_nodes(dirs)
    try:
        deadline = time.monotonic() + UP_S
        for d in dirs:
            wait_for(f"{d.name} RPC and a peer", lambda d=d: reachable(d), deadline)
        warm = send_transfer(dirs[1], 1, crypto.PrivateKey.from_label("learning-test-recipient").address)
        for d in dirs:  # consensus and gossip work before the round starts (else the failure says so here)
            wait_for(f"a transfer final on {d.name}", lambda d=d: final_height(d, warm), deadline)
        before = [generate(dirs[2], seed) for seed in SEEDS]
        bundle = tmp_path / "bundle"
        trained = blyan("train", "--data-dir", str(dirs[1]), "--out", str(bundle), "--json")
        assert trained.returncode == 0, trained.stderr[-3000:]
        submitted = blyan("delta", "submit", str(bundle), "--data-dir", str(dirs[1]), "--json")
        assert submitted.returncode == 0, submitted.stderr[-3000:]
        claim = json.loads(submitted.stdout)["claim"]
        started = time.monotonic()
        for d in dirs:
            wait_for(f"claim accepted on {d.name}", lambda d=d: (s := claim_status(d, claim)) is not None
                     and s["status"] in ("accepted", "rejected", "expired"), started + ROUND_S)
        final = claim_status(dirs[0], claim)
        assert final["status"] == "accepted", final
        seconds = time.monotonic() - started
        assert final["new_loss"] < final["base_loss"]
        assert len(final["voters"]) >= 3  # > 2/3 of four equal stakes

        votes = blyan("pol", "votes", claim, "--data-dir", str(dirs[3]), "--json")
        assert votes.returncode == 0 and all(v["accepted"] for v in json.loads(votes.stdout)["votes"])

        # Every node serves the new head, and the network's model is the delta's.
        after = wait_for("generation on the new head", lambda: _generate_on_head(dirs, claim), started + ROUND_S)
        after = [after] + [generate(dirs[2], seed) for seed in SEEDS[1:]]
        assert any(a["tokens"] != b["tokens"] for a, b in zip(after, before, strict=True))  # a small delta
        for seed, answer in zip(SEEDS, after, strict=True):
            assert answer["tokens"] == _single_process_tokens(dirs[2], answer["prompt_tokens"], TOKENS, seed, 0.8)

        out = tmp_path / "attestation.json"
        exported = blyan("attest", "export", "--claim", claim, "--out", str(out), "--data-dir", str(dirs[3]))
        assert exported.returncode == 0, exported.stderr[-2000:]
        assert blyan("attest", "verify", str(out)).returncode == 0
        doc = json.loads(out.read_text())
        assert doc["metrics"]["new"]["validation_loss"] < doc["metrics"]["baseline"]["validation_loss"]
        doc["metrics"]["new"]["validation_loss"] += 0.001
        altered = tmp_path / "altered.json"
        altered.write_text(json.dumps(doc))
        refused = blyan("attest", "verify", str(altered))
        assert refused.returncode == 1 and "metrics.new.validation_loss" in refused.stderr + refused.stdout
        print(f"submission to head: {seconds:.1f} s")
    finally:
        codes = stop_nodes(procs)
    assert codes == [0, 0, 0, 0], [Path(d, "node.log").read_text()[-3000:] for d in dirs]
    for d in dirs:
        log = (d / "node.log").read_text()
        assert "Traceback" not in log, log[-4000:]


def _generate_on_head(dirs: list[Path], claim: str) -> dict | None:
    """Once every node that serves layer0.expert0 serves it at the claim's head (and one does),
    a generation through node 2."""
    from chain.errors import BlyanError

    try:
        hashes = [s["block_hash"] for d in dirs for s in client_of(d).call("blyan_experts")["serving"]
                  if (s["layer"], s["expert"]) == (0, 0)]
        if not hashes or set(hashes) != {claim}:
            return None
        return generate(dirs[2], SEEDS[0])
    except (BlyanError, OSError):
        return None


def _single_process_tokens(data_dir: Path, prompt: list[int], n: int, seed: int, temperature: float) -> list[int]:
    """The chain's model at its heads (deltas applied from the node's blobs) in this process."""
    import torch

    from node.cli.learning import load_materials
    from node.pol.data import load_base_model

    model = load_base_model(load_materials(data_dir)).eval()
    out = model.generate(torch.tensor([prompt]), n, temperature, torch.Generator().manual_seed(seed))
    return out[0, len(prompt):].tolist()


@pytest.mark.long
def test_validator_killed_during_a_round_restarts_and_catches_up(tmp_path: Path) -> None:
    """Node 3 is SIGKILLed before the submission: the other three validators (3/4 > 2/3 of the
    stake) verify and certify without it; restarted, it syncs the round's blocks, fetches the
    delta from peers, builds the new head and serves it."""
    import signal

    dirs = prepare_devnet(tmp_path, 4, free_ports(4), free_ports(4))
    procs = start_nodes(dirs)
    try:
        deadline = time.monotonic() + UP_S
        for d in dirs:
            wait_for(f"{d.name} RPC and a peer", lambda d=d: reachable(d), deadline)
        bundle = tmp_path / "bundle"
        trained = blyan("train", "--data-dir", str(dirs[1]), "--out", str(bundle), "--json")
        assert trained.returncode == 0, trained.stderr[-3000:]
        procs[3].send_signal(signal.SIGKILL)
        procs[3].wait(timeout=30)
        submitted = blyan("delta", "submit", str(bundle), "--data-dir", str(dirs[1]), "--json")
        assert submitted.returncode == 0, submitted.stderr[-3000:]
        claim = json.loads(submitted.stdout)["claim"]
        started = time.monotonic()
        for d in dirs[:3]:
            wait_for(f"accepted on {d.name} without node3", lambda d=d: (s := claim_status(d, claim)) is not None
                     and s["status"] == "accepted", started + ROUND_S)
        assert len(claim_status(dirs[0], claim)["voters"]) == 3
        procs[3] = start_nodes([dirs[3]])[0]
        wait_for("node3 back and caught up", lambda: (s := claim_status(dirs[3], claim)) is not None
                 and s["status"] == "accepted", started + 2 * ROUND_S)

        def serves_new_head() -> bool:
            from chain.errors import BlyanError

            try:
                serving = client_of(dirs[3]).call("blyan_experts")["serving"]
            except (BlyanError, OSError):
                return False
            return any((s["layer"], s["expert"]) == (0, 0) and s["block_hash"] == claim for s in serving)

        wait_for("node3 serving the new head", serves_new_head, started + 2 * ROUND_S)
        height = client_of(dirs[0]).call("blyan_getClaim", {"claim": claim})["applied_height"]
        roots = {client_of(d).call("blyan_getBlock", ["parameter", height])["header"]["state_root"] for d in dirs}
        assert len(roots) == 1
    finally:
        codes = stop_nodes(procs)
    assert codes == [0, 0, 0, 0], [Path(d, "node.log").read_text()[-3000:] for d in dirs]
