"""Weights a node holds for inference: the shared modules, and expert modules by block hash.

`load_block_tensors` is the one seam between a chain record and tensors (today: read the blob,
check its digest, decode the canonical safetensors bytes; later: `gpu.loader`'s verified
zero-copy load). Every method here is synchronous and may be slow: callers run them in a
worker thread (`Compute.run`).

The block hash of an expert is its head on the parameter chain (`ExpertState.head`): the
genesis record's hash, then each accepted delta's, then a snapshot's. Weights are the record's
blob while no delta has been applied since genesis or the last snapshot (a snapshot's record
names the blob the validators materialised: one blob, nothing to replay), then the blob
`node.experts.materialise` built for the head (`get_record`); a head not materialised yet is
not loadable (`WeightsUnavailable`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from chain import codec
from chain.blobs import BlobStore
from chain.errors import CorruptBlob, StoreError
from chain.heads import get_expert
from chain.records import (
    CLAIM_ACCEPTED,
    CLAIM_CERTIFIED,
    CLAIM_VOTING,
    AcceptedDelta,
    ClaimRecord,
    ExpertState,
    delta_key,
    is_claim_key,
    is_expert_key,
)
from chain.state import Overlay, State
from chain.store import ChainStore
from chain.tensors import ModelSpec, TensorRecord
from chain.types import CHAIN_PARAMETER
from gpu.cache import ExpertCache
from gpu.loader import BlobLoader
from gpu.model import Expert, MoEConfig, MoEModel
from gpu.weights import decode_block
from node.experts.bundle_blobs import blob_record, bundle_refs
from node.experts.wire import ExpertError

logger = logging.getLogger(__name__)

ExpertKey = tuple[int, int]
MAX_BUNDLE_CLAIMS = 4096
"""Claims whose bundle blobs a node serves, at most (the most recently revealed first)."""
SERVED_CLAIM_STATUSES = (CLAIM_VOTING, CLAIM_CERTIFIED, CLAIM_ACCEPTED)


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


def block_names(spec: ModelSpec) -> list[str]:
    """Every block of the model: embed, head, tokenizer, then each layer's attn, router, experts."""
    names = ["embed", "head", "tokenizer"]
    for layer in range(spec.n_layers):
        names += [f"layer{layer}.attn", f"layer{layer}.router"]
        names += [f"layer{layer}.expert{e}" for e in range(spec.n_experts)]
    return names


class ChainRecords(Mapping):
    """Blob id -> tensor record of every blob this node may serve by the chain (what the tile
    service serves): each block's current weights (its record, or the materialised head), and
    the bundle blobs of claims being voted on, certified or accepted (synthetic records,
    `node.experts.bundle_blobs`). A live view, recomputed when read."""

    def __init__(self, view: ModelView) -> None:
        self.view = view
        self._bundle: tuple[Sequence[ClaimRecord] | None, dict[bytes, TensorRecord]] = (None, {})

    def _bundle_records(self) -> dict[bytes, TensorRecord]:
        """Once per list of claims (the view keeps one per state)."""
        claims = self.view.get_bundle_claims()
        if self._bundle[0] is not claims:
            out = {}
            for rec in claims:
                for ref in bundle_refs(rec.manifest.manifest):
                    out[ref.blob_id] = blob_record(ref)
            self._bundle = (claims, out)
        return self._bundle[1]

    def _records(self) -> dict[bytes, TensorRecord]:
        out = dict(self._bundle_records())
        for name in block_names(self.view.spec):
            state = self.view.get_state(name)
            if state is None:
                continue
            out[state.record.blob_id] = state.record  # a snapshot's base, served while it is the base
            record = self.view.get_record(name, state)
            if record is not None:
                out[record.blob_id] = record
        return out

    def __getitem__(self, blob_id: bytes) -> TensorRecord:
        return self._records()[blob_id]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._records())

    def __len__(self) -> int:
        return len(self._records())


class MaterialisedRecords(Mapping):
    """Block name -> the record of its materialised current weights, for the blocks with deltas
    whose head is materialised here (`node.pol.data.Materials.head_records`): a live view."""

    def __init__(self, view: ModelView) -> None:
        self.view = view

    def _records(self) -> dict[str, TensorRecord]:
        out = {}
        for name in block_names(self.view.spec):
            state = self.view.get_state(name)
            if state is not None and state.deltas:
                record = self.view.get_record(name, state)
                if record is not None:
                    out[name] = record
        return out

    def __getitem__(self, name: str) -> TensorRecord:
        state = self.view.get_state(name)
        record = self.view.get_record(name, state) if state is not None and state.deltas else None
        if record is None:
            raise KeyError(name)
        return record

    def __iter__(self) -> Iterator[str]:
        return iter(self._records())

    def __len__(self) -> int:
        return len(self._records())


class HeadRecords(Protocol):
    """Materialised weights of heads with deltas (`node.experts.materialise.Materialiser`)."""

    def lookup(self, name: str, head: bytes, result_root: bytes) -> TensorRecord | None: ...


class ModelView(Protocol):
    """What the node knows of the model: its spec, each block's state on the chain, the record
    holding each block's current weights, and the claims whose bundle blobs it serves."""

    spec: ModelSpec

    def get_state(self, name: str) -> ExpertState | None: ...

    def get_record(self, name: str, state: ExpertState | None = None) -> TensorRecord | None:
        """The record of the block's weights at `state` (default: its current state): the
        state's record without deltas, the materialised head's with; None when not on the
        chain or not materialised yet."""
        ...

    def get_accepted(self, claim_hash: bytes) -> AcceptedDelta | None: ...

    def get_bundle_claims(self) -> Sequence[ClaimRecord]: ...


def resolve_record(name: str, state: ExpertState | None, heads: HeadRecords | None,
                   get_accepted: Callable[[bytes], AcceptedDelta | None]) -> TensorRecord | None:
    """`ModelView.get_record` for any view: the materialised head checked against the result
    root the chain's last accepted delta names."""
    if state is None:
        return None
    if not state.deltas:
        return state.record
    if heads is None:
        return None
    accepted = get_accepted(state.head)
    root = None if accepted is None else next(
        (c.result_root for c in accepted.claim.blocks if c.name == name), None)
    return None if root is None else heads.lookup(name, state.head, root)


def read_bundle_claims(state: State, limit: int = MAX_BUNDLE_CLAIMS) -> list[ClaimRecord]:
    """Claims voting, certified, or accepted and still under some block's head, most recently
    revealed first, at most `limit`."""
    live: set[bytes] = set()
    claims = []
    for key, value in state.items():
        if is_claim_key(key):
            claims.append((key[1:], codec.decode(ClaimRecord, value)))
        elif is_expert_key(key):
            live.update(codec.decode(ExpertState, value).deltas)
    out = [rec for h, rec in claims
           if rec.status in (CLAIM_VOTING, CLAIM_CERTIFIED) or (rec.status == CLAIM_ACCEPTED and h in live)]
    out.sort(key=lambda rec: rec.reveal_height, reverse=True)
    return out[:limit]


class StateModelView:
    """The model as a parameter-chain state has it, read anew at each call."""

    def __init__(self, spec: ModelSpec, read_state: Callable[[], State], heads: HeadRecords | None = None) -> None:
        self.spec = spec
        self.read_state = read_state
        self.heads = heads
        """Where materialised heads are found (None: heads with deltas are not loadable)."""
        self._claims: tuple[State | None, list[ClaimRecord]] = (None, [])

    def get_state(self, name: str) -> ExpertState | None:
        return get_expert(Overlay(self.read_state()), name)

    def get_record(self, name: str, state: ExpertState | None = None) -> TensorRecord | None:
        return resolve_record(name, state or self.get_state(name), self.heads, self.get_accepted)

    def get_accepted(self, claim_hash: bytes) -> AcceptedDelta | None:
        return Overlay(self.read_state()).get_record(delta_key(claim_hash), AcceptedDelta)

    def get_bundle_claims(self) -> Sequence[ClaimRecord]:
        """Once per state (a block): a scan of the parameter state."""
        state = self.read_state()
        if self._claims[0] is not state:
            self._claims = (state, read_bundle_claims(state))
        return self._claims[1]


class StoreModelView(StateModelView):
    """The model as the node's parameter chain has it now."""

    def __init__(self, store: ChainStore, heads: HeadRecords | None = None) -> None:
        super().__init__(store.pact.model, lambda: store.state(CHAIN_PARAMETER), heads)
        self.store = store


@dataclass(frozen=True, slots=True)
class StaticModelView:
    """A fixed model (tests, benchmarks)."""

    spec: ModelSpec
    states: Mapping[str, ExpertState]
    heads: HeadRecords | None = None
    accepted: Mapping[bytes, AcceptedDelta] = field(default_factory=dict)
    claims: Sequence[ClaimRecord] = ()

    def get_state(self, name: str) -> ExpertState | None:
        return self.states.get(name)

    def get_record(self, name: str, state: ExpertState | None = None) -> TensorRecord | None:
        return resolve_record(name, state or self.get_state(name), self.heads, self.accepted.get)

    def get_accepted(self, claim_hash: bytes) -> AcceptedDelta | None:
        return self.accepted.get(claim_hash)

    def get_bundle_claims(self) -> Sequence[ClaimRecord]:
        return self.claims


def get_expert_heads(view: ModelView) -> dict[ExpertKey, bytes]:
    """(layer, expert) -> block hash, for every expert the chain knows."""
    heads = {}
    for layer in range(view.spec.n_layers):
        for expert in range(view.spec.n_experts):
            state = view.get_state(expert_name((layer, expert)))
            if state is not None:
                heads[(layer, expert)] = state.head
    return heads


def is_loadable(view: ModelView, name: str, blobs: BlobStore | None) -> bool:
    """Whether the block's current weights are here (its blob, or its materialised head)."""
    record = view.get_record(name)
    return record is not None and blobs is not None and blobs.has(record.blob_id)


def get_loadable_record(view: ModelView, name: str, state: ExpertState | None) -> TensorRecord:
    """The record of the block's weights at `state`; `WeightsUnavailable` when there is none yet."""
    if state is None:
        raise WeightsUnavailable(name, "not on the chain")
    record = view.get_record(name, state)
    if record is None:
        raise WeightsUnavailable(name, f"delta {state.head.hex()[:16]} not materialised yet")
    return record


def build_shared_model(view: ModelView, blobs: BlobStore | None, loader: BlobLoader | None = None) -> MoEModel:
    """The model with its shared blocks (embed, attn, router, head) loaded at their current
    weights and experts left on the meta device (no memory): experts run through `LocalExperts`
    or on other nodes. A new object every call: a model in use is never changed."""
    cfg = MoEConfig.from_spec(view.spec)
    with torch.device("meta"):
        model = MoEModel(cfg)
    for name in model.block_names():
        if ".expert" in name:
            continue
        record = get_loadable_record(view, name, view.get_state(name))
        model.get_block(name).to_empty(device="cpu")
        model.load_block_state_dict(name, load_block_tensors(blobs, record, loader))
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
        """Load the expert's current weights and pin them (unpinning the version served before:
        forwards already running on it keep their module); its block hash."""
        state = self.view.get_state(expert_name(key))
        module = self._load(key, state)
        with self._lock:
            old = self.served.get(key)
            if old is not None and old != state.head:
                self._pinned.pop((key, old), None)
            self._pinned[(key, state.head)] = module
            self.served[key] = state.head
        return state.head

    def unserve(self, key: ExpertKey) -> None:
        """Stop serving the expert and unpin it (forwards already running keep their module)."""
        with self._lock:
            old = self.served.pop(key, None)
            if old is not None:
                self._pinned.pop((key, old), None)

    def is_served(self, key: ExpertKey, block_hash: bytes) -> bool:
        return self.served.get(key) == block_hash

    def can_load(self, key: ExpertKey, block_hash: bytes) -> bool:
        """Whether this node holds (or can load) exactly these weights."""
        if self.is_served(key, block_hash):
            return True
        state = self.view.get_state(expert_name(key))
        if state is None or state.head != block_hash:
            return False
        record = self.view.get_record(expert_name(key), state)
        return record is not None and self.blobs is not None and self.blobs.has(record.blob_id)

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
        record = get_loadable_record(self.view, name, state)
        with torch.device("meta"):
            module = Expert(self.cfg)
        module.to_empty(device="cpu")
        tensors = load_block_tensors(self.blobs, record, self.loader)
        if set(tensors) != set(module.state_dict()):
            raise WeightsUnavailable(name, f"tensors {sorted(tensors)} do not fit an expert")
        try:
            module.load_state_dict(tensors, strict=True)
        except RuntimeError as err:  # shapes that do not fit this model
            raise WeightsUnavailable(name, f"tensors do not fit: {err}") from err
        return module.eval()
