"""The verifier on anything a contributor can hand it: an honest bundle whose manifest or blobs are
changed at random (and the manifest signed again) is rejected with a `Reason`, never with an
exception, and accepted only when what changed does not matter; the honest bundle is accepted by
any validator key."""

from __future__ import annotations

import dataclasses
import shutil
import string
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chain import codec, crypto
from chain.learning import PPM, TrainingManifest, sign_manifest
from chain.tensors import DEFAULT_SUBTILE_SIZE
from consensus.pol import Reason
from gpu.delta import apply_delta, decode_delta
from gpu.finetune import checkpoint_weights
from gpu.tiles import compute_tensor_root
from gpu.weights import decode_block, encode_block
from node.pol.bundle import BLOBS_DIR, MANIFEST_FILE, Bundle
from node.pol.contributor import compute_result_roots, make_training_plan, train_bundle
from node.pol.verifier import VerifyReport, verify_bundle
from tests.node.pol.learning_support import CONTRIBUTOR, OPTIONS, VALIDATOR, World, getter, make_world

R = dataclasses.replace
REASONS = {r.value for r in Reason}
PROPERTY = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
BENIGN = {"round_id", "env.torch", "env.device", "env.machine", "env.threads", "delta.error_ppm",
          "hyper.grad_clip_ppm", "hyper.aux_loss_weight_ppm"}
"""Fields whose change an honest bundle may survive: the round (any after the block's last), the
claimed environment elsewhere (replays are then judged within tolerance), another thread count
(this model's kernels give the same bits on 1 and 3 threads, so the replay is exact: hypothesis
found it, a verdict that holds), a looser error bound, a
gradient clip above every gradient norm of the run, and the load-balancing weight (no gradient of
the router's loss reaches an expert)."""


class Quiet(World):
    """The world, with a repr that does not print every blob when hypothesis reports a failure."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"World({self.pact.network_id}, pol={self.pact.params.pol})"

    def _repr_pretty_(self, printer: object, cycle: bool) -> None:  # what hypothesis prints
        printer.text(repr(self))  # type: ignore[attr-defined]


def quiet(w: World) -> Quiet:
    return Quiet(*(getattr(w, f.name) for f in dataclasses.fields(w)))


@pytest.fixture(scope="module")
def world() -> World:
    return quiet(make_world(top_segments=2, random_segments=2))  # four segments: every one is replayed


@pytest.fixture(scope="module")
def honest(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("honest") / "bundle"
    train_bundle(world.materials, make_training_plan(world.materials, R(OPTIONS, datasets=world.train)), CONTRIBUTOR,
                 out)
    return out


def copy_of(bundle: Path, factory: pytest.TempPathFactory) -> Path:
    return Path(shutil.copytree(bundle, factory.mktemp("mutant") / "bundle"))


def resign(bundle: Path, manifest: TrainingManifest) -> None:
    (bundle / MANIFEST_FILE).write_bytes(codec.encode(sign_manifest(CONTRIBUTOR, manifest)))


def put_blob(bundle: Path, data: bytes) -> tuple[bytes, bytes, int]:
    """Store `data` in the bundle; (blob id, Merkle root, size) to declare it by."""
    blob_id = crypto.sha256(data)
    (bundle / BLOBS_DIR / blob_id.hex()).write_bytes(data)
    return blob_id, compute_tensor_root(data, DEFAULT_SUBTILE_SIZE) if data else bytes(32), len(data)


def verify(world: World, bundle: Path, key: bytes = VALIDATOR.public_key) -> VerifyReport:
    report = verify_bundle(world.materials, Bundle.load(bundle), key)  # any exception fails the test
    assert isinstance(report, VerifyReport)
    assert report.verdict.reason == "" or report.verdict.reason in REASONS, report.verdict.reason
    assert report.accepted == (report.verdict.reason == "") == (report.rejection is None)
    return report


def changed_fields(a: TrainingManifest, b: TrainingManifest) -> set[str]:
    out = set()
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name in ("env", "delta", "hyper"):
            out |= {f"{f.name}.{g.name}" for g in dataclasses.fields(x) if getattr(x, g.name) != getattr(y, g.name)}
        elif x != y:
            out.add(f.name)
    return out


# --- strategies: another valid value of each field's type -----------------------------------------

U32, U64 = st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)
HASH = st.binary(min_size=32, max_size=32)
RATIO = st.integers(0, 2 * PPM) | st.sampled_from([0, PPM - 1, PPM, PPM + 1])


def text(n: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=string.ascii_letters + string.digits + "-.()=+,", max_size=n)


HYPER = {
    "steps": st.integers(0, 40) | U32, "batch_size": st.integers(0, 8),  # larger batches cost the replay too much
    "seq_len": st.integers(0, 200), "lr_e9": st.integers(0, 10**8) | U64, "warmup_steps": st.integers(0, 40) | U32,
    "min_lr_ratio_ppm": RATIO, "weight_decay_ppm": RATIO, "beta1_ppm": RATIO, "beta2_ppm": RATIO,
    "grad_clip_ppm": RATIO, "aux_loss_weight_ppm": RATIO, "seed": st.integers(0, 8) | U64,
    "checkpoint_every": st.integers(0, 20) | U32,
}
METHODS = st.sampled_from(["dense", "int8", "topk(chunk=4096,density=20000)+int8", "topk(chunk=4096,density=20000)",
                           "topk(chunk=1024,density=20000)+int4", "lowrank(rank=8)+int8"]) | text(96)
DELTA = {"method": METHODS, "blob_id": HASH, "root": HASH, "raw_bytes": st.integers(0, 10**7) | U64,
         "compressed_bytes": st.integers(0, 10**7), "error_ppm": st.integers(0, PPM) | U32, "residual_from": HASH,
         "residual_blob": HASH, "residual_size": st.integers(0, 10**6), "residual_root": HASH}
ENV = {"torch": text(32), "threads": st.integers(0, 4), "device": st.sampled_from(["cpu", "cuda", ""]),
       "machine": text(32)}


def draw_manifest(data: st.DataObject, m: TrainingManifest, world: World) -> TrainingManifest:
    """`m` with one part replaced by another value of its type."""
    kind = data.draw(st.sampled_from(["hyper", "hyper", "hyper", "checkpoint", "checkpoint", "checkpoints",
                                      "batch_chain", "losses", "delta", "datasets", "round_id", "env", "block",
                                      "identity"]))
    if kind == "hyper":
        name = data.draw(st.sampled_from(sorted(HYPER)))
        return R(m, hyper=R(m.hyper, **{name: data.draw(HYPER[name])}))
    if kind == "delta":
        name = data.draw(st.sampled_from(sorted(DELTA)))
        value = data.draw(DELTA[name] | st.just(m.checkpoints[-1].blob_id) if name == "blob_id" else DELTA[name])
        return R(m, delta=R(m.delta, **{name: value}))
    if kind == "env":
        name = data.draw(st.sampled_from(sorted(ENV)))
        return R(m, env=R(m.env, **{name: data.draw(ENV[name])}))
    if kind == "checkpoint":
        i = data.draw(st.integers(0, len(m.checkpoints) - 1))
        c, others = m.checkpoints[i], [*m.checkpoints, R(m.checkpoints[0], blob_id=m.delta.blob_id,
                                                          root=m.delta.root, size=m.delta.compressed_bytes)]
        other = data.draw(st.sampled_from(others))
        new = data.draw(st.sampled_from([
            R(c, step=data.draw(st.integers(0, 40))), R(c, root=data.draw(HASH)), R(c, blob_id=data.draw(HASH)),
            R(c, size=data.draw(st.integers(0, 10**6))), R(c, batch_chain=other.batch_chain),
            R(c, blob_id=other.blob_id, root=other.root, size=other.size),  # another blob of the bundle
        ]))
        return R(m, checkpoints=(*m.checkpoints[:i], new, *m.checkpoints[i + 1:]))
    if kind == "checkpoints":
        c = list(m.checkpoints)
        i, j = data.draw(st.integers(1, len(c) - 1)), data.draw(st.integers(0, len(c) - 1))
        return R(m, checkpoints=tuple(data.draw(st.sampled_from([c[:i] + c[i + 1:], c[:i] + [c[j]] + c[i:],
                                                                 c[:i] + [c[j]] + c[i + 1:]]))))
    if kind == "batch_chain":
        return R(m, batch_chain=data.draw(HASH | st.sampled_from([c.batch_chain for c in m.checkpoints])))
    if kind == "losses":
        losses = list(m.train_losses)
        i = data.draw(st.integers(0, len(losses) - 1))
        value = data.draw(U32 | st.sampled_from([losses[i] - 1, losses[i] + 1, 0]))
        return R(m, train_losses=tuple(data.draw(st.sampled_from([losses[:i] + [value] + losses[i + 1:],
                                                                  losses[:-1], [*losses, value]]))))
    if kind == "datasets":
        every = sorted(world.materials.ledger.datasets)
        return R(m, datasets=tuple(data.draw(st.permutations(m.datasets) | st.lists(st.sampled_from(every),
                                                                                    min_size=1, max_size=6))))
    if kind == "round_id":
        return R(m, round_id=data.draw(st.integers(0, 5) | U64))
    if kind == "block":
        heads = [b.head for b in world.materials.ledger.blocks.values()]
        b = m.blocks[0]
        new = data.draw(st.sampled_from([
            R(b, name=data.draw(st.sampled_from(sorted(world.materials.ledger.blocks)) | text(64))),
            R(b, base_head=data.draw(HASH | st.sampled_from(heads))), R(b, base_root=data.draw(HASH)),
            R(b, result_root=data.draw(HASH | st.just(b.base_root))),
        ]))
        return R(m, blocks=data.draw(st.sampled_from([(new,), tuple(sorted((b, new), key=lambda x: x.name))])))
    field = data.draw(st.sampled_from(["network_id", "genesis_hash", "tokenizer", "version"]))
    return R(m, **{field: data.draw(text(32) if field in ("network_id", "version") else HASH)})


# --- properties ---------------------------------------------------------------------------------


@PROPERTY
@given(data=st.data())
def test_verify_mutated_manifest_never_raises(world: World, honest: Path, tmp_path_factory: pytest.TempPathFactory,
                                              data: st.DataObject) -> None:
    m = Bundle.load(honest).manifest
    mutated = draw_manifest(data, m, world)
    bundle = copy_of(honest, tmp_path_factory)
    resign(bundle, mutated)
    report = verify(world, bundle)
    if report.accepted:
        assert changed_fields(m, mutated) <= BENIGN, changed_fields(m, mutated)


@PROPERTY
@given(data=st.data())
def test_verify_mutated_blob_never_raises(world: World, honest: Path, tmp_path_factory: pytest.TempPathFactory,
                                          data: st.DataObject) -> None:
    m = Bundle.load(honest).manifest
    bundle = copy_of(honest, tmp_path_factory)
    index = data.draw(st.integers(0, len(m.checkpoints)))  # the last index: the delta
    ref = m.checkpoints[index].blob_id if index < len(m.checkpoints) else m.delta.blob_id
    file = bundle / BLOBS_DIR / ref.hex()
    file_bytes = file.read_bytes()
    raw = bytearray(file_bytes)
    op = data.draw(st.sampled_from(["flip", "truncate", "extend", "delete"]))
    if op == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    elif op == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif op == "extend":
        raw += data.draw(st.binary(min_size=1, max_size=64))
    file.unlink()
    benign = op != "delete" and bytes(raw) == file_bytes  # flips that cancel out
    if op != "delete" and data.draw(st.booleans(), label="declared again"):
        blob_id, root, size = put_blob(bundle, bytes(raw))
        if index < len(m.checkpoints):
            c = R(m.checkpoints[index], blob_id=blob_id, root=root, size=size)
            resign(bundle, R(m, checkpoints=(*m.checkpoints[:index], c, *m.checkpoints[index + 1:])))
            benign = benign or _same_weights(bytes(raw), Bundle.load(honest).read_checkpoint(index))
        else:
            resign(bundle, R(m, delta=R(m.delta, blob_id=blob_id, root=root, compressed_bytes=size)))
    elif op != "delete":
        file.write_bytes(bytes(raw))
    report = verify(world, bundle)
    assert benign or not report.accepted, "a changed blob was accepted"


def _same_weights(blob: bytes, honest_blob: bytes) -> bool:
    """Only the optimizer state changed: a replay that lands bit for bit on the claimed weights
    despite it proves the claim all the same."""
    try:
        a, b = checkpoint_weights(blob), checkpoint_weights(honest_blob)
    except Exception:  # noqa: BLE001 - not a checkpoint at all
        return False
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def sampled(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, Path]:
    """The default PoL parameters (one top and one random segment of four): keys replay different ones."""
    w = quiet(make_world())
    out = tmp_path_factory.mktemp("sampled") / "bundle"
    train_bundle(w.materials, make_training_plan(w.materials, R(OPTIONS, datasets=w.train)), CONTRIBUTOR, out)
    return w, out


@PROPERTY
@given(key=st.binary(min_size=32, max_size=32))
def test_verify_honest_accepted_by_any_validator(sampled: tuple[World, Path], key: bytes) -> None:
    report = verify(*sampled, key=key)
    assert report.accepted, report.rejection
    assert report.verdict.validator == key and len(report.verdict.segments) == 2
    assert all(s.exact for s in report.verdict.segments)


def test_verify_segments_differ_by_validator(sampled: tuple[World, Path]) -> None:
    keys = [crypto.PrivateKey.from_label(f"validator-{i}").public_key for i in range(6)]
    picks = {tuple(s.index for s in verify(*sampled, key=k).verdict.segments) for k in keys}
    assert len(picks) >= 2, picks


# --- the inputs the properties found: each must be a rejection -----------------------------------


def _hyper(**fields: object) -> Callable[[TrainingManifest, Path], TrainingManifest]:
    return lambda m, _: R(m, hyper=R(m.hyper, **fields))


def _checkpoint(i: int, change: Callable[[dict[str, torch.Tensor]], None],
                encode: Callable[[dict[str, torch.Tensor]], bytes] = encode_block,
                ) -> Callable[[TrainingManifest, Path], TrainingManifest]:
    def mutate(m: TrainingManifest, bundle: Path) -> TrainingManifest:
        tensors = decode_block((bundle / BLOBS_DIR / m.checkpoints[i].blob_id.hex()).read_bytes())
        change(tensors)
        blob_id, root, size = put_blob(bundle, encode(tensors))
        c = R(m.checkpoints[i], blob_id=blob_id, root=root, size=size)
        return R(m, checkpoints=(*m.checkpoints[:i], c, *m.checkpoints[i + 1:]))
    return mutate


def _first_weight(t: dict[str, torch.Tensor]) -> str:
    return sorted(k for k in t if "#" not in k)[0]


def _zero_weights(t: dict[str, torch.Tensor]) -> None:
    t.update({k: torch.zeros_like(v) for k, v in t.items() if "#" not in k})


def _spoil_header(blob: bytes) -> bytes:
    return blob[:10] + bytes([blob[10] ^ 1]) + blob[11:]  # in the safetensors JSON header


def _delta_as_checkpoint(i: int) -> Callable[[TrainingManifest, Path], TrainingManifest]:
    return lambda m, _: R(m, checkpoints=(*m.checkpoints[:i], R(m.checkpoints[i], blob_id=m.delta.blob_id,
                          root=m.delta.root, size=m.delta.compressed_bytes), *m.checkpoints[i + 1:]))


FOUND: dict[str, Callable[[TrainingManifest, Path], TrainingManifest]] = {
    "seq-len-above-the-model": _hyper(seq_len=129),
    "min-lr-ratio-above-one": _hyper(min_lr_ratio_ppm=2 * PPM),
    "beta1-one": _hyper(beta1_ppm=PPM),
    "grad-clip-zero": _hyper(grad_clip_ppm=0),
    "threads-zero": lambda m, _: R(m, env=R(m.env, threads=0)),
    "raw-bytes-wrong": lambda m, _: R(m, delta=R(m.delta, raw_bytes=1)),
    "checkpoint-not-canonical": _checkpoint(2, lambda t: None, lambda t: _spoil_header(encode_block(t))),
    "checkpoint-is-the-delta": _delta_as_checkpoint(2),
    "last-checkpoint-is-the-delta": _delta_as_checkpoint(4),
    "checkpoint-extra-tensor": _checkpoint(2, lambda t: t.update({"layer0.expert0/extra": torch.zeros(3)})),
    "checkpoint-tensor-shrunk": _checkpoint(2, lambda t: t.update({(k := _first_weight(t)): t[k][:-1].clone()})),
    "checkpoint-zero-weights": _checkpoint(2, _zero_weights),
    "checkpoint-empty": _checkpoint(2, lambda t: None, lambda t: b""),
    "checkpoint-one-byte": _checkpoint(2, lambda t: None, lambda t: b"{"),
}


@pytest.mark.parametrize("case", sorted(FOUND))
def test_verify_found_input_rejected(world: World, honest: Path, tmp_path_factory: pytest.TempPathFactory,
                                     case: str) -> None:
    bundle = copy_of(honest, tmp_path_factory)
    resign(bundle, FOUND[case](Bundle.load(bundle).manifest, bundle))
    assert not verify(world, bundle).accepted


def test_attack_no_op_run_elsewhere_carrying_a_validation_delta(world: World,
                                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    """A run whose learning rate leaves the weights bit for bit at the base replays exactly; claimed
    on another machine, its compression is judged by the relative error against trained - base = 0.
    The delta attached was trained on the validation set: it must not pass."""
    root = tmp_path_factory.mktemp("no-op")
    plan = make_training_plan(world.materials, R(OPTIONS, datasets=world.train, lr=1e-9, warmup_steps=2**32 - 1))
    train_bundle(world.materials, plan, CONTRIBUTOR, root / "bundle")
    blobs = dict(world.blobs)
    for fake, real in zip(world.train[:2], world.validation, strict=True):
        blobs[crypto.digest_from_cid(fake)] = world.blobs[crypto.digest_from_cid(real)]
    cheat = make_training_plan(world.materials, R(OPTIONS, datasets=world.train[:2]))
    lying = train_bundle(R(world.materials, get_blob=getter(blobs)), cheat, CONTRIBUTOR, root / "cheat")
    delta = Bundle.load(lying.bundle).read_delta()
    b = Bundle.load(root / "bundle")
    base = checkpoint_weights(b.read_checkpoint(0))
    assert all(torch.equal(base[k], v) for k, v in checkpoint_weights(b.read_checkpoint(-1)).items())  # a no-op
    roots = compute_result_roots([x.name for x in b.manifest.blocks], apply_delta(base, decode_delta(delta)))
    blob_id, root_, size = put_blob(b.path, delta)
    m = b.manifest
    resign(b.path, R(m, blocks=tuple(R(x, result_root=roots[x.name]) for x in m.blocks),
                     env=R(m.env, machine="riscv64"),
                     delta=R(m.delta, blob_id=blob_id, root=root_, compressed_bytes=size, error_ppm=1)))
    report = verify(world, b.path)
    assert not report.accepted, (report.measurements.base_loss, report.measurements.new_loss)
