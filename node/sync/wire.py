"""Messages of the sync wing: peers' heights, the handshake, blocks by range, and fast sync.

Catch-up: a node learns that it lags from the `Handshake` it asks of each connected peer (when
they connect, then every status interval), or from consensus messages of a higher height, and
asks that peer for `BlocksRequest` ranges; each block is checked against its commit certificate.

Fast sync: a state snapshot of a chain at a finalized height is the 4096 buckets of its `State`;
the bucket hashes Merkle to the state root in the block header, and the header is certified by
the commit of >2/3 of the stake of the set that decided it. A syncing node trusts that set by
walking the reward chain's epoch boundaries from its own head (the trust path): each boundary
header names the next set and is signed by the set already trusted.
"""

from __future__ import annotations

from chain.codec import U8, U16, U64, Bytes, Hash32, Seq, Str, wire
from chain.state import N_BUCKETS
from chain.types import Block, BlockHeader, CommitCertificate, ValidatorSet

# Topic and protocol names (namespaced by network id with p2p.network.topic_name).
PROTOCOL_HANDSHAKE = "handshake"
"""Request: empty; response: Handshake."""
PROTOCOL_BLOCKS = "blocks"
"""Request: BlocksRequest; response: BlocksResponse."""
MAX_BLOCKS_PER_RESPONSE = 64
PROTOCOL_SNAPSHOTS = "snapshots"
"""Request: SnapshotsRequest; response: SnapshotsResponse."""
PROTOCOL_TRUST_PATH = "trust-path"
"""Request: TrustPathRequest; response: TrustPathResponse."""
PROTOCOL_BUCKET_HASHES = "bucket-hashes"
"""Request: BucketHashesRequest; response: BucketHashesResponse."""
PROTOCOL_BUCKETS = "buckets"
"""Request: BucketsRequest; response: BucketsResponse."""

MAX_TRUST_STEPS = 64
"""Epoch boundaries per trust-path response."""
MAX_BUCKETS_PER_RESPONSE = 1024
MAX_BUCKET_RESPONSE_BYTES = 4 * 1024 * 1024
"""A buckets response stops before this size (a single bucket larger than it is sent alone)."""
MAX_ENTRIES_PER_BUCKET = 65_536
MAX_KEY_BYTES = 256
MAX_VALUE_BYTES = 4 * 1024 * 1024


# --- catch-up -----------------------------------------------------------------------------


@wire
class ChainHead:
    chain_id: U8
    """Chain."""
    height: U64
    """Finalized height."""


@wire
class Handshake:
    """What two peers exchange first (and again every status interval, for their heights): a
    peer of another network or genesis is refused."""

    network_id: Str(32)
    """Network id."""
    genesis_hash: Hash32
    """Hash of the Genesis Pact."""
    heads: Seq(ChainHead, 8)
    """Finalized heights."""


@wire
class BlocksRequest:
    chain_id: U8
    """Chain."""
    start: U64
    """First height wanted."""
    count: U16
    """How many, at most MAX_BLOCKS_PER_RESPONSE."""


@wire
class BlocksResponse:
    """Consecutive finalized blocks and the commit certificate of the last one."""

    blocks: Seq(Block, MAX_BLOCKS_PER_RESPONSE)
    """Blocks from the requested start height."""
    last_commit: CommitCertificate | None
    """Commit of the last block (the others' commits ride in their successors)."""


# --- fast sync ------------------------------------------------------------------------------


@wire
class SnapshotsRequest:
    """Which snapshots do you hold? (no fields; a version byte for later)"""

    version: U8
    """Always 1."""


@wire
class SnapshotOffer:
    chain_id: U8
    """Chain."""
    height: U64
    """Finalized height of the snapshot."""
    block_hash: Hash32
    """The block at that height."""
    state_root: Hash32
    """State root after it."""


@wire
class SnapshotsResponse:
    offers: Seq(SnapshotOffer, 64)
    """Snapshots the responder can serve now, any chain, any order."""


@wire
class TrustPathRequest:
    after: U64
    """Reward-chain height the requester already trusts; boundaries after it are wanted."""
    upto: U64
    """Highest height of interest (the snapshot height)."""


@wire
class TrustStep:
    """A reward-chain epoch boundary: its header, its commit and the set it names next."""

    header: BlockHeader
    """Header at the boundary height."""
    commit: CommitCertificate
    """Precommits of >2/3 of `header.validators_hash`'s set for this header."""
    next_set: ValidatorSet
    """The set whose hash is `header.next_validators_hash`."""


@wire
class TrustPathResponse:
    steps: Seq(TrustStep, MAX_TRUST_STEPS)
    """Consecutive epoch boundaries in (after, upto], ascending; fewer than asked = ask again."""


@wire
class BucketHashesRequest:
    chain_id: U8
    """Chain."""
    height: U64
    """Snapshot height (one of the offers)."""


@wire
class BucketHashesResponse:
    hashes: Seq(Hash32, N_BUCKETS)
    """Every bucket hash in order; empty when the snapshot is no longer held."""


@wire
class StateEntry:
    key: Bytes(MAX_KEY_BYTES)
    """State key."""
    value: Bytes(MAX_VALUE_BYTES)
    """State value."""


@wire
class Bucket:
    index: U16
    """Bucket number, 0..N_BUCKETS-1."""
    entries: Seq(StateEntry, MAX_ENTRIES_PER_BUCKET)
    """Its entries sorted by key."""


@wire
class BucketsRequest:
    chain_id: U8
    """Chain."""
    height: U64
    """Snapshot height."""
    first: U16
    """First bucket wanted."""
    count: U16
    """Buckets wanted, at most MAX_BUCKETS_PER_RESPONSE."""


@wire
class BucketsResponse:
    buckets: Seq(Bucket, MAX_BUCKETS_PER_RESPONSE)
    """Consecutive buckets from `first` (fewer when the size cap is reached); empty when the
    snapshot is no longer held."""
