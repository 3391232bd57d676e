"""Serving fast sync: pinned state snapshots, the trust path and state buckets.

A `State` is immutable and copy-on-write, so holding a snapshot is holding a reference: it costs
only the buckets that later blocks replaced. The server keeps the states at multiples of
`every` (the last `keep` of them per chain) and pins the head of each chain whenever it makes an
offer (the last `keep_offered`), so a peer that got an offer can fetch it while the chain moves on.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

from chain import codec
from chain.state import N_BUCKETS, State
from chain.store import ChainStore
from chain.types import CHAIN_IDS, CHAIN_REWARD, ValidatorSet
from node.sync.blocks import compute_blocks_response
from node.sync.handshake import compute_handshake
from node.sync.wire import (
    MAX_BUCKET_RESPONSE_BYTES,
    MAX_BUCKETS_PER_RESPONSE,
    MAX_TRUST_STEPS,
    PROTOCOL_BLOCKS,
    PROTOCOL_BUCKET_HASHES,
    PROTOCOL_BUCKETS,
    PROTOCOL_HANDSHAKE,
    PROTOCOL_SNAPSHOTS,
    PROTOCOL_TRUST_PATH,
    BlocksRequest,
    Bucket,
    BucketHashesRequest,
    BucketHashesResponse,
    BucketsRequest,
    BucketsResponse,
    SnapshotOffer,
    SnapshotsRequest,
    SnapshotsResponse,
    StateEntry,
    TrustPathRequest,
    TrustPathResponse,
    TrustStep,
)
from p2p.network import PeerId

logger = logging.getLogger(__name__)

MAX_SNAPSHOT_REQUEST_BYTES = 256


class SnapshotServer:
    """Snapshots of one node's chains, and the request handlers that serve them."""

    def __init__(
        self,
        store: ChainStore,
        get_set: Callable[[bytes], ValidatorSet | None],
        every: int = 64,
        keep: int = 2,
        keep_offered: int = 4,
    ) -> None:
        self.store = store
        self.get_set = get_set
        self.every = every
        self.keep = keep
        self.keep_offered = keep_offered
        self._periodic: dict[int, OrderedDict[int, State]] = {c: OrderedDict() for c in CHAIN_IDS}
        self._offered: dict[int, OrderedDict[int, State]] = {c: OrderedDict() for c in CHAIN_IDS}

    # --- holding ----------------------------------------------------------------------------

    def on_commit(self, chain_id: int, state: State) -> None:
        """Keep `state` if its height is a multiple of `every`."""
        if state.height % self.every:
            return
        self._hold(self._periodic[chain_id], state, self.keep)

    @staticmethod
    def _hold(held: OrderedDict[int, State], state: State, limit: int) -> None:
        held[state.height] = state
        held.move_to_end(state.height)
        while len(held) > limit:
            held.popitem(last=False)

    def get_state(self, chain_id: int, height: int) -> State | None:
        """A held snapshot, or the current head if it is at `height`."""
        if chain_id not in CHAIN_IDS:
            return None
        head = self.store.state(chain_id)
        if head.height == height:
            return head
        return self._periodic[chain_id].get(height) or self._offered[chain_id].get(height)

    def make_offers(self) -> SnapshotsResponse:
        """Every held snapshot, after pinning the current heads (height > 0 only)."""
        offers = []
        for chain_id in CHAIN_IDS:
            head = self.store.state(chain_id)
            if head.height > 0:
                self._hold(self._offered[chain_id], head, self.keep_offered)
            heights = sorted(set(self._periodic[chain_id]) | set(self._offered[chain_id]))
            for height in heights:
                state = self.get_state(chain_id, height)
                if state is not None:
                    offers.append(SnapshotOffer(chain_id, height, state.head, state.root))
        return SnapshotsResponse(tuple(offers[-64:]))

    # --- serving ----------------------------------------------------------------------------

    async def handle(self, protocol: str, data: bytes) -> bytes:
        """Answer one request by its protocol's short name, in process (tests, benchmarks)."""
        if protocol == PROTOCOL_HANDSHAKE:
            return codec.encode(compute_handshake(self.store))
        if protocol == PROTOCOL_BLOCKS:
            req = codec.decode(BlocksRequest, data, max_size=MAX_SNAPSHOT_REQUEST_BYTES)
            return codec.encode(compute_blocks_response(self.store, req))
        handlers = {PROTOCOL_SNAPSHOTS: self.serve_snapshots, PROTOCOL_TRUST_PATH: self.serve_trust_path,
                    PROTOCOL_BUCKET_HASHES: self.serve_bucket_hashes, PROTOCOL_BUCKETS: self.serve_buckets}
        return await handlers[protocol]("in-process", data)

    async def serve_snapshots(self, peer: PeerId, data: bytes) -> bytes:
        codec.decode(SnapshotsRequest, data, max_size=MAX_SNAPSHOT_REQUEST_BYTES)
        return codec.encode(self.make_offers())

    async def serve_trust_path(self, peer: PeerId, data: bytes) -> bytes:
        req = codec.decode(TrustPathRequest, data, max_size=MAX_SNAPSHOT_REQUEST_BYTES)
        return codec.encode(self.get_trust_path(req.after, req.upto))

    def get_trust_path(self, after: int, upto: int) -> TrustPathResponse:
        """The reward chain's epoch boundaries in (after, upto] that this node holds, from the
        first one on; it stops at the first it lacks (a node that itself fast-synced)."""
        epoch = self.store.pact.params.staking.epoch_length
        upto = min(upto, self.store.height(CHAIN_REWARD))
        steps = []
        boundary = (after // epoch + 1) * epoch
        while boundary <= upto and len(steps) < MAX_TRUST_STEPS:
            header = self.store.get_header(CHAIN_REWARD, boundary)
            commit = self.store.get_commit(CHAIN_REWARD, boundary)
            next_set = self.get_set(header.next_validators_hash) if header is not None else None
            if header is None or commit is None or next_set is None:
                break
            steps.append(TrustStep(header, commit, next_set))
            boundary += epoch
        return TrustPathResponse(tuple(steps))

    async def serve_bucket_hashes(self, peer: PeerId, data: bytes) -> bytes:
        req = codec.decode(BucketHashesRequest, data, max_size=MAX_SNAPSHOT_REQUEST_BYTES)
        state = self.get_state(req.chain_id, req.height)
        return codec.encode(BucketHashesResponse(state.bucket_hashes if state is not None else ()))

    async def serve_buckets(self, peer: PeerId, data: bytes) -> bytes:
        req = codec.decode(BucketsRequest, data, max_size=MAX_SNAPSHOT_REQUEST_BYTES)
        state = self.get_state(req.chain_id, req.height)
        if state is None:
            return codec.encode(BucketsResponse(()))
        return codec.encode(compute_buckets_response(state, req.first, req.count))


def compute_buckets_response(state: State, first: int, count: int) -> BucketsResponse:
    """Buckets from `first`, at most `count` and about MAX_BUCKET_RESPONSE_BYTES (at least one)."""
    buckets = []
    size = 0
    last = min(N_BUCKETS, first + min(count, MAX_BUCKETS_PER_RESPONSE))
    for index in range(first, last):
        entries = tuple(StateEntry(k, v) for k, v in sorted(state.bucket(index).items()))
        size += sum(len(e.key) + len(e.value) + 16 for e in entries) + 8
        if buckets and size > MAX_BUCKET_RESPONSE_BYTES:
            break
        buckets.append(Bucket(index, entries))
    return BucketsResponse(tuple(buckets))
