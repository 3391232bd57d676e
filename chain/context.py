"""What a state transition reads besides the state and the block (`Context`), what a payload
handler knows of its transaction (`TxEnv`), and how the reward chain sees other chains'
earnings (`EarningsView`). Pure data, shared by the transition and the three chains' rules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from chain.params import ChainParams
from chain.records import Earning
from chain.types import Transaction, ValidatorSet

EarningsView = Callable[[int, bytes], Earning | None]
"""(source chain, transaction hash) -> the earning that chain recorded, if this node knows it."""


@dataclass(frozen=True, slots=True)
class Context:
    """Everything a transition reads besides the state and the block. Pure data."""

    network_id: str
    """Network the block belongs to (signature domain)."""
    params: ChainParams
    """Protocol constants from genesis."""
    validators: ValidatorSet
    """The set that decides this block."""
    prev_validators: ValidatorSet | None = None
    """The set that decided the previous block (defaults to `validators`)."""
    earnings: EarningsView | None = None
    """Earnings recorded by the parameter and dataset chains (reward chain only)."""
    check_last_commit: bool = True
    """Verify the previous block's commit certificate (off only for replays of own store)."""
    next_validators: Callable[[bytes], ValidatorSet | None] | None = None
    """Parameter and dataset chains: the validator set a header may name as the next one, by
    hash (a set the reward chain made, not older than `validators`); None: no change allowed."""


@dataclass(frozen=True, slots=True)
class TxEnv:
    """What a payload handler needs to know about its transaction."""

    tx: Transaction
    """The transaction."""
    tx_hash: bytes
    """Its hash."""
    sender: bytes
    """Sender address (zero for system transactions)."""
    height: int
    """Height of the block being applied."""
    ctx: Context
    """Block context."""
