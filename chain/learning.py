"""The wire types of learning: a contributor's training manifest, and the verdict a validator
computes on it (the content of a PoL vote).

A manifest is hashed and signed by the contributor (kind `KIND_MANIFEST`). It names everything a
validator needs to replay the training without trusting the contributor: the network and genesis,
the base head of every block trained (compare-and-swap), the datasets by CID, the tokenizer, every
hyper-parameter and seed, the chain of batch hashes, the checkpoints every k steps (blobs of the
bundle, addressed by their Merkle roots), the training losses claimed, the compute environment,
and the compressed delta whose decoding gives the weights the claim names.

Numbers that are floats in training are fixed point here (so that a manifest has one encoding):
learning rate in 1e-9, ratios and weights in millionths (`_ppm`), losses in micro-nats per token.
"""

from __future__ import annotations

from chain import codec, crypto
from chain.codec import U8, U16, U32, U64, Hash32, PubKey, Seq, Signature, Str, wire
from chain.errors import InvalidSignature

MANIFEST_VERSION = "blyan-train/1"
MAX_TRAINED_BLOCKS = 16
MAX_DATASETS = 512
MAX_CHECKPOINTS = 1024
MAX_SEGMENTS_CHECKED = 16
MAX_MANIFEST_BYTES = 256 * 1024
PPM = 1_000_000
LR_SCALE = 1_000_000_000
"""Learning rates travel as integers of 1e-9."""


@wire
class BlockBase:
    """A block the contributor trained, and what it trained from."""

    name: Str(64)
    """Block name, e.g. "layer0.expert1" or "layer0.router"."""
    base_head: Hash32
    """The block's head on the parameter chain when training started (compare-and-swap)."""
    base_root: Hash32
    """Merkle root of the base weights (the block's canonical tensor blob)."""
    result_root: Hash32
    """Merkle root of the block's weights after `base + decode(delta)`: what the chain will name."""


@wire
class Hyperparameters:
    """Every choice that shapes the training, fixed point."""

    steps: U32
    """Optimizer steps."""
    batch_size: U16
    """Sequences per step."""
    seq_len: U16
    """Tokens per sequence."""
    lr_e9: U64
    """Peak learning rate, in 1e-9."""
    warmup_steps: U32
    """Linear warm-up steps."""
    min_lr_ratio_ppm: U32
    """Cosine floor, as a share of the peak."""
    weight_decay_ppm: U32
    """AdamW weight decay."""
    beta1_ppm: U32
    """AdamW beta1."""
    beta2_ppm: U32
    """AdamW beta2."""
    grad_clip_ppm: U32
    """Largest global gradient norm."""
    aux_loss_weight_ppm: U32
    """Weight of the load-balancing loss."""
    seed: U64
    """Seed of the batch order (batch i is drawn from (seed, i) alone)."""
    checkpoint_every: U32
    """k: a checkpoint every k steps (and at the last step)."""


@wire
class ComputeEnv:
    """Where the training ran: a replay elsewhere is compared within tolerance, not bit for bit."""

    torch: Str(32)
    """torch version."""
    threads: U8
    """torch intra-op threads."""
    device: Str(64)
    """"cpu", or the accelerator kind."""
    machine: Str(32)
    """CPU architecture (platform.machine())."""


@wire
class Checkpoint:
    """The trained blocks' weights and optimizer state at one step: a blob of the bundle."""

    step: U32
    """Optimizer steps done."""
    root: Hash32
    """Merkle root of the checkpoint blob (how the bundle and the verifier address it)."""
    blob_id: Hash32
    """SHA-256 of the blob."""
    size: U64
    """Blob bytes."""
    batch_chain: Hash32
    """The batch hash chain after the batches before `step` (zero at step 0)."""


@wire
class DeltaSummary:
    """The compressed delta: blob = compress(trained - base + carried residual), so decode(blob)
    is within `error_ppm` of trained - base."""

    method: Str(96)
    """Compression pipeline and its parameters, e.g. "topk(chunk=4096,density=20000)+int2"."""
    blob_id: Hash32
    """SHA-256 of the compressed blob."""
    root: Hash32
    """Its Merkle root (a tensor block like any other)."""
    raw_bytes: U64
    """Dense float32 size of the delta."""
    compressed_bytes: U64
    """Blob size."""
    error_ppm: U32
    """Declared relative l2 error of the decoded delta against trained - base."""
    residual_from: Hash32
    """Error feedback: the contributor's earlier manifest, accepted on the chain, whose
    compression residual this delta carries (zero: none)."""
    residual_blob: Hash32
    """SHA-256 of the carried residual's blob in the bundle (zero: none)."""
    residual_size: U64
    """Its size."""
    residual_root: Hash32
    """Its Merkle root."""


@wire
class TrainingManifest:
    """What a contributor claims about one training run; hashed and signed."""

    version: Str(32)
    """MANIFEST_VERSION."""
    network_id: Str(32)
    """Network (signature domain)."""
    genesis_hash: Hash32
    """Genesis of that network."""
    contributor: PubKey
    """Signer; the reward goes to its address."""
    round_id: U64
    """Training round (after the blocks' last accepted round)."""
    model_head: Hash32
    """The model's head on the parameter chain when training started (the last claim applied;
    zero: the genesis model). Every block is in the forward pass, so the whole model is the base:
    a claim on a model that moved is stale."""
    blocks: Seq(BlockBase, MAX_TRAINED_BLOCKS, 1)
    """Blocks trained, sorted by name."""
    datasets: Seq(Str(128), MAX_DATASETS, 1)
    """Training datasets by CID, in stream order."""
    tokenizer: Hash32
    """Head of the tokenizer block used."""
    hyper: Hyperparameters
    """Hyper-parameters and seed."""
    checkpoints: Seq(Checkpoint, MAX_CHECKPOINTS, 2)
    """At step 0 (the base), every k steps, and the last step."""
    batch_chain: Hash32
    """The batch hash chain after the last batch."""
    train_losses: Seq(U32, MAX_CHECKPOINTS)
    """Mean training loss of each segment between checkpoints, micro-nats per token."""
    env: ComputeEnv
    """Where it ran."""
    delta: DeltaSummary
    """The compressed delta."""


@wire
class SignedManifest:
    manifest: TrainingManifest
    """The claim."""
    signature: Signature
    """By `manifest.contributor`, kind KIND_MANIFEST over encode(manifest)."""


@wire
class SegmentCheck:
    """One replayed segment and how far the replay landed from the claimed checkpoint."""

    index: U32
    """Checkpoint index the segment starts from."""
    exact: bool
    """Bit-identical to the claimed next checkpoint."""
    l2_ppm: U32
    """Relative l2 distance, millionths."""
    linf_ppm: U32
    """Largest absolute difference, millionths."""
    cosine_ppm: U32
    """Cosine similarity of the weights, millionths."""


@wire
class LearningVerdict:
    """What a validator computed on a manifest: the content of its PoL vote."""

    manifest_hash: Hash32
    """hash_of(TrainingManifest)."""
    accepted: bool
    """Every check passed."""
    reason: Str(32)
    """"" when accepted, else the first failed check (`consensus.pol.Reason`)."""
    base_loss: U64
    """Validation loss of the base, micro-nats per token (0 if not measured)."""
    new_loss: U64
    """Validation loss of base + decode(delta), micro-nats per token (0 if not measured)."""
    segments: Seq(SegmentCheck, MAX_SEGMENTS_CHECKED)
    """Segments replayed."""
    compression_error_ppm: U32
    """Measured relative l2 error of the decoded delta."""
    validator: PubKey
    """Who computed it."""


def compute_manifest_hash(manifest: TrainingManifest) -> bytes:
    return codec.hash_of(manifest)


def sign_manifest(key: crypto.PrivateKey, manifest: TrainingManifest) -> SignedManifest:
    return SignedManifest(manifest, key.sign(manifest.network_id, crypto.KIND_MANIFEST, codec.encode(manifest)))


def verify_manifest_signature(signed: SignedManifest) -> None:
    """Raise `InvalidSignature` unless the contributor signed the manifest."""
    m = signed.manifest
    crypto.verify(m.contributor, m.network_id, crypto.KIND_MANIFEST, codec.encode(m), signed.signature)


def is_signed_by(signed: SignedManifest, public_key: bytes) -> bool:
    try:
        verify_manifest_signature(signed)
    except InvalidSignature:
        return False
    return signed.manifest.contributor == public_key


def to_ppm(value: float) -> int:
    """A non-negative float in millionths (rounded half to even), clamped to U32."""
    return max(0, min(2**32 - 1, round(value * PPM)))


def to_micro(value: float) -> int:
    """A loss in micro-nats per token."""
    return max(0, min(2**64 - 1, round(value * PPM)))
