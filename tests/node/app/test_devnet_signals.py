"""`blyan devnet` as an operator runs it, a process of its own: SIGTERM and SIGINT sent to it
alone stop every node cleanly; SIGKILL of it stops them too (their lifeline breaks); a port
already taken is reported with the port and its holder before anything starts.

Every test's devnet runs in a session of its own; the fixture kills that process group and any
process still naming the test's directory at teardown, whatever the outcome."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from node.app.devnet import find_free_ports
from node.app.ports import is_port_free
from node.cli.main import main
from tests.node.app.test_devnet import wait_for

pytestmark = pytest.mark.slow

NODES = 2
UP_DEADLINE_S = 120.0
STOP_DEADLINE_S = 60.0


@dataclass
class Devnet:
    root: Path
    proc: subprocess.Popen
    ports: list[int]

    def node_dirs(self) -> list[Path]:
        return [self.root / f"node{i}" for i in range(NODES)]

    def wait_until_up(self) -> list[int]:
        """The nodes' pids, once each has written its node.json (RPC bound, services running)."""
        deadline = time.monotonic() + UP_DEADLINE_S
        for d in self.node_dirs():
            wait_for(f"{d.name} up (devnet output: {self.output()[-2000:]})",
                     lambda d=d: (d / "node.json").exists() or self.proc.poll() is not None, deadline)
            assert self.proc.poll() is None, self.output()
        return [json.loads((d / "node.json").read_text())["pid"] for d in self.node_dirs()]

    def output(self) -> str:
        return (self.root.parent / "devnet.out").read_text(errors="replace")

    def node_log(self, i: int) -> str:
        return (self.root / f"node{i}" / "node.log").read_text(errors="replace")


def processes_naming(path: Path) -> list[int]:
    """Pids of live processes whose command line mentions `path` (ours excepted)."""
    needle, pids = str(path).encode(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes() and not is_gone(int(entry.name)):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def is_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its new parent has not reaped yet."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return fields[0] in ("Z", "X")


def wait_gone(pids: list[int], deadline: float) -> None:
    """Until every pid has exited (waited on through a pidfd where the OS has them)."""
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # gone already, or no pidfds here
            wait_for(f"pid {pid} to exit", lambda pid=pid: is_gone(pid), deadline)
            continue
        try:
            select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(fd)
        assert is_gone(pid), f"node pid {pid} still running"


@pytest.fixture
def devnet(tmp_path: Path) -> Iterator[Callable[..., Devnet]]:
    started: list[Devnet] = []

    def start(ignore_sigint: bool = False) -> Devnet:
        base = find_free_ports(2 * NODES)
        argv = [sys.executable, "-m", "node", "devnet", "--nodes", str(NODES), "--data-dir", str(tmp_path / "net"),
                "--base-port", str(base), "--rpc-base-port", str(base + NODES)]
        if ignore_sigint:  # as a background job of a script starts: SIGINT ignored
            argv = ["sh", "-c", "trap '' INT; exec \"$@\"", "sh", *argv]
        with open(tmp_path / "devnet.out", "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        started.append(Devnet(tmp_path / "net", proc, list(range(base, base + 2 * NODES))))
        return started[-1]

    try:
        yield start
    finally:
        for net in started:
            if net.proc.poll() is None:
                os.killpg(net.proc.pid, signal.SIGKILL)
                net.proc.wait(timeout=STOP_DEADLINE_S)
        for pid in processes_naming(tmp_path):  # nodes live in sessions of their own
            os.kill(pid, signal.SIGKILL)


def assert_stopped_cleanly(net: Devnet, pids: list[int], code: int | None) -> None:
    assert code == 0, net.output()
    wait_gone(pids, time.monotonic() + STOP_DEADLINE_S)
    assert f"exit codes {[0] * NODES}" in net.output(), net.output()
    for i in range(NODES):
        assert "stopped; chains closed" in net.node_log(i), net.node_log(i)[-3000:]
        assert "Traceback" not in net.node_log(i), net.node_log(i)[-3000:]
    assert processes_naming(net.root) == []
    assert all(is_port_free(p) for p in net.ports)


def test_sigterm_to_the_supervisor_stops_every_node(devnet: Callable[..., Devnet]) -> None:
    net = devnet()
    pids = net.wait_until_up()
    rpc = json.loads((net.node_dirs()[0] / "node.json").read_text())["rpc"]
    with urllib.request.urlopen(rpc.rstrip("/") + "/metrics", timeout=10) as resp:
        assert 'blyan_libp2p_expected_events_total{kind="dial_failed"}' in resp.read().decode()
    os.kill(net.proc.pid, signal.SIGTERM)
    assert_stopped_cleanly(net, pids, net.proc.wait(timeout=STOP_DEADLINE_S))
    assert "SIGTERM: stopping" in net.output()


def test_sigint_to_the_supervisor_alone_stops_every_node(devnet: Callable[..., Devnet]) -> None:
    net = devnet(ignore_sigint=True)  # SIGINT to it alone, not to a terminal's process group
    pids = net.wait_until_up()
    os.kill(net.proc.pid, signal.SIGINT)
    assert_stopped_cleanly(net, pids, net.proc.wait(timeout=STOP_DEADLINE_S))
    assert "SIGINT: stopping" in net.output()


def test_sigkill_of_the_supervisor_stops_every_node(devnet: Callable[..., Devnet]) -> None:
    net = devnet()
    pids = net.wait_until_up()
    os.kill(net.proc.pid, signal.SIGKILL)
    net.proc.wait(timeout=STOP_DEADLINE_S)
    wait_gone(pids, time.monotonic() + STOP_DEADLINE_S)
    for i in range(NODES):
        log = net.node_log(i)
        assert "supervisor gone (lifeline closed): stopping" in log and "stopped; chains closed" in log, log[-3000:]
        assert not (net.root / f"node{i}" / "node.json").exists()  # removed by the clean stop
    assert processes_naming(net.root) == []
    assert all(is_port_free(p) for p in net.ports)


def test_invalid_port_in_use_is_reported_before_starting(tmp_path: Path) -> None:
    import socket

    base = find_free_ports(2 * NODES)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + NODES + 1))  # node1's RPC port
        taken.listen()
        result = CliRunner().invoke(main, ["devnet", "--nodes", str(NODES), "--data-dir", str(tmp_path / "net"),
                                           "--base-port", str(base), "--rpc-base-port", str(base + NODES)])
    assert result.exit_code == 1, result.output
    assert f"port {base + NODES + 1} (node1 rpc) is in use by pid {os.getpid()} (" in result.output
    assert "--rpc-base-port" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "net").exists()  # nothing prepared, nothing started
