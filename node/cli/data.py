"""CLI verbs of dataset contributors: `blyan dataset cid|redact|submit|status|list`.

`submit` sends the file to the contributor's node in chunks over its RPC, and the node computes
the CID, runs the L0 audit, does the proof of work and submits; the command shows each stage's
progress and ends when the submission is sent (or refused, with the reason). `status` follows the
dataset on the chain: pending -> audited -> voted -> approved with its tier, or rejected.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from chain.errors import BlyanError
from chain.unixfs import compute_dataset_cid
from node.api.client import RPCClient, RPCError
from node.cli.remote import rpc_options

CHUNK_BYTES = 512 * 1024
POLL_S = 0.2
MAX_WAIT_S = 3_600.0


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def register(main: click.Group) -> None:
    main.add_command(dataset)


@click.group()
def dataset() -> None:
    """Datasets: their CIDs, submission from a file, their lifecycle on the dataset chain."""


@dataset.command("cid")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
def dataset_cid(file: Path) -> None:
    """The CID of FILE as `ipfs add --cid-version 1 --raw-leaves` gives it."""
    click.echo(compute_dataset_cid(file.read_bytes()))


@dataset.command("redact")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--format", "fmt", required=True, help="The format the file will be submitted as.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Where to write the redacted copy (never over FILE).")
def dataset_redact(file: Path, fmt: str, out: Path) -> None:
    """A copy of FILE with each personal-data finding the L0 audit counts replaced by
    [REDACTED:<kind>]; prints the counts by kind (never the values)."""
    from node.data.l0.pii import find_pii, redact

    if out.resolve() == file.resolve():
        _fail("--out must be another file than FILE")
    data = file.read_bytes()
    try:
        redacted = redact(data, fmt)
    except ValueError as err:
        _fail(str(err))
    counts: dict[str, int] = {}
    for f in find_pii(data.decode("utf-8", errors="surrogateescape")):
        counts[f.kind] = counts.get(f.kind, 0) + 1
    out.write_bytes(redacted)
    found = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "nothing"
    click.echo(f"redacted {found}; wrote {out} ({len(redacted)} bytes, CID {compute_dataset_cid(redacted)})")


def _bar(label: str, fraction: float, width: int = 24) -> str:
    filled = int(round(fraction * width))
    return f"{label:<7} [{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f} %"


@dataset.command("submit")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--format", "fmt", required=True,
              help="text, markdown, jsonl, csv (with a header) or text/x-python.")
@click.option("--license", "license_", required=True, help="SPDX identifier, e.g. CC-BY-4.0.")
@rpc_options
@click.option("--json", "as_json", is_flag=True, help="Print the final job as JSON (no progress lines).")
def dataset_submit(client: RPCClient, data_dir: Path | None, file: Path, fmt: str, license_: str,
                   as_json: bool) -> None:
    """Submit FILE through the contributor's node: upload, L0 audit, proof of work, transaction."""
    data = file.read_bytes()
    show = (lambda line: None) if as_json else (lambda line: click.echo("\r" + line, nl=False, err=True))
    try:
        upload, offset = None, 0
        while True:  # an empty file still makes one call (the node refuses it with the reason)
            chunk = data[offset:offset + CHUNK_BYTES]
            reply = client.call("blyan_uploadDataset", {"upload": upload, "offset": offset,
                                                        "data": base64.b64encode(chunk).decode()})
            upload, offset = reply["upload"], reply["received"]
            show(_bar("upload", offset / max(1, len(data))))
            if offset >= len(data):
                break
        show("\n" if not as_json else "")
        job = client.call("blyan_submitDataset", {"upload": upload, "format": fmt, "license": license_})
        job = _follow(client, job, show)
    except RPCError as err:
        _fail(err.message)
    except BlyanError as err:
        _fail(str(err))
    if as_json:
        click.echo(json.dumps(job, indent=2))
    if job["stage"] == "refused":
        _fail(job["reason"])
    if not as_json:
        click.echo(f"submitted {job['cid']} as {job['submission']}; follow it with "
                   f"`blyan dataset status {job['cid']}`")


STAGES = ("queued", "audit", "work", "submit", "submitted")


def _between(old: str, new: str) -> tuple[str, ...]:
    """The stages a job went through strictly between two polls."""
    if old not in STAGES or new not in STAGES:
        return ()
    return STAGES[STAGES.index(old) + 1:STAGES.index(new)]


def _follow(client: RPCClient, job: dict[str, Any], show: Any) -> dict[str, Any]:
    """Poll the job until it is submitted or refused, one progress line per stage."""
    stage = job["stage"]
    deadline = time.monotonic() + MAX_WAIT_S
    while job["stage"] not in ("submitted", "refused"):
        if time.monotonic() > deadline:
            raise BlyanError(f"the node did not finish job {job['job']} within {MAX_WAIT_S:g} s")
        time.sleep(POLL_S)
        job = client.call("blyan_getDatasetJob", {"job": job["job"]}) or job
        if job["stage"] != stage:
            for done in ("audit", "work"):  # a stage may start and end between two polls
                if done in (stage, *_between(stage, job["stage"])):
                    show(_bar(done, 1.0) + "\n")
            stage = job["stage"]
        if stage in ("audit", "work"):
            show(_bar(stage, job["fraction"]))
    show("\n")
    return job


@dataset.command("status")
@click.argument("cid")
@rpc_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def dataset_status(client: RPCClient, data_dir: Path | None, cid: str, as_json: bool) -> None:
    """A dataset's lifecycle state, tier, L0 report and votes."""
    info = client.call("blyan_getDataset", {"cid": cid})
    if info is None:
        _fail(f"no dataset {cid} on the chain (a submission that is not final yet shows up once it is)")
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{info['cid']}: {info['status']}" + (f", tier {info['tier']}" if info["status"] == "approved" else ""))
    click.echo(f"  {info['size']} bytes, {info['format']}, {info['license']}, submitted at height "
               f"{info['submitted_height']}" + (f" by {info['contributor']}" if info["contributor"] else ""))
    report = info.get("report")
    if report:
        pii = ", ".join(f"{p['count']} {p['kind']}" for p in report["pii"]) or "none"
        near = ", ".join(f"{n['cid'][:16]}... {n['similarity_ppm'] / 1e4:.1f} %" for n in report["near_duplicates"])
        click.echo(f"  L0 {report['auditor']}: {report['records']} records, personal data: {pii}, toxic "
                   f"{report['toxicity_flagged']}/{report['toxicity_sampled']}, duplicates "
                   f"{report['duplicate_records']}, near-duplicates: {near or 'none'}")
    for a in info.get("audits", []):
        click.echo(f"  audit {a['validator']}: {'passed' if a['passed'] else 'FAILED (another report)'}")
    for v in info.get("tier_votes", []):
        click.echo(f"  vote  {v['validator']}: {v['tier']}")


@dataset.command("list")
@click.option("--status", type=click.Choice(["pending", "audited", "voted", "approved", "rejected"]))
@click.option("--limit", type=click.IntRange(1, 256), default=20, show_default=True, help="Newest first.")
@rpc_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def dataset_list(client: RPCClient, data_dir: Path | None, status: str | None, limit: int, as_json: bool) -> None:
    """The datasets on the dataset chain, newest first (genesis ones last)."""
    args: dict[str, Any] = {"limit": limit}
    if status:
        args["status"] = status
    rows = client.call("blyan_listDatasets", args)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['cid']}  {r['status']:<9} {r['tier']:<12} {r['size']:>10}  {r['format']:<14} "
                   f"height {r['submitted_height']}")
    click.echo(f"{len(rows)} shown (newest first; --limit for more)")
