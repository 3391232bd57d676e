"""`blyan sim`: many engines on the simulated network, faults from a seed, invariants checked.

A run is a pure function of its seed: keys, workload, faults, latencies and trio's scheduling
all derive from it, and time is `MockClock`'s. The report says whether every invariant held;
a failing seed replays exactly with the command in the report.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

import trio

from chain import codec, crypto
from chain.errors import BlyanError
from chain.kv import MemoryKV
from chain.pact import PACT_VERSION, GenesisAccount, GenesisPact, GenesisValidator
from chain.payloads import Transfer
from chain.reward import validate_supply
from chain.store import ChainStore
from chain.types import CHAIN_DATASET, CHAIN_IDS, CHAIN_NAMES, CHAIN_PARAMETER, CHAIN_REWARD, Transaction, TxBody
from chain.votes import SignedVote
from chain.tensors import KIND_EXPERT, TensorInfo, TensorRecord
from genesis.params import devnet_params
from genesis.testkit import TINY_MODEL
from node.engine import Behaviour, Engine, EngineConfig, EngineObserver
from p2p.sim import FaultConfig, SimNetworkHub, run_simulation

logger = logging.getLogger(__name__)

FAULT_KINDS = ("crash", "partition", "loss", "reorder", "duplicate", "skew")
BYZANTINE_KINDS = ("equivocate", "invalid_proposals", "withhold_votes", "silent", "spam")
SIM_NETWORK = "simnet"
SIM_EXPERT = TensorRecord(
    name="layer0.expert0", kind=KIND_EXPERT, version="1.0.0", blob_id=hashlib.sha256(b"sim-expert").digest(),
    size=4096, merkle_root=hashlib.sha256(b"sim-expert-root").digest(), tile_size=4 * 1024 * 1024,
    subtile_size=256 * 1024, tensors=(TensorInfo("w1", "F32", (32, 32)),),
)
"""The simulation's model has one expert (its weights are never loaded: deltas name blobs)."""
CLIENTS = 8
CLIENT_BALANCE = 10**12


@dataclass(frozen=True, slots=True)
class SimConfig:
    seed: int
    """Everything derives from it."""
    nodes: int = 4
    """Nodes in the network (validators first)."""
    validators: int = 4
    """Of which validators."""
    byzantine: int = 0
    """Of the validators, how many misbehave."""
    faults: tuple[str, ...] = ()
    """Any of FAULT_KINDS."""
    duration: float = 60.0
    """Simulated seconds."""
    tx_rate: float = 2.0
    """Client transactions per simulated second."""
    liveness_bound: float = 25.0
    """Seconds after the last fault heals (and the workload stops) within which everything
    pending must be final on every honest node."""
    byzantine_kinds: tuple[str, ...] = BYZANTINE_KINDS
    """Misbehaviours handed out to byzantine validators in turn."""
    epoch_length: int = 100
    """Reward-chain blocks per epoch (the validator set changes at epoch boundaries)."""
    rotate_validators: bool = False
    """Non-validator nodes stake and one genesis validator unstakes: the set changes mid-run."""

    def __post_init__(self) -> None:
        if not 1 <= self.validators <= self.nodes:
            raise ValueError("need 1 <= validators <= nodes")
        if not 0 <= self.byzantine <= self.validators:
            raise ValueError("need 0 <= byzantine <= validators")
        unknown = set(self.faults) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds: {', '.join(sorted(unknown))}")
        if self.duration <= self.liveness_bound:
            raise ValueError("duration must exceed the liveness bound")

    def command(self) -> str:
        faults = f" --faults {','.join(self.faults)}" if self.faults else ""
        return (
            f"blyan sim --nodes {self.nodes} --validators {self.validators} --byzantine {self.byzantine}"
            f"{faults} --seed {self.seed} --duration {self.duration:g} --json"
        )


@dataclass
class Violation:
    invariant: str
    detail: str


class Checker(EngineObserver):
    """Watches every node as it runs: commits, signed votes, penalties."""

    def __init__(self, honest: set[str]) -> None:
        self.honest = honest
        self.votes: dict[tuple, bytes] = {}
        self.violations: list[Violation] = []
        self.penalties = 0
        self.max_round = 0
        self.commit_order: list[tuple[str, int, int]] = []

    def on_vote_signed(self, node: str, signed: SignedVote) -> None:
        if node not in self.honest:
            return
        v = signed.vote
        key = (node, v.chain_id, v.height, v.round, v.step)
        earlier = self.votes.setdefault(key, v.block_hash)
        if earlier != v.block_hash:
            self.violations.append(Violation("no-double-sign", f"{node} signed two votes at {key[1:]}"))

    def on_commit(self, node: str, chain_id: int, block, state) -> None:  # noqa: ANN001
        self.commit_order.append((node, chain_id, block.header.height))

    def on_penalty(self, node: str, peer: str, reason: str) -> None:
        self.penalties += 1

    def on_round(self, node: str, chain_id: int, height: int, round: int) -> None:
        self.max_round = max(self.max_round, round)


@dataclass
class SimNode:
    name: str
    key: crypto.PrivateKey
    kv: MemoryKV
    behaviour: Behaviour
    scope: trio.CancelScope | None = None
    engine: Engine | None = None
    up: bool = True


@dataclass
class Client:
    """A wallet: signs transfers and resubmits them until they are final."""

    key: crypto.PrivateKey
    nonces: dict[int, int] = field(default_factory=dict)
    pending: list[Transaction] = field(default_factory=list)


def make_sim_pact(cfg: SimConfig) -> tuple[GenesisPact, list[crypto.PrivateKey], list[crypto.PrivateKey]]:
    vkeys = [crypto.PrivateKey.from_label(f"sim-validator-{i}") for i in range(cfg.nodes)]
    ckeys = [crypto.PrivateKey.from_label(f"sim-client-{i}") for i in range(CLIENTS)]
    from dataclasses import replace

    devnet = devnet_params()
    params = replace(devnet, staking=replace(
        devnet.staking, epoch_length=cfg.epoch_length,
        unbonding_period=max(cfg.epoch_length, devnet.staking.unbonding_period),
    ))
    pact = GenesisPact(
        version=PACT_VERSION, network_id=SIM_NETWORK, genesis_time_ms=0, params=params,
        validators=tuple(GenesisValidator(k.public_key, 1_000_000, f"v{i}") for i, k in enumerate(vkeys[: cfg.validators])),
        accounts=tuple(GenesisAccount(k.address, CLIENT_BALANCE) for k in ckeys)
        + tuple(GenesisAccount(k.address, CLIENT_BALANCE) for k in vkeys[cfg.validators:]),
        model=TINY_MODEL, tensors=(SIM_EXPERT,), datasets=(), bootstrap=(),
    )
    return pact, vkeys, ckeys


class Simulation:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.pact, vkeys, ckeys = make_sim_pact(cfg)
        self.genesis_hash = codec.hash_of(self.pact)
        self.engine_config = EngineConfig.from_params(self.pact.params)
        self.nodes: list[SimNode] = []
        for i in range(cfg.nodes):
            behaviour = Behaviour()
            if i < cfg.byzantine:
                kind = cfg.byzantine_kinds[i % len(cfg.byzantine_kinds)]
                behaviour = Behaviour(**{kind: True})
            kv = MemoryKV()
            ChainStore.open(kv, self.pact)
            self.nodes.append(SimNode(f"n{i}", vkeys[i], kv, behaviour))
        self.honest = {n.name for n in self.nodes if n.behaviour.is_honest}
        self.checker = Checker(self.honest)
        self.clients = [Client(k) for k in ckeys]
        self.wallets: list[Client] = []
        self.submitted: list[tuple[int, bytes]] = []
        self.datasets: list[bytes] = []
        self.heal_time = 0.0
        self.hub: SimNetworkHub | None = None

    # --- nodes ------------------------------------------------------------------------------

    async def _run_node(self, node: SimNode, net, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
        store = ChainStore.open(node.kv)
        engine = Engine(
            store, node.key, net, net, self.engine_config, node.behaviour, self.checker, node.name,
            self.hub.derive_rng("engine", node.name, str(net.incarnation)),
        )
        node.engine = engine
        with trio.CancelScope() as scope:
            node.scope = scope
            task_status.started()
            await engine.run()

    async def _start_node(self, nursery: trio.Nursery, node: SimNode, net) -> None:  # noqa: ANN001
        node.up = True
        await nursery.start(self._run_node, node, net)

    def _crash(self, node: SimNode) -> None:
        node.up = False
        if node.scope is not None:
            node.scope.cancel()
        self.hub.crash(node.name)

    # --- scenario ---------------------------------------------------------------------------

    async def main(self) -> dict:
        cfg = self.cfg
        faults = FaultConfig(
            latency_ms=(5.0, 40.0),
            loss=0.05 if "loss" in cfg.faults else 0.0,
            duplicate=0.05 if "duplicate" in cfg.faults else 0.0,
            reorder=0.2 if "reorder" in cfg.faults else 0.0,
        )
        async with SimNetworkHub(cfg.seed, faults) as hub:
            self.hub = hub
            hub.set_bridges({n.name for n in self.nodes if not n.behaviour.is_honest})
            async with trio.open_nursery() as nursery:
                for node in self.nodes:
                    await self._start_node(nursery, node, hub.add_node(node.name))
                if "skew" in cfg.faults:
                    for node in self.nodes:
                        hub.set_clock_skew(node.name, hub.rng.randrange(-2000, 2000))
                nursery.start_soon(self._workload)
                await self._faults(nursery)
                hub.faults = FaultConfig(latency_ms=(5.0, 40.0))
                self.heal_time = trio.current_time()
                await trio.sleep(max(0.0, cfg.duration - trio.current_time()))
                nursery.cancel_scope.cancel()
        return self._report()

    async def _faults(self, nursery: trio.Nursery) -> None:
        """Faults during the first part of the run; everything heals by `fault_end`."""
        cfg, hub, rng = self.cfg, self.hub, self.hub.rng
        fault_end = max(1.0, cfg.duration - cfg.liveness_bound - 5.0)
        kinds = [k for k in cfg.faults if k in ("crash", "partition")]
        while kinds and trio.current_time() < fault_end:
            await trio.sleep(rng.uniform(1.0, 5.0))
            if trio.current_time() >= fault_end:
                break
            kind = kinds[rng.randrange(len(kinds))]
            length = min(rng.uniform(1.0, 8.0), max(0.0, fault_end - trio.current_time()))
            if kind == "partition":
                names = [n.name for n in self.nodes if n.name in self.honest]
                if len(names) < 2:
                    continue
                rng.shuffle(names)
                cut = rng.randrange(1, len(names))
                hub.partition([set(names[:cut]), set(names[cut:])])
                await trio.sleep(length)
                hub.heal()
            else:
                node = self.nodes[rng.randrange(len(self.nodes))]
                if not node.up:
                    continue
                self._crash(node)
                await trio.sleep(length)
                await self._start_node(nursery, node, hub.restart(node.name))
        wait = fault_end - trio.current_time()
        if wait > 0:
            await trio.sleep(wait)

    async def _rotate(self) -> None:
        """Every non-validator node stakes, and the last genesis validator unstakes all: at the
        next epoch boundary the set changes while the chains keep finalizing."""
        from chain.payloads import Stake, Unstake

        await trio.sleep(2.0)
        moves = [(node, Stake(2_000_000)) for node in self.nodes[self.cfg.validators:]]
        moves.append((self.nodes[self.cfg.validators - 1], Unstake(1_000_000)))
        for node, payload in moves:
            wallet = Client(node.key)
            tx = self._sign(wallet, payload)
            self.wallets.append(wallet)
            self._track(wallet, tx)
            self._submit(tx, self.hub.rng)

    async def _workload(self) -> None:
        cfg, rng = self.cfg, self.hub.derive_rng("workload")
        if cfg.rotate_validators:
            await self._rotate()
        stop = cfg.duration - cfg.liveness_bound
        resubmit_at = 0.0
        while trio.current_time() < stop:
            await trio.sleep(rng.expovariate(cfg.tx_rate))
            now = trio.current_time()
            if now >= stop:
                break
            client = self.clients[1 + rng.randrange(len(self.clients) - 1)]
            roll = rng.random()
            if roll < 0.08 and now < stop - 5.0:
                self._submit_dataset(client, rng)
            elif roll < 0.14 and not self.clients[0].pending:
                self._submit_delta(self.clients[0], rng)
            elif len(client.pending) < 4:
                to = self.clients[rng.randrange(len(self.clients))].key.address
                tx = self._sign(client, Transfer(to, rng.randrange(1, 1000)))
                self._track(client, tx)
                self._submit(tx, rng)
            if now >= resubmit_at:
                resubmit_at = now + 3.0
                self._resubmit(rng)
                self._drive_datasets(rng)
        # Keep resubmitting what is not final yet, as a wallet would, until the run ends; the
        # validators' operators keep auditing and voting.
        while trio.current_time() < cfg.duration - 6.0:  # then a quiet end: heights settle
            await trio.sleep(3.0)
            self._resubmit(rng)
            self._drive_datasets(rng)

    # --- the dataset and parameter chains ---------------------------------------------------

    def _submit_dataset(self, client: Client, rng) -> None:  # noqa: ANN001
        from chain.dataset import REQUIRED_CHECKS, solve_pow
        from chain.payloads import AuditCheck, AuditReport, SubmitDataset

        cid = crypto.cid_raw(rng.randbytes(64))
        size = rng.randrange(1_000, 1_000_000)
        report = AuditReport(cid, size, self.pact.params.dataset.audit_version,
                             tuple(AuditCheck(name, True, "ok") for name in REQUIRED_CHECKS))
        nonce = solve_pow(SIM_NETWORK, client.key.address, cid, self.pact.params.dataset.pow_difficulty_bits)
        tx = self._sign(client, SubmitDataset(cid, size, "text", "CC-BY-4.0", nonce, report), CHAIN_DATASET)
        self._track(client, tx)
        self.datasets.append(tx.hash())
        self._submit(tx, rng)

    def _submit_delta(self, contributor: Client, rng) -> None:  # noqa: ANN001
        from chain.payloads import DeltaClaim, PolCertificate, PolVote, SignedPolVote, SubmitDelta
        from chain.records import ExpertState, expert_key

        live = self._live_honest()
        if not live:
            return
        raw = live[0].engine.store.state(CHAIN_PARAMETER).get(expert_key(SIM_EXPERT.name))
        expert = codec.decode(ExpertState, raw)
        claim = DeltaClaim(SIM_EXPERT.name, expert.head, expert.last_round + 1, rng.randbytes(32), 1024,
                           "int8", 250_000, contributor.key.address)
        claim_hash = codec.hash_of(claim)
        votes = []
        for node in sorted(self._honest_validators(), key=lambda n: n.key.address):
            vote = PolVote(claim_hash, 2_000_000, 1_900_000, True, node.key.address)
            votes.append(SignedPolVote(vote, node.key.sign(SIM_NETWORK, crypto.KIND_POL_VOTE, codec.encode(vote))))
        tx = self._sign(contributor, SubmitDelta(claim, PolCertificate(tuple(votes))), CHAIN_PARAMETER)
        self._track(contributor, tx)
        self._submit(tx, rng)

    def _honest_validators(self) -> list[SimNode]:
        """Honest nodes in the validator set in force now (it changes at epoch boundaries)."""
        live = self._live_honest()
        if not live:
            return []
        members = {v.address for v in live[0].engine.validators().validators}
        return [n for n in self.nodes if n.name in self.honest and n.key.address in members]

    def _drive_datasets(self, rng) -> None:  # noqa: ANN001
        """What the validators' operators do: audit pending datasets, then vote a tier.

        Each tick, every honest validator signs what it still owes, in dataset order, with
        nonces from its committed one: unchanged needs give identical transactions (so they
        dedup), and what the chain already took drops out."""
        from chain.dataset import REQUIRED_CHECKS
        from chain.payloads import AuditCheck, AuditReport, AuditVerdict, QualityVote
        from chain.records import STATUS_AUDITED, STATUS_PENDING, STATUS_VOTED, DatasetRecord, dataset_key
        from chain.transition import get_nonce

        live = self._live_honest()
        if not live:
            return
        state = live[0].engine.store.state(CHAIN_DATASET)
        records = []
        for submission in self.datasets:
            raw = state.get(dataset_key(submission))
            if raw is not None:
                records.append((submission, codec.decode(DatasetRecord, raw)))
        for node in self._honest_validators():
            who = node.key.address
            owed = []
            for submission, rec in records:
                if rec.status == STATUS_PENDING and who not in rec.audit_voters:
                    rerun = AuditReport(rec.cid, rec.size, self.pact.params.dataset.audit_version,
                                        tuple(AuditCheck(name, True, "ok") for name in REQUIRED_CHECKS))
                    owed.append(AuditVerdict(submission, True, codec.hash_of(rerun)))
                elif rec.status in (STATUS_AUDITED, STATUS_VOTED) and who not in rec.tier_voters:
                    tier = 2 + int.from_bytes(codec.sha256(who + submission)[:1], "big") % 2
                    owed.append(QualityVote(submission, tier))
            nonce = get_nonce(state, who)
            target = node if node.up and node.engine is not None else live[rng.randrange(len(live))]
            for i, payload in enumerate(owed[:16]):
                target.engine.submit_tx(self._sign(Client(node.key), payload, CHAIN_DATASET, nonce + i))

    def _sign(self, client: Client, payload: object, chain_id: int = CHAIN_REWARD,
              nonce: int | None = None) -> Transaction:
        if nonce is None:
            nonce = client.nonces.get(chain_id, 0)
            client.nonces[chain_id] = nonce + 1
        body = TxBody(chain_id, client.key.public_key, nonce, payload)
        return Transaction(body, client.key.sign(SIM_NETWORK, crypto.KIND_TX, codec.encode(body)))

    def _track(self, client: Client, tx: Transaction) -> None:
        client.pending.append(tx)
        self.submitted.append((tx.body.chain_id, tx.hash()))

    def _live_honest(self) -> list[SimNode]:
        return [n for n in self.nodes if n.up and n.name in self.honest and n.engine is not None]

    def _submit(self, tx: Transaction, rng) -> None:  # noqa: ANN001
        live = self._live_honest()
        if live:
            live[rng.randrange(len(live))].engine.submit_tx(tx)

    def _resubmit(self, rng) -> None:  # noqa: ANN001
        live = self._live_honest()
        if not live:
            return
        store = live[0].engine.store
        for client in self.clients + self.wallets:
            client.pending = [tx for tx in client.pending
                              if store.get_tx_location(tx.body.chain_id, tx.hash()) is None]
            for tx in client.pending:
                self._submit(tx, rng)

    # --- invariants -------------------------------------------------------------------------

    def _report(self) -> dict:
        violations = list(self.checker.violations)
        honest_nodes = [n for n in self.nodes if n.name in self.honest]
        stores = {n.name: ChainStore.open(n.kv) for n in honest_nodes}
        heights, digests = {}, {}
        safety = state_roots = True
        for chain_id in CHAIN_IDS:
            name = CHAIN_NAMES[chain_id]
            top = max(s.height(chain_id) for s in stores.values())
            heights[name] = top
            digest = hashlib.sha256()
            for h in range(1, top + 1):
                seen = {}
                for node, store in stores.items():
                    block = store.get_block(chain_id, h)
                    if block is not None:
                        seen[node] = block
                hashes = {b.hash() for b in seen.values()}
                if len(hashes) > 1:
                    safety = False
                    violations.append(Violation("safety", f"{name} height {h}: honest nodes finalized different blocks"))
                roots = {b.header.state_root for b in seen.values()}
                if len(roots) > 1:
                    state_roots = False
                    violations.append(Violation("state-roots", f"{name} height {h}: state roots differ"))
                digest.update(next(iter(seen.values())).hash() if len(hashes) == 1 else b"?")
            digests[name] = digest.hexdigest()
            for node, store in stores.items():
                header = store.get_header(chain_id, store.height(chain_id))
                if header.state_root != store.state(chain_id).root:
                    state_roots = False
                    violations.append(Violation("state-roots", f"{node} {name}: state does not match head"))
        ledger = True
        for node, store in stores.items():
            try:
                validate_supply(store.state(CHAIN_REWARD))
            except BlyanError as err:
                ledger = False
                violations.append(Violation("supply", f"{node}: {err}"))
        validity = self._check_validity(stores, violations)
        liveness = self._check_liveness(stores, heights, violations)
        safety = safety and not any(v.invariant == "no-double-sign" for v in violations)
        digest = hashlib.sha256("".join(digests[CHAIN_NAMES[c]] for c in CHAIN_IDS).encode()).hexdigest()
        ok = safety and liveness and ledger and state_roots and validity
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
            "transactions": len(self.submitted),
            "penalties": self.checker.penalties,
            "max_round": self.checker.max_round,
            "messages": self.hub.stats.as_dict(),
            "ok": ok,
            "violations": [{"invariant": v.invariant, "detail": v.detail} for v in violations[:20]],
            "replay": self.cfg.command(),
        }

    def _check_validity(self, stores: dict[str, ChainStore], violations: list[Violation]) -> bool:
        """Replay the longest honest chains from genesis through the chain rules and commits."""
        from chain.commit import InvalidCommit, verify_commit
        from chain.errors import InvalidBlock, MissingDependency
        from chain.context import Context
        from chain.reward import get_validator_set
        from chain.types import ValidatorSet

        ref = max(stores.values(), key=lambda s: sum(s.height(c) for c in CHAIN_IDS))
        replay = ChainStore.open(MemoryKV(), self.pact)
        known: dict[bytes, ValidatorSet] = {}

        def remember() -> None:
            vs = get_validator_set(replay.state(CHAIN_REWARD))
            known[vs.hash()] = vs

        def earning(chain_id: int, tx_hash: bytes):  # noqa: ANN202
            from chain.records import Earning, earning_key

            raw = replay.state(chain_id).get(earning_key(tx_hash)) if chain_id != CHAIN_REWARD else None
            return None if raw is None else codec.decode(Earning, raw)

        remember()
        progress = True
        while progress:
            progress = False
            for chain_id in CHAIN_IDS:
                h = replay.height(chain_id) + 1
                block = ref.get_block(chain_id, h)
                if block is None:
                    continue
                prev_header = replay.get_header(chain_id, h - 1)
                vs = known.get(prev_header.next_validators_hash)
                prev_vs = known.get(prev_header.validators_hash) if h > 1 else None
                commit = ref.get_commit(chain_id, h)
                if vs is None:
                    continue
                try:
                    if commit is not None:
                        verify_commit(chain_id, h, block.hash(), commit, vs, SIM_NETWORK)
                    ctx = Context(SIM_NETWORK, self.pact.params, vs, prev_vs, earnings=earning,
                                  next_validators=known.get)
                    replay.import_block(block, ctx)
                except MissingDependency:
                    continue
                except (InvalidBlock, InvalidCommit) as err:
                    violations.append(Violation("validity", f"{CHAIN_NAMES[chain_id]} height {h}: {err}"))
                    return False
                if chain_id == CHAIN_REWARD:
                    remember()
                    try:
                        validate_supply(replay.state(CHAIN_REWARD))
                    except BlyanError as err:
                        violations.append(Violation("supply", f"replay at reward height {h}: {err}"))
                        return False
                progress = True
        for chain_id in CHAIN_IDS:
            if replay.height(chain_id) != ref.height(chain_id):
                violations.append(Violation("validity", f"{CHAIN_NAMES[chain_id]} replay stopped at "
                                            f"{replay.height(chain_id)} of {ref.height(chain_id)}"))
                return False
        return True

    def _unfinished_datasets(self, store: ChainStore) -> list[bytes]:
        """Datasets not approved, or approved without their reward paid."""
        from chain.records import STATUS_APPROVED, DatasetRecord, dataset_key, paid_key

        left = []
        for submission in self.datasets:
            raw = store.state(CHAIN_DATASET).get(dataset_key(submission))
            rec = None if raw is None else codec.decode(DatasetRecord, raw)
            if rec is None or rec.status != STATUS_APPROVED or \
                    store.state(CHAIN_REWARD).get(paid_key(CHAIN_DATASET, submission)) is None:
                left.append(submission)
        return left

    def _check_liveness(self, stores: dict[str, ChainStore], heights: dict, violations: list[Violation]) -> bool:
        ok = True
        for node, store in stores.items():
            for chain_id in CHAIN_IDS:
                if store.height(chain_id) != heights[CHAIN_NAMES[chain_id]]:
                    ok = False
                    violations.append(Violation("liveness", f"{node} {CHAIN_NAMES[chain_id]} at "
                                                f"{store.height(chain_id)}, others at {heights[CHAIN_NAMES[chain_id]]}"))
            missing = [h for c, h in self.submitted if store.get_tx_location(c, h) is None]
            missing += self._unfinished_datasets(store)
            if missing:
                ok = False
                violations.append(Violation("liveness", f"{node}: {len(missing)} of {len(self.submitted)} "
                                            f"transactions not final {self.cfg.liveness_bound:g}s after the last fault"))
        return ok


SWEEP_MIXES: tuple[tuple[int, int, tuple[str, ...]], ...] = (
    # (nodes, byzantine validators, faults); every node validates, F < V/3.
    (4, 0, ()),
    (4, 1, ()),
    (4, 0, ("crash", "partition", "loss", "reorder", "duplicate", "skew")),
    (4, 1, ("crash", "partition", "loss", "reorder")),
    (5, 1, ("partition", "loss", "duplicate")),
    (7, 2, ("crash", "loss", "reorder", "skew")),
    (7, 2, ("partition", "loss")),
    (7, 0, ("crash", "partition", "loss", "reorder", "duplicate", "skew")),
)


def sweep_config(seed: int, duration: float = 50.0) -> SimConfig:
    """The fault mix a sweep gives `seed`: mixes rotate, byzantine kinds rotate with the seed."""
    nodes, byzantine, faults = SWEEP_MIXES[seed % len(SWEEP_MIXES)]
    kinds = BYZANTINE_KINDS[seed % len(BYZANTINE_KINDS):] + BYZANTINE_KINDS[: seed % len(BYZANTINE_KINDS)]
    return SimConfig(seed=seed, nodes=nodes, validators=nodes, byzantine=byzantine, faults=faults,
                     duration=duration, liveness_bound=min(30.0, duration * 0.6), byzantine_kinds=kinds)


def run_sim(cfg: SimConfig) -> dict:
    """One simulation, start to verdict; deterministic in `cfg`."""
    started = time.perf_counter()
    sim = Simulation(cfg)
    report = run_simulation(sim.main, seed=cfg.seed)
    report["wall_seconds"] = round(time.perf_counter() - started, 3)
    return report
