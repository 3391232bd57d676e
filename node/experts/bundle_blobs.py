"""The blobs of a training bundle over the tile protocol: checkpoints, the compressed delta and the
carried residual, each named by the (on-chain) manifest with its size, SHA-256 and Merkle root.

A bundle blob is not a tensor block, but the tile protocol needs only a record's geometry and
root: `blob_record` gives it a synthetic `TensorRecord` (kind `KIND_BUNDLE_BLOB`, never on the
chain; one U8 tensor of the blob's size; the default tile and subtile sizes, which are the ones
the manifest's roots are computed with), so `serve_tile` proves its tiles and `fetch_tile`
verifies them like any other.

    for ref in bundle_refs(manifest):
        await fetch_blob(tiles, net, peers, ref, blobs)     # BlobUnavailable if no peer has it
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from chain.blobs import BlobStore
from chain.errors import BlyanError, StoreError
from chain.learning import TrainingManifest, compute_manifest_hash
from chain.tensors import DEFAULT_SUBTILE_SIZE, DEFAULT_TILE_SIZE, TensorInfo, TensorRecord
from node.experts.tiles import DEFAULT_TILE_TIMEOUT_S, RepairFailed, TileService
from p2p.network import Network, PeerId

logger = logging.getLogger(__name__)

KIND_BUNDLE_BLOB = 255
"""Kind of the synthetic record of a bundle blob: never a chain kind (`chain.tensors.TENSOR_KINDS`)."""
BUNDLE_BLOB_VERSION = "0.0.0"
DEFAULT_FETCH_DEADLINE_S = 300.0
"""How long `fetch_blob` may take for one blob, all tiles and peers together."""
ZERO = bytes(32)


class BlobUnavailable(BlyanError):
    """No peer supplied a good copy of a bundle blob (within the deadline)."""

    def __init__(self, ref: BlobRef, reason: str) -> None:
        self.ref, self.reason = ref, reason
        super().__init__(f"blob {ref.name} ({ref.blob_id.hex()[:16]}, {ref.size} bytes): {reason}")


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A blob a manifest names."""

    blob_id: bytes
    """SHA-256 of its bytes."""
    size: int
    """Its size in bytes."""
    root: bytes
    """Merkle root over its subtiles (DEFAULT_SUBTILE_SIZE)."""
    name: str
    """What it is, for logs and errors: "bundle <manifest>/delta", ".../checkpoint-<step>"."""


def bundle_refs(manifest: TrainingManifest) -> list[BlobRef]:
    """The blobs of a manifest's bundle: the delta, the carried residual (if any), every checkpoint;
    each blob once."""
    prefix = f"bundle {compute_manifest_hash(manifest).hex()[:16]}"
    d = manifest.delta
    refs = [BlobRef(d.blob_id, d.compressed_bytes, d.root, f"{prefix}/delta")]
    if d.residual_blob != ZERO:
        refs.append(BlobRef(d.residual_blob, d.residual_size, d.residual_root, f"{prefix}/residual"))
    refs += [BlobRef(c.blob_id, c.size, c.root, f"{prefix}/checkpoint-{c.step}") for c in manifest.checkpoints]
    seen: set[bytes] = set()
    out = []
    for ref in refs:
        if ref.blob_id not in seen:
            seen.add(ref.blob_id)
            out.append(ref)
    return out


def blob_record(ref: BlobRef) -> TensorRecord:
    """The synthetic record the tile protocol serves and verifies a bundle blob by."""
    return TensorRecord(
        name=ref.name[:64], kind=KIND_BUNDLE_BLOB, version=BUNDLE_BLOB_VERSION, blob_id=ref.blob_id,
        size=ref.size, merkle_root=ref.root, tile_size=DEFAULT_TILE_SIZE, subtile_size=DEFAULT_SUBTILE_SIZE,
        tensors=(TensorInfo("bytes", "U8", (ref.size,)),),
    )


def is_bundle_record(record: TensorRecord) -> bool:
    return record.kind == KIND_BUNDLE_BLOB


async def fetch_blob(
    tiles: TileService, net: Network, peers: Sequence[PeerId], ref: BlobRef, blobs: BlobStore, *,
    deadline_s: float = DEFAULT_FETCH_DEADLINE_S, tile_timeout_s: float = DEFAULT_TILE_TIMEOUT_S,
) -> None:
    """Bring `ref` into `blobs` (the store `tiles` writes into) from `peers`, tile by tile, each tile
    verified against `ref.root`, then the whole blob against `ref.blob_id`. A no-op when a good copy
    is here; `BlobUnavailable` (nothing left behind) when no peer has it within `deadline_s`."""
    await _fetch(tiles, net, peers, ref, blob_record(ref), blobs, deadline_s, tile_timeout_s)


async def fetch_record_blob(
    tiles: TileService, net: Network, peers: Sequence[PeerId], record: TensorRecord, blobs: BlobStore, *,
    deadline_s: float = DEFAULT_FETCH_DEADLINE_S, tile_timeout_s: float = DEFAULT_TILE_TIMEOUT_S,
) -> None:
    """`fetch_blob` for a chain record (an expert's blob): its tiles checked against the record's
    own geometry and root."""
    ref = BlobRef(record.blob_id, record.size, record.merkle_root, record.name)
    await _fetch(tiles, net, peers, ref, record, blobs, deadline_s, tile_timeout_s)


async def _fetch(tiles: TileService, net: Network, peers: Sequence[PeerId], ref: BlobRef, record: TensorRecord,
                 blobs: BlobStore, deadline_s: float, tile_timeout_s: float) -> None:
    if tiles.blob_store.root != blobs.root:
        raise ValueError("fetch_blob writes through the tile service: give it the service's blob store")
    if await _is_good(tiles, blobs, ref):
        return
    if ref.size <= 0:
        raise BlobUnavailable(ref, "an empty blob cannot be fetched")
    if not peers:
        raise BlobUnavailable(ref, "no peer to fetch it from")
    existed = blobs.has(ref.blob_id)
    try:
        with trio.fail_after(deadline_s):
            await tiles.repair_from_peers(net, peers, record, tile_timeout_s)
    except RepairFailed as err:
        _drop_partial(blobs, ref, existed)
        raise BlobUnavailable(ref, f"no peer of {len(peers)} served tiles {err.tiles}") from err
    except trio.TooSlowError as err:
        _drop_partial(blobs, ref, existed)
        raise BlobUnavailable(ref, f"not fetched within {deadline_s:g} s") from err
    if not await _is_good(tiles, blobs, ref):  # every tile proved, so only a root collision gets here
        _drop_partial(blobs, ref, existed=False)
        raise BlobUnavailable(ref, "the fetched blob does not hash to its id")
    logger.info("fetched %s (%d bytes) from peers", ref.name, ref.size)


async def _is_good(tiles: TileService, blobs: BlobStore, ref: BlobRef) -> bool:
    if not blobs.has(ref.blob_id):
        return False
    try:
        await tiles.offload(lambda: blobs.verify(ref.blob_id))
    except StoreError:
        return False
    return True


def _drop_partial(blobs: BlobStore, ref: BlobRef, existed: bool) -> None:
    """A failed fetch leaves no partial file behind (it would pass `BlobStore.has`)."""
    if not existed:
        blobs.delete(ref.blob_id)
