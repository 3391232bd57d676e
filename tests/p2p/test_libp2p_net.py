"""The libp2p `Network` on 127.0.0.1 (p2p/libp2p_net.py): config, gossip, verdicts and bans,
clean shutdown, and loopback figures. Helpers and how the waits work: libp2p_support.py.
"""

from __future__ import annotations

import logging
import statistics
import time

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from chain.errors import ConfigError
from p2p.libp2p_net import Libp2pConfig, Libp2pNetwork
from p2p.network import (
    MAX_GOSSIP_BYTES,
    MessageTooLarge,
    Network,
    NetworkError,
    PeerUnreachable,
    ScoreConfig,
    Verdict,
)
from tests.p2p.libp2p_support import ECHO, TOPIC, WAIT, Inbox, Watch, echo, mesh, seed, star

# --- config ---------------------------------------------------------------------------------


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError):
        Libp2pConfig(seed=b"short")
    with pytest.raises(ConfigError):
        Libp2pConfig(seed=seed(1), listen="not a multiaddr")
    with pytest.raises(ConfigError):
        Libp2pConfig(seed=seed(1), bootstrap=("/ip4/127.0.0.1/tcp/1",))  # no /p2p/
    with pytest.raises(ConfigError):
        Libp2pConfig(seed=seed(1), request_timeout=0)


async def test_peer_id_derives_from_seed() -> None:
    async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(9))) as net:
        expected = str(ID.from_pubkey(create_new_key_pair(seed(9)).public_key))
        assert net.local_id == expected
        assert isinstance(net, Network)
        addrs = net.listen_addrs()
        assert addrs and all(addr.endswith(f"/p2p/{expected}") for addr in addrs)


async def test_taken_listen_port_fails_to_open() -> None:
    async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(1))) as a:
        taken = a.listen_addrs()[0].split("/p2p/")[0]
        with pytest.raises(NetworkError, match="cannot listen"):
            async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(2), listen=taken)):
                pass


# --- gossip ---------------------------------------------------------------------------------


async def test_gossip_reaches_all_subscribers_through_the_hub() -> None:
    async with star(3) as (a, b, c):
        inboxes = [Inbox(net) for net in (a, b, c)]
        await mesh([a, b, c])
        await b.publish(TOPIC, b"vote")
        await inboxes[0].until_count(1)
        await inboxes[2].until_count(1)
        assert inboxes[0].got == [(b.local_id, b"vote")]
        assert inboxes[2].got == [(a.local_id, b"vote")]  # the sender is the forwarder
        assert inboxes[1].got == []  # never one's own publication


@pytest.mark.slow
async def test_gossip_100_messages_all_arrive() -> None:
    async with star(3) as (a, b, c):
        inboxes = [Inbox(net) for net in (a, b, c)]
        await mesh([a, b, c])
        sent = [b"msg-%03d" % i for i in range(100)]
        with trio.fail_after(WAIT):
            for data in sent:
                await b.publish(TOPIC, data)
            await inboxes[0].until_count(100)
            await inboxes[2].until_count(100)
        for inbox in (inboxes[0], inboxes[2]):
            assert sorted(data for _, data in inbox.got) == sent


async def test_gossip_reject_penalises_the_sender() -> None:
    async with star(2) as (a, b):
        inbox = Inbox(a, Verdict.REJECT)
        Inbox(b)
        await mesh([a, b])
        await b.publish(TOPIC, b"bad")
        await inbox.until_count(1)
        # The penalty is taken as the handler returns, before any other task runs.
        assert a.score(b.local_id) == pytest.approx(-1.0, abs=1e-3)
        assert b.local_id in a.peers()


async def test_gossip_ignore_does_not_penalise() -> None:
    async with star(2) as (a, b):
        inbox = Inbox(a, Verdict.IGNORE)
        Inbox(b)
        await mesh([a, b])
        await b.publish(TOPIC, b"stale")
        await inbox.until_count(1)
        assert a.score(b.local_id) == 0.0


async def test_gossip_repeated_rejects_ban_and_disconnect_the_sender() -> None:
    async with star(2, score=ScoreConfig(ban_threshold=-3.0)) as (a, b):
        inbox = Inbox(a, Verdict.REJECT)
        Inbox(b)
        watch = Watch(a)
        await mesh([a, b])
        for i in range(4):
            await b.publish(TOPIC, b"bad-%d" % i)
        await watch.gone(b.local_id)
        assert (b.local_id, False) in watch.events
        assert a.is_banned(b.local_id)
        assert len(inbox.got) == 4
        # b keeps re-dialling its bootstrap peer a; a keeps refusing it while the ban lasts.
        with pytest.raises(PeerUnreachable, match="banned"):
            await a.request(b.local_id, ECHO, b"x", timeout=2.0)


async def test_gossip_over_max_bytes_is_rejected_unseen() -> None:
    async with star(2) as (a, b):
        inbox = Inbox(a, max_bytes=10)
        Inbox(b)
        await mesh([a, b])
        await b.publish(TOPIC, b"x" * 11)
        await b.publish(TOPIC, b"small")
        await inbox.until_count(1)
        assert inbox.got == [(b.local_id, b"small")]
        assert a.score(b.local_id) < 0


async def test_gossip_message_at_the_cap_arrives() -> None:
    """py-libp2p drops pubsub RPCs over 1 MiB by default; the network raises that limit."""
    async with star(2) as (a, b):
        inbox = Inbox(a)
        Inbox(b)
        await mesh([a, b])
        await b.publish(TOPIC, b"x" * MAX_GOSSIP_BYTES)
        await inbox.until_count(1)
        assert len(inbox.got[0][1]) == MAX_GOSSIP_BYTES


async def test_publish_over_the_gossip_cap_raises() -> None:
    async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(1))) as a:
        with pytest.raises(MessageTooLarge):
            await a.publish(TOPIC, b"x" * (MAX_GOSSIP_BYTES + 1))


async def test_subscribing_twice_raises() -> None:
    async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(1))) as a:
        Inbox(a)
        with pytest.raises(ValueError):
            Inbox(a)


# --- shutdown ---------------------------------------------------------------------------------


async def test_clean_shutdown_logs_no_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with star(3) as (a, b, c):
        a.set_request_handler(ECHO, echo, max_request_bytes=1024)
        inboxes = [Inbox(net) for net in (a, b, c)]
        await mesh([a, b, c])
        await c.publish(TOPIC, b"bye")
        await inboxes[1].until_count(1)
        assert await b.request(a.local_id, ECHO, b"x", timeout=5.0) == b"echo:x"
    bad = [
        r for r in caplog.records
        if r.levelno >= logging.ERROR or "Nursery is closed" in r.getMessage()
    ]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


async def test_stopped_node_fails_requests_and_drops_publishes() -> None:
    async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(1))) as a:
        pass
    assert a.peers() == []
    await a.publish(TOPIC, b"x")  # dropped
    with pytest.raises(PeerUnreachable, match="down"):
        await a.request(a.local_id, ECHO, b"x", timeout=0.05)


# --- figures ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_figures_dial_gossip_latency_request_round_trip() -> None:
    """Loose bounds on loopback; prints the figures (run with -s to see them)."""
    async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(1))) as a:
        watch = Watch(a)
        started = time.perf_counter()
        async with Libp2pNetwork.open(Libp2pConfig.for_tests(seed(2))) as b:
            start_s = time.perf_counter() - started
            dialled = time.perf_counter()
            await b.connect(a.listen_addrs()[0])
            dial_s = time.perf_counter() - dialled
            await watch.connected_to(b.local_id)
            a.set_request_handler(ECHO, echo, max_request_bytes=1024)
            inbox = Inbox(a)
            Inbox(b)
            await mesh([a, b])
            latencies = []
            for i in range(50):
                sent = time.perf_counter()
                await b.publish(TOPIC, b"%d" % i)
                await inbox.until_count(i + 1)
                latencies.append(inbox.times[-1] - sent)
            trips = []
            for _ in range(50):
                sent = time.perf_counter()
                await b.request(a.local_id, ECHO, b"ping", timeout=5.0)
                trips.append(time.perf_counter() - sent)
        gossip_p50, trip_p50 = statistics.median(latencies), statistics.median(trips)
        print(
            f"\nnode start {start_s * 1e3:.1f} ms, dial {dial_s * 1e3:.1f} ms, "
            f"gossip p50 {gossip_p50 * 1e3:.2f} ms, request round trip p50 {trip_p50 * 1e3:.2f} ms"
        )
        assert dial_s < 1.0 and gossip_p50 < 0.1 and trip_p50 < 0.1
