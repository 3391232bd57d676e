"""A contributor's submission bundle: the signed training manifest and the blobs it names.

    BUNDLE/manifest.bin          the SignedManifest, canonical encoding (what is signed and hashed)
    BUNDLE/manifest.json         the same, for people (never read back)
    BUNDLE/blobs/<sha256 hex>    checkpoints and the compressed delta, content-addressed

A verifier reads only the blobs it needs (the checkpoints of the segments it replays, the delta),
each checked against the size, SHA-256 and Merkle root the manifest declares before use: a
truncated, oversized, missing or altered blob is refused with its reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from chain import codec
from chain.blobs import BlobStore
from chain.errors import DecodingError
from chain.learning import MAX_MANIFEST_BYTES, Checkpoint, SignedManifest, TrainingManifest, compute_manifest_hash
from chain.tensors import DEFAULT_SUBTILE_SIZE
from consensus.pol import PolRejection, Reason
from gpu.tiles import compute_tensor_root
from node.core.jsonable import to_json

MANIFEST_FILE = "manifest.bin"
MANIFEST_JSON = "manifest.json"
BLOBS_DIR = "blobs"


class Bundle:
    """A bundle on disk, read lazily."""

    def __init__(self, path: Path, signed: SignedManifest, blobs: BlobStore | None = None) -> None:
        self.path = Path(path)
        self.blobs = blobs
        """Where its blobs are, when not under `path` (a node's content-addressed store)."""
        self.signed = signed
        self.manifest: TrainingManifest = signed.manifest
        self.manifest_hash = compute_manifest_hash(signed.manifest)

    @classmethod
    def load(cls, path: Path) -> Bundle:
        """Read and decode the manifest; `PolRejection(BAD_MANIFEST)` if it is not one."""
        file = Path(path) / MANIFEST_FILE
        try:
            size = file.stat().st_size
            if size > MAX_MANIFEST_BYTES:
                raise PolRejection(Reason.BAD_MANIFEST, f"{file}: {size} bytes, at most {MAX_MANIFEST_BYTES}")
            signed = codec.decode(SignedManifest, file.read_bytes(), max_size=MAX_MANIFEST_BYTES)
        except OSError as err:
            raise PolRejection(Reason.BAD_MANIFEST, f"cannot read {file}: {err.strerror}") from err
        except DecodingError as err:
            raise PolRejection(Reason.BAD_MANIFEST, f"{file} is not a signed manifest: {err}") from err
        return cls(path, signed)

    def read_blob(self, blob_id: bytes, size: int, root: bytes, what: str) -> bytes:
        """The blob, checked against the declared size, SHA-256 and Merkle root."""
        file = self.blobs.path_of(blob_id) if self.blobs is not None else self.path / BLOBS_DIR / blob_id.hex()
        try:
            actual = file.stat().st_size
        except OSError as err:
            raise PolRejection(Reason.MISSING_BLOB, f"{what}: no blob {blob_id.hex()[:16]} in the bundle") from err
        if actual != size:
            kind = "truncated" if actual < size else "oversized"
            raise PolRejection(Reason.BAD_BLOB, f"{what}: {kind} blob ({actual} bytes, {size} declared)")
        if size == 0:
            raise PolRejection(Reason.BAD_BLOB, f"{what}: an empty blob")
        try:
            data = file.read_bytes()
        except OSError as err:
            raise PolRejection(Reason.MISSING_BLOB, f"{what}: cannot read {file}: {err.strerror}") from err
        if codec.sha256(data) != blob_id:
            raise PolRejection(Reason.BAD_BLOB, f"{what}: blob does not hash to its id")
        if compute_tensor_root(data, DEFAULT_SUBTILE_SIZE) != root:
            raise PolRejection(Reason.BAD_BLOB, f"{what}: blob does not match its Merkle root")
        return data

    def read_checkpoint(self, index: int) -> bytes:
        c: Checkpoint = self.manifest.checkpoints[index]
        return self.read_blob(c.blob_id, c.size, c.root, f"checkpoint {index} (step {c.step})")

    def read_delta(self) -> bytes:
        d = self.manifest.delta
        return self.read_blob(d.blob_id, d.compressed_bytes, d.root, "delta")

    def read_residual(self) -> bytes | None:
        d = self.manifest.delta
        if d.residual_blob == bytes(32):
            return None
        return self.read_blob(d.residual_blob, d.residual_size, d.residual_root, "residual")

    def read_all(self) -> list[bytes]:
        """Every blob the manifest names (checked), delta first."""
        out = [self.read_delta()]
        residual = self.read_residual()
        if residual is not None:
            out.append(residual)
        return out + [self.read_checkpoint(i) for i in range(len(self.manifest.checkpoints))]


def write_bundle(path: Path, signed: SignedManifest, blobs: list[bytes]) -> Path:
    """Write a bundle directory (created, or refilled if it holds an older bundle)."""
    path = Path(path)
    (path / BLOBS_DIR).mkdir(parents=True, exist_ok=True)
    for data in blobs:
        _write_atomic(path / BLOBS_DIR / codec.sha256(data).hex(), data)
    _write_atomic(path / MANIFEST_JSON, (json.dumps(describe_manifest(signed.manifest), indent=2) + "\n").encode())
    _write_atomic(path / MANIFEST_FILE, codec.encode(signed))  # last: a bundle is whole once it has one
    return path


def describe_manifest(m: TrainingManifest) -> dict:
    """The manifest as JSON (bytes in hex), with its hash."""
    out = to_json(m)
    out["manifest_hash"] = compute_manifest_hash(m).hex()
    return out


def _write_atomic(file: Path, data: bytes) -> None:
    tmp = file.with_name(file.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, file)
