"""Four daemon processes on 127.0.0.1 over libp2p: a transfer sent to node 1 is final with the
same result on all four, and SIGTERM stops every node cleanly."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from chain import codec, crypto
from chain.payloads import Transfer
from chain.types import CHAIN_REWARD, Transaction, TxBody
from node.devnet import prepare_devnet, start_nodes, stop_nodes

pytestmark = pytest.mark.slow

DEADLINE_S = 90.0


def free_ports(n: int) -> int:
    """A base port with n free consecutive ports after it (checked by binding)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + n >= 65000:
            continue
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                s.bind(("127.0.0.1", base + i))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def wait_for(what: str, condition, deadline: float):  # noqa: ANN001, ANN201
    """Poll a condition across processes until it holds or the deadline passes."""
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def client_of(data_dir: Path):  # noqa: ANN201
    from node.rpc_client import RPCClient, find_rpc

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
    finally:
        codes = stop_nodes(procs)
    assert codes == [0, 0, 0, 0], [Path(d, "node.log").read_text()[-2000:] for d in dirs]
    for d in dirs:
        log = (d / "node.log").read_text()
        assert "Traceback" not in log, log[-3000:]
        assert not (d / ".cookie").exists()
