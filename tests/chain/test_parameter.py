"""Parameter chain rules: the genesis heads, snapshots (a delta chain compacted into full weights)
and what the chain accepts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chain import codec
from chain.commit import sign_attestation
from chain.errors import InvalidTransaction
from chain.heads import bump_version, get_expert, is_compression_method
from chain.pact import GenesisValidator
from chain.payloads import CommitSnapshot, SnapshotClaim, Transfer
from chain.records import ExpertState, expert_key
from chain.rounds import compute_round, get_model_head
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
from chain.types import CHAIN_PARAMETER, CHAIN_REWARD, ZERO_PUBKEY, ZERO_SIGNATURE, Transaction, TxBody
from genesis.roundkit import accept_delta, make_manifest
from genesis.testkit import LocalChains, account_keys, make_pact, sign_tx, validator_keys
from tests.chain.refusal_support import assert_refused

EXPERT = "layer0.expert0"
TRAINER = account_keys(1, prefix="trainer")[0]


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


def delta(chains: LocalChains, round_id: int | None = None, tag: bytes = b"a"):
    """Accept a delta on EXPERT through a learning round (in `round_id`, default the current one)."""
    state = chains.states[CHAIN_PARAMETER]
    if round_id is None:
        round_id = compute_round(state.height + 1, chains.context())
    while compute_round(chains.states[CHAIN_PARAMETER].height + 1, chains.context()) < round_id:
        advance(chains, [])
    signed = make_manifest(TRAINER, chains.pact.network_id, [(EXPERT, expert(chains).head)], round_id, tag=tag,
                           model_head=get_model_head(Overlay(chains.states[CHAIN_PARAMETER])))
    return accept_delta(chains, TRAINER, signed)


def advance(chains: LocalChains, txs: list):
    block, rejected = chains.advance(CHAIN_PARAMETER, txs)
    assert not rejected, rejected
    return block


def assert_invalid(chains: LocalChains, tx, match: str) -> None:
    assert_refused(chains, CHAIN_PARAMETER, tx, match)


def snapshot_tx(chains: LocalChains, new: TensorRecord, base: bytes | None = None, signers=None,
                message: bytes | None = None, version: str | None = None) -> Transaction:
    """The system transaction of a snapshot attested by `signers` (default: 3 of the 4
    validators), at the version the chain expects unless `version` says otherwise."""
    state = get_expert(Overlay(chains.states[CHAIN_PARAMETER]), new.name)
    if base is None:
        base = state.head
    if version is None and state is not None:
        version = bump_version(state.version, 1)
    new = replace(new, version=version or new.version)
    if message is None:
        message = codec.hash_of(SnapshotClaim(base, new))
    att = sign_attestation(signers if signers is not None else chains.keys[:3], chains.pact.network_id, message)
    return system_tx(CommitSnapshot(base, new, att))


def system_tx(payload: object) -> Transaction:
    return Transaction(TxBody(CHAIN_PARAMETER, ZERO_PUBKEY, 0, payload), ZERO_SIGNATURE)


# --- genesis -------------------------------------------------------------------------------------


def test_genesis_expert_head_is_record_hash(chains: LocalChains) -> None:
    state = expert(chains)
    assert state.record == GENESIS_TENSORS[0]
    assert state.head == codec.hash_of(GENESIS_TENSORS[0])
    assert (state.deltas, state.version, state.last_round) == ((), "1.0.0", 0)


# --- routing ----------------------------------------------------------------------------------
# Deltas go through learning rounds: tests/chain/test_rounds.py.


def test_invalid_transfer_on_parameter_chain(chains: LocalChains) -> None:
    tx = sign_tx(TRAINER, chains.pact.network_id, CHAIN_PARAMETER, 0, Transfer(TRAINER.address, 1))
    assert_invalid(chains, tx, "Transfer is not a parameter payload")


def test_invalid_snapshot_sent_to_reward_chain(chains: LocalChains) -> None:
    payload = CommitSnapshot(expert(chains).head, tensor(blob=9), sign_attestation(chains.keys[:3], "x", bytes(32)))
    tx = Transaction(TxBody(CHAIN_REWARD, ZERO_PUBKEY, 0, payload), ZERO_SIGNATURE)
    view = Overlay(Overlay(chains.states[CHAIN_REWARD]))
    with pytest.raises(InvalidTransaction, match="not a reward payload"):
        apply_tx(view, tx, CHAIN_REWARD, 1, chains.context())


def test_is_compression_method() -> None:
    for good in ("dense", "int8", "topk(chunk=4096,density=20000)+int2", "lowrank(rank=8)+int8"):
        assert is_compression_method(good), good
    for bad in ("zip", "", "int8+", "topk(chunk=x)", "topk(Chunk=1)", "dense;rm"):
        assert not is_compression_method(bad), bad


# --- snapshots -------------------------------------------------------------------------------------


def test_snapshot_compacts_deltas(chains: LocalChains) -> None:
    claim = delta(chains)
    new = tensor(blob=9, version="1.1.0")
    advance(chains, [snapshot_tx(chains, new)])
    state = expert(chains)
    assert state.record == new
    assert state.head == codec.hash_of(SnapshotClaim(codec.hash_of(claim), new))
    assert (state.deltas, state.version, state.last_round) == ((), "1.1.0", claim.round_id)


def test_delta_after_snapshot_builds_on_snapshot_head(chains: LocalChains) -> None:
    delta(chains)
    advance(chains, [snapshot_tx(chains, tensor(blob=9))])
    head = expert(chains).head
    claim = delta(chains, round_id=compute_round(chains.states[CHAIN_PARAMETER].height + 1, chains.context()) + 1,
                  tag=b"b")
    assert claim.blocks[0].base == head
    assert expert(chains).version == "1.1.1"


def test_delta_round_not_after_last_across_snapshot(chains: LocalChains) -> None:
    first = delta(chains)
    advance(chains, [snapshot_tx(chains, tensor(blob=9))])
    assert expert(chains).last_round == first.round_id
    signed = make_manifest(TRAINER, chains.pact.network_id, [(EXPERT, expert(chains).head)], first.round_id, tag=b"c",
                           model_head=get_model_head(Overlay(chains.states[CHAIN_PARAMETER])))
    with pytest.raises(AssertionError, match=f"round {first.round_id} not after {first.round_id}"):
        accept_delta(chains, TRAINER, signed)


def test_invalid_snapshot_without_deltas(chains: LocalChains) -> None:
    assert_invalid(chains, snapshot_tx(chains, tensor(blob=9)), "nothing to compact")


def test_invalid_snapshot_stale_base(chains: LocalChains) -> None:
    genesis_head = expert(chains).head
    delta(chains)
    assert_invalid(chains, snapshot_tx(chains, tensor(blob=9), base=genesis_head), "not the expert's head")


def test_invalid_snapshot_attestation_for_another_snapshot(chains: LocalChains) -> None:
    delta(chains)
    other = codec.hash_of(SnapshotClaim(expert(chains).head, tensor(blob=10)))
    assert_invalid(chains, snapshot_tx(chains, tensor(blob=9), message=other), "another snapshot")


def test_invalid_snapshot_attestation_power_too_low(chains: LocalChains) -> None:
    delta(chains)
    assert_invalid(chains, snapshot_tx(chains, tensor(blob=9), signers=chains.keys[:2]), "not > 2/3")


def test_invalid_snapshot_attestation_by_non_validator(chains: LocalChains) -> None:
    delta(chains)
    tx = snapshot_tx(chains, tensor(blob=9), signers=[*chains.keys[:3], TRAINER])
    assert_invalid(chains, tx, "non-validator")


def test_invalid_snapshot_attestation_bad_signature(chains: LocalChains) -> None:
    delta(chains)
    tx = snapshot_tx(chains, tensor(blob=9))
    att = tx.body.payload.attestation
    sigs = (bytes(64),) + att.signatures[1:]
    forged = replace(tx.body.payload, attestation=replace(att, signatures=sigs))
    assert_invalid(chains, system_tx(forged), "bad attestation signature")


def test_invalid_snapshot_unpaired_signatures(chains: LocalChains) -> None:
    delta(chains)
    tx = snapshot_tx(chains, tensor(blob=9))
    att = tx.body.payload.attestation
    forged = replace(tx.body.payload, attestation=replace(att, signatures=att.signatures[:-1]))
    assert_invalid(chains, system_tx(forged), "unpaired")


def test_snapshot_is_a_system_transaction(chains: LocalChains) -> None:
    """Its attestation authorises it: any proposer carries it unsigned, and a signed one (an
    account sending it as its own transaction) is refused."""
    delta(chains)
    payload = snapshot_tx(chains, tensor(blob=9)).body.payload
    signed = sign_tx(TRAINER, chains.pact.network_id, CHAIN_PARAMETER,
                     get_nonce(chains.states[CHAIN_PARAMETER], TRAINER.address), payload)
    assert_invalid(chains, signed, "a system transaction has no sender, nonce or signature")
    advance(chains, [system_tx(payload)])
    assert expert(chains).record == payload.tensor


def test_invalid_snapshot_twice_on_one_head(chains: LocalChains) -> None:
    delta(chains)
    tx = snapshot_tx(chains, tensor(blob=9))
    block, rejected = chains.propose(CHAIN_PARAMETER, [tx, tx])
    assert block.txs == (tx,) and len(rejected) == 1


def test_invalid_snapshot_version(chains: LocalChains) -> None:
    delta(chains)
    assert expert(chains).version == "1.0.1"
    assert_invalid(chains, snapshot_tx(chains, tensor(blob=9), version="1.0.2"), "expected '1.1.0'")


def test_invalid_snapshot_changes_kind(chains: LocalChains) -> None:
    delta(chains)
    assert_invalid(chains, snapshot_tx(chains, tensor(blob=9, kind=KIND_MODULE)), "changes the kind")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [(dict(subtile_size=0), "positive multiple"), (dict(tile_size=DEFAULT_SUBTILE_SIZE * 3 + 1), "multiple"),
     (dict(size=0), "empty tensor block"), (dict(tensors=()), "at least one tensor"),
     (dict(subtile_size=1024, tile_size=1024 * (MAX_SUBTILES_PER_TILE + 1)), "cannot be proven")],
    ids=["subtile-zero", "tile-not-multiple", "empty", "no-tensors", "too-many-subtiles"],
)
def test_invalid_snapshot_tensor_record(chains: LocalChains, overrides: dict, match: str) -> None:
    delta(chains)
    assert_invalid(chains, snapshot_tx(chains, tensor(blob=9, **overrides)), match)


def test_invalid_snapshot_unknown_expert(chains: LocalChains) -> None:
    assert_invalid(chains, snapshot_tx(chains, tensor("nope", blob=9), base=bytes(32)), "no expert 'nope'")


def test_bump_version() -> None:
    assert bump_version("1.2.3", 2) == "1.2.4"
    assert bump_version("1.2.3", 1) == "1.3.0"
    with pytest.raises(InvalidTransaction, match="not SemVer"):
        bump_version("v1", 2)
