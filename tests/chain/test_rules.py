"""Each chain's rules table, and the `Payload` union the codec uses for `TxBody.payload`."""

from __future__ import annotations

import typing

import pytest

from chain import dataset, parameter, reward
from chain.context import Context
from chain.errors import InvalidTransaction
from chain.pact import compute_genesis_validators
from chain.payloads import CertifyDelta, CommitSnapshot, Payload, RejectDelta, Reward, Slash, Stake, Transfer
from chain.rules import ChainRules
from chain.state import Overlay
from chain.transition import PAYLOADS_BY_CHAIN, RULES_BY_CHAIN, SYSTEM_PAYLOADS, validate_tx_envelope
from chain.types import CHAIN_DATASET, CHAIN_IDS, CHAIN_PARAMETER, CHAIN_REWARD, Transaction, TxBody
from genesis.testkit import make_pact, validator_keys


def _nothing(view: Overlay, height: int, ctx: Context) -> None:
    """An end of block that does nothing."""


def test_rules_one_table_per_chain() -> None:
    assert sorted(RULES_BY_CHAIN) == sorted(CHAIN_IDS)
    assert RULES_BY_CHAIN[CHAIN_PARAMETER] is parameter.RULES
    assert RULES_BY_CHAIN[CHAIN_DATASET] is dataset.RULES
    assert RULES_BY_CHAIN[CHAIN_REWARD] is reward.RULES


def test_rules_payload_union_matches_tables() -> None:
    in_union = set(typing.get_args(Payload))
    in_tables = [cls for rules in RULES_BY_CHAIN.values() for cls in rules.payloads]
    assert len(in_tables) == len(set(in_tables)), "a payload belongs to two chains"
    assert in_union == set(in_tables), "chain.payloads.Payload and the chains' RULES tables disagree"
    tags = [cls.TAG for cls in in_tables]
    assert len(tags) == len(set(tags))


def test_rules_payloads_by_chain_from_tables() -> None:
    assert PAYLOADS_BY_CHAIN == {chain_id: rules.payloads for chain_id, rules in RULES_BY_CHAIN.items()}
    assert SYSTEM_PAYLOADS == {Reward, Slash, CertifyDelta, RejectDelta, CommitSnapshot}


def test_rules_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        reward.RULES.apply[Stake] = reward.apply_transfer  # type: ignore[index]


def test_invalid_rules_system_payload_outside_table() -> None:
    with pytest.raises(TypeError):
        ChainRules(chain_id=CHAIN_REWARD, apply={Transfer: reward.apply_transfer}, end_block=_nothing,
                   system=frozenset({Reward}))


def test_invalid_payload_not_in_chain_table() -> None:
    tx = Transaction(TxBody(CHAIN_PARAMETER, bytes(32), 0, Transfer(bytes(20), 1)), bytes(64))
    pact = make_pact(validator_keys(1))
    ctx = Context(pact.network_id, pact.params, compute_genesis_validators(pact))
    with pytest.raises(InvalidTransaction, match="Transfer is not a parameter payload"):
        validate_tx_envelope(tx, CHAIN_PARAMETER, ctx)
