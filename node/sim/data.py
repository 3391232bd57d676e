"""The data-quality workload of a simulation: contributors who submit real content (clean, or
laden with personal data, toxic, or a near-duplicate, those three under a forged report), and
on every node the daemon's own content service and data service.

    each node:      a DatasetStore (its directory survives its crashes), the content service
                    (serves what it holds), and the DataService: a validator fetches each
                    submission from its holders, reruns the real L0 audit, scores it (L1, no
                    model in a plain run) and signs what it computed
    a submission:   the workload draws a kind, makes the content, computes the real L0 report on
                    the chain's state at its anchor (a forger then clears the report's findings,
                    so the policy admits it), does the proof of work, and hands the content to a
                    live honest node (its "own" node, which serves it) and the transaction to any
    byzantine:      `rubber_stamp_data` passes every report unread and votes gold;
                    `random_data_votes` verdicts and tiers at random: both lose reputation

Invariants (`check`): no dataset of a bad kind is approved; for each submission every honest
validator that audited it computed the same report, and for honest submissions the submitted one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from chain import codec
from chain.crypto import PrivateKey
from chain.dataset import compute_honeypot_commitment, compute_reputation_factor, get_voter, solve_pow
from chain.pact import GenesisPact
from chain.params import TIER_GOLD, TIER_NAMES
from chain.payloads import AuditReport, AuditVerdict, QualityVote, RevealHoneypot, SubmitDataset
from chain.records import STATUS_APPROVED, STATUS_NAMES, STATUS_REJECTED, DatasetRecord, dataset_key, honeypot_key
from chain.state import Overlay, State
from chain.store import ChainStore
from chain.types import CHAIN_DATASET, Transaction
from chain.unixfs import compute_dataset_cid
from node.data.content import DatasetStore
from node.data.held import HeldDatasets
from node.data.l0.audit import run_l0_audit
from node.data.service import DataService
from node.data.transfer import ContentService, fetch_dataset, run_inline
from node.engine.engine import Engine
from node.sim.honeypots import make_honeypots
from node.sim.workload import Client, sign

KINDS = ("clean", "clean", "clean", "clean", "pii", "toxic", "near-duplicate")
BAD_KINDS = frozenset({"pii", "toxic", "near-duplicate"})
WORDS = (
    "river", "garden", "morning", "library", "window", "orange", "mountain", "quiet", "letter", "market",
    "silver", "lantern", "meadow", "harbor", "pencil", "winter", "violin", "forest", "candle", "bridge",
    "summer", "planet", "kitchen", "ribbon", "island", "travel", "engine", "basket", "thunder", "pillow",
    "science", "history", "journey", "festival", "painting", "village", "station", "picnic", "compass",
    "recipe", "blanket", "feather", "bicycle", "cottage", "sunrise", "orchard", "chapter", "melody",
)
INSULTS = ("you are a stupid idiot", "shut up you worthless moron", "what a pathetic loser you are",
           "you dumb fool, nobody likes you")


def make_clean(rng: random.Random, lines: int = 48) -> bytes:
    out = []
    for _ in range(lines):
        out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randrange(7, 15))).capitalize() + ".")
    return ("\n".join(out) + "\n").encode()


def make_luhn_card(rng: random.Random) -> str:
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        d = d * 2 if i % 2 == 0 else d
        total += d - 9 if d > 9 else d
    digits.append((10 - total % 10) % 10)
    s = "".join(map(str, digits))
    return f"{s[:4]} {s[4:8]} {s[8:12]} {s[12:]}"


def make_content(kind: str, rng: random.Random, earlier: list[bytes]) -> bytes:
    if kind == "pii":
        lines = make_clean(rng).decode().splitlines()
        for i in range(0, len(lines), 6):
            lines[i] += f" Write to person{rng.randrange(10_000)}@mailbox.co.uk or pay with {make_luhn_card(rng)}."
        return ("\n".join(lines) + "\n").encode()
    if kind == "toxic":
        lines = make_clean(rng).decode().splitlines()
        for i in range(0, len(lines), 3):
            lines[i] = rng.choice(INSULTS) + f" {rng.choice(WORDS)} {i}"
        return ("\n".join(lines) + "\n").encode()
    if kind == "near-duplicate" and earlier:
        lines = rng.choice(earlier).decode().splitlines()
        lines[rng.randrange(len(lines))] = " ".join(rng.choice(WORDS) for _ in range(9)) + "."
        return ("\n".join(lines) + "\n").encode()
    return make_clean(rng)


def forge_clean(report: AuditReport) -> AuditReport:
    """What a forger submits: the real report with its findings cleared."""
    return replace(report, pii=(), toxicity_flagged=0, duplicate_records=0, near_duplicates=())


@dataclass
class Submitted:
    kind: str
    cid: str
    submission: bytes
    host: str


@dataclass
class DataWorld:
    """Per run: the content of each submission, who hosts it, and each node's data services."""

    pact: GenesisPact
    workdir: Path
    held: HeldDatasets = field(init=False)
    submitted: dict[bytes, Submitted] = field(default_factory=dict)
    clean_contents: list[tuple[bytes, bytes]] = field(default_factory=list)
    """(submission, content) of the clean datasets submitted."""
    services: dict[str, DataService] = field(default_factory=dict)
    honeypots: dict[bytes, str] = field(default_factory=dict)
    """Submission -> CID of the honeypots submitted."""
    revealed: set[bytes] = field(default_factory=set)
    stores: dict[str, DatasetStore] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.held = HeldDatasets(self.pact.params.dataset.audit, ())

    def store_of(self, name: str) -> DatasetStore:
        if name not in self.stores:
            self.stores[name] = DatasetStore(self.workdir / name / "datasets")
        return self.stores[name]

    async def run_node_services(self, name: str, key: PrivateKey, engine: Engine, behaviour: Any,
                                nursery: trio.Nursery, rng: random.Random) -> None:
        store = self.store_of(name)
        content = ContentService(self.pact.network_id, store, offload=run_inline)
        content.register(engine.network)
        max_size = self.pact.params.dataset.max_dataset_bytes

        async def fetch(cid: str, size: int) -> bytes:
            await fetch_dataset(engine.network, list(engine.network.peers()), cid, store,
                                network_id=self.pact.network_id, max_size=min(size, max_size), offload=run_inline)
            return store.read(cid)

        cls = DataService
        if getattr(behaviour, "rubber_stamp_data", False):
            cls = RubberStamp
        elif getattr(behaviour, "random_data_votes", False):
            cls = RandomVoter
        service = cls(engine, key, store, self.held, self.workdir / name / "data-reports", fetch=fetch,
                      name=name, offload=False)
        if isinstance(service, RandomVoter):
            service.rng = rng
        self.services[name] = service
        await nursery.start(service.run)

    def submit_honeypot(self, cluster: Any, client: Client, host: str) -> Transaction | None:
        """The next honeypot not submitted yet, with its real report, like any other dataset
        (None: all are submitted, or no node is up)."""
        store = cluster.reference_store()
        pending = [h for h in make_honeypots() if h.cid not in self.honeypots.values()]
        if store is None or not pending:
            return None
        h = pending[0]
        tx = self._sign_submission(store.state(CHAIN_DATASET), client, h.data, h.cid, forge=False)
        self.store_of(host).put_verified(h.cid, h.data)
        self.honeypots[tx.hash()] = h.cid
        self.submitted[tx.hash()] = Submitted("honeypot", h.cid, tx.hash(), host)
        return tx

    def reveal_honeypots(self, cluster: Any, operator: Client) -> list[Transaction]:
        """RevealHoneypot for each honeypot whose votes closed and whose label is not revealed yet."""
        store = cluster.reference_store()
        if store is None:
            return []
        state = store.state(CHAIN_DATASET)
        by_cid = {h.cid: h for h in make_honeypots()}
        out = []
        for sub, cid in self.honeypots.items():
            h = by_cid[cid]
            rec = Overlay(state).get_record(dataset_key(sub), DatasetRecord)
            if rec is None or rec.status not in (STATUS_APPROVED, STATUS_REJECTED) or sub in self.revealed:
                continue
            if state.get(honeypot_key(compute_honeypot_commitment(cid, h.tier, h.salt))) is not None:
                continue
            self.revealed.add(sub)
            out.append(sign(operator, RevealHoneypot(sub, h.tier, h.salt), CHAIN_DATASET))
        return out

    def _sign_submission(self, state: State, client: Client, data: bytes, cid: str, forge: bool) -> Transaction:
        params = self.pact.params.dataset
        report = run_l0_audit(data, cid=cid, format="text", anchor_height=state.height, params=params.audit,
                              index=self.held.index_at(state, state.height))
        if forge:
            report = forge_clean(report)
        nonce = solve_pow(self.pact.network_id, client.key.address, cid, state.head, params.pow_difficulty_bits)
        payload = SubmitDataset(cid, len(data), "text", "CC-BY-4.0", state.height, state.head, nonce, report)
        return sign(client, payload, CHAIN_DATASET)

    def submit(self, cluster: Any, client: Client, host: str, rng: random.Random) -> Transaction | None:
        """One dataset of a drawn kind from `client`, content held by `host`: the signed
        submission (None: no node is up to anchor it on)."""
        store = cluster.reference_store()
        if store is None:
            return None
        kind = rng.choice(KINDS)
        state = store.state(CHAIN_DATASET)
        # a near-duplicate copies a clean dataset the chain holds at the anchor (one still
        # pending in a mempool is not held: the audit would rightly not see it)
        held = [data for sub, data in self.clean_contents if state.get(dataset_key(sub)) is not None]
        if kind == "near-duplicate" and not held:
            kind = "clean"
        data = make_content(kind, rng, held)
        cid = compute_dataset_cid(data)
        tx = self._sign_submission(state, client, data, cid, forge=kind in BAD_KINDS)
        self.store_of(host).put_verified(cid, data)
        if kind == "clean":
            self.clean_contents.append((tx.hash(), data))
        self.submitted[tx.hash()] = Submitted(kind, cid, tx.hash(), host)
        return tx

    # --- invariants ---------------------------------------------------------------------------

    def check(self, stores: dict[str, ChainStore], honest: set[str]) -> dict[str, Any]:
        """No bad kind approved; honest validators' reports agree (and match honest submissions)."""
        problems: list[str] = []
        ref = next(iter(stores.values()))
        state = ref.state(CHAIN_DATASET)
        outcomes: dict[str, int] = {}
        for sub, s in self.submitted.items():
            rec = Overlay(state).get_record(dataset_key(sub), DatasetRecord)
            if rec is None:
                continue
            outcome = f"{s.kind}:{STATUS_NAMES[rec.status]}" + (f"/{TIER_NAMES[rec.tier]}"
                                                                if rec.status == STATUS_APPROVED else "")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if s.kind in BAD_KINDS and rec.status == STATUS_APPROVED:
                problems.append(f"{s.kind} dataset {s.cid} approved")
            hashes = {name: codec.hash_of(svc.work[sub].report) for name, svc in self.services.items()
                      if name in honest and sub in svc.work and svc.work[sub].report is not None}
            if len(set(hashes.values())) > 1:
                problems.append(f"honest validators computed different reports for {s.cid}: {sorted(hashes)}")
            if s.kind not in BAD_KINDS and hashes and set(hashes.values()) != {rec.report_hash}:
                problems.append(f"honest validators' report of the honest dataset {s.cid} is not the submitted one")
        factors = {name: compute_reputation_factor(get_voter(Overlay(state), svc.key.address), self.pact.params.dataset)
                   for name, svc in self.services.items() if svc.key is not None}
        revealed = sum(state.get(honeypot_key(c)) is not None for c in self.pact.params.dataset.honeypots)
        return {"ok": not problems, "problems": problems[:20], "outcomes": dict(sorted(outcomes.items())),
                "honeypots_revealed": revealed,
                "reputation_ppm": dict(sorted(factors.items()))}


class RubberStamp(DataService):
    """Passes every submitted report unread, and votes gold on everything."""

    async def _audit(self, work: Any, rec: DatasetRecord, state: State) -> None:
        work.verdict_tx = self._send_tx(AuditVerdict(work.submission, True, rec.report_hash)).hash()
        work.verdict_sent = True

    async def _vote(self, work: Any, rec: DatasetRecord, state: State) -> None:
        work.vote_tx = self._send_tx(QualityVote(work.submission, TIER_GOLD, 1_000_000)).hash()
        work.vote_sent = True


class RandomVoter(DataService):
    """Verdicts and tiers at random (from the run's seed)."""

    rng: random.Random = random.Random(0)

    async def _audit(self, work: Any, rec: DatasetRecord, state: State) -> None:
        passed = self.rng.random() < 0.5
        report_hash = rec.report_hash if passed else codec.sha256(work.submission)
        work.verdict_tx = self._send_tx(AuditVerdict(work.submission, passed, report_hash)).hash()
        work.passed = passed
        work.verdict_sent = True

    async def _vote(self, work: Any, rec: DatasetRecord, state: State) -> None:
        work.vote_tx = self._send_tx(QualityVote(work.submission, self.rng.randrange(TIER_GOLD + 1),
                                                 self.rng.randrange(1_000_001))).hash()
        work.vote_sent = True
