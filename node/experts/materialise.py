"""Weights of heads with accepted deltas: `record`'s blob + each delta in order, checked against
the result root the chain names, written to the blob store, and indexed.

    heads = Materialiser(blobs, data_dir / "heads.json")
    record = heads.materialise(name, state, view.get_accepted)   # MaterialiseRefused, DeltaBlobMissing
    heads.lookup(name, state.head, result_root)                   # the record, or None
    heads.collect_garbage(keep_heads, protect=chain_blob_ids)

A block's weights after delta i are `decode_block(blob_{i-1}) + decode_delta(delta_i)[block]`,
encoded canonically (`gpu.weights.encode_block`); their Merkle root over DEFAULT_SUBTILE_SIZE
subtiles must be the claim's `BlockChange.result_root` (as the contributor computed it,
`node.pol.contributor.compute_result_roots`), or nothing is stored and `MaterialiseRefused`
names the block and the claim: weights the chain does not name are never served.

The index (`heads.json`) maps (block name, head) to the materialised `TensorRecord`; it is local
bookkeeping, written atomically (temp file, fsync, rename), and every use cross-checks it: the
record's root against the chain's result root, the blob against its SHA-256 when loaded.
Blocking (decodes and hashes megabytes): call it from a worker thread.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from torch import Tensor

from chain import codec
from chain.blobs import BlobStore
from chain.errors import BlyanError, DecodingError, StoreError
from chain.heads import bump_version
from chain.payloads import DeltaClaim
from chain.records import AcceptedDelta, ExpertState
from chain.tensors import DEFAULT_SUBTILE_SIZE, DEFAULT_TILE_SIZE, TensorRecord
from gpu.delta import InvalidDelta, apply_delta, decode_delta
from gpu.tiles import compute_tensor_root
from gpu.weights import compute_tensor_infos, decode_block, encode_block

logger = logging.getLogger(__name__)

GetAccepted = Callable[[bytes], AcceptedDelta | None]
"""Claim hash -> the accepted delta the parameter chain holds at `delta_key(hash)`."""
INDEX_VERSION = 1
MAX_RECORD_BYTES = 64 * 1024


class MaterialiseError(BlyanError):
    """A head's weights cannot be built here."""

    def __init__(self, name: str, claim_hash: bytes, reason: str) -> None:
        self.name, self.claim_hash, self.reason = name, claim_hash, reason
        super().__init__(f"{name} at delta {claim_hash.hex()[:16]}: {reason}")


class MaterialiseRefused(MaterialiseError):
    """The delta does not give the weights the chain names (bad blob, wrong result root): the head
    is never served from it."""


class DeltaBlobMissing(MaterialiseError):
    """The delta blob is not in the local blob store (fetch it from peers, then retry)."""

    def __init__(self, name: str, claim_hash: bytes, claim: DeltaClaim) -> None:
        self.claim = claim
        super().__init__(name, claim_hash, f"delta blob {claim.delta_blob.hex()[:16]} is not here")


def get_result_root(claim: DeltaClaim, name: str) -> bytes | None:
    """The root the claim names for block `name`'s weights after it (None: it does not change it)."""
    for change in claim.blocks:
        if change.name == name:
            return change.result_root
    return None


def read_delta_blob(blobs: BlobStore, name: str, claim_hash: bytes, claim: DeltaClaim) -> bytes:
    """The claim's delta blob, checked against its size, SHA-256 and Merkle root."""
    if not blobs.has(claim.delta_blob):
        raise DeltaBlobMissing(name, claim_hash, claim)
    try:
        data = blobs.get(claim.delta_blob, verify=True)
    except StoreError as err:
        raise MaterialiseRefused(name, claim_hash, f"delta blob: {err}") from err
    if len(data) != claim.delta_size:
        raise MaterialiseRefused(name, claim_hash,
                                 f"delta blob has {len(data)} bytes, the claim says {claim.delta_size}")
    if compute_tensor_root(data, DEFAULT_SUBTILE_SIZE) != claim.delta_root:
        raise MaterialiseRefused(name, claim_hash, "delta blob does not match the claim's delta root")
    return data


def apply_block_delta(name: str, claim_hash: bytes, weights: dict[str, Tensor], blob: bytes) -> dict[str, Tensor]:
    """Block `name`'s weights + its part of a decoded delta (keys "<block>/<tensor>")."""
    try:
        decoded = decode_delta(blob)
    except InvalidDelta as err:
        raise MaterialiseRefused(name, claim_hash, f"delta does not decode: {err.reason}") from err
    prefix = name + "/"
    part = {k[len(prefix):]: v for k, v in decoded.items() if k.startswith(prefix)}
    try:
        return apply_delta(weights, part)
    except InvalidDelta as err:
        raise MaterialiseRefused(name, claim_hash, f"delta does not fit the block: {err.reason}") from err


class Materialiser:
    """Builds and indexes the weights of heads with deltas; one per node. Thread-safe: the index
    is behind a lock (builds run outside it; two builds of one head give the same bytes)."""

    def __init__(self, blobs: BlobStore, index_path: Path) -> None:
        self.blobs = blobs
        self.index_path = Path(index_path)
        self._lock = threading.RLock()
        self._records: dict[tuple[str, bytes], TensorRecord] = self._load_index()
        self.built = 0
        """Versions materialised by this process (tests, metrics)."""

    # --- reading ------------------------------------------------------------------------------

    def lookup(self, name: str, head: bytes, result_root: bytes) -> TensorRecord | None:
        """The materialised record of `name` at `head`, if it is here and has the chain's root."""
        with self._lock:
            record = self._records.get((name, head))
        if record is None or record.merkle_root != result_root or not self.blobs.has(record.blob_id):
            return None
        return record

    def heads(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return sorted(self._records)

    # --- building -----------------------------------------------------------------------------

    def materialise(self, name: str, state: ExpertState, get_accepted: GetAccepted) -> TensorRecord:
        """The record of `name`'s weights at `state.head`, built from the last version indexed
        here (or `state.record`) through each later delta in order."""
        if not state.deltas:
            return state.record
        start, record, weights = self._start(name, state, get_accepted)
        for i in range(start, len(state.deltas)):
            claim_hash = state.deltas[i]
            accepted = get_accepted(claim_hash)
            if accepted is None:
                raise MaterialiseRefused(name, claim_hash, "the chain holds no accepted delta of that hash")
            claim = accepted.claim
            root = get_result_root(claim, name)
            if root is None:
                raise MaterialiseRefused(name, claim_hash, "the claim does not change this block")
            blob = read_delta_blob(self.blobs, name, claim_hash, claim)
            weights = apply_block_delta(name, claim_hash, weights, blob)
            version = state.version if i == len(state.deltas) - 1 else bump_version(record.version, 2)
            record = self._store(name, claim_hash, state.record, weights, root, version)
        return record

    def _start(self, name: str, state: ExpertState,
               get_accepted: GetAccepted) -> tuple[int, TensorRecord, dict[str, Tensor]]:
        """Where to resume: (deltas already applied, their record, its weights)."""
        for i in range(len(state.deltas), 0, -1):
            accepted = get_accepted(state.deltas[i - 1])
            root = get_result_root(accepted.claim, name) if accepted is not None else None
            record = self.lookup(name, state.deltas[i - 1], root) if root is not None else None
            if record is not None:
                weights = self._read_weights(record, name, state.deltas[i - 1])
                if weights is not None:
                    return i, record, weights
        weights = self._read_weights(state.record, name, state.head)
        if weights is None:
            raise MaterialiseRefused(name, state.head,
                                     f"base blob {state.record.blob_id.hex()[:16]} is absent or corrupt")
        return 0, state.record, weights

    def _read_weights(self, record: TensorRecord, name: str, head: bytes) -> dict[str, Tensor] | None:
        try:
            return decode_block(self.blobs.get(record.blob_id, verify=True))
        except (StoreError, DecodingError) as err:
            logger.warning("%s: cannot read the weights at %s: %s", name, head.hex()[:16], err)
            return None

    def _store(self, name: str, claim_hash: bytes, base: TensorRecord, weights: dict[str, Tensor],
               result_root: bytes, version: str) -> TensorRecord:
        data = encode_block(weights)
        root = compute_tensor_root(data, DEFAULT_SUBTILE_SIZE)
        if root != result_root:
            raise MaterialiseRefused(name, claim_hash, f"the weights' root {root.hex()[:16]} is not the claim's "
                                     f"result root {result_root.hex()[:16]}")
        blob_id = self.blobs.put(data)
        record = replace(base, version=version, blob_id=blob_id, size=len(data), merkle_root=root,
                         tile_size=DEFAULT_TILE_SIZE, subtile_size=DEFAULT_SUBTILE_SIZE,
                         tensors=compute_tensor_infos(weights))
        with self._lock:
            self._records[(name, claim_hash)] = record
            self._save_index()
            self.built += 1
        logger.info("materialised %s %s at delta %s (blob %s)", name, version, claim_hash.hex()[:16],
                    blob_id.hex()[:16])
        return record

    # --- garbage ------------------------------------------------------------------------------

    def collect_garbage(self, keep_heads: Iterable[bytes], protect: Iterable[bytes] = ()) -> list[bytes]:
        """Forget the versions whose head is not in `keep_heads` and delete their blobs, except
        blobs a kept version or `protect` (the chain's genesis and snapshot blobs) names; the
        blob ids deleted."""
        keep = set(keep_heads)
        with self._lock:
            dropped = {k: r for k, r in self._records.items() if k[1] not in keep}
            if not dropped:
                return []
            for k in dropped:
                del self._records[k]
            self._save_index()
            kept = {r.blob_id for r in self._records.values()} | set(protect)
            deleted = sorted({r.blob_id for r in dropped.values()} - kept)
            for blob_id in deleted:
                self.blobs.delete(blob_id)
        logger.info("collected %d superseded versions, %d blobs deleted", len(dropped), len(deleted))
        return deleted

    # --- the index on disk --------------------------------------------------------------------

    def _load_index(self) -> dict[tuple[str, bytes], TensorRecord]:
        try:
            raw = json.loads(self.index_path.read_text())
            if raw.get("version") != INDEX_VERSION:
                raise ValueError(f"index version {raw.get('version')!r}")
            out = {}
            for entry in raw["heads"]:
                record = codec.decode(TensorRecord, bytes.fromhex(entry["record"]), max_size=MAX_RECORD_BYTES)
                if record.name != entry["name"]:
                    raise ValueError(f"entry of {entry['name']!r} holds the record of {record.name!r}")
                out[(entry["name"], bytes.fromhex(entry["head"]))] = record
            return out
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, DecodingError) as err:
            logger.warning("ignoring the materialised heads index %s (%s): heads are rebuilt", self.index_path, err)
            return {}

    def _save_index(self) -> None:
        entries = [{"name": name, "head": head.hex(), "record": codec.encode(rec).hex()}
                   for (name, head), rec in sorted(self._records.items())]
        text = json.dumps({"version": INDEX_VERSION, "heads": entries}, indent=1)
        try:
            self.index_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.index_path.parent)
            try:
                with os.fdopen(fd, "w") as out:
                    out.write(text)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self.index_path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as err:
            raise StoreError(f"cannot write {self.index_path}: {err}") from err
