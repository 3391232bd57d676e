"""How a JSON-RPC method is declared, how its params are bound, and the value parsers.

A method is a function `(services, args) -> result` run on the event loop: reads of the store
and the mempools are quick and must not race the consensus task that writes them (one owner for
each piece of mutable state), so they stay on the loop. A handler that waits (on peers) is
`async` and is awaited. Parameters may come by position or by name; `bind_params` turns both
into a dict and every value is checked by the method (bad ones: -32602).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chain.crypto import parse_address
from chain.types import CHAIN_NAMES
from node.api.client import INVALID_PARAMS, RPCError
from node.api.services import Services

SERVICE_UNAVAILABLE = -32010
"""The method needs a service this node does not run."""
INFERENCE_FAILED = -32011
"""Generation failed: no node serves a routed expert, or every replica failed."""



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
    handler: Callable[[Services, dict[str, Any]], Any]
    """`(services, args) -> result` or an awaitable of it; raises RPCError."""
    target: str = "node"
    """The service the method needs ("node", "experts" or "sync"): absent, -32010."""


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
        args = dict(zip(names, params, strict=False))
    else:
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise bad_params(f"unknown param(s) {', '.join(unknown)}")
        args = dict(params)
    missing = [p.name for p in method.params if p.required and args.get(p.name) is None]
    if missing:
        raise bad_params(f"missing param(s) {', '.join(missing)}")
    return args


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
