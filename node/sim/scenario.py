"""What a simulation runs: its configuration, the fault mixes of a sweep, and its genesis.

A run is a pure function of its `SimConfig` (and so of its seed): keys, workload, faults,
latencies and trio's scheduling all derive from it, and time is `MockClock`'s.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from chain import crypto
from chain.pact import PACT_VERSION, GenesisAccount, GenesisPact, GenesisValidator
from chain.tensors import KIND_EXPERT, TensorInfo, TensorRecord
from genesis.params import devnet_params
from genesis.testkit import TINY_MODEL

FAULT_KINDS = ("crash", "partition", "loss", "reorder", "duplicate", "skew")
BYZANTINE_KINDS = ("equivocate", "invalid_proposals", "withhold_votes", "silent", "spam")
SIM_NETWORK = "simnet"
SIM_EXPERT = TensorRecord(
    name="layer0.expert0", kind=KIND_EXPERT, version="1.0.0", blob_id=hashlib.sha256(b"sim-expert").digest(),
    size=4096, merkle_root=hashlib.sha256(b"sim-expert-root").digest(), tile_size=4 * 1024 * 1024,
    subtile_size=256 * 1024, tensors=(TensorInfo("w1", "F32", (32, 32)),),
)
"""The simulation's model has one expert (its weights are never loaded: no deltas are submitted)."""
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


def make_sim_pact(cfg: SimConfig) -> tuple[GenesisPact, list[crypto.PrivateKey], list[crypto.PrivateKey]]:
    """The genesis of a simulation, the node keys (validators first) and the clients' keys."""
    vkeys = [crypto.PrivateKey.from_label(f"sim-validator-{i}") for i in range(cfg.nodes)]
    ckeys = [crypto.PrivateKey.from_label(f"sim-client-{i}") for i in range(CLIENTS)]
    devnet = devnet_params()
    params = replace(devnet, staking=replace(
        devnet.staking, epoch_length=cfg.epoch_length,
        unbonding_period=max(cfg.epoch_length, devnet.staking.unbonding_period),
    ))
    pact = GenesisPact(
        version=PACT_VERSION, network_id=SIM_NETWORK, genesis_time_ms=0, params=params,
        validators=tuple(GenesisValidator(k.public_key, VALIDATOR_STAKE, f"v{i}")
                         for i, k in enumerate(vkeys[: cfg.validators])),
        accounts=tuple(GenesisAccount(k.address, CLIENT_BALANCE) for k in ckeys)
        + tuple(GenesisAccount(k.address, CLIENT_BALANCE) for k in vkeys[cfg.validators:]),
        model=TINY_MODEL, tensors=(SIM_EXPERT,), datasets=(), bootstrap=(),
    )
    return pact, vkeys, ckeys


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
