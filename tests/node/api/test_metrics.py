"""`NodeMetrics`: the Prometheus text it renders, parsed back; engine hooks, sync progress, and
network counters that move when gossip and requests flow between two loopback libp2p nodes."""

from __future__ import annotations

import trio
from prometheus_client.parser import text_string_to_metric_families

from chain.types import CHAIN_DATASET, CHAIN_REWARD
from node.api.metrics import SYNC_RATE_WINDOW_S, NodeMetrics
from p2p.libp2p_net import Libp2pConfig, Libp2pNetwork
from p2p.net_stats import NetStats, RequestStats, TopicStats
from p2p.network import Verdict, protocol_name, topic_name

WAIT = 10.0


def scrape(metrics: NodeMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the rendered text: (name, sorted labels) -> value."""
    samples = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_block_import_time_is_a_histogram_per_chain_and_source() -> None:
    metrics = NodeMetrics()
    metrics.on_block_imported(CHAIN_REWARD, 1, 200, 0.03, synced=True)
    metrics.on_block_imported(CHAIN_REWARD, 2, 0, 0.002, synced=False)
    s = scrape(metrics)
    assert value(s, "blyan_block_import_seconds_count", chain="reward", synced="true") == 1
    assert value(s, "blyan_block_import_seconds_sum", chain="reward", synced="true") == 0.03
    assert value(s, "blyan_block_import_seconds_bucket", chain="reward", synced="true", le="0.025") == 0
    assert value(s, "blyan_block_import_seconds_bucket", chain="reward", synced="true", le="0.05") == 1
    assert value(s, "blyan_block_import_seconds_count", chain="reward", synced="false") == 1
    assert value(s, "blyan_blocks_synced_total", chain="reward") == 1


def test_rounds_and_round_changes() -> None:
    metrics = NodeMetrics()
    for round_ in (0, 1, 2):
        metrics.on_round(CHAIN_DATASET, 5, round_)
    metrics.on_round(CHAIN_DATASET, 6, 0)
    s = scrape(metrics)
    assert value(s, "blyan_consensus_rounds_total", chain="dataset") == 4
    assert value(s, "blyan_consensus_round_changes_total", chain="dataset") == 2
    assert value(s, "blyan_consensus_round", chain="dataset") == 0


def test_sync_targets_and_rate_over_the_window() -> None:
    clock = FakeClock()
    progress = {"reward": {"height": 3, "target": 50}}
    metrics = NodeMetrics(sync_progress=lambda: progress, clock=clock)
    for height in range(1, 21):
        metrics.on_block_imported(CHAIN_REWARD, height, 0, 0.001, synced=True)
        clock.now += 0.25
    s = scrape(metrics)
    assert value(s, "blyan_sync_target_height", chain="reward") == 50
    assert value(s, "blyan_sync_blocks_per_second", chain="reward") == 20 / SYNC_RATE_WINDOW_S
    assert value(s, "blyan_sync_blocks_per_second", chain="dataset") == 0
    clock.now += SYNC_RATE_WINDOW_S
    assert value(scrape(metrics), "blyan_sync_blocks_per_second", chain="reward") == 0
    assert value(scrape(metrics), "blyan_blocks_synced_total", chain="reward") == 20


def test_network_counters_from_a_snapshot() -> None:
    stats = NetStats(
        topics={"votes": TopicStats(messages_in=5, messages_out=7, accepted=3, ignored=1, rejected=1,
                                    bytes_in=50, bytes_out=70)},
        requests={"blocks": RequestStats(served=4, failed=1, timed_out=2, sent=3, send_failed=2,
                                         send_timed_out=1)},
    )
    s = scrape(NodeMetrics(net_stats=lambda: stats, peers=lambda: 3))
    assert value(s, "blyan_gossip_messages_total", topic="votes", direction="in") == 5
    assert value(s, "blyan_gossip_messages_total", topic="votes", direction="out") == 7
    assert value(s, "blyan_gossip_bytes_total", topic="votes", direction="out") == 70
    assert value(s, "blyan_gossip_verdicts_total", topic="votes", verdict="reject") == 1
    assert value(s, "blyan_requests_served_total", protocol="blocks", outcome="timeout") == 2
    assert value(s, "blyan_requests_sent_total", protocol="blocks", outcome="failed") == 2
    assert value(s, "blyan_peers") == 3


def test_no_network_counters_without_a_source() -> None:
    assert not any(name.startswith("blyan_gossip") for name, _ in scrape(NodeMetrics()))


def test_libp2p_expected_events_by_kind() -> None:
    counts = {"dial_failed": 2, "stream_reset": 0}
    s = scrape(NodeMetrics(libp2p_events=lambda: counts))
    assert value(s, "blyan_libp2p_expected_events_total", kind="dial_failed") == 2
    assert value(s, "blyan_libp2p_expected_events_total", kind="stream_reset") == 0
    counts["stream_reset"] = 5  # read at each scrape
    assert value(scrape(NodeMetrics(libp2p_events=lambda: counts)), "blyan_libp2p_expected_events_total",
                 kind="stream_reset") == 5
    assert not any(name.startswith("blyan_libp2p") for name, _ in scrape(NodeMetrics()))


async def test_counters_move_when_messages_flow_between_two_nodes() -> None:
    topic, echo = topic_name("testnet", "votes"), protocol_name("testnet", "echo")

    async def answer(requester: str, data: bytes) -> bytes:
        return data

    async with Libp2pNetwork.open(Libp2pConfig.for_tests(bytes([1]) * 32)) as a:
        config = Libp2pConfig.for_tests(bytes([2]) * 32, tuple(a.listen_addrs()))
        async with Libp2pNetwork.open(config) as b:
            verdicts = [Verdict.ACCEPT, Verdict.ACCEPT, Verdict.REJECT]
            done = trio.Event()

            async def judge(sender: str, data: bytes) -> Verdict:
                if len(verdicts) == 1:
                    done.set()
                return verdicts.pop(0)

            async def ignore(sender: str, data: bytes) -> Verdict:
                return Verdict.IGNORE

            a.subscribe(topic, judge)
            b.subscribe(topic, ignore)
            a.set_request_handler(echo, answer, max_request_bytes=64)
            metrics_a = NodeMetrics(peers=lambda: len(a.peers()), net_stats=a.stats)
            metrics_b = NodeMetrics(peers=lambda: len(b.peers()), net_stats=b.stats)
            with trio.fail_after(WAIT):
                while b.local_id not in a.peers():
                    await trio.sleep(0.01)
            assert await b.wait_for_mesh(topic, [a.local_id], WAIT)
            assert await a.wait_for_mesh(topic, [b.local_id], WAIT)
            for data in (b"a" * 10, b"b" * 10, b"c" * 10):
                await b.publish(topic, data)
            for _ in range(2):
                assert await b.request(a.local_id, echo, b"ping", timeout=WAIT) == b"ping"
            with trio.fail_after(WAIT):
                await done.wait()
            sa, sb = scrape(metrics_a), scrape(metrics_b)
    assert value(sa, "blyan_gossip_messages_total", topic="votes", direction="in") == 3
    assert value(sa, "blyan_gossip_bytes_total", topic="votes", direction="in") == 30
    assert value(sa, "blyan_gossip_verdicts_total", topic="votes", verdict="accept") == 2
    assert value(sa, "blyan_gossip_verdicts_total", topic="votes", verdict="reject") == 1
    assert value(sb, "blyan_gossip_messages_total", topic="votes", direction="out") == 3
    assert value(sb, "blyan_gossip_bytes_total", topic="votes", direction="out") == 30
    assert value(sa, "blyan_requests_served_total", protocol="echo", outcome="ok") == 2
    assert value(sb, "blyan_requests_sent_total", protocol="echo", outcome="ok") == 2
    assert value(sb, "blyan_request_streams_opened_total", protocol="echo") == 1  # persistent
    assert value(sa, "blyan_peers") == 1
