"""node.data.ipfs against a real daemon (js-ipfs 0.66.1, offline, tests/ipfs_support.py).

These tests are where the golden CIDs of tests/chain/test_unixfs.py come from: the daemon's `add`
must print exactly what `compute_dataset_cid` computes. They skip, with the reason, where js-ipfs is
not installed (`bash scripts/setup`).
"""

from __future__ import annotations

import os

import pytest

from chain.unixfs import CHUNK_SIZE, MalformedBlock, build_dag, compute_dataset_cid
from node.data.ipfs import IpfsClient, IpfsError, IpfsUnavailable
from tests import ipfs_support
from tests.chain.test_unixfs import GOLDEN, GOLDEN_ZEROS, golden_content
from tests.ipfs_support import start_ipfs

ipfs_daemon = ipfs_support.ipfs_daemon  # the module's daemon, a fixture
# ipfshttpclient 0.8.0a2 passes urllib3 a parameter it no longer needs, on every connection.
pytestmark = pytest.mark.filterwarnings("ignore:The 'strict' parameter is no longer needed:FutureWarning")


@pytest.fixture(scope="module")
def client(ipfs_daemon):
    return IpfsClient(ipfs_daemon.api, timeout=30.0)


@pytest.mark.parametrize("size", sorted(GOLDEN))
def test_add_gives_the_golden_cid(client, size):
    data = golden_content(size)
    cid = client.add(data)
    assert cid == GOLDEN[size] == compute_dataset_cid(data)
    assert client.cat(cid, max_size=size) == data


def test_add_repeated_chunks(client):
    size, cid = GOLDEN_ZEROS
    assert client.add(bytes(size), pin=False) == cid


def test_pin_and_cat_round_trip(client):
    data = golden_content(3 * CHUNK_SIZE + 7)
    cid = client.add(data, pin=False)
    client.pin(cid)
    client.pin_content(cid, data)
    assert compute_dataset_cid(client.cat(cid, max_size=len(data))) == cid


def test_pin_content_refuses_other_content(client):
    with pytest.raises(IpfsError, match="has the CID"):
        client.pin_content(GOLDEN[1], b"not the golden byte")


def test_cat_over_the_cap(client):
    data = golden_content(CHUNK_SIZE + 1)
    cid = client.add(data)
    with pytest.raises(IpfsError, match="over the cap of 262144"):
        client.cat(cid, max_size=CHUNK_SIZE)


def test_block_get_serves_the_dags_blocks(client):
    data = golden_content(CHUNK_SIZE * 2 + 3)
    dag = build_dag(data)
    assert client.add(data) == dag.root
    assert client.block_get(dag.root) == dag.nodes[dag.root]
    for cid, offset, length in dag.leaves:
        assert client.block_get(cid) == data[offset:offset + length]


def test_block_get_missing_block_times_out(ipfs_daemon):
    absent = compute_dataset_cid(b"never added anywhere")
    with pytest.raises(IpfsUnavailable, match="timed out after 1 s"):
        IpfsClient(ipfs_daemon.api, timeout=1.0).block_get(absent)


def test_invalid_cid_is_refused_before_asking(client):
    with pytest.raises(MalformedBlock):
        client.cat("QmRaaUwTNfwgFZpeUy8qrZwrp2dY4kCKmmB5xEqvH3vtD1", max_size=10)


def test_is_available(client):
    assert client.is_available()


@pytest.mark.slow
def test_daemon_stopped_raises_ipfs_error(tmp_path):
    with start_ipfs(tmp_path) as daemon:
        client = IpfsClient(daemon.api, timeout=5.0)
        cid = client.add(b"abc")
        daemon.stop()
        assert not client.is_available()
        with pytest.raises(IpfsUnavailable, match="cannot connect"):
            client.cat(cid, max_size=10)
        with pytest.raises(IpfsError):
            client.add(b"abc")
        with pytest.raises(IpfsError):
            client.block_get(cid)
        with pytest.raises(IpfsError):
            client.pin(cid)


@pytest.mark.slow
def test_start_ipfs_kills_the_daemon_when_the_test_fails(tmp_path):
    with pytest.raises(RuntimeError, match="the test failed"), start_ipfs(tmp_path) as daemon:
        proc = daemon.proc
        raise RuntimeError("the test failed")
    assert proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)


def test_start_ipfs_skips_with_the_reason_when_not_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(ipfs_support, "JSIPFS", tmp_path / "no-jsipfs")
    with pytest.raises(pytest.skip.Exception, match="js-ipfs not installed: run bash scripts/setup"), \
            start_ipfs(tmp_path):
        pass
