"""Record keys of the chains' state: builders, predicates and parsers agree."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chain.records import (
    account_key,
    dataset_key,
    delta_key,
    earning_key,
    expert_key,
    is_account_key,
    is_earning_key,
    is_paid_key,
    paid_key,
    parse_earning_key,
    parse_paid_key,
)
from chain.types import CHAIN_DATASET, CHAIN_PARAMETER

hashes = st.binary(min_size=32, max_size=32)
chain_ids = st.sampled_from([CHAIN_PARAMETER, CHAIN_DATASET])


@given(hashes)
def test_earning_key_round_trip(tx_hash: bytes) -> None:
    key = earning_key(tx_hash)
    assert is_earning_key(key)
    assert parse_earning_key(key) == tx_hash


@given(chain_ids, hashes)
def test_paid_key_round_trip(chain_id: int, tx_hash: bytes) -> None:
    key = paid_key(chain_id, tx_hash)
    assert is_paid_key(key)
    assert parse_paid_key(key) == (chain_id, tx_hash)


@given(st.binary(min_size=20, max_size=20))
def test_account_key_round_trip(address: bytes) -> None:
    assert is_account_key(account_key(address))


@given(hashes, st.text(max_size=64))
def test_keys_other_records_not_earning_or_paid(digest: bytes, name: str) -> None:
    for key in (delta_key(digest), dataset_key(digest), expert_key(name), account_key(digest[:20])):
        assert not is_earning_key(key)
        assert not is_paid_key(key)


@pytest.mark.parametrize("key", [b"", b"E", b"E" + bytes(31), b"E" + bytes(33), b"p" + bytes(32)])
def test_invalid_earning_key_shape(key: bytes) -> None:
    assert not is_earning_key(key)
    with pytest.raises(ValueError):
        parse_earning_key(key)


@pytest.mark.parametrize("key", [b"", b"p", b"p" + bytes(32), b"p" + bytes(34), b"E" + bytes(33)])
def test_invalid_paid_key_shape(key: bytes) -> None:
    assert not is_paid_key(key)
    with pytest.raises(ValueError):
        parse_paid_key(key)
