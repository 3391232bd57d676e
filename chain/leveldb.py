"""The LevelDB implementation of `chain.kv.KV`: the only module that imports plyvel.

Every plyvel failure becomes a `StoreError` here (`StoreLocked` when another process holds the
data directory), so no plyvel exception leaks out of this module.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import plyvel

from chain.errors import StoreError, StoreLocked
from chain.kv import check_key, check_value, prepare_batch

logger = logging.getLogger(__name__)


def _reason(err: BaseException) -> str:
    """plyvel's message as text (plyvel puts bytes in `args`)."""
    arg = err.args[0] if err.args else err
    if isinstance(arg, bytes):
        return arg.decode("utf-8", errors="replace")
    return str(arg)


def _is_lock_error(err: BaseException) -> bool:
    return isinstance(err, OSError) and "lock" in _reason(err).lower()


class LevelDBKV:
    """A KV in a LevelDB directory; one process at a time may hold it."""

    def __init__(self, path: Path, create: bool = True) -> None:
        self.path = Path(path)
        self._db: plyvel.DB | None = self._open(self.path, create)
        logger.debug("opened LevelDB at %s", self.path)

    @staticmethod
    def _open(path: Path, create: bool) -> plyvel.DB:
        try:
            if create:
                path.mkdir(parents=True, exist_ok=True)
            return plyvel.DB(str(path), create_if_missing=create)
        except plyvel.Error as err:
            if _is_lock_error(err):
                raise StoreLocked(
                    f"data dir {path} is in use by another process (LevelDB lock held)"
                ) from err
            raise StoreError(f"cannot open LevelDB at {path}: {_reason(err)}") from err
        except OSError as err:
            raise StoreError(f"cannot create LevelDB dir {path}: {err}") from err

    def _live(self) -> plyvel.DB:
        if self._db is None:
            raise StoreError(f"store at {self.path} is closed")
        return self._db

    def _failed(self, what: str, err: BaseException) -> StoreError:
        return StoreError(f"LevelDB {what} failed at {self.path}: {_reason(err)}")

    def get(self, key: bytes) -> bytes | None:
        """The value at `key`, or None."""
        db = self._live()
        try:
            value: bytes | None = db.get(check_key(key))
        except (plyvel.Error, RuntimeError) as err:
            raise self._failed("get", err) from err
        return value

    def put(self, key: bytes, value: bytes) -> None:
        """Set `key` to `value`, synced to disk."""
        db = self._live()
        check_key(key)
        check_value(value)
        try:
            db.put(key, value, sync=True)
        except (plyvel.Error, RuntimeError) as err:
            raise self._failed("put", err) from err

    def delete(self, key: bytes) -> None:
        """Remove `key`, synced to disk; no error when it is absent."""
        db = self._live()
        check_key(key)
        try:
            db.delete(key, sync=True)
        except (plyvel.Error, RuntimeError) as err:
            raise self._failed("delete", err) from err

    def write_batch(
        self,
        puts: Iterable[tuple[bytes, bytes]],
        deletes: Iterable[bytes],
        sync: bool = True,
    ) -> None:
        """Apply all puts, then all deletes, in one LevelDB write: all or nothing."""
        db = self._live()
        checked_puts, checked_deletes = prepare_batch(puts, deletes)
        try:
            with db.write_batch(transaction=True, sync=sync) as batch:
                for key, value in checked_puts:
                    batch.put(key, value)
                for key in checked_deletes:
                    batch.delete(key)
        except (plyvel.Error, RuntimeError) as err:
            raise self._failed("write batch", err) from err

    def iterate(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs under `prefix` in key order, from a snapshot taken at the call."""
        db = self._live()
        check_key(prefix)
        try:
            it = db.iterator(prefix=prefix) if prefix else db.iterator()
        except (plyvel.Error, RuntimeError) as err:
            raise self._failed("iterate", err) from err
        return self._drain(it)

    def _drain(self, it: Iterator[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
        try:
            yield from it
        except (plyvel.Error, RuntimeError) as err:
            raise self._failed("iterate", err) from err
        finally:
            it.close()  # type: ignore[attr-defined]  # a plyvel iterator

    def close(self) -> None:
        """Close the database and release its lock. Idempotent."""
        db, self._db = self._db, None
        if db is None:
            return
        try:
            db.close()
        except (plyvel.Error, RuntimeError) as err:
            raise self._failed("close", err) from err
        logger.debug("closed LevelDB at %s", self.path)

    def __enter__(self) -> LevelDBKV:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
