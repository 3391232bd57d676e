"""The sync service of a running node: heights, the handshake, blocks and snapshots for peers,
and catch-up for itself.

    sync = SyncService(engine, SyncTiming(), rng=...)
    await nursery.start(sync.run)

It registers the `handshake`, `blocks` and fast-sync protocols, asks each newly connected peer
for its handshake (another genesis is banned) and asks every connected peer again now and then
(its heights: the status poll), keeps state snapshots of finalized blocks (from the engine's
feed) and catches up whenever a peer is ahead (a handshake, or the engine's `PeerAhead` events).

Heights go between connected peers only, never gossiped: only a connected peer can serve blocks,
and a status gossiped to every node made each node handle N messages per interval (70 % of the
copies of a 1,000-node simulation; docs/SCALING.md). Each interval asks a few peers at random
(`SyncTiming.status_fanout`), so the cost does not grow with the number of connections either.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable

import trio

from chain import codec
from chain.codec import decode
from node.core.feed import Committed, PeerAhead
from node.core.ports import NodeHandle
from node.sync.blocks import compute_blocks_response
from node.sync.catchup import CatchUp
from node.sync.config import SyncTiming
from node.sync.handshake import check_peer, compute_handshake
from node.sync.snapshots import SnapshotServer
from node.sync.wire import (
    PROTOCOL_BLOCKS,
    PROTOCOL_BUCKET_HASHES,
    PROTOCOL_BUCKETS,
    PROTOCOL_HANDSHAKE,
    PROTOCOL_SNAPSHOTS,
    PROTOCOL_TRUST_PATH,
    BlocksRequest,
)
from p2p.network import PeerId, protocol_name

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4096
FEED_QUEUE = 4096
"""Engine events waiting for this service; beyond, they are dropped (the status poll repeats)."""


class SyncService:
    """Everything that moves finalized blocks and snapshots between peers."""

    def __init__(self, node: NodeHandle, timing: SyncTiming | None = None, *,
                 rng: random.Random | None = None, name: str = "") -> None:
        self.node = node
        self.timing = timing or SyncTiming()
        self.rng = rng or random.Random(0)
        self.name = name or node.network.local_id
        self.snapshots = SnapshotServer(node.store, node.get_validator_set, every=self.timing.snapshot_every)
        self.catchup = CatchUp(node, self._spawn, batch=self.timing.batch,
                               timeout_s=self.timing.request_timeout_s, name=self.name)
        self._feed = node.feed.subscribe("sync", (Committed, PeerAhead), maxlen=FEED_QUEUE)
        self._nursery: trio.Nursery | None = None

    # --- views for the API ------------------------------------------------------------------

    @property
    def syncing(self) -> bool:
        return self.catchup.syncing

    def sync_progress(self) -> dict[str, dict[str, int | float | None]]:
        return self.catchup.sync_progress()

    # --- running ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve peers and catch up until cancelled."""
        self._register()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._status_loop)
                nursery.start_soon(self._feed_loop)
                task_status.started()
        finally:
            self.node.feed.unsubscribe(self._feed)

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    def _register(self) -> None:
        node = self.node
        net, network_id = node.network, node.network_id
        net.set_request_handler(protocol_name(network_id, PROTOCOL_BLOCKS), self.serve_blocks, MAX_REQUEST_BYTES)
        net.set_request_handler(protocol_name(network_id, PROTOCOL_HANDSHAKE), self.serve_handshake,
                                MAX_REQUEST_BYTES)
        for name, handler in ((PROTOCOL_SNAPSHOTS, self.serve_snapshots),
                              (PROTOCOL_TRUST_PATH, self.snapshots.serve_trust_path),
                              (PROTOCOL_BUCKET_HASHES, self.snapshots.serve_bucket_hashes),
                              (PROTOCOL_BUCKETS, self.snapshots.serve_buckets)):
            net.set_request_handler(protocol_name(network_id, name), handler, MAX_REQUEST_BYTES)
        net.on_peer_event(self._on_peer_event)

    async def _feed_loop(self) -> None:
        async for event in self._feed:
            self._on_event(event)

    def _on_event(self, event: Committed | PeerAhead) -> None:
        if isinstance(event, Committed):
            self.snapshots.on_commit(event.chain_id, event.state)
        else:
            self.catchup.want(event.chain_id, event.peer, event.height)

    def _take_feed(self) -> None:
        """Events not handled yet (the feed task may be behind): before serving snapshots."""
        for event in self._feed.drain():
            self._on_event(event)

    # --- peers ------------------------------------------------------------------------------

    def _on_peer_event(self, peer: PeerId, connected: bool) -> None:
        if connected:
            self._spawn(self._check_peer, peer)

    async def _check_peer(self, peer: PeerId, attempts: int = 4) -> None:
        heads = await check_peer(self.node, peer, self.timing.request_timeout_s, attempts)
        if heads is not None:
            self.catchup.on_peer_heads(peer, heads)

    async def serve_handshake(self, peer: PeerId, data: bytes) -> bytes:
        return codec.encode(compute_handshake(self.node.store))

    # --- heights ----------------------------------------------------------------------------

    async def _status_loop(self) -> None:
        """Every interval (jittered), the heights of up to `status_fanout` connected peers
        drawn at random, all at once: the handshake again, so a peer that changed its genesis
        is refused too. Drawn, not all: a node with many peers needs to hear of one ahead of it,
        not of every one, and the cost stays `status_fanout` requests per interval."""
        while True:
            jitter = 1.0 + 0.2 * self.rng.random()
            await trio.sleep(self.timing.status_interval_s * jitter)
            peers = sorted(self.node.network.peers())
            if len(peers) > self.timing.status_fanout:
                peers = self.rng.sample(peers, self.timing.status_fanout)
            async with trio.open_nursery() as nursery:
                for peer in peers:
                    nursery.start_soon(self._check_peer, peer, 1)

    # --- serving ----------------------------------------------------------------------------

    async def serve_blocks(self, peer: PeerId, data: bytes) -> bytes:
        req = decode(BlocksRequest, data, max_size=MAX_REQUEST_BYTES)
        return codec.encode(compute_blocks_response(self.node.store, req))

    async def serve_snapshots(self, peer: PeerId, data: bytes) -> bytes:
        self._take_feed()
        return await self.snapshots.serve_snapshots(peer, data)
