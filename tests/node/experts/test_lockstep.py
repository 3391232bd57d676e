"""Lockstep decoding: several generations' steps as one forward (`node.experts.lockstep`).

The model's batched path (`Attention.forward_seqs`, `MoEModel.embed_seqs`) against each
sequence alone (properties), then the decoder over the simulated network: who runs together,
when a step goes, members cancelled before and after their step starts, the row cap, and an error
of the shared forward. Under `autojump_clock`, with inline compute: waits are on conditions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu.model import KVCache, MoEConfig, init_seeded
from node.experts.inference import Executor, Generation
from node.experts.lockstep import LockstepDecoder
from node.experts.weights import ExpertKey, get_expert_heads
from p2p.sim import SimNetworkHub
from tests.node.experts.test_inference import SPEC, build_weights, make_service, ring, start_all

MODEL = init_seeded(MoEConfig.from_spec(SPEC), SPEC.seed).eval()
KEY = ("model", b"heads")


def _tokens(seed: int, n: int) -> torch.Tensor:
    return torch.randint(0, SPEC.vocab_size, (1, n), generator=torch.Generator().manual_seed(seed))  # [1, n]


def _cache_after(seed: int, past: int) -> KVCache:
    """A cache holding `past` positions of a seeded prompt (empty for 0)."""
    cache = KVCache(MODEL.cfg)
    if past:
        with torch.no_grad():
            MODEL(_tokens(seed, past), cache=cache)
    return cache


# --- the model's batched path -------------------------------------------------------------------

seqs = st.lists(st.tuples(st.integers(0, 12), st.integers(1, 6)), min_size=1, max_size=5)
"""Per sequence: positions already cached, new rows."""


@settings(max_examples=40, deadline=None)
@given(seqs)
def test_forward_seqs_equals_each_sequence_alone(shapes: list[tuple[int, int]]) -> None:
    """Embedding and attention of M sequences at once, each after its own cache: each sequence's
    rows and appended keys are what it gets alone (to float rounding)."""
    attn = MODEL.layers[0].attn
    alone, together = [_cache_after(i, past) for i, (past, _) in enumerate(shapes)], \
        [_cache_after(i, past) for i, (past, _) in enumerate(shapes)]
    idxs = [_tokens(100 + i, n) for i, (_, n) in enumerate(shapes)]
    with torch.no_grad():
        x = MODEL.embed_seqs(idxs, [past for past, _ in shapes])  # [1, N, D]
        y = attn.forward_seqs(x, [n for _, n in shapes], together, 0)  # [1, N, D]
        at = 0
        for i, (past, n) in enumerate(shapes):
            xi = MODEL.embed_tokens(idxs[i], past)  # [1, n, D]
            assert torch.equal(x[:, at : at + n], xi)
            yi = attn(xi, alone[i], 0)  # [1, n, D]
            torch.testing.assert_close(y[:, at : at + n], yi, rtol=0, atol=1e-6)
            assert together[i].lengths[0] == alone[i].lengths[0] == past + n
            torch.testing.assert_close(together[i].keys[0][..., : past + n, :],
                                       alone[i].keys[0][..., : past + n, :], rtol=0, atol=1e-6)
            at += n


def test_forward_seqs_refuses_what_a_cache_cannot_take_before_appending_any() -> None:
    caches = [_cache_after(1, 3), _cache_after(2, SPEC.max_seq_len - 1)]  # the second has room for one
    x = torch.zeros(1, 5, SPEC.d_model)  # [1, 5, D]: 2 rows, then 3
    with torch.no_grad(), pytest.raises(ValueError, match="cannot take 3 more"):
        MODEL.attn_forward_seqs(0, x, [2, 3], caches)
    assert [c.lengths[0] for c in caches] == [3, SPEC.max_seq_len - 1]  # neither was appended


@pytest.mark.parametrize(("shape", "lengths", "n_caches"), [
    ((2, 3, SPEC.d_model), [3], 1),  # a batch dimension
    ((1, 4, SPEC.d_model), [1, 2], 2),  # lengths do not add up
    ((1, 3, SPEC.d_model), [1, 2], 1),  # a cache missing
    ((1, 3, SPEC.d_model), [3, 0], 2),  # an empty sequence
])
def test_forward_seqs_refuses_inconsistent_shapes(shape: tuple[int, ...], lengths: list[int], n_caches: int) -> None:
    with torch.no_grad(), pytest.raises(ValueError, match="forward_seqs takes"):
        MODEL.attn_forward_seqs(0, torch.zeros(shape), lengths, [None] * n_caches)


def test_embed_seqs_refuses_positions_beyond_the_context() -> None:
    with pytest.raises(ValueError, match="do not fit in max_seq_len"):
        MODEL.embed_seqs([_tokens(1, 2), _tokens(2, 3)], [0, SPEC.max_seq_len - 2])


# --- the decoder over the simulated network ------------------------------------------------------

@dataclass
class Net:
    executor: Executor
    heads: dict[ExpertKey, bytes]
    hub: SimNetworkHub


@asynccontextmanager
async def remote_experts(tmp_path: Path) -> AsyncIterator[Net]:
    """A client that serves nothing and four servers (a ring of experts): every step's experts
    are remote, so a step takes simulated round trips (20-100 ms each)."""
    view, blobs, _ = build_weights(tmp_path / "blobs")
    async with SimNetworkHub(seed=7) as hub:
        servers = [make_service(hub.add_node(f"n{i}"), view, blobs, ring(i)) for i in range(4)]
        client = make_service(hub.add_node("client"), view, blobs, ("none",))
        async with trio.open_nursery() as nursery:
            await start_all(nursery, hub, [*servers, client])
            yield Net(client.executor(await client.shared_model()), get_expert_heads(client.view), hub)
            nursery.cancel_scope.cancel()


class Member:
    """One generation's steps through the decoder: its prompt, cache and trace."""

    def __init__(self, net: Net, decoder: LockstepDecoder, seed: int, n: int) -> None:
        self.net, self.decoder = net, decoder
        self.idx, self.cache, self.gen = _tokens(seed, n), KVCache(MODEL.cfg), Generation(prompt=[])
        self.result: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.finished_at = -1.0

    async def step(self, pick: bool = True) -> None:
        logits, _, token = await self.decoder.step(KEY, self, self.net.executor, self.net.heads, self.idx,
                                                   self.cache, self.gen, _argmax if pick else None)
        self.result, self.finished_at = (logits, token), trio.current_time()

    async def alone(self) -> torch.Tensor:
        """This member's step run by itself, on a fresh cache: the reference."""
        logits, _ = await self.net.executor.forward(self.idx, self.net.heads, Generation(prompt=[]),
                                                    KVCache(MODEL.cfg))
        return logits


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1, keepdim=True)  # [1, 1]


async def test_members_steps_run_as_one_forward_with_each_its_own_logits_and_token(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with remote_experts(tmp_path) as net:
        decoder = LockstepDecoder(max_delay_s=0.05)
        members = [Member(net, decoder, seed, n) for seed, n in [(1, 5), (2, 1), (3, 8)]]
        with ExitStack() as joined:
            for m in members:
                joined.enter_context(decoder.joined(KEY, m))
            async with trio.open_nursery() as nursery:
                for m in members:
                    nursery.start_soon(m.step)
        for m in members:
            assert m.result is not None
            logits, token = m.result
            torch.testing.assert_close(logits, await m.alone(), rtol=0, atol=1e-5)
            assert token is not None and token.item() == logits[0, -1].argmax().item()
            assert m.cache.length == m.idx.shape[1]
            assert m.gen.positions == [m.idx.shape[1]] and m.gen.round_trips > 0
    assert (decoder.steps_run, decoder.rows_run) == (1, 3)


async def test_a_lone_step_is_the_single_forward_bit_for_bit(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with remote_experts(tmp_path) as net:
        decoder = LockstepDecoder()
        m = Member(net, decoder, 4, 6)
        with decoder.joined(KEY, m):
            start = trio.current_time()
            await m.step(pick=False)
        assert m.result is not None and m.result[1] is None
        assert torch.equal(m.result[0], await m.alone())
        assert m.finished_at - start < 1.0  # not held for a max_wait


async def test_step_goes_after_max_delay_without_a_member_that_has_not_stepped(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A joined member that is not stepping (for example still choosing its plan) holds a step
    back `max_delay_s` at most."""
    async with remote_experts(tmp_path) as net:
        decoder = LockstepDecoder(max_delay_s=0.3, max_wait_s=5.0)
        a, idle = Member(net, decoder, 1, 3), Member(net, decoder, 2, 3)
        with decoder.joined(KEY, a), decoder.joined(KEY, idle):
            start = trio.current_time()
            await a.step()
        assert a.result is not None and (decoder.steps_run, decoder.rows_run) == (1, 1)
        assert 0.3 <= a.finished_at - start < 0.3 + 2.0  # the delay, then its round trips


async def test_member_cancelled_while_waiting_leaves_the_step(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with remote_experts(tmp_path) as net:
        decoder = LockstepDecoder(max_delay_s=0.5)
        a, b, idle = (Member(net, decoder, s, 4) for s in (1, 2, 3))
        with decoder.joined(KEY, a), decoder.joined(KEY, b), decoder.joined(KEY, idle):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(a.step)
                with trio.move_on_after(0.1) as scope:  # before the step is due
                    await b.step()
        assert scope.cancelled_caught and b.result is None
        assert b.cache.length == 0 and b.gen.positions == []  # b's step never ran
        assert a.result is not None
        torch.testing.assert_close(a.result[0], await a.alone(), rtol=0, atol=1e-5)
    assert (decoder.steps_run, decoder.rows_run) == (1, 1)


async def test_member_cancelled_after_the_step_started_leaves_the_others_finishing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with remote_experts(tmp_path) as net:
        decoder = LockstepDecoder(max_delay_s=0.05)
        a, b = Member(net, decoder, 1, 4), Member(net, decoder, 2, 6)
        with decoder.joined(KEY, a), decoder.joined(KEY, b):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(a.step)
                with trio.move_on_after(0.01) as scope:  # both are in: it started at once, and is on the wire
                    await b.step()
        assert scope.cancelled_caught and b.result is None
        assert a.result is not None
        torch.testing.assert_close(a.result[0], await a.alone(), rtol=0, atol=1e-5)
        assert b.cache.length == 6  # appended by the step that ran on: b's generation is over
    assert (decoder.steps_run, decoder.rows_run) == (1, 2)


async def test_a_member_whose_step_runs_is_waited_for_up_to_max_wait(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A newcomer's step waits for a member that is in a running step (it comes back with its
    token) beyond `max_delay_s`: the two fall into step instead of running beside each other."""
    async with remote_experts(tmp_path) as net:
        decoder = LockstepDecoder(max_delay_s=0.001, max_wait_s=10.0)
        a, newcomer = Member(net, decoder, 1, 4), Member(net, decoder, 2, 3)
        seen: dict[str, object] = {}

        async def a_two_steps() -> None:
            await a.step()
            assert a.result is not None and a.result[1] is not None
            a.idx = a.result[1]  # its token: the next step
            await a.step()

        async def newcomer_joins_at(t: float) -> None:
            await trio.sleep_until(t)  # the schedule of the test: a's first step is on the wire
            seen["a's first step running"] = decoder.steps_run == 1 and a.result is None
            with decoder.joined(KEY, newcomer):
                await newcomer.step()

        with decoder.joined(KEY, a):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(a_two_steps)
                nursery.start_soon(newcomer_joins_at, trio.current_time() + 0.01)  # round trips take 20 ms and more
        assert seen["a's first step running"] is True
        assert newcomer.result is not None and a.cache.length == 5
        assert (decoder.steps_run, decoder.rows_run) == (2, 3)  # a alone, then a's token with the newcomer's prompt
        torch.testing.assert_close(newcomer.result[0], await newcomer.alone(), rtol=0, atol=1e-5)


async def test_max_rows_splits_a_step_that_would_overflow(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with remote_experts(tmp_path) as net:
        decoder = LockstepDecoder(max_delay_s=5.0, max_wait_s=5.0, max_rows=10)
        members = [Member(net, decoder, s, 6) for s in (1, 2)]
        start = trio.current_time()
        with ExitStack() as joined:
            for m in members:
                joined.enter_context(decoder.joined(KEY, m))
            async with trio.open_nursery() as nursery:
                for m in members:
                    nursery.start_soon(m.step)
        for m in members:
            assert m.result is not None
            assert torch.equal(m.result[0], await m.alone())  # each ran alone: bit for bit
        assert min(m.finished_at for m in members) - start < 5.0  # the full step went at once
    assert (decoder.steps_run, decoder.rows_run) == (2, 2)


async def test_an_error_of_the_shared_forward_is_every_members_and_appends_no_cache(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with remote_experts(tmp_path) as net:
        decoder = LockstepDecoder(max_delay_s=0.05)
        ok, full = Member(net, decoder, 1, 3), Member(net, decoder, 2, 3)
        full.cache = _cache_after(2, SPEC.max_seq_len - 1)  # room for one position, not three
        errors: list[Exception] = []

        async def step(m: Member) -> None:
            try:
                await m.step()
            except ValueError as err:
                errors.append(err)

        with decoder.joined(KEY, ok), decoder.joined(KEY, full):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(step, ok)
                nursery.start_soon(step, full)
        assert len(errors) == 2 and errors[0] is errors[1]
        assert "do not fit in max_seq_len" in str(errors[0])
        assert ok.cache.length == 0 and full.cache.length == SPEC.max_seq_len - 1
    assert (decoder.steps_run, decoder.rows_run) == (1, 2)


def test_invalid_limits_are_refused() -> None:
    for limits in ({"max_delay_s": -1.0}, {"max_delay_s": 2.0, "max_wait_s": 1.0}, {"max_rows": 0},
                   {"max_wait_s": float("inf")}):
        with pytest.raises(ValueError, match="invalid lockstep limits"):
            LockstepDecoder(**limits)
