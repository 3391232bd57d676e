"""Content from a real IPFS daemon when no peer has it (js-ipfs 0.66.1, offline, on 127.0.0.1):
the node that pinned a dataset goes away, another node's fetch finds no holder, asks its IPFS
daemon by CID and keeps the bytes only once they hash to that CID. Skips with the reason where
js-ipfs is not installed (`bash scripts/setup`)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from chain import unixfs
from node.data.content import DatasetStore
from node.data.ipfs import IpfsClient
from node.data.transfer import ContentService, DatasetUnavailable, dataset_protocol, fetch_dataset
from p2p.sim import SimNetworkHub
from tests import ipfs_support

ipfs_daemon = ipfs_support.ipfs_daemon
pytestmark = pytest.mark.filterwarnings("ignore:The 'strict' parameter is no longer needed:FutureWarning")
NETWORK = "testnet-ipfs"
MB = 1 << 20


async def test_fetch_falls_back_to_ipfs_when_the_holder_is_gone(tmp_path: Path, ipfs_daemon) -> None:
    data = random.Random(3).randbytes(700_000)  # three leaves under a dag-pb root
    cid = unixfs.compute_dataset_cid(data)
    client = IpfsClient(ipfs_daemon.api, timeout=30.0)
    assert client.add(data) == cid  # the contributor's node pinned it, then went away
    async with SimNetworkHub(seed=1) as hub:
        gone = hub.add_node("contributor")
        holder = DatasetStore(tmp_path / "contributor")
        holder.put(data)
        service = ContentService(NETWORK, holder)
        service.register(gone)
        net = hub.add_node("validator")
        hub.crash("contributor")
        store = DatasetStore(tmp_path / "validator")
        with pytest.raises(DatasetUnavailable):  # no holder, no IPFS: nothing
            await fetch_dataset(net, ["contributor"], cid, store, network_id=NETWORK, max_size=MB,
                                deadline_s=10.0, block_timeout_s=2.0)
        assert not store.has(cid)
        await fetch_dataset(net, ["contributor"], cid, store, network_id=NETWORK, max_size=MB,
                            deadline_s=30.0, block_timeout_s=2.0, ipfs=client)
        assert store.read(cid) == data
    assert dataset_protocol(NETWORK).endswith("/dataset-block/1")


async def test_ipfs_answer_over_the_cap_is_refused(tmp_path: Path, ipfs_daemon) -> None:
    data = random.Random(4).randbytes(300_000)
    client = IpfsClient(ipfs_daemon.api, timeout=30.0)
    cid = client.add(data)
    async with SimNetworkHub(seed=2) as hub:
        net = hub.add_node("validator")
        store = DatasetStore(tmp_path / "validator")
        with pytest.raises(DatasetUnavailable):
            await fetch_dataset(net, [], cid, store, network_id=NETWORK, max_size=200_000, deadline_s=30.0, ipfs=client)
        assert not store.has(cid)
