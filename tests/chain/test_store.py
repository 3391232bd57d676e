"""ChainStore on MemoryKV and LevelDBKV: genesis, imports, reopening, indexes, corruption."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from chain import codec, crypto
from chain.errors import InvalidBlock, StoreError
from chain.kv import COL_META, COL_NODE, COL_STATE, KV, MemoryKV
from chain.leveldb import LevelDBKV
from chain.pact import build_genesis, compute_genesis_hash, compute_genesis_validators
from chain.payloads import Stake, Transfer
from chain.records import account_key
from chain.reward import validate_supply
from chain.store import ChainStore
from chain.transition import apply_block, get_nonce
from chain.types import CHAIN_DATASET, CHAIN_IDS, CHAIN_PARAMETER, CHAIN_REWARD, make_validator_set
from genesis.testkit import LocalChains, account_keys, make_pact, sign_tx, validator_keys
from tests.chain.dataset_support import make_submission

VKEYS = validator_keys(4)
AKEYS = account_keys(3)
PACT = make_pact(VKEYS, [(k.address, 100_000) for k in AKEYS])


@dataclass
class KVFactory:
    """Opens the same store again: a fresh LevelDBKV on the same directory, or the same MemoryKV."""

    kind: str
    path: Path
    memory: MemoryKV | None = None

    def open(self) -> KV:
        if self.kind == "memory":
            if self.memory is None:
                self.memory = MemoryKV()
            return self.memory
        return LevelDBKV(self.path)

    def close(self, kv: KV) -> None:
        if self.kind == "leveldb":
            kv.close()


@pytest.fixture(params=["memory", "leveldb"])
def kvs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KVFactory]:
    factory = KVFactory(request.param, tmp_path / "chains")
    yield factory
    if factory.memory is not None:
        factory.memory.close()


def reward_txs(chains: LocalChains, height: int) -> list:
    state = chains.states[CHAIN_REWARD]
    txs = []
    for i, key in enumerate(AKEYS):
        nonce = get_nonce(state, key.address)
        to = AKEYS[(i + 1) % len(AKEYS)].address
        txs.append(sign_tx(key, PACT.network_id, CHAIN_REWARD, nonce, Transfer(to, 10 + height + i)))
    if height == 3:
        txs.append(sign_tx(AKEYS[0], PACT.network_id, CHAIN_REWARD, get_nonce(state, AKEYS[0].address) + 1,
                           Stake(2_000)))
    return txs


def dataset_tx(chains: LocalChains):
    cid = crypto.cid_raw(b"store-test-corpus")
    payload = make_submission(chains.states[CHAIN_DATASET], PACT.network_id, AKEYS[1].address, cid, 100, PACT.params,
                              license="MIT")
    return sign_tx(AKEYS[1], PACT.network_id, CHAIN_DATASET, 0, payload)


def import_blocks(store: ChainStore, chains: LocalChains, n_reward: int = 12) -> None:
    """Advance the in-memory chains and import every block (with its commit) into the store."""
    ctx = chains.context()
    for height in range(1, n_reward + 1):
        block, rejected = chains.advance(CHAIN_REWARD, reward_txs(chains, height))
        assert not rejected
        store.import_block(block, ctx, chains.commits[CHAIN_REWARD])
    block, rejected = chains.advance(CHAIN_DATASET, [dataset_tx(chains)])
    assert not rejected
    store.import_block(block, ctx, chains.commits[CHAIN_DATASET])
    block, _ = chains.advance(CHAIN_DATASET, [])
    store.import_block(block, ctx)  # no commit for the head yet


def assert_store_matches(store: ChainStore, chains: LocalChains) -> None:
    assert store.pact == PACT
    assert store.genesis_hash == compute_genesis_hash(PACT)
    for chain_id in CHAIN_IDS:
        state, expected = store.state(chain_id), chains.states[chain_id]
        assert store.height(chain_id) == expected.height
        assert store.head(chain_id) == expected.head
        assert state.root == expected.root
        assert (state.height, state.time_ms) == (expected.height, expected.time_ms)
        assert sorted(state.items()) == sorted(expected.items())
        blocks = chains.blocks[chain_id]
        for block in blocks:
            h = block.header.height
            assert store.get_block(chain_id, h) == block
            assert store.get_header(chain_id, h) == block.header
            assert store.get_block_by_hash(chain_id, block.hash()) == block
            assert store.get_height_of(chain_id, block.hash()) == h
            for index, tx in enumerate(block.txs):
                loc = store.get_tx_location(chain_id, tx.hash())
                assert (loc.height, loc.index) == (h, index)
        assert store.get_block(chain_id, len(blocks) + 1) is None
        genesis_block = store.get_block(chain_id, 0)
        assert genesis_block.hash() == build_genesis(PACT)[chain_id].state.head
    reward_blocks = chains.blocks[CHAIN_REWARD]
    for block in reward_blocks[1:]:
        assert store.get_commit(CHAIN_REWARD, block.header.height - 1) == block.last_commit
    assert store.get_commit(CHAIN_REWARD, len(reward_blocks)) == chains.commits[CHAIN_REWARD]
    dataset_blocks = chains.blocks[CHAIN_DATASET]
    assert store.get_commit(CHAIN_DATASET, len(dataset_blocks)) is None
    assert store.get_commit(CHAIN_PARAMETER, 1) is None
    validate_supply(store.state(CHAIN_REWARD))


def test_store_init_from_pact(kvs: KVFactory) -> None:
    kv = kvs.open()
    store = ChainStore.open(kv, PACT)
    genesis = build_genesis(PACT)
    for chain_id in CHAIN_IDS:
        assert store.height(chain_id) == 0
        assert store.head(chain_id) == genesis[chain_id].state.head
        assert store.state(chain_id).root == genesis[chain_id].state.root
        assert store.get_header(chain_id, 0) == genesis[chain_id].header
        assert store.get_height_of(chain_id, genesis[chain_id].state.head) == 0
    kvs.close(kv)
    again = ChainStore.open(kvs.open())
    assert again.pact == PACT
    assert again.state(CHAIN_REWARD).root == genesis[CHAIN_REWARD].state.root


def test_store_import_and_reopen(kvs: KVFactory) -> None:
    chains = LocalChains.create(PACT, VKEYS)
    kv = kvs.open()
    store = ChainStore.open(kv, PACT)
    import_blocks(store, chains)
    assert_store_matches(store, chains)
    kvs.close(kv)
    reopened = ChainStore.open(kvs.open(), PACT)
    assert_store_matches(reopened, chains)
    kvs.close(reopened.kv)
    without_pact = ChainStore.open(kvs.open())
    assert_store_matches(without_pact, chains)
    kvs.close(without_pact.kv)


def test_store_state_equals_replay(kvs: KVFactory) -> None:
    chains = LocalChains.create(PACT, VKEYS)
    kv = kvs.open()
    store = ChainStore.open(kv, PACT)
    import_blocks(store, chains)
    state = build_genesis(PACT)[CHAIN_REWARD].state
    ctx = chains.context()
    for height in range(1, store.height(CHAIN_REWARD) + 1):
        state, _ = apply_block(state, store.get_block(CHAIN_REWARD, height), ctx)
    assert sorted(state.items()) == sorted(store.state(CHAIN_REWARD).items())
    kvs.close(kv)


def test_store_continues_after_reopen(kvs: KVFactory) -> None:
    chains = LocalChains.create(PACT, VKEYS)
    kv = kvs.open()
    store = ChainStore.open(kv, PACT)
    import_blocks(store, chains, n_reward=3)
    kvs.close(kv)
    store = ChainStore.open(kvs.open(), PACT)
    block, _ = chains.advance(CHAIN_REWARD, reward_txs(chains, 4))
    store.import_block(block, chains.context(), chains.commits[CHAIN_REWARD])
    assert store.height(CHAIN_REWARD) == 4
    assert_store_matches(store, chains)
    kvs.close(store.kv)


def test_invalid_block_leaves_store_unchanged(kvs: KVFactory) -> None:
    chains = LocalChains.create(PACT, VKEYS)
    kv = kvs.open()
    store = ChainStore.open(kv, PACT)
    import_blocks(store, chains, n_reward=2)
    block, _ = chains.propose(CHAIN_REWARD, reward_txs(chains, 3))
    bad = replace(block, header=replace(block.header, state_root=b"\x01" * 32))
    with pytest.raises(InvalidBlock, match="state root mismatch"):
        store.import_block(bad, chains.context())
    assert store.get_block(CHAIN_REWARD, 3) is None
    assert store.get_height_of(CHAIN_REWARD, bad.hash()) is None
    assert all(store.get_tx_location(CHAIN_REWARD, tx.hash()) is None for tx in bad.txs)
    assert_store_matches(store, chains)
    kvs.close(kv)
    assert_store_matches(ChainStore.open(kvs.open()), chains)


def test_invalid_commit_out_of_order(kvs: KVFactory) -> None:
    chains = LocalChains.create(PACT, VKEYS)
    kv = kvs.open()
    store = ChainStore.open(kv, PACT)
    chains.advance(CHAIN_REWARD, [])
    block, _ = chains.advance(CHAIN_REWARD, [])
    with pytest.raises(StoreError, match="out of order"):
        store.commit_block(block, chains.states[CHAIN_REWARD], {}, None)
    assert store.height(CHAIN_REWARD) == 0
    with pytest.raises(StoreError, match="unknown chain"):
        store.import_block(replace(block, header=replace(block.header, chain_id=7)), chains.context())
    kvs.close(kv)


def test_save_commit_stores_late_commit(kvs: KVFactory) -> None:
    chains = LocalChains.create(PACT, VKEYS)
    kv = kvs.open()
    store = ChainStore.open(kv, PACT)
    block, _ = chains.advance(CHAIN_PARAMETER, [])
    store.import_block(block, chains.context())
    assert store.get_commit(CHAIN_PARAMETER, 1) is None
    store.save_commit(CHAIN_PARAMETER, 1, chains.commits[CHAIN_PARAMETER])
    kvs.close(kv)
    assert ChainStore.open(kvs.open()).get_commit(CHAIN_PARAMETER, 1) == chains.commits[CHAIN_PARAMETER]


def test_invalid_open_with_other_genesis(kvs: KVFactory) -> None:
    kv = kvs.open()
    ChainStore.open(kv, PACT)
    kvs.close(kv)
    other = make_pact(VKEYS, [(k.address, 100_000) for k in AKEYS], network_id="othernet")
    kv = kvs.open()
    with pytest.raises(StoreError, match="not .* of 'othernet'"):
        ChainStore.open(kv, other)
    with pytest.raises(StoreError):
        ChainStore.open(kv, replace(PACT, genesis_time_ms=PACT.genesis_time_ms + 1))
    assert ChainStore.open(kv, PACT).height(CHAIN_REWARD) == 0
    kvs.close(kv)


def test_invalid_open_empty_store_without_pact(kvs: KVFactory) -> None:
    kv = kvs.open()
    with pytest.raises(StoreError, match="no genesis was given"):
        ChainStore.open(kv)
    kvs.close(kv)


def _change_value(kv: KV, key: bytes) -> None:
    kv.put(key, kv.get(key) + b"\x00")


CORRUPTIONS: dict[str, Callable[[KV], None]] = {
    "changed-value": lambda kv: _change_value(kv, COL_STATE + bytes([CHAIN_REWARD]) + account_key(AKEYS[0].address)),
    "deleted-entry": lambda kv: kv.delete(COL_STATE + bytes([CHAIN_REWARD]) + account_key(AKEYS[1].address)),
    "extra-entry": lambda kv: kv.put(COL_STATE + bytes([CHAIN_DATASET]) + b"zzz", b"1"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_invalid_open_corrupt_state(kvs: KVFactory, case: str) -> None:
    chains = LocalChains.create(PACT, VKEYS)
    kv = kvs.open()
    store = ChainStore.open(kv, PACT)
    import_blocks(store, chains, n_reward=2)
    CORRUPTIONS[case](kv)
    kvs.close(kv)
    with pytest.raises(StoreError, match="corrupt"):
        ChainStore.open(kvs.open(), PACT)


def test_invalid_open_missing_head(kvs: KVFactory) -> None:
    kv = kvs.open()
    ChainStore.open(kv, PACT)
    kv.delete(COL_META + bytes([CHAIN_PARAMETER]))
    kvs.close(kv)
    with pytest.raises(StoreError, match="parameter chain has no head"):
        ChainStore.open(kvs.open())


def test_invalid_open_unreadable_pact(kvs: KVFactory) -> None:
    kv = kvs.open()
    ChainStore.open(kv, PACT)
    kv.put(b"Gpact", b"\xc1garbage")
    kvs.close(kv)
    with pytest.raises(StoreError, match="unreadable"):
        ChainStore.open(kvs.open())


def test_invalid_open_unreadable_head(kvs: KVFactory) -> None:
    kv = kvs.open()
    ChainStore.open(kv, PACT)
    kv.put(COL_META + bytes([CHAIN_REWARD]), b"\x93\x01")
    kvs.close(kv)
    with pytest.raises(StoreError, match="reward chain head is unreadable"):
        ChainStore.open(kvs.open())


def test_store_validator_sets_saved_and_reloaded(kvs: KVFactory) -> None:
    kv = kvs.open()
    store = ChainStore.open(kv, PACT)
    assert store.load_validator_sets() == {}
    first = compute_genesis_validators(PACT)
    second = make_validator_set(1, [(k.public_key, 5_000) for k in VKEYS[:3]])
    store.save_validator_set(first)
    store.save_validator_set(second)
    store.save_validator_set(first)
    kvs.close(kv)
    reopened = ChainStore.open(kvs.open())
    assert reopened.load_validator_sets() == {first.hash(): first, second.hash(): second}
    kvs.close(reopened.kv)


def test_store_validator_sets_key_layout() -> None:
    """Data dirs written before the sets moved into the store still read: N "vset" hash."""
    kv = MemoryKV()
    store = ChainStore.open(kv, PACT)
    vs = compute_genesis_validators(PACT)
    store.save_validator_set(vs)
    assert kv.get(COL_NODE + b"vset" + vs.hash()) == codec.encode(vs)
