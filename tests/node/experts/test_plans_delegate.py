"""Delegation (`node.experts.delegate`) over the simulated network: a killed, slow, over-budget
or lying delegate, each handled within its deadline. Layout and helpers as in `test_plans.py`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio.testing

from chain import codec
from node.experts.delegate import compute_delegate_deadline
from node.experts.plan_select import PIPELINE, STATIC_DELEGATE
from node.experts.plan_wire import (
    MAX_DELEGATE_BYTES,
    DelegateResponse,
)
from node.experts.service import ExpertService
from node.experts.wire import decode_message
from p2p.sim import FaultConfig, SimNetworkHub
from tests.node.experts.test_inference import (
    PROMPT,
    SPEC,
    build_weights,
    reference_tokens,
    start_all,
)
from tests.node.experts.test_plans import BY_LAYER, build, whole_layer


class CrashingDelegate(ExpertService):
    hub: SimNetworkHub

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)

        async def on_delegate(requester: str, data: bytes) -> bytes:
            self.hub.crash(self.net.local_id)
            await trio.lowlevel.checkpoint()
            raise AssertionError("unreachable: the node crashed")

        self.delegates.on_delegate = on_delegate


async def test_delegate_killed_falls_back_to_pipeline(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    view, blobs, model = build_weights(tmp_path / "blobs")
    everything = tuple(n for layer in range(SPEC.n_layers) for n in whole_layer(layer))
    async with SimNetworkHub(seed=2) as hub:
        client, servers = build(hub, view, blobs, {**BY_LAYER, "full": everything},
                                cls={"full": CrashingDelegate})
        servers["full"].hub = hub
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers.values(), client])
            began = trio.current_time()
            gen = await client.generate_tokens(PROMPT, 5, plan=STATIC_DELEGATE)
            took = trio.current_time() - began
            nursery.cancel_scope.cancel()
    assert gen.tokens == reference_tokens(model, PROMPT, 5)
    deadline = compute_delegate_deadline(5, client.inference.request_timeout_s)  # the delegate's budget, no more
    assert deadline == 5.0 + 0.5 * 5 + 1.0 + 2.0
    assert deadline <= took < deadline + client.inference.request_timeout_s
    assert gen.fallbacks and gen.fallbacks[0].startswith("static_delegate")
    assert gen.plan["type"] == PIPELINE and "full" not in gen.plan["nodes"]


async def test_delegation_longer_than_the_network_request_timeout_completes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The delegate protocol's handler runs under its own limit, not the network's 10 s: with
    150 ms links a 40-token delegation (one stage round trip per token on the delegate) takes
    over 12 s and is answered."""
    view, blobs, model = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=5, faults=FaultConfig(latency_ms=(150.0, 150.0))) as hub:
        assert hub.handler_timeout == 10.0
        client, servers = build(hub, view, blobs, BY_LAYER)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers.values(), client])
            began = trio.current_time()
            gen = await client.generate_tokens(PROMPT, 40, plan=STATIC_DELEGATE)
            took = trio.current_time() - began
            nursery.cancel_scope.cancel()
    assert not gen.fallbacks and gen.plan["type"] == STATIC_DELEGATE and gen.round_trips == 1
    assert took > hub.handler_timeout
    assert gen.tokens == reference_tokens(model, PROMPT, 40)


async def test_delegation_over_its_budget_is_stopped_and_replaced(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """With 600 ms links a token costs the delegate 1.2 s, over its 0.5 s a token: it stops at the
    budget and says so; the requester falls back (no tokens were out) to a pipeline."""
    view, blobs, model = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=5, faults=FaultConfig(latency_ms=(600.0, 600.0))) as hub:
        client, servers = build(hub, view, blobs, BY_LAYER)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers.values(), client])
            gen = await client.generate_tokens(PROMPT, 20, plan=STATIC_DELEGATE)
            nursery.cancel_scope.cancel()
    assert gen.fallbacks[0].startswith("static_delegate") and "not generated within 15s" in gen.fallbacks[0]
    assert all(s.delegates.inflight == 0 and s.delegates.work == 0 for s in servers.values())
    assert gen.plan["type"] == PIPELINE and gen.tokens == reference_tokens(model, PROMPT, 20)


class LyingDelegate(ExpertService):
    """Answers a delegation with greedy's tokens shifted by one."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        honest = self.delegates.on_delegate

        async def on_delegate(requester: str, data: bytes) -> bytes:
            resp = decode_message(DelegateResponse, await honest(requester, data), MAX_DELEGATE_BYTES)
            return codec.encode(replace(resp, tokens=tuple((t + 1) % SPEC.vocab_size for t in resp.tokens)))

        self.delegates.on_delegate = on_delegate


@pytest.mark.parametrize("liar", [False, True])
async def test_delegate_tokens_are_spot_checked(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, liar: bool
) -> None:
    view, blobs, model = build_weights(tmp_path / "blobs")
    everything = tuple(n for layer in range(SPEC.n_layers) for n in whole_layer(layer))
    async with SimNetworkHub(seed=6) as hub:
        client, servers = build(hub, view, blobs, {**BY_LAYER, "full": everything},
                                cls={"full": LyingDelegate if liar else ExpertService}, spot_check=1.0)
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers.values(), client])
            gen = await client.generate_tokens(PROMPT, 5, plan=STATIC_DELEGATE)
            sampled = await client.generate_tokens(PROMPT, 5, 0.8, 7, plan=STATIC_DELEGATE)
            nursery.cancel_scope.cancel()
    assert gen.tokens == reference_tokens(model, PROMPT, 5) and gen.spot_checks >= 1
    if liar:
        assert gen.fallbacks[0].startswith("static_delegate") and "spot check" in gen.fallbacks[0]
        assert "full" in gen.faults and client.net.score("full") < 0
        assert gen.plan["type"] != STATIC_DELEGATE
        assert sampled.plan["type"] == STATIC_DELEGATE and sampled.spot_checks == 0  # sampling: not checked
    else:
        assert not gen.fallbacks and not gen.faults and gen.plan["type"] == STATIC_DELEGATE
        assert client.net.score("full") == 0
        assert sampled.tokens == reference_tokens(model, PROMPT, 5, 0.8, 7)


