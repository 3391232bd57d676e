"""The `[data]` and `[ipfs]` sections of config.toml: the validator's data work, and the node's IPFS daemon."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DataConfig:
    audit: bool = True
    """Validators audit and vote on submitted datasets (off: this validator abstains)."""
    embeddings: bool = False
    """Load sentence embeddings (the `embeddings` extra, about 580 MB) for the L1 score."""


@dataclass(frozen=True, slots=True)
class IpfsConfig:
    api: str = ""
    """Multiaddr of an IPFS daemon's HTTP API (e.g. "/ip4/127.0.0.1/tcp/5001"); empty: none. With
    one, the node pins the datasets it submits and the approved ones it holds, and fetches from
    it what no peer serves."""
    timeout_s: float = 60.0
    """Deadline of one call to the daemon."""
