"""`blyan_generate` (`node.api.expert_methods.generate`) on a real expert service over the
simulated network: the KV cache is on by default, `cache: false` turns it off, and both give the
tokens of single-process generation."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from node.api.client import RPCError
from node.api.expert_methods import PLAN_NAMES, generate
from node.api.services import Services
from node.experts.plan_select import AUTO, PLAN_TYPES
from p2p.sim import SimNetworkHub
from tests.node.experts.test_inference import (
    ROWS_PER_TOKEN,
    build_weights,
    make_service,
    reference_tokens,
    ring,
    start_all,
)


async def test_generate_uses_the_kv_cache_by_default(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    view, blobs, model = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=6) as hub:
        servers = [make_service(hub.add_node(f"n{i}"), view, blobs, ring(i)) for i in range(4)]
        client = make_service(hub.add_node("client"), view, blobs, ("none",))
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers, client])
            services = Services(experts=client)
            cached = await generate(services, {"prompt": "Hi there", "max_tokens": 5})
            uncached = await generate(services, {"prompt": "Hi there", "max_tokens": 5, "cache": False})
            with pytest.raises(RPCError, match="cache must be a boolean"):
                await generate(services, {"prompt": "Hi", "cache": "yes"})
            nursery.cancel_scope.cancel()
    prompt = list(b"Hi there")
    assert cached["tokens"] == uncached["tokens"] == reference_tokens(model, prompt, 5)
    assert cached["cache"] and not uncached["cache"]
    assert cached["positions"] == [8, 1, 1, 1, 1] and uncached["positions"] == [8, 9, 10, 11, 12]
    assert cached["rows_sent"] == [8 * ROWS_PER_TOKEN] + [ROWS_PER_TOKEN] * 4
    assert sum(cached["bytes_sent"]) < sum(uncached["bytes_sent"])


async def test_generate_takes_a_plan_and_refuses_one_the_network_cannot_run(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    view, blobs, model = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=6) as hub:
        servers = [make_service(hub.add_node(f"n{i}"), view, blobs, ring(i)) for i in range(4)]
        client = make_service(hub.add_node("client"), view, blobs, ("none",))
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers, client])
            services = Services(experts=client)
            auto = await generate(services, {"prompt": "Hi there", "max_tokens": 3})
            delegated = await generate(services, {"prompt": "Hi there", "max_tokens": 3, "plan": "static_delegate"})
            with pytest.raises(RPCError, match="no chain of nodes"):
                await generate(services, {"prompt": "Hi", "plan": "pipeline"})  # no node serves a whole layer
            with pytest.raises(RPCError, match="plan must be one of"):
                await generate(services, {"prompt": "Hi", "plan": "fastest"})
            nursery.cancel_scope.cancel()
    assert auto["plan"]["type"] == "dynamic" and auto["fallbacks"] == []
    assert PLAN_NAMES == (AUTO, *PLAN_TYPES)  # the API's names are the planner's
    assert delegated["plan"]["type"] == "static_delegate" and delegated["round_trips"] == 1
    assert delegated["remote_round_trips"] > 0  # the delegate serves half of each layer: the rest it asks for
    assert auto["tokens"] == delegated["tokens"] == reference_tokens(model, list(b"Hi there"), 3)
