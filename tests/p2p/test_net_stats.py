"""Counters of the libp2p `Network` (p2p/net_stats.py): gossip per topic and verdict, requests
on both sides, short names of topics and protocols.
"""

from __future__ import annotations

import pytest
import trio

from chain.errors import BlyanError
from p2p.net_stats import NetStats, RequestStats, TopicStats, compute_short_name
from p2p.network import RemoteError, Verdict, protocol_name, topic_name
from tests.p2p.libp2p_support import ECHO, TOPIC, WAIT, Inbox, echo, mesh, star

# --- counters ---------------------------------------------------------------------------------


async def test_stats_count_gossip_per_topic_and_verdict() -> None:
    async with star(2) as (a, b):
        verdicts = iter([Verdict.ACCEPT, Verdict.IGNORE, Verdict.REJECT])
        got: list[bytes] = []
        arrived = trio.Event()

        async def judge(sender: str, data: bytes) -> Verdict:
            got.append(data)
            if len(got) == 3:
                arrived.set()
            return next(verdicts)

        a.subscribe(TOPIC, judge)
        Inbox(b)
        await mesh([a, b])
        assert a.stats().topics.get("votes", TopicStats()) == TopicStats()
        for data in (b"one", b"two", b"three"):
            await b.publish(TOPIC, data)
        with trio.fail_after(WAIT):
            await arrived.wait()
        received, sent = a.stats().topics["votes"], b.stats().topics["votes"]
        assert (received.accepted, received.ignored, received.rejected) == (1, 1, 1)
        assert received.messages_in == 3 and received.bytes_in == 11
        assert sent.messages_out == 3 and sent.bytes_out == 11
        assert sent.messages_in == 0 and received.messages_out == 0  # a relays to nobody else
        assert isinstance(a.stats(), NetStats)


async def test_stats_count_requests_on_both_sides() -> None:
    async with star(2) as (a, b):
        a.set_request_handler(ECHO, echo, max_request_bytes=8)

        async def refuse(requester: str, data: bytes) -> bytes:
            raise BlyanError("no")

        a.set_request_handler(protocol_name("testnet", "refuse"), refuse, max_request_bytes=8)
        await b.request(a.local_id, ECHO, b"x", timeout=WAIT)
        with pytest.raises(RemoteError):
            await b.request(a.local_id, ECHO, b"x" * 9, timeout=WAIT)
        with pytest.raises(RemoteError):
            await b.request(a.local_id, protocol_name("testnet", "refuse"), b"x", timeout=WAIT)
        served, asked = a.stats().requests, b.stats().requests
        assert served["echo"] == RequestStats(served=1, failed=1)
        assert served["refuse"] == RequestStats(failed=1)
        assert asked["echo"] == RequestStats(sent=1, send_failed=1, streams_opened=1)  # one stream
        assert asked["refuse"] == RequestStats(send_failed=1, streams_opened=1)


def test_short_names_of_topics_and_protocols() -> None:
    assert compute_short_name(topic_name("devnet", "votes")) == "votes"
    assert compute_short_name(protocol_name("devnet", "blocks", 2)) == "blocks"
    assert compute_short_name("/other/thing") == "/other/thing"
