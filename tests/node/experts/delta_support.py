"""Real deltas on the learning world's model, accepted on in-memory chains: a block's tensors plus
a small seeded change, compressed with the real codec, the result roots computed as a contributor
computes them, and the claim driven to acceptance by `genesis.roundkit.accept_delta`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from chain import codec
from chain.heads import get_expert
from chain.learning import BlockBase, SignedManifest, sign_manifest
from chain.payloads import DeltaClaim
from chain.records import AcceptedDelta, ExpertState, delta_key
from chain.rounds import compute_round, get_model_head
from chain.state import Overlay
from chain.tensors import DEFAULT_SUBTILE_SIZE
from chain.types import CHAIN_PARAMETER
from genesis.learningkit import LEARNING_CONTRIBUTOR, LEARNING_VALIDATOR, LearningWorld, make_learning_world
from genesis.roundkit import accept_delta, make_manifest
from genesis.testkit import LocalChains
from gpu.delta import CompressionConfig, compress_delta, decode_delta
from gpu.delta_ops import apply_delta
from gpu.tiles import compute_tensor_root
from gpu.weights import encode_block
from node.pol.contributor import compute_result_roots

METHOD = "int8"


@dataclass(frozen=True, slots=True)
class RealDelta:
    signed: SignedManifest
    """The signed manifest naming the real blobs and roots."""
    blob: bytes
    """The compressed delta."""
    results: dict[str, dict[str, Tensor]]
    """Block -> its weights after base + decode(blob)."""


def make_world_chains() -> tuple[LearningWorld, LocalChains]:
    world = make_learning_world()
    return world, LocalChains.create(world.pact, [LEARNING_VALIDATOR])


def get_state(chains: LocalChains, name: str) -> ExpertState:
    return get_expert(Overlay(chains.states[CHAIN_PARAMETER]), name)


def get_accepted(chains: LocalChains):
    def get(claim_hash: bytes) -> AcceptedDelta | None:
        return Overlay(chains.states[CHAIN_PARAMETER]).get_record(delta_key(claim_hash), AcceptedDelta)
    return get


def make_real_delta(chains: LocalChains, bases: Mapping[str, dict[str, Tensor]], seed: int, *,
                    tag: bytes = b"real", scale: float = 1e-2, result_roots: Mapping[str, bytes] | None = None,
                    ) -> RealDelta:
    """A manifest changing `bases` (block -> its current weights) by seeded noise."""
    gen = torch.Generator().manual_seed(seed)
    delta = {f"{name}/{t}": torch.randn(v.shape, generator=gen) * scale
             for name, tensors in sorted(bases.items()) for t, v in sorted(tensors.items())}
    blob = compress_delta(delta, CompressionConfig.parse(METHOD)).blob
    base = {f"{name}/{t}": v for name, tensors in bases.items() for t, v in tensors.items()}
    new = apply_delta(base, decode_delta(blob))
    roots = dict(compute_result_roots(sorted(bases), new))
    roots.update(result_roots or {})
    round_id = compute_round(chains.states[CHAIN_PARAMETER].height + 1, chains.context())
    heads = [(name, get_state(chains, name).head) for name in sorted(bases)]
    man = make_manifest(LEARNING_CONTRIBUTOR, chains.pact.network_id, heads, round_id, tag=tag,
                        method=METHOD, model_head=get_model_head(Overlay(chains.states[CHAIN_PARAMETER]))).manifest
    man = replace(
        man,
        blocks=tuple(BlockBase(name, head, compute_tensor_root(encode_block(bases[name]), DEFAULT_SUBTILE_SIZE),
                               roots[name]) for name, head in heads),
        delta=replace(man.delta, method=METHOD, blob_id=codec.sha256(blob),
                      root=compute_tensor_root(blob, DEFAULT_SUBTILE_SIZE), raw_bytes=4 * sum(
                          t.numel() for t in delta.values()), compressed_bytes=len(blob)),
    )
    results = {name: {k.split("/", 1)[1]: v for k, v in new.items() if k.split("/", 1)[0] == name}
               for name in bases}
    return RealDelta(sign_manifest(LEARNING_CONTRIBUTOR, man), blob, results)


def accept(chains: LocalChains, real: RealDelta) -> tuple[bytes, DeltaClaim]:
    claim = accept_delta(chains, LEARNING_CONTRIBUTOR, real.signed)
    return codec.hash_of(claim), claim
