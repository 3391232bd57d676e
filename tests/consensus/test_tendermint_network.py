"""Tendermint state machine (consensus/tendermint.py): four machines with real Ed25519 keys in
one loop, delivering every message instantly (or after a seeded random latency) and firing
timeouts in deadline order. Agreement and termination, with and without a faulty validator.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.commit import sign_vote, validate_evidence, validate_signed_vote, verify_commit
from chain.crypto import PrivateKey, sha256
from chain.types import make_validator_set
from chain.votes import NIL, CommitCertificate, SignedVote, Vote
from consensus.messages import Proposal, SignedProposal, sign_proposal, validate_signed_proposal
from consensus.proposer import compute_proposer
from consensus.tendermint import (
    Action,
    BroadcastProposal,
    BroadcastVote,
    Decide,
    ReportEvidence,
    RequestValue,
    ScheduleTimeout,
    Tendermint,
    TendermintConfig,
)

NET = "test-net"
CHAIN = 0
H = 1
B = b"\xbb" * 32
CONFIG = TendermintConfig.for_tests()


# --- a tiny network: four machines, instant delivery, timeouts in deadline order -----------


def block_hash_for(height: int, round: int, proposer: bytes) -> bytes:
    return sha256(b"block" + height.to_bytes(8, "big") + round.to_bytes(4, "big") + proposer)


@dataclass
class Network:
    """The engines of all nodes in one loop: sign, check, gossip (to the sender too), keep time.

    Messages and timeouts share one queue ordered by virtual time. With `seed`, each message
    takes a random latency of up to `max_latency_ms`; without, delivery is instant and in order.
    """

    powers: tuple[int, ...] = (10, 10, 10, 10)
    silent: frozenset[int] = frozenset()
    seed: int | None = None
    max_latency_ms: int = 0
    invalid: frozenset[bytes] = frozenset()
    equivocating_proposer: bool = False
    double_voters: frozenset[int] = frozenset()
    height: int = H
    now: int = 0
    machines: dict[bytes, Tendermint] = field(default_factory=dict)
    decisions: dict[bytes, Decide] = field(default_factory=dict)
    evidence: list[ReportEvidence] = field(default_factory=list)
    signed: dict[tuple[bytes, int, int], bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ks = [PrivateKey.from_label(f"net-{i}") for i in range(len(self.powers))]
        self.vals = make_validator_set(0, [(k.public_key, p) for k, p in zip(ks, self.powers, strict=True)])
        self.keys = {k.address: k for k in ks}
        self.order = [v.address for v in self.vals.validators]
        self.machines = {
            a: Tendermint(CHAIN, self.height, self.vals, a, CONFIG)
            for i, a in enumerate(self.order) if i not in self.silent
        }
        self.queue: list[tuple[int, int, bytes, object]] = []
        self.seq = itertools.count()
        self.rng = random.Random(self.seed)

    def proposer(self, round: int) -> int:
        return self.order.index(compute_proposer(self.vals, self.height, round))

    def push(self, delay_ms: int, to: bytes, item: object) -> None:
        heapq.heappush(self.queue, (self.now + delay_ms, next(self.seq), to, item))

    def gossip(self, msg: object) -> None:
        for to in self.machines:
            self.push(self.rng.randint(0, self.max_latency_ms), to, msg)

    def handle(self, me: bytes, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, RequestValue):
                self.push(0, me, ("value", block_hash_for(a.height, a.round, me)))
            elif isinstance(a, BroadcastProposal):
                self.broadcast_proposal(me, a.proposal)
            elif isinstance(a, BroadcastVote):
                self.broadcast_vote(me, a.vote)
            elif isinstance(a, ScheduleTimeout):
                self.push(a.delay_ms, me, a)
            elif isinstance(a, Decide):
                verify_commit(CHAIN, a.height, a.block_hash, a.commit, self.vals, NET)
                self.decisions[me] = a
                self.gossip(a.commit)  # what block sync would serve to peers still deciding
            else:
                self.evidence.append(a)

    def broadcast_vote(self, me: bytes, v: Vote) -> None:
        earlier = self.signed.setdefault((me, v.round, v.step), v.block_hash)
        assert earlier == v.block_hash, "the machine asked for a double sign"
        sv = sign_vote(self.keys[me], NET, v)
        if self.order.index(me) not in self.double_voters:
            self.gossip(sv)
            return
        other = replace(v, block_hash=B if v.block_hash == NIL else NIL)
        twin = sign_vote(self.keys[me], NET, other)
        for i, to in enumerate(self.machines):  # a Byzantine validator: each half sees one first
            first, second = (sv, twin) if i % 2 else (twin, sv)
            delay = self.rng.randint(0, self.max_latency_ms)
            self.push(delay, to, first)
            self.push(delay + self.max_latency_ms + 1, to, second)

    def broadcast_proposal(self, me: bytes, proposal: Proposal) -> None:
        sp = sign_proposal(self.keys[me], NET, proposal)
        validate_signed_proposal(sp, NET, self.vals)
        if not (self.equivocating_proposer and proposal.round == 0):
            self.gossip(sp)
            return
        other = replace(proposal, block_hash=sha256(b"other" + proposal.block_hash))
        twin = sign_proposal(self.keys[me], NET, other)
        for i, to in enumerate(self.machines):  # half the nodes see one block, half the other
            self.push(self.rng.randint(0, self.max_latency_ms), to, sp if i % 2 else twin)

    def deliver(self, to: bytes, item: object) -> None:
        m = self.machines[to]
        if isinstance(item, tuple):
            out = m.on_value(item[1])
        elif isinstance(item, ScheduleTimeout):
            out = m.on_timeout(item.kind, item.height, item.round)
        elif isinstance(item, SignedProposal):
            out = m.on_proposal(item, item.proposal.block_hash not in self.invalid)
        elif isinstance(item, CommitCertificate):
            verify_commit(CHAIN, item.height, item.block_hash, item, self.vals, NET)
            out = m.on_commit(item)
        else:
            assert isinstance(item, SignedVote)
            validate_signed_vote(item, NET, self.vals)
            out = m.on_vote(item)
        self.handle(to, out)

    def run(self, max_events: int = 20_000, drain: bool = False) -> dict[bytes, Decide]:
        """Until every machine decided (then, with `drain`, until nothing is left to deliver)."""
        for addr, m in self.machines.items():
            self.handle(addr, m.start())
        for _ in range(max_events):
            if not self.queue or (len(self.decisions) == len(self.machines) and not drain):
                break
            self.now, _, to, item = heapq.heappop(self.queue)
            self.deliver(to, item)
        return self.decisions


def test_network_all_decide_same_block_in_round_0() -> None:
    net = Network()
    decisions = net.run()
    assert len(decisions) == 4
    proposer = net.vals.validators[net.proposer(0)].address
    expected = (0, block_hash_for(H, 0, proposer))
    assert {(d.round, d.block_hash) for d in decisions.values()} == {expected}
    assert net.now == 0  # no timeout was needed
    assert net.evidence == []


def test_network_one_silent_validator_still_decides() -> None:
    probe = Network()
    silent = next(i for i in range(4) if i != probe.proposer(0))
    net = Network(silent=frozenset({silent}))
    decisions = net.run()
    assert len(decisions) == 3
    assert {(d.round, d.block_hash) for d in decisions.values()} == {
        (0, block_hash_for(H, 0, net.vals.validators[net.proposer(0)].address))
    }


def test_network_silent_proposer_decides_in_round_1_after_timeouts() -> None:
    probe = Network()
    net = Network(silent=frozenset({probe.proposer(0)}))
    decisions = net.run()
    assert len(decisions) == 3
    proposer_1 = net.vals.validators[net.proposer(1)].address
    expected = (1, block_hash_for(H, 1, proposer_1))
    assert {(d.round, d.block_hash) for d in decisions.values()} == {expected}
    assert net.now >= CONFIG.timeout_propose_ms  # round 0 ended by timeouts


def test_network_invalid_proposal_moves_to_next_round() -> None:
    probe = Network()
    bad = block_hash_for(H, 0, probe.vals.validators[probe.proposer(0)].address)
    net = Network(invalid=frozenset({bad}))
    decisions = net.run()
    assert len(decisions) == 4
    assert {d.round for d in decisions.values()} == {1}
    assert bad not in {d.block_hash for d in decisions.values()}


@pytest.mark.parametrize("seed", range(12))
def test_network_random_delivery_order_agrees(seed: int) -> None:
    powers = (10, 20, 25, 25)  # any one validator holds less than 1/3
    probe = Network(powers=powers)
    silent = frozenset({probe.proposer(0)}) if seed % 3 == 0 else frozenset()
    net = Network(seed=seed, silent=silent, powers=powers)
    decisions = net.run()
    assert len(decisions) == len(net.machines)
    assert len({d.block_hash for d in decisions.values()}) == 1


def test_network_consecutive_heights_rotate_proposers() -> None:
    proposers = []
    for height in range(1, 6):
        net = Network(height=height)
        decisions = net.run()
        assert len({d.block_hash for d in decisions.values()}) == 1 and len(decisions) == 4
        proposers.append(net.proposer(0))
    assert len(set(proposers[:4])) == 4


@pytest.mark.parametrize("seed", range(8))
def test_network_random_latency_agrees_and_decides(seed: int) -> None:
    net = Network(seed=seed, max_latency_ms=700, powers=(10, 20, 25, 25))
    decisions = net.run()
    assert len(decisions) == 4
    assert len({d.block_hash for d in decisions.values()}) == 1


@pytest.mark.parametrize("seed", range(6))
def test_network_equivocating_proposer_cannot_split_the_decision(seed: int) -> None:
    net = Network(seed=seed, max_latency_ms=200 * (seed % 3), equivocating_proposer=True)
    decisions = net.run()
    assert len(decisions) == 4
    assert len({d.block_hash for d in decisions.values()}) == 1


@pytest.mark.parametrize("seed", range(4))
def test_network_double_voter_is_reported_and_cannot_split_the_decision(seed: int) -> None:
    net = Network(seed=seed, max_latency_ms=300, double_voters=frozenset({seed % 4}))
    decisions = net.run(drain=True)
    honest = [a for i, a in enumerate(net.order) if i != seed % 4]
    assert all(a in decisions for a in honest)
    assert len({decisions[a].block_hash for a in honest}) == 1
    assert net.evidence
    for report in net.evidence:
        validate_evidence(report.evidence, NET, net.vals)
        assert report.evidence.vote_a.vote.validator == net.order[seed % 4]


@settings(max_examples=40)
@given(
    seed=st.integers(0, 2**32 - 1),
    latency=st.sampled_from([0, 50, 400, 1500]),
    fault=st.sampled_from(["none", "silent", "double", "equivocating-proposer"]),
    who=st.integers(0, 3),
)
def test_network_agreement_and_termination_with_one_fault(
    seed: int, latency: int, fault: str, who: int
) -> None:
    net = Network(
        seed=seed,
        max_latency_ms=latency,
        silent=frozenset({who}) if fault == "silent" else frozenset(),
        double_voters=frozenset({who}) if fault == "double" else frozenset(),
        equivocating_proposer=fault == "equivocating-proposer",
    )
    decisions = net.run()
    faulty = {who} if fault in ("silent", "double") else set()
    honest = [a for i, a in enumerate(net.order) if i not in faulty]
    assert all(a in decisions for a in honest)
    assert len({decisions[a].block_hash for a in honest}) == 1


def test_network_replays_exactly_for_a_seed() -> None:
    runs = [Network(seed=7, max_latency_ms=900, double_voters=frozenset({2})) for _ in range(2)]
    outcomes = [
        (sorted((a, d.round, d.block_hash) for a, d in net.run().items()), net.now) for net in runs
    ]
    assert outcomes[0] == outcomes[1]
