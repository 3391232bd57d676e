"""Protocol constants of the built-in networks."""

from __future__ import annotations

from chain.params import ChainParams, TrustLevel

AUDIT_VERSION = "blyan-audit/0.1"


def devnet_params() -> ChainParams:
    """The devnet: fast blocks, short epochs and unbonding, easy proof of work."""
    return ChainParams(
        block_time_ms=1_000,
        timeout_propose_ms=1_500,
        timeout_vote_ms=500,
        timeout_delta_ms=500,
        epoch_length=100,
        unbonding_period=20,
        max_block_txs=2_000,
        max_block_bytes=8 * 1024 * 1024,
        max_tx_bytes=256 * 1024,
        min_validator_stake=1_000,
        slash_ppm=100_000,
        pow_difficulty_bits=12,
        trust_levels=(TrustLevel(0, 4), TrustLevel(3, 16), TrustLevel(10, 64)),
        delta_reward=100,
        dataset_rewards=(0, 10, 25, 50),
        pol_min_improvement_ppm=1_000,
        pol_replay_tolerance_ppm=10_000,
        audit_version=AUDIT_VERSION,
        max_dataset_bytes=1 << 30,
    )


def test_params(**overrides: object) -> ChainParams:
    """Devnet constants with trivial proof of work and short epochs, for tests."""
    from dataclasses import replace

    base = replace(devnet_params(), pow_difficulty_bits=4, epoch_length=10, unbonding_period=3)
    return replace(base, **overrides)
