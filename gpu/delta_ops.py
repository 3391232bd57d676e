"""Arithmetic on weight deltas (qualified tensor name -> float32 tensor): differences, sums, and
exact norms.

Norms are exact (sums of squares in integers, rounded once), so that a bound on a norm gives the
same verdict on every machine. `InvalidDelta` is the error of every delta rule (here and in
`gpu.delta`); `NonFiniteDelta` is the one for NaN and infinities.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from chain.errors import BlyanError

SQUARES_SCALE = 1 << 298  # x^2 of every float32 x is an integer multiple of 2^-298
_SQ_SLICE = 1 << 22  # elements per step of the exact sum of squares


class InvalidDelta(BlyanError):
    """A delta or compressed-delta blob that breaks a rule of the format."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid delta: {reason}")


class NonFiniteDelta(InvalidDelta):
    """A delta (or the decoding of a blob) holds NaN or infinite values."""


def validate_same_tensors(a: dict[str, Tensor], b: dict[str, Tensor], what: str, float32: bool = True) -> None:
    """Same names and shapes (and float32 on both sides unless told otherwise)."""
    if not isinstance(a, dict) or not isinstance(b, dict) or set(a) != set(b):
        raise InvalidDelta(f"{what} names differ: {sorted(set(a or {}) ^ set(b or {}))}")
    for name, tensor in a.items():
        for t in (tensor, b[name]):
            if not isinstance(t, Tensor) or (float32 and t.dtype != torch.float32):
                raise InvalidDelta(f"{what} {name}: not a float32 tensor")
        if tuple(b[name].shape) != tuple(tensor.shape):
            raise InvalidDelta(f"{what} {name}: shape {tuple(b[name].shape)} is not {tuple(tensor.shape)}")


def compute_delta(trained: dict[str, Tensor], base: dict[str, Tensor]) -> dict[str, Tensor]:
    """trained - base per tensor, float32 (same names and shapes on both sides)."""
    validate_same_tensors(trained, base, "base")
    return {name: (trained[name].detach().cpu() - base[name].detach().cpu()).contiguous() for name in sorted(trained)}


def apply_delta(base: dict[str, Tensor], decoded: dict[str, Tensor]) -> dict[str, Tensor]:
    """base + decoded per tensor, float32; InvalidDelta when names, shapes or dtypes differ."""
    validate_same_tensors(base, decoded, "delta")
    return {name: (base[name].detach().cpu() + decoded[name].detach().cpu()).contiguous() for name in base}


def is_finite(delta: dict[str, Tensor]) -> bool:
    """No NaN and no infinity in any tensor."""
    return all(bool(torch.isfinite(t).all()) for t in delta.values())


def compute_norms(delta: dict[str, Tensor]) -> tuple[float, float]:
    """(l2 over all tensors, linf) of a finite float32 delta, the same on every machine."""
    validate_same_tensors(delta, delta, "delta")
    if not is_finite(delta):
        raise NonFiniteDelta("the delta has NaN or infinite values")
    linf = max((float(t.abs().max()) for t in delta.values() if t.numel()), default=0.0)
    return math.sqrt(compute_scaled_sum_squares(delta) / SQUARES_SCALE), linf  # int / int: correctly rounded


def compute_relative_error(decoded: dict[str, Tensor], target: dict[str, Tensor]) -> float:
    """||decoded - target|| / ||target|| over float32 tensors, exactly: 0 when both are zero,
    infinite when only the target is (nothing can be within any share of nothing)."""
    validate_same_tensors(decoded, target, "target")
    total = compute_scaled_sum_squares(target)
    err = compute_scaled_sum_squares({name: decoded[name] - target[name] for name in target})  # float32 diff
    if not total:
        return 0.0 if not err else math.inf
    return math.sqrt(err / total)  # int / int: correctly rounded


def compute_scaled_sum_squares(tensors: dict[str, Tensor]) -> int:
    """The exact sum of x^2 over finite float32 tensors, times SQUARES_SCALE (an integer).

    x = m * 2^(e - 150) with m < 2^24 an integer (e the biased exponent, 1 for subnormals), so
    x^2 = m^2 * 2^(2e - 300); the m^2 of each exponent sum exactly in int64 (split in two 24-bit
    halves), then in Python integers."""
    hi = torch.zeros(256, dtype=torch.int64)  # [exponent]
    lo = torch.zeros(256, dtype=torch.int64)  # [exponent]
    for tensor in tensors.values():
        flat = tensor.detach().cpu().contiguous().reshape(-1)  # [n]
        for start in range(0, flat.numel(), _SQ_SLICE):
            bits = flat[start : start + _SQ_SLICE].view(torch.int32).to(torch.int64) & 0x7FFFFFFF  # [s]
            exponent = bits >> 23  # [s]
            mantissa = torch.where(exponent > 0, (bits & 0x7FFFFF) | 0x800000, bits)  # [s]
            square = mantissa * mantissa  # [s] < 2^48
            hi.index_add_(0, exponent, square >> 24)
            lo.index_add_(0, exponent, square & 0xFFFFFF)
    total = 0
    for e, (h, low) in enumerate(zip(hi.tolist(), lo.tolist(), strict=True)):
        if h or low:
            total += ((h << 24) + low) << (2 * max(e, 1) - 2)
    return total
