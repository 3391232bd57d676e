"""JSON-RPC methods on the chains: status, blocks, transactions, accounts and peers."""

from __future__ import annotations

from typing import Any

from chain import codec
from chain.crypto import format_address
from chain.errors import DecodingError
from chain.reward import get_account
from chain.transition import get_nonce
from chain.types import CHAIN_IDS, CHAIN_NAMES, CHAIN_REWARD, Block, Transaction
from consensus.mempool import Outcome
from node.api.client import (
    TX_FAILS_STATE,
    TX_INVALID,
    TX_NONCE_GAP,
    TX_NONCE_TAKEN,
    TX_NONCE_TOO_LOW,
    TX_POOL_FULL,
    RPCError,
)
from node.api.params import bad_params, is_int, parse_address_param, parse_chain, parse_hex
from node.api.services import Services
from node.core.jsonable import to_json


def get_status(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    node, sync = services.node, services.sync
    store = node.store
    address = node.address
    return {
        "network": store.pact.network_id,
        "genesis_hash": store.genesis_hash.hex(),
        "node_id": node.network.local_id,
        "address": None if address is None else format_address(address),
        "peers": len(node.network.peers()),
        "chains": {
            CHAIN_NAMES[c]: {"id": c, "height": store.height(c), "head": store.head(c).hex()} for c in CHAIN_IDS
        },
        "syncing": bool(sync is not None and sync.syncing),
        "sync": sync.sync_progress() if sync is not None else {},
        "is_validator": address is not None and node.validators().get(address) is not None,
    }


def get_block(services: Services, args: dict[str, Any]) -> dict[str, Any] | None:
    store = services.node.store
    chain_id = parse_chain(args["chain"])
    which = args["block"]
    if isinstance(which, int) and not isinstance(which, bool):
        if which < 0:
            raise bad_params("height must be >= 0")
        block = store.get_block(chain_id, which)
    elif isinstance(which, str):
        block = store.get_block_by_hash(chain_id, parse_hex("block hash", which, 32))
    else:
        raise bad_params("block must be a height (integer) or a block hash (hex)")
    return None if block is None else block_to_json(block)


def block_to_json(block: Block) -> dict[str, Any]:
    h = block.header
    return {
        "chain": CHAIN_NAMES.get(h.chain_id, str(h.chain_id)),
        "hash": block.hash().hex(),
        "header": to_json(h),
        "txs": [tx.hash().hex() for tx in block.txs],
        "has_last_commit": block.last_commit is not None,
    }


REFUSAL_CODES: dict[Outcome, int] = {
    Outcome.INVALID: TX_INVALID,
    Outcome.NONCE_TOO_LOW: TX_NONCE_TOO_LOW,
    Outcome.NONCE_GAP: TX_NONCE_GAP,
    Outcome.NONCE_TAKEN: TX_NONCE_TAKEN,
    Outcome.FAILS_STATE: TX_FAILS_STATE,
    Outcome.FULL: TX_POOL_FULL,
    Outcome.SENDER_FULL: TX_POOL_FULL,
}
"""The JSON-RPC error of each mempool outcome that refuses a transaction. The two others are
answers, not errors: ADDED, and DUPLICATE (that very transaction is already pending)."""


def send_transaction(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    node = services.node
    max_bytes = node.store.pact.params.consensus.max_tx_bytes
    raw = parse_hex("tx", args["tx"], max_len=max_bytes + 1)
    try:
        tx = codec.decode(Transaction, raw, max_size=max_bytes)
    except DecodingError as err:
        raise bad_params(f"tx is not a canonical transaction: {err.reason}",
                         {"field": err.field, "reason": err.reason}) from err
    result = node.submit_tx(tx)
    code = REFUSAL_CODES.get(result.outcome)
    if code is not None:
        raise RPCError(code, f"transaction refused: {result.outcome.value}: {result.reason}",
                       {"outcome": result.outcome.value, "reason": result.reason, "tx_hash": tx.hash().hex()})
    return {"accepted": result.added, "outcome": result.outcome.value, "reason": result.reason,
            "tx_hash": tx.hash().hex()}


def get_transaction(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    """Where a transaction is, by hash; `chain` narrows the search to one chain (optional)."""
    node = services.node
    tx_hash, chain_id = _parse_tx_query(args.get("hash"), args.get("chain"))
    for c in CHAIN_IDS if chain_id is None else (chain_id,):
        location = node.store.get_tx_location(c, tx_hash)
        if location is not None:
            return {"status": "final", "chain": CHAIN_NAMES[c], "height": location.height, "index": location.index}
    for c in CHAIN_IDS if chain_id is None else (chain_id,):
        if node.is_pending(c, tx_hash):
            return {"status": "pending", "chain": CHAIN_NAMES[c]}
    return {"status": "unknown"}


def _parse_tx_query(hash_arg: Any, chain_arg: Any) -> tuple[bytes, int | None]:
    """The hash and the optional chain of a `blyan_getTransaction` call. Positional calls made
    before the chain became optional put the chain first (`[chain, hash]`): a first param that
    names a chain and a second that is a hash are read that way."""
    if chain_arg is not None and _names_chain(hash_arg) and not _names_chain(chain_arg):
        hash_arg, chain_arg = chain_arg, hash_arg
    tx_hash = parse_hex("hash", hash_arg, 32)
    return tx_hash, None if chain_arg is None else parse_chain(chain_arg)


def _names_chain(value: Any) -> bool:
    return (is_int(value) and value in CHAIN_NAMES) or (isinstance(value, str) and value in CHAIN_NAMES.values())


def get_account_info(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    node = services.node
    address = parse_address_param(args["address"])
    store = node.store
    account = get_account(store.state(CHAIN_REWARD), address)
    nonces = {}
    for c in CHAIN_IDS:
        committed = get_nonce(store.state(c), address)
        nonces[CHAIN_NAMES[c]] = {"nonce": committed, "next_nonce": committed + node.count_pending(c, address)}
    return {"address": format_address(address), "balance": account.balance, "stake": account.stake,
            "unbonding": account.unbonding, "nonces": nonces}


def get_peers(services: Services, args: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": peer} for peer in services.node.network.peers()]


def get_consensus_state(services: Services, args: dict[str, Any]) -> dict[str, Any]:
    return services.node.consensus_state()
