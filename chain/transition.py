"""The block state transition shared by the three chains: `apply_block(state, block, ctx)`.

Each rule is one check, in the order a reader would check it. A chain's own rules live in
`chain.parameter`, `chain.dataset` and `chain.reward`, each as one `RULES` table (payload ->
apply function, end of block); this module dispatches through those tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from chain import codec, crypto, dataset, merkle, parameter, reward
from chain.commit import InvalidCommit, verify_commit
from chain.context import Context, TxEnv
from chain.errors import (
    DecodingError,
    InvalidBlock,
    InvalidSignature,
    InvalidTransaction,
    MissingDependency,
)
from chain.rules import ChainRules
from chain.state import Overlay, State
from chain.types import (
    CHAIN_NAMES,
    CHAIN_REWARD,
    ZERO_HASH,
    ZERO_PUBKEY,
    ZERO_SIGNATURE,
    Block,
    BlockHeader,
    CommitCertificate,
    Transaction,
    ValidatorSet,
)

RULES_BY_CHAIN: dict[int, ChainRules] = {
    rules.chain_id: rules for rules in (parameter.RULES, dataset.RULES, reward.RULES)
}
"""Each chain's table of payloads and rules, by CHAIN_* id."""
PAYLOADS_BY_CHAIN: dict[int, tuple[type, ...]] = {
    chain_id: rules.payloads for chain_id, rules in RULES_BY_CHAIN.items()
}
SYSTEM_PAYLOADS: frozenset[type] = frozenset().union(*(rules.system for rules in RULES_BY_CHAIN.values()))
"""Payloads carried unsigned: their validity comes from what they prove, not who sent them."""


def nonce_key(address: bytes) -> bytes:
    return b"n" + address


def get_nonce(view: Overlay | State, address: bytes) -> int:
    raw = view.get(nonce_key(address))
    return 0 if raw is None else int.from_bytes(raw, "big")


def is_system_tx(tx: Transaction) -> bool:
    return type(tx.body.payload) in SYSTEM_PAYLOADS


@dataclass(frozen=True, slots=True)
class EncodedTx:
    """A transaction's canonical bytes, its signed body's bytes and its hash, computed once."""

    tx_bytes: bytes
    body_bytes: bytes
    tx_hash: bytes

    @classmethod
    def of(cls, tx: Transaction) -> EncodedTx:
        tx_bytes, body_bytes = codec.encode_with_field(tx, "body")
        return cls(tx_bytes, body_bytes, codec.hash_of(tx))  # remembered: the store wants it too


def validate_tx_envelope(tx: Transaction, chain_id: int, ctx: Context, enc: EncodedTx | None = None) -> bytes:
    """Check chain, payload kind, size and signature; return the sender address."""
    body = tx.body
    if body.chain_id != chain_id:
        raise InvalidTransaction(f"for chain {body.chain_id}, not {CHAIN_NAMES[chain_id]}")
    if not RULES_BY_CHAIN[chain_id].is_payload(body.payload):
        raise InvalidTransaction(f"{type(body.payload).__name__} is not a {CHAIN_NAMES[chain_id]} payload")
    enc = enc or EncodedTx.of(tx)
    if len(enc.tx_bytes) > ctx.params.consensus.max_tx_bytes:
        raise InvalidTransaction("transaction too large")
    if is_system_tx(tx):
        if (body.sender, body.nonce, tx.signature) != (ZERO_PUBKEY, 0, ZERO_SIGNATURE):
            raise InvalidTransaction("a system transaction has no sender, nonce or signature")
        return bytes(20)
    if body.sender == ZERO_PUBKEY:
        raise InvalidTransaction("missing sender")
    try:
        crypto.verify(body.sender, ctx.network_id, crypto.KIND_TX, enc.body_bytes, tx.signature)
    except InvalidSignature as err:
        raise InvalidTransaction("bad signature") from err
    return crypto.address_of(body.sender)


def apply_tx(view: Overlay, tx: Transaction, chain_id: int, height: int, ctx: Context,
             enc: EncodedTx | None = None) -> None:
    """Apply one transaction to `view`; on any error `view` is left as it was. `enc` saves
    encoding it again when the caller has it."""
    enc = enc or EncodedTx.of(tx)
    sender = validate_tx_envelope(tx, chain_id, ctx, enc)
    tx_hash = enc.tx_hash
    scratch = Overlay(view)
    if not is_system_tx(tx):
        expected = get_nonce(scratch, sender)
        if tx.body.nonce != expected:
            raise InvalidTransaction(f"nonce {tx.body.nonce}, expected {expected}", tx_hash)
        scratch.put(nonce_key(sender), (expected + 1).to_bytes(8, "big"))
    env = TxEnv(tx, tx_hash, sender, height, ctx)
    payload = tx.body.payload
    try:
        RULES_BY_CHAIN[chain_id].apply[type(payload)](scratch, env, payload)
    except InvalidTransaction as err:
        if not err.tx_hash:
            raise InvalidTransaction(err.reason, tx_hash) from err
        raise
    scratch.merge_into_base()


def compute_block_size(block: Block, encoded: list[EncodedTx]) -> int:
    """`len(codec.encode(block))` from the transactions' bytes already at hand."""
    txs = sum(len(enc.tx_bytes) for enc in encoded) + codec.compute_array_header_size(len(encoded))
    rest = len(codec.encode(Block(block.header, (), block.last_commit)))  # header, commit, empty list
    return rest - codec.compute_array_header_size(0) + txs


def open_block_view(state: State, height: int, ctx: Context) -> Overlay:
    """The view the transactions of block `height` (the one after `state`) apply to: `state`
    after its chain's `begin_block`. The mempool judges pending transactions on it too."""
    view = Overlay(state)
    RULES_BY_CHAIN[state.chain_id].begin_block(view, height, state.head, ctx)
    return view


def compute_tx_root(txs: tuple[Transaction, ...] | list[Transaction]) -> bytes:
    return merkle.compute_root([tx.hash() for tx in txs], 2)


def apply_block(state: State, block: Block, ctx: Context) -> tuple[State, dict[bytes, bytes | None]]:
    """The state after `block`, and the changes it made; raise `InvalidBlock` if any rule fails."""
    h = block.header
    name = CHAIN_NAMES.get(h.chain_id, str(h.chain_id))

    def fail(reason: str) -> InvalidBlock:
        return InvalidBlock(reason, h.height, name)

    if h.chain_id != state.chain_id:
        raise fail(f"block of chain {h.chain_id} offered to chain {state.chain_id}")
    if h.height != state.height + 1:
        raise fail(f"height {h.height} does not follow {state.height}")
    if h.prev_hash != state.head:
        raise fail("previous hash is not the head")
    if h.time_ms <= state.time_ms:
        raise fail("time does not increase")
    if h.validators_hash != ctx.validators.hash():
        raise fail("validators hash is not the deciding set's")
    if ctx.validators.get(h.proposer) is None:
        raise fail("proposer is not a validator")
    if len(block.txs) > ctx.params.consensus.max_block_txs:
        raise fail(f"{len(block.txs)} transactions exceed {ctx.params.consensus.max_block_txs}")
    encoded = [EncodedTx.of(tx) for tx in block.txs]
    if compute_block_size(block, encoded) > ctx.params.consensus.max_block_bytes:
        raise fail("block too large")
    validate_last_commit(block, state, ctx, fail)
    hashes = [enc.tx_hash for enc in encoded]
    if h.tx_root != merkle.compute_root(hashes, 2):
        raise fail("transactions root mismatch")
    if len(set(hashes)) != len(block.txs):
        raise fail("duplicate transaction")

    view = open_block_view(state, h.height, ctx)
    for index, (tx, enc) in enumerate(zip(block.txs, encoded, strict=True)):
        try:
            apply_tx(view, tx, h.chain_id, h.height, ctx, enc)
        except (InvalidTransaction, DecodingError) as err:
            raise fail(f"transaction {index}: {err}") from err
    try:
        RULES_BY_CHAIN[h.chain_id].end_block(view, h.height, ctx)
    except InvalidTransaction as err:
        raise fail(f"end of block: {err}") from err

    new_state = state.with_changes(view.changes, h.height, block.hash(), h.time_ms)
    if h.state_root != new_state.root:
        raise fail("state root mismatch")
    validate_next_validators(h.next_validators_hash, new_state, ctx, fail)
    return new_state, view.changes


def validate_next_validators(
    next_hash: bytes, new_state: State, ctx: Context, fail: Callable[[str], InvalidBlock]
) -> None:
    if new_state.chain_id == CHAIN_REWARD:
        if next_hash != reward.get_validator_set(new_state).hash():
            raise fail("next validators hash is not the set in the reward state")
        return
    if next_hash == ctx.validators.hash():
        return
    candidate = ctx.next_validators(next_hash) if ctx.next_validators is not None else None
    if candidate is None:
        raise MissingDependency("next validator set not known here (reward chain behind?)")
    if candidate.epoch < ctx.validators.epoch:
        raise fail("next validator set is older than the current one")


def validate_last_commit(block: Block, state: State, ctx: Context, fail: Callable[[str], InvalidBlock]) -> None:
    h = block.header
    if h.height == 1:
        if block.last_commit is not None or h.last_commit_hash != ZERO_HASH:
            raise fail("the first block carries no commit")
        return
    if block.last_commit is None:
        raise fail("missing commit of the previous block")
    if h.last_commit_hash != codec.hash_of(block.last_commit):
        raise fail("last commit hash mismatch")
    if ctx.check_last_commit:
        try:
            verify_commit(
                h.chain_id, h.height - 1, h.prev_hash, block.last_commit,
                ctx.prev_validators or ctx.validators, ctx.network_id,
            )
        except InvalidCommit as err:
            raise fail(f"previous commit: {err}") from err


def build_block(
    state: State,
    candidates: list[Transaction],
    ctx: Context,
    proposer: bytes,
    time_ms: int,
    last_commit: CommitCertificate | None,
    next_validators: ValidatorSet | None = None,
) -> tuple[Block, list[tuple[Transaction, Exception]]]:
    """For a proposer: a valid block of the candidates that apply, in order, and the rejects."""
    height = state.height + 1
    view = open_block_view(state, height, ctx)
    kept: list[Transaction] = []
    rejected: list[tuple[Transaction, Exception]] = []
    # What the block costs without transactions: a header of final sizes, the commit, and room
    # for the transaction array's length prefix to grow.
    probe = BlockHeader(state.chain_id, height, state.head, time_ms, proposer, ctx.validators.hash(),
                        ZERO_HASH, ZERO_HASH, ZERO_HASH, ZERO_HASH)
    size = len(codec.encode(Block(probe, (), last_commit))) + 8
    for tx in candidates:
        tx_size = len(codec.encode(tx))
        if len(kept) >= ctx.params.consensus.max_block_txs or size + tx_size > ctx.params.consensus.max_block_bytes:
            break
        try:
            apply_tx(view, tx, state.chain_id, height, ctx)
        except (InvalidTransaction, DecodingError, MissingDependency) as err:
            rejected.append((tx, err))
            continue
        kept.append(tx)
        size += tx_size
    RULES_BY_CHAIN[state.chain_id].end_block(view, height, ctx)
    root = state.with_changes(view.changes, height, ZERO_HASH, time_ms).root
    if state.chain_id == CHAIN_REWARD:
        next_set = reward.get_validator_set(view)
    else:
        next_set = next_validators or ctx.validators
    header = BlockHeader(
        chain_id=state.chain_id, height=height, prev_hash=state.head, time_ms=time_ms,
        proposer=proposer, validators_hash=ctx.validators.hash(), next_validators_hash=next_set.hash(),
        tx_root=compute_tx_root(kept), state_root=root,
        last_commit_hash=ZERO_HASH if last_commit is None else codec.hash_of(last_commit),
    )
    return Block(header, tuple(kept), last_commit), rejected
