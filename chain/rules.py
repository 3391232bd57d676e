"""A chain's rules as one table: the payloads it accepts, the function that applies each, and
what runs at the end of each block. Adding a payload to a chain is its class in
`chain.payloads` (and the `Payload` union there) plus one entry in that chain's table."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from chain.context import Context, TxEnv
from chain.state import Overlay

PayloadHandler = Callable[[Overlay, TxEnv, Any], None]
"""(view, transaction environment, payload) -> None; raises InvalidTransaction."""
EndBlock = Callable[[Overlay, int, Context], None]
"""(view, height, context) -> None: what a chain does after the last transaction of a block."""
BeginBlock = Callable[[Overlay, int, bytes, Context], None]
"""(view, height, previous block's hash, context) -> None: what a chain does before the first
transaction of a block (and before a mempool judges a transaction for the next block)."""


def _no_begin_block(view: Overlay, height: int, prev_hash: bytes, ctx: Context) -> None:
    """Most chains do nothing before a block's transactions."""


@dataclass(frozen=True, slots=True)
class ChainRules:
    """The table of one chain's rules."""

    chain_id: int
    """CHAIN_PARAMETER, CHAIN_DATASET or CHAIN_REWARD."""
    apply: Mapping[type, PayloadHandler]
    """Each payload class the chain accepts, and the function that applies it."""
    end_block: EndBlock
    """Runs after the last transaction of every block (and of every proposal)."""
    system: frozenset[type] = field(default=frozenset())
    """Payloads carried unsigned: their validity comes from what they prove, not who sent them."""
    begin_block: BeginBlock = _no_begin_block
    """Runs before the first transaction of every block (and of every proposal)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "apply", MappingProxyType(dict(self.apply)))
        if not self.system <= self.apply.keys():
            raise TypeError("a system payload must be one of the chain's payloads")

    @property
    def payloads(self) -> tuple[type, ...]:
        """The payload classes the chain accepts, in table order."""
        return tuple(self.apply)

    def is_payload(self, payload: object) -> bool:
        return type(payload) in self.apply
