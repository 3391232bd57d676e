"""Fast sync: a fresh store installs certified snapshots and goes on block by block; a peer that
lies anywhere (trust path, header, commit, bucket hashes, buckets) is caught and nothing is written."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chain import codec
from chain.kv import MemoryKV
from chain.state import N_BUCKETS
from chain.store import ChainStore
from chain.types import CHAIN_IDS, CHAIN_REWARD
from genesis.history import TEST_KEYS, TEST_PAYER, ChainHistory, make_test_history, make_test_pact
from node.sync.fastsync import FastSyncError, SnapshotClient
from node.sync.snapshots import SnapshotServer
from node.sync.wire import (
    PROTOCOL_BLOCKS,
    PROTOCOL_BUCKET_HASHES,
    PROTOCOL_BUCKETS,
    PROTOCOL_TRUST_PATH,
    BlocksResponse,
    BucketHashesResponse,
    BucketsResponse,
    StateEntry,
    TrustPathResponse,
)

KEYS = TEST_KEYS
PAYER = TEST_PAYER
EPOCH = 10  # test_params
_pact = make_test_pact
_history = make_test_history


_SERVED: dict[int, ChainHistory] = {}


def served(reward_blocks: int = 35) -> ChainHistory:
    if reward_blocks not in _SERVED:
        _SERVED[reward_blocks] = _history(reward_blocks)
    return _SERVED[reward_blocks]


def direct_request(server: SnapshotServer, tamper=None):
    """A `Request` that calls the server's handlers in process; `tamper(protocol, response)`
    may replace a decoded response before it is encoded back."""
    types = {PROTOCOL_TRUST_PATH: TrustPathResponse, PROTOCOL_BUCKET_HASHES: BucketHashesResponse,
             PROTOCOL_BUCKETS: BucketsResponse, PROTOCOL_BLOCKS: BlocksResponse}

    async def request(protocol: str, data: bytes, max_size: int) -> bytes:
        out = await server.handle(protocol, data)
        if tamper is not None and protocol in types:
            changed = tamper(protocol, codec.decode(types[protocol], out, max_size=1 << 30))
            if changed is not None:
                out = codec.encode(changed)
        return out

    return request


def fresh_client(source: ChainHistory, tamper=None) -> tuple[SnapshotClient, ChainStore]:
    store = ChainStore.open(MemoryKV(), _pact())
    genesis_sets = ChainHistory(store, KEYS).sets
    server = SnapshotServer(source.store, source.sets.get)
    return SnapshotClient(store, direct_request(server, tamper), dict(genesis_sets)), store


async def test_fresh_store_installs_every_chain_and_continues_block_by_block() -> None:
    source = served()
    client, store = fresh_client(source)
    offers = await client.get_offers()
    report = await client.sync_chains(offers, log=lambda line: None)
    for chain_id in CHAIN_IDS:
        assert store.height(chain_id) == source.store.height(chain_id)
        assert store.state(chain_id).root == source.store.state(chain_id).root
        assert report.heights[chain_id] == source.store.height(chain_id)
        assert store.get_base_height(chain_id) == source.store.height(chain_id)
    assert report.trust_steps == source.store.height(CHAIN_REWARD) // EPOCH
    # The synced store follows: the next blocks of the source apply on it.
    source_more = _history(38)
    assert source_more.store.state(CHAIN_REWARD).root != source.store.state(CHAIN_REWARD).root
    follower = ChainHistory(store, KEYS, sets=dict(client.known_sets))
    follower.grow_reward(3, PAYER, txs_per_block=2)
    assert store.state(CHAIN_REWARD).root == source_more.store.state(CHAIN_REWARD).root
    # And a reopened store loads the snapshot state with its root check.
    reopened = ChainStore.open(store.kv)
    assert reopened.state(CHAIN_REWARD).root == store.state(CHAIN_REWARD).root


async def test_snapshot_of_a_chain_at_an_epoch_boundary() -> None:
    source = served(30)
    client, store = fresh_client(source)
    await client.sync_chains(await client.get_offers(), log=lambda line: None)
    assert store.height(CHAIN_REWARD) == 30
    follower = ChainHistory(store, KEYS, sets=dict(client.known_sets))
    follower.grow_reward(1)  # decided by the set named at boundary 30


def _drop_step(protocol, resp):
    if protocol == PROTOCOL_TRUST_PATH and len(resp.steps) > 1:
        return TrustPathResponse(resp.steps[:1] + resp.steps[2:])
    return None


def _forge_set(protocol, resp):
    if protocol == PROTOCOL_TRUST_PATH and resp.steps:
        step = resp.steps[0]
        vs = step.next_set
        forged = dataclasses.replace(vs, validators=vs.validators[:1])
        return TrustPathResponse((dataclasses.replace(step, next_set=forged),) + resp.steps[1:])
    return None


def _weak_commit(protocol, resp):
    if protocol == PROTOCOL_TRUST_PATH and resp.steps:
        step = resp.steps[-1]
        commit = dataclasses.replace(step.commit, signatures=step.commit.signatures[:2])
        return TrustPathResponse(resp.steps[:-1] + (dataclasses.replace(step, commit=commit),))
    return None


def _other_block(protocol, resp):
    if protocol == PROTOCOL_BLOCKS and resp.blocks and resp.blocks[0].header.chain_id == CHAIN_REWARD:
        block = resp.blocks[0]
        header = dataclasses.replace(block.header, state_root=bytes(32))
        return BlocksResponse((dataclasses.replace(block, header=header),), resp.last_commit)
    return None


def _bad_hashes(protocol, resp):
    if protocol == PROTOCOL_BUCKET_HASHES and resp.hashes:
        return BucketHashesResponse((bytes(32),) + tuple(resp.hashes[1:]))
    return None


@pytest.mark.parametrize("tamper, reason", [
    (_drop_step, "skips"),
    (_forge_set, "next set"),
    (_weak_commit, "2/3"),
    (_other_block, "differs"),
    (_bad_hashes, "state root"),
], ids=["dropped-boundary", "forged-set", "weak-commit", "altered-header", "bucket-hashes"])
async def test_a_lying_peer_is_caught_and_nothing_is_written(tamper, reason) -> None:
    client, store = fresh_client(served(), tamper)
    with pytest.raises(FastSyncError, match=reason) as err:
        await client.sync_chains(await client.get_offers(), log=lambda line: None)
    assert err.value.peer_at_fault
    assert all(store.height(c) == 0 for c in CHAIN_IDS)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bucket=st.integers(0, N_BUCKETS - 1), kind=st.sampled_from(["value", "drop", "move", "extra"]),
       data=st.data())
async def test_any_altered_bucket_is_caught(bucket: int, kind: str, data) -> None:
    source = served()
    state = source.store.state(CHAIN_REWARD)
    nonempty = [i for i in range(N_BUCKETS) if state.bucket(i)]
    if kind in ("value", "drop", "move"):
        bucket = data.draw(st.sampled_from(nonempty))

    def tamper(protocol, resp):
        if protocol != PROTOCOL_BUCKETS:
            return None
        out = []
        for b in resp.buckets:
            if b.index == bucket:
                entries = list(b.entries)
                if kind == "value":
                    entries[0] = StateEntry(entries[0].key, entries[0].value + b"!")
                elif kind == "drop":
                    entries.pop()
                elif kind == "extra":
                    entries.append(StateEntry(b"zz-extra", b"1"))
                index = (bucket + 1) % N_BUCKETS if kind == "move" else b.index
                b = dataclasses.replace(b, index=index, entries=tuple(entries))
            out.append(b)
        return BucketsResponse(tuple(out))

    client, store = fresh_client(source, tamper)
    offers = await client.get_offers()
    with pytest.raises(FastSyncError) as err:
        await client.sync_chains({CHAIN_REWARD: offers[CHAIN_REWARD]}, log=lambda line: None)
    assert err.value.peer_at_fault
    assert store.height(CHAIN_REWARD) == 0


async def test_no_offer_above_our_head_is_refused() -> None:
    source = served()
    client, _ = fresh_client(source)
    offers = await client.get_offers()
    with pytest.raises(FastSyncError, match="no reward-chain snapshot"):
        await client.sync_chains({c: o for c, o in offers.items() if c != CHAIN_REWARD}, log=lambda line: None)


def test_offers_pin_heads_so_a_moving_chain_still_serves_them() -> None:
    history = _history(12)
    server = SnapshotServer(history.store, history.sets.get, every=64, keep_offered=2)
    offered = {o.chain_id: o.height for o in server.make_offers().offers}
    assert offered[CHAIN_REWARD] == 12
    history.grow_reward(2)
    assert server.get_state(CHAIN_REWARD, 12) is not None
    server.make_offers()
    history.grow_reward(1)
    server.make_offers()
    assert server.get_state(CHAIN_REWARD, 12) is None  # only the last two offered heads are kept
    assert server.get_state(CHAIN_REWARD, 15) is not None


async def test_a_peer_of_another_genesis_is_refused_before_anything_else() -> None:
    from genesis.testkit import make_pact

    stranger = ChainHistory(ChainStore.open(MemoryKV(), make_pact(KEYS, network_id="elsewhere")), KEYS)
    stranger.grow_reward(3)
    store = ChainStore.open(MemoryKV(), _pact())
    server = SnapshotServer(stranger.store, stranger.sets.get)
    client = SnapshotClient(store, direct_request(server), dict(ChainHistory(store, KEYS).sets))
    with pytest.raises(FastSyncError, match="elsewhere") as err:
        await client.check_handshake()
    assert err.value.peer_at_fault and err.value.ban
    await fresh_client(served())[0].check_handshake()  # our own network passes
