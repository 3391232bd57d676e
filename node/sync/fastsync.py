"""Fast sync: start from a state snapshot certified by >2/3 of stake, instead of replaying blocks.

For each chain a peer offers a snapshot (height, block hash, state root). The node trusts it in
four checks, none of which believes the peer:

1. Trust path. From the set that decides our own next reward block (genesis for a fresh node),
   walk the reward chain's epoch boundaries up to the snapshot height. Each boundary header must
   be signed (commit certificate, >2/3 of power) by the set already trusted, and the set it names
   next must hash to its `next_validators_hash`. Every epoch boundary changes the set (its epoch
   number), so the boundaries must be consecutive: none can be skipped.
2. Header. The snapshot block must be certified by >2/3 of a set on the trust path.
3. Root. The 4096 bucket hashes must Merkle to the header's state root.
4. Buckets. Each bucket's entries must hash to its bucket hash, and every key must belong to it.

Then the state, the block and its commit are written in one batch (`ChainStore.install_snapshot`)
and the trusted sets are kept, so that the engine can go on block by block from there.
Like every light client, this trusts that no set that once held >2/3 of stake signs a fork after
its stake is gone (weak subjectivity): old keys are the limit, as in CometBFT's trusting period.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from chain import codec, merkle
from chain.commit import InvalidCommit, verify_commit
from chain.errors import BlyanError, DecodingError
from chain.state import BUCKET_ARITY, N_BUCKETS, State, bucket_of, compute_bucket_hash
from chain.store import ChainStore
from chain.types import CHAIN_IDS, CHAIN_NAMES, CHAIN_REWARD, Block, CommitCertificate, ValidatorSet
from node.core.progress import RateMeter, format_progress
from node.sync.wire import (
    MAX_BUCKETS_PER_RESPONSE,
    PROTOCOL_BLOCKS,
    PROTOCOL_BUCKET_HASHES,
    PROTOCOL_BUCKETS,
    PROTOCOL_HANDSHAKE,
    PROTOCOL_SNAPSHOTS,
    PROTOCOL_TRUST_PATH,
    BlocksRequest,
    BlocksResponse,
    Bucket,
    BucketHashesRequest,
    BucketHashesResponse,
    BucketsRequest,
    BucketsResponse,
    Handshake,
    SnapshotOffer,
    SnapshotsRequest,
    SnapshotsResponse,
    TrustPathRequest,
    TrustPathResponse,
)
from p2p.network import Network, PeerId, RequestFailed, protocol_name

logger = logging.getLogger(__name__)

T = TypeVar("T")

Request = Callable[[str, bytes, int], Awaitable[bytes]]
"""`request(protocol short name, body, max response bytes) -> response body` to one peer."""

MAX_RESPONSE_BYTES = 16 * 1024 * 1024


class FastSyncError(BlyanError):
    """Fast sync could not finish; `peer_at_fault` when the peer sent something false."""

    def __init__(self, reason: str, peer_at_fault: bool = False, ban: bool = False) -> None:
        self.reason = reason
        self.peer_at_fault = peer_at_fault
        self.ban = ban
        super().__init__(reason)


@dataclass
class FastSyncReport:
    """What a fast sync installed."""

    heights: dict[int, int] = field(default_factory=dict)
    """Chain id -> installed snapshot height."""
    entries: int = 0
    """State entries received."""
    bytes: int = 0
    """Response bytes received."""
    trust_steps: int = 0
    """Epoch boundaries verified."""
    seconds: float = 0.0


class SnapshotClient:
    """Fetch and verify snapshots from one peer; install them into `store`."""

    def __init__(self, store: ChainStore, request: Request, known_sets: dict[bytes, ValidatorSet]) -> None:
        self.store = store
        self._request = request
        self.known_sets = known_sets
        self.network_id = store.pact.network_id
        self.report = FastSyncReport()

    async def call(self, protocol: str, msg: object, cls: type[T], max_size: int = MAX_RESPONSE_BYTES) -> T:
        data = await self._request(protocol, codec.encode(msg), max_size)
        self.report.bytes += len(data)
        try:
            return codec.decode(cls, data, max_size=max_size)
        except DecodingError as err:
            raise FastSyncError(f"{protocol}: undecodable response: {err}", peer_at_fault=True) from err

    # --- the steps --------------------------------------------------------------------------

    async def check_handshake(self) -> None:
        """Refuse a peer of another network or genesis before asking it anything else."""
        data = await self._request(PROTOCOL_HANDSHAKE, b"", 4096)
        try:
            theirs = codec.decode(Handshake, data, max_size=4096)
        except DecodingError as err:
            raise FastSyncError(f"undecodable handshake: {err}", peer_at_fault=True) from err
        if (theirs.network_id, theirs.genesis_hash) != (self.network_id, self.store.genesis_hash):
            raise FastSyncError(f"peer is of network {theirs.network_id!r} genesis "
                                f"{theirs.genesis_hash.hex()[:16]}", peer_at_fault=True, ban=True)

    async def get_offers(self) -> dict[int, SnapshotOffer]:
        """The highest offer per chain."""
        resp: SnapshotsResponse = await self.call(PROTOCOL_SNAPSHOTS, SnapshotsRequest(1), SnapshotsResponse)
        best: dict[int, SnapshotOffer] = {}
        for offer in resp.offers:
            held = best.get(offer.chain_id)
            if offer.chain_id in CHAIN_IDS and (held is None or offer.height > held.height):
                best[offer.chain_id] = offer
        return best

    def _trusted_start(self) -> tuple[int, ValidatorSet]:
        height = self.store.height(CHAIN_REWARD)
        header = self.store.get_header(CHAIN_REWARD, height)
        trusted = self.known_sets.get(header.next_validators_hash) if header is not None else None
        if trusted is None:
            raise FastSyncError(f"the set after our reward head {height} is unknown here")
        return height, trusted

    async def walk_trust_path(self, upto: int) -> list[ValidatorSet]:
        """Every set trusted from our reward head up to `upto`, oldest first (checks 1)."""
        after, trusted = self._trusted_start()
        epoch = self.store.pact.params.staking.epoch_length
        sets = [trusted]
        expected = (after // epoch + 1) * epoch
        while expected <= upto:
            resp: TrustPathResponse = await self.call(
                PROTOCOL_TRUST_PATH, TrustPathRequest(after, upto), TrustPathResponse)
            if not resp.steps:
                raise FastSyncError(f"peer holds no trust path from reward height {after}")
            for step in resp.steps:
                h = step.header
                if h.chain_id != CHAIN_REWARD or h.height != expected:
                    raise FastSyncError(f"trust path skips: got height {h.height}, expected {expected}", True)
                if h.validators_hash != trusted.hash():
                    raise FastSyncError(f"boundary {h.height} is not decided by the trusted set", True)
                try:
                    verify_commit(CHAIN_REWARD, h.height, codec.hash_of(h), step.commit, trusted, self.network_id)
                except InvalidCommit as err:
                    raise FastSyncError(f"boundary {h.height}: {err}", True) from err
                if step.next_set.hash() != h.next_validators_hash:
                    raise FastSyncError(f"boundary {h.height}: next set does not match its hash", True)
                trusted = step.next_set
                sets.append(trusted)
                after = expected
                expected += epoch
                self.report.trust_steps += 1
                if expected > upto:
                    break
        return sets

    async def get_certified_block(self, offer: SnapshotOffer,
                                  sets: list[ValidatorSet]) -> tuple[Block, CommitCertificate]:
        """The snapshot's block and a commit of >2/3 of a trusted set (check 2)."""
        resp: BlocksResponse = await self.call(PROTOCOL_BLOCKS, BlocksRequest(offer.chain_id, offer.height, 1),
                                               BlocksResponse, max_size=64 * 1024 * 1024)
        if len(resp.blocks) != 1 or resp.last_commit is None:
            raise FastSyncError(f"peer did not send block {offer.height} with its commit", True)
        block = resp.blocks[0]
        h = block.header
        if (h.chain_id, h.height, block.hash()) != (offer.chain_id, offer.height, offer.block_hash):
            raise FastSyncError("block differs from the offer", True)
        if h.state_root != offer.state_root:
            raise FastSyncError("offer's state root differs from its header", True)
        deciding = next((s for s in reversed(sets) if s.hash() == h.validators_hash), None)
        if deciding is None:
            raise FastSyncError(f"{CHAIN_NAMES[h.chain_id]} block {h.height} is decided by a set not on the trust path")
        try:
            verify_commit(h.chain_id, h.height, block.hash(), resp.last_commit, deciding, self.network_id)
        except InvalidCommit as err:
            raise FastSyncError(f"snapshot block {h.height}: {err}", True) from err
        return block, resp.last_commit

    async def get_state(self, block: Block, log: Callable[[str], None]) -> State:
        """The state after `block`, every bucket checked (checks 3 and 4)."""
        h = block.header
        hashes_resp: BucketHashesResponse = await self.call(
            PROTOCOL_BUCKET_HASHES, BucketHashesRequest(h.chain_id, h.height), BucketHashesResponse)
        hashes = tuple(hashes_resp.hashes)
        if len(hashes) != N_BUCKETS:
            raise FastSyncError("peer no longer holds the snapshot")
        if merkle.compute_root(hashes, BUCKET_ARITY) != h.state_root:
            raise FastSyncError("bucket hashes do not make the state root", True)
        buckets: list[dict[bytes, bytes]] = []
        meter = RateMeter()
        meter.add(time.perf_counter(), 0)
        while len(buckets) < N_BUCKETS:
            first = len(buckets)
            req = BucketsRequest(h.chain_id, h.height, first, MAX_BUCKETS_PER_RESPONSE)
            resp: BucketsResponse = await self.call(PROTOCOL_BUCKETS, req, BucketsResponse)
            if not resp.buckets:
                raise FastSyncError("peer no longer holds the snapshot")
            for bucket in resp.buckets:
                buckets.append(validate_bucket(bucket, len(buckets), hashes))
                self.report.entries += len(bucket.entries)
            meter.add(time.perf_counter(), len(buckets))
            log(f"{CHAIN_NAMES[h.chain_id]} snapshot {h.height}: "
                f"{format_progress(len(buckets), N_BUCKETS, meter.rate, 'buckets')}")
        return State(h.chain_id, h.height, block.hash(), h.time_ms, tuple(buckets), hashes)

    async def sync_chains(self, offers: dict[int, SnapshotOffer], log: Callable[[str], None]) -> FastSyncReport:
        """Verify and install the offered snapshots above our heads, the reward chain first."""
        started = time.perf_counter()
        wanted = {c: o for c, o in offers.items() if o.height > self.store.height(c)}
        if CHAIN_REWARD not in wanted:
            raise FastSyncError("no reward-chain snapshot above our head")
        sets = await self.walk_trust_path(wanted[CHAIN_REWARD].height)
        fetched = []
        for chain_id in sorted(wanted, key=lambda c: c != CHAIN_REWARD):
            block, commit = await self.get_certified_block(wanted[chain_id], sets)
            fetched.append((block, commit, await self.get_state(block, log)))
        for s in sets:
            self.known_sets.setdefault(s.hash(), s)
        for block, commit, state in fetched:  # only once every chain verified
            self.store.install_snapshot(block, commit, state)
            self.report.heights[block.header.chain_id] = block.header.height
        self.report.seconds = time.perf_counter() - started
        return self.report


def validate_bucket(bucket: Bucket, index: int, hashes: tuple[bytes, ...]) -> dict[bytes, bytes]:
    """The entries of bucket `index` if they hash to `hashes[index]` and all belong there."""
    if bucket.index != index:
        raise FastSyncError(f"bucket {bucket.index} sent where {index} was due", True)
    entries = {e.key: e.value for e in bucket.entries}
    if len(entries) != len(bucket.entries):
        raise FastSyncError(f"bucket {index} repeats a key", True)
    if any(bucket_of(key) != index for key in entries):
        raise FastSyncError(f"bucket {index} holds a key of another bucket", True)
    if compute_bucket_hash(entries) != hashes[index]:
        raise FastSyncError(f"bucket {index} does not match its hash", True)
    return entries


def peer_request(net: Network, network_id: str, peer: PeerId, timeout_s: float) -> Request:
    """A `Request` to one peer over a `p2p.network.Network`."""

    async def request(protocol: str, data: bytes, max_size: int) -> bytes:
        try:
            return await net.request(peer, protocol_name(network_id, protocol), data, timeout_s, max_size)
        except RequestFailed as err:
            raise FastSyncError(f"{protocol} from {peer}: {err}") from err

    return request


async def run_fast_sync(store: ChainStore, net: Network, known_sets: dict[bytes, ValidatorSet], *,
                        min_gap: int, peer_wait_s: float, timeout_s: float = 10.0,
                        max_peers: int = 3) -> FastSyncReport | None:
    """At start: wait for a peer; if one is `min_gap` or more reward blocks ahead, install its
    snapshots. Returns None when there was no peer, nobody far enough ahead, or every try failed
    (the engine then catches up block by block). A peer caught sending false data is penalised."""

    arrived = trio.Event()
    net.on_peer_event(lambda peer, connected: arrived.set() if connected else None)
    if not net.peers():
        with trio.move_on_after(peer_wait_s):
            await arrived.wait()
    for peer in net.peers()[:max_peers]:
        client = SnapshotClient(store, peer_request(net, store.pact.network_id, peer, timeout_s), known_sets)
        try:
            await client.check_handshake()
            offers = await client.get_offers()
            reward = offers.get(CHAIN_REWARD)
            if reward is None or reward.height < store.height(CHAIN_REWARD) + min_gap:
                logger.info("fast sync: %s is not %d+ reward blocks ahead; syncing block by block", peer, min_gap)
                continue
            logger.info("fast sync from %s: snapshots at %s", peer,
                        {CHAIN_NAMES[c]: o.height for c, o in sorted(offers.items())})
            report = await client.sync_chains(offers, lambda line: logger.info("fast sync: %s", line))
        except FastSyncError as err:
            if err.peer_at_fault:
                logger.warning("fast sync from %s failed, penalised: %s", peer, err.reason)
                net.penalize(peer, f"fast sync: {err.reason}", weight=1_000.0 if err.ban else 10.0)
            else:
                logger.info("fast sync from %s not possible: %s", peer, err.reason)
            continue
        logger.info("fast sync done in %.2f s: heights %s, %d entries, %d trust steps, %.1f MiB",
                    report.seconds, {CHAIN_NAMES[c]: h for c, h in report.heights.items()},
                    report.entries, report.trust_steps, report.bytes / (1 << 20))
        return report
    return None
