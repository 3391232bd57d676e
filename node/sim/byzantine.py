"""Byzantine validators for simulations: substitutes around the honest engine, never branches in it.

A misbehaving node runs the same `Engine` as every other node; what changes is what it is given:

- `ByzantineNetwork` wraps the node's network (its outbox): it stays silent, withholds its
  votes, or equivocates (signs a second, conflicting vote for each of its votes, and prevotes and
  precommits every proposal it sees, by gossip or in answer to a proposal request);
- `InvalidBlockBuilder` is a proposer strategy that builds blocks with a wrong state root;
- `spam` floods the topics with garbage, as a task beside the engine;
- `lie_about` is the verifier a validator with `false_pol_votes` hands its (honest) PoL service:
  it runs the real verifier and signs the opposite verdict (accepting a forged bundle with a
  made-up gain, rejecting an honest one).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import trio

from chain import codec
from chain.codec import decode
from chain.commit import sign_vote
from chain.context import Context
from chain.crypto import PrivateKey
from chain.errors import BlyanError, DecodingError
from chain.state import State
from chain.types import Block, CommitCertificate, Transaction, ValidatorSet
from chain.votes import NIL, Vote
from consensus.pol import PolRejection, Reason, make_verdict
from node.engine.ports import BlockBuilder
from node.engine.wire import (
    PROTOCOL_PROPOSAL,
    TOPIC_PROPOSALS,
    TOPIC_TXS,
    TOPIC_VOTES,
    ProposalMsg,
    ProposalResponse,
    VoteMsg,
)
from p2p.network import (
    DEFAULT_MAX_RESPONSE_BYTES,
    MAX_GOSSIP_BYTES,
    GossipHandler,
    Network,
    PeerId,
    Verdict,
    protocol_name,
    topic_name,
)

logger = logging.getLogger(__name__)

SPAM_INTERVAL_S = 0.05


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How a simulated node misbehaves. The default is honest."""

    equivocate: bool = False
    """Sign a second, conflicting vote for every vote, and vote for every proposal seen."""
    invalid_proposals: bool = False
    """Propose blocks with a wrong state root."""
    withhold_votes: bool = False
    """Never send own votes."""
    silent: bool = False
    """Send nothing at all."""
    spam: bool = False
    """Flood topics with garbage."""
    false_pol_votes: bool = False
    """Sign PoL votes against the evidence: accept what the verifier rejects, and the reverse."""
    rubber_stamp_data: bool = False
    """Pass every dataset's submitted report unread and vote it gold (`node.sim.data`)."""
    random_data_votes: bool = False
    """Audit verdicts and tier votes at random (`node.sim.data`)."""

    @property
    def is_honest(self) -> bool:
        return not self.names()

    def names(self) -> list[str]:
        return [n for n in BEHAVIOURS if getattr(self, n)]


BEHAVIOURS = ("equivocate", "invalid_proposals", "withhold_votes", "silent", "spam", "false_pol_votes",
              "rubber_stamp_data", "random_data_votes")
LIE = "a byzantine validator's verdict, against the evidence"
LIED_GAIN = 10
"""The made-up gain of a lying accepting verdict: new loss = base loss * (1 - 1/10)."""
MADE_UP_BASE_LOSS = 4_000_000
"""A base loss (micro-nats per token) for a lie about a bundle whose base was never measured."""
Verify = Callable[[Any, Any, bytes], Any]
"""`verify(materials, bundle, validator key) -> VerifyReport` (`node.pol.verifier.verify_bundle`)."""


def lie_about(verify: Verify) -> Verify:
    """A verifier that runs `verify` and reports the opposite verdict, signed by the same
    validator: an honest bundle is rejected with a replay divergence, a forged one accepted with
    a validation gain the chain's vote rule takes (an accepting vote)."""

    def lying_verify(materials: Any, bundle: Any, validator: bytes) -> Any:
        report = verify(materials, bundle, validator)
        v = report.verdict
        if report.accepted:
            rejection = PolRejection(Reason.REPLAY_DIVERGED, LIE)
            verdict = make_verdict(bundle.manifest, validator, rejection, v.base_loss, v.new_loss, v.segments)
            return replace(report, verdict=verdict, rejection=rejection)
        base = v.base_loss or MADE_UP_BASE_LOSS
        verdict = make_verdict(bundle.manifest, validator, None, base, base - base // LIED_GAIN, v.segments)
        return replace(report, verdict=verdict, rejection=None)

    return lying_verify


class ByzantineNetwork:
    """A node's network with a misbehaving outbox; everything else passes through."""

    def __init__(self, inner: Network, behaviour: Behaviour, key: PrivateKey, network_id: str,
                 rng: random.Random) -> None:
        self._inner = inner
        self.behaviour = behaviour
        self.key = key
        self.network_id = network_id
        self.rng = rng
        self._votes = topic_name(network_id, TOPIC_VOTES)
        self._proposals = topic_name(network_id, TOPIC_PROPOSALS)
        self._proposal_requests = protocol_name(network_id, PROTOCOL_PROPOSAL)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def publish(self, topic: str, data: bytes) -> None:
        b = self.behaviour
        if b.silent or (b.withhold_votes and topic == self._votes):
            return
        await self._inner.publish(topic, data)
        if b.equivocate and topic == self._votes:
            await self._equivocate(data)

    async def _equivocate(self, data: bytes) -> None:
        """Sign and send a vote conflicting with the one just sent."""
        try:
            vote = decode(VoteMsg, data).signed.vote
        except DecodingError:
            return
        if vote.validator != self.key.address:
            return
        other = NIL if vote.block_hash != NIL else self.rng.randbytes(32)
        await self._send_vote(replace(vote, block_hash=other))

    async def _send_vote(self, vote: Vote) -> None:
        signed = sign_vote(self.key, self.network_id, vote)
        await self._inner.publish(self._votes, codec.encode(VoteMsg(signed)))

    async def request(self, peer: PeerId, protocol: str, data: bytes, timeout: float,
                      max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> bytes:
        response = await self._inner.request(peer, protocol, data, timeout, max_response_bytes)
        if self.behaviour.equivocate and protocol == self._proposal_requests:
            try:
                found = decode(ProposalResponse, response, max_size=max_response_bytes).found
            except DecodingError:
                found = None
            if found is not None:
                await self._vote_for(found)
        return response

    async def _vote_for(self, msg: ProposalMsg) -> None:
        p = msg.signed.proposal
        for step in (1, 2):
            await self._send_vote(Vote(p.chain_id, p.height, p.round, step, p.block_hash, self.key.address))

    def subscribe(self, topic: str, handler: GossipHandler, max_bytes: int = MAX_GOSSIP_BYTES) -> None:
        if self.behaviour.equivocate and topic == self._proposals:
            handler = self._voting_for_anything(handler)
        self._inner.subscribe(topic, handler, max_bytes)

    def _voting_for_anything(self, handler: GossipHandler) -> GossipHandler:
        """Prevote and precommit every block proposed, whatever else was signed, at whatever
        height its own engine is (a past height included): all that is not rejected."""

        async def on_proposal(peer: PeerId, data: bytes) -> Verdict:
            verdict = await handler(peer, data)
            if verdict is not Verdict.REJECT:
                await self._vote_for(decode(ProposalMsg, data))
            return verdict

        return on_proposal


class InvalidBlockBuilder(BlockBuilder):
    """Proposes blocks whose state root is wrong (the rest of the block is honest)."""

    def build(self, state: State, candidates: list[Transaction], ctx: Context, proposer: bytes, time_ms: int,
              last_commit: CommitCertificate | None,
              next_validators: ValidatorSet) -> tuple[Block, list[tuple[Transaction, Exception]]]:
        block, rejected = super().build(state, candidates, ctx, proposer, time_ms, last_commit, next_validators)
        bad_root = bytes(32) if block.header.state_root != bytes(32) else b"\x01" * 32
        return replace(block, header=replace(block.header, state_root=bad_root)), rejected


async def spam(network: Network, network_id: str, rng: random.Random) -> None:
    """Flood the transaction, vote and proposal topics with garbage, forever."""
    while True:
        junk = rng.randbytes(rng.randrange(1, 200))
        for name in (TOPIC_TXS, TOPIC_VOTES, TOPIC_PROPOSALS):
            try:
                await network.publish(topic_name(network_id, name), junk)
            except BlyanError:
                pass
        await trio.sleep(SPAM_INTERVAL_S)
