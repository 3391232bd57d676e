"""Protocol constants of the built-in networks."""

from __future__ import annotations

from dataclasses import replace

from chain.params import (
    TIER_SILVER,
    AuditParams,
    ChainParams,
    ConsensusParams,
    DataPolicy,
    DatasetParams,
    PolParams,
    ReputationParams,
    RewardParams,
    StakingParams,
    TrustLevel,
)

AUDIT_VERSION = "blyan-l0/1"
"""The L0 audit program (node.data.l0.audit.AUDIT_VERSION) every node of these networks runs."""


def devnet_params() -> ChainParams:
    """The devnet: fast blocks, short epochs and unbonding, easy proof of work."""
    return ChainParams(
        consensus=ConsensusParams(
            block_time_ms=1_000,
            timeout_propose_ms=1_500,
            timeout_vote_ms=500,
            timeout_delta_ms=500,
            max_block_txs=2_000,
            max_block_bytes=8 * 1024 * 1024,
            max_tx_bytes=256 * 1024,
        ),
        staking=StakingParams(
            epoch_length=100,
            unbonding_period=20,
            min_validator_stake=1_000,
            slash_ppm=100_000,
        ),
        dataset=DatasetParams(
            pow_difficulty_bits=18,  # about 0.3 s of one core; the roadmap's "3-second CPU hash" is 22 bits
            pow_window=64,
            trust_levels=(TrustLevel(0, 4), TrustLevel(3, 16), TrustLevel(10, 64)),
            audit_version=AUDIT_VERSION,
            max_dataset_bytes=64 * 1024 * 1024,
            audit=AuditParams(max_record_bytes=1 << 20, minhash_perm=128, shingle_words=5,
                              lsh_threshold_ppm=500_000, toxicity_sample=2_000, toxicity_threshold_ppm=500_000),
            policy=DataPolicy(max_pii=4, max_toxic_ppm=50_000, max_duplicate_ppm=300_000,
                              near_duplicate_ppm=800_000),
            reputation=ReputationParams(honeypot_tolerance=0, min_factor_ppm=100_000, prior_votes=4),
            honeypots=(),
        ),
        pol=PolParams(
            min_improvement_ppm=1_000,
            replay_tolerance_ppm=10_000,
            replay_linf_ppm=10_000,
            replay_min_cosine_ppm=999_000,
            checkpoint_every=16,
            top_segments=1,
            random_segments=1,
            max_steps=20_000,
            eval_windows=64,
            eval_seq_len=128,
            max_delta_norm_ppm=500_000,
            max_compression_error_ppm=990_000,
            min_dataset_tier=TIER_SILVER,
            round_length=8,
            reveal_window=32,
            vote_window=600,
            max_open_claims=4,
            snapshot_every=4,
        ),
        rewards=RewardParams(delta_reward=100, delta_gain_reward=100_000, delta_reward_cap=1_000, pol_vote_reward=5,
                             dataset_rewards=(0, 10, 25, 50), dataset_vote_reward=2),
    )


def test_params(**overrides: object) -> ChainParams:
    """Devnet constants with trivial proof of work and short epochs, for tests; `overrides`
    replace whole groups (`staking=replace(test_params().staking, epoch_length=5)`)."""
    devnet = devnet_params()
    base = replace(
        devnet,
        dataset=replace(devnet.dataset, pow_difficulty_bits=4),
        staking=replace(devnet.staking, epoch_length=10, unbonding_period=3),
    )
    return replace(base, **overrides)
