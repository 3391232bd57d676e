"""libp2p identities of Ed25519 node keys: a node's peer id is derived from its validator key."""

from __future__ import annotations

from libp2p.crypto.ed25519 import Ed25519PublicKey, create_new_key_pair
from libp2p.peer.id import ID


def compute_peer_id(seed: bytes) -> str:
    """The libp2p peer id of a node key (Ed25519 identity), base58."""
    return ID.from_pubkey(create_new_key_pair(seed).public_key).to_base58()


def is_libp2p_identity(peer_id: str, public_key: bytes) -> bool:
    """Whether `peer_id` is the libp2p peer id of the Ed25519 `public_key`."""
    try:
        return ID.from_pubkey(Ed25519PublicKey.from_bytes(public_key)).to_base58() == peer_id
    except ValueError:
        return False
