"""One chain's half of the engine: the only task that changes that chain's consensus state."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import trio

from chain import codec
from chain.commit import InvalidCommit, verify_commit
from chain.context import Context
from chain.errors import BlyanError, DecodingError, InvalidBlock, MissingDependency
from chain.kv import COL_NODE
from chain.state import State
from chain.errors import InvalidTransaction
from chain.state import Overlay
from chain.transition import apply_block, apply_tx, build_block
from chain.types import CHAIN_NAMES, CHAIN_REWARD, Block, Transaction, ValidatorSet
from chain.votes import NIL, SignedVote, Vote
from consensus.evidence import make_slash_txs
from consensus.messages import Proposal, sign_proposal
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
from node.progress import RateMeter, format_progress
from node.wire import (
    PROTOCOL_BLOCKS,
    PROTOCOL_PROPOSAL,
    TOPIC_PROPOSALS,
    TOPIC_TXS,
    TOPIC_VOTES,
    BlocksRequest,
    BlocksResponse,
    OwnVotes,
    ProposalMsg,
    ProposalRequest,
    ProposalResponse,
    TxMsg,
    VoteMsg,
)
from p2p.network import PeerId, RequestFailed, Verdict, protocol_name

if TYPE_CHECKING:
    from node.engine import Engine

logger = logging.getLogger(__name__)

MAX_FUTURE_EVENTS = 2048
REGOSSIP_TXS = 32
REGOSSIP_EVERY = 5
"""Pending transactions are gossiped again every this many rebroadcast ticks."""


class ChainRunner:
    """Consensus for one chain: heights, rounds, proposals, votes, commits and catch-up."""

    def __init__(self, engine: Engine, chain_id: int) -> None:
        self.engine = engine
        self.chain_id = chain_id
        self.name = CHAIN_NAMES[chain_id]
        self._send, self._recv = trio.open_memory_channel(engine.config.event_queue)
        self._poked = False
        self._syncing = False
        self._future: list[tuple] = []
        self._ticks = 0
        self.sync_meter = RateMeter()
        """Heights reached by catch-up over time: blocks/s for logs and `blyan status`."""
        self._guard_key = COL_NODE + b"sign" + bytes([chain_id])
        self._votes_key = COL_NODE + b"myvotes" + bytes([chain_id])
        self._new_height()

    # --- height lifecycle -------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.engine.store.state(self.chain_id)

    def _new_height(self) -> None:
        e = self.engine
        self.height = self.state.height + 1
        head = e.store.get_header(self.chain_id, self.state.height)
        self.validators = e.known_sets.get(head.next_validators_hash) if head else None
        if self.validators is None:  # a store from before the set was kept: the current one
            logger.warning("%s/%s: next validator set of the head unknown", e.name, self.name)
            self.validators = e.validators()
        self.prev_validators = self._validators_of_block(self.height - 1)
        self.machine = Tendermint(self.chain_id, self.height, self.validators, e.address, e.config.tendermint)
        self.started = False
        self.blocks: dict[bytes, Block] = {}
        self.checked: dict[bytes, tuple[State, dict] | None] = {}
        self.undecided: dict[bytes, Block] = {}
        self.proposal_msgs: dict[int, ProposalMsg] = {}
        self.own_votes: list[SignedVote] = []
        self.last_round = -1
        raw = e.store.kv.get(self._votes_key)
        if raw is not None:
            kept = codec.decode(OwnVotes, raw)
            if kept.height == self.height:
                self.own_votes = list(kept.votes)
                self.machine.restore_own_votes(self.own_votes)

    def _validators_of_block(self, height: int) -> ValidatorSet | None:
        if height < 1:
            return None
        header = self.engine.store.get_header(self.chain_id, height)
        if header is None:
            return None
        return self.engine.known_sets.get(header.validators_hash)

    def current_context(self) -> Context:
        return self.engine.context(self.validators, self.prev_validators)

    def has_work(self) -> bool:
        e = self.engine
        if len(e.mempools[self.chain_id]) > 0:
            return True
        if self.chain_id == CHAIN_REWARD:
            return bool(e.evidence.pending()) or bool(e.pending_earnings)
        return False

    # --- inputs from the engine's handlers (synchronous, non-blocking) ---------------------

    def classify_height(self, height: int, peer: PeerId) -> Verdict:
        """ACCEPT for the height being decided and the next; others are ignored (and a height
        beyond the next means we lag: catch up from that peer)."""
        if height < self.height:
            return Verdict.IGNORE
        if height > self.height:
            self.want_sync(peer, height - 1)
        if height > self.height + 1:
            return Verdict.IGNORE
        return Verdict.ACCEPT

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

    def want_sync(self, peer: PeerId, target: int) -> None:
        if target > self.state.height and not self._syncing:
            self._syncing = True
            if self.sync_meter.rate is None:
                self.sync_meter.add(trio.current_time(), self.state.height)
            self.engine.spawn(self._fetch_blocks, peer, target)

    def get_proposal_msg(self, height: int, round: int) -> ProposalMsg | None:
        return self.proposal_msgs.get(round) if height == self.height else None

    # --- the runner task --------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._rebroadcast_loop)
            task_status.started()
            self.poke()
            async for event in self._recv:
                try:
                    await self._handle(event)
                except BlyanError as err:  # bad input never stops the chain
                    logger.warning("%s/%s: %s while handling %s", self.engine.name, self.name, err, event[0])

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
            await self._on_blocks(event[1], event[2])

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
        self.proposal_msgs.setdefault(p.round, msg)
        if not self.started:
            await self._start()
        if self.engine.behaviour.equivocate and self.engine.key is not None:
            await self._vote_for_anything(p.round, p.block_hash)
        await self._run_actions(self.machine.on_proposal(msg.signed, valid))

    async def _vote_for_anything(self, round_: int, block_hash: bytes) -> None:
        """Byzantine: prevote and precommit every block seen, whatever else was signed."""
        e = self.engine
        for step in (1, 2):
            vote = Vote(self.chain_id, self.height, round_, step, block_hash, e.key.address)
            await e.publish(TOPIC_VOTES, VoteMsg(e.sign_vote(vote)))

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
            if block.header.time_ms > self.engine.clock.now_ms() + self.engine.config.max_future_drift_ms:
                raise MissingDependency("block time is ahead of our clock")
            result = apply_block(self.state, block, self.current_context())
        except InvalidBlock as err:
            if peer is not None:
                self.engine.penalize(peer, f"invalid proposal: {err}")
        except MissingDependency as err:
            # Not decidable yet (another chain or the validator set is behind here): judged
            # again when something commits (`_recheck`), not cached.
            logger.info("%s/%s: cannot validate block yet: %s", self.engine.name, self.name, err)
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
                self.engine.observer.on_round(self.engine.name, self.chain_id, self.height, self.machine.round)
            if isinstance(action, ScheduleTimeout):
                self.engine.spawn(self._timeout, action)
            elif isinstance(action, RequestValue):
                queue.extend(self._propose_value(action))
            elif isinstance(action, BroadcastProposal):
                queue.extend(await self._broadcast_proposal(action.proposal))
            elif isinstance(action, BroadcastVote):
                queue.extend(await self._broadcast_vote(action.vote))
            elif isinstance(action, ReportEvidence):
                self.engine.add_evidence(action.evidence)
            elif isinstance(action, Decide):
                await self._commit(action)
                return

    async def _timeout(self, action: ScheduleTimeout) -> None:
        await trio.sleep(action.delay_ms / 1000)
        await self._send.send(("timeout", action.kind, action.height, action.round))

    def _propose_value(self, action: RequestValue) -> list:
        e = self.engine
        state = self.state
        candidates = self._system_txs() + e.mempools[self.chain_id].select(
            state, e.params.consensus.max_block_txs, e.params.consensus.max_block_bytes // 2
        )
        last_commit = e.store.get_commit(self.chain_id, self.height - 1) if self.height > 1 else None
        time_ms = max(e.clock.now_ms(), state.time_ms + 1)
        newest = e.validators()
        next_set = newest if newest.epoch >= self.validators.epoch else self.validators
        block, rejected = build_block(state, candidates, self.current_context(), e.address, time_ms,
                                      last_commit, next_set)
        for tx, err in rejected:
            logger.debug("%s/%s: left out %s: %s", e.name, self.name, tx.hash().hex()[:12], err)
            if not isinstance(err, MissingDependency):
                e.mempools[self.chain_id].remove(tx.hash())  # it will not become valid again
        if e.behaviour.invalid_proposals:
            bad_root = bytes(32) if block.header.state_root != bytes(32) else b"\x01" * 32
            block = replace(block, header=replace(block.header, state_root=bad_root))
        self.blocks[block.hash()] = block
        self.checked.setdefault(block.hash(), None if e.behaviour.invalid_proposals else self._apply_own(block))
        return self.machine.on_value(block.hash())

    def _apply_own(self, block: Block) -> tuple[State, dict] | None:
        try:
            return apply_block(self.state, block, self.current_context())
        except (InvalidBlock, MissingDependency) as err:
            logger.error("%s/%s: own block invalid: %s", self.engine.name, self.name, err)
            return None

    def _system_txs(self) -> list[Transaction]:
        if self.chain_id != CHAIN_REWARD:
            return []
        from chain.payloads import Reward
        from chain.types import ZERO_PUBKEY, ZERO_SIGNATURE, TxBody

        txs = make_slash_txs(self.engine.evidence, self.state)
        for (source, tx_hash), earning in sorted(self.engine.pending_earnings.items())[:256]:
            payload = Reward(source, tx_hash, earning.recipient, earning.amount)
            txs.append(Transaction(TxBody(CHAIN_REWARD, ZERO_PUBKEY, 0, payload), ZERO_SIGNATURE))
        return txs

    async def _broadcast_proposal(self, proposal: Proposal) -> list:
        e = self.engine
        if not self._guard(proposal.height, proposal.round, 0, proposal.block_hash):
            return []
        signed = sign_proposal(e.key, e.network_id, proposal)
        msg = ProposalMsg(signed, self.blocks[proposal.block_hash])
        self.proposal_msgs[proposal.round] = msg
        await e.publish(TOPIC_PROPOSALS, msg)
        return self.machine.on_proposal(signed, self.checked.get(proposal.block_hash) is not None)

    async def _broadcast_vote(self, vote: Vote) -> list:
        e = self.engine
        if not e.behaviour.equivocate and not self._guard(vote.height, vote.round, vote.step, vote.block_hash):
            return []
        signed = e.sign_vote(vote)
        self.own_votes.append(signed)
        if not e.behaviour.equivocate and len(self.own_votes) <= 256:
            e.store.kv.put(self._votes_key, codec.encode(OwnVotes(self.height, tuple(self.own_votes))))
        if not e.behaviour.withhold_votes:
            await e.publish(TOPIC_VOTES, VoteMsg(signed))
        if e.behaviour.equivocate:
            other = NIL if vote.block_hash != NIL else e.rng.randbytes(32)
            await e.publish(TOPIC_VOTES, VoteMsg(e.sign_vote(replace(vote, block_hash=other))))
        return self.machine.on_vote(signed)

    def _guard(self, height: int, round: int, step: int, block_hash: bytes) -> bool:
        """Never sign two different things for one (height, round, step), across restarts."""
        kv = self.engine.store.kv
        key = self._guard_key + bytes([step])
        raw = kv.get(key)
        mine = (height, round)
        if raw is not None:
            last = (int.from_bytes(raw[:8], "big"), int.from_bytes(raw[8:12], "big"))
            if mine < last or (mine == last and raw[12:] != block_hash):
                logger.warning("%s/%s: refusing to sign a conflicting message at %s", self.engine.name, self.name, mine)
                return False
        kv.put(key, height.to_bytes(8, "big") + round.to_bytes(4, "big") + block_hash)
        return True

    async def _commit(self, decide: Decide) -> None:
        e = self.engine
        started = time.perf_counter()
        block = self.blocks[decide.block_hash]
        result = self.checked.get(decide.block_hash)
        if result is None:
            result = apply_block(self.state, block, self.current_context())
        new_state, changes = result
        await self._write(block, new_state, changes, decide.commit)
        e.observer.on_block_imported(e.name, self.chain_id, block.header.height, len(block.txs),
                                     time.perf_counter() - started, False)
        self._after_commit(block, new_state, changes)
        logger.info("%s/%s: finalized height %d (%d txs, round %d)", e.name, self.name,
                    block.header.height, len(block.txs), decide.round)

    async def _write(self, block: Block, new_state: State, changes: dict, commit) -> None:  # noqa: ANN001
        """Store a block (one synced LevelDB batch): in a worker thread in the daemon, so that
        the event loop keeps serving gossip meanwhile (STYLE 14); inline in simulations."""
        e = self.engine
        if e.config.offload_writes:
            await trio.to_thread.run_sync(e.store.commit_block, block, new_state, changes, commit,
                                          limiter=e.write_limiter)
        else:
            e.store.commit_block(block, new_state, changes, commit)

    def _after_commit(self, block: Block, new_state: State, changes: dict) -> None:
        e = self.engine
        e.mempools[self.chain_id].remove_committed(list(block.txs), new_state)
        if self.chain_id == CHAIN_REWARD:
            from chain.payloads import Slash

            e.evidence.mark_included([tx.body.payload.evidence for tx in block.txs if isinstance(tx.body.payload, Slash)])
            e.evidence.prune(e.network_id, e.validators(), new_state)
        e.observer.on_commit(e.name, self.chain_id, block, new_state)
        e.snapshots.on_commit(self.chain_id, new_state)
        self._new_height()
        self._prune_mempool(new_state)
        e.on_committed(self.chain_id, changes)

    def _prune_mempool(self, state: State) -> None:
        """Drop what the new state made invalid (a vote on a decided dataset, an overdraft), so
        that stale transactions neither start heights nor fill blocks."""
        pool = self.engine.mempools[self.chain_id]
        if not len(pool):
            return
        view = Overlay(state)
        ctx = self.current_context()
        for tx in pool.select(state, len(pool), 1 << 40):
            try:
                apply_tx(view, tx, self.chain_id, state.height + 1, ctx)
            except (InvalidTransaction, DecodingError):
                pool.remove(tx.hash())
            except MissingDependency:
                continue

    # --- catch-up ---------------------------------------------------------------------------

    async def _fetch_blocks(self, peer: PeerId, target: int) -> None:
        e = self.engine
        start = self.state.height + 1
        req = BlocksRequest(self.chain_id, start, min(e.config.sync_batch, target - start + 1))
        try:
            data = await e.network.request(
                peer, protocol_name(e.network_id, PROTOCOL_BLOCKS), codec.encode(req), e.config.request_timeout_s,
            )
            resp = codec.decode(BlocksResponse, data, max_size=64 * 1024 * 1024)
        except (RequestFailed, DecodingError) as err:
            logger.info("%s/%s: sync from %s failed: %s", e.name, self.name, peer, err)
            self._syncing = False
            return
        await self._send.send(("blocks", peer, (resp, target)))

    async def _on_blocks(self, peer: PeerId, payload: tuple) -> None:
        resp, target = payload
        self._syncing = False
        imported = 0
        for i, block in enumerate(resp.blocks):
            if block.header.height != self.state.height + 1:
                break
            commit = resp.blocks[i + 1].last_commit if i + 1 < len(resp.blocks) else resp.last_commit
            if not await self._import_synced(peer, block, commit):
                break
            imported += 1
        if imported:
            self.sync_meter.add(trio.current_time(), self.state.height)
            logger.info("%s/%s: sync %s from %s", self.engine.name, self.name,
                        format_progress(self.state.height, target, self.sync_meter.rate), peer)
        if imported and self.state.height < target:
            self.want_sync(peer, target)
        elif imported:
            self.poke()

    async def _import_synced(self, peer: PeerId, block: Block, commit) -> bool:  # noqa: ANN001
        e = self.engine
        started = time.perf_counter()
        head = e.store.get_header(self.chain_id, self.state.height)
        validators = e.known_sets.get(head.next_validators_hash) if head else None
        if commit is None or validators is None:
            if validators is None and self.chain_id != CHAIN_REWARD:
                e.runners[CHAIN_REWARD].want_sync(peer, block.header.height)
            return False
        try:
            verify_commit(self.chain_id, block.header.height, block.hash(), commit, validators, e.network_id)
            ctx = e.context(validators, self._validators_of_block(block.header.height - 1))
            new_state, changes = apply_block(self.state, block, ctx)
        except (InvalidCommit, InvalidBlock) as err:
            e.penalize(peer, f"bad synced block: {err}")
            return False
        except MissingDependency:
            return False
        await self._write(block, new_state, changes, commit)
        e.observer.on_block_imported(e.name, self.chain_id, block.header.height, len(block.txs),
                                     time.perf_counter() - started, True)
        self._after_commit(block, new_state, changes)
        return True

    # --- keeping gossip alive ---------------------------------------------------------------

    async def _rebroadcast_loop(self) -> None:
        e = self.engine
        while True:
            await trio.sleep(e.config.rebroadcast_s * (1.0 + 0.2 * e.rng.random()))
            await self._rebroadcast()

    async def _rebroadcast(self) -> None:
        e = self.engine
        if self.started and self.machine.step != Step.COMMIT:
            # Own votes of the last two rounds, and of every round a live proposal leans on
            # (its POL round, our lock): a node that joins late needs them to follow a
            # re-proposal (lines 28-33), and nobody else can send our signatures for us.
            s = self.machine.state
            current = s.round
            rounds = {current, s.valid_round, s.locked_round}
            seen = self.machine.proposal_for_round(current)
            if seen is not None:
                rounds.add(seen.pol_round)
            if not e.behaviour.withhold_votes:
                for signed in self.own_votes:
                    v = signed.vote
                    if v.height == self.height and (v.round >= current - 1 or v.round in rounds):
                        await e.publish(TOPIC_VOTES, VoteMsg(signed))
            for r in sorted(rounds):
                if r in self.proposal_msgs:
                    await e.publish(TOPIC_PROPOSALS, self.proposal_msgs[r])
            await self._fetch_wanted()
        self._ticks += 1
        if self._ticks % REGOSSIP_EVERY:
            return
        pool = e.mempools[self.chain_id]
        for tx_hash in pool.pending_hashes()[:REGOSSIP_TXS]:
            tx = pool.get(tx_hash)
            if tx is not None:
                await e.publish(TOPIC_TXS, TxMsg(tx))

    async def _fetch_wanted(self) -> None:
        e = self.engine
        peers = e.network.peers()
        for round_, _ in self.machine.get_wanted_proposals()[:2]:
            if not peers:
                return
            peer = peers[e.rng.randrange(len(peers))]
            req = ProposalRequest(self.chain_id, self.height, round_)
            try:
                data = await e.network.request(
                    peer, protocol_name(e.network_id, PROTOCOL_PROPOSAL), codec.encode(req), e.config.request_timeout_s
                )
                resp = codec.decode(ProposalResponse, data, max_size=e.params.consensus.max_block_bytes + 8192)
            except (RequestFailed, DecodingError):
                continue
            if resp.found is not None:
                await e._on_proposal_gossip(peer, codec.encode(resp.found))
