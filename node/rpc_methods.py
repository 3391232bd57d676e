"""The JSON-RPC methods of a node and the OpenRPC document that describes them.

Each method is a function `(target, args) -> result` run on the event loop, where the target is
the engine or, for the inference methods, the expert service (`Method.target`): reads of the
store and the mempools are quick and must not race the consensus task that writes them, so they
stay on the loop (STYLE rule 12). A handler that waits (on peers) is `async` and is awaited. Parameters may come by position or by name; `bind_params`
turns both into a dict and every value is checked by the method (bad ones: -32602).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chain import codec
from chain.crypto import format_address, parse_address
from chain.errors import DecodingError
from chain.reward import get_account
from chain.transition import get_nonce
from chain.types import CHAIN_IDS, CHAIN_NAMES, CHAIN_REWARD, Block, Transaction
from node.rpc_client import INVALID_PARAMS, RPCError

OPENRPC_VERSION = "1.2.6"
SERVICE_UNAVAILABLE = -32010
"""The method needs a service this node does not run."""
INFERENCE_FAILED = -32011
"""Generation failed: no node serves a routed expert, or every replica failed."""
MAX_PROMPT_CHARS = 4096
MAX_GENERATE_TOKENS = 256
API_VERSION = "0.1.0"

HEX = {"type": "string", "pattern": "^[0-9a-fA-F]*$"}
HASH_HEX = {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}
CHAIN = {"oneOf": [{"type": "string", "enum": list(CHAIN_NAMES.values())},
                   {"type": "integer", "enum": list(CHAIN_IDS)}]}
ADDRESS = {"type": "string", "pattern": "^bly1[0-9a-f]{40}$"}


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    """Name (and position) of the parameter."""
    schema: dict
    """JSON schema of its value."""
    description: str
    """One line for the OpenRPC document."""
    required: bool = True
    """Whether a call must give it."""


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    """JSON-RPC method name."""
    summary: str
    """One line for the OpenRPC document."""
    params: tuple[Param, ...]
    """Parameters in positional order."""
    result: dict
    """JSON schema of the result."""
    handler: Callable[[Any, dict[str, Any]], Any]
    """`(target, args) -> result` or an awaitable of it; raises RPCError."""
    target: str = "engine"
    """What the handler is given: "engine" or "experts" (the expert service)."""


def bad_params(message: str, data: Any = None) -> RPCError:
    return RPCError(INVALID_PARAMS, f"invalid params: {message}", data)


def bind_params(method: Method, params: Any) -> dict[str, Any]:
    """Positional or named params as a dict of the method's parameter names."""
    names = [p.name for p in method.params]
    if params is None:
        args: dict[str, Any] = {}
    elif isinstance(params, list):
        if len(params) > len(names):
            raise bad_params(f"{method.name} takes at most {len(names)} params, got {len(params)}")
        args = dict(zip(names, params))
    else:
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise bad_params(f"unknown param(s) {', '.join(unknown)}")
        args = dict(params)
    missing = [p.name for p in method.params if p.required and args.get(p.name) is None]
    if missing:
        raise bad_params(f"missing param(s) {', '.join(missing)}")
    return args


# --- value parsers --------------------------------------------------------------------------


def parse_chain(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in CHAIN_NAMES:
        return value
    if isinstance(value, str):
        for chain_id, name in CHAIN_NAMES.items():
            if value == name:
                return chain_id
    raise bad_params(f"chain must be one of {', '.join(CHAIN_NAMES.values())} or 0-2, got {value!r}")


def parse_hex(name: str, value: Any, length: int | None = None, max_len: int = 1 << 20) -> bytes:
    if not isinstance(value, str) or len(value) > 2 * max_len:
        raise bad_params(f"{name} must be a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError as err:
        raise bad_params(f"{name} is not hex") from err
    if length is not None and len(raw) != length:
        raise bad_params(f"{name} must be {length} bytes, got {len(raw)}")
    return raw


def parse_address_param(value: Any) -> bytes:
    if not isinstance(value, str):
        raise bad_params("address must be a string")
    try:
        return parse_address(value)
    except ValueError as err:
        raise bad_params(str(err)) from err


def to_json(value: Any) -> Any:
    """A wire object as JSON: bytes as hex, nested objects as dicts of their fields."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {name: to_json(getattr(value, name)) for name in value.__dataclass_fields__}
    return value


# --- methods --------------------------------------------------------------------------------


def get_status(engine: Any, args: dict[str, Any]) -> dict[str, Any]:
    store = engine.store
    address = engine.address
    return {
        "network": store.pact.network_id,
        "genesis_hash": store.genesis_hash.hex(),
        "node_id": engine.network.local_id,
        "address": None if address is None else format_address(address),
        "peers": len(engine.network.peers()),
        "chains": {
            CHAIN_NAMES[c]: {"id": c, "height": store.height(c), "head": store.head(c).hex()} for c in CHAIN_IDS
        },
        "syncing": bool(getattr(engine, "syncing", False)),
        "sync": engine.sync_progress() if hasattr(engine, "sync_progress") else {},
        "is_validator": address is not None and engine.validators().get(address) is not None,
    }


def get_block(engine: Any, args: dict[str, Any]) -> dict[str, Any] | None:
    chain_id = parse_chain(args["chain"])
    which = args["block"]
    if isinstance(which, int) and not isinstance(which, bool):
        if which < 0:
            raise bad_params("height must be >= 0")
        block = engine.store.get_block(chain_id, which)
    elif isinstance(which, str):
        block = engine.store.get_block_by_hash(chain_id, parse_hex("block hash", which, 32))
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


def send_transaction(engine: Any, args: dict[str, Any]) -> dict[str, Any]:
    max_bytes = engine.store.pact.params.consensus.max_tx_bytes
    raw = parse_hex("tx", args["tx"], max_len=max_bytes + 1)
    try:
        tx = codec.decode(Transaction, raw, max_size=max_bytes)
    except DecodingError as err:
        raise bad_params(f"tx is not a canonical transaction: {err.reason}",
                         {"field": err.field, "reason": err.reason}) from err
    result = engine.submit_tx(tx)
    return {"accepted": result.added, "outcome": result.outcome.value, "reason": result.reason,
            "tx_hash": tx.hash().hex()}


def get_transaction(engine: Any, args: dict[str, Any]) -> dict[str, Any]:
    chain_id = parse_chain(args["chain"])
    tx_hash = parse_hex("hash", args["hash"], 32)
    location = engine.store.get_tx_location(chain_id, tx_hash)
    if location is not None:
        return {"status": "final", "height": location.height, "index": location.index}
    if tx_hash in engine.mempools[chain_id]:
        return {"status": "pending"}
    return {"status": "unknown"}


def get_account_info(engine: Any, args: dict[str, Any]) -> dict[str, Any]:
    address = parse_address_param(args["address"])
    store = engine.store
    account = get_account(store.state(CHAIN_REWARD), address)
    nonces = {}
    for c in CHAIN_IDS:
        committed = get_nonce(store.state(c), address)
        nonces[CHAIN_NAMES[c]] = {"nonce": committed, "next_nonce": committed + engine.mempools[c].count_of(address)}
    return {"address": format_address(address), "balance": account.balance, "stake": account.stake,
            "unbonding": account.unbonding, "nonces": nonces}


def get_peers(engine: Any, args: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": peer} for peer in engine.network.peers()]


async def generate(experts: Any, args: dict[str, Any]) -> dict[str, Any]:
    from node.expert_wire import ExpertError

    prompt = args["prompt"]
    if not isinstance(prompt, str) or not 0 < len(prompt) <= MAX_PROMPT_CHARS:
        raise bad_params(f"prompt must be a string of 1 to {MAX_PROMPT_CHARS} characters")
    max_tokens = args.get("max_tokens", 16)
    if not _is_int(max_tokens) or not 1 <= max_tokens <= MAX_GENERATE_TOKENS:
        raise bad_params(f"max_tokens must be an integer in [1, {MAX_GENERATE_TOKENS}]")
    temperature = args.get("temperature", 0.0)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 10:
        raise bad_params("temperature must be a number in [0, 10]")
    seed = args.get("seed", 0)
    if not _is_int(seed) or not 0 <= seed < 2**63:
        raise bad_params("seed must be a non-negative integer")
    try:
        return await experts.generate(prompt, max_tokens, float(temperature), seed)
    except ValueError as err:  # a prompt the tokenizer cannot encode
        raise bad_params(str(err)) from err
    except ExpertError as err:
        raise RPCError(INFERENCE_FAILED, f"inference failed: {err}") from err


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def get_experts(experts: Any, args: dict[str, Any]) -> dict[str, Any]:
    return experts.describe()


def discover(engine: Any, args: dict[str, Any]) -> dict[str, Any]:
    return openrpc_document()


_CHAIN_HEAD = {"type": "object", "properties": {"id": {"type": "integer"}, "height": {"type": "integer"},
                                               "head": HASH_HEX}}
_NONCES = {"type": "object", "properties": {"nonce": {"type": "integer"}, "next_nonce": {"type": "integer"}}}

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("blyan_status", "Network, identity, peers and the head of each chain.", (), {
        "type": "object", "properties": {
            "network": {"type": "string"}, "genesis_hash": HASH_HEX, "node_id": {"type": "string"},
            "address": {"oneOf": [ADDRESS, {"type": "null"}]}, "peers": {"type": "integer"},
            "chains": {"type": "object", "additionalProperties": _CHAIN_HEAD},
            "syncing": {"type": "boolean"},
            "sync": {"type": "object", "description": "Per chain: our height and the highest a peer reported."},
            "is_validator": {"type": "boolean"}}}, get_status),
    Method("blyan_getBlock", "A block by height or hash: its header (bytes in hex) and transaction hashes.", (
        Param("chain", CHAIN, "Chain name or id."),
        Param("block", {"oneOf": [{"type": "integer", "minimum": 0}, HASH_HEX]}, "Height, or block hash in hex."),
    ), {"oneOf": [{"type": "null"}, {"type": "object", "properties": {
        "chain": {"type": "string"}, "hash": HASH_HEX, "header": {"type": "object"},
        "txs": {"type": "array", "items": HASH_HEX}, "has_last_commit": {"type": "boolean"}}}]}, get_block),
    Method("blyan_sendTransaction", "Submit a signed transaction (hex of its canonical encoding) to the mempool.", (
        Param("tx", HEX, "Hex of codec.encode(Transaction)."),
    ), {"type": "object", "properties": {
        "accepted": {"type": "boolean"}, "outcome": {"type": "string"}, "reason": {"type": "string"},
        "tx_hash": HASH_HEX}}, send_transaction),
    Method("blyan_getTransaction", "Where a transaction is: final (height, index), pending or unknown.", (
        Param("chain", CHAIN, "Chain name or id."),
        Param("hash", HASH_HEX, "Transaction hash in hex."),
    ), {"type": "object", "properties": {
        "status": {"type": "string", "enum": ["final", "pending", "unknown"]},
        "height": {"type": "integer"}, "index": {"type": "integer"}}}, get_transaction),
    Method("blyan_getAccount", "Balance, stake, unbonding and the nonce on each chain of an address.", (
        Param("address", ADDRESS, "Account address (bly1...)."),
    ), {"type": "object", "properties": {
        "address": ADDRESS, "balance": {"type": "integer"}, "stake": {"type": "integer"},
        "unbonding": {"type": "integer"},
        "nonces": {"type": "object", "additionalProperties": _NONCES}}}, get_account_info),
    Method("blyan_peers", "Connected peers.", (), {
        "type": "array", "items": {"type": "object", "properties": {"id": {"type": "string"}}}}, get_peers),
    Method("blyan_generate", "Generate text with the network's model: experts run on the nodes serving them.", (
        Param("prompt", {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS}, "Prompt text."),
        Param("max_tokens", {"type": "integer", "minimum": 1, "maximum": MAX_GENERATE_TOKENS},
              "New tokens to generate (default 16).", required=False),
        Param("temperature", {"type": "number", "minimum": 0}, "0 (default) is greedy.", required=False),
        Param("seed", {"type": "integer", "minimum": 0}, "Sampling seed (default 0).", required=False),
    ), {"type": "object", "properties": {
        "prompt_tokens": {"type": "array", "items": {"type": "integer"}},
        "tokens": {"type": "array", "items": {"type": "integer"}}, "text": {"type": "string"},
        "latency_ms": {"type": "array", "items": {"type": "number"}, "description": "Per new token."},
        "layers": {"type": "array", "description": "Per token, per layer: expert -> node that computed it."},
        "round_trips": {"type": "integer"}, "failovers": {"type": "integer"},
        "spot_checks": {"type": "integer"}, "faults": {"type": "array", "items": {"type": "string"}}}},
        generate, target="experts"),
    Method("blyan_experts", "Experts this node serves and the registry of serving peers.", (), {
        "type": "object", "properties": {
            "node": {"type": "string"}, "tier": {"type": "integer"}, "load": {"type": "integer"},
            "serving": {"type": "array"}, "registry": {"type": "array"}}}, get_experts, target="experts"),
    Method("rpc.discover", "This OpenRPC document.", (), {"type": "object"}, discover),
)}


def openrpc_document() -> dict[str, Any]:
    return {
        "openrpc": OPENRPC_VERSION,
        "info": {"title": "Blyan node JSON-RPC", "version": API_VERSION},
        "methods": [{
            "name": m.name,
            "summary": m.summary,
            "paramStructure": "either",
            "params": [{"name": p.name, "description": p.description, "required": p.required, "schema": p.schema}
                       for p in m.params],
            "result": {"name": "result", "schema": m.result},
        } for m in METHODS.values()],
    }
