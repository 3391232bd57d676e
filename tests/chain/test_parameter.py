"""Parameter chain rules: deltas accepted by PoL certificates (compare-and-swap), and snapshots."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chain import codec, crypto
from chain.commit import sign_attestation
from chain.errors import InvalidTransaction
from chain.pact import GenesisValidator
from chain.parameter import bump_version, is_accepting_vote
from chain.payloads import (
    BlockChange,
    CommitSnapshot,
    DeltaClaim,
    PolCertificate,
    PolVote,
    Reward,
    SignedPolVote,
    SnapshotClaim,
    SubmitDelta,
    Transfer,
)
from chain.records import AcceptedDelta, Earning, ExpertState, delta_key, earning_key, expert_key, manifest_key
from chain.reward import get_account, validate_supply
from chain.state import Overlay
from chain.tensors import (
    DEFAULT_SUBTILE_SIZE,
    DEFAULT_TILE_SIZE,
    KIND_EXPERT,
    KIND_MODULE,
    MAX_SUBTILES_PER_TILE,
    TensorInfo,
    TensorRecord,
)
from chain.transition import apply_tx, get_nonce
from chain.types import CHAIN_PARAMETER, CHAIN_REWARD
from genesis.testkit import LocalChains, account_keys, make_pact, sign_tx, system_tx, validator_keys

EXPERT = "layer0.expert0"
TRAINER = account_keys(1, prefix="trainer")[0]
BASE_LOSS = 2_000_000
NEW_LOSS = 1_900_000


def tensor(name: str = EXPERT, blob: int = 1, kind: int = KIND_EXPERT, **overrides: object) -> TensorRecord:
    rec = TensorRecord(
        name=name, kind=kind, version="1.0.0", blob_id=bytes([blob]) * 32, size=64 * 64 * 4,
        merkle_root=bytes([blob + 100]) * 32, tile_size=DEFAULT_TILE_SIZE,
        subtile_size=DEFAULT_SUBTILE_SIZE, tensors=(TensorInfo("w1", "F32", (64, 64)),),
    )
    return replace(rec, **overrides)


GENESIS_TENSORS = (tensor(), tensor("layer0.expert1", blob=2), tensor("embed", blob=3, kind=KIND_MODULE))


def make_chains(n_validators: int = 4, stakes: tuple[int, ...] | None = None) -> LocalChains:
    keys = validator_keys(n_validators)
    pact = make_pact(keys, [(TRAINER.address, 1_000)], tensors=GENESIS_TENSORS)
    if stakes is not None:
        pact = replace(pact, validators=tuple(
            GenesisValidator(k.public_key, s, f"v{i}") for i, (k, s) in enumerate(zip(keys, stakes, strict=True))
        ))
    return LocalChains.create(pact, keys)


@pytest.fixture
def chains() -> LocalChains:
    return make_chains()


def expert(chains: LocalChains, name: str = EXPERT) -> ExpertState:
    return codec.decode(ExpertState, chains.states[CHAIN_PARAMETER].get(expert_key(name)))


def claim_on(chains: LocalChains, name: str = EXPERT, base: bytes | None = None, **overrides: object) -> DeltaClaim:
    """A claim on one block; its manifest hash follows from its delta blob, round and base."""
    current = expert(chains, name)
    claim = DeltaClaim(
        manifest_hash=bytes(32), blocks=(BlockChange(name, current.head if base is None else base, b"\x77" * 32),),
        round_id=current.last_round + 1, delta_blob=b"\xdd" * 32, delta_size=1_000, raw_size=4_000,
        compression="int8", ratio_ppm=250_000, contributor=TRAINER.address,
    )
    claim = replace(claim, **overrides)
    if "manifest_hash" not in overrides:
        unique = claim.delta_blob + claim.round_id.to_bytes(8, "big") + claim.blocks[0].base
        claim = replace(claim, manifest_hash=codec.sha256(unique))
    return claim


def pol_vote(key, claim_hash: bytes, base: int = BASE_LOSS, new: int = NEW_LOSS,
             replay_ok: bool = True, network: str | None = None, kind: str = crypto.KIND_POL_VOTE,
             validator: bytes | None = None) -> SignedPolVote:
    vote = PolVote(claim_hash, base, new, replay_ok, validator or key.address)
    return SignedPolVote(vote, key.sign(network or "testnet-unit", kind, codec.encode(vote)))


def certificate(claim: DeltaClaim, keys, **vote_kw: object) -> PolCertificate:
    claim_hash = codec.hash_of(claim)
    votes = [pol_vote(k, claim_hash, **vote_kw) for k in keys]
    return PolCertificate(tuple(sorted(votes, key=lambda v: v.vote.validator)))


def delta_tx(chains: LocalChains, claim: DeltaClaim, cert: PolCertificate | None = None, key=TRAINER):
    if cert is None:
        cert = certificate(claim, chains.keys[:3])
    nonce = get_nonce(chains.states[CHAIN_PARAMETER], key.address)
    return sign_tx(key, chains.pact.network_id, CHAIN_PARAMETER, nonce, SubmitDelta(claim, cert))


def advance(chains: LocalChains, txs: list):
    block, rejected = chains.advance(CHAIN_PARAMETER, txs)
    assert not rejected, rejected
    return block


def assert_invalid(chains: LocalChains, tx, match: str) -> None:
    state = chains.states[CHAIN_PARAMETER]
    view = Overlay(Overlay(state))
    view.put(b"zprobe", b"1")
    before = dict(view.changes)
    with pytest.raises(InvalidTransaction, match=match):
        apply_tx(view, tx, CHAIN_PARAMETER, state.height + 1, chains.context())
    assert view.changes == before
    block, rejected = chains.propose(CHAIN_PARAMETER, [tx])
    assert block.txs == () and [r[0] for r in rejected] == [tx]


def snapshot_tx(chains: LocalChains, new: TensorRecord, base: bytes | None = None, signers=None,
                message: bytes | None = None):
    if base is None:
        base = expert(chains, new.name).head
    if message is None:
        message = codec.hash_of(SnapshotClaim(base, new))
    att = sign_attestation(signers if signers is not None else chains.keys[:3], chains.pact.network_id, message)
    nonce = get_nonce(chains.states[CHAIN_PARAMETER], TRAINER.address)
    return sign_tx(TRAINER, chains.pact.network_id, CHAIN_PARAMETER, nonce, CommitSnapshot(base, new, att))


# --- genesis -------------------------------------------------------------------------------------


def test_genesis_expert_head_is_record_hash(chains: LocalChains) -> None:
    state = expert(chains)
    assert state.record == GENESIS_TENSORS[0]
    assert state.head == codec.hash_of(GENESIS_TENSORS[0])
    assert (state.deltas, state.version, state.last_round) == ((), "1.0.0", 0)


# --- deltas --------------------------------------------------------------------------------------


def test_delta_accepted_with_two_thirds_plus(chains: LocalChains) -> None:
    claim = claim_on(chains)
    tx = delta_tx(chains, claim)
    block = advance(chains, [tx])
    claim_hash = codec.hash_of(claim)
    state = expert(chains)
    assert state.head == claim_hash
    assert state.deltas == (claim_hash,)
    assert state.version == "1.0.1"
    assert state.last_round == claim.round_id
    assert state.record == GENESIS_TENSORS[0]
    accepted = codec.decode(AcceptedDelta, chains.states[CHAIN_PARAMETER].get(delta_key(claim_hash)))
    assert accepted == AcceptedDelta(claim, block.header.height, BASE_LOSS, NEW_LOSS)
    assert expert(chains, "layer0.expert1").head == codec.hash_of(GENESIS_TENSORS[1])


def test_delta_records_earning(chains: LocalChains) -> None:
    tx = delta_tx(chains, claim_on(chains))
    advance(chains, [tx])
    earning = codec.decode(Earning, chains.states[CHAIN_PARAMETER].get(earning_key(tx.hash())))
    assert earning == Earning(TRAINER.address, chains.pact.params.rewards.delta_reward, "delta")


def test_delta_earning_paid_once_on_reward_chain(chains: LocalChains) -> None:
    tx = delta_tx(chains, claim_on(chains))
    advance(chains, [tx])
    param_state = chains.states[CHAIN_PARAMETER]

    def earnings(chain_id: int, tx_hash: bytes) -> Earning | None:
        if chain_id != CHAIN_PARAMETER:
            return None
        return Overlay(param_state).get_record(earning_key(tx_hash), Earning)

    reward = system_tx(CHAIN_REWARD, Reward(CHAIN_PARAMETER, tx.hash(), TRAINER.address,
                                            chains.pact.params.rewards.delta_reward))
    block, rejected = chains.advance(CHAIN_REWARD, [reward], earnings)
    assert block.txs == (reward,) and not rejected
    state = chains.states[CHAIN_REWARD]
    assert get_account(state, TRAINER.address).balance == 1_000 + chains.pact.params.rewards.delta_reward
    validate_supply(state)
    block, rejected = chains.advance(CHAIN_REWARD, [reward], earnings)
    assert block.txs == () and "already paid" in str(rejected[0][1])


def test_delta_median_losses_of_accepting_votes(chains: LocalChains) -> None:
    claim = claim_on(chains)
    claim_hash = codec.hash_of(claim)
    losses = [(2_000_000, 1_800_000), (2_100_000, 1_900_000), (1_900_000, 1_850_000), (2_050_000, 1_700_000)]
    votes = sorted(
        (pol_vote(k, claim_hash, base=b, new=n) for k, (b, n) in zip(chains.keys, losses, strict=True)),
        key=lambda v: v.vote.validator,
    )
    advance(chains, [delta_tx(chains, claim, PolCertificate(tuple(votes)))])
    accepted = codec.decode(AcceptedDelta, chains.states[CHAIN_PARAMETER].get(delta_key(claim_hash)))
    assert (accepted.base_loss_ppm, accepted.new_loss_ppm) == (2_000_000, 1_800_000)  # median_low


def test_delta_chain_of_two_on_new_head(chains: LocalChains) -> None:
    first = claim_on(chains)
    advance(chains, [delta_tx(chains, first)])
    second = claim_on(chains, delta_blob=b"\xee" * 32)
    assert second.blocks[0].base == codec.hash_of(first)
    advance(chains, [delta_tx(chains, second)])
    state = expert(chains)
    assert state.deltas == (codec.hash_of(first), codec.hash_of(second))
    assert (state.version, state.last_round) == ("1.0.2", 2)


def test_delta_accepted_by_weighted_power() -> None:
    chains = make_chains(stakes=(70_000, 10_000, 10_000, 10_000))
    claim = claim_on(chains)
    advance(chains, [delta_tx(chains, claim, certificate(claim, chains.keys[:1]))])
    assert expert(chains).head == codec.hash_of(claim)


def test_invalid_delta_power_not_above_two_thirds(chains: LocalChains) -> None:
    claim = claim_on(chains)
    assert_invalid(chains, delta_tx(chains, claim, certificate(claim, chains.keys[:2])), "not > 2/3")


def test_invalid_delta_power_exactly_two_thirds() -> None:
    chains = make_chains(n_validators=3)
    claim = claim_on(chains)
    assert_invalid(chains, delta_tx(chains, claim, certificate(claim, chains.keys[:2])), "20000 of 30000")


def test_invalid_delta_empty_certificate(chains: LocalChains) -> None:
    claim = claim_on(chains)
    assert_invalid(chains, delta_tx(chains, claim, PolCertificate(())), "0 of 40000")


def test_invalid_delta_stale_base(chains: LocalChains) -> None:
    first = claim_on(chains)
    stale = claim_on(chains, delta_blob=b"\xee" * 32, round_id=2)
    advance(chains, [delta_tx(chains, first)])
    assert_invalid(chains, delta_tx(chains, stale), "stale base")


def test_invalid_delta_two_on_one_base_in_one_block(chains: LocalChains) -> None:
    first = claim_on(chains)
    rival = claim_on(chains, delta_blob=b"\xee" * 32)
    tx1 = delta_tx(chains, first)
    tx2 = sign_tx(TRAINER, chains.pact.network_id, CHAIN_PARAMETER, 1,
                  SubmitDelta(rival, certificate(rival, chains.keys[:3])))
    block, rejected = chains.advance(CHAIN_PARAMETER, [tx1, tx2])
    assert block.txs == (tx1,)
    assert "stale base" in str(rejected[0][1])


def test_invalid_delta_vote_for_another_claim(chains: LocalChains) -> None:
    claim = claim_on(chains)
    other = claim_on(chains, delta_blob=b"\x0f" * 32)
    assert_invalid(chains, delta_tx(chains, claim, certificate(other, chains.keys[:3])), "another claim")


def test_invalid_delta_mixed_claims(chains: LocalChains) -> None:
    claim = claim_on(chains)
    other = claim_on(chains, delta_blob=b"\x0f" * 32)
    votes = [pol_vote(k, codec.hash_of(claim)) for k in chains.keys[:3]]
    votes.append(pol_vote(chains.keys[3], codec.hash_of(other)))
    cert = PolCertificate(tuple(sorted(votes, key=lambda v: v.vote.validator)))
    assert_invalid(chains, delta_tx(chains, claim, cert), "another claim")


@pytest.mark.parametrize(
    ("base", "new", "replay_ok"),
    [(BASE_LOSS, BASE_LOSS, True), (BASE_LOSS, BASE_LOSS + 1, True), (BASE_LOSS, BASE_LOSS - 1, True),
     (BASE_LOSS, NEW_LOSS, False)],
    ids=["equal", "worse", "below-minimum-improvement", "replay-failed"],
)
def test_invalid_delta_non_improving_vote(chains: LocalChains, base: int, new: int, replay_ok: bool) -> None:
    claim = claim_on(chains)
    claim_hash = codec.hash_of(claim)
    votes = [pol_vote(k, claim_hash) for k in chains.keys[:3]]
    votes.append(pol_vote(chains.keys[3], claim_hash, base=base, new=new, replay_ok=replay_ok))
    cert = PolCertificate(tuple(sorted(votes, key=lambda v: v.vote.validator)))
    assert_invalid(chains, delta_tx(chains, claim, cert), "only accepting votes")


def test_accepting_vote_threshold(chains: LocalChains) -> None:
    ctx = chains.context()
    needed = BASE_LOSS * ctx.params.pol.min_improvement_ppm // 1_000_000
    assert is_accepting_vote(BASE_LOSS, BASE_LOSS - needed, True, ctx)
    assert not is_accepting_vote(BASE_LOSS, BASE_LOSS - needed + 1, True, ctx)
    assert not is_accepting_vote(BASE_LOSS, BASE_LOSS - needed, False, ctx)


def test_invalid_delta_unsorted_votes(chains: LocalChains) -> None:
    claim = claim_on(chains)
    cert = certificate(claim, chains.keys[:3])
    reversed_cert = PolCertificate(tuple(reversed(cert.votes)))
    assert_invalid(chains, delta_tx(chains, claim, reversed_cert), "not sorted")


def test_invalid_delta_duplicated_vote(chains: LocalChains) -> None:
    claim = claim_on(chains)
    cert = certificate(claim, chains.keys[:2])
    doubled = PolCertificate((cert.votes[0], cert.votes[0], cert.votes[1]))
    assert_invalid(chains, delta_tx(chains, claim, doubled), "duplicated")


def test_invalid_delta_vote_from_non_validator(chains: LocalChains) -> None:
    claim = claim_on(chains)
    cert = certificate(claim, [*chains.keys[:3], TRAINER])
    assert_invalid(chains, delta_tx(chains, claim, cert), "non-validator")


@pytest.mark.parametrize("forgery", ["wrong-kind", "other-network", "other-signer"])
def test_invalid_delta_bad_vote_signature(chains: LocalChains, forgery: str) -> None:
    claim = claim_on(chains)
    claim_hash = codec.hash_of(claim)
    votes = [pol_vote(k, claim_hash) for k in chains.keys[1:4]]
    k0 = chains.keys[0]
    if forgery == "wrong-kind":
        bad = pol_vote(k0, claim_hash, kind=crypto.KIND_VOTE)
    elif forgery == "other-network":
        bad = pol_vote(k0, claim_hash, network="othernet")
    else:
        bad = pol_vote(chains.keys[1], claim_hash, validator=k0.address)
    cert = PolCertificate(tuple(sorted([*votes, bad], key=lambda v: v.vote.validator)))
    assert_invalid(chains, delta_tx(chains, claim, cert), "bad PoL vote signature")


def test_invalid_delta_unknown_expert(chains: LocalChains) -> None:
    claim = claim_on(chains)
    claim = replace(claim, blocks=(BlockChange("layer9.expert9", claim.blocks[0].base, bytes(32)),))
    assert_invalid(chains, delta_tx(chains, claim), "no expert 'layer9.expert9'")


def test_invalid_delta_round_not_after_last(chains: LocalChains) -> None:
    advance(chains, [delta_tx(chains, claim_on(chains, round_id=5))])
    assert_invalid(chains, delta_tx(chains, claim_on(chains, round_id=5)), "round 5 not after 5")
    assert_invalid(chains, delta_tx(chains, claim_on(chains, round_id=4)), "round 4 not after 5")


def test_invalid_delta_round_not_after_last_across_snapshot(chains: LocalChains) -> None:
    advance(chains, [delta_tx(chains, claim_on(chains, round_id=5))])
    advance(chains, [snapshot_tx(chains, tensor(blob=9))])
    assert expert(chains).last_round == 5
    assert_invalid(chains, delta_tx(chains, claim_on(chains, round_id=3)), "round 3 not after 5")
    advance(chains, [delta_tx(chains, claim_on(chains, round_id=6))])


def test_invalid_delta_round_zero_on_genesis(chains: LocalChains) -> None:
    assert_invalid(chains, delta_tx(chains, claim_on(chains, round_id=0)), "round 0 not after 0")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("compression", "zip", "unknown compression"), ("delta_size", 0, "must be positive"),
     ("ratio_ppm", 0, "must be positive"), ("ratio_ppm", 1_000_001, "at most 1")],
)
def test_invalid_delta_shape(chains: LocalChains, field: str, value: object, match: str) -> None:
    assert_invalid(chains, delta_tx(chains, claim_on(chains, **{field: value})), match)


def test_delta_on_two_blocks_moves_both_heads(chains: LocalChains) -> None:
    one = claim_on(chains)
    two = claim_on(chains, "layer0.expert1")
    claim = replace(one, blocks=(one.blocks[0], two.blocks[0]))
    advance(chains, [delta_tx(chains, claim)])
    assert expert(chains).head == expert(chains, "layer0.expert1").head == codec.hash_of(claim)
    assert chains.states[CHAIN_PARAMETER].get(manifest_key(claim.manifest_hash)) == codec.hash_of(claim)


def test_invalid_delta_of_an_accepted_manifest(chains: LocalChains) -> None:
    first = claim_on(chains)
    advance(chains, [delta_tx(chains, first)])
    again = claim_on(chains, manifest_hash=first.manifest_hash, delta_blob=b"\xee" * 32)
    assert_invalid(chains, delta_tx(chains, again), "accepted already")


def test_invalid_delta_blocks_unsorted_or_repeated(chains: LocalChains) -> None:
    one, two = claim_on(chains), claim_on(chains, "layer0.expert1")
    for blocks in ((two.blocks[0], one.blocks[0]), (one.blocks[0], one.blocks[0])):
        assert_invalid(chains, delta_tx(chains, replace(one, blocks=blocks)), "not sorted by name or repeated")


def test_invalid_delta_sent_to_reward_chain(chains: LocalChains) -> None:
    claim = claim_on(chains)
    tx = sign_tx(TRAINER, chains.pact.network_id, CHAIN_REWARD, 0,
                 SubmitDelta(claim, certificate(claim, chains.keys[:3])))
    view = Overlay(Overlay(chains.states[CHAIN_REWARD]))
    with pytest.raises(InvalidTransaction, match="not a reward payload"):
        apply_tx(view, tx, CHAIN_REWARD, 1, chains.context())


def test_invalid_transfer_on_parameter_chain(chains: LocalChains) -> None:
    tx = sign_tx(TRAINER, chains.pact.network_id, CHAIN_PARAMETER, 0, Transfer(TRAINER.address, 1))
    assert_invalid(chains, tx, "Transfer is not a parameter payload")


# --- snapshots -------------------------------------------------------------------------------------


def test_snapshot_compacts_deltas(chains: LocalChains) -> None:
    claim = claim_on(chains)
    advance(chains, [delta_tx(chains, claim)])
    new = tensor(blob=9, version="1.1.0")
    advance(chains, [snapshot_tx(chains, new)])
    state = expert(chains)
    assert state.record == new
    assert state.head == codec.hash_of(SnapshotClaim(codec.hash_of(claim), new))
    assert (state.deltas, state.version, state.last_round) == ((), "1.1.0", claim.round_id)


def test_delta_after_snapshot_builds_on_snapshot_head(chains: LocalChains) -> None:
    advance(chains, [delta_tx(chains, claim_on(chains))])
    advance(chains, [snapshot_tx(chains, tensor(blob=9))])
    claim = claim_on(chains)
    assert claim.blocks[0].base == expert(chains).head
    advance(chains, [delta_tx(chains, claim)])
    assert expert(chains).version == "1.1.1"


def test_invalid_snapshot_without_deltas(chains: LocalChains) -> None:
    assert_invalid(chains, snapshot_tx(chains, tensor(blob=9)), "nothing to compact")


def test_invalid_snapshot_stale_base(chains: LocalChains) -> None:
    genesis_head = expert(chains).head
    advance(chains, [delta_tx(chains, claim_on(chains))])
    assert_invalid(chains, snapshot_tx(chains, tensor(blob=9), base=genesis_head), "not the expert's head")


def test_invalid_snapshot_attestation_for_another_snapshot(chains: LocalChains) -> None:
    advance(chains, [delta_tx(chains, claim_on(chains))])
    other = codec.hash_of(SnapshotClaim(expert(chains).head, tensor(blob=10)))
    assert_invalid(chains, snapshot_tx(chains, tensor(blob=9), message=other), "another snapshot")


def test_invalid_snapshot_attestation_power_too_low(chains: LocalChains) -> None:
    advance(chains, [delta_tx(chains, claim_on(chains))])
    assert_invalid(chains, snapshot_tx(chains, tensor(blob=9), signers=chains.keys[:2]), "not > 2/3")


def test_invalid_snapshot_attestation_by_non_validator(chains: LocalChains) -> None:
    advance(chains, [delta_tx(chains, claim_on(chains))])
    tx = snapshot_tx(chains, tensor(blob=9), signers=[*chains.keys[:3], TRAINER])
    assert_invalid(chains, tx, "non-validator")


def test_invalid_snapshot_attestation_bad_signature(chains: LocalChains) -> None:
    advance(chains, [delta_tx(chains, claim_on(chains))])
    tx = snapshot_tx(chains, tensor(blob=9))
    att = tx.body.payload.attestation
    sigs = (bytes(64),) + att.signatures[1:]
    forged = replace(tx.body.payload, attestation=replace(att, signatures=sigs))
    nonce = tx.body.nonce
    assert_invalid(chains, sign_tx(TRAINER, chains.pact.network_id, CHAIN_PARAMETER, nonce, forged),
                   "bad attestation signature")


def test_invalid_snapshot_unpaired_signatures(chains: LocalChains) -> None:
    advance(chains, [delta_tx(chains, claim_on(chains))])
    tx = snapshot_tx(chains, tensor(blob=9))
    att = tx.body.payload.attestation
    forged = replace(tx.body.payload, attestation=replace(att, signatures=att.signatures[:-1]))
    assert_invalid(chains, sign_tx(TRAINER, chains.pact.network_id, CHAIN_PARAMETER, tx.body.nonce, forged),
                   "unpaired")


def test_invalid_snapshot_changes_kind(chains: LocalChains) -> None:
    advance(chains, [delta_tx(chains, claim_on(chains))])
    assert_invalid(chains, snapshot_tx(chains, tensor(blob=9, kind=KIND_MODULE)), "changes the kind")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [(dict(subtile_size=0), "positive multiple"), (dict(tile_size=DEFAULT_SUBTILE_SIZE * 3 + 1), "multiple"),
     (dict(size=0), "empty tensor block"), (dict(tensors=()), "at least one tensor"),
     (dict(subtile_size=1024, tile_size=1024 * (MAX_SUBTILES_PER_TILE + 1)), "cannot be proven")],
    ids=["subtile-zero", "tile-not-multiple", "empty", "no-tensors", "too-many-subtiles"],
)
def test_invalid_snapshot_tensor_record(chains: LocalChains, overrides: dict, match: str) -> None:
    advance(chains, [delta_tx(chains, claim_on(chains))])
    assert_invalid(chains, snapshot_tx(chains, tensor(blob=9, **overrides)), match)


def test_invalid_snapshot_unknown_expert(chains: LocalChains) -> None:
    assert_invalid(chains, snapshot_tx(chains, tensor("nope", blob=9), base=bytes(32)), "no expert 'nope'")


def test_bump_version() -> None:
    assert bump_version("1.2.3", 2) == "1.2.4"
    assert bump_version("1.2.3", 1) == "1.3.0"
    with pytest.raises(InvalidTransaction, match="not SemVer"):
        bump_version("v1", 2)
