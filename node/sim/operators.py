"""Duties of the validators' operators that the simulator still scripts by hand.

These are stand-ins, named as such: no code of the project computes these verdicts yet.
- `audit_and_vote`: each honest validator signs an audit verdict that re-states a passing L0
  report and a quality tier drawn from its address (no audit program runs: the data-quality
  issue replaces this with the real audit service);
- `make_delta_submission`: a delta claim with a random blob id and a PoL certificate of
  constant votes (no training or replay runs: the Learning issues replace this with real
  bundles and the real verifier).
"""

from __future__ import annotations

import random

from chain import codec, crypto
from chain.dataset import REQUIRED_CHECKS
from chain.pact import GenesisPact
from chain.payloads import (
    AuditCheck,
    AuditReport,
    AuditVerdict,
    DeltaClaim,
    PolCertificate,
    PolVote,
    QualityVote,
    SignedPolVote,
    SubmitDelta,
)
from chain.records import (
    STATUS_AUDITED,
    STATUS_PENDING,
    STATUS_VOTED,
    DatasetRecord,
    ExpertState,
    dataset_key,
    expert_key,
)
from chain.state import State
from chain.transition import get_nonce
from chain.types import CHAIN_DATASET, CHAIN_PARAMETER, Transaction
from node.sim.scenario import SIM_EXPERT, SIM_NETWORK
from node.sim.workload import Client, sign

MAX_OWED_PER_TICK = 16


def compute_owed(state: State, pact: GenesisPact, datasets: list[bytes], who: bytes) -> list[object]:
    """The audit verdicts and quality votes validator `who` still owes, in dataset order."""
    owed: list[object] = []
    for submission in datasets:
        raw = state.get(dataset_key(submission))
        if raw is None:
            continue
        rec = codec.decode(DatasetRecord, raw)
        if rec.status == STATUS_PENDING and who not in rec.audit_voters:
            rerun = AuditReport(rec.cid, rec.size, pact.params.dataset.audit_version,
                                tuple(AuditCheck(name, True, "ok") for name in REQUIRED_CHECKS))
            owed.append(AuditVerdict(submission, True, codec.hash_of(rerun)))
        elif rec.status in (STATUS_AUDITED, STATUS_VOTED) and who not in rec.tier_voters:
            tier = 2 + int.from_bytes(codec.sha256(who + submission)[:1], "big") % 2
            owed.append(QualityVote(submission, tier))
    return owed


def audit_and_vote(state: State, pact: GenesisPact, datasets: list[bytes], key: crypto.PrivateKey) -> list[Transaction]:
    """What one validator's operator signs this tick, with nonces from its committed one:
    unchanged needs give identical transactions (so they dedup), and what the chain already
    took drops out."""
    who = key.address
    nonce = get_nonce(state, who)
    owed = compute_owed(state, pact, datasets, who)
    return [sign(Client(key), payload, CHAIN_DATASET, nonce + i) for i, payload in enumerate(owed[:MAX_OWED_PER_TICK])]


def make_delta_submission(state: State, contributor: Client, voters: list[crypto.PrivateKey],
                          rng: random.Random) -> Transaction:
    """A delta on the simulation's expert, certified by constant PoL votes of `voters`."""
    expert = codec.decode(ExpertState, state.get(expert_key(SIM_EXPERT.name)))
    claim = DeltaClaim(SIM_EXPERT.name, expert.head, expert.last_round + 1, rng.randbytes(32), 1024,
                       "int8", 250_000, contributor.key.address)
    claim_hash = codec.hash_of(claim)
    votes = []
    for key in sorted(voters, key=lambda k: k.address):
        vote = PolVote(claim_hash, 2_000_000, 1_900_000, True, key.address)
        votes.append(SignedPolVote(vote, key.sign(SIM_NETWORK, crypto.KIND_POL_VOTE, codec.encode(vote))))
    return sign(contributor, SubmitDelta(claim, PolCertificate(tuple(votes))), CHAIN_PARAMETER)
