"""Bundle blobs over the tile protocol: their synthetic records, served by the chain's records,
fetched and verified between nodes of the simulated network; and an expert service that fetches
an accepted delta from a peer, materialises the new head and serves it."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import trio
import trio.testing

from chain import codec
from chain.blobs import BlobStore
from chain.crypto import PrivateKey
from chain.records import CLAIM_ACCEPTED, CLAIM_VOTING, expert_key
from chain.rounds import make_claim
from chain.tensors import DEFAULT_SUBTILE_SIZE, DEFAULT_TILE_SIZE
from chain.transition import get_nonce
from chain.types import CHAIN_PARAMETER
from genesis.learningkit import LEARNING_CONTRIBUTOR
from genesis.roundkit import commit_tx, make_manifest, pol_vote, reject_tx, reveal_tx
from gpu.loader import BlobLoader
from gpu.tiles import compute_tensor_root, compute_tile_count, verify_record_tile
from gpu.weights import decode_block
from node.core.feed import Committed, Feed
from node.experts.bundle_blobs import (
    BlobRef,
    BlobUnavailable,
    blob_record,
    bundle_refs,
    fetch_blob,
)
from node.experts.config import ExpertsConfig
from node.experts.inference import InlineCompute
from node.experts.materialise import Materialiser
from node.experts.service import ExpertService
from node.experts.tiles import TileRequest, TileService, run_inline, serve_tile
from node.experts.weights import ChainRecords, StateModelView, read_bundle_claims
from p2p.sim import SimNetworkHub
from tests.node.experts.delta_support import accept, get_state, make_real_delta, make_world_chains

NETWORK = "pol-test"
EXPERT = "layer0.expert0"


def make_ref(size: int, seed: int = 0, name: str = "bundle x/delta") -> tuple[bytes, BlobRef]:
    data = random.Random(seed).randbytes(size)
    return data, BlobRef(codec.sha256(data), size, compute_tensor_root(data, DEFAULT_SUBTILE_SIZE), name)


def test_bundle_refs_name_delta_residual_and_checkpoints_once() -> None:
    signed = make_manifest(LEARNING_CONTRIBUTOR, NETWORK, [(EXPERT, bytes(32))], 1)
    man = signed.manifest
    refs = bundle_refs(man)
    assert [r.blob_id for r in refs] == [man.delta.blob_id] + [c.blob_id for c in man.checkpoints]
    assert refs[0] == BlobRef(man.delta.blob_id, man.delta.compressed_bytes, man.delta.root, refs[0].name)
    assert refs[0].name.endswith("/delta") and refs[-1].name.endswith("/checkpoint-4")
    with_residual = replace(man, delta=replace(man.delta, residual_blob=b"\x01" * 32, residual_size=9,
                                               residual_root=b"\x02" * 32),
                            checkpoints=(man.checkpoints[0], man.checkpoints[0], man.checkpoints[1]))
    refs = bundle_refs(with_residual)
    assert [r.name.rsplit("/", 1)[1] for r in refs] == ["delta", "residual", "checkpoint-0", "checkpoint-2"]
    assert refs[1] == BlobRef(b"\x01" * 32, 9, b"\x02" * 32, refs[1].name)


def test_blob_record_round_trips_and_its_tiles_verify(tmp_path: Path) -> None:
    data, ref = make_ref(DEFAULT_TILE_SIZE + 70_000)
    record = blob_record(ref)
    assert codec.decode(type(record), codec.encode(record)) == record
    assert (record.size, record.merkle_root, record.subtile_size) == (len(data), ref.root, DEFAULT_SUBTILE_SIZE)
    store = BlobStore(tmp_path)
    store.put(data)
    loader = BlobLoader()
    for index in range(compute_tile_count(record.size, record.tile_size)):
        response = serve_tile(store, {ref.blob_id: record}, TileRequest(ref.blob_id, index), loader)
        verify_record_tile(record, index, response.data, response.proof)
    assert compute_tile_count(record.size, record.tile_size) == 2


def test_chain_records_serve_the_blobs_of_an_accepted_claim(tmp_path: Path) -> None:
    world, chains = make_world_chains()
    blobs = BlobStore(tmp_path)
    real = make_real_delta(chains, {EXPERT: decode_block(world.blobs[get_state(chains, EXPERT).record.blob_id])},
                           seed=1)
    accept(chains, real)
    view = StateModelView(world.pact.model, lambda: chains.states[CHAIN_PARAMETER])
    claims = read_bundle_claims(chains.states[CHAIN_PARAMETER])
    assert [c.status for c in claims] == [CLAIM_ACCEPTED]
    records = ChainRecords(view)
    delta = real.signed.manifest.delta
    assert records[delta.blob_id] == blob_record(bundle_refs(real.signed.manifest)[0])
    assert all(c.blob_id in records for c in real.signed.manifest.checkpoints)
    blobs.put(real.blob)
    response = serve_tile(blobs, records, TileRequest(delta.blob_id, 0))
    verify_record_tile(records[delta.blob_id], 0, response.data, response.proof)

    # a claim being voted on is served; once rejected, it is not
    other = make_real_delta(chains, real.results, seed=2, tag=b"rejected")
    claim = make_claim(other.signed.manifest)
    nonce = get_nonce(chains.states[CHAIN_PARAMETER], LEARNING_CONTRIBUTOR.address)
    for tx in (commit_tx(LEARNING_CONTRIBUTOR, NETWORK, nonce, claim),
               reveal_tx(LEARNING_CONTRIBUTOR, NETWORK, nonce + 1, other.signed, claim)):
        assert not chains.advance(CHAIN_PARAMETER, [tx])[1]
    statuses = [c.status for c in read_bundle_claims(chains.states[CHAIN_PARAMETER])]
    assert statuses == [CLAIM_VOTING, CLAIM_ACCEPTED]
    assert other.signed.manifest.delta.blob_id in ChainRecords(view)
    votes = [pol_vote(k, NETWORK, claim, accepted=False, reason="loss") for k in chains.keys]
    assert not chains.advance(CHAIN_PARAMETER, [reject_tx(claim, votes)])[1]
    assert [c.status for c in read_bundle_claims(chains.states[CHAIN_PARAMETER])] == [CLAIM_ACCEPTED]
    assert other.signed.manifest.delta.blob_id not in ChainRecords(view)


class Node:
    def __init__(self, root: Path, net, records, blobs: list[bytes] = ()) -> None:
        self.store = BlobStore(root / "blobs")
        for data in blobs:
            self.store.put(data)
        self.net = net
        self.tiles = TileService(NETWORK, self.store, BlobLoader(), records, offload=run_inline)
        self.tiles.register(net)


async def test_fetch_blob_between_nodes(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    data, ref = make_ref(DEFAULT_TILE_SIZE + 1000, seed=3)
    async with SimNetworkHub(seed=1) as hub:
        holder = Node(tmp_path / "a", hub.add_node("a"), {ref.blob_id: blob_record(ref)}, [data])
        empty = Node(tmp_path / "c", hub.add_node("c"), {})
        me = Node(tmp_path / "b", hub.add_node("b"), {})
        await fetch_blob(me.tiles, me.net, ["c", "a"], ref, me.store)
        assert me.store.get(ref.blob_id, verify=True) == data
        await fetch_blob(me.tiles, me.net, [], ref, me.store)  # here and good: nothing to do
        other_data, other = make_ref(5000, seed=4, name="bundle y/checkpoint-0")
        with pytest.raises(BlobUnavailable, match="checkpoint-0") as info:
            await fetch_blob(me.tiles, me.net, ["a", "c"], other, me.store, deadline_s=30)
        assert info.value.ref == other and not me.store.has(other.blob_id)  # no partial file left
        with pytest.raises(BlobUnavailable, match="no peer"):
            await fetch_blob(empty.tiles, empty.net, [], ref, empty.store)
        assert holder.store.has(ref.blob_id) and other_data


async def test_expert_service_fetches_materialises_and_serves_a_new_head(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    world, chains = make_world_chains()
    real = make_real_delta(chains, {EXPERT: decode_block(world.blobs[get_state(chains, EXPERT).record.blob_id])},
                           seed=9)
    read_state = lambda: chains.states[CHAIN_PARAMETER]  # noqa: E731
    async with SimNetworkHub(seed=2) as hub:
        peer_view = StateModelView(world.pact.model, read_state)
        Node(tmp_path / "peer", hub.add_node("peer"), ChainRecords(peer_view), [real.blob])
        net = hub.add_node("me")
        blobs = BlobStore(tmp_path / "me")
        for data in world.blobs.values():
            blobs.put(data)
        heads = Materialiser(blobs, tmp_path / "me-heads.json")
        view = StateModelView(world.pact.model, read_state, heads)
        tiles = TileService(NETWORK, blobs, BlobLoader(), ChainRecords(view), offload=run_inline)
        service = ExpertService(net, PrivateKey.from_label("me"), view, blobs,
                                ExpertsConfig(serve=(EXPERT,), spot_check=0.0), network_id=NETWORK, clock=net,
                                compute=InlineCompute(), rng=random.Random(0), tiles=tiles, materialiser=heads)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            old = service.local.served[(0, 0)]
            claim_hash, _ = accept(chains, real)
            assert not blobs.has(real.signed.manifest.delta.blob_id)
            await service.on_heads_moved()
            assert service.local.served[(0, 0)] == claim_hash != old
            assert blobs.has(real.signed.manifest.delta.blob_id)
            assert view.get_record(EXPERT) is not None
            assert heads.heads() == [(EXPERT, claim_hash)]
            nursery.cancel_scope.cancel()


async def test_expert_service_follows_the_feed_to_a_second_delta(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    world, chains = make_world_chains()
    blobs = BlobStore(tmp_path / "me")
    for data in world.blobs.values():
        blobs.put(data)
    first = make_real_delta(chains, {EXPERT: decode_block(world.blobs[get_state(chains, EXPERT).record.blob_id])},
                            seed=11, tag=b"one")
    accept(chains, first)
    blobs.put(first.blob)
    read_state = lambda: chains.states[CHAIN_PARAMETER]  # noqa: E731
    heads = Materialiser(blobs, tmp_path / "heads.json")
    view = StateModelView(world.pact.model, read_state, heads)
    feed = Feed()
    async with SimNetworkHub(seed=3) as hub:
        net = hub.add_node("me")
        tiles = TileService(NETWORK, blobs, BlobLoader(), ChainRecords(view), offload=run_inline)
        service = ExpertService(net, PrivateKey.from_label("me"), view, blobs,
                                ExpertsConfig(serve=("auto",), spot_check=0.0), network_id=NETWORK, clock=net,
                                compute=InlineCompute(), rng=random.Random(0), tiles=tiles, materialiser=heads,
                                feed=feed)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            await wait_for(lambda: service.local.served.get((0, 0)) == get_state(chains, EXPERT).head)
            first_record = view.get_record(EXPERT)
            second = make_real_delta(chains, first.results, seed=12, tag=b"two")
            h2, _ = accept(chains, second)
            blobs.put(second.blob)
            block = chains.blocks[CHAIN_PARAMETER][-1]
            feed.publish(Committed(CHAIN_PARAMETER, block, read_state(), {expert_key(EXPERT): b""}, False, 0.0))
            await wait_for(lambda: service.local.served.get((0, 0)) == h2)
            got = decode_block(blobs.get(view.get_record(EXPERT).blob_id))
            assert all(torch.equal(got[k], second.results[EXPERT][k]) for k in got)
            assert not blobs.has(first_record.blob_id)  # superseded and served no more: collected
            nursery.cancel_scope.cancel()


async def wait_for(condition, limit_s: float = 60.0) -> None:
    """Wait (on the mock clock) until `condition()` holds."""
    with trio.fail_after(limit_s):
        while not condition():
            await trio.sleep(0.05)
