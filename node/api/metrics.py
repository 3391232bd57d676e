"""Prometheus metrics of a node, rendered as text at /metrics: one subscriber of the commit feed.

What the engine reports on its feed (commits and block imports, rounds, signed votes, penalties)
is counted as it arrives (`follow`, a task of the daemon; a scrape first takes what is still
queued); what other parts own (peers, the network's gossip and request counters, sync targets,
the feed's own subscribers, the expected libp2p events its log router counted) is read at scrape
time from the callables the daemon hands in.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from chain.types import CHAIN_IDS, CHAIN_NAMES
from node.core.feed import (
    Committed,
    Event,
    Feed,
    Penalized,
    PolVerified,
    RoundStarted,
    Subscription,
    VoteSigned,
)
from p2p.net_stats import NetStats

IMPORT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Histogram buckets of block import time, seconds (an empty block: ~1 ms; 200 txs: ~40 ms)."""
POL_BUCKETS_S = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
"""Histogram buckets of a PoL verification, seconds (the devnet's 320-step bundle: ~15 s)."""

SYNC_RATE_WINDOW_S = 10.0
"""Synced blocks per second are averaged over this many seconds of the recent past."""

SyncProgress = Callable[[], dict[str, dict[str, int]]]
"""`SyncService.sync_progress`: per chain name, our height and the highest height peers reported."""
Libp2pEvents = Callable[[], Mapping[str, int]]
"""`Libp2pLogRouter.get_counts`: expected libp2p events (demoted log records) per kind."""
FEED_QUEUE = 8192
"""Events waiting for the metrics task; beyond, they are dropped and counted."""


class NodeMetrics:
    """Heights, peers, rounds, commits, penalties, block imports, sync and network traffic.

    `peers`, `net_stats` (a network's `stats`, when it has one), `sync_progress` (the
    engine's) and `libp2p_events` (the daemon's libp2p log router's counts) are read at each
    scrape; `clock` is a monotonic clock for the sync rate."""

    def __init__(
        self,
        peers: Callable[[], int] | None = None,
        net_stats: Callable[[], NetStats] | None = None,
        sync_progress: SyncProgress | None = None,
        clock: Callable[[], float] = time.monotonic,
        libp2p_events: Libp2pEvents | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.height = Gauge("blyan_chain_height", "Finalized height.", ["chain"], registry=r)
        self.commits = Counter("blyan_blocks_committed_total", "Blocks finalized and stored.", ["chain"], registry=r)
        self.txs = Counter("blyan_transactions_committed_total", "Transactions in finalized blocks.", ["chain"],
                           registry=r)
        self.rounds = Counter("blyan_consensus_rounds_total", "Consensus rounds entered.", ["chain"], registry=r)
        self.late_rounds = Counter(
            "blyan_consensus_round_changes_total",
            "Rounds entered above round 0 of a height: each follows a round timeout (or a jump to "
            "a round peers have reached).", ["chain"], registry=r)
        self.round = Gauge("blyan_consensus_round", "Round of the height being decided.", ["chain"], registry=r)
        self.penalties = Counter("blyan_peer_penalties_total", "Penalties given to misbehaving peers.", registry=r)
        self.votes = Counter("blyan_votes_signed_total", "Votes this node signed.", registry=r)
        self.last_commit = Gauge("blyan_last_commit_timestamp_seconds", "When a block was last finalized.",
                                 ["chain"], registry=r)
        self.peers = Gauge("blyan_peers", "Connected peers.", registry=r)
        self.import_seconds = Histogram(
            "blyan_block_import_seconds",
            "Time to check and store one block (synced: fetched from a peer; else decided here).",
            ["chain", "synced"], buckets=IMPORT_BUCKETS_S, registry=r)
        self.synced_blocks = Counter("blyan_blocks_synced_total", "Blocks imported from peers by sync.",
                                     ["chain"], registry=r)
        self.pol_votes = Counter("blyan_pol_votes_signed_total", "PoL votes this validator computed and signed, "
                                 "by verdict.", ["verdict"], registry=r)
        self.pol_seconds = Histogram("blyan_pol_verify_seconds", "Fetching and verifying one revealed claim.",
                                     buckets=POL_BUCKETS_S, registry=r)
        self.pol_outcomes = Counter("blyan_pol_claims_decided_total", "Claims decided on the parameter chain, "
                                    "by how (certified, rejected).", ["outcome"], registry=r)
        self.pol_state: Callable[[], dict] | None = None
        """The PoL service's `describe()` (queue length, refusals), read at each scrape."""
        self._peer_count = peers
        self.net_stats = net_stats
        self.sync_progress = sync_progress
        self.libp2p_events = libp2p_events
        self._clock = clock
        self._synced_at: dict[int, deque[float]] = {c: deque() for c in CHAIN_IDS}
        self.feed: Feed | None = None
        self._sub: Subscription | None = None
        r.register(_ScrapeTimeCollector(self))

    # --- the feed -------------------------------------------------------------------------------

    def subscribe(self, feed: Feed) -> Subscription:
        """Count what `feed` reports from now on (and its subscribers' lag at each scrape)."""
        self.feed = feed
        self._sub = feed.subscribe("metrics", (Committed, RoundStarted, VoteSigned, Penalized, PolVerified),
                                   FEED_QUEUE)
        return self._sub

    async def follow(self) -> None:
        """Count the feed's events as they arrive (a task of the daemon), until cancelled."""
        if self._sub is not None:
            async for event in self._sub:
                self.on_event(event)

    def on_event(self, event: Event) -> None:
        if isinstance(event, Committed):
            self.on_commit(event.chain_id, event.block.header.height, len(event.block.txs))
            for tx in event.block.txs:
                name = type(tx.body.payload).__name__
                if name in ("CertifyDelta", "RejectDelta"):
                    self.pol_outcomes.labels("certified" if name == "CertifyDelta" else "rejected").inc()
            self.on_block_imported(event.chain_id, event.block.header.height, len(event.block.txs),
                                   event.seconds, event.synced)
        elif isinstance(event, RoundStarted):
            self.on_round(event.chain_id, event.height, event.round)
        elif isinstance(event, VoteSigned):
            self.votes.inc()
        elif isinstance(event, Penalized):
            self.penalties.inc()
        elif isinstance(event, PolVerified):
            self.pol_votes.labels("accept" if event.accepted else "reject").inc()
            self.pol_seconds.observe(event.seconds)

    # --- counting -------------------------------------------------------------------------------

    def on_commit(self, chain_id: int, height: int, n_txs: int) -> None:
        chain = CHAIN_NAMES[chain_id]
        self.height.labels(chain).set(height)
        self.commits.labels(chain).inc()
        self.txs.labels(chain).inc(n_txs)
        self.last_commit.labels(chain).set(time.time())

    def on_round(self, chain_id: int, height: int, round: int) -> None:
        self.rounds.labels(CHAIN_NAMES[chain_id]).inc()
        self.round.labels(CHAIN_NAMES[chain_id]).set(round)
        if round > 0:
            self.late_rounds.labels(CHAIN_NAMES[chain_id]).inc()

    def on_block_imported(self, chain_id: int, height: int, n_txs: int, seconds: float, synced: bool) -> None:
        """A block was checked and stored in `seconds` (`synced`: fetched from a peer)."""
        chain = CHAIN_NAMES[chain_id]
        self.import_seconds.labels(chain, "true" if synced else "false").observe(seconds)
        if synced:
            self.synced_blocks.labels(chain).inc()
            now = self._clock()
            times = self._synced_at[chain_id]
            times.append(now)
            self._forget_before(times, now - SYNC_RATE_WINDOW_S)

    # --- read at scrape time --------------------------------------------------------------------

    def set_heights(self, heights: dict[int, int]) -> None:
        for chain_id, h in heights.items():
            self.height.labels(CHAIN_NAMES[chain_id]).set(h)

    def get_sync_rates(self) -> dict[int, float]:
        """Blocks per second imported by sync over the last `SYNC_RATE_WINDOW_S`, per chain."""
        since = self._clock() - SYNC_RATE_WINDOW_S
        rates = {}
        for chain_id, times in self._synced_at.items():
            self._forget_before(times, since)
            rates[chain_id] = len(times) / SYNC_RATE_WINDOW_S
        return rates

    @staticmethod
    def _forget_before(times: deque[float], since: float) -> None:
        while times and times[0] < since:
            times.popleft()

    def render(self) -> bytes:
        if self._sub is not None:
            for event in self._sub.drain():  # what the task has not counted yet
                self.on_event(event)
        if self._peer_count is not None:
            self.peers.set(self._peer_count())
        return generate_latest(self.registry)


class _ScrapeTimeCollector:
    """The families whose values other parts own: network counters and sync progress."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        if m.net_stats is not None:
            yield from _net_families(m.net_stats())
        rate = GaugeMetricFamily("blyan_sync_blocks_per_second",
                                 f"Blocks imported by sync per second, over the last {SYNC_RATE_WINDOW_S:g} s.",
                                 labels=["chain"])
        for chain_id, value in sorted(m.get_sync_rates().items()):
            rate.add_metric([CHAIN_NAMES[chain_id]], value)
        yield rate
        target = GaugeMetricFamily("blyan_sync_target_height",
                                   "Highest finalized height a peer reported (at least ours).",
                                   labels=["chain"])
        for chain, progress in sorted((m.sync_progress() if m.sync_progress else {}).items()):
            target.add_metric([chain], progress["target"])
        yield target
        if m.feed is not None:
            dropped = CounterMetricFamily("blyan_feed_dropped_events", "Feed events a subscriber lost because "
                                          "its queue was full (it lags; consensus never waits).",
                                          labels=["subscriber"])
            for sub in m.feed.subscriptions():
                dropped.add_metric([sub.name], sub.dropped)
            yield dropped
        if m.pol_state is not None:
            state = m.pol_state()
            queue = GaugeMetricFamily("blyan_pol_queue", "Revealed claims waiting for this validator's verifier.")
            queue.add_metric([], state["queue"])
            yield queue
            refused = CounterMetricFamily("blyan_pol_refused", "Claims not verified here because the PoL queue "
                                          "was full.")
            refused.add_metric([], state["refused_queue_full"])
            yield refused
        if m.libp2p_events is not None:
            expected = CounterMetricFamily("blyan_libp2p_expected_events", "Expected network events py-libp2p "
                                           "logged as errors (failed dials, closed or reset streams...), logged "
                                           "here at DEBUG instead, by kind.", labels=["kind"])
            for kind, value in sorted(m.libp2p_events().items()):
                expected.add_metric([kind], value)
            yield expected


def _net_families(stats: NetStats) -> Iterator[Metric]:
    messages = CounterMetricFamily("blyan_gossip_messages", "Gossip message copies received from / "
                                   "written to peers, duplicates and relays included.",
                                   labels=["topic", "direction"])
    size = CounterMetricFamily("blyan_gossip_bytes", "Payload bytes of those gossip copies.",
                               labels=["topic", "direction"])
    verdicts = CounterMetricFamily("blyan_gossip_verdicts", "Gossip messages judged by this node "
                                   "(reject: invalid or oversized, the sender penalised).",
                                   labels=["topic", "verdict"])
    for topic, t in stats.topics.items():
        messages.add_metric([topic, "in"], t.messages_in)
        messages.add_metric([topic, "out"], t.messages_out)
        size.add_metric([topic, "in"], t.bytes_in)
        size.add_metric([topic, "out"], t.bytes_out)
        for verdict, value in (("accept", t.accepted), ("ignore", t.ignored), ("reject", t.rejected)):
            verdicts.add_metric([topic, verdict], value)
    served = CounterMetricFamily("blyan_requests_served", "Requests from peers, by outcome.",
                                 labels=["protocol", "outcome"])
    sent = CounterMetricFamily("blyan_requests_sent", "Requests to peers, by outcome.",
                               labels=["protocol", "outcome"])
    streams = CounterMetricFamily("blyan_request_streams_opened", "Streams opened for requests "
                                  "to peers (per request, or one per persistent stream).",
                                  labels=["protocol"])
    for protocol, q in stats.requests.items():
        streams.add_metric([protocol], q.streams_opened)
        for outcome, value in (("ok", q.served), ("failed", q.failed), ("timeout", q.timed_out)):
            served.add_metric([protocol, outcome], value)
        for outcome, value in (("ok", q.sent), ("failed", q.send_failed), ("timeout", q.send_timed_out)):
            sent.add_metric([protocol, outcome], value)
    mesh = GaugeMetricFamily("blyan_gossip_mesh_peers", "Peers in this node's gossip mesh, per "
                             "subscribed topic (0: its messages leave only by IHAVE gossip).",
                             labels=["topic"])
    for topic, peers in sorted(stats.mesh.items()):
        mesh.add_metric([topic], peers)
    known = GaugeMetricFamily("blyan_peers_known", "Peers in the address book (discovery).")
    known.add_metric([], stats.known_peers)
    yield from (messages, size, verdicts, served, sent, streams, mesh, known)
