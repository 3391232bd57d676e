"""Tiles over the network: serve verified tiles of local blobs, fetch and verify peers' tiles,
and repair a local blob from peers.

Protocol `/blyan/<network>/req/tiles/1`: a `TileRequest(blob_id, tile_index)` is answered with a
`TileResponse(data, proof)`; the requester checks the tile against the `TensorRecord` it got from
the chain, so a peer is trusted for nothing. A node never serves a tile it cannot prove: before
answering, `serve_tile` hashes the tile it read from disk against the good blob's subtile
hashes (which `BlobLoader` holds once the blob has verified), and refuses with `TileUnavailable`
when they differ (the requester sees a `RemoteError`, and tries another peer).

Serving and repairing read and hash megabytes: they run off the event loop through `offload`
(`trio.to_thread.run_sync` with a limiter by default; tests under `MockClock` pass
`run_inline`, since a thread's wall time is invisible to an autojumping clock).

    service = TileService(network_id, store, loader, records)
    service.register(net)                                   # serve
    await service.repair_from_peers(net, peers, record)     # fetch what is corrupt or missing
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import trio

from chain import codec
from chain.blobs import BlobStore
from chain.codec import U32, Bytes, Hash32, wire
from chain.errors import BlyanError, CorruptBlob, DecodingError
from chain.tensors import TensorRecord
from gpu.loader import BlobLoader, repair_tiles
from gpu.tiles import (
    CorruptTile,
    TileProof,
    compute_subtile_hashes,
    compute_tile_count,
    compute_tile_proof_from_hashes,
    compute_tile_span,
    verify_record_tile,
)
from p2p.network import Network, PeerId, RequestFailed, protocol_name

logger = logging.getLogger(__name__)

T = TypeVar("T")
Offload = Callable[[Callable[[], T]], Awaitable[T]]

PROTOCOL_TILES = "tiles"
MAX_TILE_BYTES = 8 * 1024 * 1024
"""Largest tile on the wire; a record with larger tiles cannot be served by this protocol."""
MAX_TILE_REQUEST_BYTES = 64
MAX_TILE_RESPONSE_BYTES = MAX_TILE_BYTES + 1024 * 1024
"""A tile and its proof (at most 1024 subtile proofs of a few hundred bytes each)."""
DEFAULT_TILE_TIMEOUT_S = 30.0
TILE_PENALTY = 5.0
"""Score a peer loses for a tile that does not verify or a response that does not decode."""


@wire
class TileRequest:
    """Ask a peer for one tile of a blob."""

    blob_id: Hash32
    """The blob: SHA-256 of the whole file, as in its TensorRecord."""
    tile_index: U32
    """Which tile."""


@wire
class TileResponse:
    """One tile and the proof that it belongs to the blob's Merkle root."""

    data: Bytes(MAX_TILE_BYTES)
    """The tile's bytes."""
    proof: TileProof
    """One Merkle proof per subtile of the tile."""


class TileUnavailable(BlyanError):
    """This node cannot serve the tile: unknown blob, tile out of range, or local corruption."""

    def __init__(self, blob_id: bytes, tile_index: int, reason: str) -> None:
        self.blob_id = blob_id
        self.tile_index = tile_index
        self.reason = reason
        super().__init__(f"tile {tile_index} of blob {blob_id.hex()[:16]}: {reason}")


class RepairFailed(BlyanError):
    """No peer supplied a good copy of some tiles."""

    def __init__(self, name: str, tiles: list[int]) -> None:
        self.name = name
        self.tiles = tiles
        super().__init__(f"{name}: no peer served good tiles {tiles}")


def tile_protocol(network_id: str) -> str:
    return protocol_name(network_id, PROTOCOL_TILES)


async def run_inline(fn: Callable[[], T]) -> T:
    """An `Offload` that runs `fn` on the event loop (tests under MockClock)."""
    return fn()


def make_thread_offload(limiter: trio.CapacityLimiter | None = None) -> Offload:
    """An `Offload` through `trio.to_thread.run_sync`, at most `limiter` threads at once."""
    limiter = limiter or trio.CapacityLimiter(2)

    async def offload(fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=limiter)

    return offload


# --- serving --------------------------------------------------------------------------------


def serve_tile(
    blob_store: BlobStore,
    records: Mapping[bytes, TensorRecord],
    request: TileRequest,
    loader: BlobLoader | None = None,
) -> TileResponse:
    """The tile and its proof, read from the store and checked; `TileUnavailable` otherwise.

    Blocking (reads and hashes one tile; the whole blob once, the first time): run it off the
    event loop. `loader` holds the good subtile hashes between calls (a fresh one re-hashes)."""
    blob_id, index = request.blob_id, request.tile_index
    record = records.get(blob_id)
    if record is None:
        raise TileUnavailable(blob_id, index, "unknown blob")
    count = compute_tile_count(record.size, record.tile_size)
    if not 0 <= index < count:
        raise TileUnavailable(blob_id, index, f"the blob has {count} tiles")
    if record.tile_size > MAX_TILE_BYTES:
        raise TileUnavailable(blob_id, index, f"{record.tile_size}-byte tiles exceed the wire cap")
    path = blob_store.path_of(blob_id)
    loader = loader or BlobLoader()
    try:
        hashes = loader.get_subtile_hashes(path, record)
        data = _read_tile(path, record, index)
    except FileNotFoundError as err:
        raise TileUnavailable(blob_id, index, "blob not stored here") from err
    except CorruptBlob as err:
        raise TileUnavailable(blob_id, index, f"local copy is corrupt ({err})") from err
    first = index * (record.tile_size // record.subtile_size)
    mine = compute_subtile_hashes(data, record.subtile_size)
    if mine != hashes[first : first + len(mine)]:
        loader.forget(path)  # the next load hashes it again and names the tile
        logger.warning("not serving tile %d of %s: the local copy is corrupt", index, record.name)
        raise TileUnavailable(blob_id, index, "local copy is corrupt")
    proof = compute_tile_proof_from_hashes(hashes, index, record.tile_size, record.subtile_size)
    return TileResponse(data=data, proof=proof)


def _read_tile(path: Path, record: TensorRecord, index: int) -> bytes:
    start, end = compute_tile_span(record.size, index, record.tile_size)
    with open(path, "rb") as src:
        src.seek(start)
        data = src.read(end - start)
    if len(data) != end - start:
        raise CorruptBlob(f"{path} is shorter than {record.size} bytes")
    return data


# --- fetching -------------------------------------------------------------------------------


async def fetch_tile(
    net: Network,
    peer: PeerId,
    record: TensorRecord,
    index: int,
    *,
    network_id: str,
    timeout: float = DEFAULT_TILE_TIMEOUT_S,
) -> TileResponse:
    """Tile `index` of `record` from `peer`, verified against the record's root.

    Raises `RequestFailed` (no usable answer) or `CorruptTile` / `DecodingError` (a bad one:
    the peer is penalised)."""
    request = codec.encode(TileRequest(blob_id=record.blob_id, tile_index=index))
    raw = await net.request(peer, tile_protocol(network_id), request, timeout,
                            max_response_bytes=MAX_TILE_RESPONSE_BYTES)
    try:
        response = codec.decode(TileResponse, raw, max_size=MAX_TILE_RESPONSE_BYTES)
        verify_record_tile(record, index, response.data, response.proof)
    except (DecodingError, CorruptTile) as err:
        net.penalize(peer, f"bad tile {index} of {record.name}: {err}", TILE_PENALTY)
        raise
    return response


class TileService:
    """Serves this node's tiles on one network and repairs its blobs from peers."""

    def __init__(
        self,
        network_id: str,
        blob_store: BlobStore,
        loader: BlobLoader,
        records: Mapping[bytes, TensorRecord],
        offload: Offload | None = None,
    ) -> None:
        self.network_id = network_id
        self.blob_store = blob_store
        self.loader = loader
        self.records = records
        """Blob id -> record of every blob this node serves (a live view: updates are seen)."""
        self.offload = offload or make_thread_offload()

    def register(self, net: Network) -> None:
        """Answer tile requests on `net`."""
        net.set_request_handler(tile_protocol(self.network_id), self.on_tile_request,
                                MAX_TILE_REQUEST_BYTES)

    async def on_tile_request(self, peer: PeerId, data: bytes) -> bytes:
        request = codec.decode(TileRequest, data, max_size=MAX_TILE_REQUEST_BYTES)
        response = await self.offload(
            lambda: serve_tile(self.blob_store, self.records, request, self.loader))
        return codec.encode(response)

    async def repair_from_peers(
        self, net: Network, peers: Sequence[PeerId], record: TensorRecord,
        timeout: float = DEFAULT_TILE_TIMEOUT_S,
    ) -> list[int]:
        """Find the blob's bad or missing tiles, fetch each from the first peer that serves a
        good one, write them in; the tiles repaired ([] when the blob was good).

        Raises `RepairFailed` naming the tiles no peer could supply (good ones are written)."""
        path = self.blob_store.path_of(record.blob_id)
        bad = await self.offload(lambda: self.loader.compute_corrupt_tiles(path, record))
        fetched: dict[int, tuple[bytes, TileProof]] = {}
        for index in bad:
            for peer in peers:
                try:
                    response = await fetch_tile(net, peer, record, index,
                                                network_id=self.network_id, timeout=timeout)
                except (RequestFailed, CorruptTile, DecodingError) as err:
                    logger.info("tile %d of %s from %s: %s", index, record.name, peer, err)
                    continue
                fetched[index] = (response.data, response.proof)
                break
        if fetched:
            await self.offload(lambda: repair_tiles(path, record, fetched))
        missing = [i for i in bad if i not in fetched]
        if missing:
            raise RepairFailed(record.name, missing)
        return bad
