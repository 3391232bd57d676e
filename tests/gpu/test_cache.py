"""The expert cache: LRU order, eviction by bytes, memory really let go, refusals, stats."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from chain.tensors import KIND_EXPERT
from gpu.cache import EntryTooLarge, ExpertCache, compute_nbytes
from gpu.loader import BlobLoader
from gpu.weights import encode_block, make_tensor_record

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU path")
KiB = 1024


def value(nbytes: int) -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(nbytes, dtype=torch.uint8)}


def counting(nbytes: int, calls: list[int]) -> Callable[[], dict[str, torch.Tensor]]:
    def load() -> dict[str, torch.Tensor]:
        calls.append(nbytes)
        return value(nbytes)

    return load


def test_nbytes_counts_shared_storage_once() -> None:
    base = torch.zeros(100, dtype=torch.float32)
    assert compute_nbytes({"a": base, "b": base[10:20], "c": torch.zeros(3, dtype=torch.int8)}) == 403
    assert compute_nbytes(nn.Linear(4, 2)) == (8 + 2) * 4
    with pytest.raises(TypeError):
        compute_nbytes([base])


def test_hit_and_miss() -> None:
    cache = ExpertCache(10 * KiB)
    calls: list[int] = []
    first = cache.get("e0", counting(KiB, calls))
    assert cache.get("e0", counting(KiB, calls)) is first
    assert calls == [KiB]
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.evictions, stats.entries, stats.bytes) == (1, 1, 0, 1, KiB)


def test_evicts_least_recently_used_by_bytes() -> None:
    cache = ExpertCache(10 * KiB)
    calls: list[int] = []
    for key in ("a", "b", "c"):
        cache.get(key, counting(3 * KiB, calls))
    cache.get("a", counting(3 * KiB, calls))  # a is now the most recent
    cache.get("d", counting(4 * KiB, calls))  # 13 KiB > 10: b goes, then 10 fits
    assert cache.keys() == ["c", "a", "d"]
    cache.get("e", counting(7 * KiB, calls))  # c, a and d go: 7 + 4 > 10
    assert cache.keys() == ["e"]
    stats = cache.stats
    assert (stats.evictions, stats.bytes, stats.misses, stats.hits) == (4, 7 * KiB, 5, 1)


def test_bytes_never_exceed_budget_with_hint() -> None:
    cache = ExpertCache(10 * KiB)
    peak = 0

    def load(n: int) -> Callable[[], dict[str, torch.Tensor]]:
        def inner() -> dict[str, torch.Tensor]:
            nonlocal peak
            peak = max(peak, cache.stats.bytes + n)  # what the device holds while loading
            return value(n)

        return inner

    for i, n in enumerate([4, 4, 4, 6, 2, 9, 1]):
        cache.get(i, load(n * KiB), nbytes=n * KiB)
        assert cache.stats.bytes <= 10 * KiB
    assert peak <= 10 * KiB


def test_eviction_frees_the_memory() -> None:
    cache = ExpertCache(4 * KiB)
    held = cache.get("a", lambda: value(3 * KiB))
    ref = weakref.ref(held["w"])
    del held
    cache.get("b", lambda: value(3 * KiB))
    gc.collect()
    assert ref() is None  # nothing else referred to a's tensor: it is gone
    assert cache.stats.retained == 0


def test_eviction_reports_tensors_someone_else_holds() -> None:
    cache = ExpertCache(4 * KiB)
    kept = cache.get("a", lambda: value(3 * KiB))
    cache.get("b", lambda: value(3 * KiB))
    assert cache.stats.retained == 1 and "a" not in cache
    del kept
    gc.collect()
    assert cache.stats.retained == 0


def test_modules_are_cached_and_evicted() -> None:
    cache = ExpertCache(200)
    module = cache.get("lin", lambda: nn.Linear(4, 4))  # 80 bytes
    assert cache.stats.bytes == 80
    ref = weakref.ref(module.weight)
    del module
    cache.get("big", lambda: nn.Linear(4, 8))  # 160 bytes: lin goes
    gc.collect()
    assert ref() is None and cache.keys() == ["big"]


def test_invalid_entry_larger_than_budget() -> None:
    cache = ExpertCache(4 * KiB)
    cache.get("small", lambda: value(KiB))
    calls: list[int] = []
    with pytest.raises(EntryTooLarge) as info:
        cache.get("huge", counting(5 * KiB, calls), nbytes=5 * KiB)
    assert calls == [] and info.value.nbytes == 5 * KiB and info.value.budget == 4 * KiB
    with pytest.raises(EntryTooLarge):  # without the hint: measured after loading, then dropped
        cache.get("huge", counting(5 * KiB, calls))
    assert "huge" not in cache and cache.keys() == ["small"]


def test_invalid_budget() -> None:
    with pytest.raises(ValueError):
        ExpertCache(0)


def test_loader_error_caches_nothing() -> None:
    cache = ExpertCache(4 * KiB)

    def fail() -> dict[str, torch.Tensor]:
        raise OSError("disk gone")

    with pytest.raises(OSError):
        cache.get("x", fail)
    assert "x" not in cache and cache.stats.misses == 1


def test_remove_and_clear() -> None:
    cache = ExpertCache(10 * KiB)
    for key in "abc":
        cache.get(key, lambda: value(KiB))
    assert cache.remove("b") and not cache.remove("b")
    cache.clear()
    assert len(cache) == 0 and cache.stats.bytes == 0 and cache.stats.evictions == 0


def test_caches_verified_blobs(tmp_path: Path) -> None:
    cache = ExpertCache(64 * KiB)
    loader = BlobLoader()
    records = []
    for i in range(3):
        data = encode_block({"w": torch.full((4096,), float(i))})  # 16 KiB of tensor data
        record = make_tensor_record(f"layer0.expert{i}", KIND_EXPERT, "1.0.0", data, 8192, 1024)
        (tmp_path / record.blob_id.hex()).write_bytes(data)
        records.append(record)
    for _ in range(2):
        for r in records:
            got = cache.get(r.name, lambda r=r: loader.load(tmp_path / r.blob_id.hex(), r), nbytes=r.size)
            assert got["w"][0].item() == float(records.index(r))
    assert cache.stats.hits == 3 and loader.verifications == 3


@settings(max_examples=60, deadline=None)
@given(budget=st.integers(1, 64), ops=st.lists(st.tuples(st.integers(0, 9), st.integers(1, 64)), max_size=40))
def test_lru_model(budget: int, ops: list[tuple[int, int]]) -> None:
    """Against a reference LRU: same keys in the same order, bytes within the budget."""
    cache = ExpertCache(budget)
    model: list[tuple[int, int]] = []  # (key, size), oldest first
    for key, size in ops:
        sizes = dict(model)
        if key in sizes:
            cache.get(key, lambda size=size: value(size))
            model = [kv for kv in model if kv[0] != key] + [(key, sizes[key])]
        elif size > budget:
            with pytest.raises(EntryTooLarge):
                cache.get(key, lambda size=size: value(size))
        else:
            cache.get(key, lambda size=size: value(size))
            model.append((key, size))
            while sum(s for _, s in model) > budget:
                model.pop(0)
        assert cache.keys() == [k for k, _ in model]
        assert cache.stats.bytes == sum(s for _, s in model) <= budget


@needs_cuda
def test_cuda_eviction_returns_device_memory() -> None:
    cache = ExpertCache(64 << 20, device="cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    cache.get("a", lambda: {"w": torch.zeros(48 << 20, dtype=torch.uint8, device="cuda")})
    assert torch.cuda.memory_allocated() >= before + (48 << 20)
    cache.get("b", lambda: {"w": torch.zeros(32 << 20, dtype=torch.uint8, device="cuda")})
    assert cache.stats.device_allocated < before + (48 << 20) + (32 << 20)
    cache.clear()
    assert torch.cuda.memory_allocated() == before
