"""Duties of the validators' operators that the simulator still scripts by hand.

This is a stand-in, named as such: no code of the project computes these verdicts yet.
`audit_and_vote`: each honest validator signs an audit verdict that re-states a passing L0
report and a quality tier drawn from its address (no audit program runs: the data-quality issue
replaces this with the real audit service).

Deltas are not scripted: in a learning run every validator runs the PoL service with the real
verifier and signs the votes it computed (`node.sim.learning`).
"""

from __future__ import annotations

from chain import codec, crypto
from chain.dataset import REQUIRED_CHECKS
from chain.pact import GenesisPact
from chain.payloads import (
    AuditCheck,
    AuditReport,
    AuditVerdict,
    QualityVote,
)
from chain.records import (
    STATUS_AUDITED,
    STATUS_PENDING,
    STATUS_VOTED,
    DatasetRecord,
    dataset_key,
)
from chain.state import State
from chain.transition import get_nonce
from chain.types import CHAIN_DATASET, Transaction
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
