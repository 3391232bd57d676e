"""Weights a node holds for inference: the shared modules, and expert modules by block hash.

`load_block_tensors` is the one seam between a chain record and tensors (today: read the blob,
check its digest, decode the canonical safetensors bytes; later: `gpu.loader`'s verified
zero-copy load). Every method here is synchronous and may be slow: callers run them in a
worker thread (`Compute.run`).

The block hash of an expert is its head on the parameter chain (`ExpertState.head`): the
genesis record's hash, then each accepted delta's. Weights are the record's blob while no delta
has been applied; applying deltas is the training issue's, so an expert with deltas is not
loadable yet (`WeightsUnavailable`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from chain.blobs import BlobStore
from chain.errors import CorruptBlob, StoreError
from chain.heads import get_expert
from chain.records import ExpertState
from chain.state import Overlay
from chain.store import ChainStore
from chain.tensors import ModelSpec, TensorRecord
from chain.types import CHAIN_PARAMETER
from gpu.cache import ExpertCache
from gpu.loader import BlobLoader
from gpu.model import Expert, MoEConfig, MoEModel
from gpu.weights import decode_block
from node.experts.wire import ExpertError

ExpertKey = tuple[int, int]


class WeightsUnavailable(ExpertError):
    """Weights this node cannot load (blob absent or corrupt, unknown block, deltas pending).
    `record` is set when fetching the blob's tiles from peers could fix it."""

    def __init__(self, name: str, reason: str, record: TensorRecord | None = None) -> None:
        self.name, self.reason, self.record = name, reason, record
        super().__init__(f"weights of {name}: {reason}")


def expert_name(key: ExpertKey) -> str:
    return f"layer{key[0]}.expert{key[1]}"


def load_block_tensors(blobs: BlobStore | None, record: TensorRecord,
                       loader: BlobLoader | None = None) -> dict[str, Tensor]:
    """The seam between a chain record and tensors. With a `BlobLoader`: the blob mapped, its
    tiles checked against the record's Merkle root once per file version, tensors viewed in
    place (zero-copy); without: read, digest-checked and decoded (tests, tools)."""
    if blobs is None:
        raise WeightsUnavailable(record.name, "no blob store")
    if not blobs.has(record.blob_id):
        raise WeightsUnavailable(record.name, "blob absent", record)
    try:
        if loader is not None:
            return loader.load(blobs.path_of(record.blob_id), record)
        return decode_block(blobs.get(record.blob_id, verify=True))
    except CorruptBlob as err:
        raise WeightsUnavailable(record.name, f"corrupt: {err}", record) from err
    except StoreError as err:
        raise WeightsUnavailable(record.name, str(err)) from err


class ChainRecords(Mapping):
    """Blob id -> tensor record of every block of the model as the chain has it now (what the
    tile service serves): a live view, recomputed when read."""

    def __init__(self, view: ModelView) -> None:
        self.view = view

    def _records(self) -> dict[bytes, TensorRecord]:
        spec = self.view.spec
        names = ["embed", "head", "tokenizer"]
        for layer in range(spec.n_layers):
            names += [f"layer{layer}.attn", f"layer{layer}.router"]
            names += [f"layer{layer}.expert{e}" for e in range(spec.n_experts)]
        out = {}
        for name in names:
            state = self.view.get_state(name)
            if state is not None:
                out[state.record.blob_id] = state.record
        return out

    def __getitem__(self, blob_id: bytes) -> TensorRecord:
        return self._records()[blob_id]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._records())

    def __len__(self) -> int:
        return len(self._records())


class ModelView(Protocol):
    """What the node knows of the model: its spec and each block's state on the chain."""

    spec: ModelSpec

    def get_state(self, name: str) -> ExpertState | None: ...


class StoreModelView:
    """The model as the node's parameter chain has it now."""

    def __init__(self, store: ChainStore) -> None:
        self.store = store
        self.spec = store.pact.model

    def get_state(self, name: str) -> ExpertState | None:
        return get_expert(Overlay(self.store.state(CHAIN_PARAMETER)), name)


@dataclass(frozen=True, slots=True)
class StaticModelView:
    """A fixed model (tests, benchmarks)."""

    spec: ModelSpec
    states: Mapping[str, ExpertState]

    def get_state(self, name: str) -> ExpertState | None:
        return self.states.get(name)


def get_expert_heads(view: ModelView) -> dict[ExpertKey, bytes]:
    """(layer, expert) -> block hash, for every expert the chain knows."""
    heads = {}
    for layer in range(view.spec.n_layers):
        for expert in range(view.spec.n_experts):
            state = view.get_state(expert_name((layer, expert)))
            if state is not None:
                heads[(layer, expert)] = state.head
    return heads


def is_loadable(state: ExpertState | None, blobs: BlobStore | None) -> bool:
    return state is not None and not state.deltas and blobs is not None and blobs.has(state.record.blob_id)


def build_shared_model(view: ModelView, blobs: BlobStore | None, loader: BlobLoader | None = None) -> MoEModel:
    """The model with its shared blocks (embed, attn, router, head) loaded and experts left on
    the meta device (no memory): experts run through `LocalExperts` or on other nodes."""
    cfg = MoEConfig.from_spec(view.spec)
    with torch.device("meta"):
        model = MoEModel(cfg)
    for name in model.block_names():
        if ".expert" in name:
            continue
        state = view.get_state(name)
        if state is None or state.deltas:
            raise WeightsUnavailable(name, "not on the chain" if state is None else "deltas not applied")
        model.get_block(name).to_empty(device="cpu")
        model.load_block_state_dict(name, load_block_tensors(blobs, state.record, loader))
    return model.eval()


class LocalExperts:
    """Expert modules held here: those served (pinned) and a few loaded for fallback or checks."""

    def __init__(self, view: ModelView, blobs: BlobStore | None, loader: BlobLoader | None = None,
                 cache_bytes: int = 256 << 20) -> None:
        self.view = view
        self.blobs = blobs
        self.loader = loader
        self.cfg = MoEConfig.from_spec(view.spec)
        self.served: dict[ExpertKey, bytes] = {}
        """Experts this node serves, with the block hash of the weights it holds."""
        self._pinned: dict[tuple[ExpertKey, bytes], Expert] = {}
        self._cache = ExpertCache(cache_bytes)
        """Experts loaded for fallback or spot checks, LRU within a byte budget."""
        self._lock = threading.Lock()  # the cache is touched from worker threads

    def serve(self, key: ExpertKey) -> bytes:
        """Load the expert's current weights and pin them; its block hash."""
        state = self.view.get_state(expert_name(key))
        module = self._load(key, state)
        with self._lock:
            self._pinned[(key, state.head)] = module
            self.served[key] = state.head
        return state.head

    def is_served(self, key: ExpertKey, block_hash: bytes) -> bool:
        return self.served.get(key) == block_hash

    def can_load(self, key: ExpertKey, block_hash: bytes) -> bool:
        """Whether this node holds (or can load) exactly these weights."""
        if self.is_served(key, block_hash):
            return True
        state = self.view.get_state(expert_name(key))
        return is_loadable(state, self.blobs) and state.head == block_hash

    def forward(self, key: ExpertKey, block_hash: bytes, x: Tensor) -> Tensor:
        """The expert at `block_hash` on rows `x` [n, D] -> [n, D]; loads it if needed."""
        module = self._get(key, block_hash)
        with torch.no_grad():
            return module(x)  # [n, D]

    def _get(self, key: ExpertKey, block_hash: bytes) -> Expert:
        ident = (key, block_hash)
        with self._lock:
            module = self._pinned.get(ident)
        if module is not None:
            return module
        state = self.view.get_state(expert_name(key))
        if state is None or state.head != block_hash:
            raise WeightsUnavailable(expert_name(key), f"block {block_hash.hex()[:16]} is not the chain's head")
        with self._lock:
            return self._cache.get(ident, lambda: self._load(key, state))

    def _load(self, key: ExpertKey, state: ExpertState | None) -> Expert:
        name = expert_name(key)
        if state is None:
            raise WeightsUnavailable(name, "not on the chain")
        if state.deltas:
            raise WeightsUnavailable(name, "deltas not applied yet")
        with torch.device("meta"):
            module = Expert(self.cfg)
        module.to_empty(device="cpu")
        tensors = load_block_tensors(self.blobs, state.record, self.loader)
        if set(tensors) != set(module.state_dict()):
            raise WeightsUnavailable(name, f"tensors {sorted(tensors)} do not fit an expert")
        try:
            module.load_state_dict(tensors, strict=True)
        except RuntimeError as err:  # shapes that do not fit this model
            raise WeightsUnavailable(name, f"tensors do not fit: {err}") from err
        return module.eval()
