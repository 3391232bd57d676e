"""Zero-copy, verified loading of tensor blobs, and the repair of a corrupt tile in place.

    loader = BlobLoader(hash_dir=datadir / "subtiles")
    tensors = loader.load(store.path_of(record.blob_id), record, device="cuda:0")

`load` maps the blob file (`mmap`, a private copy-on-write mapping: nothing is read or copied
until touched, and a write into a tensor never reaches the file), checks it against the record's
Merkle root, then views each tensor with `torch.frombuffer` over the mapping. The header is
parsed here (10 lines of JSON checks, cross-checked with the record) rather than through
`safetensors.safe_open`, which would copy each tensor out of its own mapping; see
scripts/bench_gpu.py for the figures. To a CUDA device the data region goes in one copy through
pinned host memory (`non_blocking`), then each tensor is a view of that one device buffer.

Verification is done once per file version: the loader remembers the `os.stat` stamp (device,
inode, size, mtime, ctime) of every file it verified against a root, and verifies again when the
stamp or the root changes. A stamp detects a file that was rewritten (a repair renames a new file
into place: a new inode), not bit rot under an unchanged stamp: `forget` (or `verify(...,
force=True)`, e.g. from a periodic scrub) makes the next load hash the file again.

Naming the corrupt tile needs the subtile hashes of the good blob: the record carries only their
root. The loader keeps those hashes once a file has verified (in memory, and in `hash_dir` when
given: one file per root, worthless unless it hashes to that root, so it is checked when read).
With them, a check goes tile by tile and `CorruptTile` names the first bad one. Without them (a
file that was never good here) a mismatch can only say "somewhere": `CorruptBlob`, and
`compute_corrupt_tiles` lists every tile.

`repair_tiles` writes verified tiles (each checked with its `TileProof` against the record's
root) into a copy of the file and renames it over the old one: readers with the old mapping keep
their bytes, a crash leaves the old file or the new one, never a mix.

Thread safety: a `BlobLoader` may be shared by threads (its memo is behind a lock); two repairs
of the same blob must not overlap (the second would undo the first): a module lock serialises
them within a process.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from chain.errors import CorruptBlob, DecodingError, StoreError
from chain.merkle import compute_root
from chain.tensors import TILE_MERKLE_ARITY, TensorRecord
from gpu.tiles import (
    CorruptTile,
    TileProof,
    compute_subtile_hashes,
    compute_tile_count,
    compute_tile_span,
    verify_record_tile,
)
from gpu.weights import DTYPE_NAMES

logger = logging.getLogger(__name__)

Device = str | torch.device
DTYPES: dict[str, torch.dtype] = {name: dtype for dtype, name in DTYPE_NAMES.items()}
HEADER_LEN_BYTES = 8
MAX_HEADER_BYTES = 1 << 20
"""A tensor block's header is at most 64 small entries; anything longer is not ours."""
TMP_PREFIX = ".tmp-"

_repair_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What identifies one version of a file, from `os.stat`."""

    device: int
    """st_dev."""
    inode: int
    """st_ino: a rename into place gives a new one."""
    size: int
    """st_size."""
    mtime_ns: int
    """Last data change."""
    ctime_ns: int
    """Last data or metadata change (cannot be set back by `os.utime`)."""

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class TensorSpan:
    """Where one tensor lies in a blob, from its safetensors header."""

    name: str
    """Tensor name."""
    dtype: torch.dtype
    """Element type."""
    shape: tuple[int, ...]
    """Dimensions."""
    start: int
    """First byte, from the start of the file."""
    end: int
    """One past the last byte."""


# --- header ---------------------------------------------------------------------------------


def decode_header(view: memoryview, record: TensorRecord) -> list[TensorSpan]:
    """The tensors of a safetensors blob, checked against its record; `DecodingError` else.

    Checks bounds, sizes and alignment, not the bytes (that is `verify`'s job)."""
    if len(view) < HEADER_LEN_BYTES:
        raise DecodingError(f"{len(view)} bytes: no header", "tensor block")
    length = int.from_bytes(view[:HEADER_LEN_BYTES], "little")
    data_start = HEADER_LEN_BYTES + length
    if length > MAX_HEADER_BYTES or data_start > len(view):
        raise DecodingError(f"header of {length} bytes in a {len(view)}-byte blob", "tensor block")
    try:
        header = json.loads(bytes(view[HEADER_LEN_BYTES:data_start]))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DecodingError(f"header is not JSON: {err}", "tensor block") from err
    if not isinstance(header, dict):
        raise DecodingError("header is not a JSON object", "tensor block")
    header.pop("__metadata__", None)
    expected = {info.name: info for info in record.tensors}
    if set(header) != set(expected):
        raise DecodingError(f"holds {sorted(header)}, record says {sorted(expected)}", record.name)
    spans = [_decode_entry(name, header[name], data_start, len(view)) for name in sorted(header)]
    for span in spans:
        info = expected[span.name]
        if DTYPE_NAMES[span.dtype] != info.dtype or span.shape != tuple(info.shape):
            raise DecodingError(f"{span.name} differs from the record", record.name)
    return spans


def _decode_entry(name: str, entry: object, data_start: int, size: int) -> TensorSpan:
    where = f"tensor block header.{name}"
    if not isinstance(entry, dict):
        raise DecodingError("entry is not an object", where)
    dtype = DTYPES.get(entry.get("dtype"))  # type: ignore[arg-type]
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if dtype is None:
        raise DecodingError(f"unknown dtype {entry.get('dtype')!r}", where)
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise DecodingError(f"bad shape {shape!r}", where)
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(type(o) is int for o in offsets)):
        raise DecodingError(f"bad data_offsets {offsets!r}", where)
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = 1
    for dim in shape:
        numel *= dim
    start, end = data_start + offsets[0], data_start + offsets[1]
    if not data_start <= start <= end <= size or end - start != numel * itemsize:
        raise DecodingError(f"data_offsets {offsets} do not fit {numel} x {itemsize} bytes", where)
    if start % itemsize:
        raise DecodingError(f"offset {start} is not aligned to {itemsize} bytes", where)
    return TensorSpan(name, dtype, tuple(shape), start, end)


# --- views and devices ----------------------------------------------------------------------


def _view_tensors(buffer: mmap.mmap, spans: list[TensorSpan]) -> dict[str, torch.Tensor]:
    """CPU tensors sharing the mapping's memory (they keep it alive)."""
    out = {}
    for span in spans:
        if span.end == span.start:
            out[span.name] = torch.empty(span.shape, dtype=span.dtype)
            continue
        count = (span.end - span.start) // _itemsize(span.dtype)
        flat = torch.frombuffer(buffer, dtype=span.dtype, count=count, offset=span.start)  # [n]
        out[span.name] = flat.view(span.shape)
    return out


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def move_to_device(
    buffer: mmap.mmap, spans: list[TensorSpan], device: torch.device, synchronize: bool = True
) -> dict[str, torch.Tensor]:
    """Tensors on a CUDA device: the data region copied once through pinned memory.

    With `synchronize`, returns after the copy has finished; otherwise the copy is queued on
    the current stream (work on that stream is ordered after it)."""
    lo, hi = min((s.start for s in spans), default=0), max((s.end for s in spans), default=0)
    if hi == lo:  # no tensor has any bytes
        return {s.name: torch.empty(s.shape, dtype=s.dtype, device=device) for s in spans}
    region = torch.frombuffer(buffer, dtype=torch.uint8, count=hi - lo, offset=lo)  # [n]
    staging = torch.empty(hi - lo, dtype=torch.uint8, pin_memory=True)  # [n] page-locked
    staging.copy_(region)
    on_device = staging.to(device, non_blocking=True)  # [n]
    out = {}
    for span in spans:
        chunk = on_device[span.start - lo : span.end - lo]  # [nbytes]
        out[span.name] = chunk.view(span.dtype).view(span.shape)
    if synchronize:
        torch.cuda.current_stream(device).synchronize()
    return out


# --- the loader -----------------------------------------------------------------------------


def _open_map(path: Path) -> tuple[mmap.mmap | None, FileStamp]:
    """A private mapping of the file and its stamp (None for an empty file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        if st.st_size == 0:
            return None, FileStamp.of(st)
        return mmap.mmap(fd, 0, access=mmap.ACCESS_COPY), FileStamp.of(st)
    finally:
        os.close(fd)  # the mapping keeps its own reference to the file


def _scan_tiles(
    view: memoryview, record: TensorRecord, trusted: list[bytes], first_only: bool
) -> list[int]:
    """Indices of tiles whose subtiles differ from `trusted` (the good blob's hashes), in order."""
    wrong_size = set(_tiles_with_wrong_size(len(view), record))
    per_tile = record.tile_size // record.subtile_size
    bad = []
    for tile in range(compute_tile_count(record.size, record.tile_size)):
        if tile not in wrong_size:
            start, end = compute_tile_span(record.size, tile, record.tile_size)
            hashes = compute_subtile_hashes(view[start:end], record.subtile_size)
            if hashes == trusted[tile * per_tile : tile * per_tile + len(hashes)]:
                continue
        bad.append(tile)
        if first_only:
            break
    return bad


def _tiles_with_wrong_size(size: int, record: TensorRecord) -> list[int]:
    """The tiles a file of `size` bytes cannot hold right: the one its end cuts, the ones
    missing after it, or the last one when the file is too long."""
    count = compute_tile_count(record.size, record.tile_size)
    if size == record.size:
        return []
    if size > record.size:
        return [count - 1]
    return list(range(size // record.tile_size, count))


class BlobLoader:
    """Verifies tensor blobs once per file version and views their tensors zero-copy."""

    def __init__(self, hash_dir: Path | None = None) -> None:
        self.hash_dir = Path(hash_dir) if hash_dir is not None else None
        self._lock = threading.Lock()
        self._verified: dict[str, tuple[FileStamp, bytes]] = {}  # path -> (stamp, merkle root)
        self._hashes: dict[bytes, list[bytes]] = {}  # merkle root -> good subtile hashes
        self.verifications = 0
        """How many times a file was hashed whole (for tests and metrics)."""

    # --- public API ---

    def load(
        self, path: Path, record: TensorRecord, device: Device = "cpu", *, synchronize: bool = True
    ) -> dict[str, torch.Tensor]:
        """The blob's tensors on `device`, verified; `CorruptTile` / `CorruptBlob` if altered.

        On the CPU the tensors view the file's mapping (writes to them stay private to this
        process). A missing file raises `FileNotFoundError`."""
        buffer, stamp = _open_map(Path(path))
        try:
            self._verify_mapped(str(path), buffer, stamp, record, force=False)
        except BaseException:
            if buffer is not None:
                buffer.close()
            raise
        if buffer is None:  # unreachable: a record's size is positive, so the check failed
            raise CorruptTile("empty file", 0)
        spans = decode_header(memoryview(buffer), record)
        target = torch.device(device)
        if target.type == "cpu":
            return _view_tensors(buffer, spans)
        if target.type != "cuda" or not torch.cuda.is_available():
            raise ValueError(f"cannot load onto {target}: the CPU or an available CUDA device")
        return move_to_device(buffer, spans, target, synchronize)

    def verify(self, path: Path, record: TensorRecord, *, force: bool = False) -> None:
        """Check the file against the record's root unless this version already passed."""
        buffer, stamp = _open_map(Path(path))
        try:
            self._verify_mapped(str(path), buffer, stamp, record, force=force)
        finally:
            if buffer is not None:
                buffer.close()

    def is_verified(self, path: Path, record: TensorRecord) -> bool:
        """Whether the file, as it is now, has passed against this record's root."""
        try:
            stamp = FileStamp.of(os.stat(path))
        except FileNotFoundError:
            return False
        with self._lock:
            return self._verified.get(str(path)) == (stamp, record.merkle_root)

    def forget(self, path: Path) -> None:
        """Make the next load of `path` verify it again."""
        with self._lock:
            self._verified.pop(str(path), None)

    def get_subtile_hashes(self, path: Path, record: TensorRecord) -> list[bytes]:
        """The good blob's subtile hashes (verifying the file if they are not known yet)."""
        trusted = self._get_trusted(record)
        if trusted is None:
            self.verify(path, record, force=True)
            trusted = self._get_trusted(record)
        if trusted is None:  # verify raised unless the hashes were stored
            raise CorruptBlob(f"no good subtile hashes for {record.name}")
        return trusted

    def compute_corrupt_tiles(self, path: Path, record: TensorRecord) -> list[int]:
        """Every tile of the file that is wrong (all of them for a missing file, or when the
        good hashes are unknown and the root does not match); [] when the file is good."""
        try:
            buffer, stamp = _open_map(Path(path))
        except FileNotFoundError:
            return list(range(compute_tile_count(record.size, record.tile_size)))
        view = memoryview(buffer) if buffer is not None else memoryview(b"")
        with self._lock:
            self.verifications += 1
        try:
            trusted = self._get_trusted(record)
            if trusted is None:
                if len(view) == record.size and self._hash_all(view, record) is not None:
                    self._remember(str(path), stamp, record)
                    return []
                return list(range(compute_tile_count(record.size, record.tile_size)))
            bad = _scan_tiles(view, record, trusted, first_only=False)
            if not bad:
                self._remember(str(path), stamp, record)
            return bad
        finally:
            view.release()
            if buffer is not None:
                buffer.close()

    # --- internals ---

    def _verify_mapped(
        self, key: str, buffer: mmap.mmap | None, stamp: FileStamp, record: TensorRecord,
        force: bool,
    ) -> None:
        with self._lock:
            if not force and self._verified.get(key) == (stamp, record.merkle_root):
                return
            self._verified.pop(key, None)
            self.verifications += 1
        view = memoryview(buffer) if buffer is not None else memoryview(b"")
        try:
            trusted = self._get_trusted(record)
            if trusted is not None:
                bad = _scan_tiles(view, record, trusted, first_only=True)
                if bad:
                    raise CorruptTile(f"{key} differs from root {record.merkle_root.hex()[:16]}",
                                      bad[0])
            elif wrong := _tiles_with_wrong_size(len(view), record):
                raise CorruptTile(f"{key} is {len(view)} bytes, expected {record.size}", wrong[0])
            elif self._hash_all(view, record) is None:
                raise CorruptBlob(f"{key} does not match root {record.merkle_root.hex()[:16]} "
                                  f"(no good subtile hashes known to name the tile)")
        finally:
            view.release()
        self._remember(key, stamp, record)

    def _hash_all(self, view: memoryview, record: TensorRecord) -> list[bytes] | None:
        """The subtile hashes if they match the root (and remember them), else None."""
        hashes = compute_subtile_hashes(view, record.subtile_size)
        if compute_root(hashes, TILE_MERKLE_ARITY) != record.merkle_root:
            return None
        self._store_trusted(record, hashes)
        return hashes

    def _remember(self, key: str, stamp: FileStamp, record: TensorRecord) -> None:
        with self._lock:
            self._verified[key] = (stamp, record.merkle_root)

    def _get_trusted(self, record: TensorRecord) -> list[bytes] | None:
        with self._lock:
            known = self._hashes.get(record.merkle_root)
        if known is not None or self.hash_dir is None:
            return known
        try:
            raw = (self.hash_dir / record.merkle_root.hex()).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StoreError(f"cannot read subtile hashes of {record.name}: {err}") from err
        hashes = [raw[i : i + 32] for i in range(0, len(raw), 32)]
        count = compute_tile_count(record.size, record.subtile_size)
        if len(raw) % 32 or len(hashes) != count or (
            compute_root(hashes, TILE_MERKLE_ARITY) != record.merkle_root
        ):
            logger.warning("ignoring bad subtile hash file for %s", record.name)
            return None
        with self._lock:
            self._hashes[record.merkle_root] = hashes
        return hashes

    def _store_trusted(self, record: TensorRecord, hashes: list[bytes]) -> None:
        with self._lock:
            self._hashes[record.merkle_root] = hashes
        if self.hash_dir is None:
            return
        try:
            self.hash_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=self.hash_dir)
            with os.fdopen(fd, "wb") as out:
                out.write(b"".join(hashes))
            os.replace(name, self.hash_dir / record.merkle_root.hex())
        except OSError as err:  # a cache: losing it costs a re-hash, not correctness
            logger.warning("cannot save subtile hashes of %s: %s", record.name, err)


# --- repair ---------------------------------------------------------------------------------


def repair_tile(
    path: Path, record: TensorRecord, tile_index: int, tile_bytes: bytes, proof: TileProof
) -> None:
    """Write one fetched tile into the blob at `path`, after checking it against the record."""
    repair_tiles(path, record, {tile_index: (tile_bytes, proof)})


def repair_tiles(
    path: Path, record: TensorRecord, tiles: Mapping[int, tuple[bytes, TileProof]]
) -> None:
    """Write fetched tiles into the blob, each verified with its proof first (`CorruptTile`
    if one fails: then nothing is written). The new file (the old bytes, these tiles, and
    zeros where the old file had nothing) is fsynced and renamed over the old one."""
    for index, (data, proof) in sorted(tiles.items()):
        verify_record_tile(record, index, data, proof)
    path = Path(path)
    with _repair_lock:
        try:
            _rewrite(path, record, tiles)
        except OSError as err:
            raise StoreError(f"cannot repair {path}: {err}") from err
    logger.info("repaired tiles %s of %s at %s", sorted(tiles), record.name, path)


def _rewrite(
    path: Path, record: TensorRecord, tiles: Mapping[int, tuple[bytes, TileProof]]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "w+b") as out:
            _copy_prefix(path, out, record.size)
            out.truncate(record.size)  # zeros past the old end; cuts a file that was too long
            for index, (data, _) in sorted(tiles.items()):
                start, _end = compute_tile_span(record.size, index, record.tile_size)
                out.seek(start)
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _copy_prefix(path: Path, out: object, limit: int) -> None:
    """Copy the first `limit` bytes of `path` (if it exists) to the file object `out`."""
    try:
        src = open(path, "rb")
    except FileNotFoundError:
        return
    with src:
        remaining = limit
        while remaining > 0 and (chunk := src.read(min(remaining, 1 << 20))):
            out.write(chunk)  # type: ignore[attr-defined]
            remaining -= len(chunk)
