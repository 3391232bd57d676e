"""`blyan pol verify`: what a validator runs on a submission bundle, and the verdict it signs.

The decisions are `consensus.pol`'s (pure); the measurements are torch's (`gpu.finetune`,
`gpu.delta`), made here in the order of the checks: the first check that fails is the verdict's
reason, and every measurement made until then is reported with it.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from chain.errors import DecodingError
from chain.learning import PPM, LearningVerdict, SegmentCheck, TrainingManifest, to_micro
from consensus.pol import (
    Distance,
    PolRejection,
    Reason,
    choose_segments,
    compute_segment_seed,
    judge_replay,
    make_verdict,
    to_segment_check,
    validate_compression,
    validate_delta_norm,
    validate_improvement,
    validate_manifest,
    validate_not_duplicate,
)
from gpu.delta import (
    CompressionConfig,
    InvalidDelta,
    NonFiniteDelta,
    apply_delta,
    compress_delta,
    compute_delta,
    compute_norms,
    compute_relative_error,
    decode_delta,
    is_finite,
    read_method,
)
from gpu.finetune import (
    InvalidCheckpoint,
    chain_batch_hash,
    checkpoint_weights,
    compare_weights,
    evaluate_windows,
    replay_segment,
    validate_stream,
)
from gpu.model import MoEModel
from gpu.weights import decode_block
from node.pol.bundle import Bundle
from node.pol.contributor import compute_env, compute_result_roots, finetune_config_of
from node.pol.data import Materials, build_stream, load_base_model, load_tokenizer, validation_stream

MAX_REPLAY_THREADS = 256
LOSS_TOLERANCE = 0.01
"""Replayed segment losses elsewhere than the claimed environment: within 1% of the claim."""


@dataclass
class Measurements:
    """Everything a verification measured, for `--json` and the verdict."""

    base_loss: float | None = None
    new_loss: float | None = None
    delta_l2: float | None = None
    base_l2: float | None = None
    compression_error: float | None = None
    update_norms: list[float] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)
    same_environment: bool = False
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    verdict: LearningVerdict
    measurements: Measurements
    rejection: PolRejection | None

    @property
    def accepted(self) -> bool:
        return self.verdict.accepted


def verify_bundle(m: Materials, bundle: Bundle, validator: bytes) -> VerifyReport:
    """Run every check on `bundle` as the validator whose public key is `validator`."""
    out = Measurements()
    checks: list[SegmentCheck] = []
    try:
        _verify(m, bundle, validator, out, checks)
        rejection = None
    except PolRejection as err:
        rejection = err
    verdict = make_verdict(
        bundle.manifest, validator, rejection,
        base_loss=to_micro(out.base_loss) if out.base_loss is not None else 0,
        new_loss=to_micro(out.new_loss) if out.new_loss is not None else 0,
        segments=checks, compression_error=out.compression_error or 0.0,
    )
    return VerifyReport(verdict, out, rejection)


def _verify(m: Materials, bundle: Bundle, validator: bytes, out: Measurements, checks: list[SegmentCheck]) -> None:
    man, params = bundle.manifest, m.pact.params.pol
    started = time.perf_counter()
    validate_manifest(bundle.signed, m.ledger, params, m.pact.network_id, m.genesis_hash)
    names = [b.name for b in man.blocks]
    model = load_base_model(m)
    base = {f"{n}/{t}": v.detach().clone() for n in names for t, v in model.block_state_dict(n).items()}
    decoded = _decode(bundle, base)
    raw = 4 * sum(t.numel() for t in base.values())
    if man.delta.raw_bytes != raw:
        raise PolRejection(Reason.BAD_MANIFEST, f"raw_bytes {man.delta.raw_bytes}: the trained tensors hold {raw}")
    out.delta_l2, _ = compute_norms(decoded)
    out.base_l2, _ = compute_norms(base)
    validate_delta_norm(out.delta_l2, out.base_l2, is_finite(decoded), params)
    validate_not_duplicate(bundle.manifest_hash, m.ledger)
    out.seconds["static"] = time.perf_counter() - started

    started = time.perf_counter()
    blobs = [bundle.read_checkpoint(i) for i in range(len(man.checkpoints))]
    weights = [_read_weights(blob, i, base) for i, blob in enumerate(blobs)]
    if not _equal(weights[0], base):
        raise PolRejection(Reason.BASE_MISMATCH, "checkpoint 0 is not the base weights")
    if not is_fresh_checkpoint(blobs[0]):
        raise PolRejection(Reason.BASE_MISMATCH, "checkpoint 0 does not start from a fresh optimizer "
                           "(its moments or step are not zero)")
    out.update_norms = [_l2(weights[i + 1], weights[i]) for i in range(len(weights) - 1)]
    chosen = choose_segments(compute_segment_seed(bundle.manifest_hash, validator), out.update_norms,
                             params.top_segments, params.random_segments)
    tokenizer = load_tokenizer(m)
    stream = build_stream(m, tokenizer, man.datasets)
    cfg = finetune_config_of(names, man.hyper, man.env.threads)
    try:
        if not 0 < man.env.threads <= MAX_REPLAY_THREADS:
            raise ValueError(f"{man.env.threads} torch threads")
        cfg.validate(model.cfg)
        validate_stream(stream, model.cfg.vocab_size, cfg.seq_len)
    except ValueError as err:
        raise PolRejection(Reason.BAD_HYPERPARAMETERS, f"the training cannot be replayed as declared: {err}") from err
    out.same_environment = man.env == compute_env(man.env.threads)
    for i in chosen:
        checks.append(_replay(model, stream, cfg, man, blobs, weights, i, out, params))
    out.seconds["replay"] = time.perf_counter() - started

    started = time.perf_counter()
    true_delta = compute_delta(weights[-1], base)
    _check_compression(bundle, m, true_delta, out.same_environment)
    out.compression_error = compute_relative_error(decoded, true_delta)
    validate_compression(out.compression_error, man.delta.error_ppm)
    result = apply_delta(base, decoded)
    roots = compute_result_roots(names, result)
    for b in man.blocks:
        if roots[b.name] != b.result_root:
            raise PolRejection(Reason.RESULT_MISMATCH, f"{b.name}: base + decode(delta) is not the claimed weights")
    val = validation_stream(m, tokenizer)
    out.base_loss = evaluate_windows(model, val, params.eval_seq_len, params.eval_windows, man.env.threads)
    improved = _with_weights(model, result)
    out.new_loss = evaluate_windows(improved, val, params.eval_seq_len, params.eval_windows, man.env.threads)
    out.seconds["evaluate"] = time.perf_counter() - started
    validate_improvement(to_micro(out.base_loss), to_micro(out.new_loss), params)


def _decode(bundle: Bundle, base: dict[str, Tensor]) -> dict[str, Tensor]:
    blob = bundle.read_delta()
    try:
        decoded = decode_delta(blob)
    except NonFiniteDelta as err:
        raise PolRejection(Reason.NON_FINITE, f"the delta holds NaN or infinite values: {err}") from err
    except InvalidDelta as err:
        raise PolRejection(Reason.BAD_BLOB, f"the delta does not decode: {err}") from err
    shapes = {k: tuple(v.shape) for k, v in decoded.items()}
    wanted = {k: tuple(v.shape) for k, v in base.items()}
    if shapes != wanted:
        raise PolRejection(Reason.BAD_SHAPES, f"the delta's tensors {sorted(shapes)[:4]}... are not the "
                           f"trained blocks' {sorted(wanted)[:4]}... of the same shapes")
    if bundle.manifest.delta.method != read_method(blob):
        raise PolRejection(Reason.COMPRESSION_ERROR, "the delta is not compressed the way the manifest says")
    return decoded


def _check_compression(bundle: Bundle, m: Materials, true_delta: dict[str, Tensor], same_environment: bool) -> None:
    """The delta is the compression of trained - base (plus the residual it says it carries, of a
    round the chain accepted), by the method it names: the blob must be that compression byte for
    byte, so nothing else can ride in it. The trained weights are the bundle's last checkpoint, the
    same bytes everywhere, and top-k and quantization are exact elementwise work, so this holds on
    any machine; only a low-rank factorisation (an SVD) made on another machine kind may round
    otherwise, and it must then decode within the replay tolerance of ours."""
    tolerance_ppm = m.pact.params.pol.replay_tolerance_ppm
    d = bundle.manifest.delta
    residual = None
    if d.residual_from != bytes(32):
        if d.residual_from not in m.ledger.accepted_manifests:
            raise PolRejection(Reason.COMPRESSION_ERROR, "it carries the residual of a round the chain did not accept")
        try:
            residual = decode_block(bundle.read_blob(d.residual_blob, d.residual_size, d.residual_root, "residual"))
        except DecodingError as err:
            raise PolRejection(Reason.BAD_BLOB, f"the carried residual: {err}") from err
        if {k: v.shape for k, v in residual.items()} != {k: v.shape for k, v in true_delta.items()}:
            raise PolRejection(Reason.BAD_SHAPES, "the carried residual is not of the trained blocks' tensors")
    elif d.residual_blob != bytes(32) or d.residual_size or d.residual_root != bytes(32):
        raise PolRejection(Reason.BAD_MANIFEST, "a residual blob without the round it comes from")
    try:
        method = CompressionConfig.parse(d.method)
        expected = compress_delta(true_delta, method, residual)
    except (ValueError, InvalidDelta) as err:
        raise PolRejection(Reason.COMPRESSION_ERROR, f"cannot compress by {d.method!r}: {err}") from err
    blob = bundle.read_delta()
    if expected.blob == blob:
        return
    if method.rank and not same_environment:  # an SVD elsewhere may round otherwise: nearly the same
        drift = compute_relative_error(decode_delta(blob), decode_delta(expected.blob))
        if drift * PPM <= tolerance_ppm:
            return
    raise PolRejection(Reason.COMPRESSION_ERROR, f"the delta is not the {d.method} compression of the trained "
                       "weights minus the base")


def _replay(model: MoEModel, stream: Tensor, cfg: Any, man: TrainingManifest, blobs: list[bytes],
            weights: list[dict[str, Tensor]], i: int, out: Measurements, params: Any) -> SegmentCheck:
    start, end = man.checkpoints[i], man.checkpoints[i + 1]
    try:
        replay = replay_segment(copy.deepcopy(model), stream, cfg, blobs[i], start.step, end.step)
    except InvalidCheckpoint as err:
        raise PolRejection(Reason.BAD_BLOB, f"checkpoint {i}: {err}") from err
    link = start.batch_chain
    for h in replay.batch_hashes:
        link = chain_batch_hash(link, h)
    if link != end.batch_chain:
        raise PolRejection(Reason.BATCH_MISMATCH, f"segment {i}: the declared batches do not hash to the chain")
    d = compare_weights(checkpoint_weights(replay.end_blob), weights[i + 1])
    distance = Distance(d.exact, d.l2, d.linf, d.cosine)
    check = to_segment_check(i, distance)
    loss = sum(replay.losses) / len(replay.losses)
    out.segments.append({"index": i, "steps": [start.step, end.step], "exact": d.exact, "l2": d.l2,
                         "linf": d.linf, "cosine": d.cosine, "replayed_loss": loss,
                         "claimed_loss": man.train_losses[i] / PPM})
    if not judge_replay(distance, out.same_environment, params):
        raise PolRejection(Reason.REPLAY_DIVERGED, f"segment {i} (steps {start.step}-{end.step}) lands "
                           f"l2 {d.l2:.3g} from its claimed checkpoint")
    claimed = man.train_losses[i] / PPM
    if (out.same_environment and to_micro(loss) != man.train_losses[i]) or \
            not math.isclose(loss, claimed, rel_tol=LOSS_TOLERANCE):
        raise PolRejection(Reason.LOSS_MISMATCH, f"segment {i}: replayed loss {loss:.6f}, claimed {claimed:.6f}")
    return check


def _read_weights(blob: bytes, index: int, base: dict[str, Tensor]) -> dict[str, Tensor]:
    """A checkpoint's weights, which must be the trained blocks' tensors (names, shapes, dtypes)."""
    try:
        weights = checkpoint_weights(blob)
    except InvalidCheckpoint as err:
        raise PolRejection(Reason.BAD_BLOB, f"checkpoint {index}: {err}") from err
    if {k: (v.shape, v.dtype) for k, v in weights.items()} != {k: (v.shape, v.dtype) for k, v in base.items()}:
        raise PolRejection(Reason.BAD_BLOB, f"checkpoint {index} does not hold the trained blocks' tensors")
    return weights


def is_fresh_checkpoint(blob: bytes) -> bool:
    """Whether a checkpoint's optimizer state is the initial one: zero moments, step 0 (so the
    training starts from the base alone, and nothing learned elsewhere rides in its momentum)."""
    tensors = decode_block(blob)
    return all(not bool(t.any()) for k, t in tensors.items() if "#" in k)


def _with_weights(model: MoEModel, weights: dict[str, Tensor]) -> MoEModel:
    out = copy.deepcopy(model)
    blocks: dict[str, dict[str, Tensor]] = {}
    for key, value in weights.items():
        block, tensor = key.split("/", 1)
        blocks.setdefault(block, {})[tensor] = value
    for block, tensors in blocks.items():
        out.load_block_state_dict(block, tensors)
    return out.eval()


def _equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and bool((a[k] == b[k]).all()) for k in a)


def _l2(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return math.sqrt(sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in b))
