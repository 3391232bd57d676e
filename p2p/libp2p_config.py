"""Operator settings of the libp2p host (`Libp2pConfig`) and the parsing of its addresses."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from multiaddr import Multiaddr

from chain.errors import ConfigError
from p2p.network import ScoreConfig

MIN_TARGET_PEERS = 2
"""Floor of `target_peers`."""


@dataclass(frozen=True, slots=True)
class Libp2pConfig:
    """Operator settings of the libp2p host (protocol constants come from genesis)."""

    seed: bytes
    """32-byte Ed25519 seed: the node key, hence the peer id."""
    listen: str = "/ip4/127.0.0.1/tcp/0"
    """TCP multiaddr to listen on (port 0: any free port; see `listen_addrs()`)."""
    bootstrap: tuple[str, ...] = ()
    """Full multiaddrs (`.../tcp/<port>/p2p/<peer id>`) dialled at start and while disconnected."""
    handshake_timeout: float = 10.0
    """Most seconds a new connection may take to agree on Noise and Yamux (a peer that stalls
    its handshake holds one inbound slot this long)."""
    request_timeout: float = 10.0
    """Server side: most seconds spent reading one request and running its handler. Requester
    side: most seconds to write one frame or read one response body on a persistent stream."""
    max_streams_inbound: int = 64
    """Requests served at once (both stream kinds); more are answered "overloaded"."""
    persistent_streams: bool = True
    """Send requests over one long-lived stream per (peer, protocol), falling back to a stream
    per request for peers without it; and serve such streams. False: per-request streams only
    (as a node before persistent streams)."""
    max_pending_per_stream: int = 32
    """Requests in flight on one persistent stream, those whose caller gave up and whose answer
    is still to come included (more wait for a slot)."""
    stream_idle_s: float = 30.0
    """A persistent stream with nothing in flight for this long is closed by its requester
    (its server closes it after twice this)."""
    dial_timeout: float = 5.0
    """Most seconds one dial may take (a request's own deadline may cut it shorter)."""
    redial_interval_s: float = 5.0
    """Seconds between attempts to re-dial a disconnected bootstrap peer."""
    maintenance_interval_s: float = 1.0
    """Seconds between sweeps for dead connections and stale peer state."""
    shutdown_timeout: float = 5.0
    """Most seconds a clean shutdown (unsubscribe, disconnect) may take."""
    gossip_degree: int = 6
    """GossipSub D: mesh peers per topic (D_low, D_high below)."""
    gossip_degree_low: int = 4
    gossip_degree_high: int = 12
    gossip_heartbeat_s: float = 1.0
    """GossipSub heartbeat (0.8.1 defaults to 120 s: meshes would repair once in two minutes)."""
    gossip_queue_size: int = 4096
    """Outbound RPCs queued per peer before pubsub drops (0.8.1 default: 32)."""
    gossip_handler_timeout: float = 10.0
    """Longest a gossip handler may run; a message whose handler overruns is dropped."""
    gossip_max_concurrent_handlers: int = 64
    """Gossip handler calls in flight at once (further messages wait)."""
    gossip_seen_ttl_s: int = 120
    """Seconds a message id is remembered, so that a message is handled once."""
    score: ScoreConfig = ScoreConfig()
    """Penalty decay and ban threshold."""
    target_peers: int = 8
    """Connections discovery keeps (dialling peers it learned by peer exchange while below);
    at least `MIN_TARGET_PEERS`."""
    max_peers: int = 40
    """Connections above which the newest inbound peers are hung up on."""
    pex_interval_s: float = 30.0
    """Seconds between routine peer exchanges (more often while below `target_peers`)."""
    pex_protocol: str = "/blyan/pex/1"
    """Request protocol of peer exchange (the daemon namespaces it by network id)."""
    peers_file: Path | None = None
    """Where the address book is kept across restarts (None: not kept)."""
    external_addrs: tuple[str, ...] = ()
    """TCP multiaddrs (no `/p2p/`) advertised to peers besides the listen address, for a node
    behind NAT or listening on 0.0.0.0."""

    def __post_init__(self) -> None:
        if not isinstance(self.seed, bytes) or len(self.seed) != 32:
            raise ConfigError("libp2p seed must be 32 bytes")
        listen = parse_multiaddr("listen", self.listen)
        if "tcp" not in {p.name for p in listen.protocols()}:
            raise ConfigError(f"listen address {self.listen!r} is not TCP")
        for addr in self.bootstrap:
            parse_peer_addr("bootstrap", addr)
        for name in (
            "handshake_timeout", "request_timeout", "dial_timeout", "redial_interval_s",
            "maintenance_interval_s", "pex_interval_s", "stream_idle_s",
            "shutdown_timeout", "gossip_heartbeat_s", "gossip_handler_timeout",
        ):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be positive and finite, got {value}")
        for name in (
            "max_streams_inbound", "max_pending_per_stream", "gossip_degree", "gossip_queue_size",
            "gossip_max_concurrent_handlers", "gossip_seen_ttl_s",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.gossip_degree_low <= self.gossip_degree <= self.gossip_degree_high:
            raise ConfigError("gossip degrees must satisfy 0 < low <= degree <= high")
        if self.target_peers < MIN_TARGET_PEERS:
            raise ConfigError(
                f"target_peers must be >= {MIN_TARGET_PEERS} (one peer is a single point of "
                f"failure), got {self.target_peers}"
            )
        if self.max_peers < self.target_peers:
            raise ConfigError(
                f"max_peers ({self.max_peers}) must be >= target_peers ({self.target_peers})"
            )
        for addr in self.external_addrs:
            parsed = parse_multiaddr("external", addr)
            names = [p.name for p in parsed.protocols()]
            if "tcp" not in names or "p2p" in names:
                raise ConfigError(f"external address {addr!r} must be TCP, without /p2p/")

    @classmethod
    def for_tests(
        cls, seed: bytes, bootstrap: tuple[str, ...] = (), **overrides: object
    ) -> Libp2pConfig:
        """Loopback, any free port, short timeouts."""
        settings: dict[str, object] = dict(
            handshake_timeout=2.0, request_timeout=5.0, dial_timeout=2.0, redial_interval_s=0.5,
            maintenance_interval_s=0.2, shutdown_timeout=3.0,
        )
        settings.update(overrides)
        settings.setdefault("listen", "/ip4/127.0.0.1/tcp/0")
        return cls(seed=seed, bootstrap=bootstrap, **settings)  # type: ignore[arg-type]


def parse_multiaddr(what: str, text: str) -> Multiaddr:
    try:
        return Multiaddr(text)
    except Exception as err:
        raise ConfigError(f"{what} address {text!r} is not a multiaddr: {err}") from err


def parse_peer_addr(what: str, text: str) -> PeerInfo:
    try:
        return info_from_p2p_addr(parse_multiaddr(what, text))
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"{what} address {text!r} has no valid /p2p/<peer id>: {err}") from err
