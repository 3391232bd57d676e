"""Blocks, headers, votes, commit certificates and validator sets: the wire types every chain shares."""

from __future__ import annotations

from chain.codec import (
    U8,
    U64,
    Address,
    Hash32,
    PubKey,
    Seq,
    Signature,
    hash_of,
    wire,
)
from chain.crypto import ZERO_HASH, address_of  # noqa: F401 - ZERO_HASH re-exported
from chain.payloads import Payload
from chain.votes import (  # noqa: F401 - re-exported
    MAX_VALIDATORS,
    NIL,
    STEP_PRECOMMIT,
    STEP_PREVOTE,
    CommitCertificate,
    CommitSig,
    SignedVote,
    Vote,
)

CHAIN_PARAMETER = 0
CHAIN_DATASET = 1
CHAIN_REWARD = 2
CHAIN_IDS = (CHAIN_PARAMETER, CHAIN_DATASET, CHAIN_REWARD)
CHAIN_NAMES = {CHAIN_PARAMETER: "parameter", CHAIN_DATASET: "dataset", CHAIN_REWARD: "reward"}

MAX_BLOCK_TXS = 10_000


@wire
class Validator:
    """One member of the validator set."""

    address: Address
    """Account address (derived from `public_key`)."""
    public_key: PubKey
    """Ed25519 key that signs votes; also the node's libp2p identity."""
    power: U64
    """Voting power: the bonded stake."""


_TOTAL_POWER: dict[int, tuple[tuple, int]] = {}
"""id(member tuple) -> (that tuple, its total power)."""


@wire
class ValidatorSet:
    """The validators of an epoch, sorted by address."""

    __wire_memo__ = True  # read from the reward state at every commit by every node: see codec.MEMO_ENTRIES

    epoch: U64
    """Epoch from which this set is in force."""
    validators: Seq(Validator, MAX_VALIDATORS)
    """Members, sorted by address, no duplicates, power > 0."""

    def __post_init__(self) -> None:
        addresses = [v.address for v in self.validators]
        if addresses != sorted(set(addresses)):
            raise ValueError("validators must be sorted by address without duplicates")
        if any(v.power == 0 for v in self.validators):
            raise ValueError("a validator has zero power")

    @property
    def total_power(self) -> int:
        """Summed once per member tuple (every vote's quorum check asks: with 100 validators
        the sum was 7 % of a 1,000-node simulation)."""
        members = self.validators
        known = _TOTAL_POWER.get(id(members))
        if known is not None and known[0] is members:
            return known[1]
        total = sum(v.power for v in members)
        if len(_TOTAL_POWER) >= 1024:
            _TOTAL_POWER.clear()
        _TOTAL_POWER[id(members)] = (members, total)  # holds the tuple: its id is not reused meanwhile
        return total

    def get(self, address: bytes) -> Validator | None:
        for v in self.validators:
            if v.address == address:
                return v
        return None

    def is_quorum(self, power: int) -> bool:
        """More than two thirds of the total power."""
        return 3 * power > 2 * self.total_power

    def power_of(self, addresses: set[bytes]) -> int:
        return sum(v.power for v in self.validators if v.address in addresses)

    def hash(self) -> bytes:
        return hash_of(self)


def make_validator_set(epoch: int, members: list[tuple[bytes, int]]) -> ValidatorSet:
    """A validator set from (public key, power) pairs; zero-power members are dropped."""
    vals = sorted(
        (Validator(address_of(pk), pk, power) for pk, power in members if power > 0),
        key=lambda v: v.address,
    )
    return ValidatorSet(epoch=epoch, validators=tuple(vals))


@wire
class BlockHeader:
    """What a block hash covers."""

    chain_id: U8
    """CHAIN_PARAMETER, CHAIN_DATASET or CHAIN_REWARD."""
    height: U64
    """0 for the genesis header."""
    prev_hash: Hash32
    """Hash of the previous header; the genesis hash at height 0."""
    time_ms: U64
    """Proposer's timestamp, milliseconds since the Unix epoch; strictly increasing."""
    proposer: Address
    """Validator that proposed the block (zero at genesis)."""
    validators_hash: Hash32
    """Hash of the validator set that decides this block (the previous header's next set)."""
    next_validators_hash: Hash32
    """Hash of the validator set that decides the next block of this chain. On the reward chain
    it is the set in this block's state; on the others, a set the reward chain has made (the
    proposer's current one), so that every chain changes sets at a point all nodes agree on."""
    tx_root: Hash32
    """Merkle root (arity 2) of the transaction hashes."""
    state_root: Hash32
    """Root of the chain's state after this block."""
    last_commit_hash: Hash32
    """Hash of the commit certificate of the previous block (zero at heights 0 and 1)."""


@wire
class TxBody:
    """What a transaction's signature covers."""

    chain_id: U8
    """Chain the transaction is for."""
    sender: PubKey
    """Sender's Ed25519 public key; all zero for a system transaction."""
    nonce: U64
    """Sender's next nonce on this chain (0 for a system transaction)."""
    payload: Payload
    """What the transaction does."""


@wire
class Transaction:
    """A signed transaction."""

    body: TxBody
    """Signed content."""
    signature: Signature
    """Ed25519 signature with KIND_TX; all zero for a system transaction."""

    __wire_memo__ = True  # see codec.MEMO_ENTRIES

    def hash(self) -> bytes:
        return hash_of(self)


@wire
class Block:
    """A header, its transactions and the certificate that finalized the previous block."""

    header: BlockHeader
    """Header; its hash is the block hash."""
    txs: Seq(Transaction, MAX_BLOCK_TXS)
    """Transactions in order."""
    last_commit: CommitCertificate | None
    """Commit certificate of block height-1; None at height 1."""

    def hash(self) -> bytes:
        return hash_of(self.header)


ZERO_SIGNATURE = bytes(64)
ZERO_PUBKEY = bytes(32)
ZERO_ADDRESS = bytes(20)
