"""Four daemon processes on 127.0.0.1 over libp2p: a transfer sent to node 1 is final with the
same result on all four, and SIGTERM stops every node cleanly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from chain import codec, crypto
from chain.payloads import Transfer
from chain.types import CHAIN_REWARD, Transaction, TxBody
from node.app.devnet import find_free_ports as free_ports
from node.app.devnet import prepare_devnet, start_nodes, stop_nodes

pytestmark = pytest.mark.slow

DEADLINE_S = 90.0
KILL_DEADLINE_S = 180.0
"""The kill -9 test: start, a kill, a restart and its catch-up; under a loaded 2-core run (the
whole suite) the star devnet needed more than 90 s (issue 13: it has one hub)."""


def wait_for(what: str, condition, deadline: float):
    """Poll a condition across processes until it holds or the deadline passes."""
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def client_of(data_dir: Path):
    from node.api.client import RPCClient
    from node.cli.connect import find_rpc

    url, cookie = find_rpc(data_dir)
    return RPCClient(url, cookie)


def reachable(data_dir: Path) -> bool:
    from chain.errors import BlyanError

    try:
        return client_of(data_dir).call("blyan_status")["peers"] >= 1
    except (BlyanError, OSError):
        return False


def test_four_daemons_finalize_a_transfer_everywhere(tmp_path: Path) -> None:
    from genesis.devnet import faucet_key

    dirs = prepare_devnet(tmp_path, 4, free_ports(4), free_ports(4))
    procs = start_nodes(dirs)
    deadline = time.monotonic() + DEADLINE_S
    try:
        for d in dirs:
            wait_for(f"{d.name} RPC and a peer", lambda d=d: reachable(d), deadline)
        faucet = faucet_key()
        to = crypto.PrivateKey.from_label("devnet-test-recipient").address
        rpc1 = client_of(dirs[1])
        nonce = rpc1.call("blyan_getAccount", [crypto.format_address(faucet.address)])["nonces"]["reward"]["next_nonce"]
        body = TxBody(CHAIN_REWARD, faucet.public_key, nonce, Transfer(to, 12_345))
        tx = Transaction(body, faucet.sign("devnet", crypto.KIND_TX, codec.encode(body)))
        sent = rpc1.call("blyan_sendTransaction", [codec.encode(tx).hex()])
        assert sent["accepted"], sent
        finals = []
        for d in dirs:
            rpc = client_of(d)
            final = wait_for(f"final on {d.name}", lambda rpc=rpc: (lambda r: r if r["status"] == "final" else None)(
                rpc.call("blyan_getTransaction", ["reward", sent["tx_hash"]])), deadline)
            finals.append((final["height"], final["index"]))
            account = rpc.call("blyan_getAccount", [crypto.format_address(to)])
            assert account["balance"] == 12_345
        assert len(set(finals)) == 1
        heads = {client_of(d).call("blyan_getBlock", ["reward", finals[0][0]])["hash"] for d in dirs}
        assert len(heads) == 1
        import urllib.request

        url = client_of(dirs[2]).url
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert 'blyan_chain_height{chain="reward"}' in text and "blyan_peers" in text
        assert 'blyan_gossip_mesh_peers{topic="votes"}' in text and "blyan_peers_known" in text
        import subprocess
        import sys

        shown = subprocess.run([sys.executable, "-m", "node", "consensus", "--data-dir", str(dirs[2])],
                               capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert "reward" in shown.stdout and "height" in shown.stdout, shown.stdout
    finally:
        codes = stop_nodes(procs)
    assert codes == [0, 0, 0, 0], [Path(d, "node.log").read_text()[-2000:] for d in dirs]
    for d in dirs:
        log = (d / "node.log").read_text()
        assert "Traceback" not in log, log[-3000:]
        assert not (d / ".cookie").exists()


def send_transfer(data_dir: Path, amount: int, to: bytes) -> str:
    from genesis.devnet import faucet_key

    faucet = faucet_key()
    rpc = client_of(data_dir)
    nonce = rpc.call("blyan_getAccount", [crypto.format_address(faucet.address)])["nonces"]["reward"]["next_nonce"]
    body = TxBody(CHAIN_REWARD, faucet.public_key, nonce, Transfer(to, amount))
    tx = Transaction(body, faucet.sign("devnet", crypto.KIND_TX, codec.encode(body)))
    sent = rpc.call("blyan_sendTransaction", [codec.encode(tx).hex()])
    assert sent["accepted"], sent
    return sent["tx_hash"]


def final_height(data_dir: Path, tx_hash: str) -> int | None:
    from chain.errors import BlyanError

    try:
        found = client_of(data_dir).call("blyan_getTransaction", ["reward", tx_hash])
    except (BlyanError, OSError):
        return None
    return found["height"] if found["status"] == "final" else None


def test_kill_9_validator_others_go_on_and_it_rejoins(tmp_path: Path) -> None:
    import signal as _signal

    dirs = prepare_devnet(tmp_path, 4, free_ports(4), free_ports(4))
    procs = start_nodes(dirs)
    deadline = time.monotonic() + KILL_DEADLINE_S
    to = crypto.PrivateKey.from_label("devnet-test-recipient-2").address
    try:
        for d in dirs:
            wait_for(f"{d.name} RPC and a peer", lambda d=d: reachable(d), deadline)
        first = send_transfer(dirs[1], 1, to)
        for d in dirs:
            wait_for(f"first transfer final on {d.name}", lambda d=d: final_height(d, first), deadline)
        procs[3].send_signal(_signal.SIGKILL)
        procs[3].wait(timeout=30)
        second = send_transfer(dirs[1], 2, to)
        for d in dirs[:3]:
            wait_for(f"second transfer final on {d.name} without node3",
                     lambda d=d: final_height(d, second), deadline)
        procs[3] = start_nodes([dirs[3]])[0]
        wait_for("node3 back, synced past the second transfer",
                 lambda: final_height(dirs[3], second), deadline)
        third = send_transfer(dirs[3], 3, to)  # it rejoined: it takes part again
        heights = [wait_for(f"third final on {d.name}", lambda d=d: final_height(d, third), deadline)
                   for d in dirs]
        assert len(set(heights)) == 1
        roots = {client_of(d).call("blyan_getBlock", ["reward", heights[0]])["header"]["state_root"] for d in dirs}
        assert len(roots) == 1
    finally:
        codes = stop_nodes(procs)
    assert codes == [0, 0, 0, 0], [Path(d, "node.log").read_text()[-2000:] for d in dirs]


def test_node_of_another_genesis_is_refused(tmp_path: Path) -> None:
    import json
    import urllib.request
    from dataclasses import replace as _replace

    from node.app.config import CONFIG_FILE, P2PConfig, load_config, save_config

    base = free_ports(2)
    dirs = prepare_devnet(tmp_path / "net", 2, base, free_ports(2))
    stranger = prepare_devnet(tmp_path / "other", 1, free_ports(1), free_ports(1))[0]  # another genesis
    (stranger / "node.key").unlink()  # its own identity (the dev key 0 is node0's)
    crypto.save_key(crypto.PrivateKey.from_label("devnet-stranger"), stranger / "node.key")
    config = load_config(stranger / CONFIG_FILE)
    boot = load_config(dirs[1] / CONFIG_FILE).p2p.bootstrap  # node 0 of the real devnet
    save_config(_replace(config, p2p=P2PConfig(listen=config.p2p.listen, bootstrap=boot)), stranger / CONFIG_FILE)
    procs = start_nodes(dirs)
    deadline = time.monotonic() + DEADLINE_S
    try:
        for d in dirs:
            wait_for(f"{d.name} up", lambda d=d: reachable(d), deadline)
        procs += start_nodes([stranger])
        wait_for("the stranger's RPC", lambda: (stranger / "node.json").exists(), deadline)
        stranger_id = json.loads((stranger / "node.json").read_text())["peer_id"]
        def penalties(data_dir: Path) -> float:
            url = client_of(data_dir).url.rstrip("/") + "/metrics"
            with urllib.request.urlopen(url, timeout=10) as resp:
                text = resp.read().decode()
            found = [ln for ln in text.splitlines() if ln.startswith("blyan_peer_penalties_total ")]
            return float(found[0].split()[1]) if found else 0.0

        # Whichever asks first refuses the other: node0's handshake check, or the stranger's fast
        # sync, which checks a peer's genesis before asking it for anything.
        wait_for("one side refusing the other", lambda: penalties(dirs[0]) >= 1 or
                 "peer is of network 'devnet'" in (stranger / "node.log").read_text(), deadline)
        wait_for("the stranger disconnected", lambda: stranger_id not in
                 {p["id"] for p in client_of(dirs[0]).call("blyan_peers")}, deadline)
        assert client_of(stranger).call("blyan_status")["chains"]["reward"]["height"] == 0
    finally:
        codes = stop_nodes(procs)
    assert codes[:2] == [0, 0]


def test_late_non_validator_fast_syncs_to_the_same_state(tmp_path: Path) -> None:
    from dataclasses import replace as _replace

    from chain.blobs import BlobStore
    from node.api.config import RPCConfig
    from node.app.config import BLOBS_DIR, CONFIG_FILE, P2PConfig, load_config, save_config
    from node.app.datadir import init_data_dir
    from node.app.devnet import DEVNET_PACT_FILE
    from node.sync.config import SyncConfig

    dirs = prepare_devnet(tmp_path, 4, free_ports(4), free_ports(4))
    procs = start_nodes(dirs)
    deadline = time.monotonic() + DEADLINE_S
    to = crypto.PrivateKey.from_label("devnet-test-recipient-3").address
    try:
        for d in dirs:
            wait_for(f"{d.name} up", lambda d=d: reachable(d), deadline)
        sent = [send_transfer(dirs[1], 1 + i, to) for i in range(3)]  # one node: nonces in order
        tops = [wait_for("transfer final", lambda h=h: final_height(dirs[0], h), deadline) for h in sent]
        late = tmp_path / "late"
        init_data_dir(late, "devnet", tmp_path / DEVNET_PACT_FILE, crypto.PrivateKey.from_label("late-joiner"))
        for digest in BlobStore(dirs[0] / BLOBS_DIR).iter_ids():
            BlobStore(late / BLOBS_DIR).put(BlobStore(dirs[0] / BLOBS_DIR).get(digest))
        config = load_config(late / CONFIG_FILE)
        boot = load_config(dirs[1] / CONFIG_FILE).p2p.bootstrap
        save_config(_replace(config, p2p=P2PConfig(listen=f"/ip4/127.0.0.1/tcp/{free_ports(1)}", bootstrap=boot),
                             rpc=RPCConfig(port=free_ports(1)), sync=SyncConfig(fast=True, fast_min_gap=1)),
                    late / CONFIG_FILE)
        procs += start_nodes([late])
        top = max(tops)
        late_rpc = wait_for("the late node's RPC", lambda: reachable(late) and client_of(late), deadline)
        status = wait_for("the late node synced", lambda: (lambda st: st if not st["syncing"] and
                          st["chains"]["reward"]["height"] >= top else None)(late_rpc.call("blyan_status")), deadline)
        assert status["is_validator"] is False
        # Fast: it holds no block below its snapshot, and the recipient's balance came with the state.
        assert late_rpc.call("blyan_getBlock", ["reward", 1]) is None, (late / "node.log").read_text()[-3000:]
        assert client_of(dirs[0]).call("blyan_getBlock", ["reward", 1]) is not None
        assert late_rpc.call("blyan_getAccount", [crypto.format_address(to)])["balance"] == 6
        height = status["chains"]["reward"]["height"]
        ours = late_rpc.call("blyan_getBlock", ["reward", height])["header"]["state_root"]
        theirs = client_of(dirs[0]).call("blyan_getBlock", ["reward", height])["header"]["state_root"]
        assert ours == theirs
    finally:
        codes = stop_nodes(procs)
    assert codes == [0, 0, 0, 0, 0]
