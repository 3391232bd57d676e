"""Datasets on four daemon processes over libp2p, as a contributor submits them from the README:
`blyan dataset submit FILE` on node 1; the four validators fetch the content from node 1,
rerun the L0 audit, score and vote. A clean file is approved with a tier; a file with e-mail
addresses and card numbers is refused by the policy with counts, and no raw value reaches the
chain, the RPC or any log; a near-duplicate of a genesis file is refused naming it; a forged
report (findings cleared on content that has them) is rejected by the validators' reruns."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chain import codec, crypto
from chain.dataset import solve_pow
from chain.pact import GenesisPact
from chain.payloads import SubmitDataset
from chain.types import CHAIN_DATASET, Transaction, TxBody
from chain.unixfs import compute_dataset_cid
from genesis.corpus import get_stdlib_root
from node.app.config import DATASETS_DIR, PACT_FILE
from node.app.datadir import load_pact_file
from node.app.devnet import find_free_ports as free_ports
from node.app.devnet import prepare_devnet, start_nodes, stop_nodes
from node.data.content import DatasetStore
from node.data.l0.audit import run_l0_audit
from node.data.l0.minhash import NearDuplicateIndex
from node.sim.data import forge_clean, make_luhn_card
from tests.node.app.test_devnet import client_of, reachable, wait_for

pytestmark = pytest.mark.slow

UP_S = 90.0
DECIDED_S = 150.0


def blyan(*args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def dataset(data_dir: Path, cid: str) -> dict | None:
    from chain.errors import BlyanError

    try:
        return client_of(data_dir).call("blyan_getDataset", {"cid": cid})
    except (BlyanError, OSError):
        return None


def decided(data_dir: Path, cid: str) -> dict | None:
    info = dataset(data_dir, cid)
    return info if info is not None and info["status"] in ("approved", "rejected") else None


def fresh_python_file(pact: GenesisPact) -> bytes:
    """A stdlib source the genesis corpus did not take (so no near-duplicate of it is held)."""
    held = {ds.cid for ds in pact.datasets}
    root = get_stdlib_root()
    for path in sorted((root / "email").glob("*.py")) + sorted((root / "json").glob("*.py")):
        data = path.read_bytes()
        if 2_000 < len(data) < 60_000 and compute_dataset_cid(data) not in held and b"@" not in data:
            return data
    pytest.skip("every candidate stdlib file is in the genesis corpus")


def pii_file(rng: random.Random) -> tuple[bytes, list[str]]:
    secrets = [f"jane.doe{i}@fastmail.fm" for i in range(5)] + [make_luhn_card(rng) for _ in range(3)]
    lines = [f"Customer {i} wrote about the garden and the river on a quiet morning." for i in range(40)]
    for i, value in enumerate(secrets):
        lines[i * 4] += f" Contact: {value}"
    return ("\n".join(lines) + "\n").encode(), secrets


def test_datasets_are_audited_voted_and_refused_by_policy(tmp_path: Path) -> None:
    dirs = prepare_devnet(tmp_path, 4, free_ports(4), free_ports(4))
    pact = load_pact_file(dirs[0] / PACT_FILE)
    procs = start_nodes(dirs)
    try:
        deadline = time.monotonic() + UP_S
        for d in dirs:
            wait_for(f"{d.name} RPC and a peer", lambda d=d: reachable(d), deadline)

        clean = tmp_path / "clean.py"
        clean.write_bytes(fresh_python_file(pact))
        cid = compute_dataset_cid(clean.read_bytes())
        cli_cid = blyan("dataset", "cid", str(clean))
        assert cli_cid.returncode == 0 and cli_cid.stdout.strip() == cid
        started = time.monotonic()
        sub = blyan("dataset", "submit", str(clean), "--format", "text/x-python", "--license", "PSF-2.0",
                    "--data-dir", str(dirs[1]), "--json")
        assert sub.returncode == 0, sub.stderr[-3000:]
        job = json.loads(sub.stdout)
        assert job["stage"] == "submitted" and job["cid"] == cid and job["report"]["records"] > 0
        for d in dirs:
            wait_for(f"{cid} decided on {d.name}", lambda d=d: decided(d, cid), started + DECIDED_S)
        info = dataset(dirs[3], cid)
        assert info["status"] == "approved", info
        assert info["tier"] in ("experimental", "silver", "gold")
        assert len(info["audits"]) >= 3 and all(a["passed"] for a in info["audits"])
        assert len(info["tier_votes"]) >= 3
        seconds = time.monotonic() - started
        # Every validator audited it and got the submitted report; 3 of the 4 tier votes close the
        # vote, so the last validator may find it closed (it then owes nothing and says so).
        mine = [dataset(d, cid)["this_validator"] for d in dirs]
        assert all(m["passed"] and m["report_hash"] == info["report_hash"] for m in mine), mine
        assert sum(m["vote_sent"] for m in mine) >= 3, mine
        status = blyan("dataset", "status", cid, "--data-dir", str(dirs[0]))
        assert status.returncode == 0 and "approved" in status.stdout, status.stderr
        listed = json.loads(blyan("dataset", "list", "--status", "approved", "--data-dir", str(dirs[0]),
                                  "--json").stdout)
        assert cid in [r["cid"] for r in listed]

        # personal data: refused by the contributor's node, with counts only
        rng = random.Random(7)
        data, secrets = pii_file(rng)
        pii = tmp_path / "customers.txt"
        pii.write_bytes(data)
        refused = blyan("dataset", "submit", str(pii), "--format", "text", "--license", "CC-BY-4.0",
                        "--data-dir", str(dirs[1]), "--json")
        assert refused.returncode != 0
        assert "personal data" in refused.stderr and "5 email" in refused.stderr, refused.stderr[-2000:]
        for value in secrets:
            assert value not in refused.stdout + refused.stderr

        # a near-duplicate of a genesis file: refused, naming it
        genesis_ds = next(ds for ds in pact.datasets if ds.role == "train" and 8_000 < ds.size < 60_000)
        source = next(p for p in get_stdlib_root().rglob("*.py") if p.stat().st_size == genesis_ds.size
                      and compute_dataset_cid(p.read_bytes()) == genesis_ds.cid)
        lines = source.read_text().splitlines()
        lines[len(lines) // 2] = "# a line changed by the contributor"
        near = tmp_path / "near.py"
        near.write_text("\n".join(lines) + "\n")
        refused = blyan("dataset", "submit", str(near), "--format", "text/x-python", "--license", "PSF-2.0",
                        "--data-dir", str(dirs[1]))
        assert refused.returncode != 0 and f"near-duplicate of {genesis_ds.cid}" in refused.stderr, refused.stderr

        # a forged report: the content has personal data, the report says it has none
        forged_data, forged_secrets = pii_file(random.Random(8))
        forged_cid = submit_forged(dirs, pact, forged_data)
        for d in dirs:
            wait_for(f"forged {forged_cid} decided on {d.name}", lambda d=d: decided(d, forged_cid),
                     time.monotonic() + DECIDED_S)
        forged = dataset(dirs[0], forged_cid)
        assert forged["status"] == "rejected", forged
        assert sum(not a["passed"] for a in forged["audits"]) >= 2
    finally:
        stop_nodes(procs)
    for d in dirs:  # no raw personal data in any log
        log = (d / "node.log").read_text(errors="replace")
        for value in secrets + forged_secrets:
            assert value not in log, f"{value} in {d.name}'s log"
    print(f"clean dataset approved in {seconds:.1f} s")


def submit_forged(dirs: list[Path], pact: GenesisPact, data: bytes) -> str:
    """A byzantine contributor: the real report with its findings cleared, the content held by
    node 1 (as its own node would), the transaction sent through node 0."""
    cid = compute_dataset_cid(data)
    rpc = client_of(dirs[0])
    head = rpc.call("blyan_getBlock", {"chain": "dataset", "block": rpc.call("blyan_status")["chains"]["dataset"]
                                       ["height"]})
    height, anchor = head["header"]["height"], bytes.fromhex(head["hash"])
    index = NearDuplicateIndex(pact.params.dataset.audit)  # no held dataset resembles made-up customers
    report = forge_clean(run_l0_audit(data, cid=cid, format="text", anchor_height=height,
                                      params=pact.params.dataset.audit, index=index))
    assert report.pii == ()
    key = crypto.PrivateKey.from_label("forger")
    nonce = solve_pow(pact.network_id, key.address, cid, anchor, pact.params.dataset.pow_difficulty_bits)
    payload = SubmitDataset(cid, len(data), "text", "CC-BY-4.0", height, anchor, nonce, report)
    body = TxBody(CHAIN_DATASET, key.public_key, 0, payload)
    tx = Transaction(body, key.sign(pact.network_id, crypto.KIND_TX, codec.encode(body)))
    DatasetStore(dirs[1] / DATASETS_DIR).put_verified(cid, data)
    sent = rpc.call("blyan_sendTransaction", [codec.encode(tx).hex()])
    assert sent["accepted"], sent
    return cid
