"""Datasets over the network: serve the blocks of local datasets, fetch a dataset block by block
from its holders, each block checked against its CID, and fall back to IPFS when no peer has it.

Protocol `/blyan/<network>/req/dataset-block/1`: a `DatasetBlockRequest(root, block)` is answered
with the block's bytes (at most `unixfs.MAX_BLOCK_BYTES`): a raw leaf or a dag-pb node of the
UnixFS DAG that `ipfs add --cid-version 1 --raw-leaves` builds for the dataset `root`. A peer is
trusted for nothing: every block must hash to the CID asked for, so the whole dataset hashes to
`root`. A node serves only what it holds and can check (`DatasetStore.block`); otherwise it
answers `ContentUnavailable`, which the requester sees as a `RemoteError`.

Fetching walks the DAG depth first, `MAX_IN_FLIGHT` blocks at a time, rotating over the peers
that still serve this fetch. A peer that sends a block that does not match its CID (or an
oversized one) is penalised and dropped for the rest of the fetch; one that says it cannot serve
is dropped without penalty; one that times out is skipped for that block (dropped after
`MAX_TIMEOUTS_PER_PEER`). Requests are hedged: a block not answered within
`DEFAULT_HEDGE_AFTER_S` is asked of the next peer as well, first match wins, so that a lost
request or a stalled holder costs seconds, not the block timeout. A DAG whose sizes do not add
up, or that claims more than `max_size` bytes, is refused before it is downloaded in full.

Reading, hashing and writing whole datasets run off the event loop through `offload` (a thread by
default; tests under `MockClock` pass `run_inline`, since a thread's wall time is invisible to an
autojumping clock). The IPFS fallback's blocking `cat` goes through `offload` too.

    service = ContentService(network_id, store)
    service.register(net)                                           # serve
    await service.fetch(net, peers, cid, max_size=..., ipfs=client)   # DatasetUnavailable if not
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import trio

from chain import codec, unixfs
from chain.codec import Str, wire
from chain.errors import BlyanError
from node.data.content import (
    CODEC_RAW,
    MAX_CID_CHARS,
    Cid,
    ContentMismatch,
    DatasetStore,
    InvalidCid,
    validate_cid,
)
from p2p.network import (
    Network,
    PeerId,
    RequestFailed,
    RequestTimeout,
    ResponseTooLarge,
    protocol_name,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
Offload = Callable[[Callable[[], T]], Awaitable[T]]

PROTOCOL_DATASET = "dataset-block"
MAX_REQUEST_BYTES = 2 * (MAX_CID_CHARS + 3) + 1
"""A msgpack array of two CIDs of at most MAX_CID_CHARS characters."""
DEFAULT_BLOCK_TIMEOUT_S = 10.0
"""How long one block request may take (a 256 KiB block: 26 KB/s at the least)."""
DEFAULT_HEDGE_AFTER_S = 3.0
"""How long a block request goes unanswered before the next holder is asked as well."""
DEFAULT_FETCH_DEADLINE_S = 600.0
"""How long `fetch_dataset` may take, all blocks, peers and the IPFS fallback together."""
MAX_IN_FLIGHT = 4
"""Block requests one fetch keeps in flight."""
MAX_TIMEOUTS_PER_PEER = 3
"""Timed-out requests after which a peer is dropped for the rest of a fetch."""
BLOCK_PENALTY = 5.0
"""Score a peer loses for a block that does not match its CID or breaks the size cap."""


@wire
class DatasetBlockRequest:
    """Ask a peer for one block of a dataset's DAG."""

    root: Str(MAX_CID_CHARS)
    """The dataset: the CID of its DAG's root."""
    block: Str(MAX_CID_CHARS)
    """The block wanted: the root itself, an inner node or a leaf."""


class ContentUnavailable(BlyanError):
    """This node cannot serve the block: unknown dataset, a block not in its DAG, or a corrupt
    local copy."""

    def __init__(self, root: Cid, block: Cid, reason: str) -> None:
        self.root = root
        self.block = block
        self.reason = reason
        super().__init__(f"block {block[:20]} of dataset {root[:20]}: {reason}")


class DatasetUnavailable(BlyanError):
    """The dataset could not be fetched (from peers or IPFS, within the deadline); nothing of it
    is in the store."""

    def __init__(self, cid: Cid, reason: str) -> None:
        self.cid = cid
        self.reason = reason
        super().__init__(f"dataset {cid[:20]}: {reason}")


class IpfsSource(Protocol):
    """Where a dataset comes from when no peer has it (`node.data.ipfs.IpfsClient`)."""

    def cat(self, cid: str, max_size: int) -> bytes:
        """The bytes of `cid`, at most `max_size`; blocking; raises a `BlyanError` on failure."""
        ...


def dataset_protocol(network_id: str) -> str:
    return protocol_name(network_id, PROTOCOL_DATASET)


async def run_inline(fn: Callable[[], T]) -> T:
    """An `Offload` that runs `fn` on the event loop (tests under MockClock)."""
    return fn()


def make_thread_offload(limiter: trio.CapacityLimiter | None = None) -> Offload:
    """An `Offload` through `trio.to_thread.run_sync`, at most `limiter` threads at once. A
    cancelled caller abandons the thread (a deadline is kept even if IPFS hangs); what the thread
    does then is harmless: reads, hashes, and atomic writes of verified bytes."""
    limiter = limiter or trio.CapacityLimiter(2)

    async def offload(fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=limiter, abandon_on_cancel=True)

    return offload


# --- serving --------------------------------------------------------------------------------


class ContentService:
    """Serves this node's datasets on one network and fetches others' into its store."""

    def __init__(self, network_id: str, store: DatasetStore, *, offload: Offload | None = None) -> None:
        self.network_id = network_id
        self.store = store
        self.offload = offload or make_thread_offload()

    def register(self, net: Network) -> None:
        """Answer dataset block requests on `net`."""
        net.set_request_handler(dataset_protocol(self.network_id), self.on_request, MAX_REQUEST_BYTES)

    async def on_request(self, peer: PeerId, data: bytes) -> bytes:
        request = codec.decode(DatasetBlockRequest, data, max_size=MAX_REQUEST_BYTES)
        root, block_cid = validate_cid(request.root), validate_cid(request.block)
        block = await self.offload(lambda: self.store.block(root, block_cid))
        if block is None:
            raise ContentUnavailable(root, block_cid, "not held here")
        return block

    async def fetch(
        self, net: Network, peers: Sequence[PeerId], cid: Cid, *, max_size: int,
        deadline_s: float = DEFAULT_FETCH_DEADLINE_S, block_timeout_s: float = DEFAULT_BLOCK_TIMEOUT_S,
        ipfs: IpfsSource | None = None,
    ) -> None:
        """`fetch_dataset` into this service's store, on its network, through its offload."""
        await fetch_dataset(net, peers, cid, self.store, network_id=self.network_id, max_size=max_size,
                            deadline_s=deadline_s, block_timeout_s=block_timeout_s, ipfs=ipfs,
                            offload=self.offload)


# --- fetching -------------------------------------------------------------------------------


async def fetch_dataset(
    net: Network, peers: Sequence[PeerId], cid: Cid, store: DatasetStore, *, network_id: str,
    max_size: int, deadline_s: float = DEFAULT_FETCH_DEADLINE_S,
    block_timeout_s: float = DEFAULT_BLOCK_TIMEOUT_S, ipfs: IpfsSource | None = None,
    offload: Offload | None = None,
) -> None:
    """Bring dataset `cid` (at most `max_size` bytes) into `store`: block by block from `peers`,
    or, when none serves it and `ipfs` is given, from IPFS; checked against `cid` either way.

    A no-op when the dataset is here. `DatasetUnavailable` when it cannot be had within
    `deadline_s`; nothing is written then. `InvalidCid` for a malformed `cid`."""
    validate_cid(cid)
    if max_size < 0:
        raise ValueError(f"max_size must be >= 0, got {max_size}")
    if store.has(cid):
        return
    offload = offload or make_thread_offload()
    holders = [peer for peer in dict.fromkeys(peers) if peer != net.local_id]
    try:
        with trio.fail_after(deadline_s):
            data, source = await _fetch_bytes(net, holders, cid, network_id, max_size, block_timeout_s,
                                              ipfs, offload)
    except trio.TooSlowError as err:
        raise DatasetUnavailable(cid, f"not fetched within {deadline_s:g} s") from err
    try:
        await offload(lambda: store.put_verified(cid, data))
    except ContentMismatch as err:
        raise DatasetUnavailable(cid, f"{source} returned bytes that hash to {err.actual}") from err
    logger.info("fetched dataset %s (%d bytes) from %s", cid[:20], len(data), source)


async def _fetch_bytes(
    net: Network, holders: list[PeerId], cid: Cid, network_id: str, max_size: int, timeout: float,
    ipfs: IpfsSource | None, offload: Offload,
) -> tuple[bytes, str]:
    """The dataset's bytes (not yet checked as a whole) and where they came from."""
    reason = "no peer to fetch it from"
    if holders:
        walk = _DagFetch(net, dataset_protocol(network_id), cid, holders, timeout, max_size)
        try:
            blocks = await walk.run()
        except _NoHolder as err:
            reason = err.reason
        else:
            data = await offload(lambda: _assemble(cid, blocks, max_size))
            return data, walk.describe_sources()
    if ipfs is None:
        raise DatasetUnavailable(cid, reason)
    try:
        data = await offload(lambda: ipfs.cat(cid, max_size))
    except BlyanError as err:
        raise DatasetUnavailable(cid, f"{reason}; IPFS failed: {err}") from err
    if len(data) > max_size:
        raise DatasetUnavailable(cid, f"IPFS returned {len(data)} bytes, over the cap of {max_size}")
    return data, "IPFS"


def _assemble(cid: Cid, blocks: dict[Cid, bytes], max_size: int) -> bytes:
    try:
        return unixfs.assemble(cid, blocks.get, max_size=max_size)
    except BlyanError as err:  # every block matched its CID: the dataset's DAG itself is bad
        raise DatasetUnavailable(cid, f"its DAG does not assemble: {err}") from err


class _NoHolder(Exception):
    """Internal: no peer left that serves a block of this fetch."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class _DagFetch:
    """One fetch of one dataset's blocks from peers: its peers, the blocks got, the walk's stack."""

    def __init__(self, net: Network, protocol: str, root: Cid, peers: list[PeerId], timeout: float,
                 max_size: int, hedge_after: float = DEFAULT_HEDGE_AFTER_S) -> None:
        self.net, self.protocol, self.root = net, protocol, root
        self.hedge_after = min(hedge_after, timeout)
        self.peers = list(peers)
        self.live = list(peers)
        """Peers still asked in this fetch, in the caller's order."""
        self.timeouts: dict[PeerId, int] = {}
        self.served: dict[PeerId, int] = {}
        self.timeout, self.max_size = timeout, max_size
        self.max_blocks = 2 * (max_size // unixfs.CHUNK_SIZE + 1) + 8
        """Bound on distinct blocks: a canonical DAG has about one per CHUNK_SIZE bytes."""
        self.blocks: dict[Cid, bytes] = {}
        self.sizes: dict[Cid, int] = {}
        """Every block met so far -> the file bytes under it, as its parent said."""
        self.stack: list[Cid] = []
        self.busy = 0
        self.turn = 0
        self.error: Exception | None = None
        self.changed = trio.Event()

    async def run(self) -> dict[Cid, bytes]:
        """Every block of the DAG, each matching its CID; `_NoHolder` or `DatasetUnavailable`."""
        block = await self.get_block(self.root)
        self.take(self.root, block, None)
        if self.stack:
            async with trio.open_nursery() as nursery:
                for _ in range(MAX_IN_FLIGHT):
                    nursery.start_soon(self.work, nursery.cancel_scope)
        if self.error is not None:
            raise self.error
        return self.blocks

    async def work(self, scope: trio.CancelScope) -> None:
        while True:
            while not self.stack:  # each pass either returns or waits for a busy worker to finish
                if self.busy == 0:
                    return
                await self.changed.wait()
            cid = self.stack.pop()
            self.busy += 1
            try:
                self.take(cid, await self.get_block(cid), self.sizes[cid])
            except (_NoHolder, DatasetUnavailable) as err:
                self.error = self.error or err
                scope.cancel()
                return
            finally:
                self.busy -= 1
                self.changed.set()
                self.changed = trio.Event()

    async def get_block(self, cid: Cid) -> bytes:
        """Block `cid` from the first live peer (in turn) that serves one matching the CID.

        Hedged: a peer that has not answered within `hedge_after` (a lost request, a stalled
        holder) does not hold up the block for its whole timeout; the next peer is asked too,
        and the first matching answer wins (the others are cancelled). A peer that fails at once
        hands over at once. Each peer is asked at most once per block."""
        request = codec.encode(DatasetBlockRequest(root=self.root, block=cid))
        start, self.turn = self.turn, self.turn + 1
        order = self.live[start % len(self.live):] + self.live[:start % len(self.live)] if self.live else []
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:
            for peer in order:
                if got:
                    break
                if peer not in self.live:
                    continue
                answered = trio.Event()
                nursery.start_soon(self.ask, peer, cid, request, got, answered, nursery.cancel_scope)
                with trio.move_on_after(self.hedge_after):
                    await answered.wait()
        if got:
            return got[0]
        raise _NoHolder(f"no peer of {len(self.peers)} served block {cid[:20]}")

    async def ask(self, peer: PeerId, cid: Cid, request: bytes, got: list[bytes], answered: trio.Event,
                  won: trio.CancelScope) -> None:
        """One peer's attempt at a block: on a match, into `got` and the other attempts cancelled."""
        try:
            block = await self.net.request(peer, self.protocol, request, self.timeout,
                                           max_response_bytes=unixfs.MAX_BLOCK_BYTES)
            unixfs.verify_block(cid, block)
        except RequestTimeout:
            self.timeouts[peer] = self.timeouts.get(peer, 0) + 1
            if self.timeouts[peer] >= MAX_TIMEOUTS_PER_PEER:
                self.drop(peer)
        except ResponseTooLarge as err:
            self.reject(peer, f"oversized block {cid[:20]} of dataset {self.root[:20]}: {err.reason}")
        except RequestFailed as err:
            logger.debug("dataset %s: %s does not serve it (%s)", self.root[:20], peer, err.reason)
            self.drop(peer)
        except unixfs.BlockMismatch:
            self.reject(peer, f"block {cid[:20]} of dataset {self.root[:20]} does not match its CID")
        else:
            if not got:
                got.append(block)
                self.served[peer] = self.served.get(peer, 0) + 1
                won.cancel()
        finally:
            answered.set()

    def reject(self, peer: PeerId, reason: str) -> None:
        """Penalise and drop a peer that sent a bad block: once per fetch, though several of its
        answers may have been in flight."""
        if peer not in self.live:
            return
        self.net.penalize(peer, reason, BLOCK_PENALTY)
        logger.info("dataset %s: dropping %s: %s", self.root[:20], peer, reason)
        self.live.remove(peer)

    def drop(self, peer: PeerId) -> None:
        if peer in self.live:
            self.live.remove(peer)

    def take(self, cid: Cid, block: bytes, expected: int | None) -> None:
        """Keep a verified block; check its sizes; push a node's unseen children on the stack."""
        if unixfs.codec_of(cid) == CODEC_RAW:
            self.check_size(cid, len(block), expected)
            self.blocks[cid] = block
            return
        try:
            node = unixfs.decode_node(block)
        except unixfs.MalformedBlock as err:
            raise DatasetUnavailable(self.root, f"block {cid[:20]} is not a UnixFS file node: {err}") from err
        self.check_size(cid, node.filesize, expected)  # decode_node checked the links add up
        self.blocks[cid] = block
        for link, size in reversed(list(zip(node.links, node.blocksizes, strict=True))):
            self.push(link.cid, size)

    def push(self, cid: Cid, size: int) -> None:
        seen = self.sizes.get(cid)
        if seen is not None:  # a block met again (repeated content) is fetched once
            if seen != size:
                raise DatasetUnavailable(self.root, f"block {cid[:20]} is said to be {seen} and {size} bytes")
            return
        if len(self.sizes) >= self.max_blocks:
            raise DatasetUnavailable(self.root, f"its DAG has over {self.max_blocks} blocks")
        try:
            validate_cid(cid)
        except InvalidCid as err:
            raise DatasetUnavailable(self.root, f"a link: {err}") from err
        self.sizes[cid] = size
        self.stack.append(cid)

    def check_size(self, cid: Cid, size: int, expected: int | None) -> None:
        if expected is None and size > self.max_size:
            raise DatasetUnavailable(self.root, f"it is {size} bytes, over the cap of {self.max_size}")
        if expected is not None and size != expected:
            raise DatasetUnavailable(self.root, f"block {cid[:20]} holds {size} bytes, its parent says "
                                                f"{expected}")

    def describe_sources(self) -> str:
        return "peers " + ", ".join(f"{peer} ({n} blocks)" for peer, n in sorted(self.served.items()))
