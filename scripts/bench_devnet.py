"""Benchmark sections across processes (issue 13): a transfer's time to finality on 4 and 16
daemons, and gossip to all of 16 nodes that are separate OS processes.

Times across processes are taken with `time.monotonic()` (CLOCK_MONOTONIC: one clock for the
whole machine on Linux), never `perf_counter` differences between processes. Every child
process is killed when a section ends, however it ends, and every wait is bounded.

    python scripts/bench_devnet.py gossip-child ...   # one node of the gossip16 section
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import Row, SectionRun, Stat, fmt_time, section

GOSSIP_BYTES = 200
"""Size of each message: about a signed vote (as the gossip section)."""
DELIVERY_TIMEOUT_S = 5.0
"""A message not at every receiver within this long counts as lost."""
START_S = 300.0
"""Daemons (or gossip children) up, reachable and with peers within this long."""
FINAL_S = 120.0
"""One transfer final on every daemon within this long."""
POLL_S = 0.1
MIN_PEERS = 2
TOPIC = "/blyan/bench/votes/1"


# --- helpers over daemons (as tests/node/app/test_devnet.py) ------------------------------------


def client_of(data_dir: Path) -> Any:
    from node.api.client import RPCClient
    from node.cli.connect import find_rpc

    url, cookie = find_rpc(data_dir)
    return RPCClient(url, cookie)


def peer_count(data_dir: Path) -> int:
    """The daemon's peer count, or -1 while its RPC does not answer."""
    from chain.errors import BlyanError

    try:
        return int(client_of(data_dir).call("blyan_status")["peers"])
    except (BlyanError, OSError):
        return -1


def final_height(data_dir: Path, tx_hash: str) -> int | None:
    from chain.errors import BlyanError

    try:
        found = client_of(data_dir).call("blyan_getTransaction", ["reward", tx_hash])
    except (BlyanError, OSError):
        return None
    return found["height"] if found["status"] == "final" else None


def timed_transfer(data_dir: Path, amount: int, to: bytes) -> tuple[str, float]:
    """Send a faucet transfer to the daemon: its hash and `time.monotonic()` just before the
    `blyan_sendTransaction` call (the nonce look-up and signing are not timed)."""
    from chain import codec, crypto
    from chain.payloads import Transfer
    from chain.types import CHAIN_REWARD, Transaction, TxBody
    from genesis.devnet import faucet_key

    faucet = faucet_key()
    rpc = client_of(data_dir)
    account = rpc.call("blyan_getAccount", [crypto.format_address(faucet.address)])
    body = TxBody(CHAIN_REWARD, faucet.public_key, account["nonces"]["reward"]["next_nonce"],
                  Transfer(to, amount))
    tx = Transaction(body, faucet.sign("devnet", crypto.KIND_TX, codec.encode(body)))
    sent = time.monotonic()
    answer = rpc.call("blyan_sendTransaction", [codec.encode(tx).hex()])
    if not answer["accepted"]:
        raise RuntimeError(f"transfer not accepted: {answer}")
    return answer["tx_hash"], sent


def wait_until(what: str, condition: Callable[[], bool], timeout: float, interval: float = 0.2) -> float:
    """Poll until `condition()`; seconds it took. Raises after `timeout`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def finality_on_devnet(root: Path, n: int, transfers: int, target: int) -> dict[str, Any]:
    """Start `n` daemons, wait until each answers with >= MIN_PEERS peers, send `transfers`
    transfers one at a time to node `target`: per transfer, seconds from the send to final on
    every node (the last of them) and to final on the first."""
    from chain import crypto
    from node.app.devnet import find_free_ports, prepare_devnet, start_nodes, stop_nodes

    dirs = prepare_devnet(root, n, find_free_ports(n), find_free_ports(n))
    started = time.monotonic()
    procs = start_nodes(dirs)
    out: dict[str, Any] = {"last": [], "first": []}
    try:
        wait_until(f"{n} daemons with {MIN_PEERS}+ peers",
                   lambda: min(peer_count(d) for d in dirs) >= MIN_PEERS, START_S, 0.5)
        out["start_s"] = time.monotonic() - started
        out["peers"] = [peer_count(d) for d in dirs]
        to = crypto.PrivateKey.from_label("bench-finality-recipient").address
        for k in range(transfers):
            tx_hash, sent = timed_transfer(dirs[target], k + 1, to)
            final_at: dict[int, float] = {}
            while len(final_at) < n:
                for i, d in enumerate(dirs):
                    if i not in final_at and final_height(d, tx_hash):
                        final_at[i] = time.monotonic()
                if time.monotonic() - sent > FINAL_S:
                    raise RuntimeError(f"transfer {k + 1} on {n} daemons: final on "
                                       f"{sorted(final_at)} only after {FINAL_S:.0f} s")
                if len(final_at) < n:
                    time.sleep(POLL_S)
            out["last"].append(max(final_at.values()) - sent)
            out["first"].append(min(final_at.values()) - sent)
    finally:
        codes = stop_nodes(procs)
    out["exit_codes"] = codes
    return out


@section("finality", "Time to finality of a transfer on 4 and 16 daemons vs raw gossip to all nodes", notes=[
    "Ours: `prepare_devnet` + `start_nodes`: N validator daemons (separate processes, the "
    "devnet's topology: bootstrap to up to 3 earlier nodes, peer exchange up to 5 peers), "
    "waited for until every one answers RPC with 2 peers or more. Then transfers are sent one "
    "at a time to a non-bootstrap node (`blyan_sendTransaction`); every node is polled "
    "(`blyan_getTransaction`, every 0.1 s, a round of N RPC calls) until the transfer is "
    "final there. Time = send to final on the LAST node (the send's RPC included; polling "
    "adds up to one poll round); median over the transfers. The first node's time is in the "
    "JSON extras.",
    "Baseline, measured in the same run just before the daemons start: the gossip16 section's "
    "raw network at N: N separate processes, each a bare py-libp2p 0.8.1 host + `Pubsub` + "
    "`GossipSub` (our tuned parameters, no validator), linked as bench_net's "
    "`compute_topology` (node i dials i-1, (i-1)//2, i-4); node N-1 publishes one 200-byte "
    "message (a vote's size) at a time; time from its publish to the last of the other N-1 "
    "(`time.monotonic()` in each process); median of 20.",
    "ratio = time to finality ÷ one raw gossip to all nodes. No goal: finality is a block "
    "proposal, a prevote round and a precommit round, each a gossip to all nodes plus "
    "signature checks, state transition and a synced LevelDB commit on every node, plus the "
    "wait for the next block slot, and the transaction's own gossip to the proposer — so "
    "several gossip hops at least, on daemons that share the 2 cores with each other.",
])
def bench_finality(run: SectionRun) -> None:
    plans = run.pick([(4, 3, 1), (16, 3, 9)], [(4, 1, 1)])
    for n, transfers, target in plans:
        with run.tempdir() as d:
            raw = run_gossip16(d, n, 1, run.pick(20, 3), run.pick(5, 1), modes=("raw",))["raw"]
        if not raw:
            raise RuntimeError(f"raw gossip: no message reached all {n} processes")
        with run.tempdir() as root:
            result = finality_on_devnet(root, n, transfers, target)
        ours, base = Stat.of(result["last"]), Stat.of(raw)
        runs = ", ".join(fmt_time(t) for t in result["last"])
        run.row(Row(
            name=f"finality.{n}daemons",
            what=f"a transfer sent to node {target}: final on all {n} daemons ({transfers} transfers)",
            ours=ours.median, baseline=base.median, unit="s",
            ours_text=(f"{fmt_time(ours.median)} (each: {runs}; daemons up with "
                       f"{MIN_PEERS}+ peers in {result['start_s']:.0f} s)"),
            baseline_text=f"{fmt_time(base.median)} (p95 {fmt_time(base.p95)}, n={base.samples})",
            baseline_what=f"raw py-libp2p gossipsub, {n} processes: one 200 B message to all",
            ratio=ours.median / base.median, better="lower", goal=None,
            extra={"first_node_median_s": statistics.median(result["first"]),
                   "baseline_p95_s": base.p95, "start_s": result["start_s"],
                   "min_peers": float(min(result["peers"])),
                   "max_peers": float(max(result["peers"]))},
        ))


# --- gossip to 16 separate processes ----------------------------------------------------------


def gossip_topology(n: int) -> list[list[int]]:
    from bench_net import compute_topology

    return compute_topology(n)


def child_argv(mode: str, index: int, port: int, boot: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "gossip-child", mode, str(index),
            str(port), ",".join(boot)]


def child_seed(mode: str, index: int) -> bytes:
    return bytes([3 if mode == "ours" else 4, index]) * 16


def child_addr(mode: str, index: int, port: int) -> str:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    peer = ID.from_pubkey(create_new_key_pair(child_seed(mode, index)).public_key)
    return f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer}"


class Children:
    """Child processes speaking JSON lines: commands on their stdin, events on their stdout."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []
        self.selector = selectors.DefaultSelector()
        self.buffers: dict[int, bytes] = {}
        self.names: dict[int, tuple[str, int]] = {}

    def spawn(self, mode: str, index: int, argv: list[str]) -> None:
        with open(self.log_dir / f"{mode}{index}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=log, start_new_session=True)
        self.procs.append(proc)
        fd = proc.stdout.fileno()  # type: ignore[union-attr]
        os.set_blocking(fd, False)
        self.buffers[fd] = b""
        self.names[fd] = (mode, index)
        self.selector.register(fd, selectors.EVENT_READ)

    def send(self, proc: subprocess.Popen, line: str) -> None:
        proc.stdin.write(line.encode() + b"\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]

    def read(self, timeout: float) -> list[tuple[str, int, dict]]:
        """Events that arrive within `timeout` (returns as soon as there are some)."""
        events = []
        for key, _ in self.selector.select(max(0.0, timeout)):
            fd = key.fd
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                self.selector.unregister(fd)
                mode, index = self.names[fd]
                raise RuntimeError(f"gossip child {mode}{index} exited; see {self.log_dir}")
            lines = (self.buffers[fd] + chunk).split(b"\n")
            self.buffers[fd] = lines.pop()
            mode, index = self.names[fd]
            events += [(mode, index, json.loads(line)) for line in lines if line.strip()]
        return events

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    self.send(proc, "quit")
                except OSError:
                    pass
        deadline = time.monotonic() + 3.0
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10.0)
        self.selector.close()


class Net:
    """One network of gossip children (ours or raw) as the parent sees it."""

    def __init__(self, mode: str, n: int) -> None:
        self.mode = mode
        self.n = n
        self.procs: list[subprocess.Popen] = []
        self.ready: set[int] = set()
        self.meshed: dict[int, int] = {}
        self.peer_ids: dict[int, list[str]] = {}
        self.pub_at: dict[int, float] = {}
        self.rx: dict[int, dict[int, float]] = {}


def run_gossip16(log_dir: Path, n: int, rounds: int, per_round: int, warmup: int,
                 modes: tuple[str, ...] = ("ours", "raw"), same_links: bool = True) -> dict[str, Any]:
    """Networks of `n` child processes (ours, raw or both), up side by side; batches of each
    alternate. The publisher is node n-1 in each. Ours starts from `compute_topology`'s links
    and peer exchange adds more; with `same_links`, raw (started once ours is meshed) dials
    exactly the links ours then has, else `compute_topology`'s."""
    from node.app.devnet import find_free_ports

    children = Children(log_dir)
    nets = {mode: Net(mode, n) for mode in modes}
    result: dict[str, Any] = {"ours": [], "raw": [], "ours_lost": 0, "raw_lost": 0}

    def handle(events: list[tuple[str, int, dict]]) -> None:
        for mode, index, event in events:
            net = nets[mode]
            if "ready" in event:
                net.ready.add(index)
            elif "mesh" in event:
                net.meshed[index] = event["mesh"]
                net.peer_ids[index] = event["peers"]
            elif "pub" in event:
                net.pub_at[event["pub"]] = event["t"]
            elif "rx" in event:
                net.rx.setdefault(event["rx"], {}).setdefault(index, event["t"])

    def pump(what: str, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            handle(children.read(min(left, 0.5)))
        return True

    started = time.monotonic()
    try:
        links = {i: set(earlier) for i, earlier in enumerate(gossip_topology(n))}
        for mode, net in nets.items():  # ours first: raw copies the links ours ends up with
            base = find_free_ports(n)
            addrs = [child_addr(mode, i, base + i) for i in range(n)]
            ids = {addr.rsplit("/", 1)[1]: i for i, addr in enumerate(addrs)}
            result.setdefault("dialled", {})[mode] = sum(len(v) for v in links.values())
            for i in range(n):
                children.spawn(mode, i, child_argv(mode, i, base + i, [addrs[j] for j in sorted(links[i])]))
                net.procs.append(children.procs[-1])
            if not pump("ready", lambda net=net: len(net.ready) == n, START_S):
                raise RuntimeError(f"{mode}: only {sorted(net.ready)} of {n} children ready")
            for proc in net.procs:
                children.send(proc, f"mesh 30 {MIN_PEERS}")
            if not pump("mesh", lambda net=net: len(net.meshed) == n, 60.0):
                raise RuntimeError(f"{mode}: only {sorted(net.meshed)} of {n} children meshed")
            if mode == "ours" and same_links:
                links = {i: set() for i in range(n)}
                for i, peers in net.peer_ids.items():
                    for j in (ids[p] for p in peers if p in ids):
                        links[max(i, j)].add(min(i, j))
        result["setup_s"] = time.monotonic() - started
        result["peers"] = {mode: sorted(net.meshed.values()) for mode, net in nets.items()}
        time.sleep(0.2)
        next_index = 1

        def batch(net: Net, count: int) -> tuple[list[float], int]:
            nonlocal next_index
            latencies, lost = [], 0
            publisher = net.procs[n - 1]
            for _ in range(count):
                index = next_index
                next_index += 1
                children.send(publisher, f"pub {index}")
                ok = pump("delivery", lambda: index in net.pub_at
                          and len(net.rx.get(index, {})) >= n - 1, DELIVERY_TIMEOUT_S)
                if ok:
                    latencies.append(max(net.rx[index].values()) - net.pub_at[index])
                else:
                    lost += 1
            return latencies, lost

        for net in nets.values():
            batch(net, warmup)
        for _ in range(rounds):
            for mode, net in nets.items():
                latencies, lost = batch(net, per_round)
                result[mode] += latencies
                result[f"{mode}_lost"] += lost
    finally:
        children.close()
    return result


@section("gossip16", "Gossip to all of 16 nodes as separate processes: ours vs raw py-libp2p", notes=[
    "Ours: 16 OS processes, each one `Libp2pNetwork` (`Libp2pConfig.for_tests`: Noise, Yamux, "
    "TCP on 127.0.0.1, guarded pubsub, the handler as validator; peer discovery on, default "
    "target of 8 peers) subscribed to one topic. Each starts with node i dialling nodes i-1, "
    "(i-1)//2 and i-4 (bench_net's `compute_topology`); peer exchange then adds links.",
    "Baseline: 16 OS processes, each one bare py-libp2p 0.8.1 host with `Pubsub` + `GossipSub` "
    "and the same tuned parameters (as bench_net's in-process baseline), no validator, "
    "messages read from the subscription, no discovery. Started once ours is meshed, each "
    "dials exactly the peers ours has then (its links to lower-numbered nodes), so both "
    "graphs are the same (ours may still add or drop a link while measured).",
    "Both networks then run at the same time (32 processes on the same cores), every node "
    "with 2+ peers and its peers in its mesh; node 15 publishes one 200-byte message at a time, "
    "each once the previous one reached all 15 others; batches of ours and of the baseline "
    "alternate, a few warm-up messages uncounted. Each child writes a JSON line with "
    "`time.monotonic()` (CLOCK_MONOTONIC, system-wide on Linux) per first receipt; latency = "
    "the publisher's time just before `publish` to the last receiver's. A message not at all 15 "
    "within 5 s counts as lost.",
])
def bench_gossip16(run: SectionRun) -> None:
    n = run.pick(16, 4)
    rounds, per_round, warmup = run.pick((5, 10, 5), (1, 3, 1))
    with run.tempdir() as d:
        result = run_gossip16(d, n, rounds, per_round, warmup)
    ours, raw = result["ours"], result["raw"]
    if not ours or not raw:
        raise RuntimeError(f"no message reached every process: {result}")
    o, b = Stat.of(ours), Stat.of(raw)
    sent = rounds * per_round

    def text(s: Stat, lost: int, peers: list[int]) -> str:
        return (f"p50 {fmt_time(s.median)}, p95 {fmt_time(s.p95)} to the last of {n - 1} "
                f"(n={s.samples}, {lost} of {sent} lost; peers {min(peers)}-{max(peers)})")

    run.row(Row(
        name=f"gossip16.{n}procs",
        what=f"one {GOSSIP_BYTES}-byte message from one process to all {n - 1} other processes",
        ours=o.median, baseline=b.median, unit="s",
        ours_text=text(o, result["ours_lost"], result["peers"]["ours"]),
        baseline_text=text(b, result["raw_lost"], result["peers"]["raw"]),
        baseline_what=f"raw py-libp2p gossipsub, {n} separate processes, same parameters",
        ratio=o.median / b.median, better="lower", goal=None,
        extra={"ours_p95_s": o.p95, "baseline_p95_s": b.p95, "setup_s": result["setup_s"],
               "ours_initial_links": float(result["dialled"]["ours"]),
               "baseline_links": float(result["dialled"]["raw"])},
    ))
    run.row(Row(
        name=f"gossip16.{n}procs.p95",
        what="the same, 95th percentile",
        ours=o.p95, baseline=b.p95, unit="s",
        ours_text=fmt_time(o.p95), baseline_text=fmt_time(b.p95),
        baseline_what="raw py-libp2p gossipsub, separate processes",
        ratio=o.p95 / b.p95, better="lower", goal=None,
    ))


# --- the child ----------------------------------------------------------------------------------


def emit(obj: dict) -> None:
    os.write(1, (json.dumps(obj) + "\n").encode())


async def child_main(mode: str, index: int, port: int, boot: list[str]) -> None:
    """One gossip node: JSON lines out ({"ready"}, {"mesh": peers}, {"pub": i, "t"}, {"rx": i,
    "t"}); commands in: `mesh TIMEOUT MIN_PEERS`, `pub INDEX`, `quit`."""
    import trio

    published: set[int] = set()
    seen: set[int] = set()

    def on_data(data: bytes) -> None:
        now = time.monotonic()
        message = int.from_bytes(data[:4], "big")
        if message in published or message in seen:
            return
        seen.add(message)
        emit({"rx": message, "t": now})

    opener = open_ours_node if mode == "ours" else open_raw_node
    async with opener(index, port, boot, on_data) as (publish, peers, wait_mesh):
        emit({"ready": index})
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buffer = b""
        while True:
            chunk = await stdin.receive_some(4096)
            if not chunk:
                break
            *lines, buffer = (buffer + chunk).split(b"\n")
            for line in lines:
                command, *args = line.decode().split()
                if command == "quit":
                    os._exit(0)  # the parent measured what it needed; no slow goodbyes
                elif command == "mesh":
                    timeout, min_peers = float(args[0]), int(args[1])
                    with trio.move_on_after(timeout):
                        while len(peers()) < min_peers:
                            await trio.sleep(0.1)
                    await wait_mesh(timeout)
                    emit({"mesh": len(peers()), "peers": [str(p) for p in peers()]})
                elif command == "pub":
                    message = int(args[0])
                    published.add(message)
                    data = message.to_bytes(4, "big") + bytes(GOSSIP_BYTES - 4)
                    now = time.monotonic()
                    await publish(data)
                    emit({"pub": message, "t": now})
    os._exit(0)


def open_ours_node(index: int, port: int, boot: list[str], on_data: Callable[[bytes], None]) -> Any:
    from contextlib import asynccontextmanager

    from p2p.libp2p_net import Libp2pConfig, Libp2pNetwork
    from p2p.network import Verdict

    @asynccontextmanager
    async def opened() -> Any:
        config = Libp2pConfig.for_tests(child_seed("ours", index), tuple(boot),
                                        listen=f"/ip4/127.0.0.1/tcp/{port}")
        async with Libp2pNetwork.open(config) as net:
            async def accept(sender: str, data: bytes) -> Verdict:
                on_data(data)
                return Verdict.ACCEPT

            net.subscribe(TOPIC, accept)

            async def wait_mesh(timeout: float) -> None:
                await net.wait_for_mesh(TOPIC, net.peers(), timeout)

            yield (lambda data: net.publish(TOPIC, data)), net.peers, wait_mesh

    return opened()


def open_raw_node(index: int, port: int, boot: list[str], on_data: Callable[[bytes], None]) -> Any:
    from contextlib import AsyncExitStack, asynccontextmanager

    import trio
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.network.config import ConnectionConfig
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.tools.anyio_service import background_trio_service
    from multiaddr import Multiaddr

    from p2p.libp2p_config import Libp2pConfig

    @asynccontextmanager
    async def opened() -> Any:
        cfg = Libp2pConfig.for_tests(bytes(32))
        listen = Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")
        host = new_host(key_pair=create_new_key_pair(child_seed("raw", index)), listen_addrs=[listen],
                        connection_config=ConnectionConfig(max_connections_per_peer=1))
        router = GossipSub(
            protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11], degree=cfg.gossip_degree,
            degree_low=cfg.gossip_degree_low, degree_high=cfg.gossip_degree_high,
            heartbeat_interval=cfg.gossip_heartbeat_s,  # type: ignore[arg-type]
            heartbeat_initial_delay=min(0.1, cfg.gossip_heartbeat_s),
            spam_protection_enabled=False, eclipse_protection_enabled=False,
            adaptive_gossip_enabled=False,
        )
        pubsub = Pubsub(host, router, strict_signing=True, seen_ttl=cfg.gossip_seen_ttl_s)
        async with AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            await stack.enter_async_context(host.run(listen_addrs=[listen]))
            await stack.enter_async_context(background_trio_service(pubsub))
            await stack.enter_async_context(background_trio_service(router))
            await host.get_network().auto_connector.stop()  # only the topology's links
            await pubsub.wait_until_ready()

            async def dial(addr: str) -> None:  # the peer may not listen yet: retry, bounded
                with trio.move_on_after(START_S):
                    while True:
                        try:
                            await host.connect(info_from_p2p_addr(Multiaddr(addr)))
                            return
                        except Exception:
                            await trio.sleep(0.3)

            for addr in boot:
                nursery.start_soon(dial, addr)
            sub = await pubsub.subscribe(TOPIC)

            async def read() -> None:
                while True:
                    on_data((await sub.get()).data)

            nursery.start_soon(read)

            def peers() -> list[Any]:
                return list(host.get_network().connections)

            async def wait_mesh(timeout: float) -> None:
                with trio.move_on_after(timeout):
                    for peer in peers():
                        await router.wait_for_mesh(peer, TOPIC, timeout=timeout)

            yield (lambda data: pubsub.publish(TOPIC, data)), peers, wait_mesh
            nursery.cancel_scope.cancel()

    return opened()


def main(argv: list[str]) -> int:
    if len(argv) != 5 or argv[0] != "gossip-child":
        print(__doc__, file=sys.stderr)
        return 2
    import trio

    logging.disable(logging.WARNING)
    mode, index, port, boot = argv[1], int(argv[2]), int(argv[3]), argv[4]
    trio.run(child_main, mode, index, port, [a for a in boot.split(",") if a])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
