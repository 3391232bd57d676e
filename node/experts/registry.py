"""The expert registry: who serves which expert, how fast and how busy. Pure: `now` is passed in.

Entries come from signed announcements (`node.experts.wire`) and expire unless renewed. Each
node also carries what this node measured of it: a moving average of request latency, and a
strike count for failures and wrong answers (a struck node sinks in the ranking, and is
skipped entirely for a while after repeated faults). `find_nodes` ranks the candidates for an
expert at a given block hash: lowest expected cost first, ties by peer id, so that the same
inputs always give the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from node.experts.wire import ExpertAnnouncement

ExpertKey = tuple[int, int]
"""(layer, expert)."""

DEFAULT_LATENCY_S = 0.05
"""Assumed latency of a node never measured (optimistic, so new nodes get tried)."""
LATENCY_ALPHA = 0.3
"""Weight of the newest sample in the latency moving average."""
MAX_TTL_S = 300.0
"""An announcement holds at most this long, whatever it claims."""
STRIKE_COST_S = 1.0
"""Added to a node's expected cost per strike."""
BENCH_STRIKES = 3
"""At this many strikes a node is skipped until `bench_s` passes."""


@dataclass(slots=True)
class NodeEntry:
    """What is known of one serving node."""

    node: str
    offers: dict[ExpertKey, bytes]
    tier: int
    load: int
    announced_ms: int
    expires_at: float
    latency_s: float | None = None
    strikes: int = 0
    benched_until: float = float("-inf")

    def expected_cost(self) -> float:
        """Seconds a request is expected to take, plus a price for past faults."""
        latency = DEFAULT_LATENCY_S if self.latency_s is None else self.latency_s
        return latency * (1 + self.load) + STRIKE_COST_S * self.strikes


@dataclass(slots=True)
class ExpertRegistry:
    """Serving nodes by peer id; the executor's map of the network."""

    bench_s: float = 60.0
    """How long a node with `BENCH_STRIKES` strikes is skipped."""
    nodes: dict[str, NodeEntry] = field(default_factory=dict)

    # --- updates ------------------------------------------------------------------------

    def on_announcement(self, ann: ExpertAnnouncement, now: float) -> bool:
        """Record a (validated) announcement; False when it is not newer than the one held."""
        body = ann.body
        held = self.nodes.get(body.node)
        if held is not None and body.time_ms <= held.announced_ms:
            return False
        offers = {(o.layer, o.expert): o.block_hash for o in body.offers}
        expires = now + min(body.ttl_ms / 1000, MAX_TTL_S)
        if held is None:
            self.nodes[body.node] = NodeEntry(body.node, offers, body.tier, body.load, body.time_ms, expires)
        else:
            held.offers, held.tier, held.load = offers, body.tier, body.load
            held.announced_ms, held.expires_at = body.time_ms, expires
        return True

    def record_latency(self, node: str, seconds: float) -> None:
        """A request to `node` succeeded in `seconds`: update its average, forgive one strike."""
        entry = self.nodes.get(node)
        if entry is None:
            return
        entry.latency_s = seconds if entry.latency_s is None else (
            LATENCY_ALPHA * seconds + (1 - LATENCY_ALPHA) * entry.latency_s)
        entry.strikes = max(0, entry.strikes - 1)

    def record_failure(self, node: str, now: float) -> None:
        """A request to `node` failed or its answer was wrong."""
        entry = self.nodes.get(node)
        if entry is None:
            return
        entry.strikes += 1
        if entry.strikes >= BENCH_STRIKES:
            entry.benched_until = now + self.bench_s

    def remove(self, node: str) -> None:
        self.nodes.pop(node, None)

    def expire(self, now: float) -> list[str]:
        """Drop nodes whose announcement ran out; their ids."""
        gone = [n for n, e in self.nodes.items() if e.expires_at <= now]
        for n in gone:
            del self.nodes[n]
        return gone

    # --- queries ------------------------------------------------------------------------

    def find_nodes(self, key: ExpertKey, block_hash: bytes, now: float,
                   exclude: frozenset[str] | set[str] = frozenset()) -> list[str]:
        """Nodes serving `key` at `block_hash`, best first (live, not benched, not excluded)."""
        found = [e for e in self.nodes.values()
                 if e.offers.get(key) == block_hash and e.expires_at > now
                 and e.benched_until <= now and e.node not in exclude]
        found.sort(key=lambda e: (e.expected_cost(), -e.tier, e.node))
        return [e.node for e in found]

    def find_nodes_for(self, wanted: dict[ExpertKey, bytes], now: float,
                       exclude: frozenset[str] | set[str] = frozenset()) -> dict[ExpertKey, list[str]]:
        """`find_nodes` for many experts at once."""
        return {key: self.find_nodes(key, h, now, exclude) for key, h in wanted.items()}

    def describe(self, now: float) -> list[dict]:
        """The registry as JSON-ready rows (for RPC)."""
        rows = []
        for e in sorted(self.nodes.values(), key=lambda e: e.node):
            rows.append({
                "node": e.node, "tier": e.tier, "load": e.load,
                "latency_ms": None if e.latency_s is None else round(e.latency_s * 1000, 3),
                "strikes": e.strikes, "benched": e.benched_until > now,
                "expires_in_s": round(max(0.0, e.expires_at - now), 3),
                "experts": [{"layer": layer, "expert": x, "block_hash": h.hex()}
                            for (layer, x), h in sorted(e.offers.items())],
            })
        return rows
