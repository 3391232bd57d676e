"""The PoL vote pool: it takes only what the chain's vote rule takes, and its certificates and
rejections are what the chain accepts (checked by applying them)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chain import codec, crypto
from chain.records import CLAIM_CERTIFIED, CLAIM_REJECTED, ClaimRecord, ExpertState, claim_key, expert_key
from chain.rounds import make_claim
from chain.state import Overlay
from chain.transition import get_nonce
from chain.types import CHAIN_PARAMETER
from genesis.roundkit import commit_tx, make_manifest, pol_vote, reveal_tx, tensor_record
from genesis.testkit import LocalChains, account_keys, make_pact, validator_keys
from node.pol.votes import MAX_EARLY_VOTES, VoteOutcome, VotePool, is_round_waiting

TRAINER = account_keys(1, prefix="pool-trainer")[0]
NET = "testnet-unit"


def make_chains(stakes=(10_000,) * 4) -> LocalChains:
    keys = validator_keys(len(stakes))
    pact = make_pact(keys, [(TRAINER.address, 1_000)], tensors=(tensor_record("layer0.expert0", 1),))
    pact = replace(pact, validators=tuple(replace(v, stake=s) for v, s in zip(pact.validators, stakes, strict=True)))
    return LocalChains.create(pact, keys)


def reveal(chains: LocalChains, tag: bytes = b"a"):
    expert = Overlay(chains.states[CHAIN_PARAMETER]).get_record(expert_key("layer0.expert0"), ExpertState)
    signed = make_manifest(TRAINER, NET, [("layer0.expert0", expert.head)], 1, tag=tag)
    claim = make_claim(signed.manifest)
    for make in (lambda n: commit_tx(TRAINER, NET, n, claim), lambda n: reveal_tx(TRAINER, NET, n, signed, claim)):
        nonce = get_nonce(chains.states[CHAIN_PARAMETER], TRAINER.address)
        _, rejected = chains.advance(CHAIN_PARAMETER, [make(nonce)])
        assert not rejected
    return claim


@pytest.fixture
def chains() -> LocalChains:
    return make_chains()


def pool_of(chains: LocalChains) -> VotePool:
    return VotePool(chains.pact.network_id, chains.pact.params)


def state(chains: LocalChains):
    return chains.states[CHAIN_PARAMETER]


def status(chains: LocalChains, claim) -> int:
    return Overlay(state(chains)).get_record(claim_key(codec.hash_of(claim)), ClaimRecord).status


def test_accepting_votes_of_two_thirds_plus_make_a_certificate_the_chain_takes(chains: LocalChains) -> None:
    claim = reveal(chains)
    pool = pool_of(chains)
    for k in chains.keys[:2]:
        assert pool.add(pol_vote(k, NET, claim), state(chains), chains.validators).outcome is VoteOutcome.ADDED
    assert pool.make_system_txs(state(chains), chains.validators) == []  # 2 of 4: not yet
    assert pool.tally(codec.hash_of(claim), chains.validators).accepting == 20_000
    pool.add(pol_vote(chains.keys[2], NET, claim), state(chains), chains.validators)
    [tx] = pool.make_system_txs(state(chains), chains.validators)
    block, rejected = chains.advance(CHAIN_PARAMETER, [tx])
    assert not rejected and block.txs == (tx,)
    assert status(chains, claim) == CLAIM_CERTIFIED
    assert is_round_waiting(state(chains), chains.pact.params)  # its round's close must come
    pool.prune(state(chains))
    assert pool.claims() == [] and pool.make_system_txs(state(chains), chains.validators) == []


def test_rejecting_third_makes_a_rejection_the_chain_takes(chains: LocalChains) -> None:
    claim = reveal(chains)
    pool = pool_of(chains)
    pool.add(pol_vote(chains.keys[0], NET, claim, accepted=False, reason="replay"), state(chains), chains.validators)
    pool.add(pol_vote(chains.keys[1], NET, claim), state(chains), chains.validators)
    assert pool.make_system_txs(state(chains), chains.validators) == []
    pool.add(pol_vote(chains.keys[2], NET, claim, new=3_000_000), state(chains), chains.validators)
    [tx] = pool.make_system_txs(state(chains), chains.validators)
    _, rejected = chains.advance(CHAIN_PARAMETER, [tx])
    assert not rejected and status(chains, claim) == CLAIM_REJECTED


@pytest.mark.parametrize("forgery", ["wrong-kind", "other-network", "non-validator", "another-manifest"])
def test_forged_votes_refused(chains: LocalChains, forgery: str) -> None:
    claim = reveal(chains)
    k = chains.keys[0]
    vote = {"wrong-kind": lambda: pol_vote(k, NET, claim, kind=crypto.KIND_VOTE),
            "other-network": lambda: pol_vote(k, "othernet", claim),
            "non-validator": lambda: pol_vote(TRAINER, NET, claim),
            "another-manifest": lambda: pol_vote(k, NET, replace(claim, manifest_hash=bytes(32)),
                                                 claim_hash=codec.hash_of(claim))}[forgery]()
    result = pool_of(chains).add(vote, state(chains), chains.validators)
    assert result.outcome is VoteOutcome.INVALID and result.reason


def test_one_validator_one_vote(chains: LocalChains) -> None:
    claim = reveal(chains)
    pool = pool_of(chains)
    first = pol_vote(chains.keys[0], NET, claim)
    assert pool.add(first, state(chains), chains.validators).outcome is VoteOutcome.ADDED
    assert pool.add(first, state(chains), chains.validators).outcome is VoteOutcome.DUPLICATE
    other = pol_vote(chains.keys[0], NET, claim, accepted=False, reason="replay")
    assert pool.add(other, state(chains), chains.validators).outcome is VoteOutcome.INVALID


def test_votes_before_the_reveal_wait_and_count_once_it_lands(chains: LocalChains) -> None:
    later = make_chains()
    claim = reveal(later)  # the same claim, revealed on another copy of the chains
    pool = pool_of(chains)
    votes = [pol_vote(k, NET, claim) for k in chains.keys[:3]]
    for v in votes:
        assert pool.add(v, state(chains), chains.validators).outcome is VoteOutcome.EARLY
    assert pool.make_system_txs(state(chains), chains.validators) == []
    assert pool.on_revealed([codec.hash_of(claim)], state(later), later.validators) == 3
    assert len(pool.make_system_txs(state(later), later.validators)) == 1


def test_early_votes_are_bounded(chains: LocalChains) -> None:
    pool = pool_of(chains)
    k = chains.keys[0]
    for i in range(MAX_EARLY_VOTES + 10):
        claim = make_claim(make_manifest(TRAINER, NET, [("layer0.expert0", bytes(32))], 1, tag=b"%d" % i).manifest)
        pool.add(pol_vote(k, NET, claim), state(chains), chains.validators)
    assert len(pool._early) == MAX_EARLY_VOTES


def test_weighted_power_decides(chains: LocalChains) -> None:
    heavy = make_chains(stakes=(70_000, 10_000, 10_000, 10_000))
    claim = reveal(heavy)
    pool = pool_of(heavy)
    pool.add(pol_vote(heavy.keys[0], NET, claim), state(heavy), heavy.validators)
    [tx] = pool.make_system_txs(state(heavy), heavy.validators)
    _, rejected = heavy.advance(CHAIN_PARAMETER, [tx])
    assert not rejected and status(heavy, claim) == CLAIM_CERTIFIED
