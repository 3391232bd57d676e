"""The feed: fan-out, kind filters, bounded queues that drop (never block), drain order, async
iteration, unsubscribe; and a model-based property over any sequence of publishes and drains."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from node.core.feed import Event, Feed, PeerAhead, Penalized, RoundStarted, Subscription, TxAdmitted

DEADLINE_S = 5.0


def tx(i: int, local: bool = False) -> TxAdmitted:
    return TxAdmitted(2, i.to_bytes(32, "big"), local)


def round_(i: int) -> RoundStarted:
    return RoundStarted(0, 1, i)


def test_feed_fans_out_to_every_subscriber() -> None:
    feed = Feed()
    subs = [feed.subscribe(f"s{i}") for i in range(3)]
    events = [tx(1), round_(0), Penalized("p", "why")]
    for event in events:
        feed.publish(event)
    for sub in subs:
        assert sub.drain() == events
        assert sub.delivered == 3 and sub.dropped == 0
    assert feed.subscriptions() == subs


def test_feed_kinds_filter() -> None:
    feed = Feed()
    txs = feed.subscribe("txs", kinds=[TxAdmitted])
    both = feed.subscribe("both", kinds=(TxAdmitted, PeerAhead))
    everything = feed.subscribe("all")
    events = [tx(1), round_(0), PeerAhead(2, "p", 9), tx(2)]
    for event in events:
        feed.publish(event)
    assert txs.drain() == [tx(1), tx(2)]
    assert both.drain() == [tx(1), PeerAhead(2, "p", 9), tx(2)]
    assert everything.drain() == events
    assert txs.dropped == 0  # filtered events are not drops


def test_feed_full_queue_drops_new_event() -> None:
    feed = Feed()
    small = feed.subscribe("small", maxlen=2)
    big = feed.subscribe("big", maxlen=10)
    for i in range(5):
        feed.publish(tx(i))  # never blocks, never raises
    assert len(small) == 2 and small.dropped == 3 and small.delivered == 2
    assert small.drain() == [tx(0), tx(1)]  # the oldest are kept, the new ones lost
    assert big.drain() == [tx(i) for i in range(5)] and big.dropped == 0
    feed.publish(tx(9))
    assert small.drain() == [tx(9)]  # room again after a drain


def test_subscription_drain_order_and_empties() -> None:
    sub = Feed().subscribe("s")
    assert sub.drain() == []
    events = [round_(i) for i in range(6)]
    for event in events:
        sub.offer(event)
    assert sub.drain() == events
    assert sub.drain() == [] and len(sub) == 0


def test_invalid_subscription_maxlen() -> None:
    with pytest.raises(ValueError):
        Feed().subscribe("s", maxlen=0)
    with pytest.raises(ValueError):
        Subscription("s", None, -1)


async def test_subscription_async_for_gets_later_events() -> None:
    feed = Feed()
    sub = feed.subscribe("s")
    got: list[Event] = []

    async def consume() -> None:
        async for event in sub:
            got.append(event)
            if len(got) == 3:
                return

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()  # the consumer waits on an empty queue
            assert got == []
            for i in range(3):
                feed.publish(tx(i))
                await trio.testing.wait_all_tasks_blocked()
                assert got == [tx(j) for j in range(i + 1)]
    assert len(sub) == 0


async def test_subscription_receive_waits_for_publish_in_another_task() -> None:
    feed = Feed()
    sub = feed.subscribe("s", kinds=[RoundStarted])

    async def publish_later() -> None:
        await trio.testing.wait_all_tasks_blocked()
        feed.publish(tx(1))  # filtered: must not wake the receiver with nothing
        feed.publish(round_(4))

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_later)
            assert await sub.receive() == round_(4)


async def test_unsubscribe_ends_iteration_after_queued_events() -> None:
    feed = Feed()
    sub = feed.subscribe("s")
    got: list[Event] = []
    ended = trio.Event()

    async def consume() -> None:
        async for event in sub:
            got.append(event)
        ended.set()

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
            feed.publish(tx(1))
            feed.publish(tx(2))
            feed.unsubscribe(sub)  # before the consumer ran: what was queued still arrives
            feed.publish(tx(3))
            await ended.wait()
    assert got == [tx(1), tx(2)]
    assert feed.subscriptions() == [] and sub.closed
    feed.unsubscribe(sub)  # twice is harmless


async def test_close_wakes_a_waiting_receiver() -> None:
    sub = Feed().subscribe("s")
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_close_when_blocked, sub)
            with pytest.raises(trio.EndOfChannel):
                await sub.receive()
    sub.offer(tx(1))
    assert len(sub) == 0 and sub.delivered == 0 and sub.dropped == 0  # closed: ignored


async def _close_when_blocked(sub: Subscription) -> None:
    await trio.testing.wait_all_tasks_blocked()
    sub.close()


# --- property: the queue is a bounded FIFO that drops the newest ----------------------------------

_EVENTS = st.one_of(
    st.builds(tx, st.integers(0, 3), st.booleans()),
    st.builds(round_, st.integers(0, 3)),
    st.builds(Penalized, st.sampled_from(["a", "b"]), st.just("r")),
)
_OPS = st.lists(st.one_of(_EVENTS, st.just("drain")), max_size=40)
_KINDS = st.one_of(st.none(), st.lists(st.sampled_from([TxAdmitted, RoundStarted, Penalized]),
                                       min_size=1, max_size=2, unique=True))


@given(ops=_OPS, maxlen=st.integers(1, 6), kinds=_KINDS)
def test_subscription_counts_and_order_property(ops: list[Event | str], maxlen: int,
                                                kinds: list[type] | None) -> None:
    feed = Feed()
    sub = feed.subscribe("s", kinds=kinds, maxlen=maxlen)
    other = feed.subscribe("other", maxlen=len(ops) + 1)
    matching = 0
    model: list[Event] = []
    received: list[Event] = []
    expected_received: list[Event] = []
    for op in ops:
        if op == "drain":
            received += sub.drain()
            expected_received += model
            model = []
            continue
        assert not isinstance(op, str)
        feed.publish(op)
        if kinds is None or isinstance(op, tuple(kinds)):
            matching += 1
            if len(model) < maxlen:
                model.append(op)
    assert sub.delivered + sub.dropped == matching
    assert len(sub) == len(model) <= maxlen
    assert received == expected_received
    assert sub.drain() == model
    published = [op for op in ops if op != "drain"]
    assert other.drain() == published and other.dropped == 0
