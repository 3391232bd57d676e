"""`blyan devnet`: N validators on 127.0.0.1 as separate daemon processes, sharing a fresh genesis.

The validator keys are the public devnet keys (`genesis.devnet.dev_validator_key`): INSECURE by
design, for a local network only.

The supervisor owns its nodes' lives: SIGINT, SIGTERM or SIGHUP stops them all (SIGTERM each,
a bounded wait, SIGKILL); should the supervisor die without that, SIGKILL included, each node
sees its lifeline break (`node.app.lifeline`) and stops. Ports already taken are named, with the
process holding them, before any node starts (`node.app.ports`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from chain import codec
from chain.blobs import BlobStore
from chain.crypto import save_key
from chain.errors import ConfigError
from chain.tensors import ModelSpec
from genesis.devnet import build_devnet_pact, dev_validator_key, faucet_key
from genesis.presets import DEVNET, load_preset
from node.api.config import COOKIE_FILE, RPCConfig
from node.app.config import BLOBS_DIR, CONFIG_FILE, GENESIS_MINHASH_FILE, P2PConfig, load_config, save_config
from node.app.datadir import init_data_dir
from node.app.lifeline import Lifeline
from node.app.ports import validate_ports_free
from node.data.held import HeldDatasets
from node.experts.config import ExpertsConfig
from node.pol.data import blob_getter
from p2p.libp2p_identity import compute_peer_id

logger = logging.getLogger(__name__)

DEVNET_PACT_FILE = "devnet.pact"
STOP_TIMEOUT_S = 30.0
"""How long the nodes have to stop after SIGTERM before SIGKILL."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
WATCH_INTERVAL_S = 5.0
"""The supervisor wakes on a signal or a child's exit; this is only a backstop."""


LAYOUTS = ("ring", "ranges")
"""Devnet expert layouts: "ring" (the default, below) and "ranges" (whole layer ranges, for pipelines)."""


def assign_experts(spec: ModelSpec, nodes: int, replicas: int = 2, layout: str = "ring") -> list[tuple[str, ...]]:
    """Which experts each devnet node serves. "ring": expert j of every layer on nodes j, j-1,
    ... (mod nodes), `replicas` of them; node i serves experts {i, i+1} when nodes == n_experts.
    With three nodes or more (and two replicas) no node holds every expert. "ranges": the layers
    cut into nodes // replicas contiguous ranges (at most n_layers), node i serving every expert
    of range i mod that number: each node a pipeline stage, `replicas` of each (no node holds
    every expert once there are two ranges)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"devnet layout {layout!r}: one of {', '.join(LAYOUTS)}")
    replicas = max(1, min(replicas, nodes))
    if layout == "ranges":
        return _assign_ranges(spec, nodes, replicas)
    served: list[list[str]] = [[] for _ in range(nodes)]
    for layer in range(spec.n_layers):
        for expert in range(spec.n_experts):
            for r in range(replicas):
                served[(expert - r) % nodes].append(f"layer{layer}.expert{expert}")
    return [tuple(dict.fromkeys(names)) for names in served]


def _assign_ranges(spec: ModelSpec, nodes: int, replicas: int) -> list[tuple[str, ...]]:
    ranges = max(1, min(nodes // replicas, spec.n_layers))
    bounds = [spec.n_layers * r // ranges for r in range(ranges + 1)]
    return [tuple(f"layer{layer}.expert{e}" for layer in range(bounds[i % ranges], bounds[i % ranges + 1])
                  for e in range(spec.n_experts)) for i in range(nodes)]


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


DEVNET_TARGET_PEERS = 5
"""Connections per devnet node: enough for meshes that survive any one node, few enough that 16
daemons on 2 cores spend their time on blocks, not on gossip heartbeats."""


DEVNET_ANNOUNCE_S = 5.0
"""Expert announcements: sooner than the default 10 s, so that a fresh devnet serves quickly."""


def devnet_bootstrap(addrs: list[str], i: int) -> tuple[str, ...]:
    """Node i's bootstrap peers: up to three earlier nodes (0, its predecessor and the node
    halfway back), so that no one node is everyone's only way in, and peer exchange finds the
    rest. Node 0 lists nodes 1 and 2 (they dial it anyway; the list brings a restarted node 0
    back even when the others are at their target)."""
    candidates = (1, 2) if i == 0 else (0, i - 1, (i - 1) // 2)
    picks = dict.fromkeys(j for j in candidates if 0 <= j < len(addrs) and j != i)
    return tuple(addrs[j] for j in picks)


def prepare_devnet(root: Path, nodes: int, base_port: int = 30400, rpc_base_port: int = 18600,
                   layout: str = "ring", preset: str = DEVNET) -> list[Path]:
    """Data dirs `root/node0..` for a devnet of `nodes` validators (idempotent); experts by `layout`,
    and the model of a `genesis.presets` preset ("bench": larger random experts, for speed only)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    blobs: list[bytes] = []
    pact = build_devnet_pact(n_validators=nodes, store_blob=blobs.append, prebuilt=load_preset(preset))
    pact_path = root / DEVNET_PACT_FILE
    encoded = codec.encode(pact)
    if not pact_path.exists() or pact_path.read_bytes() != encoded:
        pact_path.write_bytes(encoded)
    faucet_file = root / "faucet.key"
    if not faucet_file.exists():  # the funded dev account, for `blyan tx transfer --key`
        save_key(faucet_key(), faucet_file)
    addrs = [
        f"/ip4/127.0.0.1/tcp/{base_port + i}/p2p/{compute_peer_id(dev_validator_key(i).seed)}"
        for i in range(nodes)
    ]
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
            p2p=P2PConfig(listen=f"/ip4/127.0.0.1/tcp/{base_port + i}", bootstrap=devnet_bootstrap(addrs, i),
                          target_peers=DEVNET_TARGET_PEERS),
            rpc=RPCConfig(host="127.0.0.1", port=rpc_base_port + i),
            experts=ExpertsConfig(serve=assign_experts(pact.model, nodes, layout=layout)[i] or ("none",),
                                  announce_interval_s=DEVNET_ANNOUNCE_S),
        )
        save_config(config, data_dir / CONFIG_FILE)
        dirs.append(data_dir)
    share_genesis_minhash(pact, dirs)
    return dirs


def share_genesis_minhash(pact: Any, dirs: list[Path]) -> None:
    """The genesis datasets' MinHash signatures, computed once here and copied to every node.
    Each daemon would otherwise compute the same ones at start: 16 daemons on 2 cores spent
    their first minute on it, and consensus crawled through round after round meanwhile."""
    if not dirs:
        return
    first = dirs[0] / GENESIS_MINHASH_FILE
    HeldDatasets.from_genesis(pact, blob_getter(BlobStore(dirs[0] / BLOBS_DIR)), first)  # reads it if current
    if not first.exists():  # nothing to share (no genesis dataset could be read)
        return
    data = first.read_bytes()
    for data_dir in dirs[1:]:
        target = data_dir / GENESIS_MINHASH_FILE
        if not target.exists() or target.read_bytes() != data:
            shutil.copyfile(first, target)


def start_nodes(dirs: list[Path], log_level: str = "info", lifeline: Lifeline | None = None) -> list[subprocess.Popen]:
    """A daemon per data dir, each in its own session (a terminal's Ctrl-C reaches the supervisor,
    which stops them in order) and each holding `lifeline` (default: this process's), so that
    it stops when the process that started it dies, however it dies."""
    lifeline = lifeline or Lifeline.of_this_process()
    procs = []
    for data_dir in dirs:
        with open(data_dir / "node.log", "ab") as log:  # the child has its own copy of the fd
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "node", "--log-level", log_level, "node", "run", "--data-dir", str(data_dir)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env=lifeline.child_env(), pass_fds=lifeline.pass_fds,
            ))
    return procs


def stop_nodes(procs: list[subprocess.Popen], timeout: float = STOP_TIMEOUT_S) -> list[int]:
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
            logger.warning("node pid %d still running %.0f s after SIGTERM: SIGKILL", proc.pid, timeout)
            proc.kill()
            codes.append(proc.wait())
    return codes


def devnet_ports(nodes: int, base_port: int, rpc_base_port: int) -> dict[int, str]:
    """Every port a devnet's nodes listen on: port -> what for."""
    ports = {base_port + i: f"node{i} p2p" for i in range(nodes)}
    ports.update({rpc_base_port + i: f"node{i} rpc" for i in range(nodes)})
    return ports


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


def run_devnet(root: Path, nodes: int, base_port: int, rpc_base_port: int, echo: Callable[[str], None],
               stop_timeout: float = STOP_TIMEOUT_S, layout: str = "ring", preset: str = DEVNET) -> int:
    """Prepare, start, print, and stay in the foreground until SIGINT, SIGTERM or SIGHUP (from a
    terminal, `kill` or a service manager) or until a node dies; then stop every node: SIGTERM,
    `stop_timeout`, SIGKILL. If this process dies without doing so (SIGKILL), the nodes' lifeline
    breaks and they stop by themselves. Taken ports are reported before anything starts."""
    if len(devnet_ports(nodes, base_port, rpc_base_port)) < 2 * nodes:
        raise ConfigError(f"the p2p ports {base_port}.. and the rpc ports {rpc_base_port}.. of {nodes} nodes overlap")
    validate_ports_free(devnet_ports(nodes, base_port, rpc_base_port),
                        hint="Stop it, or choose other ports with --base-port and --rpc-base-port")
    with StopSignals() as stop, contextlib.closing(Lifeline()) as lifeline:
        dirs = prepare_devnet(root, nodes, base_port, rpc_base_port, layout, preset)
        procs: list[subprocess.Popen] = []
        try:
            for data_dir in dirs:
                if stop.received is None:  # a stop asked for while starting: start no more
                    procs += start_nodes([data_dir], lifeline=lifeline)
            if stop.received is None:
                _print_devnet(root, dirs, echo)
            return _supervise(procs, stop, echo)
        finally:
            codes = stop_nodes(procs, stop_timeout)
            echo(f"devnet: stopped (exit codes {codes})")


def _print_devnet(root: Path, dirs: list[Path], echo: Callable[[str], None]) -> None:
    echo(f"devnet: {len(dirs)} validators on 127.0.0.1 (dev keys, INSECURE), data in {root}")
    for i, info in enumerate(describe(dirs)):
        echo(f"  node{i}  rpc {info['rpc']}  cookie {info['cookie']}  log {info['log']}")
    echo(f"  faucet key (funded, INSECURE): {Path(root) / 'faucet.key'}")
    echo("Ctrl-C (or SIGTERM) stops every node cleanly.")


def _supervise(procs: list[subprocess.Popen], stop: StopSignals, echo: Callable[[str], None]) -> int:
    """Wait for a stop signal (0) or a node's exit (1)."""
    while stop.received is None:
        dead = [i for i, p in enumerate(procs) if p.poll() is not None]
        if dead:
            echo(f"devnet: node(s) {dead} exited; stopping the others (see their node.log)")
            return 1
        stop.wait(WATCH_INTERVAL_S)
    echo(f"devnet: {signal.Signals(stop.received).name}: stopping")
    return 0


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP recorded (not raised: a signal never interrupts the stop of the
    nodes half-way), and woken on, with SIGCHLD, through a self-pipe (`signal.set_wakeup_fd`).

    SIGINT is handled even when this process started with it ignored, as a background job of a
    script is: `kill -INT` of the devnet then stops it as Ctrl-C does."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._saved_wakeup = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            self._saved[signum] = signal.signal(signum, self._on_stop)
        self._saved[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, _on_child)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._saved_wakeup)
        os.close(self._r)
        os.close(self._w)

    def _on_stop(self, signum: int, frame: object) -> None:
        if self.received is None:
            self.received = signum

    def wait(self, timeout: float) -> None:
        """Until a signal arrives (a stop, or a child's exit) or `timeout` passes."""
        ready, _, _ = select.select([self._r], [], [], timeout)
        if ready:
            try:
                os.read(self._r, 512)
            except BlockingIOError:
                pass


def _on_child(signum: int, frame: object) -> None:
    """SIGCHLD: nothing to do here; its byte on the wakeup pipe ends `StopSignals.wait`."""
