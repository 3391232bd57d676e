"""`node.pol.contributor`: the training plan against the chains, a deterministic bundle whose
manifest says what the plan says, the error-feedback residual between rounds, progress, and the
declared compression error."""

from __future__ import annotations

import dataclasses
import math
import platform
from pathlib import Path

import pytest
import torch

from chain import codec, crypto
from chain.learning import MANIFEST_VERSION, PPM, is_signed_by
from chain.tensors import DEFAULT_SUBTILE_SIZE, TOKENIZER_BLOCK
from consensus.pol import compute_checkpoint_steps
from gpu.delta import compress_delta, compute_delta, compute_relative_error, decode_delta
from gpu.finetune import ZERO_CHAIN, checkpoint_weights
from gpu.tiles import compute_tensor_root
from gpu.weights import decode_block
from node.pol import contributor
from node.pol.bundle import BLOBS_DIR, MANIFEST_FILE, Bundle
from node.pol.contributor import (
    DEFAULT_COMPRESSION,
    RESIDUAL_FILE,
    RESIDUAL_META,
    TrainingOptions,
    TrainingPlan,
    TrainingResult,
    load_residual,
    make_training_plan,
    save_residual,
    train_bundle,
)
from node.pol.data import MaterialMissing, Materials
from tests.node.pol.learning_support import CONTRIBUTOR, OPTIONS, World, getter, make_world, with_ledger

BLOCK = "layer0.expert0"


@dataclasses.dataclass
class Trained:
    """One run of the module: with a residual directory and a progress callback."""

    plan: TrainingPlan
    result: TrainingResult
    residual_dir: Path
    progress: list[tuple[int, int, float, float]]


@pytest.fixture(scope="module")
def world() -> World:
    return make_world()


@pytest.fixture(scope="module")
def options(world: World) -> TrainingOptions:
    return dataclasses.replace(OPTIONS, datasets=world.train)


@pytest.fixture(scope="module")
def trained(world: World, options: TrainingOptions, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("trained")
    calls: list[tuple[int, int, float, float]] = []
    plan = make_training_plan(world.materials, options)
    result = train_bundle(world.materials, plan, CONTRIBUTOR, root / "bundle", residual_dir=root / "learning",
                          progress=lambda *args: calls.append(args))
    return Trained(plan, result, root / "learning", calls)


def bundle_files(bundle: Path) -> dict[str, bytes]:
    return {str(p.relative_to(bundle)): p.read_bytes() for p in sorted(bundle.rglob("*")) if p.is_file()}


def train(world: World, options: TrainingOptions, out: Path, residual_dir: Path | None = None) -> TrainingResult:
    return train_bundle(world.materials, make_training_plan(world.materials, options), CONTRIBUTOR, out,
                        residual_dir=residual_dir)


# --- determinism --------------------------------------------------------------------------------


def test_train_bundle_same_options_same_bytes(world: World, options: TrainingOptions, trained: Trained,
                                              tmp_path: Path) -> None:
    """The fixture's run had a residual directory (empty then) and a progress callback: neither
    changes the bundle."""
    again = train(world, options, tmp_path / "bundle")
    first, second = bundle_files(trained.result.bundle), bundle_files(again.bundle)
    assert first.keys() == second.keys()
    assert first[MANIFEST_FILE] == second[MANIFEST_FILE]
    for name in first:
        assert first[name] == second[name], name
    assert again.signed == trained.result.signed
    blobs = {n for n in first if n.startswith(BLOBS_DIR + "/")}
    m = trained.result.signed.manifest
    assert blobs == {f"{BLOBS_DIR}/{h.hex()}" for h in (*(c.blob_id for c in m.checkpoints), m.delta.blob_id)}


def test_train_bundle_other_seed_other_batches(world: World, options: TrainingOptions, trained: Trained,
                                               tmp_path: Path) -> None:
    other = train(world, dataclasses.replace(options, seed=1), tmp_path / "bundle").signed.manifest
    m = trained.result.signed.manifest
    assert other.hyper.seed == 1 and other.batch_chain != m.batch_chain
    assert [c.batch_chain for c in other.checkpoints][1:] != [c.batch_chain for c in m.checkpoints][1:]
    assert other.checkpoints[0] == m.checkpoints[0]  # both start from the base
    assert other.delta.blob_id != m.delta.blob_id


# --- what the manifest says ---------------------------------------------------------------------


def test_manifest_names_the_chains_and_the_plan(world: World, options: TrainingOptions, trained: Trained) -> None:
    m, ledger = trained.result.signed.manifest, world.materials.ledger
    assert is_signed_by(trained.result.signed, CONTRIBUTOR.public_key)
    assert (m.version, m.network_id, m.genesis_hash) == (MANIFEST_VERSION, world.pact.network_id,
                                                         world.materials.genesis_hash)
    assert m.contributor == CONTRIBUTOR.public_key and m.round_id == trained.plan.round_id == 1
    assert [b.name for b in m.blocks] == [BLOCK]
    for b in m.blocks:
        assert (b.base_head, b.base_root) == (ledger.blocks[b.name].head, ledger.blocks[b.name].weights_root)
        assert b.result_root not in (bytes(32), b.base_root)
    assert m.datasets == world.train == trained.plan.datasets
    assert m.tokenizer == ledger.tokenizer_head == ledger.blocks[TOKENIZER_BLOCK].head
    assert m.hyper == trained.plan.hyper
    h = m.hyper
    assert (h.steps, h.batch_size, h.seq_len, h.lr_e9, h.warmup_steps, h.seed) == (16, 4, 64, 3_000_000, 2, 0)
    assert h.checkpoint_every == world.pact.params.pol.checkpoint_every == 4


def test_manifest_checkpoints_and_losses(trained: Trained) -> None:
    m = trained.result.signed.manifest
    assert [c.step for c in m.checkpoints] == [0, 4, 8, 12, 16] == compute_checkpoint_steps(16, 4)
    assert m.checkpoints[0].batch_chain == ZERO_CHAIN and m.checkpoints[-1].batch_chain == m.batch_chain
    assert len({c.batch_chain for c in m.checkpoints}) == len(m.checkpoints)
    assert len(m.train_losses) == len(m.checkpoints) - 1 and all(0 < x < 20 * PPM for x in m.train_losses)
    b = Bundle.load(trained.result.bundle)
    for i, c in enumerate(m.checkpoints):
        blob = b.read_checkpoint(i)  # checks size, sha256 and Merkle root
        assert (len(blob), codec.sha256(blob), compute_tensor_root(blob, DEFAULT_SUBTILE_SIZE)) == (c.size, c.blob_id,
                                                                                                    c.root)


def test_manifest_env_and_delta_summary(trained: Trained) -> None:
    m, result = trained.result.signed.manifest, trained.result
    assert (m.env.threads, m.env.torch, m.env.device, m.env.machine) == (1, torch.__version__[:32], "cpu",
                                                                         platform.machine()[:32])
    blob = Bundle.load(result.bundle).read_delta()
    assert m.delta.method == DEFAULT_COMPRESSION.method
    assert (m.delta.blob_id, m.delta.compressed_bytes) == (codec.sha256(blob), len(blob))
    assert m.delta.root == compute_tensor_root(blob, DEFAULT_SUBTILE_SIZE)
    base = checkpoint_weights(Bundle.load(result.bundle).read_checkpoint(0))
    assert m.delta.raw_bytes == 4 * sum(t.numel() for t in base.values())
    assert m.delta.compressed_bytes < m.delta.raw_bytes
    assert result.tokens == 16 * 4 * 64 and math.isfinite(result.final_loss)
    assert result.final_loss == pytest.approx(m.train_losses[-1] / PPM, abs=1e-6)


def test_declared_compression_error_covers_the_measured_one(trained: Trained) -> None:
    m, b = trained.result.signed.manifest, Bundle.load(trained.result.bundle)
    base, final = checkpoint_weights(b.read_checkpoint(0)), checkpoint_weights(b.read_checkpoint(-1))
    measured = compute_relative_error(decode_delta(b.read_delta()), compute_delta(final, base))
    assert 0 < measured * PPM <= m.delta.error_ppm
    assert trained.result.compression_error == pytest.approx(measured, rel=1e-12)
    assert m.delta.error_ppm <= math.ceil(measured * PPM) + 1


# --- progress -----------------------------------------------------------------------------------


def test_progress_called_once_per_step(trained: Trained) -> None:
    calls = trained.progress
    assert [c[0] for c in calls] == list(range(1, 17))
    assert all(total == 16 for _, total, _, _ in calls)
    assert all(math.isfinite(loss) and loss > 0 for _, _, loss, _ in calls)
    seconds = [c[3] for c in calls]
    assert seconds == sorted(seconds) and seconds[0] >= 0


# --- the plan -----------------------------------------------------------------------------------


@pytest.mark.parametrize("change", [
    dict(blocks=("layer9.expert9",)), dict(blocks=(TOKENIZER_BLOCK,)), dict(blocks=(BLOCK, "nope")),
    dict(blocks=()), dict(steps=0),
], ids=["unknown-block", "tokenizer", "one-unknown", "no-block", "no-steps"])
def test_invalid_plan(world: World, options: TrainingOptions, change: dict) -> None:
    with pytest.raises(ValueError):
        make_training_plan(world.materials, dataclasses.replace(options, **change))


def test_invalid_plan_too_many_steps(world: World, options: TrainingOptions) -> None:
    max_steps = world.pact.params.pol.max_steps
    make_training_plan(world.materials, dataclasses.replace(options, steps=max_steps))
    with pytest.raises(ValueError, match="steps"):
        make_training_plan(world.materials, dataclasses.replace(options, steps=max_steps + 1))


def test_invalid_plan_validation_dataset(world: World, options: TrainingOptions) -> None:
    for cid in world.validation:
        with pytest.raises(ValueError, match="not approved"):
            make_training_plan(world.materials, dataclasses.replace(options, datasets=(*world.train, cid)))


def test_invalid_plan_dataset_not_approved(world: World, options: TrainingOptions) -> None:
    cid = crypto.cid_raw(b"never submitted")
    with pytest.raises(ValueError, match="not approved"):
        make_training_plan(world.materials, dataclasses.replace(options, datasets=(cid,)))


def test_plan_default_datasets_are_the_local_approved_ones(world: World, options: TrainingOptions) -> None:
    plan = make_training_plan(world.materials, dataclasses.replace(options, datasets=()))
    assert plan.datasets == tuple(sorted((*world.train, world.noise)))
    assert plan.round_id == 1 and [b.name for b in plan.blocks] == [BLOCK]
    assert all(b.result_root == bytes(32) for b in plan.blocks)
    assert make_training_plan(world.materials, dataclasses.replace(options, round_id=7)).round_id == 7


def test_plan_no_dataset_bytes_here(world: World, options: TrainingOptions, tmp_path: Path) -> None:
    datasets = {crypto.digest_from_cid(d.cid) for d in world.pact.datasets}
    bare = dataclasses.replace(world.materials, get_blob=getter({k: v for k, v in world.blobs.items()
                                                                 if k not in datasets}))
    with pytest.raises(MaterialMissing):
        make_training_plan(bare, dataclasses.replace(options, datasets=()))
    plan = make_training_plan(bare, options)  # named datasets: missing bytes are found when training
    with pytest.raises(MaterialMissing):
        train_bundle(bare, plan, CONTRIBUTOR, tmp_path / "bundle")


# --- the error-feedback residual ----------------------------------------------------------------


def accepting(world: World, *manifest_hashes: bytes) -> Materials:
    """The world's materials once the chain accepted these manifests."""
    ledger = dataclasses.replace(world.materials.ledger, accepted_manifests=frozenset(manifest_hashes))
    return with_ledger(world, ledger)


def copy_residual(trained: Trained, to: Path) -> Path:
    to.mkdir()
    for name in (RESIDUAL_FILE, RESIDUAL_META):
        (to / name).write_bytes((trained.residual_dir / name).read_bytes())
    return to


def test_residual_written_for_the_trained_tensors(trained: Trained) -> None:
    assert (trained.residual_dir / RESIDUAL_FILE).is_file()
    m = trained.result.signed.manifest
    assert (m.delta.residual_from, m.delta.residual_blob, m.delta.residual_size) == (bytes(32), bytes(32), 0)
    b = Bundle.load(trained.result.bundle)
    base, final = checkpoint_weights(b.read_checkpoint(0)), checkpoint_weights(b.read_checkpoint(-1))
    true_delta = compute_delta(final, base)
    assert load_residual(trained.residual_dir, true_delta, frozenset()) is None  # its round is not accepted
    carried = load_residual(trained.residual_dir, true_delta, frozenset({b.manifest_hash}))
    assert carried is not None and carried[1] == b.manifest_hash
    decoded = decode_delta(b.read_delta())
    for name, t in true_delta.items():  # the residual is what the blob left out
        assert torch.allclose(carried[0][name], t - decoded[name], atol=1e-7)


def test_residual_carried_into_the_next_round(world: World, options: TrainingOptions, trained: Trained,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    carried_dir = copy_residual(trained, tmp_path / "learning")
    first_hash = Bundle.load(trained.result.bundle).manifest_hash
    loaded: list[bool] = []
    real = contributor.load_residual

    def spy(residual_dir: Path, like: dict[str, torch.Tensor], accepted: frozenset[bytes]) -> object:
        out = real(residual_dir, like, accepted)
        loaded.append(out is not None)
        return out

    monkeypatch.setattr(contributor, "load_residual", spy)
    materials, second = accepting(world, first_hash), dataclasses.replace(options, round_id=2)
    with_residual = train_bundle(materials, make_training_plan(materials, second), CONTRIBUTOR, tmp_path / "with",
                                 residual_dir=carried_dir)
    without = train(world, second, tmp_path / "without")
    assert loaded == [True]
    m, plain = with_residual.signed.manifest, without.signed.manifest
    assert m.checkpoints == plain.checkpoints and m.batch_chain == plain.batch_chain  # the training is the same
    assert m.delta.blob_id != plain.delta.blob_id  # its compression carried the residual
    assert m.delta.residual_from == first_hash and m.delta.residual_size > 0
    b = Bundle.load(with_residual.bundle)
    shipped = b.read_blob(m.delta.residual_blob, m.delta.residual_size, m.delta.residual_root, "residual")
    assert shipped == (trained.residual_dir / RESIDUAL_FILE).read_bytes()
    base, final = checkpoint_weights(b.read_checkpoint(0)), checkpoint_weights(b.read_checkpoint(-1))
    target = compute_delta(final, base)
    expected = compress_delta(target, options.compression, decode_block(shipped))
    assert expected.blob == b.read_delta()
    measured = compute_relative_error(decode_delta(b.read_delta()), target)
    assert measured * PPM <= m.delta.error_ppm  # the declaration covers the carried residual too
    assert (carried_dir / RESIDUAL_FILE).read_bytes() != shipped  # the next round's residual is kept


@pytest.mark.parametrize("kind", ["not-accepted", "other-tensors", "damaged", "no-meta"])
def test_residual_not_fitting_is_ignored(world: World, options: TrainingOptions, trained: Trained, tmp_path: Path,
                                         kind: str) -> None:
    first_hash = Bundle.load(trained.result.bundle).manifest_hash
    residual_dir = tmp_path / "learning"
    if kind == "other-tensors":
        save_residual(residual_dir, {"layer0.expert1/w1.weight": torch.ones(3, 5)}, first_hash)
    else:
        copy_residual(trained, residual_dir)
    if kind == "damaged":
        (residual_dir / RESIDUAL_FILE).write_bytes(b"not a tensor block")
    if kind == "no-meta":
        (residual_dir / RESIDUAL_META).unlink()
    materials = world.materials if kind == "not-accepted" else accepting(world, first_hash)
    result = train_bundle(materials, make_training_plan(materials, options), CONTRIBUTOR, tmp_path / "bundle",
                          residual_dir=residual_dir)
    assert bundle_files(result.bundle) == bundle_files(trained.result.bundle)
    for name in (RESIDUAL_FILE, RESIDUAL_META):  # this round's residual replaces what was there
        assert (residual_dir / name).read_bytes() == (trained.residual_dir / name).read_bytes()


def test_residual_load_of_an_empty_dir_is_none(tmp_path: Path) -> None:
    assert load_residual(tmp_path, {"a/b": torch.zeros(2)}, frozenset({bytes(32)})) is None
