"""`blyan chat --plan`: the plan goes to `blyan_generate` and the answer names the plan and its
round trips. The RPC answer comes from a real expert service on the simulated network (nodes
serving whole layers, so a pipeline exists), run under the mock clock for each call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import trio
import trio.testing
from click.testing import CliRunner

from node.api.expert_methods import generate
from node.api.services import Services
from node.cli import remote
from p2p.sim import SimNetworkHub
from tests.node.experts.test_inference import build_weights, make_service, reference_tokens, start_all
from tests.node.experts.test_plans import BY_LAYER


@click.group()
def blyan() -> None:
    """The `blyan` group with only the RPC verbs (as `node.cli.main` registers them)."""


remote.register(blyan)


class SimClient:
    """Answers `blyan_generate` from a fresh simulated network: four stages and this client."""

    def __init__(self, tmp_path: Path) -> None:
        self.view, self.blobs, self.model = build_weights(tmp_path / "blobs")
        self.asked: list[dict] = []

    def call(self, method: str, params: Any) -> Any:
        assert method == "blyan_generate"
        self.asked.append(params)

        async def main() -> dict:
            async with SimNetworkHub(seed=2) as hub:
                servers = [make_service(hub.add_node(n), self.view, self.blobs, s) for n, s in BY_LAYER.items()]
                client = make_service(hub.add_node("client"), self.view, self.blobs, ("none",))
                async with trio.open_nursery() as nursery:
                    await start_all(nursery, hub, [*servers, client])
                    answer = await generate(Services(experts=client), params)
                    nursery.cancel_scope.cancel()
            return answer

        return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_chat_plan_reaches_the_node_and_is_reported(tmp_path: Path, monkeypatch) -> None:
    sim = SimClient(tmp_path)
    monkeypatch.setattr(remote, "make_client", lambda data_dir, url, cookie: sim)
    runner = CliRunner()
    common = ["--max-tokens", "4", "--rpc", "http://127.0.0.1:1", "--cookie", str(tmp_path / "cookie")]
    text = runner.invoke(blyan, ["chat", "Hello", "--plan", "pipeline", *common])
    assert text.exit_code == 0, text.output
    assert "-- plan pipeline on a0, a1: 8 round trips here, 0 by stages/delegate" in text.stderr  # 2 stages x 4
    as_json = runner.invoke(blyan, ["chat", "Hello", "--plan", "static_delegate", "--json", *common])
    answer = json.loads(as_json.stdout)
    assert answer["plan"]["type"] == "static_delegate" and answer["round_trips"] == 1
    assert answer["tokens"] == reference_tokens(sim.model, list(b"Hello"), 4)
    assert [p["plan"] for p in sim.asked] == ["pipeline", "static_delegate"]
    bad = runner.invoke(blyan, ["chat", "Hello", "--plan", "fastest", *common])
    assert bad.exit_code == 2 and "fastest" in bad.output
