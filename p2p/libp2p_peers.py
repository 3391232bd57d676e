"""Connections of the libp2p host: dialling, the peer view and its events, bans, bootstrap.

Which peers to dial, and when again, is discovery's policy (`p2p.libp2p_discovery`); this
module dials the bootstrap peers once at start and makes each dial work.

py-libp2p 0.8.1 needs help in three places, all handled here:

- a connection whose muxer died can stay listed in the swarm, and new streams to that peer are
  then opened on it (and fail) instead of dialling again: `drop_dead_connections` removes such
  connections before each dial and on every maintenance sweep;
- after a failed dial the swarm refuses to dial that peer again for 60 s (a restarted peer would
  stay unreachable): the entry is dropped before each of our dials;
- libp2p's auto-connector dials every peer in the peerstore, banned ones too: the network stops it
  (dials come from discovery, explicit `connect` and requests).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio
from libp2p.abc import IHost, INetConn
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from chain.errors import ConfigError
from p2p.libp2p_config import Libp2pConfig, parse_peer_addr
from p2p.network import NetworkError, PeerEventCallback, PeerId, PeerUnreachable

logger = logging.getLogger(__name__)


def is_live(conn: INetConn) -> bool:
    """Whether a listed connection can still carry streams."""
    return not conn.is_closed and not getattr(conn.muxed_conn, "is_closed", False)


class PeerConnections:
    """The host's connections as the network sees them: `view` is the set of peers with a
    live connection; each change is reported to the callbacks, in order."""

    def __init__(
        self, host: IHost, config: Libp2pConfig, is_banned: Callable[[PeerId], bool]
    ) -> None:
        self._host = host
        self._swarm = host.get_network()
        self._config = config
        self._is_banned = is_banned
        self.view: set[PeerId] = set()
        self.callbacks: list[PeerEventCallback] = []
        self.nursery: trio.Nursery | None = None
        """Where disconnects are started; None before start and once closing."""
        self.bootstrap: list[PeerInfo] = [
            parse_peer_addr("bootstrap", addr) for addr in config.bootstrap
        ]
        for info in self.bootstrap:
            self.add_addrs(info)

    def add_addrs(self, info: PeerInfo) -> None:
        self._host.get_peerstore().add_addrs(info.peer_id, info.addrs, 0)

    def stop(self) -> None:
        """No more events or dials: the network is shutting down."""
        self.nursery = None
        self.view.clear()

    # --- events from the swarm ------------------------------------------------------------------

    def on_connected(self, peer: PeerId) -> None:
        if self.nursery is None:
            return
        if self._is_banned(peer):
            logger.info("refusing banned peer %s", peer)
            self.start_disconnect(peer)
            return
        if peer not in self.view:
            self.view.add(peer)
            self._notify(peer, True)

    def on_disconnected(self, peer: PeerId) -> None:
        if peer not in self.view:
            return
        try:
            if self.live_connections(ID.from_base58(peer)):
                return
        except Exception:  # a peer id that no longer parses: treat it as gone
            pass
        self.view.discard(peer)
        if self.nursery is not None:
            self._notify(peer, False)

    def _notify(self, peer: PeerId, connected: bool) -> None:
        logger.debug("peer %s %s", peer, "connected" if connected else "disconnected")
        for callback in list(self.callbacks):
            try:
                callback(peer, connected)
            except Exception:
                logger.exception("peer event callback failed")

    # --- connections ----------------------------------------------------------------------------

    def live_connections(self, peer_id: ID) -> list[INetConn]:
        return [conn for conn in self._swarm.get_connections(peer_id) if is_live(conn)]

    async def drop_dead_connections(self, peer_id: ID) -> None:
        """Remove connections that died but are still listed."""
        for conn in self._swarm.get_connections(peer_id):
            if is_live(conn):
                continue
            logger.info("dropping dead connection to %s", peer_id)
            await self._close(conn, str(peer_id))
            if conn in self._swarm.get_connections(peer_id):
                self._swarm.remove_conn(conn)
        self.on_disconnected(str(peer_id))

    async def drop_all_connections(self, peer_id: ID) -> None:
        """Close every connection to the peer, live or not (it cannot carry a stream)."""
        for conn in self._swarm.get_connections(peer_id):
            await self._close(conn, str(peer_id))
        await self.drop_dead_connections(peer_id)

    async def _close(self, conn: INetConn, peer: PeerId) -> None:
        with trio.move_on_after(self._config.shutdown_timeout):
            try:
                await conn.close()
            except Exception as err:
                logger.debug("closing a connection to %s failed: %r", peer, err)

    async def dial(self, peer_id: ID, peer: PeerId, protocol: str) -> None:
        """Make sure a live connection to the peer exists, or raise `PeerUnreachable`."""
        if self._is_banned(peer):
            raise PeerUnreachable(peer, protocol, "peer is banned")
        await self.drop_dead_connections(peer_id)
        if self.live_connections(peer_id):
            return
        failed_dials = getattr(self._swarm, "_negative_peer_cache", None)
        if failed_dials is not None:
            failed_dials.evict(str(peer_id))
        try:
            with trio.fail_after(self._config.dial_timeout):
                await self._swarm.dial_peer(peer_id)
        except trio.TooSlowError as err:
            raise PeerUnreachable(peer, protocol, "dial timed out") from err
        except Exception as err:
            raise PeerUnreachable(peer, protocol, f"dial failed: {err}") from err

    async def connect(self, addr: str, timeout: float) -> PeerId:
        """Dial a full multiaddr; returns the peer id. Raises `PeerUnreachable`."""
        try:
            info = parse_peer_addr("peer", addr)
        except ConfigError as err:
            raise PeerUnreachable(addr, "connect", str(err)) from err
        peer = str(info.peer_id)
        self.add_addrs(info)
        with trio.move_on_after(timeout):
            await self.dial(info.peer_id, peer, "connect")
            return peer
        raise PeerUnreachable(peer, "connect", "dial timed out")

    async def disconnect(self, peer: PeerId) -> None:
        try:
            await self._host.disconnect(ID.from_base58(peer))
        except Exception as err:
            raise NetworkError(f"disconnect from {peer} failed: {err!r}") from err
        self.on_disconnected(peer)

    def start_disconnect(self, peer: PeerId) -> None:
        """Disconnect the peer in the background (from synchronous code: events, penalties)."""
        if self.nursery is not None:
            self.nursery.start_soon(self._disconnect_quietly, peer)

    async def _disconnect_quietly(self, peer: PeerId) -> None:
        with trio.move_on_after(self._config.shutdown_timeout):
            try:
                await self.disconnect(peer)
            except NetworkError as err:
                logger.debug("%s", err)

    async def disconnect_all(self) -> None:
        for peer_id in list(self._swarm.connections):
            try:
                await self._host.disconnect(peer_id)
            except Exception as err:
                logger.debug("disconnect from %s failed: %r", peer_id, err)

    # --- bootstrap and maintenance ----------------------------------------------------------

    async def dial_bootstrap(self) -> None:
        """Dial, at once, each bootstrap peer that is neither connected nor banned."""
        async with trio.open_nursery() as nursery:
            for info in self.bootstrap:
                peer = str(info.peer_id)
                if not self._is_banned(peer) and not self.live_connections(info.peer_id):
                    nursery.start_soon(self._dial_quietly, info.peer_id, peer)

    async def _dial_quietly(self, peer_id: ID, peer: PeerId) -> None:
        try:
            await self.dial(peer_id, peer, "bootstrap")
        except PeerUnreachable as err:
            logger.debug("bootstrap peer %s: %s", peer, err.reason)

    async def maintain(self) -> None:
        """Forever: sweep dead connections, drop banned peers, keep the view honest (re-dialling
        is discovery's: `p2p.libp2p_discovery`)."""
        while True:
            await trio.sleep(self._config.maintenance_interval_s)
            try:
                await self._sweep()
            except Exception:  # top of a task: one failed sweep must not stop the node
                logger.exception("connection maintenance failed")

    async def _sweep(self) -> None:
        for peer_id in list(self._swarm.connections):
            await self.drop_dead_connections(peer_id)
            if self._is_banned(str(peer_id)):
                await self._disconnect_quietly(str(peer_id))
        for peer in list(self.view):
            self.on_disconnected(peer)  # a no-op while the peer has a live connection
