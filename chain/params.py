"""Protocol constants of a network, fixed by its genesis (`ChainParams`)."""

from __future__ import annotations

from chain.codec import U8, U16, U32, U64, Hash32, Seq, Str, wire

TIER_REJECT = 0
TIER_EXPERIMENTAL = 1
TIER_SILVER = 2
TIER_GOLD = 3
TIER_NAMES = {0: "rejected", 1: "experimental", 2: "silver", 3: "gold"}


@wire
class TrustLevel:
    """Submission quota for contributors with at least `min_approved` approved datasets."""

    min_approved: U32
    """Approved datasets needed for this level."""
    quota_per_epoch: U32
    """Dataset submissions allowed per epoch."""


@wire
class ConsensusParams:
    """Block timing and size limits, the same for the three chains."""

    block_time_ms: U32
    """Target interval between blocks of a busy chain."""
    timeout_propose_ms: U32
    """Round-0 propose timeout."""
    timeout_vote_ms: U32
    """Round-0 prevote/precommit timeout."""
    timeout_delta_ms: U32
    """Added to each timeout per round."""
    max_block_txs: U32
    """Transactions per block."""
    max_block_bytes: U32
    """Encoded block size."""
    max_tx_bytes: U32
    """Encoded transaction size."""


@wire
class StakingParams:
    """Epochs, bonding and slashing on the reward chain."""

    epoch_length: U32
    """Reward-chain blocks per epoch; the validator set changes at epoch boundaries."""
    unbonding_period: U32
    """Reward-chain blocks an unstaked amount waits before it is spendable."""
    min_validator_stake: U64
    """Stake needed to join the validator set."""
    slash_ppm: U32
    """Share of stake burned for equivocation, in millionths."""


@wire
class AuditParams:
    """How the L0 audit computes its figures: every node must compute the same report bytes."""

    max_record_bytes: U32
    """Longest record (line, JSON object, CSV row) the parser accepts."""
    minhash_perm: U16
    """Permutations of the MinHash signature (datasketch, seed 1)."""
    shingle_words: U8
    """Words per shingle of the MinHash set."""
    lsh_threshold_ppm: U32
    """Jaccard similarity at which the LSH index is tuned to find candidates, millionths."""
    toxicity_sample: U32
    """Records the toxicity classifier scores (a sample seeded by the CID; all if fewer)."""
    toxicity_threshold_ppm: U32
    """Classifier probability at or above which a record counts as toxic, millionths."""


@wire
class DataPolicy:
    """What an L0 report must show for its dataset to be admitted (chain.dataset.find_policy_violations)."""

    max_pii: U32
    """Most personal-data findings of all kinds together."""
    max_toxic_ppm: U32
    """Largest share of sampled records scored toxic, millionths."""
    max_duplicate_ppm: U32
    """Largest share of records that repeat an earlier one exactly, millionths."""
    near_duplicate_ppm: U32
    """Estimated Jaccard similarity to a held dataset at or above which a dataset is a near
    duplicate (refused), millionths."""


@wire
class ReputationParams:
    """Voter reputation from honeypots and outcomes, and how it bounds a validator's tier-vote weight."""

    honeypot_tolerance: U8
    """Tiers a vote on a honeypot may be off by and still count as right."""
    min_factor_ppm: U32
    """Weight factor of a validator that got every graded vote wrong, millionths (1,000,000:
    reputation does not matter)."""
    prior_votes: U16
    """Graded votes a new validator is credited with, all right (so one miss does not zero it)."""


@wire
class DatasetParams:
    """What a dataset submission must show and how many an account may make."""

    pow_difficulty_bits: U8
    """Leading zero bits of a dataset submission's proof of work."""
    pow_window: U32
    """Dataset-chain heights after its anchor block during which a proof of work is accepted."""
    trust_levels: Seq(TrustLevel, 16, 1)
    """Quotas by reputation, ascending by min_approved; the first has min_approved 0."""
    audit_version: Str(32)
    """The L0 audit program every node runs."""
    max_dataset_bytes: U64
    """Largest dataset a submission may declare."""
    audit: AuditParams
    """How the L0 audit computes its report."""
    policy: DataPolicy
    """What the report must show."""
    reputation: ReputationParams
    """How honeypots and outcomes grade the voters."""
    honeypots: Seq(Hash32, 256)
    """Commitments to the honeypot datasets: sha256(chain.dataset.HONEYPOT_DOMAIN, CID, tier, salt).
    Their content is submitted like any other; the label is revealed after the votes close."""

    def quota_for(self, approved: int) -> int:
        """Submissions per epoch allowed to a contributor with `approved` approved datasets."""
        quota = 0
        for level in self.trust_levels:
            if approved >= level.min_approved:
                quota = level.quota_per_epoch
        return quota


@wire
class PolParams:
    """How a validator checks a delta (Proof-of-Learning) and when its vote accepts it."""

    min_improvement_ppm: U32
    """Smallest relative validation-loss improvement a delta must show, in millionths."""
    replay_tolerance_ppm: U32
    """Largest relative l2 distance of replayed weights from a claimed checkpoint (another
    machine kind; on the claimed one a replay must be bit-exact)."""
    replay_linf_ppm: U32
    """Largest absolute difference of one replayed weight from the claimed one, millionths."""
    replay_min_cosine_ppm: U32
    """Smallest cosine similarity of replayed and claimed weights, millionths."""
    checkpoint_every: U32
    """k: steps between checkpoints a manifest must declare."""
    top_segments: U8
    """Q: replayed segments chosen among those with the largest updates."""
    random_segments: U8
    """Replayed segments chosen at random (by a seed of the claim and the validator's key)."""
    max_steps: U32
    """Most optimizer steps a manifest may declare (bounds a validator's work)."""
    eval_windows: U32
    """Validation windows scored, in the validation set's order."""
    eval_seq_len: U16
    """Tokens per validation window."""
    max_delta_norm_ppm: U32
    """Largest l2 norm of a delta relative to the base weights' norm, millionths."""
    max_compression_error_ppm: U32
    """Largest relative l2 error a compressed delta may declare, millionths."""
    min_dataset_tier: U8
    """Lowest tier of a dataset that training may use (TIER_*)."""
    round_length: U32
    """Parameter-chain heights per learning round: the claims certified in a round compete at
    its close (`chain.rounds`)."""
    reveal_window: U32
    """Heights after a commitment within which its reveal must land."""
    vote_window: U32
    """Heights after a reveal within which the claim must be certified or rejected; it expires
    after."""
    max_open_claims: U16
    """Commitments and undecided claims one contributor may hold at once (less for each claim
    rejected beyond those accepted)."""
    snapshot_every: U16
    """Deltas on a block after which the validators compact it into a snapshot (full weights,
    one blob: `CommitSnapshot`)."""


@wire
class RewardParams:
    """What the reward chain pays for the other chains' work."""

    delta_reward: U64
    """Base reward for an accepted delta."""
    delta_gain_reward: U64
    """Added per unit of relative validation-loss gain: a delta that improves the loss by g
    (g = (base - new) / base) earns delta_reward + g * delta_gain_reward."""
    delta_reward_cap: U64
    """Most one accepted delta earns."""
    pol_vote_reward: U64
    """Paid to each validator whose PoL vote matched the decided outcome."""
    dataset_rewards: Seq(U64, 4, 4)
    """Reward per dataset tier (rejected, experimental, silver, gold)."""
    dataset_vote_reward: U64
    """Paid to each validator whose audit verdict or tier vote matched the outcome, scaled by
    its reputation factor (chain.dataset.compute_reputation_factor)."""


@wire
class ChainParams:
    """Every protocol constant, by concern; all nodes of a network share them through genesis."""

    consensus: ConsensusParams
    """Block timing and size limits."""
    staking: StakingParams
    """Epochs, bonding and slashing."""
    dataset: DatasetParams
    """Dataset submissions: proof of work, quotas, audit."""
    pol: PolParams
    """Proof-of-Learning acceptance."""
    rewards: RewardParams
    """Rewards for deltas and datasets."""
