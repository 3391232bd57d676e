"""The three chains on a key-value store: blocks, states, indexes and heads.

Layout (one-byte column, then the chain id byte, then the key):

    B chain height       -> Block            H chain block_hash -> height
    T chain tx_hash      -> TxLocation       S chain state_key  -> state value
    M chain              -> ChainMeta        C chain height     -> CommitCertificate
    G "pact" / "hash"    -> the genesis pact and its hash
    N "vset" set_hash    -> ValidatorSet: every validator set this node has known

A block, the state changes it makes, its indexes, its commit and the new head go in ONE write
batch, so a process killed at any instant restarts at a block boundary with every index intact.
"""

from __future__ import annotations

import logging

from chain import codec
from chain.codec import U32, U64, Hash32, wire
from chain.context import Context
from chain.errors import DecodingError, StoreError
from chain.kv import (
    COL_BLOCK,
    COL_BLOCK_BY_HASH,
    COL_COMMIT,
    COL_GENESIS,
    COL_META,
    COL_NODE,
    COL_STATE,
    COL_TX,
    KV,
    height_key,
)
from chain.pact import GenesisPact, build_genesis, compute_genesis_hash
from chain.state import State
from chain.transition import apply_block
from chain.types import CHAIN_IDS, CHAIN_NAMES, Block, BlockHeader, CommitCertificate, ValidatorSet

logger = logging.getLogger(__name__)

_PACT_KEY = COL_GENESIS + b"pact"
_HASH_KEY = COL_GENESIS + b"hash"
_BASE_KEY = COL_META + b"base"
"""+ chain id byte -> the height of an installed snapshot (blocks below it are not held)."""
_VSET_PREFIX = COL_NODE + b"vset"
"""+ hash of a validator set -> that set."""


@wire
class ChainMeta:
    """The head of one chain."""

    height: U64
    """Height of the head block."""
    head: Hash32
    """Hash of the head block."""
    time_ms: U64
    """Time of the head block."""
    state_root: Hash32
    """State root after the head block."""


@wire
class TxLocation:
    height: U64
    """Block height."""
    index: U32
    """Position in the block."""


class ChainStore:
    """The chains of one node on one KV. Not thread-safe: one owner task writes."""

    def __init__(self, kv: KV, pact: GenesisPact, states: dict[int, State]) -> None:
        self.kv = kv
        self.pact = pact
        self.genesis_hash = compute_genesis_hash(pact)
        self._states = states

    # --- opening ----------------------------------------------------------------------------

    @classmethod
    def open(cls, kv: KV, pact: GenesisPact | None = None) -> ChainStore:
        """Load the chains; with `pact`, initialise an empty store or check it matches."""
        stored = kv.get(_PACT_KEY)
        if stored is None:
            if pact is None:
                raise StoreError("store holds no chains and no genesis was given")
            return cls._initialize(kv, pact)
        try:
            stored_pact = codec.decode(GenesisPact, stored, max_size=1 << 30)
        except DecodingError as err:
            raise StoreError(f"stored genesis is unreadable: {err}") from err
        if pact is not None and compute_genesis_hash(pact) != compute_genesis_hash(stored_pact):
            raise StoreError(
                f"store holds genesis {compute_genesis_hash(stored_pact).hex()[:16]} of network "
                f"{stored_pact.network_id!r}, not {compute_genesis_hash(pact).hex()[:16]} of {pact.network_id!r}"
            )
        states = {chain_id: cls._load_state(kv, chain_id) for chain_id in CHAIN_IDS}
        return cls(kv, stored_pact, states)

    @classmethod
    def _initialize(cls, kv: KV, pact: GenesisPact) -> ChainStore:
        genesis = build_genesis(pact)
        puts: list[tuple[bytes, bytes]] = [
            (_PACT_KEY, codec.encode(pact)),
            (_HASH_KEY, compute_genesis_hash(pact)),
        ]
        states = {}
        for chain_id, g in genesis.items():
            c = bytes([chain_id])
            puts.append((COL_BLOCK + c + height_key(0), codec.encode(Block(g.header, (), None))))
            puts.append((COL_BLOCK_BY_HASH + c + g.state.head, height_key(0)))
            puts.extend((COL_STATE + c + k, v) for k, v in g.state.items())
            meta = ChainMeta(0, g.state.head, g.header.time_ms, g.state.root)
            puts.append((COL_META + c, codec.encode(meta)))
            states[chain_id] = g.state
        kv.write_batch(puts, [], sync=True)
        logger.info("initialised chains of network %s, genesis %s", pact.network_id,
                    compute_genesis_hash(pact).hex()[:16])
        return cls(kv, pact, states)

    @staticmethod
    def _load_state(kv: KV, chain_id: int) -> State:
        c = bytes([chain_id])
        raw = kv.get(COL_META + c)
        if raw is None:
            raise StoreError(f"{CHAIN_NAMES[chain_id]} chain has no head")
        try:
            meta = codec.decode(ChainMeta, raw)
        except DecodingError as err:
            raise StoreError(f"{CHAIN_NAMES[chain_id]} chain head is unreadable: {err}") from err
        prefix = COL_STATE + c
        items = {k[len(prefix):]: v for k, v in kv.iterate(prefix)}
        state = State.from_items(chain_id, meta.height, meta.head, meta.time_ms, items)
        if state.root != meta.state_root:
            raise StoreError(
                f"{CHAIN_NAMES[chain_id]} chain state does not match its head at height "
                f"{meta.height}: the store is corrupt"
            )
        return state

    # --- reading ----------------------------------------------------------------------------

    def state(self, chain_id: int) -> State:
        return self._states[chain_id]

    def height(self, chain_id: int) -> int:
        return self._states[chain_id].height

    def head(self, chain_id: int) -> bytes:
        return self._states[chain_id].head

    def get_block(self, chain_id: int, height: int) -> Block | None:
        raw = self.kv.get(COL_BLOCK + bytes([chain_id]) + height_key(height))
        return None if raw is None else codec.decode(Block, raw, max_size=1 << 30)

    def get_header(self, chain_id: int, height: int) -> BlockHeader | None:
        block = self.get_block(chain_id, height)
        return None if block is None else block.header

    def get_height_of(self, chain_id: int, block_hash: bytes) -> int | None:
        raw = self.kv.get(COL_BLOCK_BY_HASH + bytes([chain_id]) + block_hash)
        return None if raw is None else int.from_bytes(raw, "big")

    def get_block_by_hash(self, chain_id: int, block_hash: bytes) -> Block | None:
        height = self.get_height_of(chain_id, block_hash)
        return None if height is None else self.get_block(chain_id, height)

    def get_tx_location(self, chain_id: int, tx_hash: bytes) -> TxLocation | None:
        raw = self.kv.get(COL_TX + bytes([chain_id]) + tx_hash)
        return None if raw is None else codec.decode(TxLocation, raw)

    def get_commit(self, chain_id: int, height: int) -> CommitCertificate | None:
        raw = self.kv.get(COL_COMMIT + bytes([chain_id]) + height_key(height))
        return None if raw is None else codec.decode(CommitCertificate, raw)

    def load_validator_sets(self) -> dict[bytes, ValidatorSet]:
        """Every validator set saved here, by hash: a restarted node must still check commits
        made by the sets before an epoch change."""
        sets = {}
        for _, raw in self.kv.iterate(_VSET_PREFIX):
            vs = codec.decode(ValidatorSet, raw)
            sets[vs.hash()] = vs
        return sets

    # --- writing ----------------------------------------------------------------------------

    def import_block(
        self, block: Block, ctx: Context, commit: CommitCertificate | None = None
    ) -> State:
        """Check `block` against its chain's rules and commit it; raise InvalidBlock otherwise."""
        chain_id = block.header.chain_id
        if chain_id not in self._states:
            raise StoreError(f"unknown chain {chain_id}")
        new_state, changes = apply_block(self._states[chain_id], block, ctx)
        self.commit_block(block, new_state, changes, commit)
        return new_state

    def commit_block(
        self,
        block: Block,
        new_state: State,
        changes: dict[bytes, bytes | None],
        commit: CommitCertificate | None,
    ) -> None:
        """Write an already-applied block, its state changes, indexes and head in one batch."""
        h = block.header
        c = bytes([h.chain_id])
        current = self._states[h.chain_id]
        if h.height != current.height + 1 or new_state.head != block.hash():
            raise StoreError("commit_block out of order")
        block_hash = new_state.head
        puts: list[tuple[bytes, bytes]] = [
            (COL_BLOCK + c + height_key(h.height), codec.encode(block)),
            (COL_BLOCK_BY_HASH + c + block_hash, height_key(h.height)),
            (COL_META + c, codec.encode(ChainMeta(h.height, block_hash, h.time_ms, new_state.root))),
        ]
        deletes: list[bytes] = []
        for index, tx in enumerate(block.txs):
            puts.append((COL_TX + c + tx.hash(), codec.encode(TxLocation(h.height, index))))
        for key, value in changes.items():
            if value is None:
                deletes.append(COL_STATE + c + key)
            else:
                puts.append((COL_STATE + c + key, value))
        if block.last_commit is not None:
            puts.append((COL_COMMIT + c + height_key(h.height - 1), codec.encode(block.last_commit)))
        if commit is not None:
            puts.append((COL_COMMIT + c + height_key(h.height), codec.encode(commit)))
        self.kv.write_batch(puts, deletes, sync=True)
        self._states[h.chain_id] = new_state

    def install_snapshot(self, block: Block, commit: CommitCertificate, state: State) -> None:
        """Make a verified snapshot the chain's head: `state` after `block`, certified by `commit`.

        The caller has checked the commit and that the state's buckets hash to the header's
        state root. Blocks below it stay absent (`get_base_height` says from where blocks are
        held); the old state is replaced, all in one batch."""
        h = block.header
        c = bytes([h.chain_id])
        current = self._states[h.chain_id]
        if state.chain_id != h.chain_id or state.height != h.height or state.head != block.hash():
            raise StoreError("snapshot state is not the state after its block")
        if state.root != h.state_root:
            raise StoreError("snapshot state root differs from its header")
        if h.height <= current.height:
            raise StoreError(f"snapshot at height {h.height} is not above the head {current.height}")
        block_hash = state.head
        puts: list[tuple[bytes, bytes]] = [
            (COL_BLOCK + c + height_key(h.height), codec.encode(block)),
            (COL_BLOCK_BY_HASH + c + block_hash, height_key(h.height)),
            (COL_COMMIT + c + height_key(h.height), codec.encode(commit)),
            (COL_META + c, codec.encode(ChainMeta(h.height, block_hash, h.time_ms, state.root))),
            (_BASE_KEY + c, height_key(h.height)),
        ]
        puts.extend((COL_TX + c + tx.hash(), codec.encode(TxLocation(h.height, i))) for i, tx in enumerate(block.txs))
        deletes = [COL_STATE + c + key for key, _ in current.items() if state.get(key) is None]
        puts.extend((COL_STATE + c + key, value) for key, value in state.items())
        self.kv.write_batch(puts, deletes, sync=True)
        self._states[h.chain_id] = state
        logger.info("%s chain: installed snapshot at height %d (%d entries)", CHAIN_NAMES[h.chain_id],
                    h.height, len(state))

    def get_base_height(self, chain_id: int) -> int:
        """The lowest height above genesis from which blocks are held (1 unless fast-synced)."""
        raw = self.kv.get(_BASE_KEY + bytes([chain_id]))
        return 1 if raw is None else int.from_bytes(raw, "big")

    def save_validator_set(self, vs: ValidatorSet) -> None:
        """Keep `vs` for `load_validator_sets` (a set already saved is written again, unchanged)."""
        self.kv.put(_VSET_PREFIX + vs.hash(), codec.encode(vs))

    def save_commit(self, chain_id: int, height: int, commit: CommitCertificate) -> None:
        self.kv.put(COL_COMMIT + bytes([chain_id]) + height_key(height), codec.encode(commit))

    def close(self) -> None:
        self.kv.close()
