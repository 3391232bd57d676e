"""Stake-weighted proposer rotation (consensus/proposer.py)."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chain.crypto import PrivateKey
from chain.types import ValidatorSet, make_validator_set
from consensus.proposer import compute_proposer, compute_slots_won


def make_set(powers: list[int]) -> ValidatorSet:
    keys = [PrivateKey.from_label(f"proposer-{i}") for i in range(len(powers))]
    return make_validator_set(0, [(k.public_key, p) for k, p in zip(keys, powers, strict=True)])


def naive_sequence(powers: list[int], slots: int) -> list[int]:
    """The Sainte-Lague sequence handed out one slot at a time (ties to the smallest index)."""
    won = [0] * len(powers)
    seq = []
    for _ in range(slots):
        best = max(range(len(powers)), key=lambda i: (Fraction(powers[i], 2 * won[i] + 1), -i))
        won[best] += 1
        seq.append(best)
    return seq


def test_proposer_equal_power_is_round_robin_by_address() -> None:
    vals = make_set([10, 10, 10, 10])
    addresses = [v.address for v in vals.validators]
    assert [compute_proposer(vals, h, 0) for h in range(8)] == addresses * 2


def test_proposer_rounds_continue_the_rotation() -> None:
    vals = make_set([10, 10, 10, 10])
    assert compute_proposer(vals, 5, 3) == compute_proposer(vals, 8, 0)
    assert compute_proposer(vals, 1, 1) != compute_proposer(vals, 1, 0)


def test_proposer_deterministic() -> None:
    vals = make_set([5, 17, 3, 40, 1])
    first = [compute_proposer(vals, h, r) for h in range(50) for r in range(3)]
    same = make_set([5, 17, 3, 40, 1])
    again = [compute_proposer(same, h, r) for h in range(50) for r in range(3)]
    assert first == again


def test_proposer_frequency_exact_over_one_period() -> None:
    powers = [1, 2, 3, 7, 12]
    vals = make_set(powers)
    total = sum(powers)
    counts = Counter(compute_proposer(vals, h, 0) for h in range(100 * total, 101 * total))
    assert {a: counts[a] for a in counts} == {v.address: v.power for v in vals.validators}


def test_proposer_frequency_proportional_to_large_stakes() -> None:
    powers = [10**18, 3 * 10**18, 5 * 10**17, 7 * 10**17 + 3, 123_456_789_012_345]
    vals = make_set(powers)
    heights = 4000
    counts = Counter(compute_proposer(vals, h, 0) for h in range(10**6, 10**6 + heights))
    for v in vals.validators:
        expected = heights * v.power / vals.total_power
        assert abs(counts[v.address] - expected) <= 2, (counts[v.address], expected)


def test_proposer_over_many_rounds_is_cheap_and_fair() -> None:
    vals = make_set([1, 1, 2])
    counts = Counter(compute_proposer(vals, 7, r) for r in range(1000))
    assert sorted(counts.values()) == [250, 250, 500]


@given(st.lists(st.integers(1, 12), min_size=1, max_size=6))
def test_proposer_matches_sequential_sainte_lague(raw_powers: list[int]) -> None:
    vals = make_set(raw_powers)
    powers = [v.power for v in vals.validators]
    total = sum(powers)
    seq = naive_sequence(powers, 2 * total)
    assert Counter(seq[:total]) == Counter(dict(enumerate(powers)))
    for k, winner in enumerate(seq):
        assert compute_slots_won(powers, k) == [seq[:k].count(i) for i in range(len(powers))]
        if k < total:
            assert compute_proposer(vals, k, 0) == vals.validators[winner].address


def test_invalid_proposer_without_power() -> None:
    with pytest.raises(ValueError):
        compute_proposer(ValidatorSet(0, ()), 1, 0)
    with pytest.raises(ValueError):
        compute_proposer(make_set([1]), -1, 0)
