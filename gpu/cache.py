"""An LRU cache of loaded experts with a byte budget, one per device.

    cache = ExpertCache(budget_bytes=8 << 30, device="cuda:0")
    tensors = cache.get("layer3.expert7", lambda: loader.load(path, record, "cuda:0"),
                        nbytes=record.size)

`get` returns the cached value (a hit) or calls `loader` (a miss), then evicts the least recently
used entries until the new one fits. With the `nbytes` hint (a record's size is one: the tensor
bytes are slightly less), room is made *before* loading, so the device never holds more than the
budget; without it the new value is measured after loading and the cache may exceed its budget by
that one value until the evictions that follow. A value is a tensor, a mapping of tensors or an
`nn.Module`; its size is the bytes of its distinct storages. A value larger than the whole
budget is refused with `EntryTooLarge` (before loading when the hint says so).

Eviction drops the cache's references; memory is freed when no one else holds the tensors.
The cache checks it: each evicted value's tensors are watched through weak references, and
`stats.retained` counts evicted entries still alive elsewhere (a caller that kept a reference:
their memory is not free). On CUDA, evictions end with `torch.cuda.empty_cache()` so that the
freed blocks go back to the driver, and `stats.device_allocated` reports
`torch.cuda.memory_allocated` after it.

Owner: one worker per device. The cache is not thread-safe and takes no lock: it is owned by the
thread (or the task) that runs that device's work, which is also where loading to that device
belongs; other tasks send it requests through a queue.
"""

from __future__ import annotations

import gc
import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from chain.errors import BlyanError

logger = logging.getLogger(__name__)


class EntryTooLarge(BlyanError):
    """A value that would not fit in the cache even when empty."""

    def __init__(self, key: Hashable, nbytes: int, budget: int) -> None:
        self.key = key
        self.nbytes = nbytes
        self.budget = budget
        super().__init__(f"{key!r}: {nbytes} bytes exceed the cache budget of {budget} bytes")


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of the cache's counters."""

    hits: int
    """`get` calls answered from the cache."""
    misses: int
    """`get` calls that called the loader."""
    evictions: int
    """Entries dropped to make room (not counting `remove` and `clear`)."""
    entries: int
    """Entries held now."""
    bytes: int
    """Bytes held now."""
    budget: int
    """The byte budget."""
    retained: int
    """Evicted or removed entries whose tensors someone else still holds (memory not freed)."""
    device_allocated: int
    """`torch.cuda.memory_allocated` of the device after the last eviction (0 on the CPU)."""


def compute_nbytes(value: Any) -> int:
    """Bytes of the distinct storages behind a tensor, a mapping of tensors or a module."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for tensor in iter_tensors(value):
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if key in seen and storage.data_ptr() != 0:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def iter_tensors(value: Any) -> Iterator[torch.Tensor]:
    """The tensors of a cache value."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, nn.Module):
        yield from value.parameters()
        yield from value.buffers()
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from iter_tensors(item)
    else:
        raise TypeError(f"a cache value is a tensor, a mapping of tensors or a module, "
                        f"not {type(value).__name__}")


@dataclass(slots=True)
class _Entry:
    value: Any
    nbytes: int


class ExpertCache:
    """Least-recently-used values on one device, bounded by bytes. Not thread-safe: see above."""

    def __init__(self, budget_bytes: int, device: str | torch.device = "cpu") -> None:
        if budget_bytes <= 0:
            raise ValueError(f"the cache budget must be positive, got {budget_bytes}")
        self.budget = budget_bytes
        self.device = torch.device(device)
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()  # oldest first
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0
        self._device_allocated = 0
        self._watch: list[list[weakref.ref[torch.Tensor]]] = []  # tensors of dropped entries

    # --- public API ---

    def get(self, key: Hashable, loader: Callable[[], Any], nbytes: int | None = None) -> Any:
        """The value of `key`, loading it on a miss (`nbytes`: its size if known beforehand).

        A loader's exception leaves the cache without the key (evictions made for it stay)."""
        entry = self._entries.get(key)
        if entry is not None:
            self._hits += 1
            self._entries.move_to_end(key)
            return entry.value
        self._misses += 1
        if nbytes is not None:
            self._check_fits(key, nbytes)
            self._evict_until(self.budget - nbytes)
        value = loader()
        size = compute_nbytes(value)
        if size > self.budget:
            del value
            self._release([])
            raise EntryTooLarge(key, size, self.budget)
        self._evict_until(self.budget - size)
        self._entries[key] = _Entry(value, size)
        self._bytes += size
        return value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[Hashable]:
        """Keys from least to most recently used."""
        return list(self._entries)

    def remove(self, key: Hashable) -> bool:
        """Drop `key` if held (no eviction counted); whether it was."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._bytes -= entry.nbytes
        self._release([entry])
        return True

    def clear(self) -> None:
        """Drop every entry."""
        dropped = list(self._entries.values())
        self._entries.clear()
        self._bytes = 0
        self._release(dropped)

    @property
    def stats(self) -> CacheStats:
        self._watch = [refs for refs in self._watch if any(r() is not None for r in refs)]
        return CacheStats(
            hits=self._hits, misses=self._misses, evictions=self._evictions,
            entries=len(self._entries), bytes=self._bytes, budget=self.budget,
            retained=len(self._watch), device_allocated=self._device_allocated,
        )

    # --- internals ---

    def _check_fits(self, key: Hashable, nbytes: int) -> None:
        if nbytes > self.budget:
            raise EntryTooLarge(key, nbytes, self.budget)

    def _evict_until(self, limit: int) -> None:
        """Evict least recently used entries until at most `limit` bytes are held."""
        dropped = []
        while self._bytes > limit and self._entries:
            key, entry = self._entries.popitem(last=False)
            self._bytes -= entry.nbytes
            self._evictions += 1
            dropped.append(entry)
            logger.debug("evicted %r (%d bytes) from the %s cache", key, entry.nbytes, self.device)
        if dropped:
            self._release(dropped)

    def _release(self, dropped: list[_Entry]) -> None:
        """Let go of dropped values; on CUDA, hand freed blocks back to the driver."""
        modules = any(isinstance(entry.value, nn.Module) for entry in dropped)
        self._watch = [refs for refs in self._watch if any(r() is not None for r in refs)]
        for entry in dropped:
            self._watch.append([weakref.ref(t) for t in iter_tensors(entry.value)])
            entry.value = None
        del dropped
        if self.device.type == "cuda":
            if modules:
                gc.collect()  # a module's reference cycles hold its tensors until collected
            torch.cuda.empty_cache()
            self._device_allocated = torch.cuda.memory_allocated(self.device)
