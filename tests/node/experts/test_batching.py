"""Batching of expert forwards: merging and splitting (properties), the server's pool (bounded
wait, cancellation, overload), the client's grouping, and both over the simulated network.

Under `autojump_clock`, with inline compute: waits are on conditions, never sleeps.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from chain import codec
from node.experts.batching import (
    BatchConfig,
    ForwardPool,
    Overloaded,
    RequestBatcher,
    merge_requests,
    split_outputs,
)
from node.experts.inference import InlineCompute
from node.experts.wire import ForwardItem, ForwardOutput, ForwardRequest, decode_rows, encode_rows
from p2p.sim import SimNetworkHub
from tests.node.experts.test_inference import (
    PROMPT,
    SPEC,
    build_weights,
    make_service,
    reference_tokens,
    ring,
    start_all,
)

D = 4
HASH = [hashlib.sha256(bytes([e])).digest() for e in range(8)]
PROMPTS = [PROMPT, list(b"Mixture"), list(b"of experts, batched"), list(b"1, 2, 3")]


def make_request(experts_rows: dict[int, int], seed: int, layer: int = 0) -> ForwardRequest:
    gen = torch.Generator().manual_seed(seed)
    items = tuple(ForwardItem(e, HASH[e], n, encode_rows(torch.randn(n, D, generator=gen)))
                  for e, n in sorted(experts_rows.items()))
    return ForwardRequest(layer, D, items)


def scale_by_expert(req: ForwardRequest) -> list[ForwardOutput]:
    """A row-wise 'expert': row * (expert + 1) + row index within the item (so order shows)."""
    out = []
    for it in req.items:
        x = decode_rows(it.data, it.rows, req.d_model)  # [n, D]
        y = x * (it.expert + 1)  # [n, D]
        out.append(ForwardOutput(it.expert, it.block_hash, it.rows, encode_rows(y)))
    return out


requests = st.lists(st.dictionaries(st.integers(0, 7), st.integers(1, 5), min_size=1, max_size=8),
                    min_size=1, max_size=6)


@given(requests)
def test_merge_then_split_gives_each_request_its_own_rows(shapes: list[dict[int, int]]) -> None:
    reqs = [make_request(s, i) for i, s in enumerate(shapes)]
    merged, offsets = merge_requests(reqs)
    experts = [it.expert for it in merged.items]
    assert experts == sorted(set(experts))
    assert sum(it.rows for it in merged.items) == sum(it.rows for r in reqs for it in r.items)
    outputs = scale_by_expert(merged)
    for req, offs in zip(reqs, offsets, strict=True):
        assert split_outputs(outputs, req, offs, D) == scale_by_expert(req)  # bytes, exactly


def test_invalid_merge_of_different_weights_is_refused() -> None:
    a = make_request({0: 1}, 1)
    b = ForwardRequest(0, D, (ForwardItem(0, HASH[1], 1, a.items[0].data),))
    with pytest.raises(ValueError, match="different block hashes"):
        merge_requests([a, b])


class Recorder:
    """`compute_outputs` that logs each call's requests (row counts per item)."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.times: list[float] = []

    def __call__(self, req: ForwardRequest) -> list[ForwardOutput]:
        self.calls.append([it.rows for it in req.items])
        self.times.append(trio.current_time())
        return scale_by_expert(req)


async def test_pool_computes_concurrent_requests_once_each_gets_its_rows(
    autojump_clock: trio.testing.MockClock
) -> None:
    rec = Recorder()
    pool = ForwardPool(InlineCompute().run, rec)
    reqs = [make_request({0: 2, 3: 1}, 1), make_request({3: 4}, 2), make_request({0: 1, 5: 2}, 3)]
    got: dict[int, list[ForwardOutput]] = {}

    async def ask(i: int) -> None:
        got[i] = await pool.forward(reqs[i])

    async with trio.open_nursery() as nursery:
        for i in range(len(reqs)):
            nursery.start_soon(ask, i)
    assert rec.calls == [[3, 5, 2]]  # one call: expert 0 x3, expert 3 x5, expert 5 x2
    assert all(got[i] == scale_by_expert(reqs[i]) for i in range(len(reqs)))
    assert pool.batches_run == 1 and pool.requests_merged == 3 and pool.queued_rows == 0


async def test_pool_lone_request_waits_at_most_quiet_s(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    config = BatchConfig(max_delay_s=0.002, quiet_s=0.0005)
    pool = ForwardPool(InlineCompute().run, rec, config)
    start = trio.current_time()
    assert await pool.forward(make_request({1: 1}, 1)) == scale_by_expert(make_request({1: 1}, 1))
    assert rec.times[0] - start == pytest.approx(config.quiet_s)


async def test_pool_wait_is_bounded_by_max_delay_under_a_stream_of_arrivals(
    autojump_clock: trio.testing.MockClock
) -> None:
    rec = Recorder()
    config = BatchConfig(max_delay_s=0.002, quiet_s=0.0005)
    pool = ForwardPool(InlineCompute().run, rec, config)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(12):  # one every 0.3 ms: never quiet for 0.5 ms
            nursery.start_soon(pool.forward, make_request({0: 1}, i))
            await trio.sleep(0.0003)
    assert rec.times[0] - start == pytest.approx(config.max_delay_s)
    assert rec.calls[0] == [7]  # those that came by 2 ms (0, 0.3, ..., 1.8 ms)
    assert sum(sum(c) for c in rec.calls) == 12
    assert all(t - s <= config.max_delay_s + 1e-9 for t, s in zip(rec.times, [start, *rec.times], strict=False))


async def test_pool_full_batch_goes_at_once(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    pool = ForwardPool(InlineCompute().run, rec, BatchConfig(max_rows=4))
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(2):
            nursery.start_soon(pool.forward, make_request({0: 2}, i))
    assert rec.calls == [[4]] and rec.times == [start]


async def test_pool_request_cancelled_while_waiting_is_not_computed(
    autojump_clock: trio.testing.MockClock
) -> None:
    rec = Recorder()
    pool = ForwardPool(InlineCompute().run, rec, BatchConfig(max_delay_s=0.002, quiet_s=0.001))
    got = {}

    async def ask(i: int, scopes: dict[int, trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            scopes[i] = scope
            got[i] = await pool.forward(make_request({0: i + 1}, i))

    scopes: dict[int, trio.CancelScope] = {}
    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(ask, i, scopes)
        await trio.sleep(0.0002)  # at 0.2 ms, inside the 1 ms quiet window, one gives up (its deadline)
        assert [len(b.jobs) for b in pool._open.values()] == [3] and not rec.calls
        scopes[0].cancel()
    assert rec.calls == [[5]]  # rows of requests 1 and 2 only
    assert sorted(got) == [1, 2] and pool.queued_rows == 0


async def test_pool_refuses_beyond_max_queued_rows(autojump_clock: trio.testing.MockClock) -> None:
    pool = ForwardPool(InlineCompute().run, Recorder(), BatchConfig(max_queued_rows=4))
    outcomes = []

    async def ask(rows: int) -> None:
        try:
            await pool.forward(make_request({0: rows}, rows))
            outcomes.append(("ok", rows))
        except Overloaded:
            outcomes.append(("overloaded", rows))

    async with trio.open_nursery() as nursery:
        for rows in (3, 1, 2):
            nursery.start_soon(ask, rows)
            await trio.lowlevel.checkpoint()
    assert sorted(outcomes) == [("ok", 1), ("ok", 3), ("overloaded", 2)]
    await pool.forward(make_request({0: 4}, 9))  # once drained, it takes requests again


async def test_pool_bad_rows_of_one_request_fail_only_that_one(autojump_clock: trio.testing.MockClock) -> None:
    pool = ForwardPool(InlineCompute().run, scale_by_expert)
    good = make_request({0: 2}, 1)
    bad = ForwardRequest(0, D, (ForwardItem(0, HASH[0], 1, encode_rows(torch.full((1, D), float("nan")))),))
    outcomes = {}

    async def ask(name: str, req: ForwardRequest) -> None:
        try:
            outcomes[name] = await pool.forward(req)
        except Exception as err:  # noqa: BLE001 - the outcome is what is checked
            outcomes[name] = type(err).__name__

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, "good", good)
        nursery.start_soon(ask, "bad", bad)
    assert outcomes == {"good": scale_by_expert(good), "bad": "InvalidExpertMessage"}


async def test_batcher_lone_member_sends_without_waiting(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetworkHub(seed=1) as hub:
        server, client = hub.add_node("server"), hub.add_node("client")
        seen = []

        async def handler(peer: str, data: bytes) -> bytes:
            req = codec.decode(ForwardRequest, data)
            seen.append((trio.current_time(), [it.rows for it in req.items]))
            return codec.encode(_response(req))

        server.set_request_handler("fwd", handler, 1 << 24)
        batcher = RequestBatcher(client, "fwd", BatchConfig(max_delay_s=1.0))  # >> sim latency
        member, other = object(), object()
        req = make_request({1: 2}, 1)
        with batcher.joined(member):
            start = trio.current_time()
            await batcher.request(member, "server", req, codec.encode(req), timeout=1.0)
            lone = seen[-1][0] - start
            with batcher.joined(other):  # a second generation, busy elsewhere: the first waits for it
                start = trio.current_time()
                await batcher.request(member, "server", req, codec.encode(req), timeout=1.0)
                waited = seen[-1][0] - start
        assert lone < 0.5 and 1.0 <= waited < 1.5


def _response(req: ForwardRequest) -> object:
    from node.experts.wire import ForwardResponse
    return ForwardResponse(tuple(scale_by_expert(req)))


async def test_batcher_merges_concurrent_members_and_splits_back(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetworkHub(seed=1) as hub:
        server, client = hub.add_node("server"), hub.add_node("client")
        seen = []

        async def handler(peer: str, data: bytes) -> bytes:
            req = codec.decode(ForwardRequest, data)
            seen.append([(it.expert, it.rows) for it in req.items])
            return codec.encode(_response(req))

        server.set_request_handler("fwd", handler, 1 << 24)
        batcher = RequestBatcher(client, "fwd")
        members = [object() for _ in range(3)]
        reqs = [make_request({0: 1, 2: 1}, 1), make_request({2: 3}, 2), make_request({0: 2, 7: 1}, 3)]
        got = {}

        async def ask(i: int) -> None:
            got[i] = await batcher.request(members[i], "server", reqs[i], codec.encode(reqs[i]), timeout=1.0)

        for m in members:
            batcher._joined[id(m)] = m  # joined for the whole test
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(ask, i)
        assert seen == [[(0, 3), (2, 4), (7, 1)]]  # one request
        for i, req in enumerate(reqs):
            want = {o.expert: decode_rows(o.data, o.rows, D) for o in scale_by_expert(req)}
            assert got[i].keys() == want.keys()
            assert all(torch.equal(got[i][e], want[e]) for e in want)


async def test_concurrent_generations_on_one_node_are_grouped_and_match_solo(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """4 generations at once from one node: the same tokens as each alone, in fewer requests."""
    view, blobs, model = build_weights(tmp_path / "blobs")
    n = 6
    async with SimNetworkHub(seed=4) as hub:
        servers = [make_service(hub.add_node(f"n{i}"), view, blobs, ring(i)) for i in range(4)]
        client = make_service(hub.add_node("client"), view, blobs, ("none",))
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers, client])
            client.batcher.config = BatchConfig(max_delay_s=0.5)  # above the sim's round trips (20-100 ms)
            solo = [await client.generate_tokens(p, n) for p in PROMPTS]
            before = sum(s.served_requests for s in servers)
            together: dict[int, object] = {}

            async def generate(i: int) -> None:
                together[i] = await client.generate_tokens(PROMPTS[i], n)

            async with trio.open_nursery() as gens:
                for i in range(len(PROMPTS)):
                    gens.start_soon(generate, i)
            sent = sum(s.served_requests for s in servers) - before
            nursery.cancel_scope.cancel()
    for i, prompt in enumerate(PROMPTS):
        assert solo[i].tokens == together[i].tokens == reference_tokens(model, prompt, n)
    solo_trips = sum(g.round_trips for g in solo)
    assert client.batcher.batches_run - solo_trips == sent  # what the client sent is what the servers served
    assert sent <= n * SPEC.n_layers * 4 < solo_trips  # in lockstep: at most one request per peer, layer, token
    assert client.lockstep.rows_run > client.lockstep.steps_run  # steps of several generations ran as one forward


async def test_requests_from_several_clients_are_pooled_and_each_gets_its_rows(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Three client nodes generating at once against the same servers: the servers compute
    their concurrent requests together, and every client gets the single-process tokens."""
    view, blobs, model = build_weights(tmp_path / "blobs")
    n = 5
    async with SimNetworkHub(seed=5) as hub:
        servers = [make_service(hub.add_node(f"n{i}"), view, blobs, ring(i)) for i in range(4)]
        clients = [make_service(hub.add_node(f"c{i}"), view, blobs, ("none",)) for i in range(3)]
        got: dict[int, object] = {}
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers, *clients])

            async def generate(i: int) -> None:
                got[i] = await clients[i].generate_tokens(PROMPTS[i], n)

            async with trio.open_nursery() as gens:
                for i in range(len(clients)):
                    gens.start_soon(generate, i)
            nursery.cancel_scope.cancel()
    for i in range(len(clients)):
        assert got[i].tokens == reference_tokens(model, PROMPTS[i], n)
    assert sum(s.pool.requests_merged for s in servers) > 0
    served = sum(s.served_requests for s in servers)
    assert sum(s.pool.batches_run for s in servers) < served


async def test_server_refuses_when_overloaded(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    view, blobs, _ = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=1) as hub:
        server = make_service(hub.add_node("server"), view, blobs, ("layer0.expert0",))
        server.pool.config = BatchConfig(max_queued_rows=3, max_delay_s=0.5, quiet_s=0.5)  # > sim latency
        asker = hub.add_node("asker")
        head = view.get_state("layer0.expert0").head
        outcomes = []
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)

            async def ask(rows: int) -> None:
                req = ForwardRequest(0, SPEC.d_model, (ForwardItem(0, head, rows, encode_rows(
                    torch.ones(rows, SPEC.d_model))),))
                try:
                    await asker.request("server", server.protocol, codec.encode(req), timeout=2.0)
                    outcomes.append("ok")
                except Exception as err:  # noqa: BLE001 - the outcome is what is checked
                    outcomes.append(str(err))

            async with trio.open_nursery() as asks:
                for rows in (2, 2):
                    asks.start_soon(ask, rows)
            nursery.cancel_scope.cancel()
    assert sorted(outcomes)[0] == "ok" and "waiting here" in sorted(outcomes)[1]
    assert server.net.score("asker") == 0  # refusing for load is no penalty


async def test_concurrent_generations_on_a_serving_node_match_single_process(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A generating node that serves experts itself: its concurrent generations compute those
    here (each on its own rows) and group the rest, with the single-process tokens."""
    view, blobs, model = build_weights(tmp_path / "blobs")
    n = 4
    async with SimNetworkHub(seed=6) as hub:
        servers = [make_service(hub.add_node(f"n{i}"), view, blobs, ring(i)) for i in range(1, 4)]
        client = make_service(hub.add_node("n0"), view, blobs, ring(0))
        got: dict[int, object] = {}
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers, client])

            async def generate(i: int) -> None:
                got[i] = await client.generate_tokens(PROMPTS[i], n)

            async with trio.open_nursery() as gens:
                for i in range(len(PROMPTS)):
                    gens.start_soon(generate, i)
            nursery.cancel_scope.cancel()
    for i, prompt in enumerate(PROMPTS):
        assert got[i].tokens == reference_tokens(model, prompt, n)
        assert any(node == "" for step in got[i].layers for used in step for node in used.values())  # some here
    assert client.lockstep.rows_run > client.lockstep.steps_run or client.batcher.requests_merged > 0


async def test_pool_leader_cancelled_midway_fails_the_others_with_batch_abandoned(
    autojump_clock: trio.testing.MockClock
) -> None:
    release, started, leader = trio.Event(), trio.Event(), {}

    async def slow_compute(fn, req):  # the batch's computing task: recorded, and held
        leader["task"] = trio.lowlevel.current_task()
        started.set()
        await release.wait()
        return fn(req)

    pool = ForwardPool(slow_compute, scale_by_expert)
    scopes, outcomes = {}, {}

    async def ask(i: int) -> None:
        with trio.CancelScope() as scope:
            scopes[trio.lowlevel.current_task()] = scope
            try:
                outcomes[i] = await pool.forward(make_request({0: 1}, i))
            except Exception as err:  # noqa: BLE001 - the outcome is what is checked
                outcomes[i] = type(err).__name__
        outcomes.setdefault(i, "cancelled")

    async with trio.open_nursery() as nursery:
        for i in range(2):
            nursery.start_soon(ask, i)
        await started.wait()  # the batch waited, then its leader started computing
        scopes[leader["task"]].cancel()
    assert sorted(outcomes.values()) == ["BatchAbandoned", "cancelled"]
    assert pool.queued_rows == 0


class RecordingNet:
    """A `Network` whose `request` records the task that sends and waits for `release`."""

    def __init__(self, net) -> None:
        self.net, self.sender, self.release, self.sent = net, None, trio.Event(), trio.Event()

    async def request(self, *args, **kw) -> bytes:
        self.sender = trio.lowlevel.current_task()
        self.sent.set()
        await self.release.wait()
        return await self.net.request(*args, **kw)

    def penalize(self, *args) -> None:
        self.net.penalize(*args)


async def test_batcher_sender_cancelled_midway_fails_the_others_with_batch_abandoned(
    autojump_clock: trio.testing.MockClock
) -> None:
    async with SimNetworkHub(seed=1) as hub:
        server, client = hub.add_node("server"), hub.add_node("client")

        async def handler(peer: str, data: bytes) -> bytes:
            return codec.encode(_response(codec.decode(ForwardRequest, data)))

        server.set_request_handler("fwd", handler, 1 << 24)
        net = RecordingNet(client)
        batcher = RequestBatcher(net, "fwd")
        members = [object(), object()]
        scopes, outcomes = {}, {}

        async def ask(i: int) -> None:
            with trio.CancelScope() as scope:
                scopes[trio.lowlevel.current_task()] = scope
                req = make_request({0: 1}, i)
                try:
                    outcomes[i] = await batcher.request(members[i], "server", req, codec.encode(req), 1.0)
                except Exception as err:  # noqa: BLE001 - the outcome is what is checked
                    outcomes[i] = type(err).__name__
            outcomes.setdefault(i, "cancelled")

        with batcher.joined(members[0]), batcher.joined(members[1]):
            async with trio.open_nursery() as nursery:
                for i in range(2):
                    nursery.start_soon(ask, i)
                await net.sent.wait()
                scopes[net.sender].cancel()
        assert sorted(map(str, outcomes.values())) == ["BatchAbandoned", "cancelled"]


async def test_describe_counts_batches(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    view, blobs, _ = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=1) as hub:
        servers = [make_service(hub.add_node(f"n{i}"), view, blobs, ring(i)) for i in range(4)]
        client = make_service(hub.add_node("client"), view, blobs, ("none",))
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers, client])
            gen = await client.generate_tokens(PROMPT, 2)
            nursery.cancel_scope.cancel()
    assert client.describe()["batching"] == {"pool_batches": 0, "pool_merged": 0,
                                             "sent_requests": gen.round_trips, "sent_merged": 0,
                                             "lockstep_forwards": len(gen.positions),
                                             "lockstep_steps": len(gen.positions)}
    assert sum(s.describe()["batching"]["pool_batches"] for s in servers) == gen.round_trips
