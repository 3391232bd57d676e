"""The one check of a refused transaction, for every chain's rule tests."""

from __future__ import annotations

import pytest

from chain.errors import InvalidTransaction
from chain.state import Overlay
from chain.transition import apply_tx, open_block_view
from genesis.testkit import LocalChains


def assert_refused(chains: LocalChains, chain_id: int, tx, match: str, earnings=None,
                   exc: type[Exception] = InvalidTransaction) -> None:
    """`apply_tx` raises `exc` matching `match` and leaves the view as it was; a proposer leaves
    the transaction out."""
    state = chains.states[chain_id]
    ctx = chains.context(earnings)
    view = Overlay(open_block_view(state, state.height + 1, ctx))
    view.put(b"zprobe", b"1")
    before = dict(view.changes)
    with pytest.raises(exc, match=match):
        apply_tx(view, tx, chain_id, state.height + 1, ctx)
    assert view.changes == before
    block, rejected = chains.propose(chain_id, [tx], earnings)
    assert block.txs == () and [r[0] for r in rejected] == [tx]
