"""Peer discovery: a peer-exchange protocol (PEX) over request/response, and the loop that keeps
a node at its target number of connections.

Why PEX and not py-libp2p's Kademlia DHT: a Blyan network is small (hundreds to thousands of
nodes, every one of which wants to be connected to the same swarm), so what a node needs is a
handful of random live peers, not routing to a key. PEX gets that in one round trip per peer,
over the request/response transport the node already guards, caps and counts; it keeps no
routing table to poison and needs no extra stream protocol of 0.8.1 (whose `kad_dht` ran its
own refresh loop dialling every routing-table entry, banned peers too). CometBFT's PEX reactor
and go-ethereum's discv4 ("give me some peers") are the models.

    request  PexRequest(addrs)     the requester's own dialable addresses
    response PexResponse(peers)    up to `MAX_PEX_PEERS` connected peers of the responder

The loop (`Discovery.run`), every `maintenance_interval_s`:

- a peer that just connected gets one exchange (we learn its peers, it learns our address);
- below `target_peers`, dial candidates from the address book (`p2p.peer_book`: round-robin
  over who told us, exponential backoff per peer, configured bootstrap peers first), and ask a
  random peer for more at most every `PEX_WHEN_LOW_S`;
- every `pex_interval_s`, one exchange with a random peer anyway (the book stays fresh);
- above `max_peers`, hang up on the newest inbound peers that have had `TRIM_GRACE_S` to
  exchange addresses (they leave knowing others: a full node still helps newcomers, as a
  CometBFT seed does);
- the book is saved to `peers_file` (when set) a few seconds after it changes, and at exit, so a
  restarted node finds the network again without its bootstrap peers.

An address a peer gives us must be a plain TCP multiaddr (`/ip4|ip6|dns*/.../tcp/<port>`),
neither unspecified nor multicast, and loopback only when this node itself listens on loopback
(a peer must not make us dial our own local services). A response with malformed entries costs
its sender `REJECT_PENALTY`.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from chain.codec import Seq, Str, decode, encode, wire
from chain.errors import BlyanError, DecodingError
from p2p.network import REJECT_PENALTY, NetworkError, PeerEventCallback, PeerId, RequestHandler
from p2p.peer_book import SOURCE_CONFIG, SOURCE_SELF, AddressBook, AddressBookError, BookConfig

__all__ = [
    "Discovery",
    "DiscoveryConfig",
    "PexAddr",
    "PexRequest",
    "PexResponse",
    "dialable_addr",
]

logger = logging.getLogger(__name__)

MAX_PEX_PEERS = 32
"""Peers in one response."""
MAX_PEX_ADDRS = 4
"""Addresses per peer on the wire."""
MAX_ADDR_CHARS = 256
MAX_PEER_ID_CHARS = 128
MAX_PEX_BYTES = 64 * 1024
"""Cap on a request and on a response (32 peers x 4 addresses fit several times over)."""
PEX_WHEN_LOW_S = 2.0
"""Least seconds between exchanges asked for because the node is below its target."""
TRIM_GRACE_S = 3.0
"""Seconds an inbound peer is kept above `max_peers`, to exchange addresses first."""
SAVE_DELAY_S = 5.0
"""Seconds after a change before the book is written (changes come in bursts)."""
MAX_DIALS_IN_FLIGHT = 4
MAX_EXCHANGES_IN_FLIGHT = 4


@wire
class PexAddr:
    peer: Str(MAX_PEER_ID_CHARS, 1)  # type: ignore[valid-type]
    addrs: Seq(Str(MAX_ADDR_CHARS, 1), MAX_PEX_ADDRS, 1)  # type: ignore[valid-type]


@wire
class PexRequest:
    addrs: Seq(Str(MAX_ADDR_CHARS, 1), MAX_PEX_ADDRS)  # type: ignore[valid-type]
    """The requester's own dialable addresses (none: it cannot be dialled, only dial)."""


@wire
class PexResponse:
    peers: Seq(PexAddr, MAX_PEX_PEERS)  # type: ignore[valid-type]


class PexRefused(BlyanError):
    """A peer-exchange request that does not decode."""


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    protocol: str
    target_peers: int
    max_peers: int
    interval_s: float
    """Seconds between loop rounds."""
    pex_interval_s: float
    request_timeout_s: float
    dial_timeout_s: float
    peers_file: Path | None
    advertise: tuple[str, ...]
    """Addresses given to peers in addition to the listen addresses (`external_addrs`)."""
    book: BookConfig


class DiscoveryHost(Protocol):
    """What discovery needs of the network (`Libp2pNetwork` provides it)."""

    local_id: PeerId

    def peers(self) -> list[PeerId]: ...
    def listen_addrs(self) -> list[str]: ...
    def is_banned(self, peer: PeerId) -> bool: ...
    def penalize(self, peer: PeerId, reason: str, weight: float = 1.0) -> None: ...
    def on_peer_event(self, callback: PeerEventCallback) -> None: ...
    def set_request_handler(
        self, protocol: str, handler: RequestHandler, max_request_bytes: int
    ) -> None: ...
    async def request(
        self, peer: PeerId, protocol: str, data: bytes, timeout: float, max_response_bytes: int = ...
    ) -> bytes: ...
    async def connect(self, addr: str, timeout: float | None = None) -> PeerId: ...
    async def disconnect(self, peer: PeerId) -> None: ...


# --- addresses --------------------------------------------------------------------------------


def dialable_addr(text: str, allow_loopback: bool) -> str | None:
    """`text` as a canonical dialable TCP multiaddr without `/p2p/`, or None if it is not one."""
    try:
        addr = Multiaddr(text)
        parts = [(p.name, addr.value_for_protocol(p.name)) for p in addr.protocols()]
    except Exception:
        return None
    if len(parts) != 2 or parts[1][0] != "tcp":
        return None
    (kind, host), (_, port) = parts
    try:
        if not 0 < int(port) < 65536:
            return None
    except (TypeError, ValueError):
        return None
    if kind in ("ip4", "ip6"):
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
        if ip.is_unspecified or ip.is_multicast or (ip.is_loopback and not allow_loopback):
            return None
    elif kind in ("dns", "dns4", "dns6"):
        if host in ("localhost",) and not allow_loopback:
            return None
    else:
        return None
    return str(addr)


def valid_peer_id(text: str) -> bool:
    try:
        return str(ID.from_base58(text)) == text
    except Exception:
        return False


def strip_p2p(addr: str) -> str:
    return addr.split("/p2p/")[0]


# --- the loop ---------------------------------------------------------------------------------


class Discovery:
    """Peer exchange and connection targets for one network (see the module docstring)."""

    def __init__(
        self,
        host: DiscoveryHost,
        config: DiscoveryConfig,
        bootstrap: list[tuple[PeerId, tuple[str, ...]]],
        rng: random.Random | None = None,
    ) -> None:
        self._host = host
        self.config = config
        self.book = AddressBook(host.local_id, config.book)
        self._rng = rng or random.Random()
        self._bootstrap = bootstrap
        self._dialling: set[PeerId] = set()
        self._exchanging: set[PeerId] = set()
        self._dialled: set[PeerId] = set()
        """Peers connected because we dialled them (never trimmed)."""
        self._since: dict[PeerId, float] = {}
        """Connected peers: when they connected."""
        self._exchanged: set[PeerId] = set()
        """Connected peers we exchanged with since they connected."""
        self._next_pex = 0.0
        self._next_pex_low = 0.0
        self._dirty_since: float | None = None
        self.exchanges = 0
        self.dials = 0
        self.trimmed = 0
        self._dial_slots = trio.Semaphore(MAX_DIALS_IN_FLIGHT)
        self._pex_slots = trio.Semaphore(MAX_EXCHANGES_IN_FLIGHT)
        host.on_peer_event(self._on_peer_event)
        host.set_request_handler(config.protocol, self._serve, MAX_PEX_BYTES)

    # --- state --------------------------------------------------------------------------------

    def _allow_loopback(self) -> bool:
        own = [strip_p2p(a) for a in self._host.listen_addrs()] + list(self.config.advertise)
        for addr in own:
            try:
                host = Multiaddr(addr).value_for_protocol("ip4")
            except Exception:
                try:
                    host = Multiaddr(addr).value_for_protocol("ip6")
                except Exception:
                    continue
            try:
                if ipaddress.ip_address(host).is_loopback:
                    return True
            except ValueError:
                continue
        return False

    def own_addrs(self) -> tuple[str, ...]:
        """What we tell peers: our listen addresses (when dialable) and `advertise`."""
        allow = self._allow_loopback()
        found = [dialable_addr(strip_p2p(a), allow) for a in self._host.listen_addrs()]
        found += [dialable_addr(a, True) for a in self.config.advertise]
        return tuple(dict.fromkeys(a for a in found if a))[:MAX_PEX_ADDRS]

    def load(self, now: float) -> None:
        """Bootstrap peers (operator's: never forgotten) and the saved book, if any."""
        for peer, addrs in self._bootstrap:
            self.book.add(peer, addrs, SOURCE_CONFIG, now)
        path = self.config.peers_file
        if path is None:
            return
        allow = self._allow_loopback()
        try:
            added = self.book.load(path, now, lambda a: dialable_addr(a, allow) is not None)
        except AddressBookError as err:
            logger.warning("%s: starting with the bootstrap peers only", err)
            return
        if added:
            logger.info("address book: %d peers from %s", added, path)

    def _on_peer_event(self, peer: PeerId, connected: bool) -> None:
        now = trio.current_time()
        if connected:
            self._since[peer] = now
            self.book.mark_connected(peer, now)
        else:
            self._since.pop(peer, None)
            self.book.mark_disconnected(peer, now)
            self._exchanged.discard(peer)
            self._dialled.discard(peer)

    def _changed(self, now: float) -> None:
        if self._dirty_since is None:
            self._dirty_since = now

    # --- serving ------------------------------------------------------------------------------

    async def _serve(self, peer: PeerId, data: bytes) -> bytes:
        try:
            request = decode(PexRequest, data, MAX_PEX_BYTES)
        except DecodingError as err:
            self._host.penalize(peer, f"bad peer-exchange request: {err}", REJECT_PENALTY)
            raise PexRefused(f"bad peer-exchange request: {err}") from err
        now = trio.current_time()
        allow = self._allow_loopback()
        addrs = tuple(a for a in (dialable_addr(x, allow) for x in request.addrs) if a)
        if addrs and self.book.add(peer, addrs, SOURCE_SELF, now):
            self._changed(now)
        if peer in self._since:
            self.book.mark_connected(peer, now)
        connected = set(self._host.peers()) - {peer}
        sample = self.book.sample(MAX_PEX_PEERS, self._rng, only=connected)
        peers = tuple(PexAddr(e.peer, e.addrs[:MAX_PEX_ADDRS]) for e in sample if e.addrs)
        return encode(PexResponse(peers))

    # --- asking -------------------------------------------------------------------------------

    async def exchange(self, peer: PeerId) -> int:
        """Ask `peer` for its peers; returns how many new ones the book took (0 on failure)."""
        if peer in self._exchanging:
            return 0
        self._exchanging.add(peer)
        try:
            async with self._pex_slots:
                return await self._exchange(peer)
        finally:
            self._exchanging.discard(peer)

    async def _exchange(self, peer: PeerId) -> int:
        request = encode(PexRequest(self.own_addrs()))
        try:
            data = await self._host.request(
                peer, self.config.protocol, request, self.config.request_timeout_s, MAX_PEX_BYTES
            )
        except NetworkError as err:
            logger.debug("peer exchange with %s failed: %s", peer, err)
            return 0
        self.exchanges += 1
        self._exchanged.add(peer)
        try:
            response = decode(PexResponse, data, MAX_PEX_BYTES)
        except DecodingError as err:
            self._host.penalize(peer, f"bad peer-exchange response: {err}", REJECT_PENALTY)
            return 0
        now = trio.current_time()
        allow = self._allow_loopback()
        added = bad = 0
        for item in response.peers:
            addrs = tuple(a for a in (dialable_addr(x, allow) for x in item.addrs) if a)
            if not valid_peer_id(item.peer) or len(addrs) != len(item.addrs):
                bad += 1
                continue
            if item.peer == self._host.local_id:
                continue
            added += self.book.add(item.peer, addrs, peer, now)
        if bad:
            self._host.penalize(peer, f"{bad} malformed peer-exchange entries", REJECT_PENALTY)
        if added:
            self._changed(now)
            logger.debug("peer exchange with %s: %d new peers", peer, added)
        return added

    async def _dial(self, peer: PeerId) -> None:
        try:
            async with self._dial_slots:
                entry = self.book.entries.get(peer)
                if entry is None or peer in self._since:
                    return
                self.dials += 1
                for addr in entry.addrs:
                    try:
                        await self._host.connect(f"{addr}/p2p/{peer}", self.config.dial_timeout_s)
                    except NetworkError as err:
                        logger.debug("dial %s at %s failed: %s", peer, addr, err)
                        continue
                    self._dialled.add(peer)
                    self.book.mark_connected(peer, trio.current_time())
                    return
                self.book.mark_failed(peer, trio.current_time())
        finally:
            self._dialling.discard(peer)

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Forever (until cancelled); at exit the book is saved."""
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        self._round(nursery, trio.current_time())
                    except Exception:  # top of a task: one bad round must not stop discovery
                        logger.exception("peer discovery round failed")
                    await trio.sleep(self.config.interval_s)
        finally:
            self.save()

    def _round(self, nursery: trio.Nursery, now: float) -> None:
        connected = set(self._host.peers())
        for peer in sorted(connected - self._exchanged - self._exchanging):
            nursery.start_soon(self.exchange, peer)
        missing = self.config.target_peers - len(connected)
        if missing > 0:
            busy = connected | self._dialling | {
                p for p in self.book.entries if self._host.is_banned(p)
            }
            room = MAX_DIALS_IN_FLIGHT - len(self._dialling)
            for peer in self.book.candidates(now, busy, min(missing, room), self._rng):
                self._dialling.add(peer)
                nursery.start_soon(self._dial, peer)
            if connected and now >= self._next_pex_low:
                self._next_pex_low = now + PEX_WHEN_LOW_S
                nursery.start_soon(self.exchange, self._rng.choice(sorted(connected)))
        if connected and now >= self._next_pex:
            self._next_pex = now + self.config.pex_interval_s
            if self._next_pex_low <= now:
                nursery.start_soon(self.exchange, self._rng.choice(sorted(connected)))
        if len(connected) > self.config.max_peers:
            self._trim(nursery, connected, now)
        if self._dirty_since is not None and now - self._dirty_since >= SAVE_DELAY_S:
            self.save()

    def _trim(self, nursery: trio.Nursery, connected: set[PeerId], now: float) -> None:
        """Hang up on the newest inbound peers past their grace, down to `max_peers`."""
        configured = {p for p, _ in self._bootstrap}
        inbound = [
            p for p in connected
            if p not in self._dialled and p not in configured
            and now - self._since.get(p, now) >= TRIM_GRACE_S
        ]
        inbound.sort(key=lambda p: (-self._since.get(p, now), p))
        for peer in inbound[: len(connected) - self.config.max_peers]:
            self.trimmed += 1
            logger.debug("over %d peers: hanging up on %s", self.config.max_peers, peer)
            nursery.start_soon(self._hang_up, peer)

    async def _hang_up(self, peer: PeerId) -> None:
        try:
            await self._host.disconnect(peer)
        except NetworkError as err:
            logger.debug("%s", err)

    def save(self) -> None:
        path = self.config.peers_file
        self._dirty_since = None
        if path is None:
            return
        try:
            self.book.save(path)
        except OSError as err:
            logger.warning("cannot save the address book to %s: %s", path, err)


def bootstrap_entries(infos: list[tuple[str, list[str]]]) -> list[tuple[PeerId, tuple[str, ...]]]:
    """(peer id, dialable addresses) of each bootstrap peer, from (peer id, multiaddrs)."""
    return [(peer, tuple(strip_p2p(a) for a in addrs)) for peer, addrs in infos]

