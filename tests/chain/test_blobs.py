"""The content-addressed blob store: atomic writes, verification, crash leftovers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chain.blobs import CHUNK_SIZE, TMP_PREFIX, BlobNotFound, BlobStore
from chain.errors import CorruptBlob, StoreError


def test_put_get_round_trip(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest = store.put(b"hello")
    assert digest == hashlib.sha256(b"hello").digest()
    assert store.get(digest) == b"hello"
    assert store.get(digest, verify=True) == b"hello"
    assert store.has(digest)


def test_layout_splits_hex_digest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"layout")
    hexed = digest.hex()
    assert store.path_of(digest) == tmp_path / hexed[:2] / hexed[2:]
    assert store.path_of(digest).read_bytes() == b"layout"


def test_put_is_idempotent(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    first = store.put(b"same")
    second = store.put(b"same")
    assert first == second
    assert list(store.iter_ids()) == [first]
    assert not list(tmp_path.rglob(TMP_PREFIX + "*"))


def test_put_empty_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"")
    assert store.get(digest, verify=True) == b""


def test_verify_detects_flipped_byte(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"precious bytes")
    path = store.path_of(digest)
    raw = bytearray(path.read_bytes())
    raw[3] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptBlob):
        store.verify(digest)
    with pytest.raises(CorruptBlob):
        store.get(digest, verify=True)
    assert store.get(digest) == bytes(raw)  # unverified reads do not hash


def test_missing_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    absent = hashlib.sha256(b"absent").digest()
    assert not store.has(absent)
    with pytest.raises(BlobNotFound) as info:
        store.get(absent)
    assert isinstance(info.value, StoreError)
    assert info.value.digest == absent
    with pytest.raises(BlobNotFound):
        store.verify(absent)
    store.delete(absent)  # no error


def test_delete(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"gone soon")
    store.delete(digest)
    assert not store.has(digest)
    assert list(store.iter_ids()) == []


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33, "00" * 32])
def test_invalid_digest_length(tmp_path: Path, bad: object) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(ValueError):
        store.get(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.has(bad)  # type: ignore[arg-type]


def test_put_file_streams_large_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * (CHUNK_SIZE // 256) * 2 + b"tail"
    src = tmp_path / "input.bin"
    src.write_bytes(data)
    store = BlobStore(tmp_path / "blobs")
    digest = store.put_file(src)
    assert digest == hashlib.sha256(data).digest()
    assert store.get(digest, verify=True) == data
    assert store.put_file(src) == digest  # idempotent
    assert store.put(data) == digest
    assert not list((tmp_path / "blobs").rglob(TMP_PREFIX + "*"))


def test_put_file_missing_source(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(FileNotFoundError):
        store.put_file(tmp_path / "nope")
    assert not list((tmp_path / "blobs").rglob(TMP_PREFIX + "*"))


def test_open_removes_crash_temp_files(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"kept")
    subdir = store.path_of(digest).parent
    (subdir / (TMP_PREFIX + "half")).write_bytes(b"partial")
    (tmp_path / (TMP_PREFIX + "big")).write_bytes(b"partial")
    reopened = BlobStore(tmp_path)
    assert not list(tmp_path.rglob(TMP_PREFIX + "*"))
    assert list(reopened.iter_ids()) == [digest]


def test_iter_ids_ignores_foreign_files(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digests = sorted(store.put(bytes([i])) for i in range(5))
    (tmp_path / "README").write_text("not a blob")
    (tmp_path / "zz").mkdir()
    (tmp_path / "zz" / ("0" * 62)).write_bytes(b"not hex dir")
    assert list(store.iter_ids()) == digests


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=4096))
def test_round_trip_random_bytes(tmp_path: Path, data: bytes) -> None:
    store = BlobStore(tmp_path / "prop")
    digest = store.put(data)
    assert digest == hashlib.sha256(data).digest()
    assert store.get(digest, verify=True) == data
    store.verify(digest)
