"""`blyan devnet`: N validators on 127.0.0.1 as separate daemon processes, sharing a fresh genesis.

The validator keys are the public devnet keys (`genesis.devnet.dev_validator_key`): INSECURE by
design, for a local network only.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from chain import codec
from chain.blobs import BlobStore
from chain.crypto import save_key
from chain.tensors import ModelSpec
from genesis.devnet import build_devnet_pact, dev_validator_key, faucet_key
from node.api.config import COOKIE_FILE, RPCConfig
from node.app.config import BLOBS_DIR, CONFIG_FILE, P2PConfig, load_config, save_config
from node.app.datadir import init_data_dir
from node.experts.config import ExpertsConfig
from p2p.libp2p_identity import compute_peer_id

logger = logging.getLogger(__name__)

DEVNET_PACT_FILE = "devnet.pact"


def assign_experts(spec: ModelSpec, nodes: int, replicas: int = 2) -> list[tuple[str, ...]]:
    """Which experts each devnet node serves: expert j of every layer on nodes j, j-1, ... (mod
    nodes), `replicas` of them; node i serves experts {i, i+1} when nodes == n_experts. With three
    nodes or more (and two replicas) no node holds every expert."""
    replicas = max(1, min(replicas, nodes))
    served: list[list[str]] = [[] for _ in range(nodes)]
    for layer in range(spec.n_layers):
        for expert in range(spec.n_experts):
            for r in range(replicas):
                served[(expert - r) % nodes].append(f"layer{layer}.expert{expert}")
    return [tuple(dict.fromkeys(names)) for names in served]


def find_free_ports(n: int) -> int:
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


def prepare_devnet(root: Path, nodes: int, base_port: int = 30400, rpc_base_port: int = 18600) -> list[Path]:
    """Data dirs `root/node0..` for a devnet of `nodes` validators (idempotent)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    blobs: list[bytes] = []
    pact = build_devnet_pact(n_validators=nodes, store_blob=blobs.append)
    pact_path = root / DEVNET_PACT_FILE
    encoded = codec.encode(pact)
    if not pact_path.exists() or pact_path.read_bytes() != encoded:
        pact_path.write_bytes(encoded)
    faucet_file = root / "faucet.key"
    if not faucet_file.exists():  # the funded dev account, for `blyan tx transfer --key`
        save_key(faucet_key(), faucet_file)
    boot_key = dev_validator_key(0)
    bootstrap = f"/ip4/127.0.0.1/tcp/{base_port}/p2p/{compute_peer_id(boot_key.seed)}"
    dirs = []
    for i in range(nodes):
        data_dir = root / f"node{i}"
        init_data_dir(data_dir, pact.network_id, pact_path, dev_validator_key(i))
        store = BlobStore(data_dir / BLOBS_DIR)
        for blob in blobs:
            store.put(blob)
        config = load_config(data_dir / CONFIG_FILE)
        config = replace(
            config,
            moniker=f"devnet-{i}",
            p2p=P2PConfig(listen=f"/ip4/127.0.0.1/tcp/{base_port + i}", bootstrap=() if i == 0 else (bootstrap,)),
            rpc=RPCConfig(host="127.0.0.1", port=rpc_base_port + i),
            experts=ExpertsConfig(serve=assign_experts(pact.model, nodes)[i] or ("none",), announce_interval_s=2.0),
        )
        save_config(config, data_dir / CONFIG_FILE)
        dirs.append(data_dir)
    return dirs


def start_nodes(dirs: list[Path], log_level: str = "info") -> list[subprocess.Popen]:
    procs = []
    for data_dir in dirs:
        log = open(data_dir / "node.log", "ab")  # noqa: SIM115 - owned by the child's lifetime
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "node", "--log-level", log_level, "node", "run", "--data-dir", str(data_dir)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        ))
    return procs


def stop_nodes(procs: list[subprocess.Popen], timeout: float = 30.0) -> list[int]:
    """SIGTERM every node (each stops cleanly), then wait; SIGKILL what outlives `timeout`."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return codes


def describe(dirs: list[Path]) -> list[dict]:
    out = []
    for data_dir in dirs:
        config = load_config(data_dir / CONFIG_FILE)
        out.append({
            "data_dir": str(data_dir),
            "rpc": f"http://{config.rpc.host}:{config.rpc.port}",
            "cookie": str(data_dir / COOKIE_FILE),
            "p2p": config.p2p.listen,
            "log": str(data_dir / "node.log"),
        })
    return out


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_devnet(root: Path, nodes: int, base_port: int, rpc_base_port: int, echo: Callable[[str], None]) -> int:
    """Prepare, start, print, and stay in the foreground until Ctrl-C, SIGTERM or a node dies;
    then stop every node cleanly."""
    signal.signal(signal.SIGTERM, _interrupt)  # a `kill` of the devnet stops its nodes too
    dirs = prepare_devnet(root, nodes, base_port, rpc_base_port)
    procs = start_nodes(dirs)
    echo(f"devnet: {nodes} validators on 127.0.0.1 (dev keys, INSECURE), data in {root}")
    for i, info in enumerate(describe(dirs)):
        echo(f"  node{i}  rpc {info['rpc']}  cookie {info['cookie']}  log {info['log']}")
    echo(f"  faucet key (funded, INSECURE): {Path(root) / 'faucet.key'}")
    echo("Ctrl-C stops every node cleanly.")
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        dead = [i for i, p in enumerate(procs) if p.poll() is not None]
        echo(f"devnet: node(s) {dead} exited; stopping the others (see their node.log)")
        return 1
    except KeyboardInterrupt:
        echo("devnet: stopping")
        return 0
    finally:
        codes = stop_nodes(procs)
        echo(f"devnet: stopped (exit codes {codes})")

