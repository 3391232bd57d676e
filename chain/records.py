"""Records kept in chain state (values of the state map), and the keys they live under."""

from __future__ import annotations

from chain.codec import U8, U32, U64, Address, Hash32, PubKey, Seq, Str, wire
from chain.learning import SignedManifest
from chain.payloads import MAX_POL_VOTES, DeltaClaim
from chain.tensors import ModelSpec, TensorRecord

MAX_STAKERS = 4096
MAX_UNBONDING_PER_HEIGHT = 4096
MAX_DATASET_VOTERS = 256

# --- keys -----------------------------------------------------------------------------------
# One-letter prefixes inside a chain's state; the store adds the column and chain bytes.

KEY_SUPPLY = b"$"
KEY_VALIDATORS = b"v"
KEY_STAKERS = b"s"
KEY_MODEL = b"m"
KEY_VALIDATION_SET = b"V"
KEY_MODEL_HEAD = b"H"
"""Parameter chain: the model's head, the hash of the last claim applied (absent: the genesis
model). Every claim is trained and verified on one model head; it applies only on that head."""


def account_key(address: bytes) -> bytes:
    return b"a" + address


def is_account_key(key: bytes) -> bool:
    return len(key) == 21 and key[:1] == b"a"


def unbonding_key(height: int) -> bytes:
    return b"u" + height.to_bytes(8, "big")


def paid_key(chain_id: int, tx_hash: bytes) -> bytes:
    """Marks the earning of `tx_hash` on chain `chain_id` paid (reward chain)."""
    return b"p" + bytes([chain_id]) + tx_hash


def is_paid_key(key: bytes) -> bool:
    return len(key) == 34 and key[:1] == b"p"


def parse_paid_key(key: bytes) -> tuple[int, bytes]:
    """(source chain id, transaction hash) of a `paid_key`."""
    if not is_paid_key(key):
        raise ValueError("not a paid key")
    return key[1], key[2:]


def slashed_key(evidence_key: bytes) -> bytes:
    return b"x" + evidence_key


def tombstone_key(address: bytes) -> bytes:
    """Marks a validator slashed for equivocation: out of every later validator set."""
    return b"j" + address


def earning_key(tx_hash: bytes) -> bytes:
    """The earning recorded by transaction `tx_hash` (parameter and dataset chains)."""
    return b"E" + tx_hash


def is_earning_key(key: bytes) -> bool:
    return len(key) == 33 and key[:1] == b"E"


def parse_earning_key(key: bytes) -> bytes:
    """The transaction hash of an `earning_key`."""
    if not is_earning_key(key):
        raise ValueError("not an earning key")
    return key[1:]


def expert_key(name: str) -> bytes:
    return b"e" + name.encode()


def is_expert_key(key: bytes) -> bool:
    return key[:1] == b"e" and len(key) > 1


def parse_expert_key(key: bytes) -> str:
    """The block name of an `expert_key`."""
    return key[1:].decode()


def manifest_key(manifest_hash: bytes) -> bytes:
    """Marks a training manifest whose delta was accepted: never accepted twice."""
    return b"M" + manifest_hash


def delta_key(claim_hash: bytes) -> bytes:
    return b"D" + claim_hash


def commitment_key(commitment: bytes) -> bytes:
    """A contributor's commitment to a claim not revealed yet."""
    return b"C" + commitment


def claim_key(claim_hash: bytes) -> bytes:
    """A revealed claim and where it stands (`ClaimRecord`)."""
    return b"K" + claim_hash


def is_claim_key(key: bytes) -> bool:
    return len(key) == 33 and key[:1] == b"K"


def revealed_blob_key(delta_blob: bytes) -> bytes:
    """Marks a delta blob revealed once: a copy of it revealed again is refused."""
    return b"B" + delta_blob


def contributor_key(address: bytes) -> bytes:
    """A contributor's open, accepted and rejected claims (`ContributorRecord`)."""
    return b"T" + address


def due_key(height: int) -> bytes:
    """What falls due at the end of a parameter-chain height (`DueAt`): commitments whose reveal
    window closes, claims whose vote window closes."""
    return b"Z" + height.to_bytes(8, "big")


def round_key(round_id: int) -> bytes:
    """The claims certified during a round, which compete at its close (`RoundRecord`)."""
    return b"R" + round_id.to_bytes(8, "big")


def dataset_key(tx_hash: bytes) -> bytes:
    return b"d" + tx_hash


def cid_key(cid: str) -> bytes:
    return b"c" + cid.encode()


def quota_key(address: bytes, epoch: int) -> bytes:
    return b"q" + address + epoch.to_bytes(8, "big")


def reputation_key(address: bytes) -> bytes:
    """A contributor's approved datasets (u64), the trust level its quota follows."""
    return b"r" + address


def block_hash_key(height: int) -> bytes:
    """Hash of the dataset-chain block at `height`, kept for `pow_window` heights (proof-of-work anchors)."""
    return b"h" + height.to_bytes(8, "big")


def voter_key(address: bytes) -> bytes:
    """A validator's `VoterRecord`."""
    return b"g" + address


def honeypot_key(commitment: bytes) -> bytes:
    """Dataset submission (tx hash) a revealed honeypot commitment labelled."""
    return b"y" + commitment


def is_dataset_key(key: bytes) -> bool:
    return key[:1] == b"d" and len(key) == 33


# --- reward chain ---------------------------------------------------------------------------


@wire
class Account:
    balance: U64
    """Spendable."""
    stake: U64
    """Bonded."""
    unbonding: U64
    """Unstaked, waiting for the unbonding period."""
    public_key: PubKey
    """Known once the account staked (zero otherwise)."""

    __wire_memo__ = True  # read and written by most reward transactions: see codec.MEMO_ENTRIES


EMPTY_ACCOUNT = Account(0, 0, 0, bytes(32))


@wire
class Supply:
    """The ledger's totals; balances + stakes + unbonding = genesis + minted - burned."""

    genesis: U64
    """Supply at genesis."""
    minted: U64
    """Paid out as rewards."""
    burned: U64
    """Slashed."""
    balances: U64
    """Sum of balances."""
    stakes: U64
    """Sum of stakes."""
    unbonding: U64
    """Sum of unbonding amounts."""

    def is_balanced(self) -> bool:
        return self.balances + self.stakes + self.unbonding == self.genesis + self.minted - self.burned


@wire
class UnbondingEntry:
    address: Address
    """Owner."""
    amount: U64
    """Amount released at the key's height."""


@wire
class UnbondingQueue:
    entries: Seq(UnbondingEntry, MAX_UNBONDING_PER_HEIGHT)
    """Releases due at one height."""


@wire
class Stakers:
    addresses: Seq(Address, MAX_STAKERS)
    """Accounts with stake > 0, sorted."""


@wire
class Earning:
    """A reward the parameter or dataset chain recorded, for the reward chain to pay once."""

    recipient: Address
    """Who is paid."""
    amount: U64
    """How much."""
    reason: Str(32)
    """"delta" or "dataset:<tier>"."""


# --- parameter chain ------------------------------------------------------------------------


@wire
class ExpertState:
    record: TensorRecord
    """Current full weights (the genesis or last snapshot)."""
    head: Hash32
    """Hash of the last block of this expert: the record, a delta claim or a snapshot claim."""
    deltas: Seq(Hash32, 4096)
    """Delta claim hashes applied on top of `record`, in order."""
    version: Str(32)
    """SemVer of the current weights."""
    last_round: U64
    """Round id of the last accepted delta."""


@wire
class AcceptedDelta:
    claim: DeltaClaim
    """The accepted claim."""
    height: U64
    """Parameter-chain height that accepted it."""
    base_loss_ppm: U64
    """Median base validation loss of the accepting votes."""
    new_loss_ppm: U64
    """Median new validation loss of the accepting votes."""


CLAIM_VOTING = 0
CLAIM_CERTIFIED = 1
CLAIM_ACCEPTED = 2
CLAIM_REJECTED = 3
CLAIM_EXPIRED = 4
CLAIM_STATUS_NAMES = {0: "voting", 1: "certified", 2: "accepted", 3: "rejected", 4: "expired"}
MAX_CLAIMS_PER_ROUND = 256
MAX_DUE_PER_HEIGHT = 4096


@wire
class Commitment:
    """A commitment to a claim that is not revealed yet."""

    sender: Address
    """Who committed (only they can reveal)."""
    height: U64
    """Parameter-chain height that included it."""
    model_head: Hash32
    """The model's head when it was committed (`KEY_MODEL_HEAD`; zero: genesis): what the claim
    was trained on. Its reveal is refused once the model has moved."""


@wire
class ClaimRecord:
    """A revealed delta claim and where it stands."""

    claim: DeltaClaim
    """The claim."""
    manifest: SignedManifest
    """Its signed training manifest (what validators replay)."""
    provider: Str(128)
    """Peer id of the node serving the bundle's blobs (a hint)."""
    model_head: Hash32
    """The model's head it was trained and is verified on (zero: genesis)."""
    status: U8
    """CLAIM_*."""
    commit_height: U64
    """Height of the commitment."""
    reveal_height: U64
    """Height of the reveal."""
    decided_height: U64
    """Height of the certificate or the rejection (0: not yet)."""
    applied_height: U64
    """Height of the round close that applied it (0: not applied)."""
    base_loss_ppm: U64
    """Median base validation loss of the deciding votes (0: none)."""
    new_loss_ppm: U64
    """Median new validation loss of the deciding votes (0: none)."""
    reason: Str(256)
    """Why it was rejected or expired ("" otherwise)."""
    voters: Seq(Address, MAX_POL_VOTES)
    """Validators whose votes decided it, sorted."""


@wire
class ContributorRecord:
    """What the parameter chain knows of a contributor's claims."""

    open: U32
    """Commitments and claims not decided yet."""
    accepted: U32
    """Claims applied."""
    rejected: U32
    """Claims rejected (by votes or by compare-and-swap at a round's close)."""


@wire
class DueAt:
    """What falls due at the end of one height."""

    commitments: Seq(Hash32, MAX_DUE_PER_HEIGHT)
    """Commitments whose reveal window closes."""
    claims: Seq(Hash32, MAX_DUE_PER_HEIGHT)
    """Claims whose vote window closes."""


@wire
class RoundRecord:
    """The claims certified during one learning round, in the order of their certificates."""

    certified: Seq(Hash32, MAX_CLAIMS_PER_ROUND)
    """Claim hashes."""


# --- dataset chain --------------------------------------------------------------------------

STATUS_PENDING = 0
STATUS_AUDITED = 1
STATUS_VOTED = 2
STATUS_APPROVED = 3
STATUS_REJECTED = 4
STATUS_NAMES = {0: "pending", 1: "audited", 2: "voted", 3: "approved", 4: "rejected"}


@wire
class VoterRecord:
    """How a validator's tier votes were graded: against honeypot labels and final outcomes."""

    graded: U32
    """Tier votes graded so far."""
    right: U32
    """Of those, the votes within tolerance of the label or the decided tier."""


@wire
class DatasetRecord:
    cid: Str(128)
    """Content id."""
    size: U64
    """Bytes."""
    format: Str(32)
    """Format."""
    license: Str(64)
    """SPDX identifier."""
    contributor: Address
    """Submitter."""
    status: U8
    """STATUS_*."""
    tier: U8
    """Decided tier once approved (TIER_*)."""
    submitted_height: U64
    """Dataset-chain height of the submission."""
    role: Str(16)
    """"train" or "validation"."""
    audit_voters: Seq(Address, MAX_DATASET_VOTERS)
    """Validators that sent an audit verdict."""
    audit_passed: Seq(bool, MAX_DATASET_VOTERS)
    """Their verdicts."""
    tier_voters: Seq(Address, MAX_DATASET_VOTERS)
    """Validators that voted a tier."""
    tier_votes: Seq(U8, MAX_DATASET_VOTERS)
    """Their tiers."""
    report_hash: Hash32
    """hash_of the submitted L0 report (zero for genesis datasets): an audit verdict that passes
    names it."""
    minhash: Seq(U32, 256)
    """The report's MinHash signature (empty for genesis datasets: nodes compute theirs from
    the corpus)."""
    decided_height: U64
    """Height at which the dataset was approved or rejected (0 while open)."""
    anchor_height: U64
    """The submission's proof-of-work anchor: its report's near-duplicate check compared
    against the datasets submitted up to this height (validators rerun it against the same)."""


@wire
class ModelRecord:
    spec: ModelSpec
    """Architecture."""
    n_tensors: U32
    """Tensor blocks at genesis."""
