"""The pure half of Proof-of-Learning (`consensus.pol`): which segments a validator replays, how a
replay is judged, and each check of a manifest against the chains, on manifests built by hand."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chain import codec, crypto
from chain.context import Context
from chain.learning import (
    MANIFEST_VERSION,
    MAX_SEGMENTS_CHECKED,
    BlockBase,
    Checkpoint,
    ComputeEnv,
    DeltaSummary,
    Hyperparameters,
    SegmentCheck,
    SignedManifest,
    TrainingManifest,
    compute_manifest_hash,
    sign_manifest,
)
from chain.ledger import BlockView, DatasetView, LedgerView
from chain.params import TIER_EXPERIMENTAL, TIER_GOLD, TIER_SILVER, PolParams
from chain.payloads import PolVote
from chain.records import STATUS_APPROVED, STATUS_PENDING, STATUS_REJECTED
from chain.rounds import is_accepting_vote
from chain.tensors import DEFAULT_SUBTILE_SIZE, DEFAULT_TILE_SIZE, KIND_EXPERT, KIND_TOKENIZER, TensorInfo, TensorRecord
from consensus import pol
from consensus.pol import Distance, PolRejection, Reason
from genesis.params import devnet_params
from genesis.roundkit import make_verdict
from genesis.testkit import LocalChains, make_pact, validator_keys

NETWORK = "pol-unit"
GENESIS = b"\x01" * 32
CONTRIBUTOR = crypto.PrivateKey.from_label("pol-unit-contributor")
VALIDATORS = [crypto.PrivateKey.from_label(f"pol-unit-validator-{i}") for i in range(24)]
PARAMS: PolParams = replace(devnet_params().pol, checkpoint_every=4, max_steps=64, min_dataset_tier=TIER_SILVER)
EXPERTS = ("layer0.expert0", "layer0.expert1")


def record(name: str, fill: int, kind: int = KIND_EXPERT) -> TensorRecord:
    return TensorRecord(name, kind, "1.0.0", bytes([fill]) * 32, 64 * 64 * 4, bytes([fill + 100]) * 32,
                        DEFAULT_TILE_SIZE, DEFAULT_SUBTILE_SIZE, (TensorInfo("w1", "F32", (64, 64)),))


def block_view(name: str, fill: int, kind: int = KIND_EXPERT, last_round: int = 0) -> BlockView:
    rec = record(name, fill, kind)
    return BlockView(name, codec.hash_of(rec), rec.merkle_root, rec, 0, last_round)


LEDGER = LedgerView(
    blocks={"layer0.expert0": block_view("layer0.expert0", 1),
            "layer0.expert1": block_view("layer0.expert1", 2, last_round=3),
            "tokenizer": block_view("tokenizer", 9, KIND_TOKENIZER)},
    datasets={d.cid: d for d in (
        DatasetView("gold", STATUS_APPROVED, TIER_GOLD, "train", 100),
        DatasetView("silver", STATUS_APPROVED, TIER_SILVER, "train", 100),
        DatasetView("experimental", STATUS_APPROVED, TIER_EXPERIMENTAL, "train", 100),
        DatasetView("pending", STATUS_PENDING, TIER_GOLD, "train", 100),
        DatasetView("rejected", STATUS_REJECTED, TIER_GOLD, "train", 100),
        DatasetView("val", STATUS_APPROVED, TIER_GOLD, "validation", 100),
        DatasetView("val-role-only", STATUS_APPROVED, TIER_GOLD, "validation", 100),
        DatasetView("train-in-validation", STATUS_APPROVED, TIER_GOLD, "train", 100),
    )},
    validation=("val", "train-in-validation"),
    accepted_manifests=frozenset(),
)


def base_of(name: str) -> BlockBase:
    block = LEDGER.blocks[name]
    return BlockBase(name, block.head, block.weights_root, b"\x55" * 32)


def make_checkpoints(steps: int, k: int = PARAMS.checkpoint_every) -> tuple[tuple[Checkpoint, ...], bytes]:
    """Checkpoints at the steps a run of `steps` declares, and the batch chain after the last batch."""
    marks = pol.compute_checkpoint_steps(steps, k)
    links = [bytes(32)] + [crypto.sha256(f"link-{s}".encode()) for s in marks[1:]]
    return tuple(Checkpoint(s, crypto.sha256(f"root-{s}".encode()), crypto.sha256(f"blob-{s}".encode()), 1_000,
                            link) for s, link in zip(marks, links, strict=True)), links[-1]


def make_manifest(steps: int = 16, **overrides: object) -> TrainingManifest:
    """A manifest the ledger and PARAMS accept; `overrides` replace its fields."""
    checkpoints, chain = make_checkpoints(steps)
    hyper = Hyperparameters(steps, 4, 64, 3_000_000, 2, 100_000, 0, 900_000, 950_000, 1_000_000, 10_000, 0,
                            PARAMS.checkpoint_every)
    m = TrainingManifest(
        version=MANIFEST_VERSION, network_id=NETWORK, genesis_hash=GENESIS, contributor=CONTRIBUTOR.public_key,
        round_id=4, model_head=bytes(32), blocks=(base_of("layer0.expert0"),), datasets=("gold", "silver"),
        tokenizer=LEDGER.blocks["tokenizer"].head, hyper=hyper, checkpoints=checkpoints, batch_chain=chain,
        train_losses=tuple(2_000_000 - i for i in range(len(checkpoints) - 1)),
        env=ComputeEnv("2.5.1", 1, "cpu", "x86_64"),
        delta=DeltaSummary("topk(chunk=4096,density=20000)+int8", b"\x66" * 32, b"\x67" * 32, 16_384, 800, 5_000,
                           bytes(32), bytes(32), 0, bytes(32)),
    )
    return replace(m, **overrides)


def sign(m: TrainingManifest, key: crypto.PrivateKey = CONTRIBUTOR) -> SignedManifest:
    return sign_manifest(key, m)


def hyper(m: TrainingManifest, **fields: object) -> TrainingManifest:
    return replace(m, hyper=replace(m.hyper, **fields))


def assert_rejects(reason: Reason, check: Callable[..., None], *args: object) -> None:
    with pytest.raises(PolRejection) as info:
        check(*args)
    assert info.value.reason is reason, info.value


# --- choose_segments ------------------------------------------------------------------------------

norms = st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]) | st.floats(0, 1e3, allow_nan=False), max_size=40)
seeds = st.binary(min_size=32, max_size=32)


@given(seed=seeds, update_norms=norms, top=st.integers(0, 8), extra=st.integers(0, 8))
def test_choose_segments_properties(seed: bytes, update_norms: list[float], top: int, extra: int) -> None:
    n = len(update_norms)
    chosen = pol.choose_segments(seed, update_norms, top, extra)
    assert chosen == sorted(set(chosen))
    assert all(0 <= i < n for i in chosen)
    assert len(chosen) == min(top + extra, n)
    largest = sorted(range(n), key=lambda i: (-update_norms[i], i))[:top]
    assert set(largest) <= set(chosen)
    assert chosen == pol.choose_segments(seed, list(update_norms), top, extra)  # a pure function of its inputs


@given(seed=seeds, update_norms=st.lists(st.floats(0, 1e3, allow_nan=False), min_size=17, max_size=60),
       top=st.integers(0, MAX_SEGMENTS_CHECKED), extra=st.integers(0, 40))
def test_choose_segments_capped_keeps_the_largest_updates(seed: bytes, update_norms: list[float], top: int,
                                                          extra: int) -> None:
    """Past the cap of a verdict's segments, the random picks give way, never the largest updates."""
    n = len(update_norms)
    chosen = pol.choose_segments(seed, update_norms, top, extra)
    assert len(chosen) == min(top + extra, n, MAX_SEGMENTS_CHECKED)
    largest = sorted(range(n), key=lambda i: (-update_norms[i], i))[:top]
    assert set(largest) <= set(chosen), (largest, chosen)


def test_choose_segments_ties_broken_by_index_and_all_when_asked_for_more() -> None:
    assert pol.choose_segments(bytes(32), [1.0] * 6, 3, 0) == [0, 1, 2]
    assert pol.choose_segments(bytes(32), [0.0, 2.0, 2.0, 1.0], 2, 0) == [1, 2]
    assert pol.choose_segments(bytes(32), [3.0, 1.0, 2.0], 5, 5) == [0, 1, 2]
    assert pol.choose_segments(bytes(32), [], 1, 1) == []


def test_choose_segments_differ_between_validators() -> None:
    manifest_hash = compute_manifest_hash(make_manifest())
    update_norms = [float(i % 7) for i in range(40)]
    picks = {tuple(pol.choose_segments(pol.compute_segment_seed(manifest_hash, k.public_key), update_norms, 1, 3))
             for k in VALIDATORS}
    assert len(picks) >= len(VALIDATORS) - 2  # C(39, 3) random draws: collisions are rare
    first_largest = update_norms.index(max(update_norms))
    assert all(first_largest in p for p in picks)  # the largest update is replayed by everyone


def test_segment_seed_binds_manifest_and_validator() -> None:
    keys = [k.public_key for k in VALIDATORS[:2]]
    assert len({pol.compute_segment_seed(h, k) for h in (b"\x01" * 32, b"\x02" * 32) for k in keys}) == 4


# --- judge_replay ---------------------------------------------------------------------------------

ratios = st.floats(0, 0.05, allow_nan=False)
cosines = st.floats(0.99, 1.0, allow_nan=False)


@given(l2=ratios, linf=ratios, cosine=cosines, same=st.booleans())
def test_judge_replay_exact_always_ok(l2: float, linf: float, cosine: float, same: bool) -> None:
    assert pol.judge_replay(Distance(True, l2, linf, cosine), same, PARAMS)


@given(l2=ratios, linf=ratios, cosine=cosines)
def test_judge_replay_inexact_refused_on_same_environment(l2: float, linf: float, cosine: float) -> None:
    assert not pol.judge_replay(Distance(False, l2, linf, cosine), True, PARAMS)
    assert not pol.judge_replay(Distance(False, 0.0, 0.0, 1.0), True, PARAMS)


@given(l2=ratios, linf=ratios, cosine=cosines)
def test_judge_replay_elsewhere_within_every_bound(l2: float, linf: float, cosine: float) -> None:
    within = (l2 * 1e6 <= PARAMS.replay_tolerance_ppm and linf * 1e6 <= PARAMS.replay_linf_ppm
              and cosine * 1e6 >= PARAMS.replay_min_cosine_ppm)
    assert pol.judge_replay(Distance(False, l2, linf, cosine), False, PARAMS) == within


@pytest.mark.parametrize("which", ["l2", "linf", "cosine"])
def test_judge_replay_elsewhere_each_bound_enforced(which: str) -> None:
    ok = Distance(False, PARAMS.replay_tolerance_ppm / 1e6, PARAMS.replay_linf_ppm / 1e6,
                  PARAMS.replay_min_cosine_ppm / 1e6)
    assert pol.judge_replay(ok, False, PARAMS)
    over = {"l2": replace(ok, l2=ok.l2 * 1.01), "linf": replace(ok, linf=ok.linf * 1.01),
            "cosine": replace(ok, cosine=ok.cosine - 1e-4)}[which]
    assert not pol.judge_replay(over, False, PARAMS)
    assert not pol.judge_replay(replace(ok, **{which: math.nan}), False, PARAMS)


# --- compute_checkpoint_steps ---------------------------------------------------------------------


@given(steps=st.integers(1, 500), k=st.integers(1, 60))
def test_checkpoint_steps_properties(steps: int, k: int) -> None:
    marks = pol.compute_checkpoint_steps(steps, k)
    assert marks[0] == 0 and marks[-1] == steps
    assert len(marks) == math.ceil(steps / k) + 1
    gaps = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    assert all(g == k for g in gaps[:-1]) and 0 < gaps[-1] <= k


def test_checkpoint_steps_examples() -> None:
    cases = [(16, 4, [0, 4, 8, 12, 16]), (10, 4, [0, 4, 8, 10]), (3, 4, [0, 3]), (1, 1, [0, 1])]
    assert all(pol.compute_checkpoint_steps(steps, k) == marks for steps, k, marks in cases)


# --- validate_manifest and its parts --------------------------------------------------------------


def test_manifest_honest_accepted() -> None:
    pol.validate_manifest(sign(make_manifest()), LEDGER, PARAMS, NETWORK, GENESIS)
    pol.validate_manifest(sign(make_manifest(steps=PARAMS.max_steps)), LEDGER, PARAMS, NETWORK, GENESIS)
    pol.validate_manifest(sign(make_manifest(steps=10)), LEDGER, PARAMS, NETWORK, GENESIS)  # a short last segment


@pytest.mark.parametrize(("signed", "reason"), [
    (sign(make_manifest(), crypto.PrivateKey.from_label("someone")), Reason.BAD_SIGNATURE),
    (sign(make_manifest(version="blyan-train/0")), Reason.BAD_MANIFEST),
    (sign(make_manifest(network_id="other")), Reason.WRONG_NETWORK),
    (sign(make_manifest(genesis_hash=b"\x02" * 32)), Reason.WRONG_GENESIS),
], ids=["signature", "version", "network", "genesis"])
def test_invalid_identity(signed: SignedManifest, reason: Reason) -> None:
    assert_rejects(reason, pol.validate_identity, signed, NETWORK, GENESIS)
    assert_rejects(reason, pol.validate_manifest, signed, LEDGER, PARAMS, NETWORK, GENESIS)


def test_invalid_hyperparameters_wrong_k() -> None:
    checkpoints, chain = make_checkpoints(16, k=8)
    m = hyper(make_manifest(checkpoints=checkpoints, batch_chain=chain, train_losses=(1, 2)), checkpoint_every=8)
    assert_rejects(Reason.BAD_HYPERPARAMETERS, pol.validate_hyperparameters, m, PARAMS)


@pytest.mark.parametrize("steps", [PARAMS.max_steps + 1, PARAMS.max_steps * 4])
def test_invalid_hyperparameters_too_many_steps(steps: int) -> None:
    assert_rejects(Reason.BAD_HYPERPARAMETERS, pol.validate_hyperparameters, make_manifest(steps=steps), PARAMS)


@pytest.mark.parametrize("fields", [dict(steps=0), dict(batch_size=0), dict(seq_len=1), dict(lr_e9=0)],
                         ids=["no-steps", "no-batch", "seq-1", "no-lr"])
def test_invalid_hyperparameters_empty(fields: dict) -> None:
    assert_rejects(Reason.BAD_HYPERPARAMETERS, pol.validate_hyperparameters, hyper(make_manifest(), **fields), PARAMS)


def _with_checkpoint(m: TrainingManifest, i: int, **fields: object) -> TrainingManifest:
    return replace(m, checkpoints=(*m.checkpoints[:i], replace(m.checkpoints[i], **fields), *m.checkpoints[i + 1:]))


BAD_CHECKPOINTS: dict[str, Callable[[TrainingManifest], TrainingManifest]] = {
    "one-dropped": lambda m: replace(m, checkpoints=(*m.checkpoints[:2], *m.checkpoints[3:]),
                                     train_losses=m.train_losses[:-1]),
    "one-shifted": lambda m: _with_checkpoint(m, 2, step=m.checkpoints[2].step + 1),
    "steps-mismatch": lambda m: hyper(m, steps=m.hyper.steps - 1),
    "chain-not-from-zero": lambda m: _with_checkpoint(m, 0, batch_chain=b"\x01" * 32),
    "chain-not-to-manifest": lambda m: replace(m, batch_chain=b"\x99" * 32),
    "losses-short": lambda m: replace(m, train_losses=m.train_losses[:-1]),
    "losses-long": lambda m: replace(m, train_losses=(*m.train_losses, 5)),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_invalid_checkpoints(case: str) -> None:
    m = BAD_CHECKPOINTS[case](make_manifest())
    assert_rejects(Reason.BAD_CHECKPOINTS, pol.validate_hyperparameters, m, PARAMS)
    assert_rejects(Reason.BAD_CHECKPOINTS, pol.validate_manifest, sign(m), LEDGER, PARAMS, NETWORK, GENESIS)


def test_invalid_declared_compression_error_too_large() -> None:
    m = make_manifest()
    bound = PARAMS.max_compression_error_ppm
    pol.validate_hyperparameters(replace(m, delta=replace(m.delta, error_ppm=bound)), PARAMS)
    assert_rejects(Reason.COMPRESSION_ERROR, pol.validate_hyperparameters,
                   replace(m, delta=replace(m.delta, error_ppm=bound + 1)), PARAMS)


@pytest.mark.parametrize("datasets", [("gold",), ("silver",), ("silver", "gold")])
def test_datasets_approved(datasets: tuple[str, ...]) -> None:
    pol.validate_datasets(make_manifest(datasets=datasets), LEDGER, PARAMS)


@pytest.mark.parametrize(("datasets", "reason"), [
    (("gold", "val"), Reason.VALIDATION_DATASET),
    (("train-in-validation",), Reason.VALIDATION_DATASET),
    (("experimental",), Reason.DATASET_NOT_APPROVED),
    (("gold", "pending"), Reason.DATASET_NOT_APPROVED),
    (("rejected",), Reason.DATASET_NOT_APPROVED),
    (("val-role-only",), Reason.DATASET_NOT_APPROVED),
    (("unknown",), Reason.DATASET_NOT_APPROVED),
    (("gold", "silver", "gold"), Reason.BAD_MANIFEST),
])
def test_invalid_datasets(datasets: tuple[str, ...], reason: Reason) -> None:
    assert_rejects(reason, pol.validate_datasets, make_manifest(datasets=datasets), LEDGER, PARAMS)


def test_invalid_datasets_tokenizer() -> None:
    assert_rejects(Reason.WRONG_TOKENIZER, pol.validate_datasets, make_manifest(tokenizer=b"\x42" * 32), LEDGER, PARAMS)
    no_tokenizer = replace(LEDGER, blocks={k: v for k, v in LEDGER.blocks.items() if k != "tokenizer"})
    assert_rejects(Reason.WRONG_TOKENIZER, pol.validate_datasets, make_manifest(), no_tokenizer, PARAMS)


def test_invalid_datasets_below_a_raised_tier() -> None:
    gold_only = replace(PARAMS, min_dataset_tier=TIER_GOLD)
    pol.validate_datasets(make_manifest(datasets=("gold",)), LEDGER, gold_only)
    assert_rejects(Reason.DATASET_NOT_APPROVED, pol.validate_datasets, make_manifest(), LEDGER, gold_only)


def test_bases_honest_of_two_blocks() -> None:
    pol.validate_bases(make_manifest(blocks=tuple(base_of(n) for n in EXPERTS)), LEDGER)


@pytest.mark.parametrize(("blocks", "reason"), [
    ((replace(base_of("layer0.expert0"), name="layer9.expert9"),), Reason.UNKNOWN_BLOCK),
    ((base_of("tokenizer"),), Reason.UNKNOWN_BLOCK),
    ((replace(base_of("layer0.expert0"), base_head=b"\x42" * 32),), Reason.STALE_BASE),
    ((replace(base_of("layer0.expert0"), base_root=b"\x42" * 32),), Reason.BASE_MISMATCH),
    ((base_of("layer0.expert1"), base_of("layer0.expert0")), Reason.BAD_MANIFEST),
    ((base_of("layer0.expert0"), base_of("layer0.expert0")), Reason.BAD_MANIFEST),
], ids=["unknown", "tokenizer", "stale-base", "root-mismatch", "unsorted", "repeated"])
def test_invalid_bases(blocks: tuple[BlockBase, ...], reason: Reason) -> None:
    assert_rejects(reason, pol.validate_bases, make_manifest(blocks=blocks), LEDGER)


@pytest.mark.parametrize(("name", "round_id"), [("layer0.expert0", 0), ("layer0.expert1", 3),
                                                ("layer0.expert1", 2)])
def test_invalid_bases_stale_round(name: str, round_id: int) -> None:
    assert_rejects(Reason.STALE_ROUND, pol.validate_bases, make_manifest(blocks=(base_of(name),), round_id=round_id),
                   LEDGER)


def test_delta_norm_and_duplicate_and_compression() -> None:
    bound = PARAMS.max_delta_norm_ppm / 1e6
    pol.validate_delta_norm(bound * 10.0, 10.0, True, PARAMS)
    assert_rejects(Reason.NORM_TOO_LARGE, pol.validate_delta_norm, bound * 10.0 * 1.001, 10.0, True, PARAMS)
    assert_rejects(Reason.NON_FINITE, pol.validate_delta_norm, 0.0, 10.0, False, PARAMS)
    h = compute_manifest_hash(make_manifest())
    pol.validate_not_duplicate(h, LEDGER)
    assert_rejects(Reason.DUPLICATE, pol.validate_not_duplicate, h, replace(LEDGER, accepted_manifests=frozenset({h})))
    pol.validate_compression(0.005001, 5_001)
    assert_rejects(Reason.COMPRESSION_ERROR, pol.validate_compression, 0.005003, 5_001)


# --- is_improvement, make_verdict -----------------------------------------------------------------

CONTEXT: Context = LocalChains.create(make_pact(validator_keys(1)), validator_keys(1)).context()
losses = st.integers(0, 2**40) | st.integers(0, 3_000_000)


@given(base=losses, new=losses, ppm=st.integers(0, 1_000_000) | st.sampled_from([0, 1, 1_000, 999_999]))
def test_is_improvement_agrees_with_the_chain(base: int, new: int, ppm: int) -> None:
    params = replace(PARAMS, min_improvement_ppm=ppm)
    ctx = replace(CONTEXT, params=replace(CONTEXT.params, pol=replace(CONTEXT.params.pol, min_improvement_ppm=ppm)))
    key = validator_keys(1)[0]
    vote = PolVote(bytes(32), make_verdict(key, bytes(32), base, new), key.address)
    assert pol.is_improvement(base, new, params) == is_accepting_vote(vote, ctx)
    assert not is_accepting_vote(replace(vote, verdict=replace(vote.verdict, accepted=False)), ctx)


def test_is_improvement_threshold() -> None:
    needed = 2_000_000 * PARAMS.min_improvement_ppm // 1_000_000
    assert pol.is_improvement(2_000_000, 2_000_000 - needed, PARAMS)
    assert not pol.is_improvement(2_000_000, 2_000_000 - needed + 1, PARAMS)
    assert not pol.is_improvement(2_000_000, 2_000_000, replace(PARAMS, min_improvement_ppm=0))


def test_make_verdict_accepted_fields() -> None:
    m = make_manifest()
    segments = [SegmentCheck(i, True, 0, 0, 1_000_000) for i in range(MAX_SEGMENTS_CHECKED + 3)]
    v = pol.make_verdict(m, VALIDATORS[0].public_key, None, 2_000_000, 1_900_000, segments, 0.0123456)
    assert v.manifest_hash == compute_manifest_hash(m) and v.accepted and v.reason == ""
    assert (v.base_loss, v.new_loss, v.compression_error_ppm) == (2_000_000, 1_900_000, 12_346)
    assert v.segments == tuple(segments[:MAX_SEGMENTS_CHECKED]) and v.validator == VALIDATORS[0].public_key
    assert codec.decode(type(v), codec.encode(v)) == v


@pytest.mark.parametrize("error", [math.nan, math.inf, -1.0, 1e9])
def test_make_verdict_rejected_fields(error: float) -> None:
    m = make_manifest()
    rejection = PolRejection(Reason.REPLAY_DIVERGED, "x")
    v = pol.make_verdict(m, VALIDATORS[1].public_key, rejection, compression_error=error)
    assert not v.accepted and v.reason == Reason.REPLAY_DIVERGED.value
    assert (v.base_loss, v.new_loss, v.segments) == (0, 0, ())
    assert v.compression_error_ppm == (0 if error < 0 else 2**32 - 1)
    assert codec.decode(type(v), codec.encode(v)) == v

