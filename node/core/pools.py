"""What a gossip-fed pool (PoL votes, snapshot signatures) answers for one message, and how a
gossip handler turns that answer into a verdict on the peer that sent it."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from chain import codec
from chain.errors import DecodingError
from node.core.ports import NodeHandle
from p2p.network import PeerId, Verdict

T = TypeVar("T")


class PoolOutcome(enum.Enum):
    ADDED = "added"
    DUPLICATE = "duplicate"
    EARLY = "early"
    """For something this node has not seen yet (a claim not revealed here): held, not counted."""
    CLOSED = "closed"
    """For something no longer open (a claim decided)."""
    STALE = "stale"
    """For a state this node has moved past (a head that is no longer the block's)."""
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class PoolAdd:
    outcome: PoolOutcome
    reason: str = ""


def judge_gossip(node: NodeHandle, peer: PeerId, data: bytes, wire_type: type[T], max_size: int, what: str,
                 add: Callable[[T], PoolAdd]) -> Verdict:
    """Decode `data` as `wire_type` and hand it to `add`: what is undecodable or INVALID costs
    `peer` a penalty (REJECT), what is new is relayed (ACCEPT), the rest is dropped (IGNORE)."""
    try:
        message = codec.decode(wire_type, data, max_size=max_size)
    except DecodingError as err:
        node.penalize(peer, f"undecodable {what}: {err}")
        return Verdict.REJECT
    result = add(message)
    if result.outcome is PoolOutcome.INVALID:
        node.penalize(peer, f"{what}: {result.reason}")
        return Verdict.REJECT
    return Verdict.ACCEPT if result.outcome is PoolOutcome.ADDED else Verdict.IGNORE
