"""One chain's consensus: the only task that changes that chain's consensus state.

A `ChainRunner` is fed by a bounded channel (gossip handlers and catch-up enqueue, it alone
acts), drives the chain's Tendermint machine height after height, and carries out its actions:
timeouts, proposals (built by the port's `BlockBuilder`), guarded signatures, commits. It asks
the node for everything else through its `ChainPort`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import trio

from chain.commit import InvalidCommit, verify_commit
from chain.context import Context
from chain.errors import (
    BlyanError,
    DecodingError,
    InvalidBlock,
    MissingDependency,
    StoreError,
)
from chain.state import State
from chain.transition import apply_block
from chain.types import CHAIN_NAMES, Block, CommitCertificate, ValidatorSet
from chain.votes import STEP_PREVOTE, SignedVote, Vote
from consensus.messages import InvalidProposal, Proposal, validate_signed_proposal
from consensus.tendermint import (
    BroadcastProposal,
    BroadcastVote,
    Decide,
    ReportEvidence,
    RequestValue,
    ScheduleTimeout,
    Step,
    Tendermint,
)
from node.core.ports import ImportReport
from node.engine.ports import ChainPort
from node.engine.wire import (
    PROTOCOL_PROPOSAL,
    TOPIC_PROPOSALS,
    TOPIC_TXS,
    TOPIC_VOTES,
    ProposalMsg,
    ProposalRequest,
    ProposalResponse,
    TxMsg,
    VoteMsg,
)
from p2p.network import PeerId, RequestFailed, Verdict

logger = logging.getLogger(__name__)

MAX_FUTURE_EVENTS = 2048
REGOSSIP_TXS = 32
REGOSSIP_EVERY = 5
"""Pending transactions are gossiped again every this many rebroadcast ticks."""
MAX_REBROADCAST_BACKOFF = 8
"""Most times `rebroadcast_s` between two resends of the same votes while a height is stuck."""


@dataclass(frozen=True, slots=True)
class _Blocks:
    """Catch-up's blocks for the runner to import, and where to send the report."""

    peer: PeerId
    blocks: tuple[Block, ...]
    last_commit: CommitCertificate | None
    target: int
    reply: trio.MemorySendChannel


class ChainRunner:
    """Consensus for one chain: heights, rounds, proposals, votes, commits and synced imports."""

    def __init__(self, port: ChainPort) -> None:
        self.port = port
        self.chain_id = port.chain_id
        self.name = CHAIN_NAMES[port.chain_id]
        self._send, self._recv = trio.open_memory_channel(port.config.event_queue)
        self._poked = False
        self._future: list[tuple] = []
        self._ticks = 0
        self._new_height()

    # --- height lifecycle -------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.port.get_state()

    def _new_height(self) -> None:
        port = self.port
        self.height = self.state.height + 1
        head = port.get_header(self.state.height)
        self.validators = port.get_validator_set(head.next_validators_hash) if head else None
        if self.validators is None:  # a store from before the set was kept: the current one
            logger.warning("%s/%s: next validator set of the head unknown", port.node_name, self.name)
            self.validators = port.get_current_validators()
        self.prev_validators = self._validators_of_block(self.height - 1)
        self.machine = Tendermint(self.chain_id, self.height, self.validators, port.address,
                                  port.config.tendermint)
        self.started = False
        self.blocks: dict[bytes, Block] = {}
        self.checked: dict[bytes, tuple[State, dict] | None] = {}
        self.undecided: dict[bytes, Block] = {}
        self.proposal_msgs: dict[int, ProposalMsg] = {}
        self.own_votes: list[SignedVote] = port.own_votes.load(self.height)
        self.last_round = -1
        if self.own_votes:
            self.machine.restore_own_votes(self.own_votes)

    def _validators_of_block(self, height: int) -> ValidatorSet | None:
        if height < 1:
            return None
        header = self.port.get_header(height)
        return None if header is None else self.port.get_validator_set(header.validators_hash)

    def current_context(self) -> Context:
        return self.port.make_context(self.validators, self.prev_validators)

    def has_work(self) -> bool:
        """System work, or a pending transaction a block could take: else no height starts here.
        Pending transactions that fail against the state are dropped on the way, so that they
        never start a height whose block would be empty."""
        if self.port.has_system_work():
            return True
        pool = self.port.mempool
        return pool.has_ready(self.state) and bool(pool.drop_failing(self.state, self.current_context(), 1))

    # --- inputs (synchronous, non-blocking: called from gossip handlers) --------------------

    def classify_height(self, height: int, peer: PeerId) -> Verdict:
        """ACCEPT for the height being decided and the next; others are ignored (and a height
        beyond the next means we lag: the peer is reported as ahead)."""
        if height < self.height:
            return Verdict.IGNORE
        if height > self.height:
            self.port.report_peer_ahead(peer, height - 1)
        if height > self.height + 1:
            return Verdict.IGNORE
        return Verdict.ACCEPT

    def receive_proposal(self, peer: PeerId, msg: ProposalMsg) -> Verdict:
        """A proposal from a peer (gossip or a proposal request): checked, then queued."""
        p = msg.signed.proposal
        if p.chain_id != self.chain_id or msg.block.hash() != p.block_hash:
            self.port.penalize(peer, "proposal does not name its block")
            return Verdict.REJECT
        verdict = self.classify_height(p.height, peer)
        if verdict is not Verdict.ACCEPT:
            return verdict
        for signers in self.candidate_sets(p.height):
            try:
                validate_signed_proposal(msg.signed, self.port.network_id, signers)
                break
            except InvalidProposal as err:
                error = err
        else:
            self.port.penalize(peer, str(error))
            return Verdict.REJECT
        return self.enqueue(("proposal", peer, msg))

    def candidate_sets(self, height: int) -> list[ValidatorSet]:
        """The sets that may sign a message of `height`: ours; for the next height also the
        newest when an epoch boundary is passing (which one decides it is not known yet, and a
        new validator's message is no offence). The machine counts only its own set's votes."""
        sets = [self.validators]
        if height > self.height:
            newest = self.port.get_current_validators()
            if newest.epoch > self.validators.epoch:
                sets.append(newest)
        return sets

    def enqueue(self, event: tuple) -> Verdict:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            return Verdict.IGNORE
        return Verdict.ACCEPT

    def poke(self) -> None:
        """Something changed that may give this chain work (a transaction, evidence, a commit)."""
        if not self._poked and self.enqueue(("poke",)) is Verdict.ACCEPT:
            self._poked = True

    def get_proposal_msg(self, height: int, round: int) -> ProposalMsg | None:
        return self.proposal_msgs.get(round) if height == self.height else None

    async def import_blocks(self, peer: PeerId, blocks: tuple[Block, ...], last_commit: CommitCertificate | None,
                            target: int) -> ImportReport:
        """Hand catch-up's blocks to the runner task and wait for what it made of them. Once the
        chain reaches `target` (the height the peer reported), consensus resumes."""
        reply_send, reply_recv = trio.open_memory_channel(1)
        await self._send.send(("blocks", _Blocks(peer, blocks, last_commit, target, reply_send)))
        async with reply_recv:
            return await reply_recv.receive()

    # --- the runner task --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._rebroadcast_loop)
            task_status.started()
            self.poke()
            async for event in self._recv:
                try:
                    await self._handle(event)
                except StoreError:  # the disk failed: stop the node rather than go on without it
                    logger.critical("%s/%s: store failure; stopping", self.port.node_name, self.name)
                    raise
                except BlyanError as err:  # bad input never stops the chain
                    logger.warning("%s/%s: %s while handling %s", self.port.node_name, self.name, err, event[0])

    async def _handle(self, event: tuple) -> None:
        kind = event[0]
        if kind == "poke":
            self._poked = False
            if not self.started and self.has_work():
                await self._start()
            elif self.undecided:
                await self._recheck()
        elif kind == "proposal":
            await self._on_proposal(event[1], event[2])
        elif kind == "vote":
            await self._on_vote(event[1], event[2])
        elif kind == "timeout":
            _, tkind, height, round_ = event
            if height == self.height:
                await self._run_actions(self.machine.on_timeout(tkind, height, round_))
        elif kind == "blocks":
            await self._on_blocks(event[1])

    async def _start(self) -> None:
        self.started = True
        await self._run_actions(self.machine.start())
        for event in self._take_future():
            await self._handle(event)

    def _take_future(self) -> list[tuple]:
        now = [e for e in self._future if self._event_height(e) == self.height]
        self._future = [e for e in self._future if self._event_height(e) > self.height]
        return now

    @staticmethod
    def _event_height(event: tuple) -> int:
        if event[0] == "proposal":
            return event[2].signed.proposal.height
        return event[2].vote.height

    def _defer(self, event: tuple) -> bool:
        """Keep an event of the next height until we get there."""
        if self._event_height(event) > self.height:
            if len(self._future) < MAX_FUTURE_EVENTS:
                self._future.append(event)
            return True
        return self._event_height(event) < self.height

    async def _on_proposal(self, peer: PeerId, msg: ProposalMsg) -> None:
        if self._defer(("proposal", peer, msg)):
            return
        p = msg.signed.proposal
        if p.proposer != self.machine.get_proposer(p.round):
            return  # signed for another validator set; not ours to judge
        valid = self._check_block(msg.block, peer)
        self.blocks.setdefault(msg.block.hash(), msg.block)
        first = p.round not in self.proposal_msgs
        self.proposal_msgs.setdefault(p.round, msg)
        if not self.started:
            await self._start()
        await self._run_actions(self.machine.on_proposal(msg.signed, valid))
        if first and p.pol_round >= 0 and p.height == self.height:
            await self._send_pol_prevotes(p.pol_round, p.block_hash)

    async def _send_pol_prevotes(self, pol_round: int, block_hash: bytes) -> None:
        """A re-proposal of `block_hash` (POL round `pol_round`) is accepted only by who holds 2/3
        prevotes for it at that round; a node that missed some (a partition, lost messages, a
        voter that is banned here or gone) is what keeps a locked minority from finalizing, and
        the votes' own senders may never send them again. So, once per proposal, relay the
        prevotes of that POL round that we hold: the whole polka when we have it, else our own
        (signed votes are anyone's to forward: CometBFT's reactor sends a peer the POL prevotes
        of the proposal it has, the same)."""
        votes = self.machine.votes
        if votes.has_two_thirds_for(pol_round, STEP_PREVOTE, block_hash):
            relay = votes.get_votes(pol_round, STEP_PREVOTE, block_hash)
        else:
            relay = [signed for signed in self.own_votes
                     if signed.vote.round == pol_round and signed.vote.step == STEP_PREVOTE]
        for signed in relay:
            await self.port.publish(TOPIC_VOTES, VoteMsg(signed))

    async def _on_vote(self, peer: PeerId, signed: SignedVote) -> None:
        if self._defer(("vote", peer, signed)):
            return
        if not self.started:
            await self._start()
        await self._run_actions(self.machine.on_vote(signed))

    def _check_block(self, block: Block, peer: PeerId | None) -> bool:
        """valid(v): the chain's own rules, plus a timestamp not too far in our future."""
        block_hash = block.hash()
        if block_hash in self.checked:
            return self.checked[block_hash] is not None
        result = None
        try:
            if block.header.time_ms > self.port.now_ms() + self.port.config.max_future_drift_ms:
                raise MissingDependency("block time is ahead of our clock")
            result = apply_block(self.state, block, self.current_context())
        except InvalidBlock as err:
            if peer is not None:
                self.port.penalize(peer, f"invalid proposal: {err}")
        except MissingDependency as err:
            # Not decidable yet (another chain or the validator set is behind here): judged
            # again when something commits (`_recheck`), not cached.
            logger.info("%s/%s: cannot validate block yet: %s", self.port.node_name, self.name, err)
            self.undecided[block_hash] = block
            return False
        self.undecided.pop(block_hash, None)
        self.checked[block_hash] = result
        return result is not None

    async def _recheck(self) -> None:
        """Proposals that lacked a dependency: judge them again and tell the machine."""
        for block_hash, block in list(self.undecided.items()):
            if self._check_block(block, None):
                for msg in list(self.proposal_msgs.values()):
                    if msg.signed.proposal.block_hash == block_hash:
                        await self._run_actions(self.machine.on_proposal(msg.signed, True))

    # --- carrying out the machine's actions ------------------------------------------------

    async def _run_actions(self, actions: list) -> None:
        queue = list(actions)
        while queue:
            action = queue.pop(0)
            if self.machine.round != self.last_round:
                self.last_round = self.machine.round
                self.port.report_round(self.height, self.machine.round)
            if isinstance(action, ScheduleTimeout):
                self.port.spawn(self._timeout, action)
            elif isinstance(action, RequestValue):
                queue.extend(self._propose_value())
            elif isinstance(action, BroadcastProposal):
                queue.extend(await self._broadcast_proposal(action.proposal))
            elif isinstance(action, BroadcastVote):
                queue.extend(await self._broadcast_vote(action.vote))
            elif isinstance(action, ReportEvidence):
                self.port.report_evidence(action.evidence)
            elif isinstance(action, Decide):
                await self._commit(action)
                return

    async def _timeout(self, action: ScheduleTimeout) -> None:
        await trio.sleep(action.delay_ms / 1000)
        await self._send.send(("timeout", action.kind, action.height, action.round))

    def _propose_value(self) -> list:
        port = self.port
        state = self.state
        candidates = port.get_system_txs() + port.mempool.select(
            state, port.params.consensus.max_block_txs, port.params.consensus.max_block_bytes // 2
        )
        last_commit = port.get_commit(self.height - 1) if self.height > 1 else None
        time_ms = max(port.now_ms(), state.time_ms + 1)
        newest = port.get_current_validators()
        next_set = newest if newest.epoch >= self.validators.epoch else self.validators
        block, rejected = port.builder.build(state, candidates, self.current_context(), port.address, time_ms,
                                             last_commit, next_set)
        for tx, err in rejected:
            logger.debug("%s/%s: left out %s: %s", port.node_name, self.name, tx.hash().hex()[:12], err)
            if not isinstance(err, MissingDependency):
                port.mempool.remove(tx.hash())  # it will not become valid again
        self.blocks[block.hash()] = block
        self.checked.setdefault(block.hash(), self._apply_own(block))
        return self.machine.on_value(block.hash())

    def _apply_own(self, block: Block) -> tuple[State, dict] | None:
        try:
            return apply_block(self.state, block, self.current_context())
        except (InvalidBlock, MissingDependency) as err:
            logger.error("%s/%s: own block invalid: %s", self.port.node_name, self.name, err)
            return None

    async def _broadcast_proposal(self, proposal: Proposal) -> list:
        port = self.port
        if not port.guard.allow(proposal.height, proposal.round, 0, proposal.block_hash):
            return []
        signed = port.signer.sign_proposal(proposal)
        msg = ProposalMsg(signed, self.blocks[proposal.block_hash])
        self.proposal_msgs[proposal.round] = msg
        await port.publish(TOPIC_PROPOSALS, msg)
        if proposal.pol_round >= 0:  # a re-proposal: its POL, for whoever missed part of it
            await self._send_pol_prevotes(proposal.pol_round, proposal.block_hash)
        return self.machine.on_proposal(signed, self.checked.get(proposal.block_hash) is not None)

    async def _broadcast_vote(self, vote: Vote) -> list:
        port = self.port
        if not port.guard.allow(vote.height, vote.round, vote.step, vote.block_hash):
            return []
        signed = port.signer.sign_vote(vote)
        self.own_votes.append(signed)
        port.own_votes.save(self.height, self.own_votes)
        await port.publish(TOPIC_VOTES, VoteMsg(signed))
        return self.machine.on_vote(signed)

    async def _commit(self, decide: Decide) -> None:
        started = time.perf_counter()
        block = self.blocks[decide.block_hash]
        result = self.checked.get(decide.block_hash)
        if result is None:
            result = apply_block(self.state, block, self.current_context())
        new_state, changes = result
        await self.port.write_block(block, new_state, changes, decide.commit)
        self._after_commit(block, new_state, changes, False, time.perf_counter() - started)
        logger.info("%s/%s: finalized height %d (%d txs, round %d)", self.port.node_name, self.name,
                    block.header.height, len(block.txs), decide.round)

    def _after_commit(self, block: Block, new_state: State, changes: dict, synced: bool, seconds: float) -> None:
        self.port.mempool.remove_committed(list(block.txs), new_state)
        self._new_height()
        self._prune_mempool(new_state)
        self.port.on_committed(block, new_state, changes, synced, seconds)

    def _prune_mempool(self, state: State) -> None:
        """Drop what the new state made invalid (a vote on a decided dataset, an overdraft), so
        that stale transactions neither start heights nor fill blocks."""
        pool = self.port.mempool
        if len(pool):
            pool.drop_failing(state, self.current_context(), len(pool))

    # --- blocks from catch-up ---------------------------------------------------------------

    async def _on_blocks(self, job: _Blocks) -> None:
        imported, needs_reward = 0, 0
        try:
            for i, block in enumerate(job.blocks):
                if block.header.height != self.state.height + 1:
                    break
                commit = job.blocks[i + 1].last_commit if i + 1 < len(job.blocks) else job.last_commit
                ok, needs_reward = await self._import_synced(job.peer, block, commit)
                if not ok:
                    break
                imported += 1
        finally:  # whatever happened, catch-up hears what was imported (it waits for the report)
            with job.reply:
                try:
                    job.reply.send_nowait(ImportReport(imported, self.state.height, needs_reward))
                except trio.BrokenResourceError:
                    pass  # catch-up was cancelled meanwhile
        if imported and self.state.height >= job.target:
            self.poke()

    async def _import_synced(self, peer: PeerId, block: Block, commit: CommitCertificate | None) -> tuple[bool, int]:
        """Check one block against its commit and the chain's rules, then store it. Returns
        whether it was stored, and the reward height needed first when its set is unknown."""
        port = self.port
        started = time.perf_counter()
        head = port.get_header(self.state.height)
        validators = port.get_validator_set(head.next_validators_hash) if head else None
        if commit is None or validators is None:
            return False, block.header.height if validators is None else 0
        try:
            verify_commit(self.chain_id, block.header.height, block.hash(), commit, validators, port.network_id)
            ctx = port.make_context(validators, self._validators_of_block(block.header.height - 1))
            new_state, changes = apply_block(self.state, block, ctx)
        except (InvalidCommit, InvalidBlock) as err:
            port.penalize(peer, f"bad synced block: {err}")
            return False, 0
        except MissingDependency:
            return False, 0
        await port.write_block(block, new_state, changes, commit)
        self._after_commit(block, new_state, changes, True, time.perf_counter() - started)
        return True, 0

    # --- keeping gossip alive ---------------------------------------------------------------

    async def _rebroadcast_loop(self) -> None:
        """Every `rebroadcast_s` (jittered), stretched while the height stays stuck: each stuck
        tick doubles the wait up to `MAX_REBROADCAST_BACKOFF` times. Every validator resends its
        votes on each tick of a stall, so without the backoff a stall that comes from load (16
        daemons on 2 cores) feeds itself: more rounds, more votes, more load."""
        port = self.port
        backoff = 1
        last = None
        while True:
            await trio.sleep(port.config.rebroadcast_s * backoff * (1.0 + 0.2 * port.rng.random()))
            where = (self.height, self.machine.round, self.machine.step)
            stalled = where == last
            last = where
            backoff = min(2 * backoff, MAX_REBROADCAST_BACKOFF) if stalled else 1
            await self._rebroadcast(stalled)

    async def _rebroadcast(self, stalled: bool = True) -> None:
        """Resend own votes and the proposals they lean on when `stalled` (no step taken since
        the last tick: fresh votes went out when they were made); ask for wanted proposals;
        every `REGOSSIP_EVERY` ticks, regossip pending transactions."""
        port = self.port
        live = self.started and self.machine.step != Step.COMMIT
        if live and stalled:
            # Own votes of the last two rounds, and of every round a live proposal leans on
            # (its POL round, our lock): a node that joins late needs them to follow a
            # re-proposal (lines 28-33), and nobody else can send our signatures for us.
            s = self.machine.state
            current = s.round
            rounds = {current, s.valid_round, s.locked_round}
            seen = self.machine.proposal_for_round(current)
            if seen is not None:
                rounds.add(seen.pol_round)
            for signed in self.own_votes:
                v = signed.vote
                if v.height == self.height and (v.round >= current - 1 or v.round in rounds):
                    await port.publish(TOPIC_VOTES, VoteMsg(signed))
            for r in sorted(rounds):
                if r in self.proposal_msgs:
                    await port.publish(TOPIC_PROPOSALS, self.proposal_msgs[r])
        if live:
            await self._fetch_wanted()
        self._ticks += 1
        if self._ticks % REGOSSIP_EVERY:
            return
        pool = port.mempool
        for tx_hash in pool.pending_hashes()[:REGOSSIP_TXS]:
            tx = pool.get(tx_hash)
            if tx is not None:
                await port.publish(TOPIC_TXS, TxMsg(tx))

    async def _fetch_wanted(self) -> None:
        """Proposals a quorum of votes names that we have not seen: ask a random peer."""
        port = self.port
        peers = port.get_peers()
        for round_, _ in self.machine.get_wanted_proposals()[:2]:
            if not peers:
                return
            peer = peers[port.rng.randrange(len(peers))]
            req = ProposalRequest(self.chain_id, self.height, round_)
            try:
                resp = await port.request(peer, PROTOCOL_PROPOSAL, req, ProposalResponse,
                                          port.params.consensus.max_block_bytes + 8192)
            except (RequestFailed, DecodingError):
                continue
            if resp.found is not None:
                self.receive_proposal(peer, resp.found)
