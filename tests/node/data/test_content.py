"""Datasets by CID: the store (round trips, names, crashes, blocks served from the DAG) and the
dataset block protocol between nodes of the simulated network (a multi-leaf and a raw dataset,
a lying holder, no holder, the IPFS fallback, caps and deadlines), and once over real libp2p."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from chain import codec, unixfs
from chain.errors import BlyanError
from node.data.content import (
    TMP_PREFIX,
    ContentMismatch,
    DatasetNotFound,
    DatasetStore,
    InvalidCid,
    validate_cid,
)
from node.data.transfer import (
    BLOCK_PENALTY,
    DEFAULT_HEDGE_AFTER_S,
    ContentService,
    ContentUnavailable,
    DatasetBlockRequest,
    DatasetUnavailable,
    dataset_protocol,
    run_inline,
)
from p2p.network import RemoteError
from p2p.sim import SimNetworkHub
from tests.p2p.libp2p_support import star

NETWORK = "data-test"
MB = 1 << 20


def make_data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


class Node:
    """A node of the simulation with its dataset store and content service."""

    def __init__(self, root: Path, net, datasets: tuple[bytes, ...] = (), serve: bool = True) -> None:
        self.store = DatasetStore(root)
        for data in datasets:
            self.store.put(data)
        self.net = net
        self.service = ContentService(NETWORK, self.store, offload=run_inline)
        self.requests: list[str] = []
        if serve:
            net.set_request_handler(dataset_protocol(NETWORK), self.on_request, 512)

    async def on_request(self, peer: str, data: bytes) -> bytes:
        self.requests.append(codec.decode(DatasetBlockRequest, data).block)
        return await self.service.on_request(peer, data)

    async def fetch(self, peers: list[str], cid: str, **kw) -> None:
        kw.setdefault("max_size", 8 * MB)
        await self.service.fetch(self.net, peers, cid, **kw)


class LyingNode(Node):
    """Holds the datasets but flips a byte of every raw leaf it serves (not of a raw root)."""

    async def on_request(self, peer: str, data: bytes) -> bytes:
        block = await super().on_request(peer, data)
        request = codec.decode(DatasetBlockRequest, data)
        if request.block != request.root and unixfs.codec_of(request.block) == 0x55:
            return bytes([block[0] ^ 1]) + block[1:]
        return block


class StallingNode(Node):
    """Never answers."""

    async def on_request(self, peer: str, data: bytes) -> bytes:
        self.requests.append(codec.decode(DatasetBlockRequest, data).block)
        await trio.sleep_forever()
        return b""


class DagServer:
    """Serves whatever blocks it is given, by CID (a hand-made DAG)."""

    def __init__(self, net, blocks: dict[str, bytes]) -> None:
        self.blocks = blocks
        net.set_request_handler(dataset_protocol(NETWORK), self.on_request, 512)

    async def on_request(self, peer: str, data: bytes) -> bytes:
        block = self.blocks.get(codec.decode(DatasetBlockRequest, data).block)
        if block is None:
            raise ContentUnavailable("", "", "not here")
        return block


class FakeIpfs:
    """A test double of the IPFS client's `cat` (the real daemon is tested elsewhere)."""

    def __init__(self, contents: dict[str, bytes], fail: bool = False) -> None:
        self.contents = contents
        self.fail = fail
        self.calls: list[tuple[str, int]] = []

    def cat(self, cid: str, max_size: int) -> bytes:
        self.calls.append((cid, max_size))
        if self.fail or cid not in self.contents:
            raise BlyanError(f"ipfs: {cid} not found")
        return self.contents[cid]


def stored_files(store: DatasetStore) -> list[str]:
    return sorted(os.listdir(store.root))


# --- the store ------------------------------------------------------------------------------


def test_store_round_trip(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "ds")
    small, big = make_data(1000, 1), make_data(600_000, 2)
    cid = store.put(small)
    assert cid == unixfs.compute_dataset_cid(small) and store.put(small) == cid  # idempotent
    big_cid = unixfs.compute_dataset_cid(big)
    store.put_verified(big_cid, big)
    store.put_verified(big_cid, big)
    assert store.has(cid) and store.has(big_cid)
    assert store.read(cid) == small and store.read(big_cid) == big
    assert (store.size(cid), store.size(big_cid)) == (1000, 600_000)
    assert store.path(cid) == tmp_path / "ds" / cid
    assert store.cids() == sorted([cid, big_cid])
    assert DatasetStore(tmp_path / "ds").cids() == sorted([cid, big_cid])  # reopened
    store.delete(cid)
    store.delete(cid)  # absent: no error
    assert not store.has(cid) and store.cids() == [big_cid]
    with pytest.raises(DatasetNotFound):
        store.read(cid)
    with pytest.raises(DatasetNotFound):
        store.size(cid)


def test_invalid_content_mismatch_writes_nothing(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path)
    data = make_data(5000, 3)
    other = unixfs.compute_dataset_cid(data + b"!")
    with pytest.raises(ContentMismatch) as info:
        store.put_verified(other, data)
    assert info.value.expected == other and info.value.actual == unixfs.compute_dataset_cid(data)
    assert isinstance(info.value, BlyanError)
    assert stored_files(store) == []


@pytest.mark.parametrize("bad", [
    "", "..", "../etc/passwd", "b/../../x", "bafk/x", "/tmp/x", "BAFKREI", "bafkrei.tmp", "b a",
    "b" + "a" * 200, "Qmabc", "bafkrei\x00", 42,
])
def test_invalid_cid_rejected_before_it_names_a_file(tmp_path: Path, bad: object) -> None:
    store = DatasetStore(tmp_path / "ds")
    with pytest.raises(InvalidCid):
        validate_cid(bad)
    with pytest.raises(InvalidCid):
        store.path(bad)
    with pytest.raises(InvalidCid):
        store.put_verified(bad, b"x")
    assert not (tmp_path / "etc").exists() and stored_files(store) == []


def test_store_survives_a_crash_mid_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DatasetStore(tmp_path)
    data = make_data(300_000, 4)
    cid = unixfs.compute_dataset_cid(data)
    (tmp_path / (TMP_PREFIX + "crashed")).write_bytes(data[:1000])  # a write a crash cut short
    assert store.cids() == [] and not store.has(cid)  # the temp file is no dataset

    def crash(src: object, dst: object) -> None:
        raise OSError("power lost")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(BlyanError):
        store.put(data)
    monkeypatch.undo()
    assert not store.has(cid) and store.cids() == []
    reopened = DatasetStore(tmp_path)  # opening sweeps the stale temp files
    assert stored_files(reopened) == []
    assert reopened.put(data) == cid and reopened.read(cid) == data


def test_store_serves_every_block_of_the_dag_from_a_cache(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path, dag_cache=2)
    data = make_data(3 * MB + 12_345, 5)
    cid = store.put(data)
    dag = unixfs.build_dag(data)
    assert dag.root == cid and len(dag.leaves) > 1
    for block_cid in [*dag.nodes, *(leaf for leaf, _, _ in dag.leaves)]:
        block = store.block(cid, block_cid)
        assert block == dag.block(block_cid, data)
        unixfs.verify_block(block_cid, block)
    assert store.cached_dags() == [cid]
    raw = store.put(make_data(1000, 6))
    assert store.block(raw, raw) == store.read(raw) and store.block(raw, cid) is None
    assert store.block(cid, raw) is None  # not a block of this DAG
    assert store.block(unixfs.compute_dataset_cid(b"absent" * 100_000), cid) is None
    others = [store.put(make_data(300_000, 7 + i)) for i in range(2)]
    for other in others:
        assert store.block(other, other) is not None
    assert store.cached_dags() == others  # bounded: the least recently used went first


def test_store_refuses_to_serve_a_corrupt_local_copy(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path)
    data = make_data(MB, 8)
    cid = store.put(data)
    dag = unixfs.build_dag(data)
    first_leaf = dag.leaves[0][0]
    assert store.block(cid, first_leaf) is not None  # the DAG is now cached
    with open(store.path(cid), "r+b") as f:
        f.write(b"\xff\xfe")
    assert store.block(cid, first_leaf) is None
    assert store.block(cid, cid) is None  # rebuilt from the corrupt file: its root differs
    assert store.cached_dags() == []


# --- the protocol on the simulated network --------------------------------------------------


async def test_fetch_multi_leaf_and_raw_datasets_from_a_holder(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    big, small = make_data(3 * MB, 10), make_data(1024, 11)
    async with SimNetworkHub(seed=1) as hub:
        holder = Node(tmp_path / "a", hub.add_node("a"), (big, small))
        Node(tmp_path / "c", hub.add_node("c"))
        me = Node(tmp_path / "b", hub.add_node("b"))
        big_cid, small_cid = unixfs.compute_dataset_cid(big), unixfs.compute_dataset_cid(small)
        assert unixfs.codec_of(small_cid) == 0x55  # one raw leaf: the block is the file
        await me.fetch(["c", "a"], big_cid)
        await me.fetch(["c", "a"], small_cid)
        assert me.store.read(big_cid) == big and me.store.read(small_cid) == small
        dag = unixfs.build_dag(big)
        assert len(holder.requests) == len(dag.nodes) + len(dag.leaves) + 1  # each block once
        assert me.net.score("c") == 0.0 and me.net.score("a") == 0.0  # not holding it is no fault
        served = len(holder.requests)
        await me.fetch([], big_cid)  # already here: nothing to do
        assert len(holder.requests) == served
        # the fetcher now holds it too, and serves it
        third = Node(tmp_path / "d", hub.add_node("d"), serve=False)
        await third.fetch(["b"], big_cid)
        assert third.store.read(big_cid) == big


async def test_invalid_block_penalises_the_holder_and_the_fetch_completes_from_another(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    data = make_data(3 * MB, 12)
    async with SimNetworkHub(seed=2) as hub:
        liar = LyingNode(tmp_path / "liar", hub.add_node("liar"), (data,))
        good = Node(tmp_path / "good", hub.add_node("good"), (data,))
        me = Node(tmp_path / "me", hub.add_node("me"))
        cid = good.store.cids()[0]
        await me.fetch(["liar", "good"], cid)
        assert me.store.read(cid) == data
        assert me.net.score("liar") == pytest.approx(-BLOCK_PENALTY, abs=0.1)  # once, then dropped
        assert me.net.score("good") == 0.0
        assert liar.requests and good.requests


async def test_a_stalling_holder_is_passed_over_within_the_block_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    data = make_data(MB, 13)
    async with SimNetworkHub(seed=3) as hub:
        StallingNode(tmp_path / "slow", hub.add_node("slow"), (data,))
        good = Node(tmp_path / "good", hub.add_node("good"), (data,))
        me = Node(tmp_path / "me", hub.add_node("me"))
        cid = good.store.cids()[0]
        start = trio.current_time()
        await me.fetch(["slow", "good"], cid, block_timeout_s=2.0)
        assert me.store.read(cid) == data and me.net.score("slow") == 0.0
        assert trio.current_time() - start < 20.0
        with pytest.raises(DatasetUnavailable, match="within 5 s") as info:
            await me.fetch(["slow"], unixfs.compute_dataset_cid(b"z" * 1000), deadline_s=5.0)
        assert info.value.cid == unixfs.compute_dataset_cid(b"z" * 1000)


async def test_a_silent_holder_costs_the_hedge_delay_not_the_block_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A request that is never answered (lost, or a holder that stalls) is hedged: the next
    holder is asked after DEFAULT_HEDGE_AFTER_S, and the block does not wait out its timeout."""
    data = make_data(MB, 15)
    async with SimNetworkHub(seed=5) as hub:
        slow = StallingNode(tmp_path / "slow", hub.add_node("slow"), (data,))
        good = Node(tmp_path / "good", hub.add_node("good"), (data,))
        me = Node(tmp_path / "me", hub.add_node("me"))
        cid = good.store.cids()[0]
        start = trio.current_time()
        await me.fetch(["slow", "good"], cid, block_timeout_s=30.0)
        elapsed = trio.current_time() - start
        assert me.store.read(cid) == data and me.net.score("slow") == 0.0
        assert slow.requests, "the stalling holder was never asked: the test proves nothing"
        assert DEFAULT_HEDGE_AFTER_S <= elapsed < 3 * DEFAULT_HEDGE_AFTER_S + 1.0 < 30.0


async def test_no_holder_is_unavailable_and_leaves_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    data = make_data(MB, 14)
    cid = unixfs.compute_dataset_cid(data)
    async with SimNetworkHub(seed=4) as hub:
        Node(tmp_path / "c", hub.add_node("c"))
        me = Node(tmp_path / "me", hub.add_node("me"))
        with pytest.raises(DatasetUnavailable, match="no peer of 2 served") as info:
            await me.fetch(["c", "nobody"], cid)
        assert info.value.cid == cid and isinstance(info.value, BlyanError)
        with pytest.raises(DatasetUnavailable, match="no peer to fetch it from"):
            await me.fetch(["me"], cid)  # only itself
        assert stored_files(me.store) == [] and me.net.score("c") == 0.0


async def test_repeated_content_is_fetched_once_per_block(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    zeros = bytes(3 * MB)
    async with SimNetworkHub(seed=9) as hub:
        holder = Node(tmp_path / "a", hub.add_node("a"), (zeros,))
        me = Node(tmp_path / "me", hub.add_node("me"))
        cid = unixfs.compute_dataset_cid(zeros)
        await me.fetch(["a"], cid)
        assert me.store.read(cid) == zeros
        assert sorted(holder.requests) == sorted({cid, unixfs.build_dag(zeros).leaves[0][0]})


async def test_invalid_dag_sizes_are_unavailable_without_penalty(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    leaf = make_data(1000, 22)
    leaf_cid = unixfs.compute_dataset_cid(leaf)
    lying_node = unixfs.encode_node([(leaf_cid, 1000, 1000), (leaf_cid, 1000, 1005)])  # one says 1005
    root = unixfs.encode_cid(unixfs.CODEC_DAG_PB, codec.sha256(lying_node))
    async with SimNetworkHub(seed=10) as hub:
        DagServer(hub.add_node("a"), {root: lying_node, leaf_cid: leaf})
        me = Node(tmp_path / "me", hub.add_node("me"))
        with pytest.raises(DatasetUnavailable, match="is said to be 1005 and 1000 bytes"):
            await me.fetch(["a"], root)
        assert me.net.score("a") == 0.0 and stored_files(me.store) == []  # the DAG's fault, not the peer's


async def test_a_dataset_over_the_cap_is_refused_from_its_root(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    big, small = make_data(3 * MB, 15), make_data(2000, 16)
    async with SimNetworkHub(seed=5) as hub:
        holder = Node(tmp_path / "a", hub.add_node("a"), (big, small))
        me = Node(tmp_path / "me", hub.add_node("me"))
        big_cid, small_cid = unixfs.compute_dataset_cid(big), unixfs.compute_dataset_cid(small)
        with pytest.raises(DatasetUnavailable, match="over the cap"):
            await me.fetch(["a"], big_cid, max_size=MB)
        assert holder.requests == [big_cid]  # the root said it all
        with pytest.raises(DatasetUnavailable, match="over the cap"):
            await me.fetch(["a"], small_cid, max_size=1999)
        assert stored_files(me.store) == []


async def test_ipfs_fallback_when_no_peer_has_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    data, small = make_data(600_000, 17), make_data(100, 18)
    cid, small_cid = unixfs.compute_dataset_cid(data), unixfs.compute_dataset_cid(small)
    ipfs = FakeIpfs({cid: data, small_cid: small})
    async with SimNetworkHub(seed=6) as hub:
        Node(tmp_path / "c", hub.add_node("c"))
        me = Node(tmp_path / "me", hub.add_node("me"))
        await me.fetch(["c"], cid, ipfs=ipfs, max_size=MB)
        await me.fetch([], small_cid, ipfs=ipfs, max_size=MB)
        assert me.store.read(cid) == data and me.store.read(small_cid) == small
        assert ipfs.calls == [(cid, MB), (small_cid, MB)]


async def test_invalid_ipfs_bytes_are_unavailable_and_leave_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    data = make_data(600_000, 19)
    cid = unixfs.compute_dataset_cid(data)
    async with SimNetworkHub(seed=7) as hub:
        me = Node(tmp_path / "me", hub.add_node("me"))
        with pytest.raises(DatasetUnavailable, match="IPFS returned bytes that hash to"):
            await me.fetch([], cid, ipfs=FakeIpfs({cid: data[:-1] + b"?"}))
        with pytest.raises(DatasetUnavailable, match="IPFS failed"):
            await me.fetch([], cid, ipfs=FakeIpfs({}, fail=True))
        with pytest.raises(DatasetUnavailable, match="over the cap"):
            await me.fetch([], cid, ipfs=FakeIpfs({cid: data}), max_size=1000)
        assert stored_files(me.store) == []


async def test_invalid_requests_are_remote_errors(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    data = make_data(1000, 20)
    async with SimNetworkHub(seed=8) as hub:
        holder = Node(tmp_path / "a", hub.add_node("a"), (data,))
        me = hub.add_node("me")
        cid = holder.store.cids()[0]
        proto = dataset_protocol(NETWORK)
        good = codec.encode(DatasetBlockRequest(root=cid, block=cid))
        assert await me.request("a", proto, good, timeout=5.0) == data
        for root, block in [("../../etc/passwd", cid), (cid, "bafy/../x"), (cid, cid[:-2] + "aa")]:
            with pytest.raises(RemoteError):
                await me.request("a", proto, codec.encode(DatasetBlockRequest(root, block)), timeout=5.0)
        with pytest.raises(RemoteError):
            await me.request("a", proto, b"\x93junk", timeout=5.0)
        with pytest.raises(ContentUnavailable):
            await holder.service.on_request("me", codec.encode(DatasetBlockRequest(cid, cid[:-2] + "aa")))


# --- over libp2p ----------------------------------------------------------------------------


async def test_fetch_over_libp2p(tmp_path: Path) -> None:  # about 1 s
    data = make_data(600_000, 21)
    started = time.perf_counter()
    async with star(2) as (a, b):
        holder = ContentService(NETWORK, DatasetStore(tmp_path / "a"))
        cid = holder.store.put(data)
        holder.register(a)
        me = ContentService(NETWORK, DatasetStore(tmp_path / "b"))
        with trio.fail_after(30):
            await me.fetch(b, [a.local_id], cid, max_size=MB, deadline_s=20.0, block_timeout_s=10.0)
        assert me.store.read(cid) == data
    assert time.perf_counter() - started < 30
