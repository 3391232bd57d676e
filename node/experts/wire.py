"""Wire types of expert serving: announcements on gossip and the expert-forward protocol.

An announcement says which experts a node serves (with the block hash of the weights it
holds), its tier and its load. It is signed with the node's key (`KIND_ANNOUNCE`) and names
the node's peer id; the receiver checks the signature and that the key is the peer id's
(on libp2p the peer id is derived from the same Ed25519 key), so nobody can announce for
another peer.

A forward request carries, for one layer, one item per expert: the expert, the block hash
the client expects, and the rows (float32, row-major) routed to it. The response carries
one output per item and the block hash actually used. Both have hard size caps.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch

from chain import codec, crypto
from chain.codec import U8, U16, U32, U64, Bytes, Hash32, PubKey, Seq, Signature, Str, wire
from chain.errors import BlyanError, DecodingError

T = TypeVar("T")

TOPIC_EXPERTS = "experts"
PROTOCOL_EXPERT_FORWARD = "expert_forward"

MAX_OFFERS = 4096
"""Experts one announcement may list."""
MAX_ANNOUNCEMENT_BYTES = 256 * 1024
MAX_ITEMS = 256
"""Experts one forward request may name (one layer: at most n_experts)."""
MAX_ITEM_BYTES = 8 * 1024 * 1024
"""Hidden states of one expert in one request."""
MAX_FORWARD_BYTES = 16 * 1024 * 1024
"""A whole forward request or response."""
MAX_PEER_ID = 128


class ExpertError(BlyanError):
    """Root of the errors of expert serving and distributed inference."""


class ExpertNotServed(ExpertError):
    """A request for an expert (or a version of its weights) this node does not serve."""

    def __init__(self, layer: int, expert: int, block_hash: bytes) -> None:
        self.layer, self.expert, self.block_hash = layer, expert, block_hash
        super().__init__(f"layer{layer}.expert{expert} at {block_hash.hex()[:16]} is not served here")


class InvalidExpertMessage(ExpertError):
    """An announcement, request or response that is well-encoded but wrong (shape, signature...)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@wire
class ExpertOffer:
    """One expert a node serves."""

    layer: U16
    """Decoder layer."""
    expert: U16
    """Expert index in the layer."""
    block_hash: Hash32
    """Head of the expert on the parameter chain: which weights exactly."""


@wire
class AnnouncementBody:
    """What a node signs."""

    node: Str(MAX_PEER_ID)
    """Peer id of the serving node."""
    public_key: PubKey
    """Its Ed25519 key (the libp2p identity key)."""
    time_ms: U64
    """When it was made (the node's clock); a later one replaces an earlier one."""
    ttl_ms: U32
    """How long it holds unless renewed."""
    tier: U8
    """Hardware tier (0 = CPU)."""
    load: U16
    """Forward requests in progress when it was made."""
    offers: Seq(ExpertOffer, MAX_OFFERS)
    """Experts served, sorted by (layer, expert)."""


@wire
class ExpertAnnouncement:
    body: AnnouncementBody
    """The signed part."""
    signature: Signature
    """Over encode(body), kind "announce", this network."""


def sign_announcement(body: AnnouncementBody, key: crypto.PrivateKey, network_id: str) -> ExpertAnnouncement:
    return ExpertAnnouncement(body, key.sign(network_id, crypto.KIND_ANNOUNCE, codec.encode(body)))


def validate_announcement(ann: ExpertAnnouncement, network_id: str) -> None:
    """`InvalidExpertMessage` unless signed by its key, with offers sorted and unique."""
    body = ann.body
    if not crypto.is_valid_signature(body.public_key, network_id, crypto.KIND_ANNOUNCE,
                                     codec.encode(body), ann.signature):
        raise InvalidExpertMessage("bad announcement signature")
    keys = [(o.layer, o.expert) for o in body.offers]
    if keys != sorted(set(keys)):
        raise InvalidExpertMessage("offers not sorted by (layer, expert) or duplicated")


@wire
class ForwardItem:
    """The rows routed to one expert."""

    expert: U16
    """Expert index in the request's layer."""
    block_hash: Hash32
    """Weights the client expects (the expert's head on the parameter chain)."""
    rows: U32
    """Number of rows."""
    data: Bytes(MAX_ITEM_BYTES)
    """rows x d_model float32, little-endian, row-major."""


@wire
class ForwardRequest:
    layer: U16
    """Decoder layer."""
    d_model: U32
    """Row width."""
    items: Seq(ForwardItem, MAX_ITEMS, min_len=1)
    """One per expert, experts ascending and distinct."""


@wire
class ForwardOutput:
    expert: U16
    """Expert index."""
    block_hash: Hash32
    """Weights actually used."""
    rows: U32
    """Number of rows."""
    data: Bytes(MAX_ITEM_BYTES)
    """rows x d_model float32 outputs."""


@wire
class ForwardResponse:
    outputs: Seq(ForwardOutput, MAX_ITEMS)
    """One per request item, in the same order."""


def encode_rows(x: torch.Tensor) -> bytes:
    """Float32 row-major bytes of a [n, D] tensor."""
    return x.detach().to(torch.float32).contiguous().numpy().tobytes()


def decode_rows(data: bytes, rows: int, d_model: int) -> torch.Tensor:
    """A [rows, d_model] float32 tensor; `InvalidExpertMessage` for a wrong size or non-finite values."""
    if len(data) != rows * d_model * 4:
        raise InvalidExpertMessage(f"{len(data)} bytes for {rows} x {d_model} float32")
    x = torch.frombuffer(bytearray(data), dtype=torch.float32).view(rows, d_model)  # [n, D]
    if rows and not bool(torch.isfinite(x).all()):
        raise InvalidExpertMessage("non-finite values")
    return x


def validate_request(req: ForwardRequest, n_layers: int, n_experts: int, d_model: int) -> None:
    """The request's shape fits the model (`InvalidExpertMessage` otherwise)."""
    if req.layer >= n_layers:
        raise InvalidExpertMessage(f"layer {req.layer} >= {n_layers}")
    if req.d_model != d_model:
        raise InvalidExpertMessage(f"d_model {req.d_model}, the model's is {d_model}")
    experts = [it.expert for it in req.items]
    if experts != sorted(set(experts)) or experts[-1] >= n_experts:
        raise InvalidExpertMessage("items must name distinct experts in ascending order, < n_experts")
    for it in req.items:
        if it.rows == 0 or len(it.data) != it.rows * d_model * 4:
            raise InvalidExpertMessage(f"expert {it.expert}: {len(it.data)} bytes for {it.rows} rows")


def validate_response(resp: ForwardResponse, req: ForwardRequest) -> None:
    """One output per item, same experts, same block hashes, same row counts."""
    if len(resp.outputs) != len(req.items):
        raise InvalidExpertMessage(f"{len(resp.outputs)} outputs for {len(req.items)} experts")
    for out, it in zip(resp.outputs, req.items, strict=True):
        if out.expert != it.expert or out.rows != it.rows:
            raise InvalidExpertMessage(f"output for expert {out.expert} x{out.rows}, asked {it.expert} x{it.rows}")
        if out.block_hash != it.block_hash:
            raise InvalidExpertMessage(f"expert {it.expert} computed with other weights")


def decode_message(cls: type[T], data: bytes, max_size: int) -> T:
    """`codec.decode` whose failure is an `InvalidExpertMessage` too (one except clause)."""
    try:
        return codec.decode(cls, data, max_size=max_size)
    except DecodingError as err:
        raise InvalidExpertMessage(f"undecodable {cls.__name__}: {err}") from err


def is_close(a: torch.Tensor, b: torch.Tensor, tolerance: float) -> bool:
    """Whether two outputs agree within `tolerance`, relative to the reference's scale."""
    if a.shape != b.shape:
        return False
    scale = max(1.0, float(b.abs().max()) if b.numel() else 1.0)
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    return math.isfinite(diff) and diff <= tolerance * scale
