"""What a simulation runs: its configuration, the fault mixes of a sweep, and its genesis.

A run is a pure function of its `SimConfig` (and so of its seed): keys, workload, faults,
latencies and trio's scheduling all derive from it, and time is `MockClock`'s.

A learning run (`deltas` or `forgeries`) has the learning world's genesis
(`genesis.learningkit`: the devnet model with its blobs, training and validation datasets) with
the simulation's validators, so its contributors train and its validators verify real deltas.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, replace

from chain import crypto
from chain.pact import PACT_VERSION, GenesisAccount, GenesisPact, GenesisValidator
from chain.tensors import KIND_EXPERT, TensorInfo, TensorRecord
from genesis.learningkit import LearningWorld
from genesis.learningkit import make_learning_world as make_world
from genesis.params import devnet_params
from genesis.testkit import TINY_MODEL
from node.sim.honeypots import commitments, make_honeypots

FAULT_KINDS = ("crash", "partition", "loss", "reorder", "duplicate", "skew")
BYZANTINE_KINDS = ("equivocate", "invalid_proposals", "withhold_votes", "silent", "spam")
"""Consensus misbehaviours, handed out in turn by default and by sweeps."""
LEARNING_BYZANTINE_KINDS = ("false_pol_votes",)
"""Misbehaviours that matter only in a learning run (name them in `byzantine_kinds`)."""
DATA_BYZANTINE_KINDS = ("rubber_stamp_data", "random_data_votes")
"""Validators that audit and vote on datasets without looking (name them in `byzantine_kinds`)."""
SIM_POW_BITS = 8
"""Dataset proof of work in simulations (the devnet's would cost real seconds per dataset)."""
FORGERY_KINDS = ("validation_trained", "wrong_result", "copy_reveal", "resign_copy")
"""Byzantine contributors: a bundle trained on the validation set that declares the training
sets; a manifest whose delta does not decode to its claimed result root (re-signed); a copy of
an honest reveal seen on the chain, committed and revealed under another key as it is, or
re-signed as the copier's own."""
LEARNING_BLOCKS = ("layer0.expert0", "layer1.expert1", "layer0.expert1", "layer1.expert0", "layer0.expert2",
                   "layer1.expert2", "layer0.expert3", "layer1.expert3")
"""The experts honest contributors train, one each (a round applies one claim per block)."""
SIM_NETWORK = "simnet"
SIM_EXPERT = TensorRecord(
    name="layer0.expert0", kind=KIND_EXPERT, version="1.0.0", blob_id=hashlib.sha256(b"sim-expert").digest(),
    size=4096, merkle_root=hashlib.sha256(b"sim-expert-root").digest(), tile_size=4 * 1024 * 1024,
    subtile_size=256 * 1024, tensors=(TensorInfo("w1", "F32", (32, 32)),),
)
"""The model of a run without learning has one expert (its weights are never loaded)."""
LEARNING_ROUND_LENGTH = 64
"""Parameter-chain heights per learning round in a learning run (the learning world's 8 are
half a simulated second here): every validator must have fetched and verified a round's claims
before its close, since a close that applies one changes the model the others were trained on."""
CLIENTS = 8
CLIENT_BALANCE = 10**12
VALIDATOR_STAKE = 1_000_000


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
    deltas: int = 0
    """Honest contributors, each training one real delta of its own expert and submitting it
    (0 and no forgeries: no learning, and the quick genesis without model weights)."""
    forgeries: tuple[str, ...] = ()
    """Byzantine contributors, one for each of these FORGERY_KINDS."""
    peers_per_node: int = 0
    """0: every node is connected to every other. N: a peer graph of about N connections per
    node (as a daemon's `target_peers` keeps), so that handshakes, catch-up and requests go to
    neighbours only; gossip still reaches every subscriber (the mesh's result), after its delay."""

    @property
    def learning(self) -> bool:
        return self.deltas > 0 or bool(self.forgeries)

    def __post_init__(self) -> None:
        if not 1 <= self.validators <= self.nodes:
            raise ValueError("need 1 <= validators <= nodes")
        if self.peers_per_node < 0:
            raise ValueError("need peers_per_node >= 0")
        if not 0 <= self.byzantine <= self.validators:
            raise ValueError("need 0 <= byzantine <= validators")
        unknown = set(self.faults) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds: {', '.join(sorted(unknown))}")
        if self.duration <= self.liveness_bound:
            raise ValueError("duration must exceed the liveness bound")
        if not 0 <= self.deltas <= len(LEARNING_BLOCKS):
            raise ValueError(f"need 0 <= deltas <= {len(LEARNING_BLOCKS)}")
        unknown = set(self.forgeries) - set(FORGERY_KINDS)
        if unknown:
            raise ValueError(f"unknown forgery kinds: {', '.join(sorted(unknown))}")
        if {"copy_reveal", "resign_copy"} & set(self.forgeries) and not self.deltas:
            raise ValueError("a copier needs an honest delta to copy")
        unknown = (set(self.byzantine_kinds) - set(BYZANTINE_KINDS) - set(LEARNING_BYZANTINE_KINDS)
                   - set(DATA_BYZANTINE_KINDS))
        if unknown:
            raise ValueError(f"unknown byzantine kinds: {', '.join(sorted(unknown))}")

    def command(self) -> str:
        faults = f" --faults {','.join(self.faults)}" if self.faults else ""
        learning = f" --deltas {self.deltas}" if self.deltas else ""
        learning += f" --forgeries {','.join(self.forgeries)}" if self.forgeries else ""
        if self.byzantine and self.byzantine_kinds != BYZANTINE_KINDS:
            learning += f" --byzantine-kinds {','.join(self.byzantine_kinds)}"
        if self.peers_per_node:
            learning += f" --peers {self.peers_per_node}"
        if self.tx_rate != 2.0:
            learning += f" --tx-rate {self.tx_rate:g}"
        return (
            f"blyan sim --nodes {self.nodes} --validators {self.validators} --byzantine {self.byzantine}"
            f"{faults}{learning} --seed {self.seed} --duration {self.duration:g} --json"
        )


def make_sim_pact(cfg: SimConfig) -> tuple[GenesisPact, list[crypto.PrivateKey], list[crypto.PrivateKey]]:
    """The genesis of a simulation, the node keys (validators first) and the clients' keys
    (contributors' keys come last in a learning run: `make_contributor_keys`)."""
    vkeys = [crypto.PrivateKey.from_label(f"sim-validator-{i}") for i in range(cfg.nodes)]
    ckeys = [crypto.PrivateKey.from_label(f"sim-client-{i}") for i in range(CLIENTS)]
    devnet = devnet_params()
    params = replace(devnet, staking=replace(
        devnet.staking, epoch_length=cfg.epoch_length,
        unbonding_period=max(cfg.epoch_length, devnet.staking.unbonding_period),
    ), dataset=replace(devnet.dataset, pow_difficulty_bits=SIM_POW_BITS, honeypots=commitments(make_honeypots())))
    model, tensors, datasets = TINY_MODEL, (SIM_EXPERT,), ()
    contributors = [key for _, key in make_contributor_keys(cfg)]
    if cfg.learning:
        world = make_learning_world().pact
        params = replace(params, pol=replace(world.params.pol, round_length=LEARNING_ROUND_LENGTH))
        model, tensors, datasets = world.model, world.tensors, world.datasets
    pact = GenesisPact(
        version=PACT_VERSION, network_id=SIM_NETWORK, genesis_time_ms=0, params=params,
        validators=tuple(GenesisValidator(k.public_key, VALIDATOR_STAKE, f"v{i}")
                         for i, k in enumerate(vkeys[: cfg.validators])),
        accounts=tuple(GenesisAccount(k.address, CLIENT_BALANCE) for k in ckeys)
        + tuple(GenesisAccount(k.address, CLIENT_BALANCE) for k in vkeys[cfg.validators:])
        + tuple(GenesisAccount(k.address, CLIENT_BALANCE) for k in contributors),
        model=model, tensors=tensors, datasets=datasets, bootstrap=(),
    )
    return pact, vkeys, ckeys


def make_contributor_keys(cfg: SimConfig) -> list[tuple[str, crypto.PrivateKey]]:
    """(kind, key) of each contributor: "honest" for the `deltas`, then one per forgery."""
    honest = [("honest", crypto.PrivateKey.from_label(f"sim-contributor-{i}")) for i in range(cfg.deltas)]
    return honest + [(kind, crypto.PrivateKey.from_label(f"sim-forger-{i}-{kind}"))
                     for i, kind in enumerate(cfg.forgeries)]


@functools.cache
def make_learning_world() -> LearningWorld:
    """The learning world (its pact supplies the model, datasets and PoL parameters; its blobs
    seed every node's blob store). Built once per process: it is a pure function."""
    return make_world()


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
