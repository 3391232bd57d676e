"""Builders for learning rounds in tests: signed manifests that name real chain heads, the
commit and reveal transactions, signed PoL votes and the certify or reject system transactions.

The manifests here are well formed and signed but describe no training that happened: the chain
rules check what a claim says and who signed the votes, not the training (validators do that,
`node.pol.verifier`, before they sign). Tests of the verifier and the simulator build real
bundles (`node.pol.contributor`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from chain import codec, crypto
from chain.learning import (
    MANIFEST_VERSION,
    BlockBase,
    Checkpoint,
    ComputeEnv,
    DeltaSummary,
    Hyperparameters,
    LearningVerdict,
    SignedManifest,
    TrainingManifest,
    compute_manifest_hash,
    sign_manifest,
)
from chain.payloads import (
    CertifyDelta,
    CommitDelta,
    DeltaClaim,
    PolCertificate,
    PolVote,
    RejectDelta,
    RevealDelta,
    SignedPolVote,
)
from chain.rounds import compute_commitment, is_round_close, make_claim
from chain.tensors import DEFAULT_SUBTILE_SIZE, DEFAULT_TILE_SIZE, KIND_EXPERT, TensorInfo, TensorRecord
from chain.transition import get_nonce
from chain.types import CHAIN_PARAMETER, Block, Transaction
from genesis.testkit import LocalChains, sign_tx, system_tx

BASE_LOSS = 2_000_000
NEW_LOSS = 1_900_000
PROVIDER = "12D3KooWProviderOfTheBundle"


def make_manifest(
    key: crypto.PrivateKey, network_id: str, blocks: Sequence[tuple[str, bytes]], round_id: int, *,
    tag: bytes = b"a", method: str = "topk(chunk=4096,density=20000)+int8", raw_bytes: int = 40_000,
    compressed_bytes: int = 1_000, genesis_hash: bytes = bytes(32), model_head: bytes = bytes(32),
) -> SignedManifest:
    """A signed manifest training `blocks` ((name, base head), sorted by name) in `round_id`;
    `tag` makes its blobs (and so its hash) distinct."""
    def blob(label: bytes) -> bytes:
        return codec.sha256(b"roundkit/" + tag + b"/" + label)

    man = TrainingManifest(
        version=MANIFEST_VERSION, network_id=network_id, genesis_hash=genesis_hash, contributor=key.public_key,
        round_id=round_id, model_head=model_head,
        blocks=tuple(BlockBase(name, head, blob(b"base:" + name.encode()), blob(b"result:" + name.encode()))
                     for name, head in blocks),
        datasets=("bafkreiroundkitdataset",), tokenizer=bytes(32),
        hyper=Hyperparameters(steps=4, batch_size=2, seq_len=16, lr_e9=1_000_000, warmup_steps=0,
                              min_lr_ratio_ppm=100_000, weight_decay_ppm=0, beta1_ppm=900_000, beta2_ppm=999_000,
                              grad_clip_ppm=1_000_000, aux_loss_weight_ppm=10_000, seed=7, checkpoint_every=2),
        checkpoints=tuple(Checkpoint(step, blob(b"ckpt-root%d" % step), blob(b"ckpt%d" % step), 4_096, bytes(32))
                          for step in (0, 2, 4)),
        batch_chain=blob(b"batches"), train_losses=(3_000_000, 2_900_000),
        env=ComputeEnv("2.13.0", 1, "cpu", "x86_64"),
        delta=DeltaSummary(method, blob(b"delta"), blob(b"delta-root"), raw_bytes, compressed_bytes, 10_000,
                           bytes(32), bytes(32), 0, bytes(32)),
    )
    return sign_manifest(key, man)


def commit_tx(key: crypto.PrivateKey, network_id: str, nonce: int, claim: DeltaClaim) -> Transaction:
    return sign_tx(key, network_id, CHAIN_PARAMETER, nonce,
                   CommitDelta(compute_commitment(codec.hash_of(claim), key.address)))


def reveal_tx(key: crypto.PrivateKey, network_id: str, nonce: int, signed: SignedManifest,
              claim: DeltaClaim | None = None, provider: str = PROVIDER) -> Transaction:
    return sign_tx(key, network_id, CHAIN_PARAMETER, nonce,
                   RevealDelta(claim or make_claim(signed.manifest), signed, provider))


def make_verdict(key: crypto.PrivateKey, manifest_hash: bytes, base: int = BASE_LOSS, new: int = NEW_LOSS,
                 accepted: bool = True, reason: str = "") -> LearningVerdict:
    return LearningVerdict(manifest_hash, accepted, reason, base, new, (), 10_000, key.public_key)


def pol_vote(key: crypto.PrivateKey, network_id: str, claim: DeltaClaim, *, base: int = BASE_LOSS,
             new: int = NEW_LOSS, accepted: bool = True, reason: str = "", kind: str = crypto.KIND_POL_VOTE,
             claim_hash: bytes | None = None, validator: bytes | None = None,
             verdict: LearningVerdict | None = None) -> SignedPolVote:
    """A PoL vote by `key` on `claim`; the keyword arguments forge one part of it."""
    verdict = verdict or make_verdict(key, claim.manifest_hash, base, new, accepted, reason)
    vote = PolVote(claim_hash or codec.hash_of(claim), verdict, validator or key.address)
    return SignedPolVote(vote, key.sign(network_id, kind, codec.encode(vote)))


def sort_votes(votes: Sequence[SignedPolVote]) -> PolCertificate:
    return PolCertificate(tuple(sorted(votes, key=lambda sv: sv.vote.validator)))


def certify_tx(claim: DeltaClaim, votes: Sequence[SignedPolVote]) -> Transaction:
    return system_tx(CHAIN_PARAMETER, CertifyDelta(codec.hash_of(claim), sort_votes(votes)))


def reject_tx(claim: DeltaClaim, votes: Sequence[SignedPolVote]) -> Transaction:
    return system_tx(CHAIN_PARAMETER, RejectDelta(codec.hash_of(claim), sort_votes(votes)))


def manifest_hash_of(signed: SignedManifest) -> bytes:
    return compute_manifest_hash(signed.manifest)


def advance_to_round_close(chains: LocalChains) -> Block:
    """Advance the parameter chain with empty blocks through the close of the current round."""
    block = None
    while True:
        block, _ = chains.advance(CHAIN_PARAMETER, [])
        if is_round_close(block.header.height, chains.context()):
            return block


def accept_delta(chains: LocalChains, key: crypto.PrivateKey, signed: SignedManifest,
                 voters: Sequence[crypto.PrivateKey] | None = None, *, base: int = BASE_LOSS,
                 new: int = NEW_LOSS) -> DeltaClaim:
    """Commit, reveal and certify (by `voters`, default every validator) `signed`, then advance
    through its round's close; raises AssertionError if a step is refused."""
    network = chains.pact.network_id
    claim = make_claim(signed.manifest)
    state = chains.states[CHAIN_PARAMETER]
    nonce = get_nonce(state, key.address)
    for tx in (commit_tx(key, network, nonce, claim), reveal_tx(key, network, nonce + 1, signed, claim)):
        block, rejected = chains.advance(CHAIN_PARAMETER, [tx])
        assert not rejected, rejected
    votes = [pol_vote(v, network, claim, base=base, new=new) for v in voters or chains.keys]
    block, rejected = chains.advance(CHAIN_PARAMETER, [certify_tx(claim, votes)])
    assert not rejected, rejected
    if not is_round_close(block.header.height, chains.context()):
        advance_to_round_close(chains)
    return claim


def tensor_record(name: str, blob: int, kind: int = KIND_EXPERT, **overrides: object) -> TensorRecord:
    """A small tensor block for a test genesis (its blob is not stored anywhere)."""
    rec = TensorRecord(
        name=name, kind=kind, version="1.0.0", blob_id=bytes([blob]) * 32, size=64 * 64 * 4,
        merkle_root=bytes([blob + 100]) * 32, tile_size=DEFAULT_TILE_SIZE,
        subtile_size=DEFAULT_SUBTILE_SIZE, tensors=(TensorInfo("w1", "F32", (64, 64)),),
    )
    return replace(rec, **overrides)
