"""`blyan sim`: many nodes on the simulated network, faults from a seed, invariants checked.

    report = run_sim(SimConfig(seed=42, nodes=7, byzantine=2, faults=("crash", "partition")))

Each node is the daemon's own pair of an `Engine` and a `SyncService` over a `SimNetwork`; a
byzantine node gets substitutes (`node.sim.byzantine`), never another engine. The run is a pure
function of its seed (`node.sim.scenario`); the report says whether every invariant held
(`node.sim.checks`), and a failing seed replays exactly with the command in the report.

Every node runs the daemon's content and data services (`node.sim.data`): datasets are real
content, audited by the real L0 audit and voted on by what each validator computed; their
stores live in a temporary directory the run removes (`close`). A learning run
(`SimConfig.deltas`, `forgeries`) adds to every node a PoL service and a blob store, and to the
workload contributors who train real deltas and submit them (`node.sim.learning`).
"""

from __future__ import annotations

import gc
import logging
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from chain import codec, crypto
from chain.blobs import BlobStore
from chain.kv import MemoryKV
from chain.store import ChainStore
from chain.types import CHAIN_IDS, Transaction
from node.core.feed import Feed
from node.engine.config import EngineConfig
from node.engine.engine import Engine
from node.engine.ports import BlockBuilder
from node.sim import checks
from node.sim.byzantine import Behaviour, ByzantineNetwork, InvalidBlockBuilder, spam
from node.sim.checks import Checker, Violation
from node.sim.data import DataWorld
from node.sim.faults import run_faults
from node.sim.scenario import SIM_NETWORK, SimConfig, make_sim_pact
from node.sim.workload import Workload
from node.sync.config import SyncTiming
from node.sync.service import SyncService
from p2p.network import Network
from p2p.sim import FaultConfig, SimNetwork, SimNetworkHub, run_simulation

if TYPE_CHECKING:
    from node.pol.submit import SubmissionService
    from node.sim.learning import Learning

logger = logging.getLogger(__name__)

__all__ = ["SimConfig", "Simulation", "Violation", "run_sim"]

LATENCY_MS = (5.0, 40.0)
TICK_S = 0.001
"""Messages arrive on a 1 ms grid (`SimNetworkHub.tick_s`): what falls due in one millisecond is
delivered in one wakeup per node, which is what keeps a run of hundreds of nodes affordable."""
RESUBMIT_EVERY_S = 3.0
QUIET_END_S = 6.0
"""The last seconds of a run submit nothing, so that heights settle."""


@dataclass
class SimNode:
    name: str
    key: crypto.PrivateKey
    kv: MemoryKV
    behaviour: Behaviour
    feed: Feed = field(default_factory=Feed)
    """The node's feed, kept across its restarts (the checker follows it)."""
    scope: trio.CancelScope | None = None
    engine: Engine | None = None
    up: bool = True
    dir: Path | None = None
    """Learning runs: the node's directory (votes, submissions), kept across restarts."""
    blobs: BlobStore | None = None
    """Learning runs: the node's blob store, kept across restarts."""
    submissions: dict[str, SubmissionService] = field(default_factory=dict)
    """Learning runs: the SubmissionServices of the contributors it hosts, while it is up."""
    ready: trio.Event = field(default_factory=trio.Event)
    """Set once the node's services run; a crash replaces it."""
    started: bool = False
    """Whether it ran before (a restart loads its store from its KV)."""


class Simulation:
    """One run. A learning run holds a temporary directory until `close` (`run_sim` calls it);
    `workdir` puts it somewhere else, for a caller that wants to look at it afterwards."""

    def __init__(self, cfg: SimConfig, workdir: Path | None = None) -> None:
        self.cfg = cfg
        self.pact, self.node_keys, client_keys = make_sim_pact(cfg)
        self.genesis_hash = codec.hash_of(self.pact)
        self.engine_config = EngineConfig.from_params(self.pact.params)
        # Every node starts from the same genesis: build it once, give each node a copy of its
        # records, and its first start the states built (immutable; a restart reloads its own).
        genesis_kv = MemoryKV()
        genesis = ChainStore.open(genesis_kv, self.pact)
        genesis_records = list(genesis_kv.iterate(b""))
        self._genesis_states = {chain_id: genesis.state(chain_id) for chain_id in CHAIN_IDS}
        self.nodes: list[SimNode] = []
        for i in range(cfg.nodes):
            behaviour = Behaviour()
            if i < cfg.byzantine:
                kind = cfg.byzantine_kinds[i % len(cfg.byzantine_kinds)]
                behaviour = Behaviour(**{kind: True})
            kv = MemoryKV()
            kv.write_batch(genesis_records, [])
            self.nodes.append(SimNode(f"n{i}", self.node_keys[i], kv, behaviour))
        self.honest = {n.name for n in self.nodes if n.behaviour.is_honest}
        self.checker = Checker(self.honest)
        for node in self.nodes:
            self.checker.watch(node.name, node.feed)
        self.workload = Workload(cfg, self.pact, client_keys)
        self.heal_time = 0.0
        self.hub: SimNetworkHub | None = None
        self._own_workdir = workdir is None
        self.workdir: Path | None = Path(tempfile.mkdtemp(prefix="blyan-sim-")) if workdir is None else Path(workdir)
        self.data = DataWorld(self.pact, self.workdir)
        self.learning: Learning | None = None
        if cfg.learning:
            self._setup_learning()

    def _setup_learning(self) -> None:
        from node.sim.learning import Learning

        hosts = [i for i, n in enumerate(self.nodes) if n.name in self.honest]
        self.learning = Learning(self.cfg, self.pact, self.workdir, hosts)
        try:
            for node in self.nodes:
                node.dir = self.workdir / node.name
                node.blobs = BlobStore(node.dir / "blobs")
                for data in self.learning.genesis_blobs.values():
                    node.blobs.put(data)
            self.learning.prepare()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Remove the run's temporary directory, if it made one."""
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    # --- nodes ------------------------------------------------------------------------------

    async def _run_node(self, node: SimNode, net: SimNetwork, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if node.started:
            store = ChainStore.open(node.kv)
        else:  # its genesis records, as `ChainStore.open(kv, pact)` leaves an empty store
            node.started = True
            store = ChainStore(node.kv, self.pact, dict(self._genesis_states))
        incarnation = str(net.incarnation)
        rng = self.hub.derive_rng("engine", node.name, incarnation)
        network: Network = net
        builder = BlockBuilder()
        b = node.behaviour
        if b.silent or b.withhold_votes or b.equivocate:
            network = ByzantineNetwork(net, b, node.key, SIM_NETWORK, self.hub.derive_rng("byzantine", node.name,
                                                                                          incarnation))
        if b.invalid_proposals:
            builder = InvalidBlockBuilder()
        engine = Engine(store, node.key, network, net, self.engine_config, feed=node.feed, name=node.name,
                        rng=rng, builder=builder)
        sync = SyncService(engine, SyncTiming(), rng=rng, name=node.name)
        node.engine = engine
        with trio.CancelScope() as scope:
            node.scope = scope
            task_status.started()
            async with trio.open_nursery() as nursery:
                await nursery.start(engine.run)
                await nursery.start(sync.run)
                await self.data.run_node_services(node.name, node.key, engine, b, nursery,
                                                  self.hub.derive_rng("data", node.name, incarnation))
                if self.learning is not None:
                    await self.learning.run_node_services(node, self.nodes.index(node), engine, nursery)
                node.ready.set()
                if b.spam:
                    nursery.start_soon(spam, net, SIM_NETWORK, rng)

    async def _start_node(self, nursery: trio.Nursery, node: SimNode, net: SimNetwork) -> None:
        node.up = True
        await nursery.start(self._run_node, node, net)

    def crash(self, node: SimNode) -> None:
        node.up = False
        node.submissions = {}
        node.ready = trio.Event()
        if node.scope is not None:
            node.scope.cancel()
        self.hub.crash(node.name)

    async def restart(self, nursery: trio.Nursery, node: SimNode) -> None:
        await self._start_node(nursery, node, self.hub.restart(node.name))

    def live_honest(self) -> list[SimNode]:
        return [n for n in self.nodes if n.up and n.name in self.honest and n.engine is not None]

    def honest_validators(self) -> list[SimNode]:
        """Honest nodes in the validator set in force now (it changes at epoch boundaries)."""
        live = self.live_honest()
        if not live:
            return []
        members = {v.address for v in live[0].engine.validators().validators}
        return [n for n in self.nodes if n.name in self.honest and n.key.address in members]

    # --- what the workload asks of the cluster ------------------------------------------------

    def submit(self, tx: Transaction, rng: random.Random) -> None:
        live = self.live_honest()
        if live:
            live[rng.randrange(len(live))].engine.submit_tx(tx)

    def reference_store(self) -> ChainStore | None:
        live = self.live_honest()
        return live[0].engine.store if live else None

    # --- scenario ---------------------------------------------------------------------------

    async def main(self) -> dict:
        cfg = self.cfg
        faults = FaultConfig(
            latency_ms=LATENCY_MS,
            loss=0.05 if "loss" in cfg.faults else 0.0,
            duplicate=0.05 if "duplicate" in cfg.faults else 0.0,
            reorder=0.2 if "reorder" in cfg.faults else 0.0,
        )
        async with SimNetworkHub(cfg.seed, faults, tick_s=TICK_S, peers_per_node=cfg.peers_per_node) as hub:
            self.hub = hub
            hub.set_bridges({n.name for n in self.nodes if not n.behaviour.is_honest})
            async with trio.open_nursery() as nursery:
                for node in self.nodes:
                    await self._start_node(nursery, node, hub.add_node(node.name))
                if "skew" in cfg.faults:
                    for node in self.nodes:
                        hub.set_clock_skew(node.name, hub.rng.randrange(-2000, 2000))
                nursery.start_soon(self._workload)
                if self.learning is not None:
                    nursery.start_soon(self.learning.run, self.nodes)
                await run_faults(self, nursery)
                hub.faults = FaultConfig(latency_ms=LATENCY_MS)
                self.heal_time = trio.current_time()
                await trio.sleep(max(0.0, cfg.duration - trio.current_time()))
                nursery.cancel_scope.cancel()
        return self._report()

    async def _workload(self) -> None:
        cfg, w = self.cfg, self.workload
        rng = self.hub.derive_rng("workload")
        if cfg.rotate_validators:
            await trio.sleep(2.0)
            w.rotate(self, self.node_keys, self.hub.rng)
        stop = cfg.duration - cfg.liveness_bound
        resubmit_at = 0.0
        while trio.current_time() < stop:
            await trio.sleep(rng.expovariate(cfg.tx_rate))
            now = trio.current_time()
            if now >= stop:
                break
            client = w.clients[1 + rng.randrange(len(w.clients) - 1)]
            roll = rng.random()
            if roll < 0.08 and now < stop - 5.0:
                self._submit_dataset(client, rng)
            elif len(client.pending) < 4:
                w.submit_transfer(self, client, rng)
            if now >= resubmit_at:
                resubmit_at = now + RESUBMIT_EVERY_S
                self._reveal_honeypots(rng)
                w.resubmit(self, rng)
        # Keep resubmitting what is not final yet, as a wallet would, until the run ends; the
        # validators' data services keep auditing and voting on their own.
        while trio.current_time() < cfg.duration - QUIET_END_S:
            await trio.sleep(RESUBMIT_EVERY_S)
            if trio.current_time() < stop:
                self._reveal_honeypots(rng)
            w.resubmit(self, rng)

    def _reveal_honeypots(self, rng: random.Random) -> None:
        """The honeypot operator (the first client) reveals the labels of decided honeypots."""
        operator = self.workload.clients[0]
        for tx in self.data.reveal_honeypots(self, operator):
            self.workload.track(operator, tx)
            self.submit(tx, rng)

    def _submit_dataset(self, client: Any, rng: random.Random) -> None:
        """A contributor's dataset: its content held by a live honest node (its own node, which
        serves it), the transaction handed to any."""
        live = self.live_honest()
        if not live:
            return
        host = live[rng.randrange(len(live))]
        tx = self.data.submit_honeypot(self, client, host.name) or self.data.submit(self, client, host.name, rng)
        if tx is not None:
            self.workload.track(client, tx)
            self.workload.datasets.append(tx.hash())
            self.submit(tx, rng)

    # --- invariants -------------------------------------------------------------------------

    def _report(self) -> dict:
        self.checker.collect()
        violations = list(self.checker.violations)
        stores = {n.name: ChainStore.open(n.kv) for n in self.nodes if n.name in self.honest}
        heights, digests, safety, state_roots = checks.check_agreement(stores, violations)
        ledger = checks.check_ledgers(stores, violations)
        reverifier = self._make_reverifier(violations)
        validity = checks.check_validity(self.pact, stores, violations,
                                         on_import=reverifier.on_import if reverifier is not None else None)
        w = self.workload
        liveness = checks.check_liveness(stores, heights, w.submitted, w.datasets, self.cfg.liveness_bound,
                                         violations)
        safety = safety and not any(v.invariant == "no-double-sign" for v in violations)
        lagged = not any(v.invariant == "checker" for v in violations)
        digest = checks.compute_run_digest(digests)
        learning = self._check_learning(stores, reverifier, violations) if reverifier is not None else None
        data = self.data.check(stores, self.honest)
        for problem in data["problems"]:
            violations.append(Violation("data-quality", problem))
        ok = safety and liveness and ledger and state_roots and validity and lagged and data["ok"]
        ok = ok and (learning is None or learning["ok"])
        return {
            "seed": self.cfg.seed,
            "nodes": self.cfg.nodes,
            "validators": self.cfg.validators,
            "byzantine": self.cfg.byzantine,
            "byzantine_behaviours": {n.name: n.behaviour.names() for n in self.nodes if not n.behaviour.is_honest},
            "faults": list(self.cfg.faults),
            "sim_seconds": self.cfg.duration,
            "heights": heights,
            "safety": safety,
            "liveness": liveness,
            "validity": validity,
            "ledger_balanced": ledger,
            "state_roots_agree": state_roots,
            "digest": digest,
            "digests": digests,
            "transactions": len(w.submitted),
            "penalties": self.checker.penalties,
            "max_round": self.checker.max_round,
            "messages": self.hub.stats.as_dict(),
            "ok": ok,
            "violations": [{"invariant": v.invariant, "detail": v.detail} for v in violations[:20]],
            "replay": self.cfg.command(),
            "datasets": {k: v for k, v in data.items() if k != "problems"},
            **({"learning": learning} if learning is not None else {}),
        }

    def _make_reverifier(self, violations: list[Violation]) -> checks.Reverifier | None:
        """Learning runs: what re-verifies each delta the validity replay sees applied, with
        the first honest node's blobs."""
        if self.learning is None:
            return None
        ref = next(n for n in self.nodes if n.name in self.honest)
        return checks.Reverifier(self.learning.make_reverify(ref.blobs, ref.key.public_key), violations)

    def _check_learning(self, stores: dict[str, ChainStore], reverifier: checks.Reverifier,
                        violations: list[Violation]) -> dict:
        """No forged delta accepted, every accepted one re-verified (during the validity
        replay), honest heads and the bytes materialised for them agree."""
        ref = stores[next(n.name for n in self.nodes if n.name in self.honest)]
        forged = checks.check_no_forged_accepted(stores, self.learning.forged, violations)
        heads = checks.check_heads(stores, violations)
        materialised = checks.check_materialised(stores, self.learning.make_materialise(self.nodes), violations)
        reverified = reverifier.check_complete(ref)
        claims = self.learning.describe(ref)
        return {
            "ok": forged and heads and materialised >= 0 and reverified,
            "no_forged_accepted": forged,
            "heads_agree": heads,
            "materialised_compared": materialised,
            "reverified": reverifier.checked,
            "accepted": sum(c["status"] == "accepted" for c in claims),
            "honest_accepted": sum(c["status"] == "accepted" and c["kind"] == "honest" for c in claims),
            "claims": claims,
        }


GC_THRESHOLDS = (100_000, 50, 1000)
"""The collector's thresholds while a simulation runs. A run allocates millions of small
objects that live for milliseconds (deliveries, outcomes, votes) next to a large heap that lives
for the whole run (stores, states, links); with the default (700, 10, 10) the collector scans the
long-lived heap so often that it took a third of a 100-node run (measured: 4.5 s -> 3.0 s)."""


def run_sim(cfg: SimConfig) -> dict:
    """One simulation, start to verdict; deterministic in `cfg`."""
    started = time.perf_counter()
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        sim = Simulation(cfg)
        try:
            report = run_simulation(sim.main, seed=cfg.seed)
        finally:
            sim.close()
    finally:
        gc.set_threshold(*thresholds)
    report["wall_seconds"] = round(time.perf_counter() - started, 3)
    return report
