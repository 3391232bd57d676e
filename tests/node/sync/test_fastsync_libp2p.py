"""Fast sync over real libp2p on 127.0.0.1: a fresh node installs a peer's snapshots; a peer
whose buckets do not match the certified root is penalised and nothing is written."""

from __future__ import annotations

import dataclasses
from contextlib import asynccontextmanager

import pytest
import trio

from chain import codec
from chain.kv import MemoryKV
from chain.store import ChainStore
from chain.types import CHAIN_IDS, CHAIN_REWARD
from genesis.history import TEST_KEYS, ChainHistory, make_test_history, make_test_pact
from node.sync.fastsync import run_fast_sync
from node.sync.snapshots import MAX_SNAPSHOT_REQUEST_BYTES, SnapshotServer
from node.sync.wire import (
    PROTOCOL_BLOCKS,
    PROTOCOL_BUCKET_HASHES,
    PROTOCOL_BUCKETS,
    PROTOCOL_HANDSHAKE,
    PROTOCOL_SNAPSHOTS,
    PROTOCOL_TRUST_PATH,
    BucketsResponse,
    StateEntry,
)
from p2p.libp2p_net import Libp2pConfig, Libp2pNetwork
from p2p.network import protocol_name

pytestmark = pytest.mark.slow


def _corrupt_first_entry(data: bytes) -> bytes:
    resp = codec.decode(BucketsResponse, data, max_size=1 << 30)
    out = []
    for b in resp.buckets:
        if b.entries and all(not x.entries for x in out):
            e = b.entries[0]
            b = dataclasses.replace(b, entries=(StateEntry(e.key, e.value + b"x"),) + b.entries[1:])
        out.append(b)
    return codec.encode(BucketsResponse(tuple(out)))


@asynccontextmanager
async def serving(server: SnapshotServer, network_id: str, corrupt: bool = False):
    cfg = Libp2pConfig(seed=bytes([7]) * 32, listen="/ip4/127.0.0.1/tcp/0")
    async with Libp2pNetwork.open(cfg) as net:
        for name in (PROTOCOL_SNAPSHOTS, PROTOCOL_TRUST_PATH, PROTOCOL_BUCKET_HASHES, PROTOCOL_BUCKETS, PROTOCOL_BLOCKS,
                     PROTOCOL_HANDSHAKE):
            async def handler(peer: str, data: bytes, name: str = name) -> bytes:
                out = await server.handle(name, data)
                return _corrupt_first_entry(out) if corrupt and name == PROTOCOL_BUCKETS else out

            net.set_request_handler(protocol_name(network_id, name), handler, MAX_SNAPSHOT_REQUEST_BYTES)
        yield net


@pytest.mark.parametrize("corrupt", [False, True], ids=["honest", "corrupt-bucket"])
async def test_fast_sync_from_a_libp2p_peer(corrupt: bool) -> None:
    source = make_test_history(25)
    network_id = source.store.pact.network_id
    async with serving(SnapshotServer(source.store, source.sets.get), network_id, corrupt) as server_net:
        cfg = Libp2pConfig(seed=bytes([8]) * 32, listen="/ip4/127.0.0.1/tcp/0",
                           bootstrap=tuple(server_net.listen_addrs()))
        async with Libp2pNetwork.open(cfg) as net:
            store = ChainStore.open(MemoryKV(), make_test_pact())
            sets = dict(ChainHistory(store, TEST_KEYS).sets)
            with trio.fail_after(30):
                report = await run_fast_sync(store, net, sets, min_gap=1, peer_wait_s=10.0)
            if corrupt:
                assert report is None
                assert all(store.height(c) == 0 for c in CHAIN_IDS)
                assert net.score(server_net.local_id) < 0
            else:
                assert report is not None
                assert store.state(CHAIN_REWARD).root == source.store.state(CHAIN_REWARD).root
                assert report.heights[CHAIN_REWARD] == source.store.height(CHAIN_REWARD)
                assert net.score(server_net.local_id) >= 0
