"""What training and verification read: the model at the chain's heads, the chain's tokenizer,
and token streams of datasets by CID — from a `Materials` (the genesis, a `LedgerView`, and a
way to get verified blobs).

Token streams are built as the genesis build builds its own: each file's tokens, then
`<|endoftext|>`, files in the order given. A dataset's blob id is the digest inside its CID (a raw
CIDv1 names the SHA-256 of its bytes); the bytes are UTF-8 text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer
from torch import Tensor

from chain.blobs import BlobStore
from chain.crypto import digest_from_cid
from chain.errors import BlyanError
from chain.ledger import LedgerView
from chain.pact import GenesisPact
from chain.tensors import TOKENIZER_BLOCK, TensorRecord
from gpu.model import MoEConfig, MoEModel
from gpu.tokenizer import InvalidTokenizer, encode_texts, get_eot_id, load_tokenizer_block
from gpu.weights import decode_block

GetBlob = Callable[[bytes], bytes]
"""Blob id -> its bytes, verified against the id; raises `MaterialMissing`."""


class MaterialMissing(BlyanError):
    """Something training or verification needs is not here: a blob, a block, a dataset."""


def blob_getter(blobs: BlobStore | Mapping[bytes, bytes]) -> GetBlob:
    """`GetBlob` over a node's blob store (each read checked against its id) or a dict of blobs."""

    def get_blob(blob_id: bytes) -> bytes:
        try:
            return blobs[blob_id] if isinstance(blobs, Mapping) else blobs.get(blob_id, verify=True)
        except (KeyError, BlyanError) as err:
            raise MaterialMissing(f"blob {blob_id.hex()[:16]}: {err}") from err

    return get_blob


@dataclass(frozen=True, slots=True)
class Materials:
    """The network's genesis, the chains as learning sees them, and blobs."""

    pact: GenesisPact
    """Genesis (parameters, model spec)."""
    genesis_hash: bytes
    """Its hash."""
    ledger: LedgerView
    """Heads, datasets, the validation set."""
    get_blob: GetBlob
    """Verified blob bytes by id."""
    head_records: Mapping[str, TensorRecord] = field(default_factory=dict)
    """Block name -> the record of its materialised current weights, for blocks with accepted
    deltas (`node.experts.materialise`; a lazy Mapping will do). Checked against the ledger's
    weights root before use."""


def get_weights_blob_id(m: Materials, name: str) -> bytes:
    """The blob holding block `name`'s weights at its head; `MaterialMissing` if none is here."""
    block = m.ledger.blocks.get(name)
    if block is None:
        raise MaterialMissing(f"block {name} is not on the parameter chain")
    if not block.deltas:
        return block.record.blob_id
    record = m.head_records.get(name)
    if record is None or record.merkle_root != block.weights_root:
        raise MaterialMissing(f"block {name} has {block.deltas} accepted deltas: its weights at head "
                              f"{block.head.hex()[:16]} are not materialised here yet")
    return record.blob_id


def load_base_model(m: Materials) -> MoEModel:
    """The whole model at the chain's heads (on the CPU, in eval mode)."""
    cfg = MoEConfig.from_spec(m.pact.model)
    model = MoEModel(cfg)
    for name in model.block_names():
        model.load_block_state_dict(name, decode_block(m.get_blob(get_weights_blob_id(m, name))))
    return model.eval()


def load_block_weights(m: Materials, names: Sequence[str]) -> dict[str, Tensor]:
    """Tensors of the named blocks at their heads, as "<block>/<tensor>"."""
    out: dict[str, Tensor] = {}
    for name in names:
        for tensor, value in decode_block(m.get_blob(get_weights_blob_id(m, name))).items():
            out[f"{name}/{tensor}"] = value
    return out


def load_tokenizer(m: Materials) -> Tokenizer:
    block = m.ledger.blocks.get(TOKENIZER_BLOCK)
    if block is None:
        raise MaterialMissing("the parameter chain has no tokenizer block")
    try:
        return load_tokenizer_block(m.get_blob(block.record.blob_id))
    except InvalidTokenizer as err:
        raise MaterialMissing(f"tokenizer block: {err}") from err


def read_dataset_text(m: Materials, cid: str) -> str:
    try:
        blob_id = digest_from_cid(cid)
    except ValueError as err:
        raise MaterialMissing(f"dataset {cid}: only raw CIDv1 datasets are read here ({err})") from err
    data = m.get_blob(blob_id)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MaterialMissing(f"dataset {cid} is not UTF-8 text") from err


def build_stream(m: Materials, tokenizer: Tokenizer, cids: Sequence[str]) -> Tensor:
    """The token stream of the datasets, in order: each file's tokens then <|endoftext|>."""
    eot = get_eot_id(tokenizer)
    ids: list[int] = []
    for file_ids in encode_texts(tokenizer, [read_dataset_text(m, cid) for cid in cids]):
        ids.extend(file_ids)
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.long)  # [n]


def validation_stream(m: Materials, tokenizer: Tokenizer) -> Tensor:
    if not m.ledger.validation:
        raise MaterialMissing("the dataset chain has no validation set")
    return build_stream(m, tokenizer, m.ledger.validation)
