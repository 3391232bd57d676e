"""Learning rounds through engines on the simulated network: a contributor's node trains a real
bundle, commits, reveals; the validator's PoL service runs the real verifier, signs its vote, and
the vote pool's certificate or rejection goes into a parameter-chain block; the round's close
moves the head. Also the vote pool's rules on their own."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from chain import codec
from chain.blobs import BlobStore
from chain.crypto import format_address
from chain.kv import MemoryKV
from chain.payloads import CertifyDelta, RejectDelta
from chain.records import (
    CLAIM_ACCEPTED,
    CLAIM_REJECTED,
    CLAIM_VOTING,
    ClaimRecord,
    ExpertState,
    claim_key,
    earning_key,
    expert_key,
)
from chain.rounds import compute_earning_id, make_claim
from chain.state import Overlay
from chain.store import ChainStore
from chain.types import CHAIN_PARAMETER
from node.api import pol_methods
from node.api.client import RPCError
from node.api.services import Services
from node.core.feed import Committed, PolVerified
from node.engine.config import EngineConfig
from node.engine.engine import Engine
from node.pol.contributor import make_training_plan, train_bundle
from node.pol.service import PolConfig, PolService, make_store_materials
from node.pol.submit import COMMITTING, REVEALED, SubmissionRefused, SubmissionService
from node.sync.config import SyncTiming
from node.sync.service import SyncService
from p2p.network import Verdict
from p2p.sim import SimNetworkHub
from tests.node.pol.learning_support import CONTRIBUTOR, OPTIONS, VALIDATOR, World, make_world

DEADLINE_S = 600.0


@pytest.fixture(scope="module")
def world() -> World:
    return make_world()


def blob_store(path: Path, world: World) -> BlobStore:
    blobs = BlobStore(path)
    for data in world.blobs.values():
        blobs.put(data)
    return blobs


def claim_of(store: ChainStore, claim_hash: bytes) -> ClaimRecord | None:
    return Overlay(store.state(CHAIN_PARAMETER)).get_record(claim_key(claim_hash), ClaimRecord)


async def until(feed, condition: Callable[[], bool]) -> None:
    """Wait, on `feed`'s events, for `condition` (bounded by the caller's deadline)."""
    while not condition():
        await feed.receive()


class Net:
    """A validator node (PoL service) and a contributor node (submissions) on one simulated
    network, each with its own store and blob store."""

    def __init__(self, hub: SimNetworkHub, world: World, tmp: Path) -> None:
        self.stores = [ChainStore.open(MemoryKV(), world.pact) for _ in range(2)]
        self.nets = [hub.add_node("validator"), hub.add_node("contributor")]
        for net in self.nets:
            hub.set_clock_skew(net.local_id, world.pact.genesis_time_ms)
        keys = [VALIDATOR, CONTRIBUTOR]
        self.engines = [Engine(s, k, n, n, EngineConfig.for_tests(), name=n.local_id)
                        for s, k, n in zip(self.stores, keys, self.nets, strict=True)]
        self.blobs = [blob_store(tmp / f"blobs{i}", world) for i in range(2)]
        self.pols = [PolService(e, k, b, tmp / f"votes{i}", make_store_materials(e, b), config=PolConfig(),
                                offload=False)
                     for i, (e, k, b) in enumerate(zip(self.engines, keys, self.blobs, strict=True))]
        self.submissions = SubmissionService(self.engines[1], CONTRIBUTOR, self.blobs[1], tmp / "submissions")

    async def start(self, nursery: trio.Nursery) -> None:
        for engine in self.engines:
            await nursery.start(engine.run)
            await nursery.start(SyncService(engine, SyncTiming.for_tests(), name=engine.name).run)
        for pol in self.pols:
            await nursery.start(pol.run)
        nursery.start_soon(self.submissions.follow)


def train(world: World, engine: Engine, blobs: BlobStore, out: Path, **options: object):
    m = make_store_materials(engine, blobs)()
    plan = make_training_plan(m, dataclasses.replace(OPTIONS, datasets=world.train, **options))
    return train_bundle(m, plan, CONTRIBUTOR, out)


def copy_bundle_blobs(bundle: Path, blobs: BlobStore) -> None:
    for file in (bundle / "blobs").iterdir():
        blobs.put(file.read_bytes())


# --- end to end ---------------------------------------------------------------------------------


async def test_submitted_delta_is_verified_certified_and_becomes_the_head(
        world: World, tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetworkHub(seed=11) as hub:
        net = Net(hub, world, tmp_path)
        validator_feed = net.engines[0].feed.subscribe("test", kinds=[Committed, PolVerified])
        contributor_feed = net.engines[1].feed.subscribe("test", kinds=[Committed])
        async with trio.open_nursery() as nursery:
            await net.start(nursery)
            result = train(world, net.engines[1], net.blobs[1], tmp_path / "bundle")
            copy_bundle_blobs(tmp_path / "bundle", net.blobs[0])  # the tile protocol: tests/node/experts
            sub = net.submissions.submit(tmp_path / "bundle")
            assert sub.status == COMMITTING
            claim_hash = sub.claim_hash
            with trio.fail_after(DEADLINE_S):
                await until(validator_feed, lambda: (rec := claim_of(net.stores[0], claim_hash)) is not None
                            and rec.status == CLAIM_ACCEPTED)
                await until(contributor_feed, lambda: net.stores[1].state(CHAIN_PARAMETER).root
                            == net.stores[0].state(CHAIN_PARAMETER).root)
            nursery.cancel_scope.cancel()
    rec = claim_of(net.stores[0], claim_hash)
    assert net.submissions.submissions[claim_hash].status == REVEALED
    assert rec.voters == (VALIDATOR.address,)
    assert rec.new_loss_ppm < rec.base_loss_ppm
    verified = [e for e in validator_feed.drain() if isinstance(e, PolVerified)]
    assert not verified or verified[0].accepted  # drained while waiting: the record says the rest
    claim = make_claim(result.signed.manifest)
    for name in (b.name for b in claim.blocks):
        state = Overlay(net.stores[0].state(CHAIN_PARAMETER)).get_record(expert_key(name), ExpertState)
        assert state.head == claim_hash and state.deltas == (claim_hash,)
    certify = [tx for h in range(1, net.stores[0].height(CHAIN_PARAMETER) + 1)
               for tx in net.stores[0].get_block(CHAIN_PARAMETER, h).txs if isinstance(tx.body.payload, CertifyDelta)]
    assert len(certify) == 1
    vote = certify[0].body.payload.certificate.votes[0].vote
    assert vote.verdict.accepted and vote.verdict.segments  # computed: segments replayed
    assert net.stores[0].state(CHAIN_PARAMETER).root == net.stores[1].state(CHAIN_PARAMETER).root
    earned = compute_earning_id(claim_hash, CONTRIBUTOR.address, "delta")
    assert Overlay(net.stores[1].state(CHAIN_PARAMETER)).get(earning_key(earned)) is not None
    # What the RPC shows of it, on the contributor's node and on the validator's.
    mine = Services(node=net.engines[1], pol=net.pols[1], submissions=net.submissions)
    shown = pol_methods.get_claim(mine, {"claim": claim_hash.hex()})
    assert (shown["status"], shown["submission"]["status"], shown["voters"]) == (
        "accepted", "revealed", [format_address(VALIDATOR.address)])
    assert shown["new_loss"] < shown["base_loss"]
    [listed] = pol_methods.list_claims(mine, {})
    assert listed["claim"] == claim_hash.hex() and listed["status"] == "accepted"
    votes = pol_methods.get_pol_votes(Services(node=net.engines[0], pol=net.pols[0]), {"claim": claim_hash.hex()})
    assert votes["source"].startswith("certificate at height") and votes["votes"][0]["accepted"]
    assert votes["votes"][0]["segments"]
    current = pol_methods.get_round(mine, {})
    assert current["certified"] == [] and current["pol"]["validator"] is False
    with pytest.raises(RPCError, match="not a bundle"):
        pol_methods.submit_delta(mine, {"bundle": str(tmp_path / "nothing")})


async def test_forged_bundle_is_rejected_with_the_verifiers_reason(
        world: World, tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetworkHub(seed=12) as hub:
        net = Net(hub, world, tmp_path)
        feed = net.engines[0].feed.subscribe("test", kinds=[Committed])
        async with trio.open_nursery() as nursery:
            await net.start(nursery)
            # Trained on the validation set: the verifier refuses it (its loss would be a lie).
            train(world, net.engines[1], net.blobs[1], tmp_path / "bundle")
            forged = _retarget_datasets(tmp_path / "bundle", world.validation)
            copy_bundle_blobs(forged, net.blobs[0])
            sub = net.submissions.submit(forged)
            with trio.fail_after(DEADLINE_S):
                await until(feed, lambda: (rec := claim_of(net.stores[0], sub.claim_hash)) is not None
                            and rec.status != CLAIM_VOTING)
            nursery.cancel_scope.cancel()
    rec = claim_of(net.stores[0], sub.claim_hash)
    assert rec.status == CLAIM_REJECTED and rec.reason
    rejects = [tx for h in range(1, net.stores[0].height(CHAIN_PARAMETER) + 1)
               for tx in net.stores[0].get_block(CHAIN_PARAMETER, h).txs if isinstance(tx.body.payload, RejectDelta)]
    assert len(rejects) == 1 and not rejects[0].body.payload.votes.votes[0].vote.verdict.accepted


def _retarget_datasets(bundle: Path, datasets: tuple[str, ...]) -> Path:
    from chain.learning import SignedManifest, sign_manifest
    from node.pol.bundle import MANIFEST_FILE

    signed = codec.decode(SignedManifest, (bundle / MANIFEST_FILE).read_bytes())
    man = dataclasses.replace(signed.manifest, datasets=datasets)
    (bundle / MANIFEST_FILE).write_bytes(codec.encode(sign_manifest(CONTRIBUTOR, man)))
    return bundle


# --- submissions refused when they arrive -------------------------------------------------------


def test_submission_signed_by_another_key_refused(world: World, tmp_path: Path) -> None:
    store = ChainStore.open(MemoryKV(), world.pact)
    hub_net = _offline_engine(store, world)
    blobs = blob_store(tmp_path / "blobs", world)
    train(world, hub_net, blobs, tmp_path / "bundle")
    other = SubmissionService(hub_net, VALIDATOR, blobs, tmp_path / "subs")
    with pytest.raises(SubmissionRefused, match="submit from the contributor's node"):
        other.submit(tmp_path / "bundle")
    with pytest.raises(SubmissionRefused, match="not a bundle"):
        SubmissionService(hub_net, CONTRIBUTOR, blobs, tmp_path / "subs").submit(tmp_path / "nothing")


def _offline_engine(store: ChainStore, world: World) -> Engine:
    from tests.node.engine.test_engine import FakeNetwork

    net = FakeNetwork()
    return Engine(store, CONTRIBUTOR, net, net, EngineConfig.for_tests(), name="offline")


# --- gossip --------------------------------------------------------------------------------------


def _fake():
    from tests.node.engine.test_engine import FakeNetwork

    return FakeNetwork()


def test_gossip_of_garbage_is_rejected_and_penalised(world: World, tmp_path: Path) -> None:
    store = ChainStore.open(MemoryKV(), world.pact)
    net = _fake()
    engine = Engine(store, VALIDATOR, net, net, EngineConfig.for_tests())
    pol = PolService(engine, VALIDATOR, BlobStore(tmp_path / "b"), tmp_path / "v", make_store_materials(
        engine, BlobStore(tmp_path / "b")), offload=False)
    assert trio.run(pol.on_vote_gossip, "peer-x", b"\x00garbage") is Verdict.REJECT
    assert [p for p, _, _ in net.penalties] == ["peer-x"]
