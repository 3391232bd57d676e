"""The content-addressed blob store: files named by the SHA-256 of their bytes.

Layout: `root/ab/cdef...`, the hex digest split after its first two characters. Every write goes
to a `.tmp-` file in the store, is fsynced, renamed into place with `os.replace` and the directory
fsynced, so a blob is either absent or complete; temp files a crash left behind are removed when
the store is opened.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from chain.errors import CorruptBlob, StoreError

logger = logging.getLogger(__name__)

DIGEST_LEN = 32
CHUNK_SIZE = 1 << 20
TMP_PREFIX = ".tmp-"
_HEX = frozenset("0123456789abcdef")

Digest = bytes
"""A blob id: the 32-byte SHA-256 of its bytes."""


class BlobNotFound(StoreError):
    """No blob with this digest is in the store."""

    def __init__(self, digest: Digest) -> None:
        self.digest = digest
        super().__init__(f"blob {digest.hex()} not found")


def check_digest(digest: object) -> bytes:
    """`digest` itself if it is 32 bytes; ValueError otherwise."""
    if not isinstance(digest, bytes) or len(digest) != DIGEST_LEN:
        raise ValueError(f"a blob digest is {DIGEST_LEN} bytes, got {digest!r:.80}")
    return digest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hashed_chunks(src: BinaryIO, update: Callable[[bytes], object]) -> Iterator[bytes]:
    """Read `src` in CHUNK_SIZE pieces, passing each to `update` (a hasher's) on the way."""
    while chunk := src.read(CHUNK_SIZE):
        update(chunk)
        yield chunk


class BlobStore:
    """Blobs on disk under `root`, addressed by the SHA-256 of their bytes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create blob dir {self.root}: {err}") from err
        self._remove_temp_files()

    def _remove_temp_files(self) -> None:
        stale = [*self.root.glob(TMP_PREFIX + "*"), *self.root.glob("*/" + TMP_PREFIX + "*")]
        for path in stale:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as err:
                raise StoreError(f"cannot remove stale temp file {path}: {err}") from err
            logger.info("removed stale blob temp file %s", path)

    def path_of(self, digest: Digest) -> Path:
        """Where the blob with this digest lives (whether or not it exists)."""
        hexed = check_digest(digest).hex()
        return self.root / hexed[:2] / hexed[2:]

    def has(self, digest: Digest) -> bool:
        """Whether the blob is in the store."""
        return self.path_of(digest).is_file()

    def put(self, data: bytes) -> Digest:
        """Store `data` and return its digest; a no-op when it is already there."""
        digest = hashlib.sha256(data).digest()
        target = self.path_of(digest)
        if target.is_file():
            return digest
        try:
            self._ensure_dir(target.parent)
            tmp = self._write_temp(target.parent, [data])
            self._install(tmp, target)
        except OSError as err:
            raise StoreError(f"cannot write blob {digest.hex()}: {err}") from err
        logger.debug("stored blob %s (%d bytes)", digest.hex(), len(data))
        return digest

    def put_file(self, path: Path) -> Digest:
        """Store a copy of the file at `path`, hashed while copied in 1 MiB chunks; its digest.

        The digest is known only after the copy, so the temp file lives in `root` (same file
        system) and is renamed into its subdirectory. Opening `path` raises plain OSError."""
        hasher = hashlib.sha256()
        with open(path, "rb") as src:
            try:
                tmp = self._write_temp(self.root, _hashed_chunks(src, hasher.update))
            except OSError as err:
                raise StoreError(f"cannot copy {path} into the blob store: {err}") from err
        digest = hasher.digest()
        try:
            self._ensure_dir(self.path_of(digest).parent)
            self._install(tmp, self.path_of(digest))
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write blob {digest.hex()}: {err}") from err
        logger.debug("stored blob %s from %s", digest.hex(), path)
        return digest

    def _ensure_dir(self, directory: Path) -> None:
        if directory.is_dir():
            return
        directory.mkdir(exist_ok=True)
        _fsync_dir(self.root)

    @staticmethod
    def _write_temp(directory: Path, chunks: Iterable[bytes]) -> Path:
        """Write `chunks` to a new `.tmp-` file in `directory` and fsync it; its path."""
        fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return Path(name)

    @staticmethod
    def _install(tmp: Path, target: Path) -> None:
        """Rename `tmp` to `target` and fsync its directory; drop `tmp` if `target` exists."""
        try:
            if target.is_file():
                tmp.unlink()
                return
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)

    def get(self, digest: Digest, verify: bool = False) -> bytes:
        """The blob's bytes; BlobNotFound if absent, CorruptBlob if `verify` finds them altered."""
        path = self.path_of(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError as err:
            raise BlobNotFound(digest) from err
        except OSError as err:
            raise StoreError(f"cannot read blob {digest.hex()}: {err}") from err
        if verify and hashlib.sha256(data).digest() != digest:
            raise CorruptBlob(f"blob {digest.hex()} at {path} does not match its digest")
        return data

    def verify(self, digest: Digest) -> None:
        """Hash the blob on disk in chunks; BlobNotFound if absent, CorruptBlob if it differs."""
        path = self.path_of(digest)
        hasher = hashlib.sha256()
        try:
            with open(path, "rb") as src:
                while chunk := src.read(CHUNK_SIZE):
                    hasher.update(chunk)
        except FileNotFoundError as err:
            raise BlobNotFound(digest) from err
        except OSError as err:
            raise StoreError(f"cannot read blob {digest.hex()}: {err}") from err
        if hasher.digest() != digest:
            raise CorruptBlob(f"blob {digest.hex()} at {path} does not match its digest")

    def delete(self, digest: Digest) -> None:
        """Remove the blob; no error when it is absent."""
        path = self.path_of(digest)
        try:
            path.unlink()
            _fsync_dir(path.parent)
        except FileNotFoundError:
            return
        except OSError as err:
            raise StoreError(f"cannot delete blob {digest.hex()}: {err}") from err

    def iter_ids(self) -> Iterator[Digest]:
        """The digests of all blobs in the store, in hex order."""
        for subdir in sorted(self.root.iterdir()):
            if not (subdir.is_dir() and len(subdir.name) == 2 and set(subdir.name) <= _HEX):
                continue
            for entry in sorted(subdir.iterdir()):
                name = subdir.name + entry.name
                if len(name) == 2 * DIGEST_LEN and set(name) <= _HEX and entry.is_file():
                    yield bytes.fromhex(name)
