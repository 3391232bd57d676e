"""The PoL service: every validator verifies every revealed claim and votes what it measured.

    Committed(parameter block with RevealDelta) ─> bounded queue ─> worker:
        fetch the bundle's blobs (from the provider and any peer that holds them)
        verify_bundle in a worker thread (one at a time: `CapacityLimiter(1)`)
        sign PolVote(claim, verdict) ─> own vote file ─> VotePool ─> gossip "pol-votes"
    gossip "pol-votes" ─> VotePool (the chain's own vote rule) ─> CertifyDelta / RejectDelta,
        which the parameter chain's proposer takes as system transactions (`SystemSource`)

Overload is refused, never waited on: when the queue is full, a claim is not verified here (a
warning and a counter say so) and consensus goes on; the claim is decided by the other
validators' votes, or expires. A validator signs at most one vote per claim: its own votes are
kept on disk (`votes_dir`) and rebroadcast until the claim is decided, also after a restart.

Every node runs the pool (any validator may propose the certificate); only validators verify.
The service also tells the proposer to make blocks while a round's certified claims wait for
its close (`votes.is_round_waiting`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import trio

from chain import codec, crypto
from chain.blobs import BlobStore
from chain.crypto import PrivateKey
from chain.errors import BlyanError, DecodingError
from chain.learning import TrainingManifest
from chain.ledger import read_ledger_view
from chain.pact import compute_genesis_hash
from chain.payloads import PolVote, RevealDelta, SignedPolVote
from chain.records import CLAIM_VOTING, is_claim_key
from chain.rounds import get_claim
from chain.state import Overlay, State
from chain.tensors import TensorRecord
from chain.types import CHAIN_DATASET, CHAIN_PARAMETER, Transaction
from node.core.feed import Committed, PolVerified
from node.core.pools import judge_gossip
from node.core.ports import NodeHandle
from node.pol.bundle import Bundle
from node.pol.data import Materials, blob_getter
from node.pol.verifier import VerifyReport, verify_bundle
from node.pol.votes import AddVote, VoteOutcome, VotePool, is_round_waiting
from p2p.network import PeerId, Verdict, topic_name

logger = logging.getLogger(__name__)

TOPIC_POL_VOTES = "pol-votes"
MAX_VOTE_BYTES = 16 * 1024
"""A signed PoL vote on the wire (a verdict with at most 16 segment checks is well under)."""
FEED_QUEUE = 4096

FetchBundle = Callable[[TrainingManifest, str], Awaitable[None]]
"""`fetch(manifest, provider)`: bring the bundle's blobs into the node's blob store, verified;
raises `BlyanError` naming what could not be fetched."""
MakeMaterials = Callable[[], Materials]
"""The chain as learning sees it now, and the node's blobs."""


@dataclass(frozen=True, slots=True)
class PolConfig:
    queue: int = 8
    """Claims waiting for this validator's verifier; more are refused (not verified here)."""
    rebroadcast_s: float = 5.0
    """How often own votes on open claims are gossiped again."""
    fetch_attempts: int = 3
    """Tries to fetch a bundle before verifying without what is missing (a rejecting vote)."""
    fetch_backoff_s: float = 2.0


def make_store_materials(node: NodeHandle, blobs: BlobStore,
                         head_records: Mapping[str, TensorRecord] | None = None) -> MakeMaterials:
    """Materials read from the node's store and blob store; `head_records`: the blobs of heads
    with accepted deltas built on this node (the expert service's, a live view)."""
    pact = node.store.pact
    genesis_hash = compute_genesis_hash(pact)
    get_blob = blob_getter(blobs)

    def make() -> Materials:
        store = node.store
        ledger = read_ledger_view(store.state(CHAIN_PARAMETER), store.state(CHAIN_DATASET))
        return Materials(pact, genesis_hash, ledger, get_blob, head_records if head_records is not None else {})

    return make


class PolService:
    """Verify revealed claims (as a validator), pool everyone's votes, propose their decision."""

    def __init__(self, node: NodeHandle, key: PrivateKey | None, blobs: BlobStore, votes_dir: Path,
                 materials: MakeMaterials, fetch: FetchBundle | None = None, config: PolConfig | None = None,
                 *, name: str = "", verify: Callable[[Materials, Bundle, bytes], VerifyReport] = verify_bundle,
                 offload: bool = True) -> None:
        self.node = node
        self.key = key
        self.blobs = blobs
        self.votes_dir = Path(votes_dir)
        self.materials = materials
        self.fetch = fetch
        self.config = config or PolConfig()
        self.name = name or node.network.local_id
        self.verify = verify
        self.offload = offload
        """Run the verifier in a worker thread (False: inline, for tests under a mock clock)."""
        self.pool = VotePool(node.network_id, node.store.pact.params)
        self.own: dict[bytes, SignedPolVote] = {}
        """This validator's votes on open claims."""
        self.limiter = trio.CapacityLimiter(1)
        self.verifying: bytes | None = None
        self.refused = 0
        """Claims not verified here because the queue was full."""
        self.verified = 0
        self.last_seconds = 0.0
        self._send, self._recv = trio.open_memory_channel[bytes](self.config.queue)
        self._queued: set[bytes] = set()
        self.topic = topic_name(node.network_id, TOPIC_POL_VOTES)

    # --- running ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[PolService] = trio.TASK_STATUS_IGNORED) -> None:
        node = self.node
        feed = node.feed.subscribe("pol", (Committed,), maxlen=FEED_QUEUE)
        node.network.subscribe(self.topic, self.on_vote_gossip, MAX_VOTE_BYTES)
        node.add_system_source(CHAIN_PARAMETER, self)
        self._load_own_votes()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._worker)
                nursery.start_soon(self._rebroadcast_loop)
                self._scan_open_claims()
                task_status.started(self)
                async for event in feed:
                    if event.chain_id == CHAIN_PARAMETER:
                        self.on_parameter_block(event)
        finally:
            node.feed.unsubscribe(feed)

    @property
    def is_validator(self) -> bool:
        return self.key is not None and self.node.validators().get(self.key.address) is not None

    @property
    def queue_length(self) -> int:
        return len(self._queued)

    def on_parameter_block(self, event: Committed) -> None:
        """Prune decided claims; count early votes of claims just revealed; queue them."""
        state = event.state
        self.pool.prune(state)
        view = Overlay(state)
        for claim_hash in list(self.own):
            rec = get_claim(view, claim_hash)
            if rec is not None and rec.status != CLAIM_VOTING:
                self._forget_own(claim_hash)
        revealed = [codec.hash_of(tx.body.payload.claim) for tx in event.block.txs
                    if isinstance(tx.body.payload, RevealDelta)]
        revealed = [h for h in revealed if (rec := get_claim(view, h)) is not None and rec.status == CLAIM_VOTING]
        if not revealed:
            return
        if self.pool.on_revealed(revealed, state, self.node.validators()):
            self.node.poke(CHAIN_PARAMETER)
        for claim_hash in revealed:
            self.enqueue(claim_hash)

    def enqueue(self, claim_hash: bytes) -> bool:
        """Queue a claim for this validator's verifier; False when refused (not a validator,
        voted already, or the queue is full)."""
        if not self.is_validator or claim_hash in self.own or claim_hash in self._queued:
            return False
        try:
            self._send.send_nowait(claim_hash)
        except trio.WouldBlock:
            self.refused += 1
            logger.warning("%s: PoL queue full (%d claims): claim %s is not verified here", self.name,
                           self.config.queue, claim_hash.hex()[:16])
            return False
        self._queued.add(claim_hash)
        return True

    def _scan_open_claims(self) -> None:
        """At start: the claims open for votes that this validator has not voted on."""
        state = self.node.store.state(CHAIN_PARAMETER)
        for key, _ in state.items():
            if is_claim_key(key):
                rec = get_claim(Overlay(state), key[1:])
                if rec is not None and rec.status == CLAIM_VOTING:
                    self.enqueue(key[1:])

    async def _worker(self) -> None:
        async for claim_hash in self._recv:
            try:
                await self.verify_claim(claim_hash)
            except (BlyanError, OSError) as err:
                logger.warning("%s: cannot verify claim %s: %s", self.name, claim_hash.hex()[:16], err)
            finally:
                self._queued.discard(claim_hash)

    async def verify_claim(self, claim_hash: bytes) -> SignedPolVote | None:
        """Fetch, verify, sign and gossip this validator's vote on an open claim."""
        state = self.node.store.state(CHAIN_PARAMETER)
        rec = get_claim(Overlay(state), claim_hash)
        if rec is None or rec.status != CLAIM_VOTING or claim_hash in self.own or self.key is None:
            return None
        started = time.perf_counter()
        self.verifying = claim_hash
        try:
            await self._fetch(rec.manifest.manifest, rec.provider)
            materials = self.materials()
            bundle = Bundle(self.votes_dir, rec.manifest, self.blobs)
            if self.offload:
                report = await trio.to_thread.run_sync(self.verify, materials, bundle, self.key.public_key,
                                                       limiter=self.limiter)
            else:
                report = self.verify(materials, bundle, self.key.public_key)
        finally:
            self.verifying = None
        vote = PolVote(claim_hash, report.verdict, self.key.address)
        signed = SignedPolVote(vote, self.key.sign(self.node.network_id, crypto.KIND_POL_VOTE, codec.encode(vote)))
        seconds = time.perf_counter() - started
        self.verified += 1
        self.last_seconds = seconds
        logger.info("%s: PoL vote on %s: %s%s (base %.4f, new %.4f) in %.1f s", self.name, claim_hash.hex()[:16],
                    "accept" if report.accepted else "reject",
                    "" if report.accepted else f" ({report.verdict.reason}: {report.rejection})",
                    report.verdict.base_loss / 1e6, report.verdict.new_loss / 1e6, seconds)
        self._keep_own(signed)
        self.node.feed.publish(PolVerified(claim_hash, report.accepted, report.verdict.reason, seconds))
        await self._publish(signed)
        return signed

    async def _fetch(self, manifest: TrainingManifest, provider: str) -> None:
        if self.fetch is None:
            return
        for attempt in range(self.config.fetch_attempts):
            try:
                await self.fetch(manifest, provider)
                return
            except BlyanError as err:
                logger.info("%s: fetching the bundle failed (try %d of %d): %s", self.name, attempt + 1,
                            self.config.fetch_attempts, err)
                if attempt + 1 < self.config.fetch_attempts:
                    await trio.sleep(self.config.fetch_backoff_s * (attempt + 1))
        # Verify anyway: what is missing makes the verdict a rejection that says so.

    # --- own votes ------------------------------------------------------------------------------

    def _vote_file(self, claim_hash: bytes) -> Path:
        return self.votes_dir / f"{claim_hash.hex()}.vote"

    def _keep_own(self, signed: SignedPolVote) -> None:
        claim_hash = signed.vote.claim_hash
        self.votes_dir.mkdir(parents=True, exist_ok=True)
        file = self._vote_file(claim_hash)
        tmp = file.with_name(file.name + ".tmp")
        tmp.write_bytes(codec.encode(signed))
        os.replace(tmp, file)
        self.own[claim_hash] = signed
        result = self.pool.add(signed, self.node.store.state(CHAIN_PARAMETER), self.node.validators())
        if result.outcome is VoteOutcome.INVALID:
            logger.error("%s: own PoL vote refused by the pool: %s", self.name, result.reason)
        self.node.poke(CHAIN_PARAMETER)

    def _forget_own(self, claim_hash: bytes) -> None:
        self.own.pop(claim_hash, None)
        self._vote_file(claim_hash).unlink(missing_ok=True)

    def _load_own_votes(self) -> None:
        if not self.votes_dir.is_dir():
            return
        state = self.node.store.state(CHAIN_PARAMETER)
        for file in sorted(self.votes_dir.glob("*.vote")):
            try:
                signed = codec.decode(SignedPolVote, file.read_bytes(), max_size=MAX_VOTE_BYTES)
            except (OSError, DecodingError) as err:
                logger.warning("%s: ignoring %s: %s", self.name, file, err)
                continue
            rec = get_claim(Overlay(state), signed.vote.claim_hash)
            if rec is not None and rec.status != CLAIM_VOTING:
                file.unlink(missing_ok=True)
                continue
            self.own[signed.vote.claim_hash] = signed
            self.pool.add(signed, state, self.node.validators())

    async def _publish(self, signed: SignedPolVote) -> None:
        try:
            await self.node.network.publish(self.topic, codec.encode(signed))
        except BlyanError as err:
            logger.warning("%s: publishing a PoL vote failed: %s", self.name, err)

    async def _rebroadcast_loop(self) -> None:
        while True:
            await trio.sleep(self.config.rebroadcast_s)
            for signed in list(self.own.values()):
                await self._publish(signed)

    # --- gossip ----------------------------------------------------------------------------

    async def on_vote_gossip(self, peer: PeerId, data: bytes) -> Verdict:
        return judge_gossip(self.node, peer, data, SignedPolVote, MAX_VOTE_BYTES, "PoL vote", self.add_vote)

    def add_vote(self, signed: SignedPolVote) -> AddVote:
        result = self.pool.add(signed, self.node.store.state(CHAIN_PARAMETER), self.node.validators())
        if result.outcome is VoteOutcome.ADDED:
            self.node.poke(CHAIN_PARAMETER)
        return result

    # --- SystemSource -------------------------------------------------------------------------

    def make_system_txs(self, state: State) -> list[Transaction]:
        return self.pool.make_system_txs(state, self.node.validators())

    def has_system_work(self, state: State) -> bool:
        return self.pool.has_decision(state, self.node.validators()) or is_round_waiting(state, self.pool.params)

    # --- what the RPC shows -----------------------------------------------------------------

    def describe(self) -> dict:
        return {
            "validator": self.is_validator, "queue": self.queue_length, "queue_capacity": self.config.queue,
            "verifying": self.verifying.hex() if self.verifying else None, "verified": self.verified,
            "refused_queue_full": self.refused, "last_seconds": round(self.last_seconds, 3),
            "own_open_votes": len(self.own), "pool_claims": len(self.pool.claims()),
        }
