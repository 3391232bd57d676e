"""The heads of the model's blocks on the parameter chain, and what a delta claim must say about
them: a known block, its current head as the base (compare-and-swap), a later round, a known
compression pipeline.

An expert's head is the hash of its last block: the genesis `TensorRecord`, then each accepted
`DeltaClaim` (which names the previous head as its base), then each `SnapshotClaim`.
"""

from __future__ import annotations

import re

from chain.errors import InvalidTransaction
from chain.payloads import DeltaClaim
from chain.records import ExpertState, expert_key, manifest_key
from chain.state import Overlay

MAX_DELTAS_BEFORE_SNAPSHOT = 4096
COMPRESSION_STAGES = frozenset({"dense", "topk", "lowrank", "int8", "int4", "int2"})
"""Stages of a compression pipeline (`gpu.delta.CompressionConfig.method`)."""
_STAGE = re.compile(r"([a-z0-9]+)(?:\(([a-z_]+=[0-9]+(?:,[a-z_]+=[0-9]+)*)\))?")


def get_expert(view: Overlay, name: str) -> ExpertState | None:
    return view.get_record(expert_key(name), ExpertState)


def bump_version(version: str, part: int) -> str:
    """SemVer bump: part 2 = patch, 1 = minor (resets patch)."""
    try:
        major, minor, patch = (int(x) for x in version.split("."))
    except ValueError as err:
        raise InvalidTransaction(f"version {version!r} is not SemVer") from err
    if part == 1:
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


def is_compression_method(method: str) -> bool:
    """Stages joined by "+", each a known name with optional integer parameters:
    "topk(chunk=4096,density=20000)+int2", "lowrank(rank=8)+int8", "dense"."""
    stages = method.split("+")
    for stage in stages:
        m = _STAGE.fullmatch(stage)
        if m is None or m[1] not in COMPRESSION_STAGES:
            return False
    return True


def validate_delta_claim(view: Overlay, claim: DeltaClaim) -> list[ExpertState]:
    """The claim's own rules; returns the state of each block it changes, in its order."""
    names = [change.name for change in claim.blocks]
    if names != sorted(set(names)):
        raise InvalidTransaction("delta blocks not sorted by name or repeated")
    if view.get(manifest_key(claim.manifest_hash)) is not None:
        raise InvalidTransaction("a delta of this training manifest was accepted already")
    if not is_compression_method(claim.compression):
        raise InvalidTransaction(f"unknown compression {claim.compression!r}")
    if claim.delta_size == 0 or claim.raw_size == 0 or claim.ratio_ppm == 0 or claim.ratio_ppm > 1_000_000:
        raise InvalidTransaction("delta sizes and ratio must be positive, ratio at most 1")
    states = []
    for change in claim.blocks:
        expert = get_expert(view, change.name)
        if expert is None:
            raise InvalidTransaction(f"no expert {change.name!r} (nor module of that name)")
        if change.base != expert.head:
            raise InvalidTransaction(f"delta base of {change.name} is not its head (trained on a stale base)")
        if claim.round_id <= expert.last_round:
            raise InvalidTransaction(f"round {claim.round_id} not after {expert.last_round} of {change.name}")
        if len(expert.deltas) >= MAX_DELTAS_BEFORE_SNAPSHOT:
            raise InvalidTransaction(f"{change.name} needs a snapshot before more deltas")
        states.append(expert)
    return states
