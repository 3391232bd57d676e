"""Datasets on disk, named by their IPFS CID, and the blocks of their UnixFS DAG served from them.

A dataset is addressed by the CID `ipfs add --cid-version 1 --raw-leaves` gives its bytes
(`chain.unixfs`). `DatasetStore` keeps one file per dataset, `root/<cid>`; every write goes to a
`.tmp-` file in `root`, is fsynced, renamed into place with `os.replace` and the directory
fsynced, so a dataset is either absent or complete (temp files a crash left behind are removed
when the store is opened). Nothing is stored under a CID it does not hash to: `put` computes the
CID, `put_verified` checks it.

Serving a block (`block(root_cid, block_cid)`) needs the dataset's DAG: its inner dag-pb nodes
and where each raw leaf lies in the file. The store keeps that index for the last few datasets
served (LRU by count), so a peer fetching a dataset block by block does not make this node
rebuild the DAG per request; a leaf is read from the file at its offset and checked against its
CID before it is served (a corrupt local copy is refused, not served).

Blocking (reads, hashes, fsyncs): call it off the event loop. Thread-safe: the DAG cache is
guarded by a lock, files are written atomically.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chain import unixfs
from chain.errors import BlyanError, StoreError

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
MAX_CID_CHARS = 128
"""Longest CID accepted (a CIDv1 of a SHA-256 multihash in base32 is 59 characters)."""
DEFAULT_DAG_CACHE = 8
"""How many datasets' DAG indexes `DatasetStore` keeps (least recently used dropped first)."""
CODEC_RAW = unixfs.CODEC_RAW
CODEC_DAG_PB = unixfs.CODEC_DAG_PB

_CID = re.compile(r"b[a-z2-7]+")
"""Multibase base32, lower case, no padding: the only CIDs this store knows (no `/`, no `.`)."""

Cid = str
"""A CIDv1 in base32 (`bafk...` for a raw leaf, `bafy...` for a dag-pb node)."""


# --- errors ---------------------------------------------------------------------------------


class InvalidCid(BlyanError):
    """A string that is not a CIDv1 of a raw or dag-pb block in lower-case base32."""

    def __init__(self, cid: object, reason: str) -> None:
        self.cid = cid
        self.reason = reason
        super().__init__(f"invalid CID {cid!r:.80}: {reason}")


class ContentMismatch(BlyanError):
    """Bytes that do not hash to the CID they were given as."""

    def __init__(self, expected: Cid, actual: Cid) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"dataset {expected} does not match its bytes (they are {actual})")


class DatasetNotFound(StoreError):
    """No dataset with this CID is in the store."""

    def __init__(self, cid: Cid) -> None:
        self.cid = cid
        super().__init__(f"dataset {cid} not found")


def validate_cid(cid: object) -> Cid:
    """`cid` itself if it is a CIDv1 of a raw or dag-pb block in lower-case base32;
    `InvalidCid` otherwise (a name that can become a file name: no path tricks)."""
    if not isinstance(cid, str):
        raise InvalidCid(cid, "not a string")
    if not 2 <= len(cid) <= MAX_CID_CHARS:
        raise InvalidCid(cid, f"length {len(cid)} is not within 2..{MAX_CID_CHARS}")
    if not _CID.fullmatch(cid):
        raise InvalidCid(cid, "not lower-case base32 with the 'b' multibase prefix")
    try:
        codec = unixfs.codec_of(cid)
    except (BlyanError, ValueError) as err:
        raise InvalidCid(cid, f"does not parse ({err})") from err
    if codec not in (CODEC_RAW, CODEC_DAG_PB):
        raise InvalidCid(cid, f"codec {codec:#x} is neither raw nor dag-pb")
    return cid


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class _DagIndex:
    """What serving a dataset's blocks needs, without its bytes."""

    nodes: dict[Cid, bytes]
    """The inner dag-pb nodes (the root among them, unless the dataset is one raw leaf)."""
    leaves: dict[Cid, tuple[int, int]]
    """Each raw leaf's (offset, length) in the file (a leaf repeated in the file: any copy)."""


class DatasetStore:
    """Dataset files under `root`, each named by its CID."""

    def __init__(self, root: Path, *, dag_cache: int = DEFAULT_DAG_CACHE) -> None:
        if dag_cache < 1:
            raise ValueError(f"dag_cache must be >= 1, got {dag_cache}")
        self.root = Path(root)
        self.dag_cache = dag_cache
        self._dags: OrderedDict[Cid, _DagIndex] = OrderedDict()
        self._lock = threading.Lock()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create dataset dir {self.root}: {err}") from err
        self._remove_temp_files()

    def _remove_temp_files(self) -> None:
        for path in self.root.glob(TMP_PREFIX + "*"):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as err:
                raise StoreError(f"cannot remove stale temp file {path}: {err}") from err
            logger.info("removed stale dataset temp file %s", path)

    # --- files ------------------------------------------------------------------------------

    def path(self, cid: Cid) -> Path:
        """Where the dataset lives (whether or not it exists); `InvalidCid` for a bad name."""
        return self.root / validate_cid(cid)

    def has(self, cid: Cid) -> bool:
        """Whether the dataset is in the store."""
        return self.path(cid).is_file()

    def size(self, cid: Cid) -> int:
        """The dataset's size in bytes; `DatasetNotFound` if absent."""
        try:
            return self.path(cid).stat().st_size
        except FileNotFoundError as err:
            raise DatasetNotFound(cid) from err
        except OSError as err:
            raise StoreError(f"cannot stat dataset {cid}: {err}") from err

    def read(self, cid: Cid) -> bytes:
        """The dataset's bytes; `DatasetNotFound` if absent."""
        try:
            return self.path(cid).read_bytes()
        except FileNotFoundError as err:
            raise DatasetNotFound(cid) from err
        except OSError as err:
            raise StoreError(f"cannot read dataset {cid}: {err}") from err

    def cids(self) -> list[Cid]:
        """The CIDs of every dataset in the store, sorted."""
        found = []
        for entry in sorted(self.root.iterdir()):
            name = entry.name
            if len(name) <= MAX_CID_CHARS and _CID.fullmatch(name) and entry.is_file():
                found.append(name)
        return found

    def put(self, data: bytes) -> Cid:
        """Store `data` and return its CID; a no-op when it is already there."""
        cid = unixfs.compute_dataset_cid(data)
        self._write(cid, data)
        return cid

    def put_verified(self, cid: Cid, data: bytes) -> None:
        """Store `data` as `cid`; `ContentMismatch` (nothing written) if it hashes to another."""
        validate_cid(cid)
        actual = unixfs.compute_dataset_cid(data)
        if actual != cid:
            raise ContentMismatch(cid, actual)
        self._write(cid, data)

    def delete(self, cid: Cid) -> None:
        """Remove the dataset; no error when it is absent."""
        path = self.path(cid)
        self._forget(cid)
        try:
            path.unlink()
            _fsync_dir(self.root)
        except FileNotFoundError:
            return
        except OSError as err:
            raise StoreError(f"cannot delete dataset {cid}: {err}") from err

    def _write(self, cid: Cid, data: bytes) -> None:
        target = self.path(cid)
        if target.is_file():
            return
        try:
            fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=self.root)
            tmp = Path(name)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            _fsync_dir(self.root)
        except OSError as err:
            raise StoreError(f"cannot write dataset {cid}: {err}") from err
        logger.debug("stored dataset %s (%d bytes)", cid, len(data))

    # --- blocks -----------------------------------------------------------------------------

    def block(self, root_cid: Cid, block_cid: Cid) -> bytes | None:
        """Block `block_cid` of the DAG of dataset `root_cid`, checked against its CID; None when
        the dataset is not here, the block is not in its DAG, or the local copy is corrupt."""
        validate_cid(root_cid)
        validate_cid(block_cid)
        if unixfs.codec_of(root_cid) == CODEC_RAW:  # a dataset of one leaf: the file is the block
            if block_cid != root_cid:
                return None
            return self._checked(root_cid, lambda: self.read(root_cid))
        index = self._index(root_cid)
        if index is None:
            return None
        node = index.nodes.get(block_cid)
        if node is not None:
            return node
        span = index.leaves.get(block_cid)
        if span is None:
            return None
        return self._checked(root_cid, lambda: self._read_span(root_cid, *span), block_cid)

    def _checked(self, root_cid: Cid, read: Callable[[], bytes], block_cid: Cid | None = None) -> bytes | None:
        block_cid = block_cid or root_cid
        try:
            data = read()
        except DatasetNotFound:
            self._forget(root_cid)
            return None
        try:
            unixfs.verify_block(block_cid, data)
        except unixfs.BlockMismatch:
            self._forget(root_cid)
            logger.warning("not serving block %s of dataset %s: the local copy is corrupt",
                           block_cid, root_cid)
            return None
        return data

    def _read_span(self, cid: Cid, offset: int, length: int) -> bytes:
        try:
            with open(self.path(cid), "rb") as src:
                src.seek(offset)
                return src.read(length)
        except FileNotFoundError as err:
            raise DatasetNotFound(cid) from err
        except OSError as err:
            raise StoreError(f"cannot read dataset {cid}: {err}") from err

    def _index(self, cid: Cid) -> _DagIndex | None:
        with self._lock:
            index = self._dags.get(cid)
            if index is not None:
                self._dags.move_to_end(cid)
                return index
        try:
            data = self.read(cid)
        except DatasetNotFound:
            return None
        dag = unixfs.build_dag(data)
        if dag.root != cid:
            logger.warning("dataset %s on disk hashes to %s: not serving it", cid, dag.root)
            return None
        index = _DagIndex(dict(dag.nodes), {leaf: (off, n) for leaf, off, n in dag.leaves})
        with self._lock:
            self._dags[cid] = index
            self._dags.move_to_end(cid)
            while len(self._dags) > self.dag_cache:
                self._dags.popitem(last=False)
        return index

    def _forget(self, cid: Cid) -> None:
        with self._lock:
            self._dags.pop(cid, None)

    def cached_dags(self) -> list[Cid]:
        """The datasets whose DAG index is cached, least recently used first (for tests)."""
        with self._lock:
            return list(self._dags)
