"""`blyan attest export` and `blyan attest verify`: an accepted delta's attestation as one JSON
file that anyone checks offline (`chain.attest`, `chain.attest_check`).

Export asks a node: over its RPC (`--rpc URL --cookie FILE`, or `--data-dir DIR` while its
daemon runs and holds the LevelDB lock), or from the data dir's store when no node runs there.
Verify needs nothing but the file: it exits 0 when the attestation holds, 1 with each problem.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from chain.attest import build_attestation
from chain.attest_check import verify_attestation
from chain.errors import BlyanError
from node.app.config import NODE_INFO_FILE
from node.app.datadir import open_store
from node.cli.remote import make_client


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _hash(ctx: click.Context, param: click.Parameter, value: str | None) -> bytes | None:
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise click.BadParameter("not hex") from None
    if len(raw) != 32:
        raise click.BadParameter("a hash has 32 bytes (64 hex digits)")
    return raw


def register(main: click.Group) -> None:
    main.add_command(attest)


@click.group()
def attest() -> None:
    """Attestations of accepted deltas: export one from a node, verify one offline."""


@attest.command("export")
@click.option("--claim", required=True, callback=_hash, help="Claim hash of the accepted delta (hex).")
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False), help="File to write.")
@click.option("--rpc", "rpc_url", help="RPC URL of a node, e.g. http://127.0.0.1:8645 (with --cookie).")
@click.option("--cookie", type=click.Path(path_type=Path, dir_okay=False), help="RPC cookie file.")
@click.option("--data-dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="A node's data dir: its RPC while it runs, else its chains directly.")
def attest_export(claim: bytes, out: Path, rpc_url: str | None, cookie: Path | None, data_dir: Path | None) -> None:
    """Write the attestation of an accepted claim to FILE."""
    try:
        doc = fetch_attestation(claim, rpc_url, cookie, data_dir)
        out.write_text(json.dumps(doc, indent=2) + "\n")
    except (BlyanError, OSError) as err:
        _fail(str(err))
    problems = verify_attestation(doc)
    if problems:  # the node sent something that does not hold: say so, but keep the file to inspect
        _fail(f"wrote {out}, but it does not verify: " + "; ".join(problems[:5]))
    m = doc["metrics"]
    click.echo(f"wrote {out}: claim {doc['claim']['hash'][:16]}, validation loss "
               f"{m['baseline']['validation_loss']:.4f} -> {m['new']['validation_loss']:.4f}, "
               f"{len(doc['certificate']['votes'])} votes, parameter block {doc['finality']['height']}")


def fetch_attestation(claim: bytes, rpc_url: str | None, cookie: Path | None, data_dir: Path | None) -> Any:
    if rpc_url is None and data_dir is None:
        raise click.UsageError("give --rpc URL --cookie FILE, or --data-dir DIR")
    if rpc_url is not None or (data_dir / NODE_INFO_FILE).exists():
        return make_client(data_dir, rpc_url, cookie).call("blyan_getAttestation", {"claim": claim.hex()})
    _, store = open_store(data_dir)
    try:
        return build_attestation(store, claim)
    finally:
        store.close()


@attest.command("verify")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--validator-set", "trusted", callback=_hash,
              help="Hash of the validator set you trust (hex): the certifying set must be it.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def attest_verify(file: Path, trusted: bytes | None, as_json: bool) -> None:
    """Check an attestation offline; exit 0 when it holds, 1 with each problem."""
    try:
        doc = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        _fail(f"{file} is not a JSON file: {err}")
    problems = verify_attestation(doc, trusted)
    if as_json:
        claim = doc.get("claim") if isinstance(doc, dict) else None
        click.echo(json.dumps({"ok": not problems, "problems": problems,
                               "claim": claim.get("hash") if isinstance(claim, dict) else None}, indent=2))
    elif problems:
        for problem in problems:
            click.echo(problem, err=True)
        click.echo(f"{file}: {len(problems)} problem(s); the attestation does not hold", err=True)
    else:
        m, f = doc["metrics"], doc["finality"]
        click.echo(f"{file}: holds. claim {doc['claim']['hash'][:16]} by {doc['contributor']['address']}: "
                   f"validation loss {m['baseline']['validation_loss']:.4f} -> {m['new']['validation_loss']:.4f} "
                   f"({m['delta']['validation_loss_relative']:+.2%}), {len(doc['certificate']['votes'])} votes, "
                   f"final at {f['chain']} height {f['height']}")
    sys.exit(1 if problems else 0)
