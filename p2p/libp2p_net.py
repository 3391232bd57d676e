"""`Network` over py-libp2p 0.8.1: TCP, Noise, Yamux, GossipSub, persistent request streams.

    config = Libp2pConfig(seed=node_key_seed, listen="/ip4/0.0.0.0/tcp/4001",
                          bootstrap=("/ip4/10.0.0.2/tcp/4001/p2p/12D3Koo...",))
    async with Libp2pNetwork.open(config) as net:
        net.subscribe(topic, on_block)
        await net.publish(topic, data)
        response = await net.request(peer, protocol, data, timeout=5.0)

Semantics are those of `p2p.network` (and of `p2p.sim`, its deterministic twin):

- Gossip: each topic's handler runs as that topic's pubsub *validator*, so its verdict decides
  relaying: ACCEPT relays, IGNORE drops, REJECT drops and penalises the forwarder; a message above
  the topic's `max_bytes` is REJECTed unseen. GossipSub is tuned not to drop silently: spam
  limits and eclipse protection off, heartbeat `gossip_heartbeat_s`, large per-peer queues, RPCs
  up to `MAX_GOSSIP_BYTES`. It has no flood-publish: a message published before the mesh has
  formed reaches mesh peers only (others through IHAVE gossip, or the replay a new subscriber
  gets): `wait_for_mesh` before a first publish where that matters.
- Requests: one persistent stream per (peer, protocol) carrying many requests by id
  (`p2p.libp2p_streams`, `p2p.libp2p_channels`), else one stream per request
  (`p2p.libp2p_reqresp`) with peers that lack it. The caller's deadline (`trio.fail_at`) covers
  dial, stream negotiation and exchange; inbound load is bounded by `max_streams_inbound`
  (excess: "overloaded"); a server spends at most `request_timeout` on one request.
- Peers and scores: `peers()` holds the peers with a live connection (`p2p.libp2p_peers`); a peer
  whose score falls below the ban threshold is disconnected, and again whenever it comes back,
  until its ban ends. Bootstrap peers are re-dialled every `redial_interval_s` while away.
- Robustness: `p2p.libp2p_guard` keeps any peer's bytes from stopping the host.
- Counters: `stats()` is a `NetStats` snapshot: gossip per topic (copies in and out, verdicts,
  payload bytes) and requests per protocol (served, failed, timed out; both sides).

No exception of libp2p or trio leaves this module: failures are `NetworkError`s.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import trio
from libp2p import new_host
from libp2p.abc import INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12
from libp2p.pubsub.pb import rpc_pb2
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.connection_shutdown import is_expected_connection_shutdown
from multiaddr import Multiaddr

from p2p.libp2p_channels import ChannelPool
from p2p.libp2p_config import Libp2pConfig
from p2p.libp2p_discovery import Discovery, DiscoveryConfig, bootstrap_entries
from p2p.libp2p_guard import GuardedPubsub, PeerNotifee, get_stream_peer, guard_stream_handler
from p2p.libp2p_peers import PeerConnections
from p2p.libp2p_reqresp import (
    FrameError,
    RequestServer,
    ServerEntry,
    UnsupportedProtocol,
    exchange,
)
from p2p.libp2p_router import MeshRouter, install_record_memo
from p2p.libp2p_streams import StreamServer, compute_stream_protocol
from p2p.net_stats import NetCounters, NetStats, compute_short_name
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
    Verdict,
    validate_handler_timeout,
)
from p2p.peer_book import BookConfig

__all__ = ["Libp2pConfig", "Libp2pNetwork"]

logger = logging.getLogger(__name__)

RPC_OVERHEAD_BYTES = 64 * 1024
"""Room for a pubsub RPC's envelope (ids, signature, key, peer record) around a maximal message."""

_VERDICT_COUNTERS = {Verdict.ACCEPT: "accepted", Verdict.IGNORE: "ignored", Verdict.REJECT: "rejected"}


class Libp2pNetwork:
    """One node's libp2p host as a `Network`. Build it with `Libp2pNetwork.open(config)`."""

    def __init__(self, config: Libp2pConfig) -> None:
        self.config = config
        self._host = new_host(
            key_pair=create_new_key_pair(config.seed),
            listen_addrs=[Multiaddr(config.listen)],
            connection_config=ConnectionConfig(
                max_connections_per_peer=1,  # no 250 ms "happy eyeballs" wait per dial
                min_connections=0,
                low_watermark=0,
                dial_timeout=config.dial_timeout,
                inbound_upgrade_timeout=config.handshake_timeout,
                outbound_upgrade_timeout=config.handshake_timeout,
            ),
        )
        self.local_id: PeerId = str(self._host.get_id())
        self._swarm = self._host.get_network()
        # 0.8.1 retries a failed dial 3 times with backoff (a refused dial takes 0.7 s to fail,
        # each attempt logged as an ERROR): callers and the bootstrap loop retry on their own.
        self._swarm.retry_config = RetryConfig(max_retries=0)
        self._scores = PeerScores(config.score)
        self._counters = NetCounters()
        self._peers = PeerConnections(self._host, config, self.is_banned)
        install_record_memo()
        self._router = MeshRouter(
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
            counters=self._counters,
        )
        # One catch-all in front of the swarm's single stream handler covers negotiation and
        # every protocol (identify, ping, meshsub, ours): nothing a peer sends can stop the host.
        self._swarm.set_stream_handler(
            guard_stream_handler(self._swarm.common_stream_handler, self._on_fault)
        )
        self._swarm.register_notifee(
            PeerNotifee(self._peers.on_connected, self._peers.on_disconnected)
        )
        self._server = RequestServer(
            max_inbound=config.max_streams_inbound,
            timeout=config.request_timeout,
            on_oversized=self._on_fault,
            is_banned=self.is_banned,
            on_outcome=self._counters.count_request,
        )
        self._stream_server = StreamServer(
            self._server,
            # twice a requester's bound (its requests in flight and those it gave up on, their
            # answers still to come, together): the server never stops reading an honest stream
            max_pending=2 * config.max_pending_per_stream,
            max_peers=config.max_peers,  # each with one stream per protocol, and spares
            idle_s=2 * config.stream_idle_s,  # the requester closes first; this frees leftovers
        )
        self._pool = ChannelPool(
            open_stream=self._open_stream,
            is_connected=lambda peer_id: bool(self._peers.live_connections(peer_id)),
            on_violation=self._on_fault,
            on_opened=lambda protocol: self._counters.count_request(protocol, "streams_opened"),
            max_pending=config.max_pending_per_stream,
            idle_s=config.stream_idle_s,
            timeout=config.request_timeout,
        )
        self._peers.callbacks.append(self._on_peer_event)
        self._gossip: dict[str, tuple[GossipHandler, int]] = {}
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        self.discovery = Discovery(
            self,
            DiscoveryConfig(
                protocol=config.pex_protocol,
                target_peers=config.target_peers,
                max_peers=config.max_peers,
                interval_s=config.maintenance_interval_s,
                pex_interval_s=config.pex_interval_s,
                request_timeout_s=config.request_timeout,
                dial_timeout_s=config.dial_timeout,
                peers_file=config.peers_file,
                advertise=config.external_addrs,
                book=BookConfig(
                    base_backoff_s=min(1.0, config.redial_interval_s),
                    max_config_backoff_s=config.redial_interval_s,
                ),
            ),
            bootstrap_entries(
                [(str(info.peer_id), [str(a) for a in info.addrs]) for info in self._peers.bootstrap]
            ),
        )

    # --- lifecycle ----------------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(cls, config: Libp2pConfig) -> AsyncIterator[Libp2pNetwork]:
        """Start the host, dial the bootstrap peers once, yield; on exit leave every topic,
        drop every peer and stop. Raises `NetworkError` if the host fails to start or to run."""
        net = cls(config)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(net._serve)
                try:
                    yield net
                finally:
                    net._stop.set()
        except BaseExceptionGroup as group:
            error = _sole_exception(group)
            raise error from error.__cause__  # unwrapped from our nursery's group, cause kept

    async def _serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the host until `_stop` is set, then shut down cleanly."""
        closing = False
        listen = Multiaddr(self.config.listen)
        _check_port_free(listen)
        try:
            async with (
                self._host.run(listen_addrs=[listen]),
                background_trio_service(self._pubsub),
                background_trio_service(self._router),
                trio.open_nursery() as nursery,
            ):
                # libp2p's auto-connector dials every peer in the peerstore, banned ones too,
                # until it has 150 connections: dialling is `PeerConnections`' policy instead.
                await self._swarm.auto_connector.stop()
                if not self._swarm.listeners:  # 0.8.1 logs a failed listen and runs on
                    raise NetworkError(f"cannot listen on {self.config.listen}")
                self._nursery = self._peers.nursery = self._pool.nursery = nursery
                await self._pubsub.wait_until_ready()
                self.discovery.load(trio.current_time())
                await self._peers.dial_bootstrap()
                nursery.start_soon(self._peers.maintain)
                nursery.start_soon(self.discovery.run)
                task_status.started()
                logger.info("libp2p node %s listening on %s", self.local_id, self.listen_addrs())
                try:
                    await self._stop.wait()
                finally:  # also when cancelled from outside: the shutdown is shielded
                    closing = True
                    await self._shutdown()
                    nursery.cancel_scope.cancel()
        except NetworkError:
            raise
        except Exception as err:
            if closing and is_expected_connection_shutdown(err):
                logger.debug("libp2p host closed with hang-ups: %r", err)
                return
            raise NetworkError(f"libp2p host failed: {err!r}") from err
        finally:
            self._nursery = None
            self._peers.stop()

    async def _shutdown(self) -> None:
        """Leave every topic and drop every peer before the host's own contexts close: stopping
        with pubsub streams open races libp2p's nurseries ("Nursery is closed to new arrivals")."""
        self._nursery = None
        self._peers.stop()  # no more events, dials or callbacks
        self._pool.close_all()
        limit = self.config.shutdown_timeout
        with trio.CancelScope(shield=True), trio.move_on_after(limit) as scope:
            for topic in list(self._pubsub.topic_ids):
                try:
                    await self._pubsub.unsubscribe(topic)
                except Exception as err:
                    logger.debug("unsubscribe from %s at shutdown failed: %r", topic, err)
            # Stop pubsub and identify before hanging up, so that neither opens a stream to a
            # peer being dropped (0.8.1 logs each such failure as an ERROR). Stopping pubsub
            # again later is a no-op; identify runs as trio system tasks, one scope each.
            for service in (self._router, self._pubsub):
                try:
                    await service.manager.stop()
                except Exception as err:
                    logger.debug("stopping %s failed: %r", type(service).__name__, err)
            for identify in list(getattr(self._host, "_identify_tasks", ())):
                identify.cancel()
            await self._peers.disconnect_all()
        if scope.cancelled_caught:
            logger.warning("shutdown took over %.1fs", self.config.shutdown_timeout)

    # --- peers and scores -----------------------------------------------------------------------

    def listen_addrs(self) -> list[str]:
        """This node's addresses, each ending in `/p2p/<local_id>`."""
        suffix = f"/p2p/{self.local_id}"
        addrs = [str(addr) for addr in self._host.get_addrs()]
        return [addr if addr.endswith(suffix) else addr + suffix for addr in addrs]

    async def connect(self, addr: str, timeout: float | None = None) -> PeerId:
        """Dial a full multiaddr (`.../p2p/<peer id>`) and return the peer id.

        Raises `PeerUnreachable` (bad address, banned peer, dial failure or timeout)."""
        return await self._peers.connect(addr, timeout or self.config.dial_timeout)

    async def disconnect(self, peer: PeerId) -> None:
        """Close every connection to the peer (it may dial again; bootstrap peers are)."""
        await self._peers.disconnect(peer)

    def peers(self) -> list[PeerId]:
        return sorted(self._peers.view)

    def on_peer_event(self, callback: PeerEventCallback) -> None:
        self._peers.callbacks.append(callback)

    def penalize(self, peer: PeerId, reason: str, weight: float = 1.0) -> None:
        banned = self._scores.penalize(peer, weight, trio.current_time())
        logger.debug("penalising %s by %.2f: %s", peer, weight, reason)
        if banned:
            logger.info("banning %s (score %.2f): %s", peer, self.score(peer), reason)
            self._peers.start_disconnect(peer)

    def score(self, peer: PeerId) -> float:
        return self._scores.score(peer, trio.current_time())

    def is_banned(self, peer: PeerId) -> bool:
        return self._scores.is_banned(peer, trio.current_time())

    def _on_fault(self, peer: PeerId, reason: str) -> None:
        self.penalize(peer, reason, REJECT_PENALTY)

    def stats(self) -> NetStats:
        """A snapshot of the gossip and request counters since this network started, with the
        size of each subscribed topic's mesh and of the address book."""
        mesh = {
            compute_short_name(topic): len(self._router.mesh.get(topic, ()))
            for topic in self._gossip
        }
        return replace(
            self._counters.snapshot(), mesh=mesh, known_peers=len(self.discovery.book.entries)
        )

    # --- gossip ---------------------------------------------------------------------------------

    async def publish(self, topic: str, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if len(data) > MAX_GOSSIP_BYTES:
            raise MessageTooLarge(len(data), MAX_GOSSIP_BYTES)
        if self._nursery is None:
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
        self._pubsub.set_topic_validator(topic, self._make_validator(topic), True)
        if self._nursery is not None:  # else stopped: nothing will arrive
            self._nursery.start_soon(self._join, topic)

    async def _join(self, topic: str) -> None:
        try:
            await self._pubsub.subscribe(topic)
        except Exception as err:
            logger.error("subscribing to %s failed: %r", topic, err)

    def _make_validator(self, topic: str) -> Callable[[ID, rpc_pb2.Message], Awaitable[bool]]:
        async def validate(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            return await self._deliver(topic, str(forwarder), msg.data)

        return validate

    async def _deliver(self, topic: str, sender: PeerId, data: bytes) -> bool:
        """Judge one message for pubsub's validation: True relays it."""
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
        self._counters.count_gossip(topic, _VERDICT_COUNTERS[verdict])
        if verdict is Verdict.REJECT:
            self.penalize(sender, f"rejected gossip on {topic}", REJECT_PENALTY)
        return verdict is Verdict.ACCEPT

    async def wait_for_mesh(self, topic: str, peers: list[PeerId], timeout: float) -> bool:
        """Wait until each of `peers` gets this node's publications on `topic`: it is in the
        topic's mesh (when subscribed) or a known subscriber. False once `timeout` passes."""
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
        self, protocol: str, handler: RequestHandler, max_request_bytes: int,
        timeout_s: float | None = None,
    ) -> None:
        if protocol in self._server.entries:
            raise ValueError(f"{self.local_id} already serves {protocol}")
        if max_request_bytes < 0:
            raise ValueError(f"max_request_bytes must be >= 0, got {max_request_bytes}")
        validate_handler_timeout(timeout_s)
        self._server.entries[protocol] = ServerEntry(handler, max_request_bytes, timeout_s)
        self._host.set_stream_handler(TProtocol(protocol), self._serve_stream)
        if self.config.persistent_streams:
            stream_protocol = TProtocol(compute_stream_protocol(protocol))
            self._host.set_stream_handler(stream_protocol, self._serve_persistent_stream)

    async def _serve_stream(self, stream: INetStream) -> None:
        await self._server.serve(stream, get_stream_peer(stream))

    async def _serve_persistent_stream(self, stream: INetStream) -> None:
        await self._stream_server.serve(stream, get_stream_peer(stream))

    def _on_peer_event(self, peer: PeerId, connected: bool) -> None:
        if not connected:
            self._pool.forget_peer(peer)

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
        if self._nursery is None:
            await trio.sleep_until(deadline)  # as in the simulator: a dead node cannot spin
            raise PeerUnreachable(peer, protocol, "this node is down")
        try:
            with trio.fail_at(deadline):
                response = await self._request(peer, protocol, bytes(data), max_response_bytes)
        except trio.TooSlowError as err:
            self._counters.count_request(protocol, "send_timed_out")
            raise RequestTimeout(peer, protocol, f"no response within {timeout:g}s") from err
        except NetworkError:
            self._counters.count_request(protocol, "send_failed")
            raise
        self._counters.count_request(protocol, "sent")
        return response

    async def _request(self, peer: PeerId, protocol: str, data: bytes, cap: int) -> bytes:
        if peer == self.local_id:
            raise PeerUnreachable(peer, protocol, "cannot request self")
        try:
            peer_id = ID.from_base58(peer)
        except Exception as err:
            raise PeerUnreachable(peer, protocol, "not a peer id") from err
        if self.config.persistent_streams:
            if self.is_banned(peer):
                raise PeerUnreachable(peer, protocol, "peer is banned")
            response = await self._pool.request(peer_id, peer, protocol, data, cap)
            if response is not None:
                return response
        stream = await self._open_stream(peer_id, peer, protocol, protocol)
        self._counters.count_request(protocol, "streams_opened")
        try:
            return await exchange(stream, peer, protocol, data, cap)
        except FrameError as err:
            if self._peers.live_connections(peer_id):
                raise RemoteError(peer, protocol, f"stream broke off: {err}") from err
            raise PeerUnreachable(peer, protocol, "connection lost") from err

    async def _open_stream(
        self, peer_id: ID, peer: PeerId, protocol: str, protocol_id: str
    ) -> INetStream:
        """A stream negotiated on `protocol_id` (`protocol` or its persistent stream's id),
        dialling if needed; one retry on a fresh connection when the listed one cannot carry
        a stream. Raises `UnsupportedProtocol` or `PeerUnreachable`."""
        failure: Exception | None = None
        for _ in range(2):
            await self._peers.dial(peer_id, peer, protocol)
            try:
                return await self._host.new_stream(peer_id, [TProtocol(protocol_id)])
            except Exception as err:
                if _is_unsupported_protocol(err):
                    raise UnsupportedProtocol(peer, protocol, "unsupported protocol") from err
                failure = err
            logger.info("no stream to %s on its connection (%r): reconnecting", peer, failure)
            await self._peers.drop_all_connections(peer_id)
        raise PeerUnreachable(peer, protocol, f"cannot open a stream: {failure!r}") from failure


def _check_port_free(listen: Multiaddr) -> None:
    """Raise `NetworkError` if another listener holds the TCP port. 0.8.1 binds with
    SO_REUSEPORT, so a second node on a taken port starts "fine" and the kernel splits incoming
    connections between the two. The probe sets SO_REUSEADDR only: it ignores TIME_WAIT
    leftovers of a previous run but collides with any live listener."""
    protocols = {p.name for p in listen.protocols()}
    port = int(listen.value_for_protocol("tcp"))
    if port == 0:
        return
    host = listen.value_for_protocol("ip6" if "ip6" in protocols else "ip4")
    family = socket.AF_INET6 if "ip6" in protocols else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise NetworkError(f"cannot listen on {listen}: {err.strerror}") from err


def _is_unsupported_protocol(err: BaseException) -> bool:
    """Whether a failed stream open means "the peer does not speak this protocol" (0.8.1 says
    so only in the message of the `MultiselectClientError` behind its `StreamFailure`)."""
    seen: BaseException | None = err
    while seen is not None:
        if "protocols not supported" in str(seen) or "protocol not supported" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _sole_exception(group: BaseExceptionGroup) -> BaseException:
    """The one exception inside nested single-member groups, else the group itself."""
    while len(group.exceptions) == 1:
        inner = group.exceptions[0]
        if not isinstance(inner, BaseExceptionGroup):
            return inner
        group = inner
    return group
