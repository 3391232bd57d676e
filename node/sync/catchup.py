"""Catch-up: a node that lags fetches finalized blocks by range from a peer that is ahead.

A node learns that it lags three ways: a peer's status gossip, the heads in a peer's handshake,
and consensus messages of a height above ours (the engine reports those on its feed as
`PeerAhead`). For each chain one fetch runs at a time: a range from our height + 1, handed to
the node (`NodeHandle.import_blocks`: each block is checked against its commit certificate and
the chain's rules, and a peer that sent a bad one is penalised), then the next range, until the
chain reaches the height the peer reported. A block whose deciding validator set is not known
yet (the reward chain is behind) starts a reward-chain catch-up first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from chain import codec
from chain.errors import DecodingError
from chain.types import CHAIN_IDS, CHAIN_NAMES, CHAIN_REWARD
from node.core.ports import NodeHandle
from node.core.progress import RateMeter, compute_eta, format_progress
from node.sync.blocks import MAX_BLOCKS_RESPONSE_BYTES
from node.sync.wire import PROTOCOL_BLOCKS, BlocksRequest, BlocksResponse, ChainHead
from p2p.network import PeerId, RequestFailed, protocol_name

logger = logging.getLogger(__name__)

Spawn = Callable[..., None]
"""Start a task in the owner's nursery: `spawn(async_fn, *args)`."""


class CatchUp:
    """Per chain: the highest height peers reported, and at most one fetch in flight."""

    def __init__(self, node: NodeHandle, spawn: Spawn, *, batch: int = 32, timeout_s: float = 2.0,
                 name: str = "") -> None:
        self.node = node
        self.spawn = spawn
        self.batch = batch
        """Blocks asked for per request."""
        self.timeout_s = timeout_s
        """Deadline of one request."""
        self.name = name or node.network.local_id
        self.targets: dict[int, int] = {}
        """Chain -> highest finalized height a peer reported (status or handshake)."""
        self.meters = {c: RateMeter() for c in CHAIN_IDS}
        """Heights reached by catch-up over time: blocks/s for logs and `blyan status`."""
        self._fetching: set[int] = set()

    @property
    def syncing(self) -> bool:
        """Whether a peer told us of a finalized height above ours that we have not reached."""
        store = self.node.store
        return any(store.height(c) < target for c, target in self.targets.items())

    def note_peer_height(self, chain_id: int, height: int) -> None:
        if height > self.targets.get(chain_id, 0):
            self.targets[chain_id] = height

    def on_peer_heads(self, peer: PeerId, heads: tuple[ChainHead, ...]) -> None:
        """A peer's finalized heights (status gossip or handshake): note them, catch up."""
        for head in heads:
            if head.chain_id in CHAIN_IDS and head.height > self.node.store.height(head.chain_id):
                self.note_peer_height(head.chain_id, head.height)
                self.want(head.chain_id, peer, head.height)

    def want(self, chain_id: int, peer: PeerId, target: int) -> None:
        """Fetch `chain_id` up to `target` from `peer`, unless a fetch of it is in flight."""
        height = self.node.store.height(chain_id)
        if target > height and chain_id not in self._fetching:
            self._fetching.add(chain_id)
            meter = self.meters[chain_id]
            if meter.rate is None:
                meter.add(trio.current_time(), height)
            self.spawn(self._fetch, chain_id, peer, target)

    async def _fetch(self, chain_id: int, peer: PeerId, target: int) -> None:
        node = self.node
        start = node.store.height(chain_id) + 1
        req = BlocksRequest(chain_id, start, min(self.batch, target - start + 1))
        try:
            data = await node.network.request(peer, protocol_name(node.network_id, PROTOCOL_BLOCKS),
                                              codec.encode(req), self.timeout_s)
            resp = codec.decode(BlocksResponse, data, max_size=MAX_BLOCKS_RESPONSE_BYTES)
        except (RequestFailed, DecodingError) as err:
            logger.info("%s/%s: sync from %s failed: %s", self.name, CHAIN_NAMES[chain_id], peer, err)
            self._fetching.discard(chain_id)
            return
        report = await node.import_blocks(chain_id, peer, resp.blocks, resp.last_commit, target)
        self._fetching.discard(chain_id)
        if report.needs_reward_height and chain_id != CHAIN_REWARD:
            self.want(CHAIN_REWARD, peer, report.needs_reward_height)
        if report.imported:
            meter = self.meters[chain_id]
            meter.add(trio.current_time(), report.height)
            logger.info("%s/%s: sync %s from %s", self.name, CHAIN_NAMES[chain_id],
                        format_progress(report.height, target, meter.rate), peer)
            if report.height < target:
                self.want(chain_id, peer, target)

    def sync_progress(self) -> dict[str, dict[str, int | float | None]]:
        """Per chain: our height, the highest height peers reported, blocks/s and seconds left."""
        progress = {}
        for c, t in self.targets.items():
            height = self.node.store.height(c)
            target = max(height, t)
            rate = self.meters[c].rate if height < target else None
            eta = compute_eta(height, target, rate)
            progress[CHAIN_NAMES[c]] = {"height": height, "target": target,
                                        "blocks_per_s": None if rate is None else round(rate, 1),
                                        "eta_s": None if eta is None else round(eta, 1)}
        return progress

