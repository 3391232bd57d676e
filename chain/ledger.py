"""What learning reads of the chains, in one value: `LedgerView`.

A contributor trains from it and a validator checks a manifest against it: each block's head,
weights root, tensor record and last round (parameter chain), every dataset's status, tier and
role and the validation set (dataset chain), and the manifests already accepted. It is read from
the chain states (`read_ledger_view`) or, beside a running node whose LevelDB is locked, from the
node's RPC as JSON (`LedgerView.to_json` / `from_json`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from chain import codec
from chain.errors import DecodingError
from chain.records import (
    KEY_MODEL_HEAD,
    KEY_VALIDATION_SET,
    STATUS_APPROVED,
    AcceptedDelta,
    DatasetRecord,
    ExpertState,
    delta_key,
    is_expert_key,
    parse_expert_key,
)
from chain.state import Overlay, State
from chain.tensors import TOKENIZER_BLOCK, TensorRecord

REF_BYTES = 32


@dataclass(frozen=True, slots=True)
class BlockView:
    """One block of the model as the parameter chain has it now."""

    name: str
    """Block name."""
    head: bytes
    """Its head (the genesis record's hash, or the last accepted claim's)."""
    weights_root: bytes
    """Merkle root of its current weights."""
    record: TensorRecord
    """The full-weights record the deltas apply to (tensor names and shapes)."""
    deltas: int
    """Deltas accepted since that record."""
    last_round: int
    """Round of the last accepted delta."""


@dataclass(frozen=True, slots=True)
class DatasetView:
    cid: str
    """Content id."""
    status: int
    """STATUS_*."""
    tier: int
    """TIER_*."""
    role: str
    """"train" or "validation"."""
    size: int
    """Bytes."""


@dataclass(frozen=True, slots=True)
class LedgerView:
    """The parameter and dataset chains, as learning needs them."""

    blocks: dict[str, BlockView]
    """By block name."""
    datasets: dict[str, DatasetView]
    """By CID."""
    validation: tuple[str, ...]
    """CIDs of the validation set, in its order."""
    accepted_manifests: frozenset[bytes]
    """Hashes of manifests whose delta the parameter chain accepted."""
    model_head: bytes = bytes(32)
    """The model's head: the last claim applied (zero: the genesis model)."""

    @property
    def tokenizer_head(self) -> bytes | None:
        block = self.blocks.get(TOKENIZER_BLOCK)
        return None if block is None else block.head

    def is_trainable(self, cid: str, min_tier: int) -> bool:
        """Approved for training: approved, role train, tier at least `min_tier`, not validation."""
        ds = self.datasets.get(cid)
        return (ds is not None and ds.status == STATUS_APPROVED and ds.role == "train" and ds.tier >= min_tier
                and cid not in self.validation)

    def training_cids(self, min_tier: int) -> list[str]:
        """Every dataset training may use, in CID order."""
        return sorted(cid for cid in self.datasets if self.is_trainable(cid, min_tier))

    # --- JSON, for the RPC ----------------------------------------------------------------------

    def to_json(self) -> dict:
        return {
            "blocks": {name: {"head": b.head.hex(), "weights_root": b.weights_root.hex(),
                              "record": codec.encode(b.record).hex(), "deltas": b.deltas,
                              "last_round": b.last_round} for name, b in sorted(self.blocks.items())},
            "datasets": [{"cid": d.cid, "status": d.status, "tier": d.tier, "role": d.role, "size": d.size}
                         for _, d in sorted(self.datasets.items())],
            "validation": list(self.validation),
            "accepted_manifests": sorted(h.hex() for h in self.accepted_manifests),
            "model_head": self.model_head.hex(),
        }

    @classmethod
    def from_json(cls, data: dict) -> LedgerView:
        """The inverse of `to_json`; `ValueError` for anything malformed."""
        try:
            blocks = {}
            for name, b in data["blocks"].items():
                record = codec.decode(TensorRecord, bytes.fromhex(b["record"]), max_size=64 * 1024)
                if record.name != name:
                    raise ValueError(f"block {name!r} holds the record of {record.name!r}")
                blocks[name] = BlockView(name, _hash(b["head"]), _hash(b["weights_root"]), record,
                                         _count(b["deltas"]), _count(b["last_round"]))
            datasets = {}
            for d in data["datasets"]:
                datasets[_text(d["cid"])] = DatasetView(_text(d["cid"]), _count(d["status"]), _count(d["tier"]),
                                                        _text(d["role"]), _count(d["size"]))
            validation = tuple(_text(c) for c in _list(data["validation"]))
            accepted = frozenset(_hash(h) for h in _list(data["accepted_manifests"]))
            model_head = _hash(data["model_head"])
        except (KeyError, TypeError, AttributeError, DecodingError) as err:
            raise ValueError(f"malformed ledger view: {err}") from err
        return cls(blocks, datasets, validation, accepted, model_head)


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


def _list(value: object) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{value!r} is not a list")
    return value


def _hash(text: object) -> bytes:
    raw = bytes.fromhex(_text(text))
    if len(raw) != 32:
        raise ValueError("a hash has 32 bytes")
    return raw


def read_ledger_view(parameter: State | Overlay, dataset: State | Overlay) -> LedgerView:
    """The view of the two chains' current states."""
    blocks, accepted = _read_blocks(parameter)
    datasets: dict[str, DatasetView] = {}
    by_ref: dict[bytes, str] = {}
    for key, value in dataset.items():
        if key[:1] == b"d" and len(key) == 1 + REF_BYTES:
            rec = codec.decode(DatasetRecord, value)
            datasets[rec.cid] = DatasetView(rec.cid, rec.status, rec.tier, rec.role, rec.size)
            by_ref[key[1:]] = rec.cid
    raw = dataset.get(KEY_VALIDATION_SET) or b""
    refs = [raw[i:i + REF_BYTES] for i in range(0, len(raw), REF_BYTES)]
    validation = tuple(by_ref[ref] for ref in refs if ref in by_ref)
    return LedgerView(blocks, datasets, validation, frozenset(accepted),
                      parameter.get(KEY_MODEL_HEAD) or bytes(32))


def _read_blocks(parameter: State | Overlay) -> tuple[dict[str, BlockView], set[bytes]]:
    blocks: dict[str, BlockView] = {}
    accepted: set[bytes] = set()
    claims: dict[bytes, AcceptedDelta] = {}
    for key, value in parameter.items():
        if key[:1] == b"D" and len(key) == 33:
            claims[key[1:]] = codec.decode(AcceptedDelta, value)
            accepted.add(claims[key[1:]].claim.manifest_hash)
    for key, value in parameter.items():
        if not is_expert_key(key):
            continue
        state = codec.decode(ExpertState, value)
        name = parse_expert_key(key)
        root = state.record.merkle_root
        if state.deltas:
            last = claims.get(state.head)
            root = _result_root_of(last, name) if last is not None else root
        blocks[name] = BlockView(name, state.head, root, state.record, len(state.deltas), state.last_round)
    return blocks, accepted


def _result_root_of(accepted: AcceptedDelta, name: str) -> bytes:
    for change in accepted.claim.blocks:
        if change.name == name:
            return change.result_root
    return bytes(32)


def find_accepted(parameter: State | Overlay, claim_hashes: Iterable[bytes]) -> list[AcceptedDelta]:
    """The accepted deltas among `claim_hashes` (in that order)."""
    out = []
    for claim_hash in claim_hashes:
        raw = parameter.get(delta_key(claim_hash))
        if raw is not None:
            out.append(codec.decode(AcceptedDelta, raw))
    return out
