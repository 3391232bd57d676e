"""Sixteen daemon processes on 127.0.0.1 (issue 13): peer discovery makes a mesh, not a star; a
transfer is final on every node; with the bootstrap node SIGSTOPped, and again SIGKILLed, the
other fifteen keep finalizing; the killed node rejoins after a restart; no node's log shows
gossipsub's "GRAFT flood".

In the long suite (`scripts/test-long`): sixteen daemons on 2 cores take about a minute to
start and several to go through every step, more than the default run can spend."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from chain import crypto
from node.app.devnet import find_free_ports as free_ports
from node.app.devnet import prepare_devnet, start_nodes, stop_nodes
from tests.node.app.test_devnet import client_of, final_height, reachable, send_transfer, wait_for

pytestmark = pytest.mark.long

NODES = 16
DEADLINE_S = 600.0
"""The whole test: starting 16 daemons, four transfers, a pause, a kill and a restart."""
STEP_S = 120.0
"""Each transfer's finality on every node (generous: 16 daemons share 2 cores)."""


def peer_counts(dirs: list[Path]) -> list[int]:
    return [client_of(d).call("blyan_status")["peers"] for d in dirs]


def final_everywhere(dirs: list[Path], tx_hash: str, what: str) -> set[int]:
    """Heights at which the transaction is final on each of `dirs` (all of them, or fail with
    where each node stands)."""
    deadline = time.monotonic() + STEP_S
    heights: dict[str, int] = {}
    while len(heights) < len(dirs):
        for d in dirs:
            if d.name not in heights and (height := final_height(d, tx_hash)):
                heights[d.name] = height
        if time.monotonic() > deadline:
            missing = [d for d in dirs if d.name not in heights]
            raise AssertionError(f"{what}: not final on {[d.name for d in missing]} in {STEP_S:.0f} s; "
                                 f"final on {sorted(heights)}; where they stand: {standing(missing)}")
        time.sleep(0.5)
    return set(heights.values())


def standing(dirs: list[Path]) -> dict[str, object]:
    from chain.errors import BlyanError

    out: dict[str, object] = {}
    for d in dirs:
        try:
            status = client_of(d).call("blyan_status")
            out[d.name] = {"peers": status["peers"],
                          "heights": {name: c["height"] for name, c in status["chains"].items()}}
        except (BlyanError, OSError) as err:
            out[d.name] = f"no answer: {err}"
    return out


def test_sixteen_daemons_finalize_without_their_bootstrap_node(tmp_path: Path) -> None:
    dirs = prepare_devnet(tmp_path, NODES, free_ports(NODES), free_ports(NODES))
    procs = start_nodes(dirs)
    deadline = time.monotonic() + DEADLINE_S
    to = crypto.PrivateKey.from_label("devnet-scale-recipient").address
    boot, rest = dirs[0], dirs[1:]
    try:
        for d in dirs:
            wait_for(f"{d.name} RPC and a peer", lambda d=d: reachable(d), deadline)
        # Not a star: every node but the bootstrap finds peers beyond the bootstrap.
        wait_for("every node with 3 peers or more", lambda: min(peer_counts(dirs)) >= 3, deadline)

        first = send_transfer(dirs[9], 1, to)
        assert len(final_everywhere(dirs, first, "first transfer")) == 1

        procs[0].send_signal(signal.SIGSTOP)
        try:
            second = send_transfer(dirs[5], 2, to)
            assert len(final_everywhere(rest, second, "second transfer (node0 paused)")) == 1
        finally:
            procs[0].send_signal(signal.SIGCONT)

        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=30)
        third = send_transfer(dirs[12], 3, to)
        assert len(final_everywhere(rest, third, "third transfer (node0 killed)")) == 1

        procs[0] = start_nodes([boot])[0]
        wait_for("node0 back, synced past the third transfer", lambda: final_height(boot, third), deadline)
        fourth = send_transfer(boot, 4, to)  # it rejoined: it takes part again
        heights = final_everywhere(dirs, fourth, "fourth transfer (node0 back)")
        assert len(heights) == 1
        (height,) = heights
        roots = {client_of(d).call("blyan_getBlock", ["reward", height])["header"]["state_root"] for d in dirs}
        assert len(roots) == 1
        balance = client_of(dirs[7]).call("blyan_getAccount", [crypto.format_address(to)])["balance"]
        assert balance == 1 + 2 + 3 + 4
    finally:
        codes = stop_nodes(procs)
    logs = {d.name: (d / "node.log").read_text(errors="replace") for d in dirs}
    flooded = [name for name, text in logs.items() if "GRAFT flood" in text]
    assert not flooded, f"GRAFT flood logged by {flooded}"
    assert codes == [0] * NODES, {d.name: logs[d.name][-1500:] for d, c in zip(dirs, codes, strict=True) if c}
