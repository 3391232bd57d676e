"""The `blyan` command line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from chain import crypto
from chain.errors import BlyanError
from chain.types import CHAIN_IDS, CHAIN_NAMES

DATA_DIR_HELP = "Node data directory (keys, config, chains, blobs)."


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.group()
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def main(log_level: str) -> None:
    """Blyan: a peer-to-peer network that grows a Mixture-of-Experts model in the open."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--network", required=True, help="Network id, e.g. devnet.")
@click.option("--data-dir", required=True, type=click.Path(path_type=Path), help=DATA_DIR_HELP)
@click.option("--genesis", "genesis_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Genesis pact file (default: the network's built-in genesis).")
@click.option("--dev-validator", type=int, default=None,
              help="INSECURE: use devnet validator key N (public, for local dev networks only).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def init(network: str, data_dir: Path, genesis_file: Path | None, dev_validator: int | None, as_json: bool) -> None:
    """Create a data dir: node key, config, genesis and the chains at height 0."""
    from node.datadir import init_data_dir

    key = None
    if dev_validator is not None:
        from genesis.devnet import dev_validator_key

        key = dev_validator_key(dev_validator, network)
    try:
        result = init_data_dir(data_dir, network, genesis_file, key)
    except (BlyanError, OSError) as err:
        _fail(str(err))
    out = {
        "data_dir": str(result.data_dir),
        "network": result.network,
        "genesis_hash": result.genesis_hash.hex(),
        "address": crypto.format_address(result.address),
        "created_key": result.created_key,
        "created_chains": result.created_chains,
    }
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    verb = "initialised" if result.created_chains else "already initialised"
    click.echo(f"{verb} {result.data_dir} for network {result.network}")
    click.echo(f"  genesis  {out['genesis_hash']}")
    click.echo(f"  address  {out['address']}" + ("  (new key)" if result.created_key else "  (existing key kept)"))


@main.group()
def chain() -> None:
    """Inspect the local chains."""


@chain.command("show")
@click.option("--data-dir", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help=DATA_DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def chain_show(data_dir: Path, as_json: bool) -> None:
    """Height, head hash and state root of each chain."""
    from node.datadir import open_store

    try:
        config, store = open_store(data_dir)
    except (BlyanError, OSError) as err:
        _fail(str(err))
    try:
        chains = {}
        for chain_id in CHAIN_IDS:
            state = store.state(chain_id)
            chains[CHAIN_NAMES[chain_id]] = {
                "height": state.height,
                "head": state.head.hex(),
                "state_root": state.root.hex(),
                "time_ms": state.time_ms,
            }
        out = {"network": config.network, "genesis_hash": store.genesis_hash.hex(), "chains": chains}
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"network {out['network']}  genesis {out['genesis_hash'][:16]}")
    for name, c in chains.items():
        click.echo(f"  {name:<10} height {c['height']:>8}  head {c['head'][:16]}  state {c['state_root'][:16]}")


if __name__ == "__main__":
    main()
