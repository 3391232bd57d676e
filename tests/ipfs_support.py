"""A real IPFS daemon for tests: js-ipfs 0.66.1 (daemon 0.18.1), offline, on 127.0.0.1 only.

`scripts/setup` installs it into `.ipfs-tools/`; where it is missing the tests that need it skip and
say so. Use `with start_ipfs(tmp_path) as daemon:` or the module-scoped fixture `ipfs_daemon`
(import it into the test module). The daemon's process group is killed on every exit path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JSIPFS = ROOT / ".ipfs-tools" / "node_modules" / ".bin" / "jsipfs"
START_TIMEOUT_S = 60.0
"""A loaded machine starts the daemon in a few seconds; this bounds a daemon that never comes up."""


@dataclass(frozen=True, slots=True)
class IpfsDaemon:
    api: str
    """The HTTP API as a multiaddr, `/ip4/127.0.0.1/tcp/PORT/http` (what ipfshttpclient takes)."""
    url: str
    """The same as a URL, `http://127.0.0.1:PORT`."""
    repo: Path
    """The daemon's IPFS_PATH."""
    proc: subprocess.Popen
    """The daemon, leader of its own process group."""
    log: Path
    """Its stdout and stderr."""

    def stop(self) -> None:
        """Kill the daemon's process group and wait for it; safe to call twice."""
        _kill_group(self.proc)


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            # The leader is gone; SIGKILL any child still in its group.
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        proc.wait(timeout=10.0)


def require_jsipfs() -> Path:
    """The jsipfs executable; skips the test, with the reason, when it is not installed."""
    if not os.access(JSIPFS, os.X_OK):
        pytest.skip(f"js-ipfs not installed: run bash scripts/setup (npm install ipfs@0.66.1) — {JSIPFS} "
                    "is missing (setup prints a warning when npm or the registry failed)")
    return JSIPFS


def _configure(repo: Path) -> None:
    """Offline and local only: no bootstrap peers, no routing, no discovery, every port chosen by the
    OS on 127.0.0.1 (the daemon writes the API's real address to `repo/api`)."""
    path = repo / "config"
    config = json.loads(path.read_text())
    any_port = "/ip4/127.0.0.1/tcp/0"
    config["Addresses"].update(Swarm=[any_port], API=any_port, Gateway=any_port, RPC=any_port,
                               Announce=[], Delegates=[])
    config["Bootstrap"] = []
    config["Routing"] = {"Type": "none"}
    config["Discovery"] = {"MDNS": {"Enabled": False}, "webRTCStar": {"Enabled": False}}
    path.write_text(json.dumps(config, indent=2))


def _api_ready(repo: Path) -> str | None:
    """The API multiaddr once the daemon answers /api/v0/version on it, else None."""
    try:
        api = (repo / "api").read_text().strip()
    except FileNotFoundError:
        return None
    parts = api.split("/")  # ['', 'ip4', '127.0.0.1', 'tcp', PORT, 'http']
    if len(parts) < 5 or parts[1] != "ip4" or parts[3] != "tcp":
        return None
    request = urllib.request.Request(f"http://{parts[2]}:{parts[4]}/api/v0/version", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=2.0) as response:
            json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return api


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except FileNotFoundError:
        return ""


@contextmanager
def start_ipfs(tmp_path: Path, timeout_s: float = START_TIMEOUT_S) -> Iterator[IpfsDaemon]:
    """A fresh offline js-ipfs daemon with its repository under `tmp_path`, stopped at exit."""
    jsipfs = require_jsipfs()
    repo = tmp_path / "ipfs-repo"
    log = tmp_path / "ipfs-daemon.log"
    env = {**os.environ, "IPFS_PATH": str(repo)}
    init = subprocess.run([str(jsipfs), "init", "--profile=test"], env=env, capture_output=True, text=True,
                          timeout=timeout_s, start_new_session=True)
    if init.returncode != 0:
        raise RuntimeError(f"jsipfs init failed ({init.returncode}): {init.stdout[-1000:]}{init.stderr[-1000:]}")
    _configure(repo)
    with log.open("wb") as out:
        proc = subprocess.Popen([str(jsipfs), "daemon", "--offline", "--enable-preload=false"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        api = _api_ready(repo)
        while api is None:
            if proc.poll() is not None:
                raise RuntimeError(f"jsipfs daemon exited with {proc.returncode}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"jsipfs daemon's API not ready after {timeout_s:.0f} s:\n{_tail(log)}")
            time.sleep(0.1)  # polling a condition under a deadline, not waiting blind
            api = _api_ready(repo)
        host, port = api.split("/")[2], api.split("/")[4]
        yield IpfsDaemon(api=api, url=f"http://{host}:{port}", repo=repo, proc=proc, log=log)
    finally:
        _kill_group(proc)


@pytest.fixture(scope="module")
def ipfs_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IpfsDaemon]:
    """One daemon for a test module (starting one takes a few seconds)."""
    with start_ipfs(tmp_path_factory.mktemp("ipfs")) as daemon:
        yield daemon
