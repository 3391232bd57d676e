"""Tiles over the network: served with proofs, verified on arrival, never served corrupt, and a
corrupt blob repaired from peers (simulated network under MockClock; libp2p on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
import trio
import trio.testing

from chain import codec
from chain.blobs import BlobStore
from chain.tensors import KIND_EXPERT, TensorRecord
from gpu.loader import BlobLoader
from gpu.tiles import CorruptTile, compute_tile_count, get_tile
from gpu.weights import encode_block, make_tensor_record
from node.experts.tiles import (
    MAX_TILE_REQUEST_BYTES,
    RepairFailed,
    TileRequest,
    TileResponse,
    TileService,
    TileUnavailable,
    fetch_tile,
    run_inline,
    serve_tile,
    tile_protocol,
)
from p2p.network import RemoteError
from p2p.sim import SimNetwork, SimNetworkHub

NETWORK = "testnet"
TILE, SUBTILE = 4096, 512


def make_blob(seed: int = 0) -> tuple[bytes, TensorRecord]:
    gen = torch.Generator().manual_seed(seed)
    tensors = {"w1.weight": torch.randn(48, 64, generator=gen),
               "w2.weight": torch.randn(64, 40, generator=gen)}
    data = encode_block(tensors)
    return data, make_tensor_record("layer0.expert1", KIND_EXPERT, "1.0.0", data, TILE, SUBTILE)


class Node:
    """A node's blob store, loader and tile service on one network."""

    def __init__(self, root: Path, net: SimNetwork | object, records: dict[bytes, TensorRecord],
                 blobs: list[bytes]) -> None:
        self.store = BlobStore(root / "blobs")
        for data in blobs:
            self.store.put(data)
        self.loader = BlobLoader(root / "subtiles")
        self.net = net
        self.service = TileService(NETWORK, self.store, self.loader, records, offload=run_inline)
        self.service.register(net)  # type: ignore[arg-type]


def corrupt(path: Path, offset: int) -> None:
    """Flip a byte in place (bit rot), giving the file a new mtime so the change is visible."""
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x40
    st = os.stat(path)
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_wire_round_trip() -> None:
    data, record = make_blob()
    request = TileRequest(blob_id=record.blob_id, tile_index=3)
    assert len(codec.encode(request)) <= MAX_TILE_REQUEST_BYTES
    assert codec.decode(TileRequest, codec.encode(request)) == request


def test_serve_tile_gives_a_verifiable_tile(tmp_path: Path) -> None:
    data, record = make_blob()
    store = BlobStore(tmp_path)
    store.put(data)
    loader = BlobLoader()
    for index in range(compute_tile_count(record.size, TILE)):
        response = serve_tile(store, {record.blob_id: record}, TileRequest(record.blob_id, index), loader)
        assert response.data == bytes(get_tile(data, index, TILE))
        assert codec.decode(TileResponse, codec.encode(response)) == response
    assert loader.verifications == 1  # the blob is hashed once, each tile once per request


def test_serve_tile_refuses_unknown_and_out_of_range(tmp_path: Path) -> None:
    data, record = make_blob()
    store = BlobStore(tmp_path)
    records = {record.blob_id: record}
    with pytest.raises(TileUnavailable, match="not stored"):
        serve_tile(store, records, TileRequest(record.blob_id, 0))
    store.put(data)
    with pytest.raises(TileUnavailable, match="unknown blob"):
        serve_tile(store, records, TileRequest(bytes(32), 0))
    with pytest.raises(TileUnavailable, match="tiles"):
        serve_tile(store, records, TileRequest(record.blob_id, compute_tile_count(record.size, TILE)))


def test_corrupt_tile_is_never_served(tmp_path: Path) -> None:
    data, record = make_blob()
    store = BlobStore(tmp_path)
    store.put(data)
    loader = BlobLoader()
    records = {record.blob_id: record}
    serve_tile(store, records, TileRequest(record.blob_id, 1), loader)  # good hashes now known
    corrupt(store.path_of(record.blob_id), TILE + 100)
    with pytest.raises(TileUnavailable, match="corrupt"):
        serve_tile(store, records, TileRequest(record.blob_id, 1), loader)
    serve_tile(store, records, TileRequest(record.blob_id, 0), loader)  # its neighbours are fine
    # A node that never saw the blob good cannot prove any tile of it: it serves none.
    with pytest.raises(TileUnavailable, match="corrupt"):
        serve_tile(store, records, TileRequest(record.blob_id, 0), BlobLoader())


async def test_corrupt_blob_detected_not_served_then_repaired(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    data, record = make_blob()
    records = {record.blob_id: record}
    async with SimNetworkHub(seed=5) as hub:
        a = Node(tmp_path / "a", hub.add_node("a"), records, [data])
        b = Node(tmp_path / "b", hub.add_node("b"), records, [data])
        c = Node(tmp_path / "c", hub.add_node("c"), records, [])
        path = a.store.path_of(record.blob_id)
        a.loader.load(path, record)  # good once: a knows the subtile hashes
        corrupt(path, 2 * TILE + 7)

        with pytest.raises(CorruptTile) as info:
            a.loader.load(path, record)
        assert info.value.tile_index == 2
        with pytest.raises(RemoteError, match="corrupt"):  # a does not serve its bad tile
            await fetch_tile(c.net, "a", record, 2, network_id=NETWORK, timeout=5)
        good = await fetch_tile(c.net, "a", record, 1, network_id=NETWORK, timeout=5)
        assert good.data == bytes(get_tile(data, 1, TILE))

        # b has no tiles to give c; a repairs from c (refuses), then b
        repaired = await a.service.repair_from_peers(a.net, ["c", "b"], record, timeout=5)
        assert repaired == [2]
        loaded = a.loader.load(path, record)
        assert torch.equal(loaded["w1.weight"], b.loader.load(b.store.path_of(record.blob_id), record)["w1.weight"])
        assert path.read_bytes() == data
        assert await a.service.repair_from_peers(a.net, ["b"], record, timeout=5) == []

        # c had nothing: it rebuilds the whole blob from a and b
        assert await c.service.repair_from_peers(c.net, ["a", "b"], record, timeout=5) == list(
            range(compute_tile_count(record.size, TILE)))
        assert c.store.get(record.blob_id, verify=True) == data


async def test_bad_tile_from_a_peer_is_rejected_and_penalised(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    data, record = make_blob()
    async with SimNetworkHub(seed=6) as hub:
        liar, honest = hub.add_node("liar"), hub.add_node("honest")
        me = Node(tmp_path / "me", hub.add_node("me"), {}, [])
        Node(tmp_path / "honest", honest, {record.blob_id: record}, [data])
        real = serve_tile(Node(tmp_path / "x", hub.add_node("x"), {record.blob_id: record},
                               [data]).store, {record.blob_id: record},
                          TileRequest(record.blob_id, 0))

        async def lie(peer: str, request: bytes) -> bytes:
            flipped = bytearray(real.data)
            flipped[5] ^= 1
            return codec.encode(dataclasses.replace(real, data=bytes(flipped)))

        liar.set_request_handler(tile_protocol(NETWORK), lie, MAX_TILE_REQUEST_BYTES)
        with pytest.raises(CorruptTile):
            await fetch_tile(me.net, "liar", record, 0, network_id=NETWORK, timeout=5)
        assert me.net.score("liar") < 0  # type: ignore[attr-defined]
        repaired = await me.service.repair_from_peers(me.net, ["liar", "honest"], record, timeout=5)
        assert len(repaired) == compute_tile_count(record.size, TILE)
        assert me.store.get(record.blob_id, verify=True) == data


async def test_repair_fails_when_no_peer_has_the_tile(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    data, record = make_blob()
    async with SimNetworkHub(seed=7) as hub:
        me = Node(tmp_path / "me", hub.add_node("me"), {}, [])
        Node(tmp_path / "other", hub.add_node("other"), {}, [])
        with pytest.raises(RepairFailed) as info:
            await me.service.repair_from_peers(me.net, ["other", "nobody"], record, timeout=5)
        assert info.value.tiles == list(range(compute_tile_count(record.size, TILE)))


@pytest.mark.slow
async def test_tiles_over_libp2p_loopback(tmp_path: Path) -> None:
    """Two libp2p hosts on 127.0.0.1: the default thread offload, a real stream, real time."""
    from p2p.libp2p_net import Libp2pConfig, Libp2pNetwork

    data, record = make_blob(seed=3)
    records = {record.blob_id: record}
    async with Libp2pNetwork.open(Libp2pConfig.for_tests(bytes([1]) * 32)) as server:
        config = Libp2pConfig.for_tests(bytes([2]) * 32, tuple(server.listen_addrs()))
        async with Libp2pNetwork.open(config) as client:
            store = BlobStore(tmp_path / "server")
            store.put(data)
            TileService(NETWORK, store, BlobLoader(), records).register(server)
            mine = TileService(NETWORK, BlobStore(tmp_path / "client"), BlobLoader(), records)
            with trio.fail_after(20):
                while server.local_id not in client.peers():
                    await trio.sleep(0.01)
                bad = await mine.repair_from_peers(client, [server.local_id], record, timeout=10)
            assert bad == list(range(compute_tile_count(record.size, TILE)))
            assert mine.blob_store.get(record.blob_id, verify=True) == data
