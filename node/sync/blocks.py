"""Blocks by range: how a node that lags gets finalized blocks from a peer.

A response holds consecutive stored blocks from the requested height (at most
`MAX_BLOCKS_PER_RESPONSE`, about 4 MiB) and the commit certificate of the last one; the commit of
each other block rides in its successor's `last_commit`, so every block arrives with the
signatures that finalized it.
"""

from __future__ import annotations

from chain import codec
from chain.store import ChainStore
from chain.types import CHAIN_IDS
from node.sync.wire import MAX_BLOCKS_PER_RESPONSE, BlocksRequest, BlocksResponse

MAX_BLOCKS_RESPONSE_BYTES = 64 * 1024 * 1024
"""Largest blocks response a requester decodes."""
RESPONSE_TARGET_BYTES = 4 * 1024 * 1024
"""A response stops growing past this size (it always holds at least one block)."""


def compute_blocks_response(store: ChainStore, req: BlocksRequest) -> BlocksResponse:
    """Consecutive stored blocks from `req.start` (about 4 MiB at most) and the last one's commit."""
    if req.chain_id not in CHAIN_IDS:
        return BlocksResponse((), None)
    top = store.height(req.chain_id)
    blocks = []
    size = 0
    for h in range(max(req.start, 1), min(req.start + min(req.count, MAX_BLOCKS_PER_RESPONSE), top + 1)):
        block = store.get_block(req.chain_id, h)
        if block is None:
            break
        size += len(codec.encode(block))
        if blocks and size > RESPONSE_TARGET_BYTES:
            break
        blocks.append(block)
    last_commit = store.get_commit(req.chain_id, blocks[-1].header.height) if blocks else None
    return BlocksResponse(tuple(blocks), last_commit)
