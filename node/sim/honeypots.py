"""Honeypots of a simulation: golden datasets whose tiers are known, committed by hash in the
sim's genesis, submitted like any other dataset, and labelled once their votes closed.

The label of each is the tier the reference L1 score gives its content (the validators of a
plain sim run have no model, so the score comes from the L0 report's parts); the set is built
so that some labels are not gold, which is what a rubber stamp votes on everything.

    honeypots = make_honeypots()                       # (content, tier, salt) each, deterministic
    params.dataset.honeypots = commitments(honeypots)
"""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass

from chain.dataset import compute_honeypot_commitment
from chain.params import DatasetParams
from chain.unixfs import compute_dataset_cid
from genesis.params import devnet_params
from node.data.l0.audit import run_l0_audit
from node.data.l0.formats import parse_records
from node.data.l0.minhash import NearDuplicateIndex
from node.data.quality import score_dataset

WORDS = ("amber", "breeze", "canyon", "delta", "ember", "fjord", "glacier", "harvest", "indigo", "juniper",
         "kestrel", "lagoon", "marble", "nectar", "oasis", "prairie", "quartz", "raven", "sierra", "tundra")


@dataclass(frozen=True, slots=True)
class Honeypot:
    data: bytes
    cid: str
    tier: int
    salt: bytes


def _lines(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randrange(8, 14))).capitalize() + "." for _ in range(n)]


def _contents() -> list[bytes]:
    rng = random.Random(20261203)
    clean = _lines(rng, 40)
    repetitive = _lines(rng, 28)
    repetitive += repetitive[:12]  # 12 of 40 records repeat an earlier one (30 %: at the policy's limit)
    contacts = _lines(rng, 40)
    for i in range(3):  # three findings, under the policy's four
        contacts[i * 9] += f" Reach Sam at sam.{i}@fastmail.fm."
    return [("\n".join(lines) + "\n").encode() for lines in (clean, repetitive, contacts)]


def label_of(data: bytes, params: DatasetParams) -> int:
    cid = compute_dataset_cid(data)
    report = run_l0_audit(data, cid=cid, format="text", anchor_height=0, params=params.audit,
                          index=NearDuplicateIndex(params.audit))
    records = parse_records(data, "text", params.audit.max_record_bytes).records
    return score_dataset(report, records, params.policy).tier


@functools.cache
def make_honeypots() -> tuple[Honeypot, ...]:
    params = devnet_params().dataset
    out = []
    for i, data in enumerate(_contents()):
        salt = hashlib.sha256(f"blyan-sim-honeypot/{i}".encode()).digest()
        out.append(Honeypot(data, compute_dataset_cid(data), label_of(data, params), salt))
    return tuple(out)


def commitments(honeypots: tuple[Honeypot, ...]) -> tuple[bytes, ...]:
    return tuple(compute_honeypot_commitment(h.cid, h.tier, h.salt) for h in honeypots)
