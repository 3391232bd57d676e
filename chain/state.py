"""A chain's state: an immutable map of bytes to bytes with an incremental state root.

Keys are spread over `N_BUCKETS` buckets by the first 12 bits of their SHA-256. A bucket's hash covers
its sorted entries; the state root is a 16-ary Merkle root over the bucket hashes. A new state
copies only the buckets a block touched (copy-on-write), so applying a block costs its own size,
not the size of the state, and old states stay valid (transitions are pure). A bucket is also the
unit of a fast-sync snapshot chunk: each one is checked against the root on its own.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Mapping
from typing import TypeVar

from chain import codec, merkle

N_BUCKETS = 4096
BUCKET_ARITY = 16
_EMPTY_BUCKET = hashlib.sha256(b"").digest()

T = TypeVar("T")


@functools.lru_cache(maxsize=1 << 15)
def bucket_of(key: bytes) -> int:
    """The bucket of `key` (remembered: a block reads and writes the same few keys several times)."""
    digest = hashlib.sha256(key).digest()
    return (digest[0] << 4) | (digest[1] >> 4)


def compute_bucket_hash(entries: Mapping[bytes, bytes]) -> bytes:
    if not entries:
        return _EMPTY_BUCKET
    h = hashlib.sha256()
    for key in sorted(entries):
        value = entries[key]
        h.update(len(key).to_bytes(4, "big"))
        h.update(key)
        h.update(len(value).to_bytes(4, "big"))
        h.update(value)
    return h.digest()


class State:
    """The state of one chain after the block `head` at `height`. Never mutated."""

    __slots__ = ("chain_id", "height", "head", "time_ms", "_buckets", "_hashes", "_root", "_levels")

    def __init__(
        self,
        chain_id: int,
        height: int,
        head: bytes,
        time_ms: int,
        buckets: tuple[dict[bytes, bytes], ...] | None = None,
        hashes: tuple[bytes, ...] | None = None,
    ) -> None:
        self.chain_id = chain_id
        self.height = height
        self.head = head
        self.time_ms = time_ms
        self._buckets = buckets if buckets is not None else tuple([{} for _ in range(N_BUCKETS)])
        self._hashes = hashes if hashes is not None else tuple(
            [compute_bucket_hash(b) if b else _EMPTY_BUCKET for b in self._buckets]
        )  # most buckets of a small state are empty: a store opening builds thousands of states
        self._root: bytes | None = None
        self._levels: list[list[bytes]] | None = None
        """The bucket tree's levels once the root was asked for: a child state hashes only the
        paths above the buckets it changed (`with_changes`)."""

    @classmethod
    def from_items(
        cls, chain_id: int, height: int, head: bytes, time_ms: int, items: Mapping[bytes, bytes]
    ) -> State:
        buckets: list[dict[bytes, bytes]] = [{} for _ in range(N_BUCKETS)]
        for key, value in items.items():
            buckets[bucket_of(key)][key] = value
        return cls(chain_id, height, head, time_ms, tuple(buckets))

    def get(self, key: bytes) -> bytes | None:
        return self._buckets[bucket_of(key)].get(key)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for bucket in self._buckets:
            yield from bucket.items()

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets)

    def bucket(self, index: int) -> Mapping[bytes, bytes]:
        return self._buckets[index]

    @property
    def bucket_hashes(self) -> tuple[bytes, ...]:
        return self._hashes

    @property
    def root(self) -> bytes:
        if self._root is None:
            if self._levels is None:
                self._levels = merkle.compute_levels(self._hashes, BUCKET_ARITY)
            self._root = merkle.seal_levels(self._levels)
        return self._root

    def with_changes(
        self, changes: Mapping[bytes, bytes | None], height: int, head: bytes, time_ms: int
    ) -> State:
        """A new state: these puts (value) and deletes (None) applied, at a new head."""
        buckets = list(self._buckets)
        hashes = list(self._hashes)
        touched: dict[int, dict[bytes, bytes]] = {}
        for key, value in changes.items():
            idx = bucket_of(key)
            bucket = touched.get(idx)
            if bucket is None:
                bucket = touched[idx] = dict(buckets[idx])
            if value is None:
                bucket.pop(key, None)
            else:
                bucket[key] = value
        for idx, bucket in touched.items():
            buckets[idx] = bucket
            hashes[idx] = compute_bucket_hash(bucket)
        state = State(self.chain_id, height, head, time_ms, tuple(buckets), tuple(hashes))
        if self._levels is not None and touched:
            state._levels = merkle.update_levels(self._levels, {i: hashes[i] for i in touched}, BUCKET_ARITY)
        elif self._levels is not None:
            state._levels = self._levels
        return state

    def same_content(self, other: State) -> bool:
        return self.root == other.root


class Overlay:
    """A write buffer over a State: what a block or transaction changes, before it is kept."""

    __slots__ = ("base", "changes")

    def __init__(self, base: State | Overlay) -> None:
        self.base = base
        self.changes: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self.changes:
            return self.changes[key]
        return self.base.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.changes[key] = value

    def delete(self, key: bytes) -> None:
        self.changes[key] = None

    def get_record(self, key: bytes, cls: type[T]) -> T | None:
        raw = self.get(key)
        return None if raw is None else codec.decode(cls, raw)

    def put_record(self, key: bytes, obj: object) -> None:
        self.put(key, codec.encode(obj))

    def merge_into_base(self) -> None:
        """Fold this buffer into a parent Overlay (a transaction that succeeded)."""
        if not isinstance(self.base, Overlay):
            raise TypeError("only a nested overlay merges into its base")
        self.base.changes.update(self.changes)
