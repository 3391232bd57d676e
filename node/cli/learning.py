"""CLI verbs of contributors and validators: `blyan train`, `blyan pol verify`, `blyan delta inspect`.

They run beside a running node: the chains are read through its RPC (`blyan_getLedgerView`),
since the daemon holds the LevelDB lock, or from the store directly when no node runs; blobs
(model blocks, datasets) are read from the data dir's content-addressed blob store, each checked
against its id.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from chain.blobs import BlobStore
from chain.crypto import load_key
from chain.errors import BlyanError
from chain.ledger import LedgerView, read_ledger_view
from chain.pact import compute_genesis_hash
from chain.types import CHAIN_DATASET, CHAIN_PARAMETER
from node.api.client import RPCClient
from node.app.config import BLOBS_DIR, KEY_FILE, NODE_INFO_FILE, PACT_FILE
from node.app.datadir import load_pact_file, open_store, read_head_records
from node.cli.connect import find_rpc
from node.cli.remote import rpc_options
from node.core.progress import format_progress
from node.pol.bundle import Bundle, describe_manifest
from node.pol.data import MaterialMissing, Materials, blob_getter

LEARNING_DIR = "learning"
"""Under the data dir: the contributor's error-feedback residual."""


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def load_materials(data_dir: Path) -> Materials:
    """The data dir's genesis, the chains (over RPC if its node runs), and its blob store."""
    data_dir = Path(data_dir)
    pact = load_pact_file(data_dir / PACT_FILE)
    blobs = BlobStore(data_dir / BLOBS_DIR)

    ledger = read_ledger(data_dir)
    return Materials(pact, compute_genesis_hash(pact), ledger, blob_getter(blobs), read_head_records(data_dir, ledger))


def read_ledger(data_dir: Path) -> LedgerView:
    """Over the RPC of the node running on `data_dir` (it holds the LevelDB lock), else from the
    store itself."""
    if (data_dir / NODE_INFO_FILE).exists():
        url, cookie = find_rpc(data_dir)
        try:
            return LedgerView.from_json(RPCClient(url, cookie, timeout=60.0).call("blyan_getLedgerView"))
        except ValueError as err:
            raise MaterialMissing(f"the node at {url} sent a malformed ledger view: {err}") from err
    _, store = open_store(data_dir)
    try:
        return read_ledger_view(store.state(CHAIN_PARAMETER), store.state(CHAIN_DATASET))
    finally:
        store.close()


def register(main: click.Group) -> None:
    main.add_command(train)
    main.add_command(pol)
    main.add_command(delta)


# --- blyan train ---------------------------------------------------------------------------------


@click.command()
@click.option("--data-dir", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="The contributor's node data dir (chains over its RPC, blobs from its store).")
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False), help="Bundle directory.")
@click.option("--block", "blocks", multiple=True, help="Block to train (repeat) [default: layer0.expert0].")
@click.option("--dataset", "datasets", multiple=True,
              help="Training dataset CID (repeat) [default: every approved one whose bytes are here].")
@click.option("--steps", type=int, default=None, help="Optimizer steps [default: 320, about a minute].")
@click.option("--batch-size", type=int, default=None, help="Sequences per step [default: 8].")
@click.option("--seq-len", type=int, default=None, help="Tokens per sequence [default: 128].")
@click.option("--lr", type=float, default=None, help="Peak learning rate [default: 1e-3].")
@click.option("--seed", type=int, default=None, help="Seed of the batch order [default: 0].")
@click.option("--threads", type=int, default=None, help="torch threads [default: 1].")
@click.option("--compression", default=None,
              help='Delta compression: "int8" (the default), "topk(chunk=4096,density=100000)+int8", '
                   '"lowrank(rank=8)+int8", "dense", ...')
@click.option("--key", "key_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Contributor key [default: the data dir's node.key].")
@click.option("--mlflow-uri", default=None, help="Log the run to this MLflow tracking store (sqlite:///..., file:...).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def train(data_dir: Path, out: Path, blocks: tuple[str, ...], datasets: tuple[str, ...], steps: int | None,
          batch_size: int | None, seq_len: int | None, lr: float | None, seed: int | None, threads: int | None,
          compression: str | None, key_file: Path | None, mlflow_uri: str | None, as_json: bool) -> None:
    """Fine-tune blocks on approved datasets and write a submission bundle (manifest, delta, checkpoints)."""
    # torch: only training and verification need it, not every `blyan` command
    from gpu.delta import CompressionConfig
    from node.pol.contributor import TrainingOptions, make_training_plan, train_bundle

    picked: dict[str, Any] = {"blocks": blocks or None, "datasets": datasets or None, "steps": steps,
                              "batch_size": batch_size, "seq_len": seq_len, "lr": lr, "seed": seed,
                              "threads": threads}
    try:
        if compression is not None:
            picked["compression"] = CompressionConfig.parse(compression)
        options = replace(TrainingOptions(), **{k: v for k, v in picked.items() if v is not None})
        materials = load_materials(data_dir)
        key = load_key(key_file or data_dir / KEY_FILE)
        plan = make_training_plan(materials, options)
        tracker = _open_tracker(mlflow_uri, plan) if mlflow_uri else None
        result = train_bundle(materials, plan, key, out, residual_dir=data_dir / LEARNING_DIR,
                              progress=_progress_printer(not as_json, tracker, options.batch_size * options.seq_len))
    except (BlyanError, ValueError, OSError) as err:
        _fail(str(err))
    summary = _train_summary(result)
    if tracker is not None:
        tracker.finish(summary, out)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"bundle {out}: manifest {summary['manifest_hash'][:16]}, {summary['steps']} steps in "
                   f"{summary['train_seconds']:.1f} s, delta {summary['delta']['method']} "
                   f"{summary['delta']['ratio']:.1f}x smaller, error {summary['delta']['error']:.4f}")


def _train_summary(result: Any) -> dict[str, Any]:
    m = result.signed.manifest
    d = m.delta
    return {
        "bundle": str(result.bundle), "manifest_hash": describe_manifest(m)["manifest_hash"],
        "blocks": [b.name for b in m.blocks], "datasets": len(m.datasets), "steps": m.hyper.steps,
        "tokens": result.tokens, "train_seconds": round(result.train_seconds, 3), "final_loss": result.final_loss,
        "checkpoints": len(m.checkpoints),
        "delta": {"method": d.method, "raw_bytes": d.raw_bytes, "compressed_bytes": d.compressed_bytes,
                  "ratio": d.raw_bytes / max(1, d.compressed_bytes), "error": result.compression_error},
    }


def _progress_printer(show: bool, tracker: Any, tokens_per_step: int) -> Any:
    last = [0.0]

    def progress(step: int, steps: int, loss: float, seconds: float) -> None:
        if tracker is not None:
            tracker.step(step, loss)
        if not show or (seconds - last[0] < 2.0 and step != steps):
            return
        last[0] = seconds
        rate = step / seconds if seconds > 0 else None
        tokens = f", {rate * tokens_per_step:,.0f} tokens/s" if rate else ""
        click.echo(f"  train {format_progress(step, steps, rate, 'steps')}{tokens}, loss {loss:.4f}", err=True)

    return progress


class _MlflowTracker:
    """A training run in an MLflow tracking store (the optional `mlflow` extra)."""

    def __init__(self, mlflow: Any, uri: str, plan: Any) -> None:
        self.mlflow = mlflow
        if uri.startswith("file:"):  # MLflow 3.18 keeps its file store only behind this switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("blyan-train")
        self.run = mlflow.start_run(run_name=f"round-{plan.round_id}")
        o = plan.options
        mlflow.log_params({"blocks": ",".join(b.name for b in plan.blocks), "datasets": len(plan.datasets),
                           "steps": o.steps, "batch_size": o.batch_size, "seq_len": o.seq_len, "lr": o.lr,
                           "seed": o.seed, "compression": o.compression.method})
        self._last = time.monotonic()

    def step(self, step: int, loss: float) -> None:
        self.mlflow.log_metric("train_loss", loss, step=step)

    def finish(self, summary: dict[str, Any], bundle: Path) -> None:
        self.mlflow.log_metrics({"train_seconds": summary["train_seconds"],
                                 "delta_ratio": summary["delta"]["ratio"], "delta_error": summary["delta"]["error"]})
        self.mlflow.log_artifact(str(Path(bundle) / "manifest.json"))
        self.mlflow.end_run()


def _open_tracker(uri: str, plan: Any) -> _MlflowTracker:
    try:
        import mlflow  # the optional extra: `pip install blyan[mlflow]`
    except ImportError as err:
        raise ValueError("--mlflow-uri needs MLflow: pip install 'blyan[mlflow]'") from err
    return _MlflowTracker(mlflow, uri, plan)


# --- blyan pol verify ----------------------------------------------------------------------------


@click.group()
def pol() -> None:
    """Proof-of-Learning: what a validator checks of a delta."""


@pol.command("verify")
@click.argument("bundle_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--data-dir", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="The validator's node data dir (chains over its RPC, blobs from its store).")
@click.option("--key", "key_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Validator key (its public key seeds the segments) [default: the data dir's node.key].")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict and every measurement as JSON.")
def pol_verify(bundle_dir: Path, data_dir: Path, key_file: Path | None, as_json: bool) -> None:
    """Run the validator's checks on a bundle; exit 1 when the delta is rejected."""
    from node.pol.verifier import verify_bundle  # torch

    try:
        materials = load_materials(data_dir)
        key = load_key(key_file or data_dir / KEY_FILE)
        report = verify_bundle(materials, Bundle.load(bundle_dir), key.public_key)
    except BlyanError as err:
        _fail(str(err))
    out = describe_report(report)
    if as_json:
        click.echo(json.dumps(out, indent=2))
    elif report.accepted:
        click.echo(f"accepted: validation loss {out['base_loss']:.4f} -> {out['new_loss']:.4f} "
                   f"({out['gain']:+.2%}), {len(out['segments'])} segments replayed "
                   f"({sum(s['exact'] for s in out['segments'])} bit-exact)")
    else:
        click.echo(f"rejected ({out['reason']}): {out['detail']}")
    sys.exit(0 if report.accepted else 1)


def describe_report(report: Any) -> dict[str, Any]:
    v, m = report.verdict, report.measurements
    gain = None
    if m.base_loss and m.new_loss is not None:
        gain = (m.base_loss - m.new_loss) / m.base_loss
    return {
        "accepted": v.accepted, "reason": v.reason, "detail": report.rejection.detail if report.rejection else "",
        "manifest_hash": v.manifest_hash.hex(), "base_loss": m.base_loss, "new_loss": m.new_loss, "gain": gain,
        "delta_l2": m.delta_l2, "base_l2": m.base_l2, "compression_error": m.compression_error,
        "same_environment": m.same_environment, "update_norms": m.update_norms, "segments": m.segments,
        "seconds": {k: round(s, 3) for k, s in m.seconds.items()},
        "verdict": {"base_loss": v.base_loss, "new_loss": v.new_loss, "compression_error_ppm": v.compression_error_ppm,
                    "segments": [{"index": s.index, "exact": s.exact, "l2_ppm": s.l2_ppm} for s in v.segments]},
    }


# --- blyan delta inspect -------------------------------------------------------------------------


@click.group()
def delta() -> None:
    """Compressed weight deltas."""


@delta.command("inspect")
@click.argument("bundle_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def delta_inspect(bundle_dir: Path, as_json: bool) -> None:
    """Blocks, compression method, sizes, ratio and norms of a bundle's delta."""
    from gpu.delta import compute_norms, decode_delta  # torch

    try:
        bundle = Bundle.load(bundle_dir)
        decoded = decode_delta(bundle.read_delta())
    except BlyanError as err:
        _fail(str(err))
    m = bundle.manifest
    l2, linf = compute_norms(decoded)
    out = {
        "manifest_hash": bundle.manifest_hash.hex(), "blocks": [b.name for b in m.blocks],
        "method": m.delta.method, "raw_bytes": m.delta.raw_bytes, "compressed_bytes": m.delta.compressed_bytes,
        "ratio": m.delta.raw_bytes / max(1, m.delta.compressed_bytes), "declared_error": m.delta.error_ppm / 1e6,
        "l2": l2, "linf": linf, "tensors": {k: list(v.shape) for k, v in sorted(decoded.items())},
        "nonzero": sum(int((v != 0).sum()) for v in decoded.values()),
        "elements": sum(v.numel() for v in decoded.values()),
    }
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(f"{', '.join(out['blocks'])}: {out['method']}, {out['raw_bytes']} -> {out['compressed_bytes']} "
                   f"bytes ({out['ratio']:.1f}x), l2 {l2:.4g}, linf {linf:.4g}, "
                   f"{out['nonzero']}/{out['elements']} values non-zero")


# --- blyan delta submit | list | status, blyan pol votes | round ----------------------------------


@delta.command("submit")
@click.argument("bundle_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@rpc_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (the claim hash under \"claim\").")
def delta_submit(client: RPCClient, data_dir: Path | None, bundle_dir: Path, as_json: bool) -> None:
    """Submit a bundle through the contributor's node: commit now, reveal once the commitment is final."""
    result = client.call("blyan_submitDelta", {"bundle": str(Path(bundle_dir).resolve())})
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"claim {result['claim']}: {result['status']} (round {result['round']}, "
                   f"{', '.join(result['blocks'])}); follow it with `blyan delta status {result['claim'][:16]}...`")


@delta.command("list")
@rpc_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def delta_list(client: RPCClient, data_dir: Path | None, as_json: bool) -> None:
    """Claims on the parameter chain, newest first, and this node's submissions."""
    claims = client.call("blyan_listClaims")
    if as_json:
        click.echo(json.dumps(claims, indent=2))
        return
    if not claims:
        click.echo("no claims")
    for c in claims:
        losses = ""
        if c.get("base_loss") and c.get("new_loss"):
            losses = f" loss {c['base_loss']:.4f} -> {c['new_loss']:.4f}"
        blocks = ", ".join(b["name"] if isinstance(b, dict) else b for b in c.get("blocks", []))
        reason = f" ({c['reason']})" if c.get("reason") else ""
        click.echo(f"{c['claim'][:16]}  {c['status']:<10} round {c['round']:<4} {blocks}{losses}{reason}")


@delta.command("status")
@click.argument("claim")
@rpc_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def delta_status(client: RPCClient, data_dir: Path | None, claim: str, as_json: bool) -> None:
    """Where one claim stands: committed, revealed, voting, certified, accepted or rejected with reasons."""
    result = client.call("blyan_getClaim", {"claim": _full_claim(client, claim)})
    if result is None:
        _fail(f"no claim {claim} on this node's chain nor among its submissions")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"claim {result['claim']}: {result['status']}")
    for key in ("round", "commit_height", "reveal_height", "decided_height", "applied_height", "base_loss",
                "new_loss", "reason"):
        if result.get(key) not in (None, "", 0):
            click.echo(f"  {key.replace('_', ' ')}: {result[key]}")
    if "pool" in result:
        p = result["pool"]
        click.echo(f"  votes in the pool: {p['votes']} (accepting power {p['accepting_power']}, rejecting "
                   f"{p['rejecting_power']}, of {p['total_power']})")


def _full_claim(client: RPCClient, claim: str) -> str:
    """A claim hash, or a unique prefix of one the node knows."""
    claim = claim.lower().rstrip(".")
    if len(claim) == 64:
        return claim
    matches = [c["claim"] for c in client.call("blyan_listClaims") if c["claim"].startswith(claim)]
    if len(matches) != 1:
        _fail(f"{claim!r} names {len(matches)} claims: give more of the hash")
    return matches[0]


@pol.command("votes")
@click.argument("claim")
@rpc_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def pol_votes(client: RPCClient, data_dir: Path | None, claim: str, as_json: bool) -> None:
    """The validators' PoL votes on a claim, with what each measured."""
    result = client.call("blyan_getPolVotes", {"claim": _full_claim(client, claim)})
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"claim {result['claim'][:16]}: {result['status']}, votes from the {result['source']}")
    for v in result["votes"]:
        verdict = "accept" if v["accepted"] else f"reject ({v['reason']})"
        segments = ", ".join(f"#{s['index']}{' exact' if s['exact'] else ''}" for s in v["segments"])
        click.echo(f"  {v['validator']} power {v['power']}: {verdict}, loss {v['base_loss']:.4f} -> "
                   f"{v['new_loss']:.4f}, segments {segments or 'none'}")


@pol.command("round")
@rpc_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def pol_round(client: RPCClient, data_dir: Path | None, as_json: bool) -> None:
    """The current learning round and this node's PoL service."""
    r = client.call("blyan_getRound")
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    click.echo(f"round {r['round']} (height {r['height']}, closes at {r['closes_at']}); "
               f"{len(r['certified'])} certified claim(s) wait for the close")
    if "pol" in r:
        p = r["pol"]
        click.echo(f"  PoL: validator {p['validator']}, queue {p['queue']}/{p['queue_capacity']}, verified "
                   f"{p['verified']}, refused (queue full) {p['refused_queue_full']}, last {p['last_seconds']} s")
