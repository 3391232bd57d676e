"""The genesis corpus: CPython standard-library sources, on every machine, by content id.

Selection is a pure function of the path list and `CorpusConfig`: every `.py` file under the
stdlib root outside test, site-packages and cache directories, UTF-8, not empty, under the
per-file cap and not a copy of a file already taken, taken in the order of a hash of its path until
the byte cap is reached (a spread over the whole library rather than its alphabetical head), then
listed by path. A hash of the path alone puts a file in the held-out validation set, so the split
does not move when a file's contents change from one Python release to the next.

Each file is one genesis dataset, named by the CIDv1 of its exact bytes. Another Python patch
release may hold other bytes for some paths: a manifest records the CIDs it was built from, and
`read_corpus_file` refuses bytes that do not match (`CorpusMismatch`).
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from chain import crypto
from chain.errors import BlyanError
from chain.pact import GenesisDataset
from chain.params import TIER_GOLD

ROLE_TRAIN = "train"
ROLE_VALIDATION = "validation"
CORPUS_FORMAT = "text/x-python"
CORPUS_LICENSE = "PSF-2.0"
EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})


class CorpusMismatch(BlyanError):
    """A corpus file on this machine is missing or holds other bytes than its CID names."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"corpus file {path}: {reason}")


@dataclass(frozen=True, slots=True)
class CorpusConfig:
    max_bytes: int = 4_000_000  # stop adding files past this total
    max_file_bytes: int = 200_000  # skip larger files (generated tables, data dumps)
    validation_percent: int = 10  # share of paths held out for validation


@dataclass(frozen=True, slots=True)
class CorpusFile:
    path: str
    """POSIX path relative to the stdlib root, e.g. "json/decoder.py"."""
    cid: str
    """CIDv1 (raw, sha2-256) of the file's bytes."""
    size: int
    """Bytes."""
    role: str
    """ROLE_TRAIN or ROLE_VALIDATION."""


def get_stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def list_candidates(root: Path) -> list[str]:
    """Relative POSIX paths of the stdlib's `.py` files outside excluded directories, sorted."""
    out = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if EXCLUDED_DIRS.isdisjoint(rel.parts[:-1]) and path.is_file():
            out.append(rel.as_posix())
    return sorted(out)


def compute_path_hash(label: str, path: str) -> int:
    return int.from_bytes(hashlib.sha256(f"blyan-corpus/{label}/{path}".encode()).digest()[:8], "big")


def is_validation(path: str, cfg: CorpusConfig) -> bool:
    """Whether `path` is held out: a function of the path alone."""
    return compute_path_hash("split", path) % 100 < cfg.validation_percent


def is_usable(data: bytes, cfg: CorpusConfig) -> bool:
    if not 0 < len(data) <= cfg.max_file_bytes:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def select_corpus(root: Path, cfg: CorpusConfig = CorpusConfig()) -> tuple[CorpusFile, ...]:
    """The corpus files under `root`, sorted by path."""
    chosen = []
    cids: set[str] = set()
    total = 0
    for path in sorted(list_candidates(root), key=lambda p: compute_path_hash("order", p)):
        data = (root / path).read_bytes()
        cid = crypto.cid_raw(data)
        if not is_usable(data, cfg) or total + len(data) > cfg.max_bytes or cid in cids:
            continue  # a file twice (two identical `__init__.py`) would be one dataset twice
        total += len(data)
        cids.add(cid)
        role = ROLE_VALIDATION if is_validation(path, cfg) else ROLE_TRAIN
        chosen.append(CorpusFile(path, cid, len(data), role))
    return tuple(sorted(chosen, key=lambda f: f.path))


def read_corpus_file(root: Path, entry: CorpusFile) -> bytes:
    """The bytes of `entry` under `root`; `CorpusMismatch` if absent or other bytes."""
    try:
        data = (Path(root) / entry.path).read_bytes()
    except OSError as err:
        raise CorpusMismatch(entry.path, f"cannot read: {err.strerror}") from err
    if crypto.cid_raw(data) != entry.cid:
        raise CorpusMismatch(entry.path, "bytes differ from the recorded CID")
    return data


def get_texts(root: Path, entries: Sequence[CorpusFile], role: str) -> list[str]:
    """The texts of the entries with `role`, in entry order, checked against their CIDs."""
    return [read_corpus_file(root, e).decode("utf-8") for e in entries if e.role == role]


def make_dataset(entry: CorpusFile) -> GenesisDataset:
    """The genesis dataset of one corpus file."""
    return GenesisDataset(
        cid=entry.cid,
        blob_id=crypto.digest_from_cid(entry.cid),
        size=entry.size,
        format=CORPUS_FORMAT,
        license=CORPUS_LICENSE,
        tier=TIER_GOLD,
        role=entry.role,
    )


def encode_entries(entries: Sequence[CorpusFile]) -> list[dict]:
    return [{"path": e.path, "cid": e.cid, "size": e.size, "role": e.role} for e in entries]


def decode_entries(items: Sequence[dict]) -> tuple[CorpusFile, ...]:
    return tuple(CorpusFile(d["path"], d["cid"], int(d["size"]), d["role"]) for d in items)
