"""Helpers of the reward chain's tests (test_reward.py, test_reward_slash.py)."""

from __future__ import annotations

from chain import codec
from chain.commit import sign_vote
from chain.errors import InvalidTransaction
from chain.payloads import DuplicateVoteEvidence
from chain.records import (
    KEY_STAKERS,
    Stakers,
)
from chain.reward import get_account, validate_supply
from chain.transition import get_nonce
from chain.types import (
    CHAIN_PARAMETER,
    CHAIN_REWARD,
    STEP_PRECOMMIT,
    Vote,
)
from genesis.testkit import LocalChains, account_keys, make_pact, sign_tx, validator_keys
from tests.chain.refusal_support import assert_refused

VKEYS = validator_keys(4)
AKEYS = account_keys(3)
FUNDS = 100_000
STAKE = 10_000


def make_chains() -> LocalChains:
    """Four validators staked `STAKE`, three accounts funded `FUNDS`."""
    pact = make_pact(VKEYS, [(k.address, FUNDS) for k in AKEYS], stake=STAKE)
    return LocalChains.create(pact, VKEYS)


def net(chains: LocalChains) -> str:
    return chains.pact.network_id


def tx_of(chains: LocalChains, key, payload, nonce: int | None = None):
    if nonce is None:
        nonce = get_nonce(chains.states[CHAIN_REWARD], key.address)
    return sign_tx(key, net(chains), CHAIN_REWARD, nonce, payload)


def advance(chains: LocalChains, txs: list, earnings=None):
    """One block that must keep every transaction; the state is audited after it."""
    block, rejected = chains.advance(CHAIN_REWARD, txs, earnings)
    assert not rejected, rejected
    assert len(block.txs) == len(txs)
    validate_supply(chains.states[CHAIN_REWARD])
    return block


def advance_to(chains: LocalChains, height: int) -> None:
    while chains.states[CHAIN_REWARD].height < height:
        advance(chains, [])


def assert_invalid(chains: LocalChains, tx, match: str, earnings=None, exc=InvalidTransaction):
    """apply_tx raises and leaves the view as it was; a proposer leaves the transaction out."""
    assert_refused(chains, CHAIN_REWARD, tx, match, earnings, exc)


def account(chains: LocalChains, key):
    return get_account(chains.states[CHAIN_REWARD], key.address)


def stakers(chains: LocalChains) -> tuple[bytes, ...]:
    return codec.decode(Stakers, chains.states[CHAIN_REWARD].get(KEY_STAKERS)).addresses


def conflicting_votes(key, chains: LocalChains, height: int = 5, round_: int = 0,
                      step: int = STEP_PRECOMMIT, chain_id: int = CHAIN_PARAMETER,
                      hashes: tuple[bytes, bytes] = (b"\x01" * 32, b"\x02" * 32)):
    """Two signed votes of `key` for different blocks at one chain, height, round and step."""
    return [
        sign_vote(key, net(chains), Vote(chain_id, height, round_, step, h, key.address)) for h in hashes
    ]


def evidence(key, chains: LocalChains, **kw) -> DuplicateVoteEvidence:
    a, b = conflicting_votes(key, chains, **kw)
    return DuplicateVoteEvidence(a, b)


# --- transfers -------------------------------------------------------------------------------
