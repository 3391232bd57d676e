"""Behaviour of the KV interface, run against MemoryKV and LevelDBKV alike."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from chain.errors import StoreError, StoreLocked
from chain.kv import (
    ALL_COLUMNS,
    COL_BLOCK,
    COL_BLOCK_BY_HASH,
    COL_STATE,
    KV,
    MemoryKV,
    height_key,
)
from chain.leveldb import LevelDBKV

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["memory", "leveldb"])
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KV]:
    store: KV = MemoryKV() if request.param == "memory" else LevelDBKV(tmp_path / "db")
    yield store
    store.close()


def test_get_missing_is_none(kv: KV) -> None:
    assert kv.get(b"Snope") is None


def test_put_get_delete(kv: KV) -> None:
    kv.put(b"Sa", b"1")
    assert kv.get(b"Sa") == b"1"
    kv.put(b"Sa", b"2")
    assert kv.get(b"Sa") == b"2"
    kv.delete(b"Sa")
    assert kv.get(b"Sa") is None
    kv.delete(b"Sa")  # deleting an absent key is no error


def test_empty_value_is_not_missing(kv: KV) -> None:
    kv.put(b"Sempty", b"")
    assert kv.get(b"Sempty") == b""


def test_write_batch_applies_puts_and_deletes(kv: KV) -> None:
    kv.put(b"Sold", b"x")
    kv.write_batch([(b"Sa", b"1"), (b"Sb", b"2")], [b"Sold"])
    assert kv.get(b"Sa") == b"1"
    assert kv.get(b"Sb") == b"2"
    assert kv.get(b"Sold") is None


def test_write_batch_deletes_after_puts(kv: KV) -> None:
    kv.write_batch([(b"Sa", b"1")], [b"Sa"], sync=False)
    assert kv.get(b"Sa") is None


def test_write_batch_accepts_generators(kv: KV) -> None:
    kv.write_batch(((bytes([65 + i]), b"v") for i in range(3)), iter(()))
    assert [k for k, _ in kv.iterate(b"")] == [b"A", b"B", b"C"]


def test_invalid_batch_value_type_writes_nothing(kv: KV) -> None:
    kv.put(b"Skeep", b"k")
    bad = [(b"Sa", b"1"), (b"Sb", "not bytes"), (b"Sc", b"3")]
    with pytest.raises(TypeError):
        kv.write_batch(bad, [b"Skeep"])  # type: ignore[list-item]
    assert kv.get(b"Sa") is None
    assert kv.get(b"Sc") is None
    assert kv.get(b"Skeep") == b"k"


def test_invalid_batch_delete_type_writes_nothing(kv: KV) -> None:
    with pytest.raises(TypeError):
        kv.write_batch([(b"Sa", b"1")], [b"Sb", 7])  # type: ignore[list-item]
    assert kv.get(b"Sa") is None


def test_invalid_key_type(kv: KV) -> None:
    with pytest.raises(TypeError):
        kv.put("Sa", b"1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        kv.get(1)  # type: ignore[arg-type]


def test_iterate_prefix_sorted(kv: KV) -> None:
    for h in (10, 2, 300, 1):
        kv.put(COL_BLOCK + height_key(h), str(h).encode())
    got = [(k[1:], v) for k, v in kv.iterate(COL_BLOCK)]
    assert got == [(height_key(h), str(h).encode()) for h in (1, 2, 10, 300)]


def test_iterate_does_not_cross_prefix(kv: KV) -> None:
    kv.put(COL_BLOCK + b"\xff", b"last-block")
    kv.put(COL_BLOCK_BY_HASH + b"\x00", b"hash")
    kv.put(COL_STATE + b"x", b"state")
    kv.put(b"A\xff", b"before")
    assert list(kv.iterate(COL_BLOCK)) == [(COL_BLOCK + b"\xff", b"last-block")]
    assert list(kv.iterate(COL_BLOCK + b"\xff")) == [(COL_BLOCK + b"\xff", b"last-block")]
    assert list(kv.iterate(COL_BLOCK + b"\xff\x00")) == []
    assert list(kv.iterate(b"Z")) == []


def test_iterate_prefix_with_0xff_tail(kv: KV) -> None:
    kv.put(b"S\xff\xff", b"1")
    kv.put(b"S\xff\xff\x00", b"2")
    kv.put(b"T", b"3")
    assert [v for _, v in kv.iterate(b"S\xff\xff")] == [b"1", b"2"]


def test_iterate_is_a_snapshot(kv: KV) -> None:
    kv.put(b"Sa", b"1")
    kv.put(b"Sb", b"2")
    it = kv.iterate(b"S")
    kv.put(b"Sc", b"3")
    kv.delete(b"Sa")
    assert list(it) == [(b"Sa", b"1"), (b"Sb", b"2")]


def test_closed_store_raises_store_error(kv: KV) -> None:
    kv.close()
    kv.close()  # idempotent
    with pytest.raises(StoreError):
        kv.get(b"Sa")
    with pytest.raises(StoreError):
        kv.write_batch([(b"Sa", b"1")], [])


def test_height_key_orders_bytes_like_heights() -> None:
    assert height_key(0) == bytes(8)
    assert height_key(258) == b"\x00" * 6 + b"\x01\x02"
    assert sorted(height_key(h) for h in (5, 256, 1)) == [height_key(h) for h in (1, 5, 256)]


@pytest.mark.parametrize("bad", [-1, 2**64])
def test_invalid_height_key_range(bad: int) -> None:
    with pytest.raises(ValueError):
        height_key(bad)


def test_invalid_height_key_type() -> None:
    with pytest.raises(TypeError):
        height_key(True)


def test_columns_are_distinct_single_bytes() -> None:
    assert all(len(col) == 1 for col in ALL_COLUMNS)
    assert len(set(ALL_COLUMNS)) == len(ALL_COLUMNS)


def test_leveldb_persists_across_reopen(tmp_path: Path) -> None:
    with LevelDBKV(tmp_path / "db") as db:
        db.write_batch([(b"Sa", b"1")], [])
    with LevelDBKV(tmp_path / "db", create=False) as db:
        assert db.get(b"Sa") == b"1"


def test_leveldb_iterator_after_close_raises_store_error(tmp_path: Path) -> None:
    db = LevelDBKV(tmp_path / "db")
    db.put(b"Sa", b"1")
    db.put(b"Sb", b"2")
    it = db.iterate(b"S")
    assert next(it) == (b"Sa", b"1")
    db.close()
    with pytest.raises(StoreError):
        next(it)


def test_leveldb_missing_dir_without_create(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        LevelDBKV(tmp_path / "absent", create=False)
    assert not isinstance(info.value, StoreLocked)
    assert "absent" in str(info.value)


def test_leveldb_locked_in_same_process(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with LevelDBKV(path):
        with pytest.raises(StoreLocked) as info:
            LevelDBKV(path)
    assert str(info.value) == f"data dir {path} is in use by another process (LevelDB lock held)"
    LevelDBKV(path).close()  # the lock is released on close


def test_leveldb_locked_by_other_process(tmp_path: Path) -> None:
    path = tmp_path / "db"
    child = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from chain.leveldb import LevelDBKV
        try:
            LevelDBKV(Path(sys.argv[1]))
        except Exception as err:
            print(type(err).__name__, err, sep=": ")
        else:
            print("opened")
        """
    )
    with LevelDBKV(path):
        result = subprocess.run(
            [sys.executable, "-c", child, str(path)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    expected = f"StoreLocked: data dir {path} is in use by another process (LevelDB lock held)"
    assert result.stdout.strip() == expected, result.stderr
