"""The engine: consensus, mempool, evidence, store and a `Network`, wired for the three chains.

The same engine runs inside the deterministic simulator (`p2p.sim`) and inside the daemon (over
libp2p). Each chain has one `ChainRunner` task that alone changes that chain's consensus state,
fed by a bounded channel (STYLE rule 12); gossip handlers only check signatures and shapes and
hand events over. Time comes from `trio.current_time()` (timeouts) and an injected clock
(block timestamps), so the engine runs under `MockClock`.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from chain import codec
from chain.codec import decode
from chain.commit import sign_vote, validate_evidence, validate_signed_vote
from chain.context import Context
from chain.crypto import PrivateKey
from chain.errors import BlyanError, DecodingError
from chain.records import (
    Earning,
    earning_key,
    is_earning_key,
    is_paid_key,
    parse_earning_key,
    parse_paid_key,
)
from chain.reward import get_validator_set
from chain.store import ChainStore
from chain.types import CHAIN_DATASET, CHAIN_IDS, CHAIN_PARAMETER, CHAIN_REWARD, Transaction, ValidatorSet
from chain.votes import SignedVote
from consensus.evidence import EvidencePool
from consensus.mempool import Mempool, MempoolConfig
from consensus.messages import InvalidProposal, validate_signed_proposal
from consensus.tendermint import TendermintConfig
from node.snapshot_wire import PROTOCOL_BUCKET_HASHES, PROTOCOL_BUCKETS, PROTOCOL_SNAPSHOTS, PROTOCOL_TRUST_PATH
from node.snapshots import SnapshotServer, compute_blocks_response, compute_handshake
from node.wire import (
    PROTOCOL_BLOCKS,
    PROTOCOL_HANDSHAKE,
    PROTOCOL_PROPOSAL,
    TOPIC_EVIDENCE,
    TOPIC_PROPOSALS,
    TOPIC_STATUS,
    TOPIC_TXS,
    TOPIC_VOTES,
    BlocksRequest,
    ChainHead,
    EvidenceMsg,
    Handshake,
    ProposalMsg,
    ProposalRequest,
    StatusMsg,
    TxMsg,
    VoteMsg,
)
from p2p.network import Clock, Network, PeerId, Verdict, protocol_name, topic_name

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4096


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Operator-side engine settings (protocol constants come from genesis)."""

    tendermint: TendermintConfig = field(default_factory=TendermintConfig)
    """Round timeouts."""
    mempool: MempoolConfig = field(default_factory=MempoolConfig)
    """Mempool caps."""
    rebroadcast_s: float = 1.0
    """How often the current height's own votes and proposal are gossiped again."""
    status_interval_s: float = 2.0
    """How often this node gossips its heights."""
    request_timeout_s: float = 2.0
    """Deadline of a block or proposal request."""
    sync_batch: int = 32
    """Blocks asked for per sync request."""
    event_queue: int = 4096
    """Events waiting for a chain's runner; beyond, gossip is dropped (and re-gossiped later)."""
    max_future_drift_ms: int = 15_000
    """A proposed block whose time is further ahead of our clock is not valid."""
    snapshot_every: int = 64
    """Keep the state at every multiple of this height for fast-syncing peers."""
    offload_writes: bool = False
    """Write blocks from a worker thread (the daemon), not on the event loop. Off in
    simulations: a thread's finishing time is not deterministic."""

    @classmethod
    def for_tests(cls) -> EngineConfig:
        return cls(tendermint=TendermintConfig.for_tests(), mempool=MempoolConfig.for_tests(),
                   rebroadcast_s=0.5, status_interval_s=1.0, request_timeout_s=1.0)

    @classmethod
    def from_params(cls, params, **overrides: object) -> EngineConfig:  # noqa: ANN001
        timing = params.consensus
        tm = TendermintConfig(
            timeout_propose_ms=timing.timeout_propose_ms, timeout_prevote_ms=timing.timeout_vote_ms,
            timeout_precommit_ms=timing.timeout_vote_ms, timeout_delta_ms=timing.timeout_delta_ms,
        )
        return cls(tendermint=tm, **overrides)


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How a node misbehaves, for simulations. The default is honest."""

    equivocate: bool = False
    """Sign a second, conflicting vote for every vote."""
    invalid_proposals: bool = False
    """Propose blocks with a wrong state root."""
    withhold_votes: bool = False
    """Never send own votes."""
    silent: bool = False
    """Send nothing at all."""
    spam: bool = False
    """Flood topics with garbage and invalid transactions."""

    @property
    def is_honest(self) -> bool:
        return not (self.equivocate or self.invalid_proposals or self.withhold_votes or self.silent or self.spam)

    def names(self) -> list[str]:
        return [n for n in ("equivocate", "invalid_proposals", "withhold_votes", "silent", "spam") if getattr(self, n)]


@functools.lru_cache(maxsize=8192)
def decode_vote_msg(data: bytes) -> VoteMsg:
    """Votes arrive many times (gossip, rebroadcasts, and in a simulation at every node of
    the process); decoding is pure, so the result is shared. Errors are not cached."""
    return decode(VoteMsg, data, max_size=512)


class EngineObserver:
    """Hooks for simulations and metrics; the default does nothing."""

    def on_commit(self, node: str, chain_id: int, block, state) -> None:  # noqa: ANN001
        """A block was finalized and stored."""

    def on_vote_signed(self, node: str, signed: SignedVote) -> None:
        """This node signed a vote."""

    def on_penalty(self, node: str, peer: PeerId, reason: str) -> None:
        """This node penalised a peer."""

    def on_round(self, node: str, chain_id: int, height: int, round: int) -> None:
        """A consensus round started."""

    def on_block_imported(self, node: str, chain_id: int, height: int, n_txs: int, seconds: float,
                          synced: bool) -> None:
        """A block was checked and written: `seconds` from checking to stored; `synced` when it
        came from catch-up rather than from this node's own consensus."""


class Engine:
    """One node's engine for the three chains."""

    def __init__(
        self,
        store: ChainStore,
        key: PrivateKey | None,
        network: Network,
        clock: Clock,
        config: EngineConfig | None = None,
        behaviour: Behaviour = Behaviour(),
        observer: EngineObserver | None = None,
        name: str = "",
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.key = key
        self.network = network
        self.clock = clock
        self.config = config or EngineConfig.from_params(store.pact.params)
        self.behaviour = behaviour
        self.observer = observer or EngineObserver()
        self.name = name or network.local_id
        self.rng = rng or random.Random(0)
        self.network_id = store.pact.network_id
        self.params = store.pact.params
        self.mempools = {c: Mempool(c, self.config.mempool) for c in CHAIN_IDS}
        self.evidence = EvidencePool()
        self.known_sets: dict[bytes, ValidatorSet] = {}
        self.pending_earnings: dict[tuple[int, bytes], Earning] = {}
        self.sync_targets: dict[int, int] = {}
        self.write_limiter = trio.CapacityLimiter(1)
        self.snapshots = SnapshotServer(store, self.known_sets.get, every=self.config.snapshot_every)
        self._nursery: trio.Nursery | None = None
        from node.runner import ChainRunner  # the per-chain half of the engine

        self._remember_validators()
        self._scan_earnings()
        self.runners = {c: ChainRunner(self, c) for c in CHAIN_IDS}

    # --- shared views -----------------------------------------------------------------------

    @property
    def address(self) -> bytes | None:
        return self.key.address if self.key else None

    def validators(self) -> ValidatorSet:
        """The validator set in force now: the reward chain's current one."""
        return get_validator_set(self.store.state(CHAIN_REWARD))

    def _remember_validators(self) -> None:
        """Keep every validator set ever in force, on disk too: a restarted node must still
        check commits made by the set before an epoch change."""
        if not self.known_sets:
            self.known_sets.update(self.store.load_validator_sets())
        vs = self.validators()
        if vs.hash() not in self.known_sets:
            self.known_sets[vs.hash()] = vs
            self.store.save_validator_set(vs)

    @property
    def syncing(self) -> bool:
        """Whether a peer told us of a finalized height above ours that we have not reached."""
        return any(self.store.height(c) < target for c, target in self.sync_targets.items())

    def sync_progress(self) -> dict[str, dict[str, int | float | None]]:
        """Per chain: our height, the highest height peers reported, blocks/s and seconds left."""
        from chain.types import CHAIN_NAMES

        from node.progress import compute_eta

        progress = {}
        for c, t in self.sync_targets.items():
            height = self.store.height(c)
            target = max(height, t)
            rate = self.runners[c].sync_meter.rate if height < target else None
            eta = compute_eta(height, target, rate)
            progress[CHAIN_NAMES[c]] = {"height": height, "target": target,
                                        "blocks_per_s": None if rate is None else round(rate, 1),
                                        "eta_s": None if eta is None else round(eta, 1)}
        return progress

    def note_peer_height(self, chain_id: int, height: int) -> None:
        if height > self.sync_targets.get(chain_id, 0):
            self.sync_targets[chain_id] = height

    def get_earning(self, chain_id: int, tx_hash: bytes) -> Earning | None:
        if chain_id not in (CHAIN_PARAMETER, CHAIN_DATASET):
            return None
        raw = self.store.state(chain_id).get(earning_key(tx_hash))
        return None if raw is None else decode(Earning, raw)

    def context(self, validators: ValidatorSet, prev: ValidatorSet | None = None) -> Context:
        return Context(self.network_id, self.params, validators, prev, earnings=self.get_earning,
                       next_validators=self.known_sets.get)

    def _scan_earnings(self) -> None:
        from chain.records import paid_key

        reward = self.store.state(CHAIN_REWARD)
        for chain_id in (CHAIN_PARAMETER, CHAIN_DATASET):
            for key, value in self.store.state(chain_id).items():
                if is_earning_key(key) and reward.get(paid_key(chain_id, parse_earning_key(key))) is None:
                    self.pending_earnings[(chain_id, parse_earning_key(key))] = decode(Earning, value)

    def on_committed(self, chain_id: int, changes: dict[bytes, bytes | None]) -> None:
        """Bookkeeping shared across chains after a block of `chain_id` is stored."""
        if chain_id == CHAIN_REWARD:
            self._remember_validators()
            for key in changes:
                if is_paid_key(key):
                    self.pending_earnings.pop(parse_paid_key(key), None)
        else:
            for key, value in changes.items():
                if is_earning_key(key) and value is not None:
                    self.pending_earnings[(chain_id, parse_earning_key(key))] = decode(Earning, value)
        for runner in self.runners.values():
            runner.poke()

    # --- running ----------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
        """Serve until cancelled."""
        self._subscribe()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for runner in self.runners.values():
                await nursery.start(runner.run)
            nursery.start_soon(self._status_loop)
            if self.behaviour.spam:
                nursery.start_soon(self._spam_loop)
            task_status.started()

    def spawn(self, fn: Callable, *args: object) -> None:  # noqa: ANN001
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    def topic(self, name: str) -> str:
        return topic_name(self.network_id, name)

    async def publish(self, name: str, msg: object) -> None:
        if self.behaviour.silent:
            return
        try:
            await self.network.publish(self.topic(name), codec.encode(msg))
        except BlyanError as err:
            logger.warning("%s: publish on %s failed: %s", self.name, name, err)

    def penalize(self, peer: PeerId, reason: str) -> None:
        self.observer.on_penalty(self.name, peer, reason)
        self.network.penalize(peer, reason)

    def _subscribe(self) -> None:
        n = self.network
        n.subscribe(self.topic(TOPIC_PROPOSALS), self._on_proposal_gossip)
        n.subscribe(self.topic(TOPIC_VOTES), self._on_vote_gossip)
        n.subscribe(self.topic(TOPIC_TXS), self._on_tx_gossip)
        n.subscribe(self.topic(TOPIC_EVIDENCE), self._on_evidence_gossip)
        n.subscribe(self.topic(TOPIC_STATUS), self._on_status_gossip)
        n.set_request_handler(protocol_name(self.network_id, PROTOCOL_BLOCKS), self._serve_blocks, MAX_REQUEST_BYTES)
        n.set_request_handler(protocol_name(self.network_id, PROTOCOL_PROPOSAL), self._serve_proposal, MAX_REQUEST_BYTES)
        n.set_request_handler(protocol_name(self.network_id, PROTOCOL_HANDSHAKE), self._serve_handshake,
                              MAX_REQUEST_BYTES)
        for name, handler in ((PROTOCOL_SNAPSHOTS, self.snapshots.serve_snapshots),
                              (PROTOCOL_TRUST_PATH, self.snapshots.serve_trust_path),
                              (PROTOCOL_BUCKET_HASHES, self.snapshots.serve_bucket_hashes),
                              (PROTOCOL_BUCKETS, self.snapshots.serve_buckets)):
            n.set_request_handler(protocol_name(self.network_id, name), handler, MAX_REQUEST_BYTES)
        n.on_peer_event(self._on_peer_event)

    # --- handshake --------------------------------------------------------------------------

    async def _serve_handshake(self, peer: PeerId, data: bytes) -> bytes:
        return codec.encode(compute_handshake(self.store))

    def _on_peer_event(self, peer: PeerId, connected: bool) -> None:
        if connected:
            self.spawn(self._check_peer, peer)

    async def _check_peer(self, peer: PeerId, attempts: int = 4) -> None:
        """Refuse a peer of another network or genesis (a ban, so it is disconnected). A peer
        that does not answer yet (its engine may still be starting, or fast-syncing) is asked
        again, a few times, further apart."""
        for attempt in range(attempts):
            try:
                data = await self.network.request(
                    peer, protocol_name(self.network_id, PROTOCOL_HANDSHAKE), b"", self.config.request_timeout_s)
                theirs = decode(Handshake, data, max_size=MAX_REQUEST_BYTES)
                break
            except DecodingError:
                self.penalize(peer, "undecodable handshake")
                return
            except BlyanError as err:
                logger.info("%s: handshake with %s failed (%d/%d): %s", self.name, peer, attempt + 1, attempts, err)
                if attempt + 1 == attempts or peer not in self.network.peers():
                    return
                await trio.sleep(self.config.request_timeout_s * 2**attempt)
        if (theirs.network_id, theirs.genesis_hash) != (self.network_id, self.store.genesis_hash):
            logger.warning("%s: refusing peer %s of network %r genesis %s", self.name, peer,
                           theirs.network_id, theirs.genesis_hash.hex()[:16])
            self.observer.on_penalty(self.name, peer, "another genesis")
            self.network.penalize(peer, "another network or genesis", weight=1_000.0)
            return
        for head in theirs.heads:
            if head.chain_id in self.runners and head.height > self.store.height(head.chain_id):
                self.note_peer_height(head.chain_id, head.height)
                self.runners[head.chain_id].want_sync(peer, head.height)

    # --- transactions -----------------------------------------------------------------------

    def submit_tx(self, tx: Transaction):  # noqa: ANN201 - returns AddResult
        """Admit a local transaction to its chain's mempool and gossip it (RPC entry point)."""
        chain_id = tx.body.chain_id
        if chain_id not in self.mempools:
            from consensus.mempool import AddResult, Outcome

            return AddResult(Outcome.INVALID, f"unknown chain {chain_id}")
        runner = self.runners[chain_id]
        result = self.mempools[chain_id].add(tx, self.store.state(chain_id), runner.current_context())
        if result.added:
            self.spawn(self.publish, TOPIC_TXS, TxMsg(tx))
            runner.poke()
        return result

    async def _on_tx_gossip(self, peer: PeerId, data: bytes) -> Verdict:
        try:
            msg = decode(TxMsg, data, max_size=self.params.consensus.max_tx_bytes + 64)
        except DecodingError:
            self.penalize(peer, "undecodable transaction")
            return Verdict.REJECT
        chain_id = msg.tx.body.chain_id
        if chain_id not in self.mempools:
            return Verdict.REJECT
        runner = self.runners[chain_id]
        result = self.mempools[chain_id].add(msg.tx, self.store.state(chain_id), runner.current_context())
        if result.added:
            runner.poke()
            return Verdict.ACCEPT
        if result.is_invalid:
            return Verdict.REJECT
        return Verdict.IGNORE

    # --- consensus gossip -------------------------------------------------------------------

    async def _on_proposal_gossip(self, peer: PeerId, data: bytes) -> Verdict:
        try:
            msg = decode(ProposalMsg, data, max_size=self.params.consensus.max_block_bytes + 4096)
        except DecodingError:
            self.penalize(peer, "undecodable proposal")
            return Verdict.REJECT
        p = msg.signed.proposal
        if p.chain_id not in self.runners or msg.block.hash() != p.block_hash:
            self.penalize(peer, "proposal does not name its block")
            return Verdict.REJECT
        runner = self.runners[p.chain_id]
        verdict = runner.classify_height(p.height, peer)
        if verdict is not Verdict.ACCEPT:
            return verdict
        try:
            validate_signed_proposal(msg.signed, self.network_id, runner.validators)
        except InvalidProposal as err:
            self.penalize(peer, str(err))
            return Verdict.REJECT
        return runner.enqueue(("proposal", peer, msg))

    async def _on_vote_gossip(self, peer: PeerId, data: bytes) -> Verdict:
        try:
            msg = decode_vote_msg(data)
        except DecodingError:
            self.penalize(peer, "undecodable vote")
            return Verdict.REJECT
        vote = msg.signed.vote
        if vote.chain_id not in self.runners:
            return Verdict.REJECT
        runner = self.runners[vote.chain_id]
        verdict = runner.classify_height(vote.height, peer)
        if verdict is not Verdict.ACCEPT:
            return verdict
        try:
            validate_signed_vote(msg.signed, self.network_id, runner.validators)
        except BlyanError as err:
            self.penalize(peer, f"vote: {err}")
            return Verdict.REJECT
        return runner.enqueue(("vote", peer, msg.signed))

    async def _on_evidence_gossip(self, peer: PeerId, data: bytes) -> Verdict:
        try:
            msg = decode(EvidenceMsg, data, max_size=2048)
        except DecodingError:
            self.penalize(peer, "undecodable evidence")
            return Verdict.REJECT
        return self.add_evidence(msg.evidence, peer)

    def add_evidence(self, evidence, peer: PeerId | None = None) -> Verdict:  # noqa: ANN001
        try:
            validate_evidence(evidence, self.network_id, self.validators())
        except BlyanError:
            if peer is not None:
                self.penalize(peer, "invalid evidence")
            return Verdict.REJECT
        if not self.evidence.add(evidence, self.network_id, self.validators(), self.store.state(CHAIN_REWARD)):
            return Verdict.IGNORE
        self.runners[CHAIN_REWARD].poke()
        if peer is None:
            self.spawn(self.publish, TOPIC_EVIDENCE, EvidenceMsg(evidence))
        return Verdict.ACCEPT

    # --- status and sync --------------------------------------------------------------------

    async def _status_loop(self) -> None:
        while True:
            heads = tuple(ChainHead(c, self.store.height(c)) for c in CHAIN_IDS)
            await self.publish(TOPIC_STATUS, StatusMsg(heads))
            jitter = 1.0 + 0.2 * self.rng.random()
            await trio.sleep(self.config.status_interval_s * jitter)

    async def _on_status_gossip(self, peer: PeerId, data: bytes) -> Verdict:
        try:
            msg = decode(StatusMsg, data, max_size=512)
        except DecodingError:
            self.penalize(peer, "undecodable status")
            return Verdict.REJECT
        for head in msg.heads:
            if head.chain_id in self.runners and head.height > self.store.height(head.chain_id):
                self.note_peer_height(head.chain_id, head.height)
                self.runners[head.chain_id].want_sync(peer, head.height)
        return Verdict.ACCEPT

    async def _serve_blocks(self, peer: PeerId, data: bytes) -> bytes:
        req = decode(BlocksRequest, data, max_size=MAX_REQUEST_BYTES)
        return codec.encode(compute_blocks_response(self.store, req))

    async def _serve_proposal(self, peer: PeerId, data: bytes) -> bytes:
        from node.wire import ProposalResponse

        req = decode(ProposalRequest, data, max_size=MAX_REQUEST_BYTES)
        runner = self.runners.get(req.chain_id)
        found = runner.get_proposal_msg(req.height, req.round) if runner else None
        return codec.encode(ProposalResponse(found))

    # --- misbehaviour (simulations only) ----------------------------------------------------

    async def _spam_loop(self) -> None:
        while True:
            junk = self.rng.randbytes(self.rng.randrange(1, 200))
            for name in (TOPIC_TXS, TOPIC_VOTES, TOPIC_PROPOSALS):
                try:
                    await self.network.publish(self.topic(name), junk)
                except BlyanError:
                    pass
            await trio.sleep(0.05)

    def sign_vote(self, vote) -> SignedVote:  # noqa: ANN001
        signed = sign_vote(self.key, self.network_id, vote)
        self.observer.on_vote_signed(self.name, signed)
        return signed
