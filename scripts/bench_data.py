"""Benchmark rows of data quality (`chain/unixfs.py`, `node/data/l0/`):

- `data.cid`: the dataset CID of 10 MB (UnixFS DAG of raw leaves, as `ipfs add --raw-leaves`),
  against one SHA-256 over the same bytes.
- `data.audit.l0`: the L0 audit of 10 MB of CPython stdlib sources read as text (parse, personal
  data, toxicity sample, duplicates, MinHash and the near-duplicate query), against reading the
  file and hashing it. The roadmap asks for sub-second pre-validation of typical uploads; a 1 MB
  figure is noted too.
- `data.neardup.scale`: a near-duplicate query against 10,000 held datasets, against the same
  query against 1,000 (sublinear growth: the LSH looks at buckets, not at every dataset).

    python scripts/bench_data.py [--quick]   # the rows alone, as JSON
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sysconfig
import time
from pathlib import Path

from benchlib import Row, SectionRun, fmt_time, section

AUDIT_GOAL = 5.0
CID_GOAL = 2.0
SCALE_GOAL = 3.0
"""10x the datasets may cost at most 3x the query time."""
DATA_TITLE = "Data quality: dataset CIDs, the L0 audit, near-duplicate queries at scale"


def _corpus(size: int) -> bytes:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = bytearray()
    for path in sorted(root.rglob("*.py")):
        if "test" in path.parts or "tests" in path.parts:
            continue
        out += path.read_bytes()
        if len(out) >= size:
            break
    return bytes(out[:size])


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure_cid(data: bytes, repeat: int) -> Row:
    from chain.unixfs import compute_dataset_cid

    o = _best(lambda: compute_dataset_cid(data), repeat)
    b = _best(lambda: hashlib.sha256(data).digest(), repeat)
    return Row(name="data.cid", what=f"dataset CID of {len(data) / 1e6:.0f} MB (raw leaves, dag-pb nodes)",
               ours=o, baseline=b, unit="s", ours_text=fmt_time(o), baseline_text=fmt_time(b),
               baseline_what="one hashlib SHA-256 over the bytes", ratio=o / b, better="lower", goal=CID_GOAL)


def measure_audit(data: bytes, path: Path, repeat: int) -> tuple[Row, str]:
    from chain.unixfs import compute_dataset_cid
    from genesis.params import devnet_params
    from node.data.l0.audit import run_l0_audit
    from node.data.l0.minhash import NearDuplicateIndex

    params = devnet_params().dataset.audit
    cid = compute_dataset_cid(data)
    index = NearDuplicateIndex(params)
    run_l0_audit(data[:100_000], cid=cid, format="text", anchor_height=0, params=params, index=index)  # warm
    o = _best(lambda: run_l0_audit(data, cid=cid, format="text", anchor_height=0, params=params, index=index),
              repeat)
    path.write_bytes(data)
    b = _best(lambda: hashlib.sha256(path.read_bytes()).digest(), repeat)
    small = data[:1_000_000]
    s = _best(lambda: run_l0_audit(small, cid=cid, format="text", anchor_height=0, params=params, index=index),
              repeat)
    row = Row(name="data.audit.l0", what=f"L0 audit of {len(data) / 1e6:.0f} MB of stdlib sources as text",
              ours=o, baseline=b, unit="s", ours_text=fmt_time(o), baseline_text=fmt_time(b),
              baseline_what="read the file and SHA-256 it", ratio=o / b, better="lower", goal=AUDIT_GOAL,
              extra={"one_mb_s": s})
    return row, f"`data.audit.l0`: 1 MB of the same sources audits in {fmt_time(s)}."


def measure_scale(repeat: int) -> Row:
    from genesis.params import devnet_params
    from node.data.l0.minhash import NearDuplicateIndex

    params = devnet_params().dataset.audit
    rng = random.Random(3)
    sigs = [tuple(rng.randrange(1 << 32) for _ in range(params.minhash_perm)) for _ in range(10_000)]
    probe = list(sigs[17])
    for i in range(0, len(probe), 10):  # 90 % equal: a near duplicate of dataset 17
        probe[i] = rng.randrange(1 << 32)
    times = {}
    for n in (1_000, 10_000):
        index = NearDuplicateIndex(params)
        for i, sig in enumerate(sigs[:n]):
            index.add(f"cid-{i}", sig)
        assert index.query(probe)[0].cid == "cid-17"
        times[n] = statistics.median(_best(lambda index=index: index.query(probe), 5) for _ in range(repeat))
    o, b = times[10_000], times[1_000]
    return Row(name="data.neardup.scale", what="near-duplicate query against 10,000 held datasets (MinHash LSH)",
               ours=o, baseline=b, unit="s", ours_text=fmt_time(o), baseline_text=fmt_time(b),
               baseline_what="the same query against 1,000", ratio=o / b, better="lower", goal=SCALE_GOAL)


@section("data", DATA_TITLE)
def bench_data(run: SectionRun) -> None:
    size = run.pick(10_000_000, 2_000_000)
    data = _corpus(size)
    run.row(measure_cid(data, run.pick(5, 2)))
    with run.tempdir() as d:
        row, note = measure_audit(data, Path(d) / "dataset.txt", run.pick(3, 1))
    run.row(row)
    run.note(note)
    run.row(measure_scale(run.pick(3, 1)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    import tempfile

    data = _corpus(2_000_000 if args.quick else 10_000_000)
    with tempfile.TemporaryDirectory() as d:
        audit, note = measure_audit(data, Path(d) / "dataset.txt", 1)
    rows = [measure_cid(data, 2), audit, measure_scale(1)]
    print(json.dumps([r.__dict__ for r in rows], indent=2, default=str))
    print(note)


if __name__ == "__main__":
    main()
