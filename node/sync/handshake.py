"""The handshake: what two peers say first. A peer of another network or genesis is banned.

`compute_handshake` is this node's answer (network, genesis hash, finalized heights);
`check_peer` asks a newly connected peer for its own, a few times further apart while its
engine may still be starting (or fast-syncing), and returns its heads when it is one of ours.
"""

from __future__ import annotations

import logging

import trio

from chain.codec import decode
from chain.errors import BlyanError, DecodingError
from chain.store import ChainStore
from chain.types import CHAIN_IDS
from node.core.ports import NodeHandle
from node.sync.wire import PROTOCOL_HANDSHAKE, ChainHead, Handshake
from p2p.network import PeerId, protocol_name

logger = logging.getLogger(__name__)

MAX_HANDSHAKE_BYTES = 4096
ANOTHER_GENESIS_PENALTY = 1_000.0
"""Enough to ban: a peer of another network or genesis can never be of use."""


def compute_handshake(store: ChainStore) -> Handshake:
    """What this node says first: network, genesis and finalized heights."""
    return Handshake(store.pact.network_id, store.genesis_hash,
                     tuple(ChainHead(c, store.height(c)) for c in CHAIN_IDS))


def is_same_network(theirs: Handshake, store: ChainStore) -> bool:
    return (theirs.network_id, theirs.genesis_hash) == (store.pact.network_id, store.genesis_hash)


async def check_peer(node: NodeHandle, peer: PeerId, timeout_s: float,
                     attempts: int = 4) -> tuple[ChainHead, ...] | None:
    """The peer's finalized heads if it is of our network and genesis; None when it is not (it
    is penalised: banned for another genesis) or does not answer after `attempts` tries."""
    network, store = node.network, node.store
    protocol = protocol_name(store.pact.network_id, PROTOCOL_HANDSHAKE)
    for attempt in range(attempts):
        try:
            data = await network.request(peer, protocol, b"", timeout_s)
            theirs = decode(Handshake, data, max_size=MAX_HANDSHAKE_BYTES)
            break
        except DecodingError:
            node.penalize(peer, "undecodable handshake")
            return None
        except BlyanError as err:
            logger.info("handshake with %s failed (%d/%d): %s", peer, attempt + 1, attempts, err)
            if attempt + 1 == attempts or peer not in network.peers():
                return None
            await trio.sleep(timeout_s * 2**attempt)
    if not is_same_network(theirs, store):
        logger.warning("refusing peer %s of network %r genesis %s", peer, theirs.network_id,
                       theirs.genesis_hash.hex()[:16])
        node.penalize(peer, "another network or genesis", ANOTHER_GENESIS_PENALTY)
        return None
    return theirs.heads
