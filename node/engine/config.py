"""Operator-side settings of the engine (protocol constants come from genesis, not here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from chain.params import ChainParams
from consensus.mempool import MempoolConfig
from consensus.tendermint import TendermintConfig


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How the engine runs consensus for the three chains."""

    tendermint: TendermintConfig = field(default_factory=TendermintConfig)
    """Round timeouts."""
    mempool: MempoolConfig = field(default_factory=MempoolConfig)
    """Mempool caps."""
    rebroadcast_s: float = 1.0
    """How often the current height's own votes and proposal are gossiped again."""
    request_timeout_s: float = 2.0
    """Deadline of a proposal request."""
    event_queue: int = 4096
    """Events waiting for a chain's runner; beyond, gossip is dropped (and re-gossiped later)."""
    max_future_drift_ms: int = 15_000
    """A proposed block whose time is further ahead of our clock is not valid."""
    offload_writes: bool = False
    """Write blocks from a worker thread (the daemon), not on the event loop. Off in
    simulations: a thread's finishing time is not deterministic."""

    @classmethod
    def for_tests(cls) -> EngineConfig:
        return cls(tendermint=TendermintConfig.for_tests(), mempool=MempoolConfig.for_tests(),
                   rebroadcast_s=0.5, request_timeout_s=1.0)

    @classmethod
    def from_params(cls, params: ChainParams, **overrides: object) -> EngineConfig:
        """Round timeouts from the genesis parameters; anything else from `overrides`."""
        timing = params.consensus
        tm = TendermintConfig(
            timeout_propose_ms=timing.timeout_propose_ms, timeout_prevote_ms=timing.timeout_vote_ms,
            timeout_precommit_ms=timing.timeout_vote_ms, timeout_delta_ms=timing.timeout_delta_ms,
        )
        return cls(tendermint=tm, **overrides)
