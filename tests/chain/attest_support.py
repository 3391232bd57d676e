"""A parameter chain with one accepted delta, in a `ChainStore` on `MemoryKV`, for attestation tests.

Real signatures throughout: four validators of unequal power vote with different measurements
(losses and replayed segments), the claim is certified, its round closes, and every block of
`LocalChains` is imported into the store with its commit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from chain import codec, crypto
from chain.kv import MemoryKV
from chain.learning import LearningVerdict, SegmentCheck, SignedManifest, sign_manifest
from chain.pact import GenesisDataset, compute_genesis_hash
from chain.params import TIER_GOLD
from chain.payloads import DeltaClaim
from chain.records import ExpertState, expert_key
from chain.rounds import compute_round, is_round_close, make_claim
from chain.store import ChainStore
from chain.transition import get_nonce
from chain.types import CHAIN_PARAMETER
from genesis.roundkit import (
    advance_to_round_close,
    certify_tx,
    commit_tx,
    make_manifest,
    pol_vote,
    reveal_tx,
    tensor_record,
)
from genesis.testkit import LocalChains, account_keys, make_pact, validator_keys

EXPERT = "layer0.expert0"
TRAIN_BYTES = b"the training dataset"
TRAIN_CID = crypto.cid_raw(TRAIN_BYTES)
VALIDATION_BYTES = b"the validation dataset"
VALIDATION_CID = crypto.cid_raw(VALIDATION_BYTES)
UNKNOWN_CID = crypto.cid_raw(b"a dataset the chain has never seen")
TRAIN_SIZE = 123_456
STAKES = (10_000, 20_000, 30_000, 40_000)
LOSSES = ((2_000_000, 1_900_000), (2_000_100, 1_899_000), (1_999_900, 1_901_000), (2_000_200, 1_900_500))
"""(base, new) micro-nats measured by each validator."""
TRAINER = account_keys(1, prefix="attest-trainer")[0]


@dataclass
class World:
    chains: LocalChains
    store: ChainStore
    signed: SignedManifest
    claim: DeltaClaim

    @property
    def claim_hash(self) -> bytes:
        return codec.hash_of(self.claim)


def make_chains() -> LocalChains:
    keys = validator_keys(len(STAKES), prefix="attest-validator")
    datasets = (
        GenesisDataset(TRAIN_CID, crypto.sha256(TRAIN_BYTES), TRAIN_SIZE, "jsonl", "CC0-1.0", TIER_GOLD, "train"),
        GenesisDataset(VALIDATION_CID, crypto.sha256(VALIDATION_BYTES), 999, "jsonl", "CC0-1.0", TIER_GOLD,
                       "validation"),
    )
    pact = make_pact(keys, [(TRAINER.address, 1_000)], tensors=(tensor_record(EXPERT, 1),))
    pact = replace(pact, datasets=datasets,
                   validators=tuple(replace(v, stake=s) for v, s in zip(pact.validators, STAKES, strict=True)))
    return LocalChains.create(pact, keys)


def make_signed(chains: LocalChains, tag: bytes = b"a") -> SignedManifest:
    state = chains.states[CHAIN_PARAMETER]
    head = codec.decode(ExpertState, state.get(expert_key(EXPERT))).head
    round_id = compute_round(state.height + 1, chains.context())
    signed = make_manifest(TRAINER, chains.pact.network_id, [(EXPERT, head)], round_id, tag=tag,
                           genesis_hash=compute_genesis_hash(chains.pact))
    return sign_manifest(TRAINER, replace(signed.manifest, datasets=(TRAIN_CID, UNKNOWN_CID)))


def verdict(key: crypto.PrivateKey, manifest_hash: bytes, i: int) -> LearningVerdict:
    base, new = LOSSES[i]
    segments = (SegmentCheck(i % 2, i == 0, 1_000 * (i + 1), 50 * (i + 1), 999_000 - i),)
    return LearningVerdict(manifest_hash, True, "", base, new, segments, 9_000 + i, key.public_key)


def advance(chains: LocalChains, txs: list) -> None:
    _, rejected = chains.advance(CHAIN_PARAMETER, txs)
    assert not rejected, rejected


def certify(chains: LocalChains, signed: SignedManifest) -> DeltaClaim:
    """Commit, reveal and certify `signed` with every validator's vote (the round not closed)."""
    network = chains.pact.network_id
    claim = make_claim(signed.manifest)
    nonce = get_nonce(chains.states[CHAIN_PARAMETER], TRAINER.address)
    advance(chains, [commit_tx(TRAINER, network, nonce, claim)])
    advance(chains, [reveal_tx(TRAINER, network, nonce + 1, signed, claim)])
    votes = [pol_vote(k, network, claim, verdict=verdict(k, claim.manifest_hash, i))
             for i, k in enumerate(chains.keys)]
    advance(chains, [certify_tx(claim, votes)])
    return claim


def import_into_store(chains: LocalChains) -> ChainStore:
    store = ChainStore.open(MemoryKV(), chains.pact)
    blocks = chains.blocks[CHAIN_PARAMETER]
    for i, block in enumerate(blocks):
        last = i == len(blocks) - 1
        store.import_block(block, chains.context(), chains.commits[CHAIN_PARAMETER] if last else None)
    return store


def make_world(*, close_round: bool = True) -> World:
    chains = make_chains()
    signed = make_signed(chains)
    claim = certify(chains, signed)
    if close_round and not is_round_close(chains.states[CHAIN_PARAMETER].height, chains.context()):
        advance_to_round_close(chains)
    return World(chains, import_into_store(chains), signed, claim)
