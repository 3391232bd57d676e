"""The deterministic simulated network: many nodes in one `trio.run`, a pure function of a seed.

    async with SimNetworkHub(seed=7, faults=FaultConfig(loss=0.01)) as hub:
        a, b = hub.add_node("a"), hub.add_node("b")
        ...                      # run the engines; hub.partition / crash / restart as the test says
        await hub.wait_idle()

Run it under `trio.testing.MockClock(autojump_threshold=0)` (`run_simulation` does, and seeds
trio's scheduler too): no sockets, no wall-clock time, no global RNG.

How a message travels: the sender samples a delay on its directed link (each link has its own RNG
derived from the seed by hashing, so one link's draws never depend on another's traffic) and
pushes the copy onto the destination's heap, keyed by (due time, sender, per-link sequence). One
delivery task per node pops the heap in that order and calls the handler, so deliveries at the
same instant are ordered the same way in every run. Conditions are checked twice: when a copy is
sent and when it arrives (a partition, crash or ban in between drops it). A gossip handler runs
in its node's delivery task: while it awaits, that node receives nothing else, so handlers stay
quick (validate, push to a channel). At most `max_in_flight_per_link` messages are in flight on
a link; beyond that gossip copies are dropped (`dropped_overflow`) and requests time out.

Requests travel the same heap; the receiver runs the handler in its own task (bounded by
`max_inbound_requests`), and the response flies back after a delay sampled on the reverse link.
Loss and duplication apply to gossip only: requests ride a reliable stream. What a request to an
unreachable peer does:

- the peer is partitioned away: nothing answers; `RequestTimeout` at the deadline;
- the peer is down, unknown or banned (either way): the dial is refused after one sampled round
  trip: `PeerUnreachable` (`RequestTimeout` if the round trip outlasts the deadline);
- this node is down: `PeerUnreachable` at the deadline (so a dead node's retry loop cannot spin
  without time passing under the autojump clock);
- the peer crashes or gets cut off while the request or its response is in flight: timeout.

Connections: two live nodes are connected unless a partition separates them or either bans the
other. Each change is queued to both ends as a peer event, delivered in order with messages.
Bandwidth is not modelled.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import random
from collections import deque
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import NoReturn

import trio

from chain.errors import BlyanError
from p2p.network import (
    DEFAULT_MAX_RESPONSE_BYTES,
    MAX_GOSSIP_BYTES,
    REJECT_PENALTY,
    GossipHandler,
    MessageTooLarge,
    PeerEventCallback,
    PeerId,
    PeerScores,
    PeerUnreachable,
    RemoteError,
    RequestHandler,
    RequestTimeout,
    ResponseTooLarge,
    ScoreConfig,
    Verdict,
)

from p2p.sim_support import (  # noqa: F401 - re-exported: p2p.sim is the simulator's API
    FaultConfig,
    SimError,
    SimStats,
    TraceEvent,
    derive_seed,
    deterministic_scheduler,
    run_simulation,
)

logger = logging.getLogger(__name__)

class _Pending:
    """A request waiting for its response."""

    __slots__ = ("done", "response", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.response = b""
        self.error: str | None = None

    def resolve(self, response: bytes, error: str | None) -> None:
        if not self.done.is_set():
            self.response, self.error = response, error
            self.done.set()


@dataclass(slots=True)
class _Delivery:
    kind: str  # "gossip" | "request" | "event"
    src: PeerId
    src_incarnation: int
    name: str = ""
    data: bytes = b""
    pending: _Pending | None = None
    deadline: float = math.inf
    connected: bool = False


@dataclass(slots=True)
class _Link:
    rng: random.Random
    seq: int = 0
    in_flight: int = 0


class SimNetwork:
    """One node's `Network` inside a `SimNetworkHub` (made by `add_node` and `restart`).

    Also a `Clock`: `now_ms()` is the run's time plus this node's skew. Once its node has crashed
    the object is inert: `publish` drops, `request` fails at its deadline, `peers()` is empty."""

    def __init__(self, hub: SimNetworkHub, peer_id: PeerId, incarnation: int) -> None:
        self.local_id = peer_id
        self.incarnation = incarnation
        """0 for the first start, +1 per restart."""
        self._hub = hub
        self._alive = True
        self._gossip: dict[str, tuple[GossipHandler, int]] = {}
        self._handlers: dict[str, tuple[RequestHandler, int]] = {}
        self._callbacks: list[PeerEventCallback] = []
        self._view: set[PeerId] = set()
        self._scores = PeerScores(hub.score_config)
        self._heap: list[tuple[float, PeerId, int, _Delivery]] = []
        self._wakeup = trio.Event()
        self._scopes: dict[trio.CancelScope, None] = {}  # cancelled on crash (ordered, unlike set)
        self._inbound = 0

    @property
    def alive(self) -> bool:
        return self._alive

    def now_ms(self) -> int:
        return int(trio.current_time() * 1000) + self._hub.get_clock_skew(self.local_id)

    async def publish(self, topic: str, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if len(data) > MAX_GOSSIP_BYTES:
            raise MessageTooLarge(len(data), MAX_GOSSIP_BYTES)
        if self._alive:
            self._hub._send_gossip(self, topic, bytes(data))

    def subscribe(
        self, topic: str, handler: GossipHandler, max_bytes: int = MAX_GOSSIP_BYTES
    ) -> None:
        if topic in self._gossip:
            raise ValueError(f"{self.local_id} already subscribes to {topic}")
        self._gossip[topic] = (handler, max_bytes)

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
        hub = self._hub
        return await hub._request(self, peer, protocol, bytes(data), timeout, max_response_bytes)

    def set_request_handler(
        self, protocol: str, handler: RequestHandler, max_request_bytes: int
    ) -> None:
        if protocol in self._handlers:
            raise ValueError(f"{self.local_id} already serves {protocol}")
        self._handlers[protocol] = (handler, max_request_bytes)

    def peers(self) -> list[PeerId]:
        return sorted(self._view) if self._alive else []

    def on_peer_event(self, callback: PeerEventCallback) -> None:
        self._callbacks.append(callback)

    def penalize(self, peer: PeerId, reason: str, weight: float = 1.0) -> None:
        now = trio.current_time()
        banned = self._scores.penalize(peer, weight, now)
        logger.debug("%s penalises %s by %.2f: %s", self.local_id, peer, weight, reason)
        if banned and self._alive:
            self._hub._on_ban(self, peer, self._scores.get_banned_until(peer))

    def score(self, peer: PeerId) -> float:
        return self._scores.score(peer, trio.current_time())

    def is_banned(self, peer: PeerId) -> bool:
        return self._scores.is_banned(peer, trio.current_time())


class SimNetworkHub:
    """The simulated wire between `SimNetwork`s; owns every delivery task.

    Use as `async with SimNetworkHub(seed, faults) as hub:`; leaving the block stops all
    deliveries. `faults` applies to every link without its own `set_link`."""

    def __init__(
        self,
        seed: int,
        faults: FaultConfig | None = None,
        *,
        score_config: ScoreConfig | None = None,
        max_in_flight_per_link: int = 1024,
        max_inbound_requests: int = 64,
        trace_limit: int = 0,
    ) -> None:
        self.seed = seed
        self.faults = faults or FaultConfig()
        self.score_config = score_config or ScoreConfig()
        self.max_in_flight_per_link = max_in_flight_per_link
        self.max_inbound_requests = max_inbound_requests
        self.stats = SimStats()
        self.trace: deque[TraceEvent] = deque(maxlen=trace_limit)
        """The last `trace_limit` events (empty when 0)."""
        self.rng = self.derive_rng("scenario")
        """For the scenario's own choices (which node to crash, when)."""
        self._nodes: dict[PeerId, SimNetwork] = {}
        self._links: dict[tuple[PeerId, PeerId], _Link] = {}
        self._link_faults: dict[tuple[PeerId, PeerId], FaultConfig] = {}
        self._groups: dict[PeerId, int] | None = None
        self._skew_ms: dict[PeerId, int] = {}
        self._bridges: set[PeerId] = set()
        self._up: set[tuple[PeerId, PeerId]] = set()
        self._ban_checks: set[float] = set()
        self._work = 0
        self._idle: trio.Event | None = None
        self._digest = hashlib.sha256()
        self._instant = 0.0
        self._instant_events: list[bytes] = []
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> SimNetworkHub:
        if self._stack is not None:
            raise SimError("a hub runs once")
        self._stack = AsyncExitStack()
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._stack is not None and self._nursery is not None
        self._nursery.cancel_scope.cancel()
        try:
            return bool(await self._stack.__aexit__(exc_type, exc, tb))
        except BaseExceptionGroup as group:
            # The block's own exception comes back wrapped by the nursery: unwrap it.
            if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
                raise exc from None
            raise
        finally:
            self._nursery = None

    # --- scenario controls ------------------------------------------------------------------

    def derive_rng(self, *labels: str) -> random.Random:
        """An RNG that depends only on the hub's seed and `labels` (e.g. "node", peer_id)."""
        return random.Random(derive_seed(self.seed, *labels))

    def add_node(self, peer_id: PeerId) -> SimNetwork:
        """A new live node, connected to every live node its partition group allows."""
        self._require_running()
        if not peer_id or not isinstance(peer_id, str):
            raise SimError(f"peer id must be a non-empty str, got {peer_id!r}")
        if peer_id in self._nodes:
            raise SimError(f"node {peer_id} already exists")
        return self._start(SimNetwork(self, peer_id, 0))

    def crash(self, peer_id: PeerId) -> None:
        """Stop a node at once: its tasks in the hub are cancelled, deliveries to it dropped,
        its peers see it disconnect. The caller cancels the node's own engine tasks."""
        net = self.node(peer_id)
        if not net._alive:
            raise SimError(f"node {peer_id} is already down")
        net._alive = False
        for scope in net._scopes:
            scope.cancel()
        for *_, item in net._heap:
            if item.kind == "gossip":
                self._drop("crash", item.src, peer_id, item)
            self._release(peer_id, item)
        net._heap.clear()
        logger.info("sim: %s crashed", peer_id)
        self._refresh_links()

    def restart(self, peer_id: PeerId) -> SimNetwork:
        """Start a crashed node again as a fresh `SimNetwork` (no subscriptions, no handlers,
        no scores). Peers' scores of it survive."""
        self._require_running()
        old = self.node(peer_id)
        if old._alive:
            raise SimError(f"node {peer_id} is running; crash it first")
        logger.info("sim: %s restarts", peer_id)
        return self._start(SimNetwork(self, peer_id, old.incarnation + 1))

    def partition(self, groups: list[set[PeerId]]) -> None:
        """Cut the network into `groups`; nodes in no group form one more group together.
        Replaces any earlier partition; in-flight messages across the cut are dropped."""
        group_of: dict[PeerId, int] = {}
        for index, group in enumerate(groups):
            for peer in group:
                if peer in group_of:
                    raise SimError(f"{peer} is in two partition groups")
                group_of[peer] = index
        self._groups = group_of
        logger.info("sim: partition %s", [sorted(g) for g in groups])
        self._refresh_links()

    def set_bridges(self, peer_ids: set[PeerId]) -> None:
        """Nodes that every partition leaves connected to all groups: a byzantine adversary
        that talks to both sides of a split (what safety must survive)."""
        self._bridges = set(peer_ids)
        self._refresh_links()

    def heal(self) -> None:
        """Undo the partition."""
        self._groups = None
        logger.info("sim: partition healed")
        self._refresh_links()

    def set_link(self, src: PeerId, dst: PeerId, faults: FaultConfig | None) -> None:
        """Faults of the directed link src -> dst (`None`: back to the hub's default)."""
        if faults is None:
            self._link_faults.pop((src, dst), None)
        else:
            self._link_faults[(src, dst)] = faults

    def set_clock_skew(self, peer_id: PeerId, ms: int) -> None:
        """Offset of the node's `now_ms()`; survives restarts."""
        self._skew_ms[peer_id] = int(ms)

    def get_clock_skew(self, peer_id: PeerId) -> int:
        return self._skew_ms.get(peer_id, 0)

    # --- inspection -------------------------------------------------------------------------

    def node(self, peer_id: PeerId) -> SimNetwork:
        """The node's current `SimNetwork` (live or crashed)."""
        try:
            return self._nodes[peer_id]
        except KeyError:
            raise SimError(f"no node {peer_id}") from None

    def node_ids(self) -> list[PeerId]:
        return sorted(self._nodes)

    def is_connected(self, a: PeerId, b: PeerId) -> bool:
        """Whether a message from `a` to `b` would get through now (faults aside)."""
        return self._blocked(a, b) is None

    def trace_digest(self) -> str:
        """sha256 over every event so far (deliveries, drops, requests, responses, peer
        events, each with its time): equal digests mean identical runs."""
        digest = self._digest.copy()
        for event in sorted(self._instant_events):
            digest.update(event)
        return digest.hexdigest()

    async def wait_idle(self) -> None:
        """Return once no gossip, request, response or peer event is in flight (requests whose
        leg was dropped are not counted: their callers wait for their deadlines)."""
        while self._work:
            if self._idle is None or self._idle.is_set():
                self._idle = trio.Event()
            await self._idle.wait()
        await trio.lowlevel.checkpoint()

    # --- internals: connectivity ------------------------------------------------------------

    def _require_running(self) -> None:
        if self._nursery is None:
            raise SimError("use the hub inside `async with SimNetworkHub(...)`")

    def _start(self, net: SimNetwork) -> SimNetwork:
        assert self._nursery is not None
        self._nodes[net.local_id] = net
        self._nursery.start_soon(self._delivery_loop, net)
        self._refresh_links()
        return net

    def _group(self, peer: PeerId) -> int:
        return 0 if self._groups is None else self._groups.get(peer, -1)

    def _blocked(self, a: PeerId, b: PeerId) -> str | None:
        """Why a message from a to b cannot pass now: crash, partition, banned, or None."""
        na, nb = self._nodes.get(a), self._nodes.get(b)
        if na is None or nb is None or not na._alive or not nb._alive:
            return "crash"
        if self._group(a) != self._group(b) and a not in self._bridges and b not in self._bridges:
            return "partition"
        now = trio.current_time()
        if na._scores.is_banned(b, now) or nb._scores.is_banned(a, now):
            return "banned"
        return None

    def _refresh_links(self) -> None:
        """Recompute which pairs are connected and queue an event to each end of a change."""
        live = sorted(p for p, n in self._nodes.items() if n._alive)
        pairs = [(a, b) for i, a in enumerate(live) for b in live[i + 1 :]]
        up = {(a, b) for a, b in pairs if self._blocked(a, b) is None}
        for a, b in sorted(self._up - up):
            self._notify(a, b, False)
            self._notify(b, a, False)
        for a, b in sorted(up - self._up):
            self._notify(a, b, True)
            self._notify(b, a, True)
        self._up = up

    def _notify(self, dst: PeerId, peer: PeerId, connected: bool) -> None:
        net = self._nodes[dst]
        if net._alive:
            item = _Delivery("event", peer, self._nodes[peer].incarnation, connected=connected)
            self._enqueue(net, trio.current_time(), item)

    def _on_ban(self, net: SimNetwork, peer: PeerId, until: float) -> None:
        logger.info("sim: %s bans %s until t=%.3f", net.local_id, peer, until)
        self._refresh_links()
        if until not in self._ban_checks and self._nursery is not None:
            self._ban_checks.add(until)
            self._nursery.start_soon(self._ban_check, until)

    async def _ban_check(self, until: float) -> None:
        await trio.sleep_until(until)
        self._ban_checks.discard(until)
        self._refresh_links()

    # --- internals: the wire ----------------------------------------------------------------

    def _link(self, src: PeerId, dst: PeerId) -> _Link:
        link = self._links.get((src, dst))
        if link is None:
            link = self._links[(src, dst)] = _Link(self.derive_rng("link", src, dst))
        return link

    def _sample_delay(self, src: PeerId, dst: PeerId) -> float:
        faults = self._link_faults.get((src, dst), self.faults)
        return faults.sample_delay(self._link(src, dst).rng)

    def _enqueue(self, net: SimNetwork, due: float, item: _Delivery) -> bool:
        link = self._link(item.src, net.local_id)
        if item.kind != "event":
            if link.in_flight >= self.max_in_flight_per_link:
                return False
            link.in_flight += 1
        link.seq += 1
        heapq.heappush(net._heap, (due, item.src, link.seq, item))
        self._work += 1
        if net._heap[0][3] is item:
            net._wakeup.set()
        return True

    def _release(self, dst: PeerId, item: _Delivery) -> None:
        if item.kind != "event":
            self._link(item.src, dst).in_flight -= 1
        self._finish_work()

    def _finish_work(self) -> None:
        self._work -= 1
        if self._work == 0 and self._idle is not None:
            self._idle.set()

    def _record(self, kind: str, src: PeerId, dst: PeerId, name: str, data: bytes) -> None:
        now = trio.current_time()
        if now != self._instant:
            self._fold_instant()
            self._instant = now
        line = f"{now!r}\x1f{kind}\x1f{src}\x1f{dst}\x1f{name}\x1f".encode()
        self._instant_events.append(line + hashlib.sha256(data).digest())
        if self.trace.maxlen:
            self.trace.append(TraceEvent(now, kind, src, dst, name, data))

    def _fold_instant(self) -> None:
        # Events of one instant are hashed sorted: the digest does not depend on how trio
        # interleaved the nodes' tasks within that instant.
        for event in sorted(self._instant_events):
            self._digest.update(event)
        self._instant_events.clear()

    def _drop(self, reason: str, src: PeerId, dst: PeerId, item: _Delivery) -> None:
        counter = f"dropped_{reason}"
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        self._record(f"drop-{reason}", src, dst, item.name, item.data)

    def _send_gossip(self, sender: SimNetwork, topic: str, data: bytes) -> None:
        src, now = sender.local_id, trio.current_time()
        for dst, net in sorted(self._nodes.items()):
            if dst == src or not net._alive or topic not in net._gossip:
                continue
            self.stats.sent += 1
            item = _Delivery("gossip", src, sender.incarnation, topic, data)
            blocked = self._blocked(src, dst)
            if blocked is not None:
                self._drop(blocked, src, dst, item)
                continue
            faults = self._link_faults.get((src, dst), self.faults)
            rng = self._link(src, dst).rng
            if faults.loss and rng.random() < faults.loss:
                self._drop("loss", src, dst, item)
                continue
            copies = 1
            if faults.duplicate and rng.random() < faults.duplicate:
                self.stats.duplicated += 1
                copies = 2
            for _ in range(copies):
                if not self._enqueue(net, now + faults.sample_delay(rng), item):
                    self._drop("overflow", src, dst, item)

    # --- internals: delivery ----------------------------------------------------------------

    async def _delivery_loop(self, net: SimNetwork) -> None:
        with trio.CancelScope() as scope:
            if not net._alive:
                return
            net._scopes[scope] = None
            while True:
                if net._heap and net._heap[0][0] <= trio.current_time():
                    *_, item = heapq.heappop(net._heap)
                    try:
                        await self._dispatch(net, item)
                    finally:
                        self._release(net.local_id, item)
                    await trio.lowlevel.checkpoint()
                    continue
                net._wakeup = trio.Event()
                with trio.move_on_at(net._heap[0][0] if net._heap else math.inf):
                    await net._wakeup.wait()

    async def _dispatch(self, net: SimNetwork, item: _Delivery) -> None:
        if item.kind == "event":
            self._deliver_event(net, item)
            return
        src, dst = item.src, net.local_id
        sender = self._nodes.get(src)
        blocked = self._blocked(src, dst)
        if sender is None or sender.incarnation != item.src_incarnation:
            blocked = "crash"
        if blocked is not None:
            if item.kind == "gossip":
                self._drop(blocked, src, dst, item)
            return  # a lost request leg: the requester times out
        if item.kind == "gossip":
            await self._deliver_gossip(net, item)
        else:
            self._accept_request(net, item)

    def _deliver_event(self, net: SimNetwork, item: _Delivery) -> None:
        peer, connected = item.src, item.connected
        if connected == (peer in net._view):
            return
        (net._view.add if connected else net._view.discard)(peer)
        self._record("connect" if connected else "disconnect", peer, net.local_id, "", b"")
        for callback in list(net._callbacks):
            try:
                callback(peer, connected)
            except Exception:
                logger.exception("peer event callback of %s failed", net.local_id)

    async def _deliver_gossip(self, net: SimNetwork, item: _Delivery) -> None:
        handler, max_bytes = net._gossip[item.name]
        self.stats.delivered += 1
        self._record("gossip", item.src, net.local_id, item.name, item.data)
        if len(item.data) > max_bytes:
            verdict = Verdict.REJECT
        else:
            try:
                verdict = await handler(item.src, item.data)
            except Exception:
                logger.exception("gossip handler of %s for %s failed", net.local_id, item.name)
                verdict = Verdict.IGNORE
            if not isinstance(verdict, Verdict):
                logger.error("gossip handler of %s returned %r", net.local_id, verdict)
                verdict = Verdict.IGNORE
        if verdict is Verdict.ACCEPT:
            self.stats.accepted += 1
        elif verdict is Verdict.IGNORE:
            self.stats.ignored += 1
        else:
            self.stats.rejected += 1
            net.penalize(item.src, f"rejected gossip on {item.name}", REJECT_PENALTY)

    def _accept_request(self, net: SimNetwork, item: _Delivery) -> None:
        assert self._nursery is not None
        self._record("request", item.src, net.local_id, item.name, item.data)
        entry = net._handlers.get(item.name)
        handler: RequestHandler | None = None
        error: str | None = None
        if entry is None:
            error = f"unsupported protocol {item.name}"
        elif len(item.data) > entry[1]:
            error = f"request of {len(item.data)} bytes exceeds the cap of {entry[1]}"
            net.penalize(item.src, f"oversized request on {item.name}", REJECT_PENALTY)
        elif net._inbound >= self.max_inbound_requests:
            error = "overloaded"
        else:
            handler = entry[0]
            net._inbound += 1
        self._work += 1
        self._nursery.start_soon(self._serve, net, item, handler, error)

    async def _serve(
        self, net: SimNetwork, item: _Delivery, handler: RequestHandler | None, error: str | None
    ) -> None:
        """Run the handler (if the request was admitted) and fly the response back."""
        scope = trio.CancelScope()
        net._scopes[scope] = None  # a crash cancels the handler and the response in flight
        try:
            with scope:
                if not net._alive:
                    return
                response = b""
                if handler is not None:
                    response, error = await self._run_handler(net, item, handler)
                await trio.sleep(self._sample_delay(net.local_id, item.src))
                self._respond(net, item, response, error)
        finally:
            if handler is not None:
                net._inbound -= 1
            net._scopes.pop(scope, None)
            self._finish_work()

    async def _run_handler(
        self, net: SimNetwork, item: _Delivery, handler: RequestHandler
    ) -> tuple[bytes, str | None]:
        """(response, None) or (b"", error). The handler gets the requester's deadline."""
        where = f"request handler of {net.local_id} for {item.name}"
        with trio.move_on_at(item.deadline):
            try:
                response = await handler(item.src, item.data)
            except BlyanError as err:
                logger.info("%s refused %s: %s", where, item.src, err)
                return b"", str(err) or type(err).__name__
            except Exception as err:
                logger.exception("%s failed", where)
                return b"", f"internal error ({type(err).__name__})"
            if not isinstance(response, bytes):
                logger.error("%s returned %s, not bytes", where, type(response).__name__)
                return b"", "internal error (response is not bytes)"
            return response, None
        return b"", "handler timed out"

    def _respond(
        self, net: SimNetwork, item: _Delivery, response: bytes, error: str | None
    ) -> None:
        requester = self._nodes.get(item.src)
        if requester is None or requester.incarnation != item.src_incarnation:
            return
        if self._blocked(net.local_id, item.src) is None and item.pending is not None:
            self._record("response", net.local_id, item.src, item.name, response)
            item.pending.resolve(response, error)

    async def _request(
        self, net: SimNetwork, peer: PeerId, protocol: str, data: bytes, timeout: float, cap: int
    ) -> bytes:
        self.stats.requests += 1
        now = trio.current_time()
        deadline = now + timeout
        refusal = self._refusal(net, peer)
        if refusal is not None:
            await self._refuse(net, peer, protocol, refusal, deadline)
        pending = _Pending()
        item = _Delivery(
            "request", net.local_id, net.incarnation, protocol, data, pending, deadline
        )
        self._enqueue(self._nodes[peer], now + self._sample_delay(net.local_id, peer), item)
        with trio.move_on_at(deadline):
            await pending.done.wait()
        if not pending.done.is_set():
            self.stats.request_timeouts += 1
            raise RequestTimeout(peer, protocol, f"no response within {timeout:g}s")
        if pending.error is not None:
            self.stats.request_errors += 1
            raise RemoteError(peer, protocol, pending.error)
        if len(pending.response) > cap:
            self.stats.request_errors += 1
            raise ResponseTooLarge(peer, protocol, f"{len(pending.response)} bytes > cap {cap}")
        self.stats.responses += 1
        return pending.response

    def _refusal(self, net: SimNetwork, peer: PeerId) -> str | None:
        """Why a request cannot leave: "self-down", "partition", why the dial is refused, or
        None when it can."""
        src, now = net.local_id, trio.current_time()
        target = self._nodes.get(peer)
        if not net._alive or self._nodes.get(src) is not net:
            return "self-down"
        if peer == src:
            return "cannot request self"
        if net._scores.is_banned(peer, now):
            return "peer is banned"
        if target is None:
            return "unknown peer"
        if self._group(src) != self._group(peer):
            return "partition"
        if not target._alive:
            return "peer is down"
        if target._scores.is_banned(src, now):
            return "peer refuses the connection"
        return None

    async def _refuse(
        self, net: SimNetwork, peer: PeerId, protocol: str, refusal: str, deadline: float
    ) -> NoReturn:
        """Fail a request that cannot leave, after the time its failure takes to show."""
        if refusal in ("self-down", "partition"):
            await trio.sleep_until(deadline)
        else:  # a refused dial costs a round trip
            there = self._sample_delay(net.local_id, peer)
            back = self._sample_delay(peer, net.local_id)
            await trio.sleep_until(min(deadline, trio.current_time() + there + back))
        if refusal == "partition" or (refusal != "self-down" and trio.current_time() >= deadline):
            self.stats.request_timeouts += 1
            raise RequestTimeout(peer, protocol, "no response before the deadline")
        self.stats.request_unreachable += 1
        reason = "this node is down" if refusal == "self-down" else refusal
        raise PeerUnreachable(peer, protocol, reason)
