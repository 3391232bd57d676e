"""The validator's checks against an honest bundle and against each way to cheat: every attack is
rejected with its own reason, computed by the real verifier on a real (small) training run."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from chain import codec, crypto
from chain.learning import TrainingManifest, sign_manifest
from chain.tensors import DEFAULT_SUBTILE_SIZE
from consensus.pol import Reason
from gpu.delta import CompressionConfig, compress_delta, compute_delta, decode_delta
from gpu.finetune import chain_batch_hash, checkpoint_weights, hash_batch, make_batch
from gpu.tiles import compute_tensor_root
from gpu.weights import decode_block, encode_block
from node.pol.bundle import BLOBS_DIR, MANIFEST_FILE, Bundle
from node.pol.contributor import make_training_plan, train_bundle
from node.pol.data import Materials, build_stream, load_tokenizer
from node.pol.verifier import verify_bundle
from tests.node.pol.learning_support import CONTRIBUTOR, OPTIONS, VALIDATOR, World, getter, make_world, with_ledger


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(top_segments=8)  # replay every segment: each attack is found wherever it hides


@pytest.fixture(scope="module")
def honest(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("honest") / "bundle"
    plan = make_training_plan(world.materials, dataclasses.replace(OPTIONS, datasets=world.train))
    train_bundle(world.materials, plan, CONTRIBUTOR, out)
    return out


def copy_of(bundle: Path, tmp_path: Path) -> Path:
    shutil.copytree(bundle, tmp_path / "bundle")
    return tmp_path / "bundle"


def resign(bundle: Path, manifest: TrainingManifest, key: crypto.PrivateKey = CONTRIBUTOR) -> None:
    (bundle / MANIFEST_FILE).write_bytes(codec.encode(sign_manifest(key, manifest)))


def put_blob(bundle: Path, data: bytes) -> tuple[bytes, bytes]:
    blob_id = crypto.sha256(data)
    (bundle / BLOBS_DIR / blob_id.hex()).write_bytes(data)
    return blob_id, compute_tensor_root(data, DEFAULT_SUBTILE_SIZE)


def verify(world: World, bundle: Path, materials: Materials | None = None):
    return verify_bundle(materials or world.materials, Bundle.load(bundle), VALIDATOR.public_key)


def assert_rejected(report, reason: Reason) -> None:
    assert not report.accepted, "accepted"
    assert report.verdict.reason == reason.value, (report.verdict.reason, report.rejection)


def test_honest_bundle_accepted_with_a_measured_gain(world: World, honest: Path) -> None:
    report = verify(world, honest)
    assert report.accepted, report.rejection
    m = report.measurements
    assert m.new_loss < m.base_loss
    assert report.verdict.new_loss < report.verdict.base_loss
    assert m.same_environment and all(s["exact"] for s in m.segments)
    assert len(m.segments) == len(Bundle.load(honest).manifest.checkpoints) - 1  # every segment replayed


def test_verify_is_a_pure_function_of_bundle_and_validator(world: World, honest: Path) -> None:
    assert verify(world, honest).verdict == verify(world, honest).verdict


# --- training on what it does not declare ---------------------------------------------------


def _train_on(world: World, stream_cids: tuple[str, ...], tmp_path: Path) -> Path:
    """A contributor that trains on `stream_cids` but declares the approved training datasets:
    it hands the trainer other bytes under the declared CIDs."""
    declared = world.train[: len(stream_cids)]
    blobs = dict(world.blobs)
    for fake, real in zip(declared, stream_cids, strict=True):
        blobs[crypto.digest_from_cid(fake)] = world.blobs[crypto.digest_from_cid(real)]
    lying = dataclasses.replace(world.materials, get_blob=getter(blobs))
    out = tmp_path / "bundle"
    plan = make_training_plan(world.materials, dataclasses.replace(OPTIONS, datasets=declared))
    train_bundle(lying, plan, CONTRIBUTOR, out)
    return out


def test_attack_trained_on_the_validation_set_is_caught_by_the_batches(world: World, tmp_path: Path) -> None:
    bundle = _train_on(world, world.validation, tmp_path)
    assert_rejected(verify(world, bundle), Reason.BATCH_MISMATCH)


def test_attack_validation_training_with_a_forged_batch_chain_is_caught_by_replay(world: World,
                                                                                  tmp_path: Path) -> None:
    """The checkpoints come from training on the validation set; the batch chain is recomputed
    from the declared datasets so that it looks consistent: the replay cannot land."""
    bundle = _train_on(world, world.validation, tmp_path)
    m = Bundle.load(bundle).manifest
    stream = build_stream(world.materials, load_tokenizer(world.materials), m.datasets)
    link, links = bytes(32), [bytes(32)]
    for step in range(m.hyper.steps):
        x, y = make_batch(stream, m.hyper.seed, step, m.hyper.batch_size, m.hyper.seq_len)
        link = chain_batch_hash(link, hash_batch(x, y))
        links.append(link)
    checkpoints = tuple(dataclasses.replace(c, batch_chain=links[c.step]) for c in m.checkpoints)
    resign(bundle, dataclasses.replace(m, checkpoints=checkpoints, batch_chain=links[-1]))
    assert_rejected(verify(world, bundle), Reason.REPLAY_DIVERGED)


def test_attack_datasets_reordered(world: World, honest: Path, tmp_path: Path) -> None:
    bundle = copy_of(honest, tmp_path)
    m = Bundle.load(bundle).manifest
    resign(bundle, dataclasses.replace(m, datasets=tuple(reversed(m.datasets))))
    assert_rejected(verify(world, bundle), Reason.BATCH_MISMATCH)


def test_attack_dataset_substituted(world: World, honest: Path, tmp_path: Path) -> None:
    bundle = copy_of(honest, tmp_path)
    m = Bundle.load(bundle).manifest
    resign(bundle, dataclasses.replace(m, datasets=(*m.datasets[:-1], world.noise)))
    assert_rejected(verify(world, bundle), Reason.BATCH_MISMATCH)


def test_attack_declares_a_validation_dataset(world: World, honest: Path, tmp_path: Path) -> None:
    bundle = copy_of(honest, tmp_path)
    m = Bundle.load(bundle).manifest
    resign(bundle, dataclasses.replace(m, datasets=(*m.datasets, world.validation[0])))
    assert_rejected(verify(world, bundle), Reason.VALIDATION_DATASET)


# --- checkpoints ----------------------------------------------------------------------------


def test_attack_checkpoints_swapped(world: World, honest: Path, tmp_path: Path) -> None:
    bundle = copy_of(honest, tmp_path)
    m = Bundle.load(bundle).manifest
    c = list(m.checkpoints)
    c[1], c[2] = (dataclasses.replace(c[2], step=c[1].step, batch_chain=c[1].batch_chain),
                  dataclasses.replace(c[1], step=c[2].step, batch_chain=c[2].batch_chain))
    resign(bundle, dataclasses.replace(m, checkpoints=tuple(c)))
    assert_rejected(verify(world, bundle), Reason.REPLAY_DIVERGED)


def test_attack_checkpoint_perturbed(world: World, honest: Path, tmp_path: Path) -> None:
    bundle = copy_of(honest, tmp_path)
    b = Bundle.load(bundle)
    tensors = decode_block(b.read_checkpoint(2))
    name = next(k for k in sorted(tensors) if "#" not in k)
    tensors[name] = tensors[name] + 1e-3
    data = encode_block(tensors)
    blob_id, root = put_blob(bundle, data)
    c = list(b.manifest.checkpoints)
    c[2] = dataclasses.replace(c[2], blob_id=blob_id, root=root, size=len(data))
    resign(bundle, dataclasses.replace(b.manifest, checkpoints=tuple(c)))
    assert_rejected(verify(world, bundle), Reason.REPLAY_DIVERGED)


def test_attack_checkpoint_zero_is_not_the_base(world: World, honest: Path, tmp_path: Path) -> None:
    bundle = copy_of(honest, tmp_path)
    b = Bundle.load(bundle)
    c = list(b.manifest.checkpoints)
    c[0] = dataclasses.replace(c[1], step=0, batch_chain=bytes(32))
    resign(bundle, dataclasses.replace(b.manifest, checkpoints=tuple(c)))
    assert_rejected(verify(world, bundle), Reason.BASE_MISMATCH)


# --- the base, the delta --------------------------------------------------------------------


def test_attack_stale_base(world: World, honest: Path) -> None:
    ledger = world.materials.ledger
    name = Bundle.load(honest).manifest.blocks[0].name
    moved = dict(ledger.blocks)
    moved[name] = dataclasses.replace(ledger.blocks[name], head=b"\x42" * 32)
    stale = with_ledger(world, dataclasses.replace(ledger, blocks=moved))
    assert_rejected(verify(world, honest, stale), Reason.STALE_BASE)


def _with_delta(bundle: Path, delta: dict[str, torch.Tensor]) -> None:
    """Replace the bundle's delta by `delta`, stored dense, and sign the manifest again."""
    b = Bundle.load(bundle)
    compressed = compress_delta(delta, DENSE)
    blob_id, root = put_blob(bundle, compressed.blob)
    summary = dataclasses.replace(b.manifest.delta, method=compressed.method, blob_id=blob_id, root=root,
                                  compressed_bytes=len(compressed.blob))
    resign(bundle, dataclasses.replace(b.manifest, delta=summary))


DENSE = CompressionConfig()


def _decoded(bundle: Path) -> dict[str, torch.Tensor]:
    return decode_delta(Bundle.load(bundle).read_delta())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_attack_delta_not_finite(world: World, honest: Path, tmp_path: Path, bad: float) -> None:
    """A blob made by hand (our compressor refuses non-finite deltas): a dense delta with one
    value replaced."""
    bundle = copy_of(honest, tmp_path)
    b = Bundle.load(bundle)
    parts = decode_block(compress_delta(_decoded(bundle), DENSE).blob)
    name = next(k for k in sorted(parts) if parts[k].dtype == torch.float32 and parts[k].numel() > 1)
    parts[name] = parts[name].clone()
    parts[name].view(-1)[0] = bad
    data = encode_block(parts)
    blob_id, root = put_blob(bundle, data)
    summary = dataclasses.replace(b.manifest.delta, method=DENSE.method, blob_id=blob_id, root=root,
                                  compressed_bytes=len(data))
    resign(bundle, dataclasses.replace(b.manifest, delta=summary))
    assert_rejected(verify(world, bundle), Reason.NON_FINITE)


def test_attack_delta_huge_norm(world: World, honest: Path, tmp_path: Path) -> None:
    bundle = copy_of(honest, tmp_path)
    _with_delta(bundle, {k: v * 1e4 for k, v in _decoded(bundle).items()})
    assert_rejected(verify(world, bundle), Reason.NORM_TOO_LARGE)


def test_attack_delta_does_not_decode_to_the_claim(world: World, honest: Path, tmp_path: Path) -> None:
    bundle = copy_of(honest, tmp_path)
    _with_delta(bundle, {k: v * 0.5 for k, v in _decoded(bundle).items()})
    assert_rejected(verify(world, bundle), Reason.COMPRESSION_ERROR)


def test_attack_something_riding_in_the_delta(world: World, honest: Path, tmp_path: Path) -> None:
    """A change the training does not explain, added to the delta by the same method and within
    the declared error: the delta is not the compression of trained - base, byte for byte."""
    bundle = copy_of(honest, tmp_path)
    b = Bundle.load(bundle)
    true = compute_delta(checkpoint_weights(b.read_checkpoint(len(b.manifest.checkpoints) - 1)),
                         checkpoint_weights(b.read_checkpoint(0)))
    extra = {k: v + 0.05 * v.abs().mean() * torch.sign(v) for k, v in true.items()}
    compressed = compress_delta(extra, CompressionConfig.parse(b.manifest.delta.method))
    blob_id, root = put_blob(bundle, compressed.blob)
    summary = dataclasses.replace(b.manifest.delta, blob_id=blob_id, root=root,
                                  compressed_bytes=len(compressed.blob), error_ppm=990_000)
    resign(bundle, dataclasses.replace(b.manifest, delta=summary))
    assert_rejected(verify(world, bundle), Reason.COMPRESSION_ERROR)


def test_attack_residual_of_a_round_never_accepted(world: World, honest: Path, tmp_path: Path) -> None:
    bundle = copy_of(honest, tmp_path)
    m = Bundle.load(bundle).manifest
    resign(bundle, dataclasses.replace(m, delta=dataclasses.replace(m.delta, residual_from=b"\x17" * 32)))
    assert_rejected(verify(world, bundle), Reason.COMPRESSION_ERROR)


def test_attack_delta_of_other_shapes(world: World, honest: Path, tmp_path: Path) -> None:
    bundle = copy_of(honest, tmp_path)
    delta = _decoded(bundle)
    first = sorted(delta)[0]
    delta[first] = delta[first][:1]
    _with_delta(bundle, delta)
    assert_rejected(verify(world, bundle), Reason.BAD_SHAPES)


def test_attack_delta_that_makes_the_loss_worse(world: World, tmp_path: Path) -> None:
    """An honest run whose delta does harm: the first layer's router trained on noise routes the
    code worse (measured: 4.064 -> 4.106 nats). Every other check passes."""
    options = dataclasses.replace(OPTIONS, blocks=("layer0.router",), datasets=(world.noise,), lr=1e-2)
    plan = make_training_plan(world.materials, options)
    train_bundle(world.materials, plan, CONTRIBUTOR, tmp_path / "bundle")
    assert_rejected(verify(world, tmp_path / "bundle"), Reason.NO_IMPROVEMENT)


# --- who and how many times -----------------------------------------------------------------


def test_attack_same_bundle_twice(world: World, honest: Path) -> None:
    ledger = world.materials.ledger
    seen = dataclasses.replace(ledger, accepted_manifests=frozenset({Bundle.load(honest).manifest_hash}))
    assert_rejected(verify(world, honest, with_ledger(world, seen)), Reason.DUPLICATE)


def test_attack_manifest_signed_by_another_key(world: World, honest: Path, tmp_path: Path) -> None:
    bundle = copy_of(honest, tmp_path)
    resign(bundle, Bundle.load(bundle).manifest, key=crypto.PrivateKey.from_label("someone else"))
    assert_rejected(verify(world, bundle), Reason.BAD_SIGNATURE)


@pytest.mark.parametrize(("cut", "reason"), [(-7, Reason.BAD_BLOB), (9, Reason.BAD_BLOB), (None, Reason.MISSING_BLOB)])
def test_attack_blob_truncated_oversized_or_missing(world: World, honest: Path, tmp_path: Path, cut: int | None,
                                                     reason: Reason) -> None:
    bundle = copy_of(honest, tmp_path)
    file = bundle / BLOBS_DIR / Bundle.load(bundle).manifest.checkpoints[1].blob_id.hex()
    if cut is None:
        file.unlink()
    elif cut < 0:
        file.write_bytes(file.read_bytes()[:cut])
    else:
        file.write_bytes(file.read_bytes() + b"\0" * cut)
    assert_rejected(verify(world, bundle), reason)


def test_attack_unknown_block_or_other_network(world: World, honest: Path, tmp_path: Path) -> None:
    bundle = copy_of(honest, tmp_path)
    m = Bundle.load(bundle).manifest
    resign(bundle, dataclasses.replace(m, network_id="another"))
    assert_rejected(verify(world, bundle), Reason.WRONG_NETWORK)
    renamed = (dataclasses.replace(m.blocks[0], name="layer7.expert9"),)
    resign(bundle, dataclasses.replace(m, blocks=renamed))
    assert_rejected(verify(world, bundle), Reason.UNKNOWN_BLOCK)


def test_bundle_of_unsigned_bytes_is_refused(world: World, tmp_path: Path) -> None:
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / MANIFEST_FILE).write_bytes(b"\x93not a manifest")
    with pytest.raises(Exception) as info:
        Bundle.load(tmp_path / "bundle")
    assert getattr(info.value, "reason", None) is Reason.BAD_MANIFEST
