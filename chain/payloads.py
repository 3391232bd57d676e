"""Transaction payloads of the three chains, and the typed proofs they carry.

Tags are unique across all chains, so one `Payload` union covers every transaction; each chain
accepts only the payloads of its own rules table (`RULES` in chain.parameter, chain.dataset and
chain.reward).
"""

from __future__ import annotations

from typing import ClassVar

from chain.codec import U8, U32, U64, Address, Hash32, Seq, Signature, Str, wire
from chain.learning import LearningVerdict, SignedManifest
from chain.tensors import TensorRecord
from chain.votes import SignedVote

MAX_POL_VOTES = 256

# --- proofs carried by transactions ---------------------------------------------------------


MAX_BLOCKS_PER_DELTA = 16


@wire
class BlockChange:
    """One block a delta changes."""

    name: Str(64)
    """Expert or module name, e.g. "layer0.expert3"."""
    base: Hash32
    """Head of the block the delta was trained on (compare-and-swap)."""
    result_root: Hash32
    """Merkle root of the block's weights after base + decode(delta)."""


@wire
class DeltaClaim:
    """What a weight delta claims: the thing PoL validators vote on."""

    manifest_hash: Hash32
    """hash_of(TrainingManifest) of the training that made it (`chain.learning`)."""
    blocks: Seq(BlockChange, MAX_BLOCKS_PER_DELTA, 1)
    """Blocks changed, sorted by name."""
    round_id: U64
    """Training round."""
    delta_blob: Hash32
    """Blob id (SHA-256) of the compressed delta."""
    delta_size: U64
    """Size of the delta blob in bytes."""
    delta_root: Hash32
    """Merkle root of the delta blob (how peers prove its tiles)."""
    raw_size: U64
    """Dense float32 size of the delta."""
    compression: Str(96)
    """The compression pipeline and its parameters, e.g. "topk(chunk=4096,density=20000)+int2"."""
    ratio_ppm: U32
    """Compressed size over dense size, parts per million."""
    contributor: Address
    """Account the reward goes to."""


@wire
class PolVote:
    """One validator's Proof-of-Learning vote on a revealed delta claim: the verdict it computed."""

    claim_hash: Hash32
    """hash_of(DeltaClaim)."""
    verdict: LearningVerdict
    """What the validator's own run of the verifier measured and decided (`node.pol.verifier`);
    `verdict.validator` is the signer's public key."""
    validator: Address
    """Voter (the address of `verdict.validator`)."""


@wire
class SignedPolVote:
    vote: PolVote
    """The verdict."""
    signature: Signature
    """Signature with KIND_POL_VOTE."""


@wire
class PolCertificate:
    """PoL votes of one claim, sorted by validator address: the accepting votes of more than 2/3
    of the power (`CertifyDelta`), or rejecting votes that leave acceptance impossible
    (`RejectDelta`)."""

    votes: Seq(SignedPolVote, MAX_POL_VOTES)
    """Votes, sorted by validator address."""


@wire
class Attestation:
    """Signatures of more than 2/3 of the power over one message hash (KIND_ATTESTATION)."""

    message_hash: Hash32
    """What was attested."""
    signers: Seq(Address, MAX_POL_VOTES)
    """Signers, sorted, distinct."""
    signatures: Seq(Signature, MAX_POL_VOTES)
    """One per signer, same order."""


MAX_PII_KINDS = 16
MAX_PII_HASHES = 16
MAX_NEAR_DUPLICATES = 8
MAX_MINHASH_PERM = 256


@wire
class PiiFinding:
    """One kind of personal data the L0 audit found: how often, and salted hashes, never the values."""

    kind: Str(16)
    """"email", "phone", "ip", "card", "iban", "national-id", "api-key", "private-key"."""
    count: U32
    """Occurrences in the dataset."""
    hashes: Seq(Hash32, MAX_PII_HASHES)
    """SHA-256 of the dataset's salt and each distinct normalised value, sorted; at most
    MAX_PII_HASHES (the smallest)."""


@wire
class NearDuplicate:
    """A dataset the chain held at the anchor height that this one nearly duplicates."""

    cid: Str(128)
    """Its CID."""
    similarity_ppm: U32
    """Estimated Jaccard similarity of the two MinHash signatures, millionths."""


@wire
class AuditReport:
    """The deterministic L0 audit of a dataset: identical bytes on every machine, so a validator's
    rerun names the same hash (`AuditVerdict.report_hash`). The chain's policy
    (`chain.dataset.find_policy_violations`) reads its figures."""

    cid: Str(128)
    """Dataset CID."""
    size: U64
    """Bytes audited."""
    auditor: Str(32)
    """Audit program and version; must equal the genesis `params.dataset.audit_version`."""
    format: Str(32)
    """The format the content was parsed as."""
    anchor_height: U64
    """Dataset-chain height whose datasets the near-duplicate check compared against (the
    submission's proof-of-work anchor)."""
    records: U64
    """Records parsed (lines, JSON objects, CSV rows, top-level Python statements)."""
    parse_error: Str(256)
    """Empty when the content parsed as `format` within the limits; else why not."""
    pii: Seq(PiiFinding, MAX_PII_KINDS)
    """Personal data found, by kind (sorted by kind; kinds with no finding are absent)."""
    toxicity_sampled: U32
    """Records scored by the toxicity classifier (a seeded sample)."""
    toxicity_flagged: U32
    """Of those, records scored at or above the policy's threshold."""
    duplicate_records: U64
    """Records that repeat an earlier record exactly."""
    near_duplicates: Seq(NearDuplicate, MAX_NEAR_DUPLICATES)
    """Held datasets at or above the near-duplicate threshold, most similar first."""
    minhash: Seq(U32, MAX_MINHASH_PERM)
    """The dataset's MinHash signature (`params.dataset.audit.minhash_perm` values; empty when
    nothing parsed), kept on the chain so every node checks near-duplicates against the same set."""


# --- parameter chain ------------------------------------------------------------------------


@wire
class CertifyDelta:
    """System transaction: a revealed claim's accepting PoL votes; the claim waits for its
    round's close (`chain.rounds`), where the best certified claim on each base is applied."""

    TAG: ClassVar[int] = 10
    claim_hash: Hash32
    """The revealed claim."""
    certificate: PolCertificate
    """Accepting votes of more than 2/3 of the power."""


@wire
class CommitDelta:
    """A contributor commits to a claim before anyone can see it (commit, then reveal)."""

    TAG: ClassVar[int] = 12
    commitment: Hash32
    """`chain.rounds.compute_commitment(hash_of(claim), sender address)`."""


@wire
class RevealDelta:
    """The claim and its signed training manifest, once the commitment is final."""

    TAG: ClassVar[int] = 13
    claim: DeltaClaim
    """The claim committed to; `claim.contributor` is the sender."""
    manifest: SignedManifest
    """The training manifest the claim names, signed by the sender's key."""
    provider: Str(128)
    """Peer id of the node that serves the bundle's blobs (a hint: blobs are verified)."""


@wire
class RejectDelta:
    """System transaction: rejecting PoL votes of a revealed claim that leave it no quorum."""

    TAG: ClassVar[int] = 14
    claim_hash: Hash32
    """The revealed claim."""
    votes: PolCertificate
    """Rejecting votes; the power not among them is not more than 2/3."""


@wire
class CommitSnapshot:
    """Replace an expert's delta chain by full weights, attested by the validators."""

    TAG: ClassVar[int] = 11
    base: Hash32
    """Head the snapshot compacts (compare-and-swap)."""
    tensor: TensorRecord
    """The full weights."""
    attestation: Attestation
    """Attests hash_of(SnapshotClaim(base, tensor))."""


@wire
class SnapshotClaim:
    base: Hash32
    """Head compacted."""
    tensor: TensorRecord
    """Resulting weights."""


# --- dataset chain --------------------------------------------------------------------------


@wire
class SubmitDataset:
    """Submit a dataset by content id, with a proof of work bound to a recent block, and the L0 audit."""

    TAG: ClassVar[int] = 20
    cid: Str(128)
    """CID of the file as `ipfs add --cid-version 1 --raw-leaves` gives it (chain.unixfs)."""
    size: U64
    """Bytes."""
    format: Str(32)
    """One of chain.dataset.FORMATS ("text", "jsonl", "csv", "text/x-python", ...)."""
    license: Str(64)
    """SPDX identifier."""
    anchor_height: U64
    """A recent dataset-chain height: the work expires `params.dataset.pow_window` heights later."""
    anchor_hash: Hash32
    """Hash of the dataset-chain block at `anchor_height` (so the work cannot be done before it)."""
    pow_nonce: U64
    """Anti-spam proof of work (see dataset.compute_pow_hash)."""
    audit: AuditReport
    """L0 audit report."""


@wire
class AuditVerdict:
    """A validator's rerun of the L0 audit."""

    TAG: ClassVar[int] = 21
    submission: Hash32
    """Transaction hash of the submission."""
    passed: bool
    """Whether the rerun gave the contributor's report (and so passed the policy)."""
    report_hash: Hash32
    """hash_of(AuditReport) of the validator's own rerun; equal to the submitted report's hash
    exactly when `passed`."""


@wire
class QualityVote:
    """A validator's quality tier for an audited dataset."""

    TAG: ClassVar[int] = 22
    submission: Hash32
    """Transaction hash of the submission."""
    tier: U8
    """0 reject, 1 experimental, 2 silver, 3 gold."""
    score_ppm: U32
    """The validator's L1 quality score behind the tier, millionths (not hash-bound: floats)."""


@wire
class RevealHoneypot:
    """The label of a honeypot dataset, revealed after its votes closed (chain.dataset)."""

    TAG: ClassVar[int] = 23
    submission: Hash32
    """Transaction hash of the honeypot's submission."""
    tier: U8
    """Its known tier."""
    salt: Hash32
    """The salt of its genesis commitment."""


# --- reward chain ---------------------------------------------------------------------------


@wire
class Transfer:
    TAG: ClassVar[int] = 30
    to: Address
    """Recipient."""
    amount: U64
    """Amount, > 0."""


@wire
class Stake:
    """Bond part of the balance; the sender becomes a validator at the next epoch if enough."""

    TAG: ClassVar[int] = 31
    amount: U64
    """Amount, > 0."""


@wire
class Unstake:
    """Start unbonding part of the stake; it returns to the balance after the unbonding period."""

    TAG: ClassVar[int] = 32
    amount: U64
    """Amount, > 0."""


@wire
class Reward:
    """System transaction: pay an earning recorded by another chain, once."""

    TAG: ClassVar[int] = 33
    source_chain: U8
    """Chain that recorded the earning."""
    source_tx: Hash32
    """Transaction that earned it."""
    recipient: Address
    """Must equal the earning's recipient."""
    amount: U64
    """Must equal the earning's amount."""


@wire
class DuplicateVoteEvidence:
    """Two votes by one validator for one chain, height, round and step, for different blocks."""

    vote_a: SignedVote
    """First vote."""
    vote_b: SignedVote
    """Second vote."""


@wire
class Slash:
    """System transaction: burn part of an equivocating validator's stake."""

    TAG: ClassVar[int] = 34
    evidence: DuplicateVoteEvidence
    """Two conflicting signed votes."""


# The codec needs the union when `TxBody` is declared, before the chains' tables exist (they
# import `TxBody`'s module), so it is written out here; tests/chain/test_rules.py fails when it
# and the tables (`RULES` in chain.parameter, chain.dataset, chain.reward) disagree.
Payload = (
    CertifyDelta
    | CommitDelta
    | RevealDelta
    | RejectDelta
    | CommitSnapshot
    | SubmitDataset
    | AuditVerdict
    | QualityVote
    | RevealHoneypot
    | Transfer
    | Stake
    | Unstake
    | Reward
    | Slash
)
