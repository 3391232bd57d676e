"""Wire objects as JSON, for the RPC and for files people read."""

from __future__ import annotations

from typing import Any


def to_json(value: Any) -> Any:
    """A wire object as JSON: bytes as hex, nested objects as dicts of their fields."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {name: to_json(getattr(value, name)) for name in value.__dataclass_fields__}
    return value
