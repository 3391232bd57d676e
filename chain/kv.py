"""The small key-value storage interface, its column prefixes, and an in-memory implementation.

Every key starts with a one-byte column prefix (`COL_*`), so one LevelDB holds all columns and
`iterate(prefix)` walks one column in key order. Writes that belong together go in one
`write_batch`, which is all or nothing. `chain.leveldb.LevelDBKV` is the on-disk implementation;
`MemoryKV` is the one tests use.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from chain.errors import StoreError

# Column prefixes: one byte each, all of them here so that no two columns collide.
COL_BLOCK = b"B"
"""Blocks by chain and height."""
COL_BLOCK_BY_HASH = b"H"
"""Block hash -> chain and height."""
COL_TX = b"T"
"""Transactions by hash."""
COL_STATE = b"S"
"""Chain state entries."""
COL_META = b"M"
"""Store metadata: schema version, heads."""
COL_COMMIT = b"C"
"""Commit certificates by chain and height."""
COL_GENESIS = b"G"
"""The genesis this store was made for."""
COL_NODE = b"N"
"""Free-form node data (peers, local settings)."""

ALL_COLUMNS = (
    COL_BLOCK,
    COL_BLOCK_BY_HASH,
    COL_TX,
    COL_STATE,
    COL_META,
    COL_COMMIT,
    COL_GENESIS,
    COL_NODE,
)

HEIGHT_KEY_LEN = 8
_MAX_HEIGHT = 2 ** (8 * HEIGHT_KEY_LEN) - 1


def height_key(h: int) -> bytes:
    """A height as 8 bytes big-endian, so that byte order is height order."""
    if isinstance(h, bool) or not isinstance(h, int):
        raise TypeError(f"height must be an int, not {type(h).__name__}")
    if not 0 <= h <= _MAX_HEIGHT:
        raise ValueError(f"height {h} out of range 0..2**64-1")
    return h.to_bytes(HEIGHT_KEY_LEN, "big")


class KV(Protocol):
    """A sorted byte-key store with atomic batches."""

    def get(self, key: bytes) -> bytes | None:
        """The value at `key`, or None."""
        ...

    def put(self, key: bytes, value: bytes) -> None:
        """Set `key` to `value` (durably)."""
        ...

    def delete(self, key: bytes) -> None:
        """Remove `key`; no error when it is absent."""
        ...

    def write_batch(
        self,
        puts: Iterable[tuple[bytes, bytes]],
        deletes: Iterable[bytes],
        sync: bool = True,
    ) -> None:
        """Apply all puts, then all deletes, atomically: all or nothing."""
        ...

    def iterate(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs whose key starts with `prefix`, in ascending key order."""
        ...

    def close(self) -> None:
        """Release the store; later calls raise StoreError. Idempotent."""
        ...


def check_key(key: object) -> bytes:
    """`key` itself if it is bytes; TypeError otherwise."""
    if not isinstance(key, bytes):
        raise TypeError(f"key must be bytes, not {type(key).__name__}")
    return key


def check_value(value: object) -> bytes:
    """`value` itself if it is bytes; TypeError otherwise."""
    if not isinstance(value, bytes):
        raise TypeError(f"value must be bytes, not {type(value).__name__}")
    return value


def prepare_batch(
    puts: Iterable[tuple[bytes, bytes]], deletes: Iterable[bytes]
) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    """Materialize and type-check a batch before any of it is written."""
    checked_puts = [(check_key(k), check_value(v)) for k, v in puts]
    checked_deletes = [check_key(k) for k in deletes]
    return checked_puts, checked_deletes


class MemoryKV:
    """A KV in a dict: for tests and simulations. Batches are atomic; nothing is durable."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] | None = {}

    def _live(self) -> dict[bytes, bytes]:
        if self._data is None:
            raise StoreError("store is closed")
        return self._data

    def get(self, key: bytes) -> bytes | None:
        """The value at `key`, or None."""
        return self._live().get(check_key(key))

    def put(self, key: bytes, value: bytes) -> None:
        """Set `key` to `value`."""
        self._live()[check_key(key)] = check_value(value)

    def delete(self, key: bytes) -> None:
        """Remove `key`; no error when it is absent."""
        self._live().pop(check_key(key), None)

    def write_batch(
        self,
        puts: Iterable[tuple[bytes, bytes]],
        deletes: Iterable[bytes],
        sync: bool = True,
    ) -> None:
        """Apply all puts, then all deletes; everything is checked before anything changes."""
        data = self._live()
        checked_puts, checked_deletes = prepare_batch(puts, deletes)
        data.update(checked_puts)
        for key in checked_deletes:
            data.pop(key, None)

    def iterate(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs under `prefix` in key order, from a snapshot taken at the call."""
        data = self._live()
        check_key(prefix)
        snapshot = sorted((k, v) for k, v in data.items() if k.startswith(prefix))
        return iter(snapshot)

    def close(self) -> None:
        """Drop the contents; later calls raise StoreError. Idempotent."""
        self._data = None

    def __enter__(self) -> MemoryKV:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
