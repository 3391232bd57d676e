"""Prometheus metrics of a node: an `EngineObserver` that counts, rendered as text at /metrics."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from chain.types import CHAIN_NAMES
from node.engine import EngineObserver


class NodeMetrics(EngineObserver):
    """Heights, peers, rounds, commits and penalties; the peer count is read at scrape time."""

    def __init__(self, peers: Callable[[], int] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.height = Gauge("blyan_chain_height", "Finalized height.", ["chain"], registry=r)
        self.commits = Counter("blyan_blocks_committed_total", "Blocks finalized and stored.", ["chain"], registry=r)
        self.txs = Counter("blyan_transactions_committed_total", "Transactions in finalized blocks.", ["chain"],
                           registry=r)
        self.rounds = Counter("blyan_consensus_rounds_total", "Consensus rounds entered.", ["chain"], registry=r)
        self.round = Gauge("blyan_consensus_round", "Round of the height being decided.", ["chain"], registry=r)
        self.penalties = Counter("blyan_peer_penalties_total", "Penalties given to misbehaving peers.", registry=r)
        self.votes = Counter("blyan_votes_signed_total", "Votes this node signed.", registry=r)
        self.last_commit = Gauge("blyan_last_commit_timestamp_seconds", "When a block was last finalized.",
                                 ["chain"], registry=r)
        self.peers = Gauge("blyan_peers", "Connected peers.", registry=r)
        self._peer_count = peers

    def on_commit(self, node: str, chain_id: int, block, state) -> None:  # noqa: ANN001
        chain = CHAIN_NAMES[chain_id]
        self.height.labels(chain).set(block.header.height)
        self.commits.labels(chain).inc()
        self.txs.labels(chain).inc(len(block.txs))
        self.last_commit.labels(chain).set(time.time())

    def on_round(self, node: str, chain_id: int, height: int, round: int) -> None:
        self.rounds.labels(CHAIN_NAMES[chain_id]).inc()
        self.round.labels(CHAIN_NAMES[chain_id]).set(round)

    def on_penalty(self, node: str, peer: str, reason: str) -> None:
        self.penalties.inc()

    def on_vote_signed(self, node: str, signed) -> None:  # noqa: ANN001
        self.votes.inc()

    def set_heights(self, heights: dict[int, int]) -> None:
        for chain_id, h in heights.items():
            self.height.labels(CHAIN_NAMES[chain_id]).set(h)

    def render(self) -> bytes:
        if self._peer_count is not None:
            self.peers.set(self._peer_count())
        return generate_latest(self.registry)
