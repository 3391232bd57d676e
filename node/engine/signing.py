"""Signing consensus messages without ever double-signing, across restarts.

`SignGuard` records, before anything is signed, the (height, round, step, block) of one chain in
the node's KV and refuses anything that conflicts with what it recorded. `OwnVoteLog` keeps the
votes this node signed at the height it is deciding, so that a restarted node resumes with them
(the Tendermint machine must know what it already voted). `Signer` signs with the node key and
reports every signed vote on the feed.
"""

from __future__ import annotations

import logging

from chain import codec
from chain.commit import sign_vote
from chain.crypto import PrivateKey
from chain.kv import COL_NODE, KV
from chain.votes import SignedVote, Vote
from consensus.messages import Proposal, SignedProposal, sign_proposal
from node.core.feed import Feed, VoteSigned
from node.engine.wire import OwnVotes

logger = logging.getLogger(__name__)

MAX_KEPT_VOTES = 256
"""Own votes of one height kept on disk (the wire type's cap)."""


class SignGuard:
    """Never sign two different things for one (height, round, step) of a chain."""

    def __init__(self, kv: KV, chain_id: int) -> None:
        self.kv = kv
        self._key = COL_NODE + b"sign" + bytes([chain_id])

    def allow(self, height: int, round: int, step: int, block_hash: bytes) -> bool:
        """Record the intent to sign and say whether it is safe; False: it conflicts with (or
        comes before) what was signed for this step already."""
        key = self._key + bytes([step])
        raw = self.kv.get(key)
        mine = (height, round)
        if raw is not None:
            last = (int.from_bytes(raw[:8], "big"), int.from_bytes(raw[8:12], "big"))
            if mine < last or (mine == last and raw[12:] != block_hash):
                logger.warning("refusing to sign a conflicting message at %s (step %d)", mine, step)
                return False
        self.kv.put(key, height.to_bytes(8, "big") + round.to_bytes(4, "big") + block_hash)
        return True


class OwnVoteLog:
    """The votes this node signed at the height it is deciding, kept on disk."""

    def __init__(self, kv: KV, chain_id: int) -> None:
        self.kv = kv
        self._key = COL_NODE + b"myvotes" + bytes([chain_id])

    def load(self, height: int) -> list[SignedVote]:
        """The votes kept for `height` (none if the log is of another height)."""
        raw = self.kv.get(self._key)
        if raw is None:
            return []
        kept = codec.decode(OwnVotes, raw)
        return list(kept.votes) if kept.height == height else []

    def save(self, height: int, votes: list[SignedVote]) -> None:
        if len(votes) <= MAX_KEPT_VOTES:
            self.kv.put(self._key, codec.encode(OwnVotes(height, tuple(votes))))


class Signer:
    """Signs votes and proposals with the node key for one network."""

    def __init__(self, key: PrivateKey, network_id: str, feed: Feed) -> None:
        self.key = key
        self.network_id = network_id
        self.feed = feed

    def sign_vote(self, vote: Vote) -> SignedVote:
        signed = sign_vote(self.key, self.network_id, vote)
        self.feed.publish(VoteSigned(signed))
        return signed

    def sign_proposal(self, proposal: Proposal) -> SignedProposal:
        return sign_proposal(self.key, self.network_id, proposal)
