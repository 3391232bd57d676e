"""Benchmark sections of the network: gossip latency over libp2p, request round trips over
libp2p, block import while syncing."""

from __future__ import annotations

import dataclasses
import gc
import logging
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from bench_core import clear_chain_caches, reward_fixture
from benchlib import Row, SectionRun, Stat, fmt_rate, fmt_time, section

GOSSIP_BYTES = 200
"""Size of each benchmark message: about a signed vote."""
DELIVERY_TIMEOUT_S = 5.0
"""A message not at every node within this long counts as lost."""


# --- gossip ------------------------------------------------------------------------------------


def compute_topology(n: int) -> list[list[int]]:
    """For each node, the earlier nodes it dials: the previous one, the one at half its index,
    and the one four back: 2-3 links each, a connected graph of diameter about log2(n)."""
    return [sorted({i - 1, (i - 1) // 2, max(0, i - 4)}) if i else [] for i in range(n)]


class Receipts:
    """When each node first received each message (perf_counter), and a wake-up once all but
    its publisher have (raw pubsub hands a node's own publications to its subscription too)."""

    def __init__(self, n_receivers: int) -> None:
        import trio

        self.n_receivers = n_receivers
        self.times: dict[int, dict[int, float]] = {}
        self.done: dict[int, trio.Event] = {}
        self.publishers: dict[int, int] = {}
        self.duplicates = 0

    def expect(self, index: int, publisher: int) -> Any:
        import trio

        self.publishers[index] = publisher
        self.times[index] = {}
        self.done[index] = trio.Event()
        return self.done[index]

    def on_message(self, receiver: int, data: bytes) -> None:
        now = time.perf_counter()
        index = int.from_bytes(data[:4], "big")
        got = self.times.get(index)
        if got is None or receiver == self.publishers[index]:
            return
        if receiver in got:
            self.duplicates += 1
            return
        got[receiver] = now
        if len(got) == self.n_receivers:
            self.done[index].set()


@asynccontextmanager
async def open_ours(n: int, topic: str, receipts: Receipts) -> AsyncIterator[list[Callable]]:
    """`n` `Libp2pNetwork`s dialling each other as `compute_topology` says; yields a publish
    function per node once every node has its connected peers in its mesh."""
    from p2p.libp2p_net import Libp2pConfig, Libp2pNetwork
    from p2p.network import Verdict

    def make_handler(receiver: int) -> Callable:
        async def accept(sender: str, data: bytes) -> Verdict:
            receipts.on_message(receiver, data)
            return Verdict.ACCEPT

        return accept

    async with AsyncExitStack() as stack:
        nets: list[Any] = []
        for i, earlier in enumerate(compute_topology(n)):
            boot = tuple(nets[j].listen_addrs()[0] for j in earlier)
            config = Libp2pConfig.for_tests(bytes([1, i]) * 16, boot)
            net = await stack.enter_async_context(Libp2pNetwork.open(config))
            net.subscribe(topic, make_handler(i))
            nets.append(net)
        for net in nets:
            await net.wait_for_mesh(topic, net.peers(), 10.0)
        yield [lambda data, net=net: net.publish(topic, data) for net in nets]


@asynccontextmanager
async def open_raw(n: int, topic: str, receipts: Receipts) -> AsyncIterator[list[Callable]]:
    """The same with bare py-libp2p: `new_host` + `Pubsub` + `GossipSub` with our tuned
    parameters, the same topology, messages read from the subscription; no guards, no
    validators, no counters."""
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

    cfg = Libp2pConfig.for_tests(bytes(32))
    listen = Multiaddr("/ip4/127.0.0.1/tcp/0")
    nodes: list[tuple[Any, Any, Any]] = []

    async def read(receiver: int, sub: Any) -> None:
        while True:
            msg = await sub.get()
            receipts.on_message(receiver, msg.data)

    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        for i, earlier in enumerate(compute_topology(n)):
            host = new_host(key_pair=create_new_key_pair(bytes([2, i]) * 16), listen_addrs=[listen],
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
            await stack.enter_async_context(host.run(listen_addrs=[listen]))
            await stack.enter_async_context(background_trio_service(pubsub))
            await stack.enter_async_context(background_trio_service(router))
            await host.get_network().auto_connector.stop()  # as ours: only the topology's links
            await pubsub.wait_until_ready()
            for j in earlier:
                other = nodes[j][0]
                await host.connect(info_from_p2p_addr(other.get_addrs()[0].encapsulate(
                    Multiaddr(f"/p2p/{other.get_id()}"))))
            nursery.start_soon(read, i, await pubsub.subscribe(topic))
            nodes.append((host, pubsub, router))
        for host, _pubsub, _router in nodes:
            for peer in list(host.get_network().connections):
                with trio.move_on_after(10.0):
                    await router.wait_for_mesh(peer, topic, timeout=10.0)
        try:
            yield [lambda data, p=pubsub: p.publish(topic, data) for _, pubsub, _ in nodes]
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(5.0):
                for _host, pubsub, router in reversed(nodes):  # leave before hanging up
                    for service in (router, pubsub):
                        await service.manager.stop()
                for host, _, _ in nodes:
                    for peer in list(host.get_network().connections):
                        await host.disconnect(peer)


async def measure_latencies(
    publishers: list[Callable], receipts: Receipts, first_index: int, count: int
) -> tuple[list[float], int]:
    """Publish `count` messages, each from the next node in turn and each only once the one
    before reached everyone: seconds from publish to the last receiver, and messages lost."""
    import trio

    latencies, lost = [], 0
    for k in range(count):
        index = first_index + k
        publisher = index % len(publishers)
        done = receipts.expect(index, publisher)
        data = index.to_bytes(4, "big") + bytes(GOSSIP_BYTES - 4)
        sent = time.perf_counter()
        await publishers[publisher](data)
        with trio.move_on_after(DELIVERY_TIMEOUT_S):
            await done.wait()
        if done.is_set():
            latencies.append(max(receipts.times[index].values()) - sent)
        else:
            lost += 1
    return latencies, lost


async def run_gossip(n: int, rounds: int, per_round: int, warmup: int) -> dict[str, Any]:
    """Both networks up side by side in one trio run; batches of ours and raw alternate."""
    import trio

    ours_r, raw_r = Receipts(n - 1), Receipts(n - 1)
    result: dict[str, Any] = {"ours": [], "raw": [], "ours_lost": 0, "raw_lost": 0}
    result["receipts"] = {"ours": ours_r, "raw": raw_r}
    started = time.perf_counter()
    async with open_ours(n, "/blyan/bench/votes/1", ours_r) as ours, \
            open_raw(n, "/blyan/bench/votes/1", raw_r) as raw:
        result["setup_s"] = time.perf_counter() - started
        await trio.sleep(0.2)
        next_index = 1
        for _label, pubs, receipts in (("ours", ours, ours_r), ("raw", raw, raw_r)):
            await measure_latencies(pubs, receipts, next_index, warmup)  # meshes settle
            next_index += warmup
        for _ in range(rounds):
            for label, pubs, receipts in (("ours", ours, ours_r), ("raw", raw, raw_r)):
                latencies, lost = await measure_latencies(pubs, receipts, next_index, per_round)
                next_index += per_round
                result[label] += latencies
                result[f"{label}_lost"] += lost
    return result


@section("gossip", "Gossip latency: our libp2p network vs raw py-libp2p gossipsub", notes=[
    "Ours: `Libp2pNetwork` nodes (Noise, Yamux, TCP on 127.0.0.1; guarded pubsub; each message "
    "handed to the topic's handler as pubsub's validator, whose ACCEPT verdict relays it; the "
    "counters of `stats()`). Baseline: bare py-libp2p 0.8.1 hosts with `Pubsub` + `GossipSub` "
    "and the same tuned parameters (D 6/4/12, heartbeat 1 s, spam and eclipse protection off, "
    "strict signing), no validator, messages read from the subscription.",
    "Same topology for both: node i dials node i-1, node (i-1)//2 and node i-4 (2-3 links "
    "each). All nodes of both networks run in ONE process and one `trio.run` (not separate "
    "daemons): every hop costs CPU time of the same 2 cores, so latencies grow with the node "
    "count more than they would across machines.",
    "Each message (200 bytes) is published by the next node in turn once the previous one "
    "reached every other node; latency = publish to the last receiver. Batches of ours and of "
    "the baseline alternate; a few warm-up messages are not counted. A message not everywhere "
    "within 5 s counts as lost.",
])
def bench_gossip(run: SectionRun) -> None:
    import trio

    n = run.pick(16, 4)
    rounds, per_round, warmup = run.pick((5, 10, 5), (1, 4, 2))
    logging.disable(logging.WARNING)
    try:
        result = trio.run(run_gossip, n, rounds, per_round, warmup)
    finally:
        logging.disable(logging.NOTSET)
    ours, raw = result["ours"], result["raw"]
    if not ours or not raw:
        raise RuntimeError(f"no message reached every node: {result}")
    o, b = Stat.of(ours), Stat.of(raw)
    sent = rounds * per_round

    def text(s: Stat, lost: int) -> str:
        return (f"p50 {fmt_time(s.median)}, p95 {fmt_time(s.p95)} to the last of {n - 1} "
                f"receivers (n={s.samples}, {lost} of {sent} lost)")

    run.row(Row(
        name=f"gossip.{n}nodes",
        what=f"one {GOSSIP_BYTES}-byte message from one node to all {n} local nodes",
        ours=o.median, baseline=b.median, unit="s",
        ours_text=text(o, result["ours_lost"]), baseline_text=text(b, result["raw_lost"]),
        baseline_what="raw py-libp2p gossipsub, same parameters and topology",
        ratio=o.median / b.median, better="lower", goal=1.5,
        extra={"ours_p95_s": o.p95, "baseline_p95_s": b.p95, "setup_s": result["setup_s"],
               "ours_mean_s": statistics.fmean(ours), "baseline_mean_s": statistics.fmean(raw)},
    ))
    run.row(Row(
        name=f"gossip.{n}nodes.p95",
        what="the same, 95th percentile",
        ours=o.p95, baseline=b.p95, unit="s",
        ours_text=fmt_time(o.p95), baseline_text=fmt_time(b.p95),
        baseline_what="raw py-libp2p gossipsub",
        ratio=o.p95 / b.p95, better="lower", goal=None,
    ))


# --- request round trips ---------------------------------------------------------------------

RAW_ECHO = "/bench/raw-echo/1"
"""Protocol of the raw baseline's echo handler."""


@asynccontextmanager
async def open_raw_echo_pair() -> AsyncIterator[Callable]:
    """Two bare py-libp2p 0.8.1 hosts on 127.0.0.1 (TCP, Noise, Yamux), connected; the first
    serves `RAW_ECHO`: read a u32 length and that many bytes, write them back with the same
    prefix, close. Yields `roundtrip(payload) -> bytes`: a new negotiated stream per call, as a
    plain py-libp2p request/response does. No guards, caps, deadlines, ids or counters."""
    import struct

    import trio
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.network.config import ConnectionConfig
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from multiaddr import Multiaddr

    length = struct.Struct(">I")
    listen = Multiaddr("/ip4/127.0.0.1/tcp/0")

    async def read_exactly(stream: Any, size: int) -> bytes:
        parts, missing = [], size
        while missing:
            chunk = await stream.read(min(missing, 1 << 20))
            if not chunk:
                raise EOFError(f"stream ended {missing} bytes short")
            parts.append(chunk)
            missing -= len(chunk)
        return b"".join(parts)

    async def echo(stream: Any) -> None:
        (size,) = length.unpack(await read_exactly(stream, length.size))
        body = await read_exactly(stream, size)
        await stream.write(length.pack(size) + body)
        await stream.close()

    hosts = [new_host(key_pair=create_new_key_pair(bytes([3, i]) * 16), listen_addrs=[listen],
                      connection_config=ConnectionConfig(max_connections_per_peer=1))
             for i in range(2)]
    async with AsyncExitStack() as stack:
        for host in hosts:
            await stack.enter_async_context(host.run(listen_addrs=[listen]))
            await host.get_network().auto_connector.stop()
        server, client = hosts
        server.set_stream_handler(TProtocol(RAW_ECHO), echo)
        await client.connect(info_from_p2p_addr(server.get_addrs()[0].encapsulate(
            Multiaddr(f"/p2p/{server.get_id()}"))))

        async def roundtrip(payload: bytes) -> bytes:
            stream = await client.new_stream(server.get_id(), [TProtocol(RAW_ECHO)])
            await stream.write(length.pack(len(payload)) + payload)
            (size,) = length.unpack(await read_exactly(stream, length.size))
            body = await read_exactly(stream, size)
            await stream.close()
            return body

        try:
            yield roundtrip
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5.0):
                await client.disconnect(server.get_id())


async def raw_request_rtts(payload_bytes: int, count: int, warmup: int = 5) -> list[float]:
    """Seconds per round trip of `count` sequential raw py-libp2p requests (`open_raw_echo_pair`)
    of `payload_bytes` each way, after `warmup` uncounted ones."""
    async with open_raw_echo_pair() as roundtrip:
        return await time_requests(roundtrip, payload_bytes, count, warmup=warmup)


async def time_requests(
    request: Callable, payload_bytes: int, count: int, in_flight: int = 1, warmup: int = 0,
    batches: list[float] | None = None,
) -> list[float]:
    """Seconds per round trip of `count` calls of `request(payload)`, in batches of
    `in_flight` sent at once (each timed from its own send to its own response; each batch's
    seconds appended to `batches`), after `warmup` uncounted sequential calls."""
    import trio

    payload = bytes(payload_bytes)
    trips: list[float] = []
    for _ in range(warmup):
        await request(payload)

    async def one() -> None:
        start = time.perf_counter()
        if len(await request(payload)) != payload_bytes:
            raise RuntimeError("echo returned a short body")
        trips.append(time.perf_counter() - start)

    for _ in range(max(1, count // in_flight)):
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(in_flight):
                nursery.start_soon(one)
        if batches is not None:
            batches.append(time.perf_counter() - start)
    return trips


def measure_raw_request_rtt(payload_bytes: int, count: int) -> float:
    """Median seconds of one raw py-libp2p request/response on 127.0.0.1 (a new negotiated
    stream per request, bare echo handler): the latency floor of one network hop."""
    import trio

    logging.disable(logging.WARNING)
    try:
        return statistics.median(trio.run(raw_request_rtts, payload_bytes, count))
    finally:
        logging.disable(logging.NOTSET)


@asynccontextmanager
async def open_ours_echo_pair(persistent: bool) -> AsyncIterator[Callable]:
    """Two `Libp2pNetwork`s on 127.0.0.1, the second bootstrapped to the first, which serves an
    echo protocol; yields `request(payload) -> bytes` from the second. `persistent=False`: the
    requester uses a new stream per request (as before persistent streams, and as today with a
    peer that does not speak them)."""
    from p2p.libp2p_net import Libp2pConfig, Libp2pNetwork
    from p2p.network import protocol_name

    protocol = protocol_name("bench", "echo")
    tag = 5 if persistent else 4

    async def echo(requester: str, data: bytes) -> bytes:
        return data

    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(
            Libp2pNetwork.open(Libp2pConfig.for_tests(bytes([tag, 1]) * 16)))
        server.set_request_handler(protocol, echo, max_request_bytes=1 << 20)
        client = await stack.enter_async_context(Libp2pNetwork.open(Libp2pConfig.for_tests(
            bytes([tag, 2]) * 16, tuple(server.listen_addrs()), persistent_streams=persistent)))

        async def request(payload: bytes) -> bytes:
            return await client.request(server.local_id, protocol, payload, timeout=10.0)

        yield request


async def run_request_rtts(
    sizes: list[int], count: int, rounds: int
) -> dict[tuple[str, int], list[float]]:
    """Round trips per (path, payload size), the paths' batches alternating over `rounds`
    (load on the machine hits them alike); ("x8_batch", size): seconds per batch of 8."""
    out: dict[tuple[str, int], list[float]] = {}
    async with open_raw_echo_pair() as raw, open_ours_echo_pair(False) as per_request, \
            open_ours_echo_pair(True) as persistent:
        for size in sizes:
            for key in ("raw", "per_request", "persistent", "persistent_x8", "x8_batch"):
                out[key, size] = []
            for request in (raw, per_request, persistent):
                await time_requests(request, size, 0, warmup=5)
            for _ in range(rounds):
                n = count // rounds
                out["raw", size] += await time_requests(raw, size, n)
                out["per_request", size] += await time_requests(per_request, size, n)
                out["persistent", size] += await time_requests(persistent, size, n)
                out["persistent_x8", size] += await time_requests(
                    persistent, size, n, in_flight=8, batches=out["x8_batch", size])
    return out


@section("reqresp", "Request round trip over libp2p: persistent streams vs a stream per request",
         notes=[
    "Two nodes in ONE process and one `trio.run` on 127.0.0.1 (TCP, Noise, Yamux), echo handler "
    "(the response is the request), payload the same size each way. Baseline: bare py-libp2p "
    "0.8.1 hosts, a new negotiated stream per request (multistream-select), u32 length prefix "
    "each way, no caps, deadlines or counters (`measure_raw_request_rtt` in "
    "`scripts/bench_net.py`, also the inference benchmark's latency floor).",
    "Ours: `Libp2pNetwork.request`. *per request*: the requester has `persistent_streams=False`, "
    "a new stream per request (the path kept for peers without persistent streams). "
    "*persistent*: one long-lived stream per (peer, protocol), frames with request ids "
    "(`p2p/libp2p_streams.py`). *x8*: batches of 8 requests sent at once on that stream, each "
    "timed from its own send to its own response (throughput = 8 / batch time in the text).",
    "All three pairs of nodes are up at once; per payload size, batches of each path "
    "alternate (10 rounds), after 5 warm-up requests each. Sequential rows: one request at a "
    "time; medians. The machine's 2 cores are shared: compare rows, not absolute figures.",
])
def bench_reqresp(run: SectionRun) -> None:
    import trio

    sizes = [1024, 64 * 1024]
    count, rounds = run.pick((400, 10), (40, 2))
    logging.disable(logging.WARNING)
    try:
        result = trio.run(run_request_rtts, sizes, count, rounds)
    finally:
        logging.disable(logging.NOTSET)
    labels = {
        "per_request": "ours, a new stream per request",
        "persistent": "ours, one persistent stream, sequential",
        "persistent_x8": "ours, one persistent stream, 8 in flight",
    }
    for size in sizes:
        raw = Stat.of(result["raw", size])
        kb = f"{size // 1024}KB"
        for key, what in labels.items():
            o = Stat.of(result[key, size])
            text = f"p50 {fmt_time(o.median)}, p95 {fmt_time(o.p95)} (n={o.samples})"
            extra = {"ours_p95_s": o.p95, "baseline_p95_s": raw.p95}
            if key == "persistent_x8":
                rate = 8 / statistics.median(result["x8_batch", size])
                text += f"; {fmt_rate(rate)} req/s (raw sequential {fmt_rate(1 / raw.median)})"
                extra["requests_per_s"] = rate
            run.row(Row(
                name=f"reqresp.{kb}.{key}",
                what=f"{what}: {size}-byte request and response",
                ours=o.median, baseline=raw.median, unit="s",
                ours_text=text,
                baseline_text=f"p50 {fmt_time(raw.median)}, p95 {fmt_time(raw.p95)} (n={raw.samples})",
                baseline_what="raw py-libp2p, a new stream per request, bare echo",
                ratio=o.median / raw.median, better="lower", goal=None, extra=extra,
            ))


# --- sync --------------------------------------------------------------------------------------


@section("sync", "Block import while syncing vs raw signature checks", notes=[
    "Ours: what `ChainRunner._import_synced` does for each block fetched from a peer, through "
    "the same `chain/` functions: `verify_commit` (the block's certificate, 4 precommits of 4 "
    "validators), `apply_block` with the engine's context (every rule: transaction signatures, "
    "nonces, balances, state root, and the carried certificate of the parent) and "
    "`ChainStore.commit_block` (one synced LevelDB write batch) into a fresh `LevelDBKV`, from "
    "genesis. The blocks (reward chain, 200 signed transfers each) are built beforehand with "
    "`genesis.testkit.LocalChains`; the memo caches of `chain` are cleared before each run, as "
    "for a node that never saw these transactions. Sync's request/response transport is not "
    "timed (see the gossip section for the network).",
    "Baseline: raw PyNaCl `VerifyKey.verify` over exactly the signatures those blocks carry "
    "(their transactions' and their commit certificates', keys and signed messages prepared "
    "beforehand): the one cost an import cannot avoid. ratio = the baseline's time ÷ ours, as "
    "signatures per second: 1.0 would mean an import costs nothing but its signature checks.",
    "Each block's import is followed by the baseline's check of that block's signatures, so "
    "the two are sampled side by side; rates come from the median time per block.",
])
def bench_sync(run: SectionRun) -> None:
    from chain.commit import verify_commit
    from chain.leveldb import LevelDBKV
    from chain.store import ChainStore
    from chain.transition import apply_block

    n_blocks = run.pick(20, 3)
    runs = run.pick(5, 1)
    fixture = reward_fixture(200)
    blocks = fixture.ensure(n_blocks)
    commits = [fixture.commit_of(i) for i in range(n_blocks)]
    network = fixture.pact.network_id
    validators = fixture.chains.validators
    ctx = dataclasses.replace(fixture.chains.context(), prev_validators=validators,
                              check_last_commit=True)
    checks = [signature_checks(block, commit, network, validators)
              for block, commit in zip(blocks, commits, strict=True)]
    n_sigs = [len(c) for c in checks]

    per_block: list[float] = []
    verify_per_block: list[float] = []
    for _ in range(runs):
        with run.tempdir() as d:
            store = ChainStore.open(LevelDBKV(d / "chains"), fixture.pact)
            try:
                clear_chain_caches()
                gc.collect()
                state = store.state(blocks[0].header.chain_id)
                for index, (block, commit) in enumerate(zip(blocks, commits, strict=True)):
                    start = time.perf_counter()
                    verify_commit(block.header.chain_id, block.header.height, block.hash(), commit,
                                  validators, network)
                    state, changes = apply_block(state, block, ctx)
                    store.commit_block(block, state, changes, commit)
                    per_block.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    for key, message, signature in checks[index]:
                        key.verify(message, signature)
                    verify_per_block.append(time.perf_counter() - start)
                if store.height(block.header.chain_id) != n_blocks:
                    raise RuntimeError("sync benchmark: not every block was stored")
            finally:
                store.close()
    ours, base = Stat.of(per_block), Stat.of(verify_per_block)
    sigs = statistics.fmean(n_sigs)
    txs = fixture.txs_per_block
    run.row(Row(
        name="sync.import",
        what=(f"import {n_blocks} synced reward blocks × {txs} signed transfers + commit "
              f"certificate into LevelDB, {runs} run{'s' if runs > 1 else ''}"),
        ours=sigs / ours.median, baseline=sigs / base.median, unit="sigs/s",
        ours_text=(f"{ours.rate:.3g} blocks/s · {fmt_rate(txs * ours.rate)} tx/s · "
                   f"{fmt_rate(sigs / ours.median)} sigs/s (p95 {fmt_time(ours.p95)}/block)"),
        baseline_text=(f"{fmt_rate(sigs / base.median)} verifies/s "
                       f"({fmt_time(base.median / sigs)} each, {sigs:.0f} per block)"),
        baseline_what="PyNaCl VerifyKey.verify of the same signatures",
        ratio=base.median / ours.median, better="higher", goal=0.5,
        extra={"blocks_per_s": ours.rate, "block_p95_s": ours.p95, "verify_block_s": base.median},
    ))


def signature_checks(block: Any, commit: Any, network: str, validators: Any) -> list[tuple[Any, bytes, bytes]]:
    """(VerifyKey, signed message, signature) for every signature a synced block brings: its
    transactions' and the precommits of its certificate (the parent's certificate, carried in
    the block, is the previous block's and counted there)."""
    import nacl.signing

    from chain import codec, crypto
    from chain.votes import STEP_PRECOMMIT, Vote

    out = [(nacl.signing.VerifyKey(tx.body.sender),
            crypto.signing_input(network, crypto.KIND_TX, codec.encode(tx.body)), tx.signature)
           for tx in block.txs]
    for sig in commit.signatures:
        vote = Vote(commit.chain_id, commit.height, commit.round, STEP_PRECOMMIT, commit.block_hash,
                    sig.validator)
        key = nacl.signing.VerifyKey(validators.get(sig.validator).public_key)
        out.append((key, crypto.signing_input(network, crypto.KIND_VOTE, codec.encode(vote)),
                    sig.signature))
    return out
