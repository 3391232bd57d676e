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
same instant are ordered the same way in every run. A delivery task with nothing due parks; the
hub's one timer task holds an alarm for each node's next item and, under an autojumping
`MockClock`, moves the clock itself once every task is blocked (to the next alarm or trio's next
deadline, whichever is first), so an alarm costs no cancel scope. A woken node delivers all that
is due by then. With `tick_s` (the simulation uses 1 ms) arrival times are rounded up to a grid,
so that what falls due in one step is one wakeup per node. A link's RNG is a SplitMix64 stream
(`LinkRandom`), one int of state for each of a run's N*(N-1) links. Conditions are checked
twice: when a copy is sent and when it arrives (a partition, crash or ban in between drops it). A gossip handler runs
in its node's delivery task: while it awaits, that node receives nothing else, so handlers stay
quick (validate, push to a channel). At most `max_in_flight_per_link` messages are in flight on
a link; beyond that gossip copies are dropped (`dropped_overflow`) and requests time out.

Requests travel the same heap; the receiver runs the handler in its own task (bounded by
`max_inbound_requests`) for at most its protocol's `timeout_s`, else the hub's `handler_timeout`
(10 s, as libp2p's `request_timeout`), or until the requester's deadline if that comes first
("handler timed out" past the limit), and the response flies back after a delay sampled on the
reverse link.
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

Where it lives: `hub` (the wire, delivery heaps, connectivity, scenario controls), `endpoint`
(`SimNetwork`, one node's `Network`), `requests` (the request path), `wire` (what is in
flight), `faults` (`FaultConfig`, seed derivation), `trace` (counters, trace events, the
digest), `scheduler` (`run_simulation`).
"""

from p2p.sim.endpoint import SimNetwork
from p2p.sim.faults import FaultConfig, derive_seed
from p2p.sim.hub import SimError, SimNetworkHub
from p2p.sim.scheduler import deterministic_scheduler, run_simulation
from p2p.sim.trace import SimStats, TraceEvent

__all__ = [
    "FaultConfig",
    "SimError",
    "SimNetwork",
    "SimNetworkHub",
    "SimStats",
    "TraceEvent",
    "derive_seed",
    "deterministic_scheduler",
    "run_simulation",
]
