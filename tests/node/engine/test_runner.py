"""`ChainRunner` over `FakePort`, a `ChainPort` of the reward chain of a ONE-validator pact (this
node's key), kept in a `ChainStore` on `MemoryKV`, recording what the runner publishes, penalises,
writes and reports. A "restart" is a new port and runner on the same KV. Idleness is checked with
`wait_all_tasks_blocked()`, conditions are awaited on the port's change event: never a sleep."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from chain import crypto
from chain.commit import sign_vote
from chain.context import Context
from chain.kv import MemoryKV
from chain.payloads import DuplicateVoteEvidence, Transfer
from chain.reward import get_account
from chain.state import State
from chain.store import ChainStore
from chain.transition import build_block
from chain.types import (
    CHAIN_PARAMETER,
    CHAIN_REWARD,
    Block,
    BlockHeader,
    CommitCertificate,
    Transaction,
    ValidatorSet,
    make_validator_set,
)
from chain.votes import NIL, STEP_PRECOMMIT, STEP_PREVOTE, CommitSig, SignedVote, Vote
from consensus.mempool import Mempool
from consensus.messages import NO_POL_ROUND, Proposal, sign_proposal
from consensus.proposer import compute_proposer
from consensus.tendermint import Step
from genesis.history import ChainHistory
from genesis.testkit import account_keys, certify, make_pact, sign_tx, validator_keys
from node.core.feed import Feed, VoteSigned
from node.core.ports import ImportReport
from node.engine.config import EngineConfig
from node.engine.ports import BlockBuilder, ChainPort
from node.engine.runner import ChainRunner
from node.engine.signing import OwnVoteLog, Signer, SignGuard
from node.engine.validators import KnownValidatorSets
from node.engine.wire import TOPIC_PROPOSALS, TOPIC_VOTES, ProposalMsg, VoteMsg
from p2p.network import PeerId, PeerUnreachable, Verdict

VKEY = validator_keys(1)[0]
OUTSIDER = crypto.PrivateKey.from_label("runner-outsider")
PAYER, PAYEE = account_keys(2, prefix="runner-account")
FUNDS = 1_000_000
PACT = make_pact([VKEY], accounts=[(PAYER.address, FUNDS)])
NID = PACT.network_id
PEER = "peer-1"
DEADLINE_S = 10.0


class FakePort:
    """`ChainPort` of the reward chain over a `ChainStore`, recording what the runner does."""

    def __init__(self, kv: MemoryKV, key: crypto.PrivateKey = VKEY) -> None:
        self.store = ChainStore.open(kv, PACT)
        self.chain_id = CHAIN_REWARD
        self.node_name = "fake"
        self.network_id = NID
        self.params = PACT.params
        self.config = EngineConfig.for_tests()
        self.address: bytes | None = key.address
        self.mempool = Mempool(CHAIN_REWARD, self.config.mempool)
        self.feed = Feed()
        self.signer: Signer | None = Signer(key, NID, self.feed)
        self.guard = SignGuard(kv, CHAIN_REWARD)
        self.own_votes = OwnVoteLog(kv, CHAIN_REWARD)
        self.builder = BlockBuilder()
        self.rng = random.Random(0)
        self.sets = KnownValidatorSets(self.store)
        self.nursery: trio.Nursery | None = None
        self.published: list[tuple[str, object]] = []
        self.penalties: list[tuple[PeerId, str]] = []
        self.written: list[tuple[Block, CommitCertificate]] = []
        self.committed: list[tuple[Block, bool]] = []
        self.evidence: list[DuplicateVoteEvidence] = []
        self.rounds: list[tuple[int, int]] = []
        self.ahead: list[tuple[PeerId, int]] = []
        self._changed = trio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, condition: Callable[[], bool]) -> None:
        with trio.fail_after(DEADLINE_S):
            while not condition():
                await self._changed.wait()

    def proposals(self) -> list[ProposalMsg]:
        return [m for t, m in self.published if t == TOPIC_PROPOSALS and isinstance(m, ProposalMsg)]

    def votes(self) -> list[SignedVote]:
        return [m.signed for t, m in self.published if t == TOPIC_VOTES and isinstance(m, VoteMsg)]

    def get_state(self) -> State:
        return self.store.state(CHAIN_REWARD)

    def get_header(self, height: int) -> BlockHeader | None:
        return self.store.get_header(CHAIN_REWARD, height)

    def get_commit(self, height: int) -> CommitCertificate | None:
        return self.store.get_commit(CHAIN_REWARD, height)

    def get_validator_set(self, vs_hash: bytes) -> ValidatorSet | None:
        return self.sets.get(vs_hash)

    def get_current_validators(self) -> ValidatorSet:
        return self.sets.current()

    def make_context(self, validators: ValidatorSet, prev: ValidatorSet | None) -> Context:
        return Context(NID, self.params, validators, prev, earnings=lambda c, h: None,
                       next_validators=self.sets.get)

    def now_ms(self) -> int:
        return PACT.genesis_time_ms + 1_000 + int(trio.current_time() * 1000)

    def get_system_txs(self) -> list[Transaction]:
        return []

    def has_system_work(self) -> bool:
        return False

    async def publish(self, topic: str, msg: object) -> None:
        self.published.append((topic, msg))
        self._notify()

    async def request(self, peer: PeerId, protocol: str, msg: object, response: type, max_size: int) -> object:
        raise PeerUnreachable(peer, protocol, "no network in this test")

    def get_peers(self) -> list[PeerId]:
        return []

    def penalize(self, peer: PeerId, reason: str) -> None:
        self.penalties.append((peer, reason))
        self._notify()

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        if self.nursery is not None:
            self.nursery.start_soon(fn, *args)

    async def write_block(self, block: Block, state: State, changes: dict[bytes, bytes | None],
                          commit: CommitCertificate) -> None:
        self.store.commit_block(block, state, changes, commit)
        self.written.append((block, commit))

    def on_committed(self, block: Block, state: State, changes: dict[bytes, bytes | None], synced: bool,
                     seconds: float) -> None:
        self.sets.remember_current()
        self.committed.append((block, synced))
        self._notify()

    def report_evidence(self, evidence: DuplicateVoteEvidence) -> None:
        self.evidence.append(evidence)

    def report_round(self, height: int, round: int) -> None:
        self.rounds.append((height, round))

    def report_peer_ahead(self, peer: PeerId, height: int) -> None:
        self.ahead.append((peer, height))


@asynccontextmanager
async def running(port: FakePort) -> AsyncIterator[ChainRunner]:
    runner = ChainRunner(port)
    async with trio.open_nursery() as nursery:
        port.nursery = nursery
        await nursery.start(runner.run)
        yield runner
        nursery.cancel_scope.cancel()


def transfer(nonce: int, amount: int = 7) -> Transaction:
    return sign_tx(PAYER, NID, CHAIN_REWARD, nonce, Transfer(PAYEE.address, amount))


def fresh() -> tuple[FakePort, ChainRunner]:
    port = FakePort(MemoryKV())
    return port, ChainRunner(port)


def admit(port: FakePort, runner: ChainRunner, tx: Transaction) -> None:
    assert port.mempool.add(tx, port.get_state(), runner.current_context()).added
    runner.poke()


def proposal_msg(port: FakePort, runner: ChainRunner, *, chain_id: int = CHAIN_REWARD, height: int = 1,
                 signer: crypto.PrivateKey = VKEY, block_hash: bytes | None = None) -> ProposalMsg:
    state = port.store.state(chain_id)
    block, _ = build_block(state, [], port.make_context(runner.validators, None), VKEY.address,
                           state.time_ms + 1_000, None, runner.validators)
    p = Proposal(chain_id, height, 0, block_hash or block.hash(), NO_POL_ROUND, VKEY.address)
    return ProposalMsg(sign_proposal(signer, NID, p), block)


def certified_block(txs: list[Transaction]) -> tuple[Block, CommitCertificate]:
    """Height 1 of the reward chain of PACT, built and certified on another node's store."""
    source = ChainHistory(ChainStore.open(MemoryKV(), PACT), [VKEY])
    block, _ = source.advance(CHAIN_REWARD, txs)
    return block, certify(block, [VKEY], NID)


def test_fake_port_has_every_chain_port_member() -> None:
    members = set(ChainPort.__annotations__) | {n for n, v in vars(ChainPort).items() if not n.startswith("_")}
    assert len(members) == 31 and all(hasattr(FakePort(MemoryKV()), name) for name in members)


# --- deciding heights ---------------------------------------------------------------------------


async def test_tx_in_mempool_finalizes_block_holding_it() -> None:
    port = FakePort(MemoryKV())
    async with running(port) as runner:
        tx = transfer(0)
        admit(port, runner, tx)
        await port.until(lambda: bool(port.committed))
        assert runner.height == 2
    [(block, synced)] = port.committed
    assert block.txs == (tx,) and not synced and len(port.written) == 1
    assert port.written[0][0] == block and port.written[0][1].block_hash == block.hash()
    state = port.get_state()
    assert state.height == 1 and state.head == block.hash()
    assert (get_account(state, PAYEE.address).balance, get_account(state, PAYER.address).balance) == (7, FUNDS - 7)
    assert tx.hash() not in port.mempool
    assert [len(p.block.txs) for p in port.proposals()] == [1]
    assert {(v.vote.round, v.vote.step) for v in port.votes()} == {(0, STEP_PREVOTE), (0, STEP_PRECOMMIT)}
    assert port.rounds == [(1, 0)]


async def test_no_work_starts_no_height() -> None:
    port = FakePort(MemoryKV())
    async with running(port) as runner:
        runner.poke()
        runner.poke()
        await trio.testing.wait_all_tasks_blocked()
        assert not runner.started and not runner.has_work()
        assert port.published == [] and port.written == [] and port.rounds == []


async def test_nonce_gap_tx_alone_is_no_work() -> None:
    port = FakePort(MemoryKV())
    async with running(port) as runner:
        gap = transfer(1)
        admit(port, runner, gap)
        await trio.testing.wait_all_tasks_blocked()
        assert not port.mempool.has_ready(port.get_state())
        assert not runner.started and port.published == [] and port.written == []
        first = transfer(0)
        admit(port, runner, first)
        assert port.mempool.has_ready(port.get_state())
        await port.until(lambda: bool(port.committed))
    assert port.committed[0][0].txs == (first, gap) and len(port.mempool) == 0


async def test_failing_tx_alone_starts_no_height_and_is_dropped() -> None:
    """An overdraft (admitted from gossip, which does not check balances) never becomes an
    empty block: the "has work" question drops it, and no height starts."""
    port = FakePort(MemoryKV())
    async with running(port) as runner:
        overdraft = transfer(0, amount=FUNDS + 1)
        admit(port, runner, overdraft)
        await trio.testing.wait_all_tasks_blocked()
        assert overdraft.hash() not in port.mempool and len(port.mempool) == 0
        assert not runner.started and not runner.has_work()
        assert port.published == [] and port.written == [] and port.rounds == []


async def test_proposer_drops_failing_tx_and_proposes_the_valid_one() -> None:
    port = FakePort(MemoryKV())
    async with running(port) as runner:
        poor = account_keys(1, prefix="runner-poor")[0]
        failing = sign_tx(poor, NID, CHAIN_REWARD, 0, Transfer(PAYEE.address, 5))
        assert port.mempool.add(failing, port.get_state(), runner.current_context()).added
        valid = transfer(0)
        admit(port, runner, valid)
        await port.until(lambda: bool(port.committed))
    [(block, _)] = port.committed
    assert block.txs == (valid,) and [p.block.txs for p in port.proposals()] == [(valid,)]
    assert failing.hash() not in port.mempool and len(port.mempool) == 0


# --- signing across restarts ----------------------------------------------------------------------


async def test_guard_refuses_conflicting_vote_after_restart() -> None:
    kv = MemoryKV()
    other_block = b"\x42" * 32
    assert FakePort(kv).guard.allow(1, 0, STEP_PREVOTE, other_block)  # signed before the "crash"
    port = FakePort(kv)
    signed = port.feed.subscribe("signed", kinds=[VoteSigned])
    async with running(port) as runner:
        admit(port, runner, transfer(0))
        await trio.testing.wait_all_tasks_blocked()
        assert len(port.proposals()) == 1  # step 0 of (1, 0) was free: proposed
        assert port.votes() == [] and signed.drain() == []  # the prevote for it was refused
        assert runner.machine.step == Step.PREVOTE and runner.height == 1
        assert port.written == [] and port.own_votes.load(1) == []
    assert not SignGuard(kv, CHAIN_REWARD).allow(1, 0, STEP_PREVOTE, port.proposals()[0].block.hash())


async def test_own_votes_restored_on_new_runner_of_their_height(autojump_clock: trio.testing.MockClock) -> None:
    kv = MemoryKV()
    before = FakePort(kv)
    lost_block = b"\x17" * 32
    vote = sign_vote(VKEY, NID, Vote(CHAIN_REWARD, 1, 0, STEP_PREVOTE, lost_block, VKEY.address))
    assert before.guard.allow(1, 0, STEP_PREVOTE, lost_block)
    before.own_votes.save(2, [vote])
    assert ChainRunner(FakePort(kv)).own_votes == []  # a log of another height is not restored
    before.own_votes.save(1, [vote])
    port = FakePort(kv)
    assert ChainRunner(port).own_votes == [vote]
    async with running(port) as runner:
        tx = transfer(0)
        admit(port, runner, tx)
        await port.until(lambda: bool(port.committed))
    # The restored prevote is never signed again: round 0 goes to nil, round 1 decides.
    assert [(v.vote.round, v.vote.step) for v in port.votes() if v.vote.round == 0] == [(0, STEP_PRECOMMIT)]
    assert port.votes()[0].vote.block_hash == NIL
    commit = port.store.get_commit(CHAIN_REWARD, 1)
    assert commit is not None and commit.round == 1
    assert port.committed[0][0].txs == (tx,)
    assert (1, 1) in port.rounds


# --- heights of incoming messages -----------------------------------------------------------------


async def test_classify_height_far_future_reports_peer_ahead() -> None:
    port, runner = fresh()
    assert runner.classify_height(9, PEER) is Verdict.IGNORE
    assert port.ahead == [(PEER, 8)]


async def test_classify_height_past_ignored() -> None:
    port = FakePort(MemoryKV())
    ChainHistory(port.store, [VKEY]).advance(CHAIN_REWARD, [])
    runner = ChainRunner(port)
    assert runner.height == 2
    assert runner.classify_height(1, PEER) is Verdict.IGNORE
    assert runner.classify_height(0, PEER) is Verdict.IGNORE
    assert port.ahead == [] and port.penalties == []


async def test_classify_height_current_and_next_accepted() -> None:
    port, runner = fresh()
    assert runner.classify_height(1, PEER) is Verdict.ACCEPT
    assert port.ahead == []
    assert runner.classify_height(2, PEER) is Verdict.ACCEPT
    assert port.ahead == [(PEER, 1)]  # it finalized height 1, which we have not


# --- proposals from peers -------------------------------------------------------------------------


async def test_receive_proposal_valid_accepted() -> None:
    port, runner = fresh()
    assert runner.receive_proposal(PEER, proposal_msg(port, runner)) is Verdict.ACCEPT
    assert port.penalties == []


@pytest.mark.parametrize("case", ["block hash mismatch", "another chain", "signature of another key"])
async def test_invalid_proposal(case: str) -> None:
    port, runner = fresh()
    if case == "block hash mismatch":
        msg = proposal_msg(port, runner, block_hash=b"\x33" * 32)
    elif case == "another chain":  # well formed: only the chain differs
        msg = proposal_msg(port, runner, chain_id=CHAIN_PARAMETER)
        assert msg.block.hash() == msg.signed.proposal.block_hash
    else:
        msg = proposal_msg(port, runner, signer=OUTSIDER)
    assert runner.receive_proposal(PEER, msg) is Verdict.REJECT
    assert [p for p, _ in port.penalties] == [PEER]


async def test_receive_proposal_far_future_ignored_without_penalty() -> None:
    port, runner = fresh()
    assert runner.receive_proposal(PEER, proposal_msg(port, runner, height=5)) is Verdict.IGNORE
    assert port.penalties == [] and port.ahead == [(PEER, 4)]


@pytest.mark.parametrize(("signer_label", "verdict"), [("next-epoch-validator", Verdict.ACCEPT),
                                                      ("stranger", Verdict.REJECT)])
async def test_receive_proposal_next_height_at_an_epoch_boundary(signer_label: str, verdict: Verdict) -> None:
    """While an epoch boundary passes, the next height may be signed by the newest set: its new
    validator's proposal is no offence (kept for that height); a stranger's still is."""
    port, runner = fresh()
    newcomer = crypto.PrivateKey.from_label("next-epoch-validator")
    newest = make_validator_set(runner.validators.epoch + 1, [(VKEY.public_key, 10), (newcomer.public_key, 10)])
    port.get_current_validators = lambda: newest  # type: ignore[method-assign]
    signer = crypto.PrivateKey.from_label(signer_label)
    block = proposal_msg(port, runner).block
    round_ = next(r for r in range(8) if compute_proposer(newest, 2, r) == newcomer.address)  # its turn
    p = Proposal(CHAIN_REWARD, 2, round_, block.hash(), NO_POL_ROUND, signer.address)
    assert runner.receive_proposal(PEER, ProposalMsg(sign_proposal(signer, NID, p), block)) is verdict
    assert (port.penalties == []) is (verdict is Verdict.ACCEPT)


# --- blocks from catch-up -------------------------------------------------------------------------


@pytest.mark.parametrize("forger", ["signature of another key", "signer not a validator"])
async def test_import_blocks_forged_commit_refused(forger: str) -> None:
    block, commit = certified_block([transfer(0)])
    outsider = certify(block, [OUTSIDER], NID)
    if forger == "signature of another key":
        sig = CommitSig(VKEY.address, outsider.signatures[0].signature)  # our address, their signature
        forged = dataclasses.replace(commit, signatures=(sig,))
    else:
        forged = outsider
    port = FakePort(MemoryKV())
    with trio.fail_after(DEADLINE_S):
        async with running(port) as runner:
            report = await runner.import_blocks(PEER, (block,), forged, 1)
    assert report == ImportReport(0, 0, 0)
    assert len(port.penalties) == 1 and port.penalties[0][0] == PEER
    assert "bad synced block" in port.penalties[0][1]
    assert port.written == [] and port.committed == [] and port.get_state().height == 0


async def test_import_blocks_without_commit_not_imported() -> None:
    block, _ = certified_block([])
    port = FakePort(MemoryKV())
    with trio.fail_after(DEADLINE_S):
        async with running(port) as runner:
            report = await runner.import_blocks(PEER, (block,), None, 1)
    assert report == ImportReport(0, 0, 0) and port.penalties == [] and port.written == []


async def test_import_blocks_certified_block_imported() -> None:
    tx = transfer(0)
    block, commit = certified_block([tx])
    port = FakePort(MemoryKV())
    with trio.fail_after(DEADLINE_S):
        async with running(port) as runner:
            report = await runner.import_blocks(PEER, (block,), commit, 1)
        assert runner.height == 2
    assert report == ImportReport(1, 1, 0)
    assert port.written == [(block, commit)] and port.committed == [(block, True)]
    assert port.penalties == [] and port.published == []
    assert get_account(port.get_state(), PAYEE.address).balance == 7
    assert port.store.get_commit(CHAIN_REWARD, 1) == commit

