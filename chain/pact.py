"""The Genesis Pact as a wire type, and the genesis state of each chain built from it (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from chain import codec, crypto, merkle
from chain.codec import U8, U64, Address, Hash32, PubKey, Seq, Str, wire
from chain.params import TIER_GOLD, ChainParams
from chain.records import (
    KEY_MODEL,
    KEY_STAKERS,
    KEY_SUPPLY,
    KEY_VALIDATION_SET,
    KEY_VALIDATORS,
    STATUS_APPROVED,
    Account,
    DatasetRecord,
    ExpertState,
    ModelRecord,
    Stakers,
    Supply,
    account_key,
    cid_key,
    dataset_key,
    expert_key,
)
from chain.state import State
from chain.tensors import KIND_TOKENIZER, TENSOR_KINDS, TOKENIZER_BLOCK, ModelSpec, TensorRecord
from chain.types import (
    CHAIN_DATASET,
    CHAIN_IDS,
    CHAIN_PARAMETER,
    CHAIN_REWARD,
    ZERO_ADDRESS,
    ZERO_HASH,
    BlockHeader,
    ValidatorSet,
    make_validator_set,
)

PACT_VERSION = "blyan-pact/6"
"""Version 2: `ChainParams` grouped by concern (consensus, staking, dataset, pol, rewards);
4: learning rounds; 5: `PolParams.snapshot_every` (snapshot compaction)."""
DATASET_ROLES = ("train", "validation")
BYTE_VOCAB = 256
"""A model whose vocabulary is the 256 bytes needs no tokenizer block."""


@wire
class GenesisValidator:
    public_key: PubKey
    """Validator key."""
    stake: U64
    """Bonded stake at genesis."""
    moniker: Str(64)
    """Human name."""


@wire
class GenesisAccount:
    address: Address
    """Account."""
    balance: U64
    """Spendable balance at genesis."""


@wire
class GenesisDataset:
    """A dataset approved by genesis (the genesis corpus and the validation set)."""

    cid: Str(128)
    """CIDv1 of the file."""
    blob_id: Hash32
    """SHA-256 of the file (its blob id)."""
    size: U64
    """Bytes."""
    format: Str(32)
    """Format."""
    license: Str(64)
    """SPDX identifier."""
    tier: U8
    """Tier (TIER_*)."""
    role: Str(16)
    """"train" or "validation"."""


@wire
class GenesisPact:
    """Everything a network starts from. Its hash is the genesis hash every node checks."""

    version: Str(32)
    """PACT_VERSION."""
    network_id: Str(32)
    """"devnet", "testnet-1", ...: the signature domain and topic namespace."""
    genesis_time_ms: U64
    """Time of the genesis headers."""
    params: ChainParams
    """Protocol constants."""
    validators: Seq(GenesisValidator, 256, 1)
    """Initial validators."""
    accounts: Seq(GenesisAccount, 100_000)
    """Initial balances."""
    model: ModelSpec
    """Model architecture."""
    tensors: Seq(TensorRecord, 65_536)
    """One block per expert and shared module (and the tokenizer)."""
    datasets: Seq(GenesisDataset, 65_536)
    """Genesis corpus and validation set."""
    bootstrap: Seq(Str(256), 64)
    """libp2p multiaddrs of bootstrap peers."""


def compute_genesis_hash(pact: GenesisPact) -> bytes:
    return codec.hash_of(pact)


def compute_genesis_validators(pact: GenesisPact) -> ValidatorSet:
    return make_validator_set(0, [(v.public_key, v.stake) for v in pact.validators])


def validate_pact(pact: GenesisPact) -> None:
    """Raise ValueError with the first problem of a pact (used by `blyan genesis` and init)."""
    if pact.version != PACT_VERSION:
        raise ValueError(f"pact version {pact.version!r}, this node knows {PACT_VERSION!r}")
    if not pact.network_id.replace("-", "").isalnum():
        raise ValueError("network id must be letters, digits and dashes")
    keys = [v.public_key for v in pact.validators]
    if len(set(keys)) != len(keys):
        raise ValueError("a validator appears twice")
    if any(v.stake < pact.params.staking.min_validator_stake for v in pact.validators):
        raise ValueError("a genesis validator has less than the minimum stake")
    if len({a.address for a in pact.accounts}) != len(pact.accounts):
        raise ValueError("an account appears twice")
    names = [t.name for t in pact.tensors]
    if len(set(names)) != len(names):
        raise ValueError("a tensor block name appears twice")
    if any(t.kind not in TENSOR_KINDS for t in pact.tensors):
        raise ValueError("unknown tensor kind")
    validate_tokenizer_record(pact)
    validate_datasets(pact.datasets)
    if pact.params.staking.epoch_length == 0 or pact.params.dataset.trust_levels[0].min_approved != 0:
        raise ValueError("epoch length must be positive and the first trust level start at 0")


def validate_tokenizer_record(pact: GenesisPact) -> None:
    """At most one tokenizer block, named TOKENIZER_BLOCK, one 1-D uint8 tensor (its JSON);
    a model with tensor blocks and a vocabulary other than bytes must have it."""
    tokenizers = [t for t in pact.tensors if t.kind == KIND_TOKENIZER]
    named = [t for t in pact.tensors if t.name == TOKENIZER_BLOCK]
    if len(tokenizers) > 1 or tokenizers != named:
        raise ValueError(f"the one tokenizer block must be named {TOKENIZER_BLOCK!r}")
    if tokenizers:
        infos = tokenizers[0].tensors
        if len(infos) != 1 or infos[0].dtype != "U8" or len(infos[0].shape) != 1:
            raise ValueError("a tokenizer block holds one 1-D U8 tensor")
    if pact.tensors and pact.model.vocab_size != BYTE_VOCAB and not tokenizers:
        raise ValueError(f"a model with vocabulary {pact.model.vocab_size} needs a tokenizer block")


def validate_datasets(datasets: tuple[GenesisDataset, ...]) -> None:
    """Each genesis dataset once, its CID naming its blob id, with a known role."""
    cids = [d.cid for d in datasets]
    if len(set(cids)) != len(cids):
        raise ValueError("a genesis dataset appears twice")
    for ds in datasets:
        if ds.role not in DATASET_ROLES:
            raise ValueError(f"dataset {ds.cid}: role {ds.role!r} not in {DATASET_ROLES}")
        try:
            digest = crypto.digest_from_cid(ds.cid)
        except ValueError as err:
            raise ValueError(f"dataset {ds.cid}: {err}") from err
        if digest != ds.blob_id:
            raise ValueError(f"dataset {ds.cid}: its CID does not name its blob id")


@dataclass(frozen=True, slots=True)
class GenesisChain:
    header: BlockHeader
    """The height-0 header."""
    state: State
    """The state at height 0 (its head is the header's hash)."""


def build_genesis(pact: GenesisPact) -> dict[int, GenesisChain]:
    """Height 0 of the three chains."""
    validate_pact(pact)
    genesis_hash = compute_genesis_hash(pact)
    validators = compute_genesis_validators(pact)
    items = {
        CHAIN_PARAMETER: compute_parameter_items(pact),
        CHAIN_DATASET: compute_dataset_items(pact, genesis_hash),
        CHAIN_REWARD: compute_reward_items(pact, validators),
    }
    out = {}
    for chain_id in CHAIN_IDS:
        root = State.from_items(chain_id, 0, ZERO_HASH, pact.genesis_time_ms, items[chain_id]).root
        header = BlockHeader(
            chain_id=chain_id, height=0, prev_hash=genesis_hash, time_ms=pact.genesis_time_ms,
            proposer=ZERO_ADDRESS, validators_hash=validators.hash(),
            next_validators_hash=validators.hash(),
            tx_root=merkle.compute_root([], 2), state_root=root, last_commit_hash=ZERO_HASH,
        )
        state = State.from_items(
            chain_id, 0, codec.hash_of(header), pact.genesis_time_ms, items[chain_id]
        )
        out[chain_id] = GenesisChain(header, state)
    return out


def compute_parameter_items(pact: GenesisPact) -> dict[bytes, bytes]:
    items = {KEY_MODEL: codec.encode(ModelRecord(pact.model, len(pact.tensors)))}
    for rec in pact.tensors:
        state = ExpertState(
            record=rec, head=codec.hash_of(rec), deltas=(), version=rec.version, last_round=0
        )
        items[expert_key(rec.name)] = codec.encode(state)
    return items


def compute_dataset_items(pact: GenesisPact, genesis_hash: bytes) -> dict[bytes, bytes]:
    """A record per dataset; KEY_VALIDATION_SET holds the refs of the validation datasets,
    32 bytes each, concatenated in pact order (absent when there are none)."""
    items: dict[bytes, bytes] = {}
    validation = b""
    for ds in pact.datasets:
        ref = crypto.sha256(genesis_hash + ds.cid.encode())
        rec = DatasetRecord(
            cid=ds.cid, size=ds.size, format=ds.format, license=ds.license,
            contributor=ZERO_ADDRESS, status=STATUS_APPROVED, tier=min(ds.tier, TIER_GOLD),
            submitted_height=0, role=ds.role, audit_voters=(), audit_passed=(), tier_voters=(),
            tier_votes=(), report_hash=bytes(32), minhash=(), decided_height=0, anchor_height=0,
        )
        items[dataset_key(ref)] = codec.encode(rec)
        items[cid_key(ds.cid)] = ref
        if ds.role == "validation":
            validation += ref
    if validation:
        items[KEY_VALIDATION_SET] = validation
    return items


def compute_reward_items(pact: GenesisPact, validators: ValidatorSet) -> dict[bytes, bytes]:
    accounts: dict[bytes, Account] = {}
    for acct in pact.accounts:
        accounts[acct.address] = Account(acct.balance, 0, 0, bytes(32))
    for v in pact.validators:
        addr = crypto.address_of(v.public_key)
        prev = accounts.get(addr, Account(0, 0, 0, bytes(32)))
        accounts[addr] = Account(prev.balance, prev.stake + v.stake, 0, v.public_key)
    balances = sum(a.balance for a in accounts.values())
    stakes = sum(a.stake for a in accounts.values())
    items = {account_key(addr): codec.encode(a) for addr, a in accounts.items()}
    items[KEY_SUPPLY] = codec.encode(Supply(balances + stakes, 0, 0, balances, stakes, 0))
    items[KEY_VALIDATORS] = codec.encode(validators)
    stakers = sorted(addr for addr, a in accounts.items() if a.stake > 0)
    items[KEY_STAKERS] = codec.encode(Stakers(tuple(stakers)))
    return items
