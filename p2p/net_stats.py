"""Traffic counters of a network: gossip per topic, requests per protocol (`NetStats`).

A network that counts offers `stats() -> NetStats`; the `Network` interface does not require it
(node metrics use it when present). Counters are keyed by the short name of a topic or protocol
(`votes` for `/blyan/<network>/votes/1`, `blocks` for `/blyan/<network>/req/blocks/1`), so their
number is bounded by what this node subscribes to and serves, never by what peers send.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["NetCounters", "NetStats", "RequestStats", "TopicStats", "compute_short_name"]


@dataclass(frozen=True, slots=True)
class TopicStats:
    """Gossip on one topic since the network started."""

    messages_in: int = 0
    """Copies received from peers, duplicates included (each handled once: see the verdicts)."""
    messages_out: int = 0
    """Copies written to peers: own publications and relays, one per receiving peer."""
    accepted: int = 0
    """Messages the handler judged ACCEPT (relayed)."""
    ignored: int = 0
    """Messages the handler judged IGNORE (dropped, no penalty)."""
    rejected: int = 0
    """Messages judged REJECT, or over the topic's size cap (dropped, sender penalised)."""
    bytes_in: int = 0
    """Payload bytes of `messages_in` (message data, not the pubsub envelope)."""
    bytes_out: int = 0
    """Payload bytes of `messages_out`."""


@dataclass(frozen=True, slots=True)
class RequestStats:
    """Requests of one protocol since the network started, both sides."""

    served: int = 0
    """Inbound requests answered with a response."""
    failed: int = 0
    """Inbound requests refused or failed (handler error, too large, overloaded, broken)."""
    timed_out: int = 0
    """Inbound requests not read or not handled within the server's time limit."""
    sent: int = 0
    """Outbound requests that got a response."""
    send_failed: int = 0
    """Outbound requests that failed (unreachable, remote error, response too large)."""
    send_timed_out: int = 0
    """Outbound requests with no response before the caller's deadline."""
    streams_opened: int = 0
    """Streams opened for outbound requests: one per request over per-request streams, one per
    persistent stream (which carries many)."""


@dataclass(frozen=True, slots=True)
class NetStats:
    """A snapshot of a network's counters (copies: later traffic does not change it)."""

    topics: dict[str, TopicStats] = field(default_factory=dict)
    """Short topic name -> its gossip counters."""
    requests: dict[str, RequestStats] = field(default_factory=dict)
    """Short protocol name -> its request counters."""
    mesh: dict[str, int] = field(default_factory=dict)
    """Short topic name -> peers in this node's gossip mesh for it (subscribed topics only)."""
    known_peers: int = 0
    """Peers in the address book (dialable, not necessarily connected)."""


def compute_short_name(name: str) -> str:
    """`votes` for `/blyan/<net>/votes/<v>`, `blocks` for `/blyan/<net>/req/blocks/<v>`; any
    other name is returned as it is."""
    parts = name.split("/")
    if len(parts) == 5 and parts[0] == "" and parts[1] == "blyan":
        return parts[3]
    if len(parts) == 6 and parts[0] == "" and parts[1] == "blyan" and parts[3] == "req":
        return parts[4]
    return name


class NetCounters:
    """The mutable counters behind `NetStats`; one owner (the network's task), no locks."""

    def __init__(self) -> None:
        self._topics: dict[str, dict[str, int]] = {}
        self._requests: dict[str, dict[str, int]] = {}

    def count_gossip(self, topic: str, field_name: str, n: int = 1, size: int = 0) -> None:
        """Add `n` to a `TopicStats` field of `topic`; `size` bytes to bytes_in / bytes_out
        when the field is messages_in / messages_out."""
        counts = self._topics.setdefault(compute_short_name(topic), {})
        counts[field_name] = counts.get(field_name, 0) + n
        if size:
            direction = "bytes_in" if field_name == "messages_in" else "bytes_out"
            counts[direction] = counts.get(direction, 0) + size

    def count_request(self, protocol: str, field_name: str) -> None:
        """Add one to a `RequestStats` field of `protocol`."""
        counts = self._requests.setdefault(compute_short_name(protocol), {})
        counts[field_name] = counts.get(field_name, 0) + 1

    def snapshot(self) -> NetStats:
        return NetStats(
            topics={t: TopicStats(**c) for t, c in sorted(self._topics.items())},
            requests={p: RequestStats(**c) for p, c in sorted(self._requests.items())},
        )
