"""Snapshot compaction: a validator's engine on the simulated network, its expert service
materialising a real accepted delta, its snapshot service signing the snapshot once the block
holds `snapshot_every` deltas (1 here), the pool's attestation committed as a system
transaction; afterwards the block's record names the materialised blob and its delta chain is
empty. Also the pool's rules with real signatures, and forged gossip rejected and penalised."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio.testing

from chain import codec
from chain.blobs import BlobStore
from chain.crypto import PrivateKey
from chain.heads import get_expert
from chain.kv import MemoryKV
from chain.payloads import CommitSnapshot
from chain.records import ExpertState
from chain.state import Overlay
from chain.store import ChainStore
from chain.types import CHAIN_IDS, CHAIN_PARAMETER
from genesis.learningkit import LEARNING_VALIDATOR, LearningWorld, make_learning_world
from genesis.testkit import LocalChains, certify
from gpu.loader import BlobLoader
from gpu.weights import decode_block, encode_block
from node.api import snapshot_methods
from node.api.client import RPCError
from node.api.services import Services
from node.core.feed import Committed, Penalized
from node.engine.config import EngineConfig
from node.engine.engine import Engine
from node.experts.config import ExpertsConfig
from node.experts.inference import InlineCompute
from node.experts.materialise import Materialiser
from node.experts.service import ExpertService
from node.experts.snapshot_pool import AddOutcome, SnapshotPool, compute_snapshot_record, sign_snapshot
from node.experts.snapshots import TOPIC_SNAPSHOT_ATTEST, SnapshotService
from node.experts.tiles import TileService, run_inline
from node.experts.weights import ChainRecords, LocalExperts, StoreModelView
from p2p.network import Verdict, topic_name
from p2p.sim import SimNetworkHub
from tests.node.experts.delta_support import RealDelta, accept, get_state, make_real_delta

EXPERT = "layer0.expert0"
MALLORY = PrivateKey.from_label("mallory")
DEADLINE_S = 300.0


def make_chains(snapshot_every: int = 1) -> tuple[LearningWorld, LocalChains, RealDelta]:
    """The learning world with one accepted real delta on EXPERT."""
    world = make_learning_world(snapshot_every=snapshot_every)
    chains = LocalChains.create(world.pact, [LEARNING_VALIDATOR])
    base = decode_block(world.blobs[get_state(chains, EXPERT).record.blob_id])
    real = make_real_delta(chains, {EXPERT: base}, seed=21)
    accept(chains, real)
    return world, chains, real


def store_of(world: LearningWorld, chains: LocalChains) -> ChainStore:
    """A node's store holding the blocks `chains` made, each with its commit."""
    store = ChainStore.open(MemoryKV(), world.pact)
    for chain_id in CHAIN_IDS:
        for block in chains.blocks[chain_id]:
            store.import_block(block, chains.context(), certify(block, chains.keys, world.pact.network_id))
    return store


def blob_store(path: Path, world: LearningWorld, *extra: bytes) -> BlobStore:
    blobs = BlobStore(path)
    for data in (*world.blobs.values(), *extra):
        blobs.put(data)
    return blobs


def expert_state(store: ChainStore) -> ExpertState:
    return get_expert(Overlay(store.state(CHAIN_PARAMETER)), EXPERT)


# --- end to end -----------------------------------------------------------------------------------


async def test_validator_snapshots_a_materialised_head_and_nodes_load_the_blob(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    world, chains, real = make_chains()
    store = store_of(world, chains)
    before = expert_state(store)
    assert len(before.deltas) == 1 and world.pact.params.pol.snapshot_every == 1
    blobs = blob_store(tmp_path / "blobs", world, real.blob)
    async with SimNetworkHub(seed=5) as hub:
        net = hub.add_node("validator")
        hub.set_clock_skew(net.local_id, world.pact.genesis_time_ms + 60_000)
        mallory = hub.add_node("mallory")
        engine = Engine(store, LEARNING_VALIDATOR, net, net, EngineConfig.for_tests(), name="validator")
        heads = Materialiser(blobs, tmp_path / "heads.json")
        view = StoreModelView(store, heads)
        tiles = TileService(world.pact.network_id, blobs, BlobLoader(), ChainRecords(view), offload=run_inline)
        experts = ExpertService(net, LEARNING_VALIDATOR, view, blobs, ExpertsConfig(serve=(EXPERT,), spot_check=0.0),
                                network_id=world.pact.network_id, clock=net, compute=InlineCompute(),
                                rng=random.Random(0), tiles=tiles, materialiser=heads, feed=engine.feed)
        snapshots = SnapshotService(engine, LEARNING_VALIDATOR, view, name="validator")
        experts.heads_listeners.append(snapshots.wake)
        feed = engine.feed.subscribe("test", kinds=[Committed, Penalized])
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            await nursery.start(snapshots.run)
            await nursery.start(experts.run)
            # A forged signature from another peer: the validator's address, mallory's key.
            forged = replace(sign_snapshot(MALLORY, world.pact.network_id, before.head, before.record),
                             validator=LEARNING_VALIDATOR.address)
            await mallory.publish(topic_name(world.pact.network_id, TOPIC_SNAPSHOT_ATTEST), codec.encode(forged))
            penalties = []
            with trio.fail_after(DEADLINE_S):
                while expert_state(store).deltas or experts.local.served.get((0, 0)) != expert_state(store).head:
                    event = await feed.receive()
                    if isinstance(event, Penalized):
                        penalties.append(event)
                await fetch_snapshot_as_follower(hub, world, chains, store, tmp_path)
            nursery.cancel_scope.cancel()
    penalties += [e for e in feed.drain() if isinstance(e, Penalized)]
    assert [(p.peer, "non-validator" in p.reason or "signature" in p.reason) for p in penalties] == [("mallory", True)]
    state = expert_state(store)
    blob_id = codec.sha256(encode_block(real.results[EXPERT]))
    assert state.deltas == () and state.record.blob_id == blob_id and blobs.has(blob_id)
    assert (state.version, state.record.version) == ("0.2.0", "0.2.0") and before.version == "0.1.1"
    assert state.record.merkle_root == real.signed.manifest.blocks[0].result_root
    snaps = [tx.body.payload for h in range(1, store.height(CHAIN_PARAMETER) + 1)
             for tx in store.get_block(CHAIN_PARAMETER, h).txs if isinstance(tx.body.payload, CommitSnapshot)]
    assert len(snaps) == 1 and snaps[0].base == before.head
    assert snaps[0].attestation.signers == (LEARNING_VALIDATOR.address,)
    # A node with no materialiser loads the snapshot's one blob: nothing to replay.
    fresh = LocalExperts(StoreModelView(store), blobs)
    assert fresh.serve((0, 0)) == state.head
    assert snapshots.own == {} and snapshots.pool.claims() == []


async def fetch_snapshot_as_follower(hub: SimNetworkHub, world: LearningWorld, chains: LocalChains,
                                     store: ChainStore, tmp_path: Path) -> None:
    """A node that joins after the snapshot, with the genesis blobs only: it fetches the one
    snapshot blob from the validator (tiles proven against the chain's root), no delta."""
    follower = ChainStore.open(MemoryKV(), world.pact)
    for h in range(1, store.height(CHAIN_PARAMETER) + 1):  # the model's chain is all it reads here
        follower.import_block(store.get_block(CHAIN_PARAMETER, h), chains.context(),
                              store.get_commit(CHAIN_PARAMETER, h))
    state = expert_state(follower)
    blobs = blob_store(tmp_path / "follower", world)
    net = hub.add_node("follower")
    view = StoreModelView(follower, Materialiser(blobs, tmp_path / "follower-heads.json"))
    tiles = TileService(world.pact.network_id, blobs, BlobLoader(), ChainRecords(view), offload=run_inline)
    service = ExpertService(net, PrivateKey.from_label("follower"), view, blobs, ExpertsConfig(serve=("none",)),
                            network_id=world.pact.network_id, clock=net, compute=InlineCompute(), tiles=tiles,
                            materialiser=view.heads, materialise_all=True)
    assert not blobs.has(state.record.blob_id)
    while "validator" not in net.peers():
        await trio.sleep(0.1)
    await service.on_heads_moved()
    assert blobs.has(state.record.blob_id) and view.heads.built == 0
    assert LocalExperts(view, blobs).serve((0, 0)) == state.head


# --- the pool, with real signatures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def chained() -> tuple[LearningWorld, LocalChains, RealDelta]:
    return make_chains(snapshot_every=4)


def snapshot_of(chains: LocalChains, real: RealDelta):
    state = get_state(chains, EXPERT)
    materialised = replace(state.record, blob_id=codec.sha256(encode_block(real.results[EXPERT])),
                           merkle_root=real.signed.manifest.blocks[0].result_root)
    return state, compute_snapshot_record(state, materialised)


def test_pool_attests_with_quorum_and_the_chain_takes_it(chained) -> None:
    world, chains, real = chained
    state, tensor = snapshot_of(chains, real)
    pool = SnapshotPool(world.pact.network_id)
    signed = sign_snapshot(LEARNING_VALIDATOR, world.pact.network_id, state.head, tensor)
    params = chains.states[CHAIN_PARAMETER]
    assert pool.make_system_txs(params, chains.validators) == []
    assert pool.add(signed, params, chains.validators).outcome is AddOutcome.ADDED
    assert pool.add(signed, params, chains.validators).outcome is AddOutcome.DUPLICATE
    [tx] = pool.make_system_txs(params, chains.validators)
    block, rejected = chains.propose(CHAIN_PARAMETER, [tx])
    assert not rejected and block.txs == (tx,)
    other = sign_snapshot(LEARNING_VALIDATOR, world.pact.network_id, state.head, replace(tensor, size=tensor.size + 1))
    result = pool.add(other, params, chains.validators)
    assert result.outcome is AddOutcome.INVALID and "second, different" in result.reason


@pytest.mark.parametrize(
    ("forge", "match"),
    [(lambda s: replace(s, signature=bytes(64)), "signature"),
     (lambda s: replace(s, validator=MALLORY.address), "non-validator"),
     (lambda s: s, "version")],
    ids=["bad-signature", "non-validator", "wrong-version"],
)
def test_invalid_signature_refused(chained, forge, match: str) -> None:
    world, chains, real = chained
    state, tensor = snapshot_of(chains, real)
    if match == "version":
        tensor = replace(tensor, version=state.version)
    signed = forge(sign_snapshot(LEARNING_VALIDATOR, world.pact.network_id, state.head, tensor))
    result = SnapshotPool(world.pact.network_id).add(signed, chains.states[CHAIN_PARAMETER], chains.validators)
    assert result.outcome is AddOutcome.INVALID and match in result.reason


def test_signature_on_another_head_is_ignored(chained) -> None:
    world, chains, real = chained
    state, tensor = snapshot_of(chains, real)
    signed = sign_snapshot(LEARNING_VALIDATOR, world.pact.network_id, bytes(32), tensor)
    pool = SnapshotPool(world.pact.network_id)
    assert pool.add(signed, chains.states[CHAIN_PARAMETER], chains.validators).outcome is AddOutcome.STALE
    assert pool.claims() == []


def test_service_signs_only_due_blocks_and_rejects_gossip(chained, tmp_path: Path) -> None:
    from tests.node.engine.test_engine import FakeNetwork

    world, chains, real = chained
    store = store_of(world, chains)
    net = FakeNetwork()
    engine = Engine(store, LEARNING_VALIDATOR, net, net, EngineConfig.for_tests())
    blobs = blob_store(tmp_path / "blobs", world, real.blob)
    heads = Materialiser(blobs, tmp_path / "heads.json")
    view = StoreModelView(store, heads)
    heads.materialise(EXPERT, view.get_state(EXPERT), view.get_accepted)
    service = SnapshotService(engine, LEARNING_VALIDATOR, view)
    assert service.snapshot_every == 4 and service.sign_due() == []  # one delta of four
    asked = snapshot_methods.request_snapshot(Services(node=engine, snapshots=service), {"block": EXPERT})
    assert asked["requested"] and asked["deltas"] == 1 and EXPERT in service.requested
    [signed] = service.sign_due()
    assert snapshot_methods.get_snapshots(Services(snapshots=service), {})["own_signatures"] == 1
    assert signed.tensor.blob_id == view.get_record(EXPERT).blob_id and service.sign_due() == []
    assert [type(tx.body.payload) for tx in service.make_system_txs(store.state(CHAIN_PARAMETER))] == [CommitSnapshot]
    forged = replace(signed, signature=bytes(64))
    assert trio.run(service.on_gossip, "peer-x", codec.encode(forged)) is Verdict.REJECT
    assert trio.run(service.on_gossip, "peer-y", b"\x00garbage") is Verdict.REJECT
    assert trio.run(service.on_gossip, "peer-z", codec.encode(signed)) is Verdict.IGNORE  # held already
    assert [p for p, _, _ in net.penalties] == ["peer-x", "peer-y"]


def test_pool_needs_more_than_two_thirds_of_the_power() -> None:
    """Four validators of equal power: two signatures do not attest, three do; the chain takes
    the attestation the pool assembles."""
    from tests.chain.test_parameter import delta, expert, make_chains, tensor

    chains = make_chains(4)
    delta(chains)
    state = expert(chains)
    record = replace(tensor(blob=9), version="1.1.0")
    pool = SnapshotPool(chains.pact.network_id)
    params = chains.states[CHAIN_PARAMETER]
    for key in chains.keys[:2]:
        signed = sign_snapshot(key, chains.pact.network_id, state.head, record)
        assert pool.add(signed, params, chains.validators).outcome is AddOutcome.ADDED
    assert pool.make_system_txs(params, chains.validators) == []
    pool.add(sign_snapshot(chains.keys[2], chains.pact.network_id, state.head, record), params, chains.validators)
    [tx] = pool.make_system_txs(params, chains.validators)
    assert tx.body.payload.attestation.signers == tuple(sorted(k.address for k in chains.keys[:3]))
    chains.advance(CHAIN_PARAMETER, [tx])
    assert expert(chains).record == record and expert(chains).deltas == ()
    pool.prune(chains.states[CHAIN_PARAMETER])
    assert pool.claims() == [] and pool.make_system_txs(chains.states[CHAIN_PARAMETER], chains.validators) == []


def test_request_snapshot_of_unknown_or_compact_block(chained, tmp_path: Path) -> None:
    from tests.node.engine.test_engine import FakeNetwork

    world, chains, _ = chained
    net = FakeNetwork()
    engine = Engine(store_of(world, chains), LEARNING_VALIDATOR, net, net, EngineConfig.for_tests())
    service = SnapshotService(engine, LEARNING_VALIDATOR, StoreModelView(engine.store))
    services = Services(node=engine, snapshots=service)
    assert snapshot_methods.request_snapshot(services, {"block": "layer0.expert1"})["requested"] is False
    with pytest.raises(RPCError, match="no block 'nope'"):
        snapshot_methods.request_snapshot(services, {"block": "nope"})
    assert service.requested == set()
