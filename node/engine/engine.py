"""The engine: consensus for the three chains over a `Network`, with mempools and evidence.

The same engine runs inside the deterministic simulator (`p2p.sim`) and inside the daemon (over
libp2p). Each chain has one `ChainRunner` task that alone changes that chain's consensus state,
fed by a bounded channel (one owner for each piece of mutable state); the gossip handlers here
only decode, check signatures and heights, give a verdict (accept, ignore, or reject and
penalise the sender) and enqueue. A runner reaches the node only through its `ChainPort`
(`_RunnerPort` below). Everything the engine does that others may care about goes out on its
`Feed`; services act through the `NodeHandle` methods (`submit_tx`, `import_blocks`, ...).

Time comes from `trio.current_time()` (timeouts) and an injected clock (block timestamps), so
the engine runs under `MockClock`.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from chain import codec
from chain.codec import decode
from chain.commit import validate_evidence, validate_signed_vote
from chain.context import Context
from chain.crypto import PrivateKey
from chain.errors import BlyanError, DecodingError
from chain.params import ChainParams
from chain.payloads import DuplicateVoteEvidence, Slash
from chain.state import State
from chain.store import ChainStore
from chain.transition import get_nonce
from chain.types import (
    CHAIN_IDS,
    CHAIN_NAMES,
    CHAIN_REWARD,
    Block,
    BlockHeader,
    CommitCertificate,
    Transaction,
    ValidatorSet,
)
from consensus.evidence import EvidencePool, make_slash_txs
from consensus.mempool import AddResult, Mempool, Outcome
from node.core.feed import Committed, Feed, PeerAhead, Penalized, RoundStarted, TxAdmitted
from node.core.ports import ImportReport, SystemSource
from node.engine.config import EngineConfig
from node.engine.consensus_view import describe_runner
from node.engine.earnings import PendingEarnings
from node.engine.ports import BlockBuilder
from node.engine.runner import ChainRunner
from node.engine.signing import OwnVoteLog, Signer, SignGuard
from node.engine.validators import KnownValidatorSets
from node.engine.wire import (
    PROTOCOL_PROPOSAL,
    TOPIC_EVIDENCE,
    TOPIC_PROPOSALS,
    TOPIC_TXS,
    TOPIC_VOTES,
    EvidenceMsg,
    ProposalMsg,
    ProposalRequest,
    ProposalResponse,
    TxMsg,
    VoteMsg,
)
from p2p.network import Clock, Network, PeerId, Verdict, protocol_name, topic_name

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4096


@functools.lru_cache(maxsize=8192)
def decode_vote_msg(data: bytes) -> VoteMsg:
    """Votes arrive many times (gossip, rebroadcasts, and in a simulation at every node of
    the process); decoding is pure, so the result is shared. Errors are not cached."""
    return decode(VoteMsg, data, max_size=512)


class Engine:
    """One node's engine for the three chains."""

    def __init__(
        self,
        store: ChainStore,
        key: PrivateKey | None,
        network: Network,
        clock: Clock,
        config: EngineConfig | None = None,
        *,
        feed: Feed | None = None,
        name: str = "",
        rng: random.Random | None = None,
        builder: BlockBuilder | None = None,
    ) -> None:
        self.store = store
        self.key = key
        self.network = network
        self.clock = clock
        self.config = config or EngineConfig.from_params(store.pact.params)
        self.feed = feed or Feed()
        """Finalized blocks and gossip events, for any number of subscribers."""
        self.name = name or network.local_id
        self.rng = rng or random.Random(0)
        self.network_id = store.pact.network_id
        self.params: ChainParams = store.pact.params
        self.mempools = {c: Mempool(c, self.config.mempool) for c in CHAIN_IDS}
        self.evidence = EvidencePool()
        self.validator_sets = KnownValidatorSets(store)
        self.earnings = PendingEarnings(store)
        self.signer = Signer(key, self.network_id, self.feed) if key is not None else None
        self.builder = builder or BlockBuilder()
        self.write_limiter = trio.CapacityLimiter(1)
        """One block write at a time (writes run in worker threads in the daemon)."""
        self._nursery: trio.Nursery | None = None
        self.system_sources: dict[int, list[SystemSource]] = {c: [] for c in CHAIN_IDS}
        """Services that give each chain's proposer system transactions (`add_system_source`)."""
        self.runners = {c: ChainRunner(_RunnerPort(self, c)) for c in CHAIN_IDS}

    # --- what services may ask (NodeHandle) ---------------------------------------------------

    @property
    def address(self) -> bytes | None:
        return self.key.address if self.key else None

    def validators(self) -> ValidatorSet:
        """The validator set in force now: the reward chain's current one."""
        return self.validator_sets.current()

    def consensus_state(self) -> dict[str, Any]:
        """Per chain name, where its consensus stands (`node.engine.consensus_view`)."""
        return {CHAIN_NAMES[c]: describe_runner(r) for c, r in self.runners.items()}

    def get_validator_set(self, vs_hash: bytes) -> ValidatorSet | None:
        return self.validator_sets.get(vs_hash)

    def submit_tx(self, tx: Transaction) -> AddResult:
        """Admit a local transaction to its chain's mempool and gossip it (RPC entry point).

        Stricter than gossip: a transaction whose payload fails against the committed state
        (insufficient balance or stake, ...) is refused with the reason, since it could never
        be final and its sender is the one to tell."""
        chain_id = tx.body.chain_id
        if chain_id not in self.mempools:
            return AddResult(Outcome.INVALID, f"unknown chain {chain_id} (chains are {', '.join(map(str, CHAIN_IDS))})")
        runner = self.runners[chain_id]
        result = self.mempools[chain_id].add(tx, self.store.state(chain_id), runner.current_context(),
                                             check_state=True)
        if result.added:
            self.feed.publish(TxAdmitted(chain_id, tx.hash(), True))
            self.spawn(self.publish, TOPIC_TXS, TxMsg(tx))
            runner.poke()
        return result

    def add_system_source(self, chain_id: int, source: SystemSource) -> None:
        self.system_sources[chain_id].append(source)

    def poke(self, chain_id: int) -> None:
        if chain_id in self.runners:
            self.runners[chain_id].poke()

    def is_pending(self, chain_id: int, tx_hash: bytes) -> bool:
        return chain_id in self.mempools and tx_hash in self.mempools[chain_id]

    def count_pending(self, chain_id: int, sender: bytes) -> int:
        return self.mempools[chain_id].count_of(sender) if chain_id in self.mempools else 0

    def next_nonce(self, chain_id: int, sender: bytes) -> int:
        nonce = get_nonce(self.store.state(chain_id), sender)
        mempool = self.mempools.get(chain_id)
        while mempool is not None and mempool.holds_nonce(sender, nonce):
            nonce += 1
        return nonce

    async def import_blocks(self, chain_id: int, peer: PeerId, blocks: tuple[Block, ...],
                            last_commit: CommitCertificate | None, target: int) -> ImportReport:
        if chain_id not in self.runners:
            return ImportReport(0, 0)
        return await self.runners[chain_id].import_blocks(peer, blocks, last_commit, target)

    def context(self, validators: ValidatorSet, prev: ValidatorSet | None = None) -> Context:
        return Context(self.network_id, self.params, validators, prev, earnings=self.earnings.get,
                       next_validators=self.validator_sets.get)

    # --- running ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled."""
        self._subscribe()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for runner in self.runners.values():
                await nursery.start(runner.run)
            task_status.started()

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    def topic(self, name: str) -> str:
        return topic_name(self.network_id, name)

    async def publish(self, name: str, msg: object) -> None:
        try:
            await self.network.publish(self.topic(name), codec.encode(msg))
        except BlyanError as err:
            logger.warning("%s: publish on %s failed: %s", self.name, name, err)

    def penalize(self, peer: PeerId, reason: str, weight: float = 1.0) -> None:
        self.feed.publish(Penalized(peer, reason))
        self.network.penalize(peer, reason, weight)

    def _subscribe(self) -> None:
        n = self.network
        n.subscribe(self.topic(TOPIC_PROPOSALS), self.on_proposal_gossip)
        n.subscribe(self.topic(TOPIC_VOTES), self.on_vote_gossip)
        n.subscribe(self.topic(TOPIC_TXS), self.on_tx_gossip)
        n.subscribe(self.topic(TOPIC_EVIDENCE), self.on_evidence_gossip)
        n.set_request_handler(protocol_name(self.network_id, PROTOCOL_PROPOSAL), self.serve_proposal,
                              MAX_REQUEST_BYTES)

    # --- cross-chain bookkeeping after a commit -----------------------------------------------

    def on_committed(self, chain_id: int, block: Block, state: State, changes: dict[bytes, bytes | None],
                     synced: bool, seconds: float) -> None:
        """A block of `chain_id` is stored: evidence, validator sets, earnings, the feed, and a
        poke for every chain (a commit on one may give another work)."""
        if chain_id == CHAIN_REWARD:
            self.evidence.mark_included([tx.body.payload.evidence for tx in block.txs
                                         if isinstance(tx.body.payload, Slash)])
            self.evidence.prune(self.network_id, self.validators(), state)
            self.validator_sets.remember_current()
        self.earnings.on_committed(chain_id, changes)
        self.feed.publish(Committed(chain_id, block, state, changes, synced, seconds))
        for runner in self.runners.values():
            runner.poke()

    # --- gossip handlers ----------------------------------------------------------------------

    async def on_tx_gossip(self, peer: PeerId, data: bytes) -> Verdict:
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
            self.feed.publish(TxAdmitted(chain_id, msg.tx.hash(), False))
            runner.poke()
            return Verdict.ACCEPT
        if result.is_invalid:
            return Verdict.REJECT
        return Verdict.IGNORE

    async def on_proposal_gossip(self, peer: PeerId, data: bytes) -> Verdict:
        try:
            msg = decode(ProposalMsg, data, max_size=self.params.consensus.max_block_bytes + 4096)
        except DecodingError:
            self.penalize(peer, "undecodable proposal")
            return Verdict.REJECT
        runner = self.runners.get(msg.signed.proposal.chain_id)
        if runner is None:
            self.penalize(peer, "proposal does not name its block")
            return Verdict.REJECT
        return runner.receive_proposal(peer, msg)

    async def on_vote_gossip(self, peer: PeerId, data: bytes) -> Verdict:
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
        for signers in runner.candidate_sets(vote.height):
            try:
                validate_signed_vote(msg.signed, self.network_id, signers)
                break
            except BlyanError as err:
                error = err
        else:
            self.penalize(peer, f"vote: {error}")
            return Verdict.REJECT
        return runner.enqueue(("vote", peer, msg.signed))

    async def on_evidence_gossip(self, peer: PeerId, data: bytes) -> Verdict:
        try:
            msg = decode(EvidenceMsg, data, max_size=2048)
        except DecodingError:
            self.penalize(peer, "undecodable evidence")
            return Verdict.REJECT
        return self.add_evidence(msg.evidence, peer)

    def add_evidence(self, evidence: DuplicateVoteEvidence, peer: PeerId | None = None) -> Verdict:
        """Evidence from a peer's gossip, or (peer None) seen by our own machine: gossiped."""
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

    async def serve_proposal(self, peer: PeerId, data: bytes) -> bytes:
        req = decode(ProposalRequest, data, max_size=MAX_REQUEST_BYTES)
        runner = self.runners.get(req.chain_id)
        found = runner.get_proposal_msg(req.height, req.round) if runner else None
        return codec.encode(ProposalResponse(found))


class _RunnerPort:
    """The engine as one chain's runner may see it (`node.engine.ports.ChainPort`)."""

    def __init__(self, engine: Engine, chain_id: int) -> None:
        self._engine = engine
        self.chain_id = chain_id
        self.node_name = engine.name
        self.network_id = engine.network_id
        self.params = engine.params
        self.config = engine.config
        self.address = engine.address
        self.mempool = engine.mempools[chain_id]
        self.signer = engine.signer
        self.guard = SignGuard(engine.store.kv, chain_id)
        self.own_votes = OwnVoteLog(engine.store.kv, chain_id)
        self.builder = engine.builder
        self.rng = engine.rng

    def get_state(self) -> State:
        return self._engine.store.state(self.chain_id)

    def get_header(self, height: int) -> BlockHeader | None:
        return self._engine.store.get_header(self.chain_id, height)

    def get_commit(self, height: int) -> CommitCertificate | None:
        return self._engine.store.get_commit(self.chain_id, height)

    def get_validator_set(self, vs_hash: bytes) -> ValidatorSet | None:
        return self._engine.validator_sets.get(vs_hash)

    def get_current_validators(self) -> ValidatorSet:
        return self._engine.validators()

    def make_context(self, validators: ValidatorSet, prev: ValidatorSet | None) -> Context:
        return self._engine.context(validators, prev)

    def now_ms(self) -> int:
        return self._engine.clock.now_ms()

    def get_system_txs(self) -> list[Transaction]:
        e = self._engine
        state = self.get_state()
        txs = [tx for source in e.system_sources[self.chain_id] for tx in source.make_system_txs(state)]
        if self.chain_id != CHAIN_REWARD:
            return txs
        return make_slash_txs(e.evidence, state) + e.earnings.make_reward_txs() + txs

    def has_system_work(self) -> bool:
        e = self._engine
        state = self.get_state()
        if any(source.has_system_work(state) for source in e.system_sources[self.chain_id]):
            return True
        if self.chain_id != CHAIN_REWARD:
            return False
        return bool(e.evidence.pending()) or bool(e.earnings)

    async def publish(self, topic: str, msg: object) -> None:
        await self._engine.publish(topic, msg)

    async def request(self, peer: PeerId, protocol: str, msg: object, response: type, max_size: int) -> object:
        e = self._engine
        data = await e.network.request(peer, protocol_name(e.network_id, protocol), codec.encode(msg),
                                       e.config.request_timeout_s)
        return codec.decode(response, data, max_size=max_size)

    def get_peers(self) -> list[PeerId]:
        return self._engine.network.peers()

    def penalize(self, peer: PeerId, reason: str) -> None:
        self._engine.penalize(peer, reason)

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        self._engine.spawn(fn, *args)

    async def write_block(self, block: Block, state: State, changes: dict[bytes, bytes | None],
                          commit: CommitCertificate) -> None:
        """One synced LevelDB batch: in a worker thread in the daemon, so that the event loop
        keeps serving gossip meanwhile (blocking work off the event loop); inline in simulations."""
        e = self._engine
        if e.config.offload_writes:
            await trio.to_thread.run_sync(e.store.commit_block, block, state, changes, commit,
                                          limiter=e.write_limiter)
        else:
            e.store.commit_block(block, state, changes, commit)

    def on_committed(self, block: Block, state: State, changes: dict[bytes, bytes | None], synced: bool,
                     seconds: float) -> None:
        self._engine.on_committed(self.chain_id, block, state, changes, synced, seconds)

    def report_evidence(self, evidence: DuplicateVoteEvidence) -> None:
        self._engine.add_evidence(evidence)

    def report_round(self, height: int, round: int) -> None:
        self._engine.feed.publish(RoundStarted(self.chain_id, height, round))

    def report_peer_ahead(self, peer: PeerId, height: int) -> None:
        self._engine.feed.publish(PeerAhead(self.chain_id, peer, height))
