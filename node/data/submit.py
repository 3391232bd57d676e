"""A contributor's dataset submissions, from the file to the chain.

    upload:   the content arrives in chunks (`begin_upload`, `append`), capped at the network's
              largest dataset                                                   -> an upload id
    start:    refused at once when it can never succeed (no key, unknown format, no license,
              too large, already on the chain)                                  -> a job
    the job:  CID (chain.unixfs) -> the L0 audit against what the chain held at the anchor
              (the current head) -> refused with the policy's reasons, or the proof of work bound
              to the anchor block -> content kept (the content service serves it; IPFS pins it
              when the node has a daemon) -> SubmitDataset sent           -> "submitted"
    progress: each job shows its stage and the fraction done (`blyan dataset submit` polls it)

Validators then fetch the content from this node (or any holder), audit it again and vote;
`blyan dataset status CID` follows the record on the chain.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from chain import codec, crypto
from chain.crypto import PrivateKey
from chain.dataset import FORMATS, find_policy_violations, solve_pow
from chain.errors import BlyanError
from chain.payloads import AuditReport, SubmitDataset
from chain.records import cid_key
from chain.types import CHAIN_DATASET, Transaction, TxBody
from chain.unixfs import compute_dataset_cid
from node.core.jsonable import to_json
from node.core.ports import NodeHandle
from node.data.content import DatasetStore
from node.data.held import HeldDatasets
from node.data.l0.audit import run_l0_audit

logger = logging.getLogger(__name__)

Pin = Callable[[str, bytes], None]
MAX_JOBS = 64
"""Jobs kept in memory (finished ones are dropped oldest first)."""
WORK_CHUNK = 1 << 15
"""Nonces tried per step of the proof of work (a progress update and a checkpoint for cancel)."""
QUEUED, AUDIT, WORK, SUBMIT, SUBMITTED, REFUSED = "queued", "audit", "work", "submit", "submitted", "refused"


class DatasetRefused(BlyanError):
    """A dataset this node will not submit, and why."""


@dataclass
class Job:
    """One submission in progress."""

    job_id: str
    upload: Path
    format: str
    license: str
    stage: str = QUEUED
    fraction: float = 0.0
    cid: str = ""
    size: int = 0
    report: AuditReport | None = None
    submission: bytes = b""
    reason: str = ""
    stages: dict[str, float] = field(default_factory=dict)
    """Seconds each stage took."""

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job_id, "stage": self.stage, "fraction": round(self.fraction, 4), "cid": self.cid,
            "size": self.size, "format": self.format, "license": self.license,
            "submission": self.submission.hex() or None, "reason": self.reason,
            "report": None if self.report is None else to_json(self.report),
            "report_hash": None if self.report is None else codec.hash_of(self.report).hex(),
            "seconds": {k: round(v, 3) for k, v in self.stages.items()},
        }


class DatasetSubmissions:
    """This node's dataset submissions (the node's key signs them)."""

    def __init__(self, node: NodeHandle, key: PrivateKey | None, store: DatasetStore, held: HeldDatasets,
                 uploads_dir: Path, *, pin: Pin | None = None, offload: bool = True, name: str = "") -> None:
        self.node = node
        self.key = key
        self.store = store
        self.held = held
        self.uploads = Path(uploads_dir)
        self.pin = pin
        self.offload = offload
        self.name = name or node.network.local_id
        self.jobs: dict[str, Job] = {}
        self._send, self._recv = trio.open_memory_channel[Job](MAX_JOBS)
        self._clean_uploads()

    # --- uploads ------------------------------------------------------------------------------

    @property
    def max_bytes(self) -> int:
        return self.node.store.pact.params.dataset.max_dataset_bytes

    def begin_upload(self) -> str:
        self.uploads.mkdir(parents=True, exist_ok=True)
        upload_id = secrets.token_hex(16)
        (self.uploads / f"{upload_id}.part").write_bytes(b"")
        return upload_id

    def append(self, upload_id: str, offset: int, data: bytes) -> int:
        """Add a chunk at `offset` (the bytes received so far); the new length."""
        path = self._upload_path(upload_id)
        have = path.stat().st_size
        if offset != have:
            raise DatasetRefused(f"chunk at offset {offset}, upload {upload_id} holds {have} bytes")
        if have + len(data) > self.max_bytes:
            path.unlink(missing_ok=True)
            raise DatasetRefused(f"dataset larger than the network's largest, {self.max_bytes} bytes")
        with path.open("ab") as f:
            f.write(data)
        return have + len(data)

    def _upload_path(self, upload_id: str) -> Path:
        if len(upload_id) != 32 or any(c not in "0123456789abcdef" for c in upload_id):
            raise DatasetRefused(f"{upload_id!r} is not an upload id")
        path = self.uploads / f"{upload_id}.part"
        if not path.exists():
            raise DatasetRefused(f"no upload {upload_id} (finished, or the node restarted)")
        return path

    def _clean_uploads(self) -> None:
        if self.uploads.is_dir():
            for part in self.uploads.glob("*.part"):
                part.unlink(missing_ok=True)

    # --- jobs ---------------------------------------------------------------------------------

    def start(self, upload_id: str, format: str, license: str) -> Job:
        """Check what can be checked at once, then queue the job; `DatasetRefused` with the reason."""
        if self.key is None:
            raise DatasetRefused("this node has no key: it cannot sign a submission")
        if format not in FORMATS:
            raise DatasetRefused(f"format {format!r} is not one of {', '.join(FORMATS)}")
        if not license:
            raise DatasetRefused("a dataset needs a license (an SPDX identifier such as CC-BY-4.0)")
        path = self._upload_path(upload_id)
        if path.stat().st_size == 0:
            raise DatasetRefused("the upload is empty")
        job = Job(upload_id, path, format, license)
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock as err:
            raise DatasetRefused(f"{MAX_JOBS} submissions are in progress: try again later") from err
        self.jobs[upload_id] = job
        while len(self.jobs) > MAX_JOBS:
            oldest = next(iter(self.jobs))
            if self.jobs[oldest].stage not in (SUBMITTED, REFUSED):
                break
            del self.jobs[oldest]
        return job

    async def run(self, *, task_status: trio.TaskStatus[DatasetSubmissions] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        async for job in self._recv:
            try:
                await self.process(job)
            except DatasetRefused as err:
                job.stage, job.reason = REFUSED, str(err)
                logger.info("%s: dataset %s refused: %s", self.name, job.cid[:24] or job.job_id, err)
            except (BlyanError, OSError) as err:
                job.stage, job.reason = REFUSED, f"failed: {err}"
                logger.warning("%s: dataset %s failed: %s", self.name, job.cid[:24] or job.job_id, err)
            finally:
                job.upload.unlink(missing_ok=True)

    async def process(self, job: Job) -> None:
        params = self.node.store.pact.params.dataset
        data = job.upload.read_bytes()
        job.size = len(data)
        clock = trio.current_time
        started = clock()
        job.stage = AUDIT
        job.cid = await self._run(lambda: compute_dataset_cid(data))
        state = self.node.store.state(CHAIN_DATASET)
        if state.get(cid_key(job.cid)) is not None:
            raise DatasetRefused(f"{job.cid} is on the chain already")
        anchor_height, anchor_hash = state.height, state.head
        await self.held.ready.wait()
        index = self.held.index_at(state, anchor_height)

        def progress(stage: str, fraction: float) -> None:
            job.fraction = fraction

        job.report = await self._run(lambda: run_l0_audit(
            data, cid=job.cid, format=job.format, anchor_height=anchor_height, params=params.audit, index=index,
            progress=progress))
        job.stages[AUDIT] = clock() - started
        violations = find_policy_violations(job.report, params.policy)
        if violations:
            raise DatasetRefused("the data policy refuses it: " + "; ".join(violations))
        job.stage, job.fraction, started = WORK, 0.0, clock()
        nonce = await self._work(job, anchor_hash, params.pow_difficulty_bits)
        job.stages[WORK] = clock() - started
        job.stage, started = SUBMIT, clock()
        self.store.put_verified(job.cid, data)
        payload = SubmitDataset(job.cid, len(data), job.format, job.license, anchor_height, anchor_hash, nonce,
                                job.report)
        tx = self._send_tx(payload)
        job.submission = tx.hash()
        if self.pin is not None:
            try:
                await trio.to_thread.run_sync(self.pin, job.cid, data)
            except BlyanError as err:
                logger.warning("%s: dataset %s not pinned on IPFS: %s", self.name, job.cid[:24], err)
        job.stages[SUBMIT] = clock() - started
        job.stage, job.fraction = SUBMITTED, 1.0
        logger.info("%s: submitted dataset %s (%d bytes, %s) as %s", self.name, job.cid, len(data), job.format,
                    job.submission.hex()[:16])

    async def _work(self, job: Job, anchor_hash: bytes, bits: int) -> int:
        network, me = self.node.network_id, self.key.address
        expected = float(1 << bits)
        start = 0
        while True:
            found = await self._run(lambda s=start: solve_pow(network, me, job.cid, anchor_hash, bits, s, WORK_CHUNK))
            if found is not None:
                return found
            start += WORK_CHUNK
            job.fraction = min(0.99, start / expected)

    async def _run(self, fn: Callable[[], Any]) -> Any:
        if not self.offload:
            return fn()
        return await trio.to_thread.run_sync(fn)

    def _send_tx(self, payload: SubmitDataset) -> Transaction:
        nonce = self.node.next_nonce(CHAIN_DATASET, self.key.address)
        body = TxBody(CHAIN_DATASET, self.key.public_key, nonce, payload)
        tx = Transaction(body, self.key.sign(self.node.network_id, crypto.KIND_TX, codec.encode(body)))
        result = self.node.submit_tx(tx)
        if not result.added:
            raise DatasetRefused(f"the chain refuses it: {result.reason or result.outcome.value}")
        return tx
