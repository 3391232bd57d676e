"""`Network` over py-libp2p 0.8.1: TCP, Noise, Yamux, GossipSub, one stream per request.

    config = Libp2pConfig(seed=node_key_seed, listen="/ip4/0.0.0.0/tcp/4001",
                          bootstrap=("/ip4/10.0.0.2/tcp/4001/p2p/12D3Koo...",))
    async with Libp2pNetwork.open(config) as net:
        net.subscribe(topic, on_block)
        await net.publish(topic, data)
        response = await net.request(peer, protocol, data, timeout=5.0)

Semantics are those of `p2p.network` (and of `p2p.sim`, its deterministic twin):

- Gossip: each topic's handler runs as that topic's pubsub *validator*, so its verdict decides
  relaying: ACCEPT relays, IGNORE drops, REJECT drops and penalises the forwarder; messages above
  the topic's `max_bytes` are REJECTed unseen. GossipSub is tuned not to drop silently: spam
  limits and eclipse protection off, heartbeat `gossip_heartbeat_s`, large per-peer queues, RPCs
  up to `MAX_GOSSIP_BYTES`. It has no flood-publish: a message published before the mesh has
  formed reaches mesh peers only (and others through IHAVE gossip or the replay a new subscriber
  gets): `wait_for_mesh` before the first publish where that matters.
- Requests: see `p2p.libp2p_reqresp` for the wire format. Deadlines are the caller's
  (`trio.fail_after` over dial, stream and exchange); inbound load is bounded by
  `max_streams_inbound` (excess: "overloaded"); a server never spends more than
  `request_timeout` on one request.
- Peers and scores: `peers()` is the set of peers with a live connection; a peer whose score falls
  below the ban threshold is disconnected, and re-disconnected whenever it comes back, until its
  ban ends. Bootstrap peers are re-dialled every `redial_interval_s` while not connected.
- Robustness: see `p2p.libp2p_guard`; connections that died but are still listed (0.8.1 keeps
  some) are dropped before each dial and every `maintenance_interval_s`.

No exception of libp2p or trio leaves this module: failures are `NetworkError`s.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.connection_shutdown import is_expected_connection_shutdown
from multiaddr import Multiaddr

from chain.errors import ConfigError
from p2p.libp2p_guard import GuardedPubsub, PeerNotifee, get_stream_peer, guard_stream_handler
from p2p.libp2p_reqresp import FrameError, RequestServer, ServerEntry, exchange
from p2p.network import (
    DEFAULT_MAX_RESPONSE_BYTES,
    MAX_GOSSIP_BYTES,
    REJECT_PENALTY,
    GossipHandler,
    MessageTooLarge,
    NetworkError,
    PeerEventCallback,
    PeerId,
    PeerScores,
    PeerUnreachable,
    RemoteError,
    RequestHandler,
    RequestTimeout,
    ScoreConfig,
    Verdict,
)

logger = logging.getLogger(__name__)

RPC_OVERHEAD_BYTES = 64 * 1024
"""Room for a pubsub RPC's envelope (ids, signature, key, control) around a maximal message."""


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
    """Server side: most seconds spent reading one request and running its handler."""
    max_streams_inbound: int = 64
    """Requests served at once; more are answered "overloaded"."""
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

    def __post_init__(self) -> None:
        if not isinstance(self.seed, bytes) or len(self.seed) != 32:
            raise ConfigError("libp2p seed must be 32 bytes")
        listen = _parse_multiaddr("listen", self.listen)
        if "tcp" not in {p.name for p in listen.protocols()}:
            raise ConfigError(f"listen address {self.listen!r} is not TCP")
        for addr in self.bootstrap:
            _parse_peer_addr("bootstrap", addr)
        for name in (
            "handshake_timeout", "request_timeout", "dial_timeout", "redial_interval_s", "maintenance_interval_s",
            "shutdown_timeout", "gossip_heartbeat_s", "gossip_handler_timeout",
        ):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be positive and finite, got {value}")
        for name in (
            "max_streams_inbound", "gossip_degree", "gossip_queue_size",
            "gossip_max_concurrent_handlers", "gossip_seen_ttl_s",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.gossip_degree_low <= self.gossip_degree <= self.gossip_degree_high:
            raise ConfigError("gossip degrees must satisfy 0 < low <= degree <= high")

    @classmethod
    def for_tests(cls, seed: bytes, bootstrap: tuple[str, ...] = (), **overrides: object) -> Libp2pConfig:
        """Loopback, any free port, short timeouts."""
        settings: dict[str, object] = dict(
            handshake_timeout=2.0, request_timeout=5.0, dial_timeout=2.0, redial_interval_s=0.5,
            maintenance_interval_s=0.2, shutdown_timeout=3.0,
        )
        settings.update(overrides)
        settings.setdefault("listen", "/ip4/127.0.0.1/tcp/0")
        return cls(seed=seed, bootstrap=bootstrap, **settings)  # type: ignore[arg-type]


def _parse_multiaddr(what: str, text: str) -> Multiaddr:
    try:
        return Multiaddr(text)
    except Exception as err:
        raise ConfigError(f"{what} address {text!r} is not a multiaddr: {err}") from err


def _parse_peer_addr(what: str, text: str) -> PeerInfo:
    try:
        return info_from_p2p_addr(_parse_multiaddr(what, text))
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"{what} address {text!r} has no valid /p2p/<peer id>: {err}") from err


def _is_unsupported_protocol(err: BaseException) -> bool:
    """Whether a failed stream open means "the peer does not speak this protocol"."""
    seen: BaseException | None = err
    while seen is not None:
        if "protocols not supported" in str(seen) or "protocol not supported" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Libp2pNetwork:
    """One node's libp2p host as a `Network`. Build it with `Libp2pNetwork.open(config)`."""

    def __init__(self, config: Libp2pConfig) -> None:
        self.config = config
        listen = Multiaddr(config.listen)
        connections = ConnectionConfig(
            max_connections_per_peer=1,  # no 250 ms "happy eyeballs" wait per dial
            min_connections=0,  # libp2p's auto-connector would re-dial banned peers
            low_watermark=0,
            dial_timeout=config.dial_timeout,
            inbound_upgrade_timeout=config.handshake_timeout,
            outbound_upgrade_timeout=config.handshake_timeout,
        )
        self._host = new_host(
            key_pair=create_new_key_pair(config.seed),
            listen_addrs=[listen],
            connection_config=connections,
        )
        self._swarm = self._host.get_network()
        # 0.8.1 retries a failed dial 3 times with backoff (0.7 s before a refused dial fails,
        # each attempt logged as an ERROR): callers and the bootstrap loop retry on their own.
        self._swarm.retry_config = RetryConfig(max_retries=0)
        self.local_id: PeerId = str(self._host.get_id())
        self._router = GossipSub(
            protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11],
            degree=config.gossip_degree,
            degree_low=config.gossip_degree_low,
            degree_high=config.gossip_degree_high,
            heartbeat_interval=config.gossip_heartbeat_s,  # type: ignore[arg-type]
            heartbeat_initial_delay=min(0.1, config.gossip_heartbeat_s),
            spam_protection_enabled=False,  # 10 msg/s per peer per topic, own publishes too
            eclipse_protection_enabled=False,  # wants 3 distinct IPs: starves local devnets
            adaptive_gossip_enabled=False,
        )
        self._pubsub = GuardedPubsub(
            self._host,
            self._router,
            on_fault=self._on_fault,
            queue_size=config.gossip_queue_size,
            max_message_size=MAX_GOSSIP_BYTES + RPC_OVERHEAD_BYTES,
            strict_signing=True,
            seen_ttl=config.gossip_seen_ttl_s,
            max_concurrent_validator_count=config.gossip_max_concurrent_handlers,
            validation_timeout=config.gossip_handler_timeout,
        )
        # One catch-all in front of the swarm's single stream handler covers negotiation and
        # every protocol (identify, ping, meshsub, ours): nothing a peer sends can stop the host.
        self._swarm.set_stream_handler(
            guard_stream_handler(self._swarm.common_stream_handler, self._on_fault)
        )
        self._swarm.register_notifee(PeerNotifee(self._on_connected, self._on_disconnected))
        self._scores = PeerScores(config.score)
        self._server = RequestServer(
            max_inbound=config.max_streams_inbound,
            timeout=config.request_timeout,
            on_oversized=lambda peer, reason: self.penalize(peer, reason, REJECT_PENALTY),
            is_banned=self.is_banned,
        )
        self._gossip: dict[str, tuple[GossipHandler, int]] = {}
        self._callbacks: list[PeerEventCallback] = []
        self._view: set[PeerId] = set()
        self._bootstrap = [_parse_peer_addr("bootstrap", addr) for addr in config.bootstrap]
        for info in self._bootstrap:
            self._host.get_peerstore().add_addrs(info.peer_id, info.addrs, 0)  # 0: permanent
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        self._closing = False

    # --- lifecycle ----------------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(cls, config: Libp2pConfig) -> AsyncIterator[Libp2pNetwork]:
        """Start the host, dial the bootstrap peers once, yield; on exit unsubscribe, disconnect
        and stop. Raises `NetworkError` if the host cannot start or fails while running."""
        net = cls(config)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(net._serve)
                try:
                    yield net
                finally:
                    net._stop.set()
        except BaseExceptionGroup as group:
            raise _sole_exception(group) from None

    async def _serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the host until `_stop` is set, then shut down cleanly."""
        try:
            async with (
                self._host.run(listen_addrs=[Multiaddr(self.config.listen)]),
                background_trio_service(self._pubsub),
                background_trio_service(self._router),
                trio.open_nursery() as nursery,
            ):
                self._nursery = nursery
                # libp2p's auto-connector dials every peer in the peerstore (banned ones too)
                # until it has 150 connections; dialling is this class's policy instead.
                await self._swarm.auto_connector.stop()
                await self._pubsub.wait_until_ready()
                for topic in self._gossip:
                    nursery.start_soon(self._join, topic)
                await self._dial_bootstrap()
                nursery.start_soon(self._maintain)
                task_status.started()
                logger.info("libp2p node %s listening on %s", self.local_id, self.listen_addrs())
                await self._stop.wait()
                await self._shutdown()
                nursery.cancel_scope.cancel()
        except Exception as err:
            if self._closing and is_expected_connection_shutdown(err):
                logger.debug("libp2p host closed with hang-ups: %r", err)
                return
            raise NetworkError(f"libp2p host failed: {err!r}") from err
        finally:
            self._nursery = None
            self._closing = True
            self._view.clear()

    async def _shutdown(self) -> None:
        """Leave every topic and drop every peer before the host's own contexts close: stopping
        with pubsub streams open races libp2p's nurseries ("Nursery is closed to new arrivals")."""
        self._closing = True
        with trio.CancelScope(shield=True), trio.move_on_after(self.config.shutdown_timeout) as scope:
            for topic in list(self._pubsub.topic_ids):
                try:
                    await self._pubsub.unsubscribe(topic)
                except Exception as err:
                    logger.debug("unsubscribe from %s at shutdown failed: %r", topic, err)
            # Stop pubsub before hanging up, so it opens no stream to a peer being dropped
            # (0.8.1 logs each such failure as an ERROR); stopping twice is a no-op.
            for service in (self._router, self._pubsub):
                try:
                    await service.manager.stop()
                except Exception as err:
                    logger.debug("stopping %s at shutdown failed: %r", type(service).__name__, err)
            for peer_id in list(self._swarm.connections):
                try:
                    await self._host.disconnect(peer_id)
                except Exception as err:
                    logger.debug("disconnect from %s at shutdown failed: %r", peer_id, err)
        if scope.cancelled_caught:
            logger.warning("shutdown of %s took over %.1fs", self.local_id, self.config.shutdown_timeout)
        self._view.clear()

    def _require_nursery(self) -> trio.Nursery | None:
        return None if self._closing else self._nursery

    # --- addresses and connections -------------------------------------------------------------

    def listen_addrs(self) -> list[str]:
        """This node's addresses, each ending in `/p2p/<local_id>` (empty before start)."""
        suffix = f"/p2p/{self.local_id}"
        addrs = [str(addr) for addr in self._host.get_addrs()]
        return [addr if addr.endswith(suffix) else addr + suffix for addr in addrs]

    async def connect(self, addr: str, timeout: float | None = None) -> PeerId:
        """Dial a full multiaddr (`.../p2p/<peer id>`); returns the peer id.

        Raises `PeerUnreachable` (bad address, banned peer, dial failure or timeout)."""
        try:
            info = _parse_peer_addr("peer", addr)
        except ConfigError as err:
            raise PeerUnreachable(addr, "connect", str(err)) from err
        peer = str(info.peer_id)
        self._host.get_peerstore().add_addrs(info.peer_id, info.addrs, 0)
        with trio.move_on_after(timeout or self.config.dial_timeout):
            await self._dial(info.peer_id, peer, "connect")
            return peer
        raise PeerUnreachable(peer, "connect", "dial timed out")

    async def disconnect(self, peer: PeerId) -> None:
        """Close every connection to the peer (it may dial again)."""
        try:
            await self._host.disconnect(ID.from_base58(peer))
        except Exception as err:
            raise NetworkError(f"disconnect from {peer} failed: {err!r}") from err

    def _live_connections(self, peer_id: ID) -> list[object]:
        return [
            conn
            for conn in self._swarm.get_connections(peer_id)
            if not conn.is_closed and not getattr(conn.muxed_conn, "is_closed", False)
        ]

    async def _drop_dead_connections(self, peer_id: ID) -> None:
        """Remove connections that died but are still listed: 0.8.1 opens new streams on them
        (and fails) instead of dialling again."""
        for conn in self._swarm.get_connections(peer_id):
            if not conn.is_closed and not getattr(conn.muxed_conn, "is_closed", False):
                continue
            logger.info("dropping dead connection to %s", peer_id)
            with trio.move_on_after(self.config.shutdown_timeout):
                try:
                    await conn.close()
                except Exception as err:
                    logger.debug("closing dead connection to %s failed: %r", peer_id, err)
            if conn in self._swarm.get_connections(peer_id):
                self._swarm.remove_conn(conn)  # type: ignore[arg-type]
        self._on_disconnected(str(peer_id))

    async def _dial(self, peer_id: ID, peer: PeerId, protocol: str) -> None:
        """Make sure a live connection to the peer exists, or raise `PeerUnreachable`."""
        if self.is_banned(peer):
            raise PeerUnreachable(peer, protocol, "peer is banned")
        await self._drop_dead_connections(peer_id)
        if self._live_connections(peer_id):
            return
        # 0.8.1 refuses to dial a peer for 60 s after a failed dial; our callers retry on their
        # own schedule (and a restarted peer must be reachable at once).
        failed_dials = getattr(self._swarm, "_negative_peer_cache", None)
        if failed_dials is not None:
            failed_dials.evict(str(peer_id))
        try:
            with trio.fail_after(self.config.dial_timeout):
                await self._swarm.dial_peer(peer_id)
        except trio.TooSlowError as err:
            raise PeerUnreachable(peer, protocol, "dial timed out") from err
        except Exception as err:
            raise PeerUnreachable(peer, protocol, f"dial failed: {err}") from err

    async def _dial_bootstrap(self) -> None:
        async with trio.open_nursery() as nursery:
            for info in self._bootstrap:
                peer = str(info.peer_id)
                if not self.is_banned(peer) and not self._live_connections(info.peer_id):
                    nursery.start_soon(self._dial_quietly, info.peer_id, peer)

    async def _dial_quietly(self, peer_id: ID, peer: PeerId) -> None:
        try:
            await self._dial(peer_id, peer, "bootstrap")
        except PeerUnreachable as err:
            logger.debug("bootstrap peer %s: %s", peer, err.reason)

    async def _maintain(self) -> None:
        """Sweep dead connections, keep the peer view honest, re-dial bootstrap peers."""
        next_redial = trio.current_time() + self.config.redial_interval_s
        while True:
            await trio.sleep(self.config.maintenance_interval_s)
            for peer_id in list(self._swarm.connections):
                await self._drop_dead_connections(peer_id)
                if self.is_banned(str(peer_id)):
                    await self._disconnect_quietly(str(peer_id))
            for peer in list(self._view):
                self._on_disconnected(peer)  # a no-op while the peer has a live connection
            if trio.current_time() >= next_redial:
                next_redial = trio.current_time() + self.config.redial_interval_s
                await self._dial_bootstrap()

    async def _disconnect_quietly(self, peer: PeerId) -> None:
        with trio.move_on_after(self.config.shutdown_timeout):
            try:
                await self._host.disconnect(ID.from_base58(peer))
            except Exception as err:
                logger.debug("disconnect from %s failed: %r", peer, err)
        self._on_disconnected(peer)

    # --- peers ----------------------------------------------------------------------------------

    def peers(self) -> list[PeerId]:
        return sorted(self._view)

    def on_peer_event(self, callback: PeerEventCallback) -> None:
        self._callbacks.append(callback)

    def _on_connected(self, peer: PeerId) -> None:
        if self._closing:
            return
        if self.is_banned(peer):
            logger.info("refusing banned peer %s", peer)
            nursery = self._require_nursery()
            if nursery is not None:
                nursery.start_soon(self._disconnect_quietly, peer)
            return
        if peer not in self._view:
            self._view.add(peer)
            self._notify(peer, True)

    def _on_disconnected(self, peer: PeerId) -> None:
        if peer not in self._view:
            return
        try:
            if self._live_connections(ID.from_base58(peer)):
                return
        except Exception:  # a peer id that no longer parses: treat it as gone
            pass
        self._view.discard(peer)
        if not self._closing:
            self._notify(peer, False)

    def _notify(self, peer: PeerId, connected: bool) -> None:
        logger.debug("%s: peer %s %s", self.local_id, peer, "connected" if connected else "gone")
        for callback in list(self._callbacks):
            try:
                callback(peer, connected)
            except Exception:
                logger.exception("peer event callback failed")

    # --- scores ---------------------------------------------------------------------------------

    def penalize(self, peer: PeerId, reason: str, weight: float = 1.0) -> None:
        banned = self._scores.penalize(peer, weight, trio.current_time())
        logger.debug("%s penalises %s by %.2f: %s", self.local_id, peer, weight, reason)
        if banned:
            logger.info("banning %s (score %.2f): %s", peer, self.score(peer), reason)
            nursery = self._require_nursery()
            if nursery is not None:
                nursery.start_soon(self._disconnect_quietly, peer)

    def score(self, peer: PeerId) -> float:
        return self._scores.score(peer, trio.current_time())

    def is_banned(self, peer: PeerId) -> bool:
        return self._scores.is_banned(peer, trio.current_time())

    def _on_fault(self, peer: PeerId, reason: str) -> None:
        self.penalize(peer, reason, REJECT_PENALTY)

    # --- gossip ---------------------------------------------------------------------------------

    async def publish(self, topic: str, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if len(data) > MAX_GOSSIP_BYTES:
            raise MessageTooLarge(len(data), MAX_GOSSIP_BYTES)
        if self._require_nursery() is None:
            logger.debug("publish on %s while stopped: dropped", topic)
            return
        try:
            await self._pubsub.publish(topic, bytes(data))
        except Exception as err:
            raise NetworkError(f"publish on {topic} failed: {err!r}") from err

    def subscribe(
        self, topic: str, handler: GossipHandler, max_bytes: int = MAX_GOSSIP_BYTES
    ) -> None:
        if topic in self._gossip:
            raise ValueError(f"{self.local_id} already subscribes to {topic}")
        self._gossip[topic] = (handler, max_bytes)
        nursery = self._require_nursery()
        if nursery is not None:
            nursery.start_soon(self._join, topic)

    async def _join(self, topic: str) -> None:
        self._pubsub.set_topic_validator(topic, self._make_validator(topic), True)
        try:
            await self._pubsub.subscribe(topic)
        except Exception as err:
            logger.error("subscribing to %s failed: %r", topic, err)

    def _make_validator(self, topic: str):  # type: ignore[no-untyped-def]
        async def validate(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            return await self._deliver(topic, str(forwarder), msg.data)

        return validate

    async def _deliver(self, topic: str, sender: PeerId, data: bytes) -> bool:
        """Judge one message: True relays it. Runs inside pubsub's validation."""
        if sender == self.local_id:
            return True  # our own publication: relayed, never handled here
        handler, max_bytes = self._gossip[topic]
        if self.is_banned(sender):
            return False
        if len(data) > max_bytes:
            verdict = Verdict.REJECT
        else:
            try:
                verdict = await handler(sender, bytes(data))
            except Exception:
                logger.exception("gossip handler for %s failed", topic)
                verdict = Verdict.IGNORE
            if not isinstance(verdict, Verdict):
                logger.error("gossip handler for %s returned %r", topic, verdict)
                verdict = Verdict.IGNORE
        if verdict is Verdict.REJECT:
            self.penalize(sender, f"rejected gossip on {topic}", REJECT_PENALTY)
        return verdict is Verdict.ACCEPT

    async def wait_for_mesh(self, topic: str, peers: list[PeerId], timeout: float) -> bool:
        """Wait until each of `peers` will get this node's publications on `topic`: in its mesh
        when subscribed, else known as a subscriber. False if `timeout` passes first."""
        with trio.move_on_after(timeout):
            for peer in peers:
                peer_id = ID.from_base58(peer)
                if topic in self._pubsub.topic_ids:
                    await self._router.wait_for_mesh(peer_id, topic, timeout=math.inf)
                else:
                    await self._pubsub.wait_for_subscription(peer_id, topic, timeout=math.inf)
            return True
        return False

    # --- requests -------------------------------------------------------------------------------

    def set_request_handler(
        self, protocol: str, handler: RequestHandler, max_request_bytes: int
    ) -> None:
        if protocol in self._server.entries:
            raise ValueError(f"{self.local_id} already serves {protocol}")
        if max_request_bytes < 0:
            raise ValueError(f"max_request_bytes must be >= 0, got {max_request_bytes}")
        self._server.entries[protocol] = ServerEntry(handler, max_request_bytes)
        self._host.set_stream_handler(TProtocol(protocol), self._serve_stream)

    async def _serve_stream(self, stream) -> None:  # type: ignore[no-untyped-def]
        await self._server.serve(stream, get_stream_peer(stream))

    async def request(
        self,
        peer: PeerId,
        protocol: str,
        data: bytes,
        timeout: float,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> bytes:
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"request timeout must be positive and finite, got {timeout}")
        deadline = trio.current_time() + timeout
        if self._require_nursery() is None:
            await trio.sleep_until(deadline)  # as in the simulator: a dead node cannot spin
            raise PeerUnreachable(peer, protocol, "this node is down")
        try:
            with trio.fail_at(deadline):
                return await self._request(peer, protocol, bytes(data), max_response_bytes)
        except trio.TooSlowError as err:
            raise RequestTimeout(peer, protocol, f"no response within {timeout:g}s") from err

    async def _request(self, peer: PeerId, protocol: str, data: bytes, cap: int) -> bytes:
        if peer == self.local_id:
            raise PeerUnreachable(peer, protocol, "cannot request self")
        try:
            peer_id = ID.from_base58(peer)
        except Exception as err:
            raise PeerUnreachable(peer, protocol, "not a peer id") from err
        stream = await self._open_stream(peer_id, peer, protocol)
        try:
            return await exchange(stream, peer, protocol, data, cap)
        except FrameError as err:
            if self._live_connections(peer_id):
                raise RemoteError(peer, protocol, f"stream broke off: {err}") from err
            raise PeerUnreachable(peer, protocol, "connection lost") from err

    async def _open_stream(self, peer_id: ID, peer: PeerId, protocol: str):  # type: ignore[no-untyped-def]
        """A negotiated stream, dialling if needed; one retry on a fresh connection when the
        listed one cannot carry a stream."""
        failure: Exception | None = None
        for _ in range(2):
            await self._dial(peer_id, peer, protocol)
            try:
                return await self._host.new_stream(peer_id, [TProtocol(protocol)])
            except Exception as err:
                if _is_unsupported_protocol(err):
                    raise RemoteError(peer, protocol, "unsupported protocol") from err
                failure = err
            logger.info("no stream to %s on its connection (%r): reconnecting", peer, failure)
            for conn in self._swarm.get_connections(peer_id):
                with trio.move_on_after(self.config.shutdown_timeout):
                    try:
                        await conn.close()
                    except Exception as err:
                        logger.debug("closing connection to %s failed: %r", peer, err)
            await self._drop_dead_connections(peer_id)
        raise PeerUnreachable(peer, protocol, f"cannot open a stream: {failure!r}") from failure


def _sole_exception(group: BaseExceptionGroup) -> BaseException:
    """The one exception inside nested single-member groups, else the group itself."""
    while len(group.exceptions) == 1:
        inner = group.exceptions[0]
        if not isinstance(inner, BaseExceptionGroup):
            return inner
        group = inner
    return group
