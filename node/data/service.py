"""The validators' data service: every submitted dataset audited again, and voted on.

    a dataset block commits ──> the dataset records it changed
      pending, not audited here:  fetch the content (the submitter, any holder, else IPFS), rerun
                                  the L0 audit at the submission's anchor height   -> AuditVerdict
                                  (passed exactly when this report's hash is the submitted one's)
      audited, not voted here:    the L1 score of the content                       -> QualityVote
      approved, held here:        pinned on the node's IPFS daemon, when it has one

Audits and scores run in a worker thread, one at a time (`CapacityLimiter(1)`); the queue is
bounded and a full queue is counted. What this validator computed (its report, verdict, score)
is kept under `reports_dir`, so a restart neither recomputes nor signs twice, and `describe`
shows it (`blyan dataset status`). A node that is not a validator follows and keeps nothing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from chain import codec, crypto
from chain.crypto import PrivateKey
from chain.errors import BlyanError, DecodingError
from chain.payloads import AuditReport, AuditVerdict, QualityVote
from chain.records import (
    STATUS_APPROVED,
    STATUS_AUDITED,
    STATUS_PENDING,
    STATUS_VOTED,
    DatasetRecord,
    dataset_key,
    is_dataset_key,
)
from chain.state import Overlay, State
from chain.types import CHAIN_DATASET, Transaction, TxBody
from node.core.feed import Committed
from node.core.ports import NodeHandle
from node.data.content import DatasetStore
from node.data.held import HeldDatasets
from node.data.l0.audit import run_l0_audit
from node.data.l0.formats import parse_records
from node.data.quality import Embed, Perplexity, QualityScore, score_dataset

logger = logging.getLogger(__name__)

FetchContent = Callable[[str, int], Awaitable[bytes]]
"""(CID, size) -> the verified content, fetched into the node's dataset store if needed;
raises a BlyanError (`DatasetUnavailable`) when no source has it."""
Pin = Callable[[str, bytes], None]
"""(CID, content) -> None: pin on the node's IPFS daemon (synchronous; run in a thread)."""

QUEUE = 256
FEED_QUEUE = 4096
RETRY_FIRST_S = 2.0
"""A submission whose step failed (its content could not be fetched, a transaction refused) is
tried again after this, then after twice as long each time, up to RETRY_MAX_S: a holder that was
offline or partitioned away comes back, and no later block need touch the record to wake it."""
RETRY_MAX_S = 60.0
RECHECK_S = 10.0
"""How often a validator looks again at the submissions whose verdict or vote it sent but that
still wait for it: the transaction may have been dropped, or stuck behind a nonce that will
never come (an earlier transaction of ours that every mempool dropped), and with no new block
no commit would make it look."""


@dataclass
class Work:
    """What this validator did on one submission."""

    submission: bytes
    cid: str
    report: AuditReport | None = None
    verdict_tx: bytes = b""
    """Hash of the verdict sent (a pending one that the mempool dropped is sent again)."""
    vote_tx: bytes = b""
    verdict_sent: bool = False
    passed: bool | None = None
    score: QualityScore | None = None
    vote_sent: bool = False
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "submission": self.submission.hex(), "cid": self.cid, "verdict_sent": self.verdict_sent,
            "passed": self.passed, "report_hash": None if self.report is None else codec.hash_of(self.report).hex(),
            "score_ppm": None if self.score is None else self.score.score_ppm,
            "tier": None if self.score is None else self.score.tier,
            "parts": None if self.score is None else self.score.parts, "vote_sent": self.vote_sent,
            "error": self.error,
        }


class DataService:
    """A validator's audits and quality votes (every node runs it; only validators act)."""

    def __init__(self, node: NodeHandle, key: PrivateKey | None, store: DatasetStore, held: HeldDatasets,
                 reports_dir: Path, *, fetch: FetchContent, perplexity: Perplexity | None = None,
                 embed: Embed | None = None, pin: Pin | None = None, name: str = "", offload: bool = True) -> None:
        self.node = node
        self.key = key
        self.store = store
        self.held = held
        self.dir = Path(reports_dir)
        self.fetch = fetch
        self.perplexity = perplexity
        self.embed = embed
        self.pin = pin
        self.name = name or node.network.local_id
        self.offload = offload
        """Run audits and scores in a worker thread (False: inline, for the simulator's mock clock)."""
        self.work: dict[bytes, Work] = {}
        self.limiter = trio.CapacityLimiter(1)
        self.refused = 0
        """Submissions not worked on because the queue was full."""
        self.audits = 0
        self.votes = 0
        self._send, self._recv = trio.open_memory_channel[bytes](QUEUE)
        self._queued: set[bytes] = set()
        self._retry_after: dict[bytes, float] = {}
        """Submissions waiting to be tried again -> the delay of their next failure's retry."""
        self._sent_nonces: dict[bytes, int] = {}
        """Hash -> nonce of each verdict or vote sent and not yet seen final."""
        self._nursery: trio.Nursery | None = None
        self._load()

    # --- running ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[DataService] = trio.TASK_STATUS_IGNORED) -> None:
        feed = self.node.feed.subscribe("data", (Committed,), maxlen=FEED_QUEUE)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._worker)
                nursery.start_soon(self._recheck_loop)
                self._scan(self.node.store.state(CHAIN_DATASET))
                task_status.started(self)
                async for event in feed:
                    if event.chain_id == CHAIN_DATASET:
                        self.on_dataset_block(event)
        finally:
            self.node.feed.unsubscribe(feed)

    @property
    def is_validator(self) -> bool:
        return self.key is not None and self.node.validators().get(self.key.address) is not None

    def on_dataset_block(self, event: Committed) -> None:
        for key in event.changes:
            if is_dataset_key(key):
                self.enqueue(key[1:])

    def _scan(self, state: State) -> None:
        """At start: every open submission (this validator may owe it a verdict or a vote)."""
        for key, _ in state.items():
            if is_dataset_key(key):
                self.enqueue(key[1:])

    def enqueue(self, submission: bytes) -> bool:
        if not self.is_validator or submission in self._queued:
            return False
        try:
            self._send.send_nowait(submission)
        except trio.WouldBlock:
            self.refused += 1
            logger.warning("%s: data queue full (%d): submission %s waits for the next block", self.name, QUEUE,
                           submission.hex()[:16])
            return False
        self._queued.add(submission)
        return True

    async def _worker(self) -> None:
        async for submission in self._recv:
            self._queued.discard(submission)
            try:
                await self.step(submission)
            except DataRefused as err:
                if self._still_owed(submission):
                    self._note_error(submission, str(err))
                    self._schedule_retry(submission, str(err))
                else:  # the others decided first: nothing is owed any more, nothing to retry
                    self._retry_after.pop(submission, None)
                    logger.info("%s: dataset %s: closed before this validator's turn (%s)", self.name,
                                submission.hex()[:16], err)
            except (BlyanError, OSError) as err:
                self._note_error(submission, str(err))
                self._schedule_retry(submission, str(err))
            except Exception as err:  # noqa: BLE001 - a bug here must not stop the node's consensus
                self._note_error(submission, f"internal error: {type(err).__name__}: {err}")
                logger.exception("%s: dataset %s: internal error (a bug: please report it)", self.name,
                                 submission.hex()[:16])
            else:
                self._retry_after.pop(submission, None)

    async def _recheck_loop(self) -> None:
        """Every `RECHECK_S`: each submission whose duty this validator sent but that still
        waits for it goes through `step` again (which sends it anew if it was lost)."""
        while True:
            await trio.sleep(RECHECK_S)
            for submission, work in list(self.work.items()):
                if (work.verdict_sent or work.vote_sent) and self._still_owed(submission):
                    self.enqueue(submission)

    def _still_owed(self, submission: bytes) -> bool:
        """Whether the committed record still waits for this validator's verdict or vote."""
        rec = Overlay(self.node.store.state(CHAIN_DATASET)).get_record(dataset_key(submission), DatasetRecord)
        return rec is not None and self.key is not None and _owed(rec, self.key.address) is not None

    def _schedule_retry(self, submission: bytes, error: str) -> None:
        delay = self._retry_after.get(submission)
        first = delay is None
        delay = RETRY_FIRST_S if first else min(2 * delay, RETRY_MAX_S)
        self._retry_after[submission] = delay
        logger.warning("%s: dataset %s: %s (trying again in %g s)", self.name, submission.hex()[:16], error, delay)
        if self._nursery is not None:
            self._nursery.start_soon(self._retry, submission, delay)

    async def _retry(self, submission: bytes, delay: float) -> None:
        await trio.sleep(delay)
        if self._retry_after.get(submission) == delay:  # else: done meanwhile, or a newer failure's
            self.enqueue(submission)

    def _note_error(self, submission: bytes, error: str) -> None:
        work = self.work.get(submission)
        if work is not None:
            work.error = error

    # --- one submission -----------------------------------------------------------------------

    async def step(self, submission: bytes) -> None:
        """Do what this validator owes `submission` now: an audit verdict, a tier vote, a pin."""
        if not self.is_validator:
            return
        me = self.key.address
        state = self.node.store.state(CHAIN_DATASET)
        rec = Overlay(state).get_record(dataset_key(submission), DatasetRecord)
        if rec is None or rec.submitted_height == 0:
            return  # unknown, or a genesis dataset
        work = self.work.setdefault(submission, Work(submission, rec.cid))
        owed = _owed(rec, me)
        if owed == "verdict":
            if not work.verdict_sent:
                await self._audit(work, rec, state)
            elif work.report is not None and self._dropped(work.verdict_tx):
                work.verdict_tx = self._send_tx(AuditVerdict(submission, bool(work.passed),
                                                             codec.hash_of(work.report))).hash()
        elif owed == "vote":
            if not work.vote_sent:
                await self._vote(work, rec, state)
            elif work.score is not None and self._dropped(work.vote_tx):
                work.vote_tx = self._send_tx(QualityVote(submission, work.score.tier, work.score.score_ppm)).hash()
        elif rec.status == STATUS_APPROVED and self.pin is not None and self.store.has(rec.cid):
            data = self.store.read(rec.cid)
            await trio.to_thread.run_sync(self.pin, rec.cid, data)

    async def _content(self, rec: DatasetRecord) -> bytes:
        if self.store.has(rec.cid):
            return self.store.read(rec.cid)
        return await self.fetch(rec.cid, rec.size)

    async def _audit(self, work: Work, rec: DatasetRecord, state: State) -> None:
        data = await self._content(rec)
        await self.held.ready.wait()
        index = self.held.index_at(state, rec.anchor_height)
        params = self.node.store.pact.params.dataset

        def audit() -> AuditReport:
            return run_l0_audit(data, cid=rec.cid, format=rec.format, anchor_height=rec.anchor_height,
                                params=params.audit, index=index)

        work.report = await self._run(audit)
        report_hash = codec.hash_of(work.report)
        work.passed = report_hash == rec.report_hash
        work.verdict_tx = self._send_tx(AuditVerdict(work.submission, work.passed, report_hash)).hash()
        work.verdict_sent = True
        self.audits += 1
        self._save(work)
        logger.info("%s: audited %s (%s): %s", self.name, rec.cid[:20], work.submission.hex()[:16],
                    "the submitted report" if work.passed else "ANOTHER report than the submitted one")

    async def _vote(self, work: Work, rec: DatasetRecord, state: State) -> None:
        data = await self._content(rec)
        params = self.node.store.pact.params.dataset
        if work.report is None:  # audited by the others before this validator got to it
            await self.held.ready.wait()
            index = self.held.index_at(state, rec.anchor_height)
            work.report = await self._run(lambda: run_l0_audit(
                data, cid=rec.cid, format=rec.format, anchor_height=rec.anchor_height, params=params.audit,
                index=index))
        report = work.report

        def score() -> QualityScore:
            parsed = parse_records(data, rec.format, params.audit.max_record_bytes)
            return score_dataset(report, parsed.records, params.policy, perplexity=self.perplexity, embed=self.embed)

        work.score = await self._run(score)
        work.vote_tx = self._send_tx(QualityVote(work.submission, work.score.tier, work.score.score_ppm)).hash()
        work.vote_sent = True
        self.votes += 1
        self._save(work)
        logger.info("%s: voted tier %d on %s (score %.3f: %s)", self.name, work.score.tier, rec.cid[:20],
                    work.score.score, ", ".join(f"{k} {v:.2f}" for k, v in sorted(work.score.parts.items())))

    async def _run(self, fn: Callable[[], Any]) -> Any:
        if not self.offload:
            return fn()
        return await trio.to_thread.run_sync(fn, limiter=self.limiter)

    def _dropped(self, tx_hash: bytes) -> bool:
        """A transaction sent here that will not be final: neither pending nor on the chain (a
        mempool dropped it, or the node restarted), or pending behind a nonce gap (an earlier
        transaction of ours was dropped, so no block can take this one). Its duty is owed again;
        sent anew, it takes the missing nonce."""
        if not tx_hash:
            return True
        if self.node.store.get_tx_location(CHAIN_DATASET, tx_hash) is not None:
            self._sent_nonces.pop(tx_hash, None)
            return False
        if not self.node.is_pending(CHAIN_DATASET, tx_hash):
            return True
        nonce = self._sent_nonces.get(tx_hash)
        return nonce is not None and self.node.next_nonce(CHAIN_DATASET, self.key.address) < nonce

    def _send_tx(self, payload: object) -> Transaction:
        nonce = self.node.next_nonce(CHAIN_DATASET, self.key.address)
        body = TxBody(CHAIN_DATASET, self.key.public_key, nonce, payload)
        tx = Transaction(body, self.key.sign(self.node.network_id, crypto.KIND_TX, codec.encode(body)))
        result = self.node.submit_tx(tx)
        if not result.added:
            raise DataRefused(f"{type(payload).__name__} refused: {result.outcome.value}: {result.reason}")
        if len(self._sent_nonces) >= 4 * QUEUE:
            self._sent_nonces.clear()  # only the gap check loses them; a dropped one is still seen
        self._sent_nonces[tx.hash()] = nonce
        return tx

    # --- what it did --------------------------------------------------------------------------

    def describe(self, submission: bytes) -> dict[str, Any] | None:
        work = self.work.get(submission)
        return None if work is None else work.to_json()

    def describe_report(self, submission: bytes) -> AuditReport | None:
        work = self.work.get(submission)
        return None if work is None else work.report

    def _save(self, work: Work) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        base = self.dir / work.submission.hex()
        if work.report is not None:
            _write(base.with_suffix(".report"), codec.encode(work.report))
        _write(base.with_suffix(".json"), json.dumps(work.to_json()).encode())

    def _load(self) -> None:
        if not self.dir.is_dir():
            return
        for file in sorted(self.dir.glob("*.json")):
            try:
                info = json.loads(file.read_text())
                work = Work(bytes.fromhex(info["submission"]), str(info["cid"]),
                            verdict_sent=bool(info["verdict_sent"]), passed=info["passed"],
                            vote_sent=bool(info["vote_sent"]), error=str(info.get("error", "")))
                report_file = file.with_suffix(".report")
                if report_file.exists():
                    work.report = codec.decode(AuditReport, report_file.read_bytes())
                if info.get("score_ppm") is not None:
                    work.score = QualityScore(info["score_ppm"] / 1e6, int(info["tier"]), dict(info["parts"] or {}))
            except (OSError, ValueError, KeyError, TypeError, DecodingError) as err:
                logger.warning("%s: ignoring %s: %s", self.name, file, err)
                continue
            self.work[work.submission] = work


def _owed(rec: DatasetRecord, me: bytes) -> str | None:
    """What validator `me` owes the record now: "verdict", "vote", or None."""
    if rec.status == STATUS_PENDING and me not in rec.audit_voters:
        return "verdict"
    if rec.status in (STATUS_AUDITED, STATUS_VOTED) and me not in rec.tier_voters:
        return "vote"
    return None


class DataRefused(BlyanError):
    """A verdict or vote this node's mempool refused."""


def _write(file: Path, data: bytes) -> None:
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, file)
