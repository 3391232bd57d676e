"""Benchmark rows of learning rounds on the network (`chain/rounds.py`, `node/pol/service.py`,
`node/experts/materialise.py`):

- `rounds.apply.serve`: applying a finalized delta to a block and serving it (the node's
  `Materialiser.materialise` + `LocalExperts.serve`), against a plain torch `base + delta` of the
  same decoded tensors plus one SHA-256 pass over the result's canonical bytes.
- `rounds.submit.head`: on four daemons (`blyan devnet` on 127.0.0.1), the time from
  `blyan_submitDelta` to the claim being applied on every node, against the verifier's own
  compute for that bundle (`verify_bundle` in this process, same machine, same run).

    python scripts/bench_rounds.py [--quick]   # the rows alone, as JSON
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import ROOT, Row, SectionRun, fmt_time, section

DEVNET = ROOT / "genesis" / "prebuilt" / "devnet"
BLOCK = "layer0.expert0"
APPLY_GOAL = 1.3
SUBMIT_GOAL = 1.5
ROUNDS_TITLE = "Learning rounds: applying and serving a delta, submission to the head on four daemons"


def _devnet_block() -> tuple[Any, bytes, Any]:
    """The record and blob of BLOCK in the shipped devnet genesis, and the model spec."""
    from genesis.build import get_spec, load_artifact, make_records

    artifact = load_artifact(DEVNET)
    records, _ = make_records(artifact)
    record = next(r for r in records if r.name == BLOCK)
    return record, artifact.blocks[BLOCK], get_spec(artifact.manifest)


def measure_apply(repeat: int) -> Row:
    import torch

    from chain import codec
    from chain.blobs import BlobStore
    from chain.payloads import BlockChange, DeltaClaim
    from chain.records import AcceptedDelta, ExpertState
    from chain.tensors import DEFAULT_SUBTILE_SIZE
    from gpu.delta import CompressionConfig, apply_delta, compress_delta, decode_delta
    from gpu.tiles import compute_tensor_root
    from gpu.weights import decode_block, encode_block
    from node.experts.materialise import Materialiser
    from node.experts.weights import LocalExperts, StaticModelView

    record, blob, spec = _devnet_block()
    base = {f"{BLOCK}/{k}": v for k, v in decode_block(blob).items()}
    gen = torch.Generator().manual_seed(5)
    true_delta = {k: torch.randn(v.shape, generator=gen) * 1e-3 for k, v in base.items()}
    compressed = compress_delta(true_delta, CompressionConfig.parse("int8"))
    shapes = {k: tuple(v.shape) for k, v in true_delta.items()}
    decoded = decode_delta(compressed.blob, shapes)
    result = {k.split("/", 1)[1]: v for k, v in apply_delta(base, decoded).items()}
    root = compute_tensor_root(encode_block(result), DEFAULT_SUBTILE_SIZE)
    claim = DeltaClaim(codec.sha256(b"bench"), (BlockChange(BLOCK, codec.hash_of(record), root),), 1,
                       codec.sha256(compressed.blob), len(compressed.blob),
                       compute_tensor_root(compressed.blob, DEFAULT_SUBTILE_SIZE), compressed.raw_bytes,
                       compressed.method, 250_000, bytes(20))
    claim_hash = codec.hash_of(claim)
    state = ExpertState(record, claim_hash, (claim_hash,), "0.1.1", 1)
    accepted = AcceptedDelta(claim, 1, 2_000_000, 1_900_000)
    ours, baseline = [], []
    for i in range(repeat + 1):  # the first of each is a warm-up (torch's lazy initialisation)
        with tempfile.TemporaryDirectory(prefix="blyan-bench-") as d:
            blobs = BlobStore(Path(d) / "blobs")
            blobs.put(blob)
            blobs.put(compressed.blob)
            heads = Materialiser(blobs, Path(d) / "heads.json")
            view = StaticModelView(spec, {BLOCK: state}, heads=heads, accepted={claim_hash: accepted})
            local = LocalExperts(view, blobs)
            started = time.perf_counter()
            heads.materialise(BLOCK, state, view.get_accepted)
            local.serve((0, 0))
            if i:
                ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        weights = decode_block(blob)
        delta = decode_delta(compressed.blob, shapes)
        plain = {k: weights[k] + delta[f"{BLOCK}/{k}"] for k in weights}
        hashlib.sha256(encode_block(plain)).digest()
        if i:
            baseline.append(time.perf_counter() - started)
    o, b = statistics.median(ours), statistics.median(baseline)
    return Row(
        name="rounds.apply.serve",
        what=f"apply a finalized int8 delta to {BLOCK} of the devnet model ({record.size:,} bytes) and serve it: "
             "read and verify the base blob, decode the delta, base + delta, canonical encoding, Merkle root "
             "checked against the claim, blob stored and indexed, expert loaded",
        ours=o, baseline=b, unit="s", ours_text=fmt_time(o),
        baseline_text=fmt_time(b), baseline_what="torch base + decode(delta) and one SHA-256 of the result",
        ratio=o / b, better="lower", goal=APPLY_GOAL, extra={"repeat": float(repeat)},
    )


def measure_submit_to_head(tmp: Path) -> tuple[Row, list[str]]:
    """Four daemons; node 1 trains and submits; the time until all four report it accepted."""
    import subprocess
    import sys

    from node.api.client import RPCClient
    from node.app.devnet import find_free_ports, prepare_devnet, start_nodes, stop_nodes
    from node.cli.connect import find_rpc
    from node.cli.learning import load_materials
    from node.pol.bundle import Bundle
    from node.pol.verifier import verify_bundle

    def client(d: Path) -> RPCClient:
        url, cookie = find_rpc(d)
        return RPCClient(url, cookie)

    def poll(what: str, fn: Any, limit: float) -> Any:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                value = fn()
            except Exception:  # noqa: BLE001 - a node still starting
                value = None
            if value:
                return value
            time.sleep(0.1)
        raise RuntimeError(f"timed out: {what}")

    dirs = prepare_devnet(tmp, 4, find_free_ports(4), find_free_ports(4))
    procs = start_nodes(dirs)
    try:
        for d in dirs:
            poll(f"{d.name} up", lambda d=d: client(d).call("blyan_status")["peers"] >= 1, 120)
        bundle = tmp / "bundle"
        trained = subprocess.run([sys.executable, "-m", "node", "train", "--data-dir", str(dirs[1]), "--out",
                                  str(bundle), "--json"], capture_output=True, text=True, check=False)
        if trained.returncode:
            raise RuntimeError(trained.stderr[-2000:])
        materials = load_materials(dirs[2])  # the chain as the validators verify it: before the delta
        started = time.monotonic()
        claim = client(dirs[1]).call("blyan_submitDelta", {"bundle": str(bundle)})["claim"]
        for d in dirs:
            poll(f"accepted on {d.name}", lambda d=d: (client(d).call("blyan_getClaim", {"claim": claim}) or {})
                 .get("status") in ("accepted", "rejected"), 600)
        seconds = time.monotonic() - started
        final = client(dirs[0]).call("blyan_getClaim", {"claim": claim})
    finally:
        stop_nodes(procs)
    from chain.crypto import load_key

    key = load_key(dirs[2] / "node.key")
    started = time.perf_counter()
    report = verify_bundle(materials, Bundle.load(bundle), key.public_key)
    verify = time.perf_counter() - started
    row = Row(
        name="rounds.submit.head",
        what="4 daemons on 127.0.0.1: blyan_submitDelta of the default 320-step bundle on node 1 until every "
             f"node reports the claim {final['status']} (commit, reveal, four validators fetch and verify "
             "concurrently on 2 cores, votes, certificate, the round's close)",
        ours=seconds, baseline=verify, unit="s", ours_text=fmt_time(seconds),
        baseline_text=f"{fmt_time(verify)} ({'accepted' if report.accepted else report.verdict.reason})",
        baseline_what="verify_bundle of that bundle in one process (the verifier's own compute)",
        ratio=seconds / verify, better="lower", goal=SUBMIT_GOAL,
    )
    notes = [f"`rounds.submit.head`: claim {final['status']}, loss {final['base_loss']} -> {final['new_loss']}; "
             "the four validators verify at once on two cores, so each verification takes about twice its "
             "one-process time; three of the four votes decide."]
    return row, notes


@section("rounds", ROUNDS_TITLE)
def bench_rounds(run: SectionRun) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run.row(measure_apply(run.pick(7, 2)))
    finally:
        torch.set_num_threads(threads)
    if run.cfg.quick:
        run.note("`rounds.submit.head` runs four daemons for about two minutes: not in quick mode.")
        return
    with run.tempdir() as d:
        row, notes = measure_submit_to_head(Path(d))
    run.row(row)
    for text in notes:
        run.note(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = [measure_apply(2 if args.quick else 7)]
    print(json.dumps([r.__dict__ for r in rows], indent=2, default=str))


if __name__ == "__main__":
    main()
