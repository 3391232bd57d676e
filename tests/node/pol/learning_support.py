"""The learning world of `genesis.learningkit`, as `Materials` over an in-memory store and a blob
dict, for the PoL tests."""

from __future__ import annotations

from dataclasses import dataclass, replace

from chain.kv import MemoryKV
from chain.ledger import LedgerView, read_ledger_view
from chain.pact import GenesisPact, compute_genesis_hash
from chain.store import ChainStore
from chain.types import CHAIN_DATASET, CHAIN_PARAMETER
from genesis.learningkit import LEARNING_CONTRIBUTOR, LEARNING_VALIDATOR, make_learning_world
from node.pol.contributor import TrainingOptions
from node.pol.data import MaterialMissing, Materials

CONTRIBUTOR = LEARNING_CONTRIBUTOR
VALIDATOR = LEARNING_VALIDATOR
OPTIONS = TrainingOptions(steps=16, batch_size=4, seq_len=64, lr=3e-3, warmup_steps=2)
"""A run of four segments of four steps: about a second here."""


@dataclass(frozen=True, slots=True)
class World:
    pact: GenesisPact
    materials: Materials
    blobs: dict[bytes, bytes]
    train: tuple[str, ...]
    noise: str
    validation: tuple[str, ...]


def make_materials(pact: GenesisPact, blobs: dict[bytes, bytes]) -> Materials:
    store = ChainStore.open(MemoryKV(), pact)
    ledger = read_ledger_view(store.state(CHAIN_PARAMETER), store.state(CHAIN_DATASET))
    return Materials(pact, compute_genesis_hash(pact), ledger, getter(blobs))


def make_world(**pol_overrides: object) -> World:
    w = make_learning_world(**pol_overrides)
    return World(w.pact, make_materials(w.pact, w.blobs), w.blobs, w.train, w.noise, w.validation)


def getter(blobs: dict[bytes, bytes]):
    def get_blob(blob_id: bytes) -> bytes:
        try:
            return blobs[blob_id]
        except KeyError as err:
            raise MaterialMissing(f"no blob {blob_id.hex()[:16]}") from err

    return get_blob


def with_ledger(world: World, ledger: LedgerView) -> Materials:
    return replace(world.materials, ledger=ledger)
