"""The hub of the simulated network: the wire between the nodes' `SimNetwork`s. It owns every
delivery task and each node's delivery heap, samples each copy's faults on its link, decides who
can reach whom (partitions, bridges, crashes, bans), and records every event for the digest.
Requests take their own path, in `p2p.sim.requests`, which shares the hub's internals (the wire,
the connectivity checks, the event record)."""

from __future__ import annotations

import heapq
import logging
import math
import random
from collections import deque
from contextlib import AsyncExitStack
from types import TracebackType
from typing import NoReturn

import trio
import trio.testing

from chain.errors import BlyanError
from p2p.network import REJECT_PENALTY, PeerId, ScoreConfig, Verdict
from p2p.sim.endpoint import SimNetwork
from p2p.sim.faults import FaultConfig, LinkRandom, derive_seed
from p2p.sim.requests import accept_request
from p2p.sim.trace import SimStats, TraceEvent, TraceLog
from p2p.sim.wire import Delivery, Link, Parking

logger = logging.getLogger(__name__)


class SimError(BlyanError):
    """A simulation scenario that misuses the hub (unknown or duplicate node, bad partition)."""


class SimNetworkHub:
    """The simulated wire between `SimNetwork`s; owns every delivery task.

    Use as `async with SimNetworkHub(seed, faults) as hub:`; leaving the block stops all
    deliveries. `faults` applies to every link without its own `set_link`. With `tick_s > 0`
    messages arrive on a grid of that step (each delay rounded up to it), so that the copies
    falling due in one step are delivered together: one wakeup per step and node however many
    messages it brings (0: the exact sampled times)."""

    def __init__(
        self,
        seed: int,
        faults: FaultConfig | None = None,
        *,
        score_config: ScoreConfig | None = None,
        max_in_flight_per_link: int = 1024,
        max_inbound_requests: int = 64,
        handler_timeout: float = 10.0,
        trace_limit: int = 0,
        tick_s: float = 0.0,
        peers_per_node: int = 0,
    ) -> None:
        if not (tick_s >= 0 and math.isfinite(tick_s)):
            raise SimError(f"tick_s must be >= 0 and finite, got {tick_s}")
        if peers_per_node < 0:
            raise SimError(f"peers_per_node must be >= 0, got {peers_per_node}")
        self.seed = seed
        self.tick_s = tick_s
        self.peers_per_node = peers_per_node
        self._graph: dict[PeerId, set[PeerId]] = {}
        """With `peers_per_node`: who may be connected to whom (symmetric; kept across crashes)."""
        self.faults = faults or FaultConfig()
        self.score_config = score_config or ScoreConfig()
        self.max_in_flight_per_link = max_in_flight_per_link
        self.max_inbound_requests = max_inbound_requests
        self.handler_timeout = handler_timeout
        """How long a handler set without its own `timeout_s` may run (as
        `Libp2pConfig.request_timeout`): past it the requester is answered "handler timed out"."""
        self.stats = SimStats()
        self._log = TraceLog(trace_limit)
        self.trace: deque[TraceEvent] = self._log.events
        """The last `trace_limit` events (empty when 0)."""
        self.rng = self.derive_rng("scenario")
        """For the scenario's own choices (which node to crash, when)."""
        self._nodes: dict[PeerId, SimNetwork] = {}
        self._links: dict[tuple[PeerId, PeerId], Link] = {}
        self._link_faults: dict[tuple[PeerId, PeerId], FaultConfig] = {}
        self._groups: dict[PeerId, int] | None = None
        self._skew_ms: dict[PeerId, int] = {}
        self._bridges: set[PeerId] = set()
        self._up: dict[PeerId, set[PeerId]] = {}
        """Who is connected to whom now (both directions)."""
        self._ban_checks: set[float] = set()
        self._any_ban = False
        self._subscribers: dict[str, list[tuple[PeerId, SimNetwork]]] = {}
        """Per topic, the live subscribers in peer order (cleared whenever that can change)."""
        self._alarms: list[tuple[float, int, SimNetwork]] = []
        """(due, order, node): when a parked delivery task has its next item due."""
        self._alarm_order = 0
        self._timer: trio.CancelScope | None = None
        self._timer_idle = Parking()
        """The timer task while it waits for a first alarm (no alarm set)."""
        self._work = 0
        self._idle: trio.Event | None = None
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> SimNetworkHub:
        if self._stack is not None:
            raise SimError("a hub runs once")
        self._stack = AsyncExitStack()
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        self._nursery.start_soon(self._timer_loop)
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
        """A new live node, connected to every live node its partition group allows; with
        `peers_per_node`, only to its neighbours in the peer graph (it dials half that many of
        the nodes added before it, chosen from the seed, and is dialled by later ones)."""
        self._require_running()
        if not peer_id or not isinstance(peer_id, str):
            raise SimError(f"peer id must be a non-empty str, got {peer_id!r}")
        if peer_id in self._nodes:
            raise SimError(f"node {peer_id} already exists")
        if self.peers_per_node:
            self._join_graph(peer_id)
        return self._start(SimNetwork(self, peer_id, 0))

    def _join_graph(self, peer_id: PeerId) -> None:
        earlier = sorted(self._graph)
        dials = min(len(earlier), max(1, self.peers_per_node // 2))
        mine = self._graph[peer_id] = set(self.derive_rng("graph", peer_id).sample(earlier, dials))
        for other in mine:
            self._graph[other].add(peer_id)

    def neighbours(self, peer_id: PeerId) -> list[PeerId]:
        """Who `peer_id` is connected to when all are up and no partition or ban is in the way."""
        if not self.peers_per_node:
            return sorted(p for p in self._nodes if p != peer_id)
        return sorted(self._graph.get(peer_id, ()))

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
        self._subscribers.clear()
        logger.info("sim: %s crashed", peer_id)
        self._refresh_links(peer_id)

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
        return self._log.compute_digest()

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
        self._subscribers.clear()
        self._nursery.start_soon(self._delivery_loop, net)
        self._refresh_links(net.local_id)
        return net

    def _group(self, peer: PeerId) -> int:
        return 0 if self._groups is None else self._groups.get(peer, -1)

    def _blocked(self, a: PeerId, b: PeerId, now: float | None = None) -> str | None:
        """Why a message from a to b cannot pass now: crash, partition, banned, or None."""
        na, nb = self._nodes.get(a), self._nodes.get(b)
        if na is None or nb is None or not na._alive or not nb._alive:
            return "crash"
        groups = self._groups
        if (groups is not None and groups.get(a, -1) != groups.get(b, -1)
                and a not in self._bridges and b not in self._bridges):
            return "partition"
        if self._any_ban:  # no node has banned anyone yet: nothing to look up
            if now is None:
                now = trio.current_time()
            if na._scores.is_banned(b, now) or nb._scores.is_banned(a, now):
                return "banned"
        return None

    def _refresh_links(self, only: PeerId | None = None) -> None:
        """Recompute which pairs are connected and queue an event to each end of a change;
        with `only`, just the pairs of that node (it started or crashed: no other pair changed)."""
        live = sorted(p for p, n in self._nodes.items() if n._alive)
        now, links, graph = trio.current_time(), self._up, self._graph if self.peers_per_node else None
        if only is None:
            if graph is None:
                pairs = [(a, b) for i, a in enumerate(live) for b in live[i + 1 :]]
            else:
                alive = set(live)
                pairs = [(a, b) for a in live for b in sorted(graph[a]) if a < b and b in alive]
            before = {(a, b) for a, peers in links.items() for b in peers if a < b}
        else:
            candidates = live if graph is None else sorted(set(live) & graph[only])
            pairs = [(a, only) if a < only else (only, a) for a in candidates if a != only]
            before = {(a, only) if a < only else (only, a) for a in links.get(only, ())}
        up = {(a, b) for a, b in pairs if self._blocked(a, b, now) is None}
        for a, b in sorted(before - up):
            links[a].discard(b)
            links[b].discard(a)
            self._notify(a, b, False)
            self._notify(b, a, False)
        for a, b in sorted(up - before):
            links.setdefault(a, set()).add(b)
            links.setdefault(b, set()).add(a)
            self._notify(a, b, True)
            self._notify(b, a, True)

    def _notify(self, dst: PeerId, peer: PeerId, connected: bool) -> None:
        net = self._nodes[dst]
        if net._alive:
            item = Delivery("event", peer, self._nodes[peer].incarnation, connected=connected)
            self._enqueue(net, trio.current_time(), item)

    def _on_ban(self, net: SimNetwork, peer: PeerId, until: float) -> None:
        logger.info("sim: %s bans %s until t=%.3f", net.local_id, peer, until)
        self._any_ban = True
        self._refresh_links()
        if until not in self._ban_checks and self._nursery is not None:
            self._ban_checks.add(until)
            self._nursery.start_soon(self._ban_check, until)

    async def _ban_check(self, until: float) -> None:
        await trio.sleep_until(until)
        self._ban_checks.discard(until)
        self._refresh_links()

    # --- internals: the wire ----------------------------------------------------------------

    def _link(self, src: PeerId, dst: PeerId) -> Link:
        link = self._links.get((src, dst))
        if link is None:
            link = self._links[(src, dst)] = Link(LinkRandom(derive_seed(self.seed, "link", src, dst)))
        return link

    def _sample_delay(self, src: PeerId, dst: PeerId) -> float:
        faults = self._link_faults.get((src, dst), self.faults)
        return faults.sample_delay(self._link(src, dst).rng)

    def _enqueue(self, net: SimNetwork, due: float, item: Delivery, link: Link | None = None,
                 now: float | None = None) -> bool:
        if link is None:
            link = self._link(item.src, net.local_id)
        if item.kind != "event":
            if link.in_flight >= self.max_in_flight_per_link:
                return False
            link.in_flight += 1
        link.seq += 1
        if self.tick_s and item.kind != "event":
            due = math.ceil(due / self.tick_s) * self.tick_s
        heap = net._heap
        heapq.heappush(heap, (due, item.src, link.seq, item))
        self._work += 1
        if heap[0][3] is item:  # a new head: the node's delivery task must look sooner
            self._set_alarm(net, due, now)
        return True

    def _release(self, dst: PeerId, item: Delivery) -> None:
        if item.kind != "event":
            self._link(item.src, dst).in_flight -= 1
        self._finish_work()

    def _begin_work(self) -> None:
        self._work += 1

    def _finish_work(self) -> None:
        self._work -= 1
        if self._work == 0 and self._idle is not None:
            self._idle.set()

    def _record(self, kind: str, src: PeerId, dst: PeerId, name: str, data: bytes,
                now: float | None = None, data_hash: bytes | None = None) -> None:
        self._log.record(trio.current_time() if now is None else now, kind, src, dst, name, data, data_hash)

    def _drop(self, reason: str, src: PeerId, dst: PeerId, item: Delivery, now: float | None = None) -> None:
        counter = f"dropped_{reason}"
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        self._record(f"drop-{reason}", src, dst, item.name, item.data, now, item.get_data_hash())

    def _subscribers_of(self, topic: str) -> list[tuple[PeerId, SimNetwork]]:
        subscribers = self._subscribers.get(topic)
        if subscribers is None:
            subscribers = self._subscribers[topic] = [
                (peer, net) for peer, net in sorted(self._nodes.items()) if net._alive and topic in net._gossip
            ]
        return subscribers

    def _send_gossip(self, sender: SimNetwork, topic: str, data: bytes) -> None:
        src, now, stats = sender.local_id, trio.current_time(), self.stats
        item = Delivery("gossip", src, sender.incarnation, topic, data)  # one for every copy
        for dst, net in self._subscribers_of(topic):
            if dst == src:
                continue
            stats.sent += 1
            blocked = self._blocked(src, dst, now)
            if blocked is not None:
                self._drop(blocked, src, dst, item, now)
                continue
            faults = self._link_faults.get((src, dst), self.faults)
            link = self._link(src, dst)
            rng = link.rng
            if faults.loss and rng.random() < faults.loss:
                self._drop("loss", src, dst, item, now)
                continue
            copies = 1
            if faults.duplicate and rng.random() < faults.duplicate:
                stats.duplicated += 1
                copies = 2
            for _ in range(copies):
                if not self._enqueue(net, now + faults.sample_delay(rng), item, link, now):
                    self._drop("overflow", src, dst, item, now)

    # --- internals: delivery ----------------------------------------------------------------
    #
    # Each node's delivery task parks (no timeout of its own) while nothing on its heap is due;
    # one timer task holds an alarm per parked node with an item ahead and wakes it then. A
    # node woken once delivers everything due by then, so an instant costs one timer wakeup
    # however many nodes and messages it has, and no cancel scope expires per message.

    def _set_alarm(self, net: SimNetwork, due: float, now: float | None = None) -> None:
        if due >= net._alarm_due:
            return
        net._alarm_due = due
        if due <= (trio.current_time() if now is None else now):
            net._alarm_due = math.inf
            self._wake(net)
            return
        self._alarm_order += 1
        heapq.heappush(self._alarms, (due, self._alarm_order, net))
        timer = self._timer
        if timer is not None and due < timer.deadline:
            timer.deadline = due
        self._timer_idle.wake()

    def _wake(self, net: SimNetwork) -> None:
        net._parked.wake()

    def _ring_alarms(self) -> float:
        """Wake the nodes whose alarms are due; the time of the next alarm (inf: none)."""
        alarms, now = self._alarms, trio.current_time()
        while alarms:
            due, _, net = alarms[0]
            if due != net._alarm_due:  # a node woken earlier, or crashed: stale
                heapq.heappop(alarms)
            elif due <= now:
                heapq.heappop(alarms)
                net._alarm_due = math.inf
                self._wake(net)
            else:
                return due
        return math.inf

    async def _timer_loop(self) -> None:
        clock = trio.lowlevel.current_clock()
        if isinstance(clock, trio.testing.MockClock) and clock.autojump_threshold == 0:
            await self._drive_mock_clock(clock)
        while True:  # any other clock: a deadline per alarm
            with trio.CancelScope(deadline=self._ring_alarms()) as timer:
                self._timer = timer
                await trio.sleep_forever()
            self._timer = None

    async def _drive_mock_clock(self, clock: trio.testing.MockClock) -> NoReturn:
        """Under an autojumping `MockClock`, do its jumps: once every task is blocked, move the
        clock to the next alarm or the next deadline of trio's, whichever comes first (what
        the clock would do for a deadline). An alarm then costs no cancel scope."""
        while True:
            if self._ring_alarms() == math.inf:
                await self._timer_idle.park()  # trio's own autojump runs meanwhile
                continue
            await trio.testing.wait_all_tasks_blocked()
            due = self._ring_alarms()  # alarms set while it waited count too
            step = min(due - trio.current_time(), trio.lowlevel.current_statistics().seconds_to_next_deadline)
            if 0 < step < math.inf:
                clock.jump(step)

    async def _delivery_loop(self, net: SimNetwork) -> None:
        with trio.CancelScope() as scope:
            if not net._alive:
                return
            net._scopes[scope] = None
            heap = net._heap
            while True:
                now = trio.current_time()
                if heap and heap[0][0] <= now:
                    while heap and heap[0][0] <= now:  # everything due by now, in heap order
                        item = heapq.heappop(heap)[3]
                        try:
                            await self._dispatch(net, item)
                        finally:
                            self._release(net.local_id, item)
                    await trio.lowlevel.checkpoint()
                    continue
                if heap:
                    self._set_alarm(net, heap[0][0], now)
                await net._parked.park()  # until `_wake`: an alarm, or an item due now

    async def _dispatch(self, net: SimNetwork, item: Delivery) -> None:
        if item.kind == "event":
            self._deliver_event(net, item)
            return
        src, dst, now = item.src, net.local_id, trio.current_time()
        sender = self._nodes.get(src)
        blocked = self._blocked(src, dst, now)
        if sender is None or sender.incarnation != item.src_incarnation:
            blocked = "crash"
        if blocked is not None:
            if item.kind == "gossip":
                self._drop(blocked, src, dst, item, now)
            return  # a lost request leg: the requester times out
        if item.kind == "gossip":
            await self._deliver_gossip(net, item, now)
        else:
            accept_request(self, net, item)

    def _deliver_event(self, net: SimNetwork, item: Delivery) -> None:
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

    async def _deliver_gossip(self, net: SimNetwork, item: Delivery, now: float) -> None:
        handler, max_bytes = net._gossip[item.name]
        self.stats.delivered += 1
        self._record("gossip", item.src, net.local_id, item.name, item.data, now, item.get_data_hash())
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
