"""`blyan_consensusState`: where each chain's consensus stands, for an operator whose chain
does not move (node/engine/consensus_view.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node.api.server import RPCLimits
from tests.node.api.test_rpc import Node, call, running_node, transfer_hex


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with running_node(tmp_path, RPCLimits.for_tests()) as n:
        yield n


async def test_consensus_state_shows_each_chain_and_the_votes_of_its_round(node: Node) -> None:
    state = await call(node, "blyan_consensusState")
    assert set(state) == {"parameter", "dataset", "reward"}
    reward = state["reward"]
    assert reward["started"] is False and reward["height"] == 1 and reward["round"] == 0
    assert reward["validators"] >= 1 and reward["total_power"] >= 1
    assert set(reward["votes"]) == {"prevote", "precommit"}
    assert reward["pending_txs"] == 0 and reward["votes"]["prevote"] == {"power": 0, "by_block": {}}
    tx_hex, _ = transfer_hex(node)
    await call(node, "blyan_sendTransaction", [tx_hex])
    assert (await call(node, "blyan_consensusState"))["reward"]["pending_txs"] == 1
