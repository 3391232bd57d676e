"""The `blyan` command line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click
import trio

from chain import crypto
from chain.errors import BlyanError
from chain.types import CHAIN_IDS, CHAIN_NAMES
from genesis.corpus import get_stdlib_root
from genesis.devnet import dev_validator_key
from node.app.datadir import init_data_dir, open_store
from node.cli.attest import register as register_attest_commands
from node.cli.data import register as register_data_commands
from node.cli.learning import register as register_learning_commands
from node.cli.lineage import register as register_lineage_commands
from node.cli.remote import register as register_remote_commands
from node.sim.scenario import SimConfig
from node.sim.simulation import run_sim

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
    key = None
    if dev_validator is not None:
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


@main.group()
def node() -> None:
    """Run the node daemon."""


@node.command("run")
@click.option("--data-dir", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help=DATA_DIR_HELP)
def node_run(data_dir: Path) -> None:
    """Run the daemon until SIGINT or SIGTERM: chains, libp2p, consensus, RPC."""
    from node.app.daemon import run_until_signal  # torch and libp2p: only the daemon needs them

    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    try:
        trio.run(run_until_signal, data_dir)
    except BlyanError as err:
        _fail(str(err))


@main.command()
@click.option("--nodes", default=4, show_default=True, help="Validators (one daemon process each).")
@click.option("--data-dir", required=True, type=click.Path(path_type=Path), help="Root of the nodes' data dirs.")
@click.option("--base-port", default=30400, show_default=True, help="libp2p port of node 0 (node i: +i).")
@click.option("--rpc-base-port", default=18600, show_default=True, help="RPC port of node 0 (node i: +i).")
@click.option("--layout", default="ring", show_default=True, type=click.Choice(["ring", "ranges"]),
              help="Experts: ring (node i serves experts {i, i+1} of every layer) or ranges (each node every "
                   "expert of a range of layers: pipeline stages); two replicas each.")
@click.option("--preset", type=click.Choice(["devnet", "bench"]), default="devnet", show_default=True,
              help="The model: the shipped trained one, or bench (larger random experts, speed only; "
                   "use a fresh --data-dir).")
def devnet(nodes: int, data_dir: Path, base_port: int, rpc_base_port: int, layout: str,
           preset: str) -> None:
    """Start a local devnet: N validators on 127.0.0.1 with a fresh shared genesis (dev keys).

    Ctrl-C, SIGINT or SIGTERM stops every node cleanly; if this process dies, its nodes stop too."""
    from node.app.devnet import run_devnet  # libp2p (peer ids): only a devnet needs it

    try:
        code = run_devnet(data_dir, nodes, base_port, rpc_base_port, click.echo, layout=layout, preset=preset)
    except (BlyanError, OSError) as err:
        _fail(str(err))
    sys.exit(code)


@main.group()
def genesis() -> None:
    """Build the genesis model."""


@genesis.command("build")
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Directory for manifest.json, tokenizer.json and the block blobs.")
@click.option("--steps", type=int, default=None, help="Training steps [default: the devnet preset's].")
@click.option("--minutes", type=float, default=None,
              help="Size the run to about this many minutes here (measured); the manifest records the steps.")
@click.option("--seed", type=int, default=None, help="Seed of the initial weights and the batch order.")
@click.option("--threads", type=int, default=None, help="torch threads (results may depend on it).")
@click.option("--corpus-bytes", type=int, default=None, help="Cap on the stdlib corpus, bytes.")
@click.option("--stdlib", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="CPython stdlib root [default: this interpreter's].")
def genesis_build(out: Path, steps: int | None, minutes: float | None, seed: int | None, threads: int | None,
                  corpus_bytes: int | None, stdlib: Path | None) -> None:
    """Train the genesis MoE reproducibly on the stdlib sources and write its artifact."""
    from genesis.build import (  # torch and tokenizers: only a build needs them
        build_artifact,
        compute_steps_for_minutes,
        make_build_config,
        save_artifact,
    )

    if steps is not None and minutes is not None:
        _fail("give --steps or --minutes, not both")
    try:
        cfg = make_build_config(steps=steps, seed=seed, threads=threads, corpus_bytes=corpus_bytes)
        if minutes is not None:
            cfg = make_build_config(compute_steps_for_minutes(cfg, minutes), seed, threads, corpus_bytes)
            click.echo(f"{minutes} minutes here: {cfg.train.steps} steps")
        artifact = build_artifact(cfg, stdlib or get_stdlib_root(), click.echo)
        save_artifact(artifact, out)
    except (BlyanError, OSError, ValueError) as err:
        _fail(str(err))
    r = artifact.manifest["results"]
    click.echo(f"wrote {out}: {r['parameters']} parameters, {r['steps']} steps in {r['train_seconds']} s, "
               f"validation {r['validation_loss']} nats/token (unigram {r['unigram_validation_loss']})")


def _parse_seeds(text: str) -> range:
    try:
        lo, _, hi = text.partition("-")
        first, last = int(lo), int(hi or lo)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not A-B") from None
    if last < first:
        raise click.BadParameter("the range is empty")
    return range(first, last + 1)


@main.command()
@click.option("--nodes", default=4, show_default=True, help="Nodes in the simulated network.")
@click.option("--validators", default=None, type=int, help="Validators among them [default: all].")
@click.option("--byzantine", default=0, show_default=True, help="Misbehaving validators.")
@click.option("--faults", default="", help="Comma list of: crash,partition,loss,reorder,duplicate,skew.")
@click.option("--seed", default=1, show_default=True, help="The run is a pure function of it.")
@click.option("--seeds", default=None, help="Sweep the seeds A-B instead of one run.")
@click.option("--duration", default=60.0, show_default=True, help="Simulated seconds.")
@click.option("--tx-rate", default=2.0, show_default=True, help="Client transactions per simulated second.")
@click.option("--deltas", default=0, show_default=True,
              help="Learning: honest contributors, each training and submitting one real delta.")
@click.option("--forgeries", default="", help="Learning: byzantine contributors, comma list of "
              "validation_trained,wrong_result,copy_reveal,resign_copy.")
@click.option("--byzantine-kinds", default=None, help="What the byzantine validators do (comma list; "
              "false_pol_votes signs the opposite of its verifier's verdict) [default: the consensus ones].")
@click.option("--peers", default=0, show_default=True,
              help="Connections per node in a peer graph (0: every node connected to every other).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def sim(nodes: int, validators: int | None, byzantine: int, faults: str, seed: int, seeds: str | None,
        duration: float, tx_rate: float, deltas: int, forgeries: str, byzantine_kinds: str | None,
        peers: int, as_json: bool) -> None:
    """Run the deterministic network simulation and check its invariants."""
    kinds = tuple(k for k in faults.split(",") if k)
    extra: dict = {"deltas": deltas, "forgeries": tuple(k for k in forgeries.split(",") if k),
                   "peers_per_node": peers}
    if byzantine_kinds:
        extra["byzantine_kinds"] = tuple(k for k in byzantine_kinds.split(",") if k)
    try:
        configs = [
            SimConfig(seed=s, nodes=nodes, validators=validators or nodes, byzantine=byzantine, faults=kinds,
                      duration=duration, tx_rate=tx_rate, liveness_bound=min(25.0, duration / 2), **extra)
            for s in (_parse_seeds(seeds) if seeds else [seed])
        ]
    except ValueError as err:
        _fail(str(err))
    reports = []
    for cfg in configs:
        report = run_sim(cfg)
        reports.append(report)
        if not as_json and len(configs) > 1:
            mark = "ok  " if report["ok"] else "FAIL"
            click.echo(f"{mark} seed {cfg.seed:>6}  heights {report['heights']}  wall {report['wall_seconds']:.2f}s")
    failed = [r for r in reports if not r["ok"]]
    if as_json:
        sweep = {"runs": len(reports), "failed": [r["seed"] for r in failed], "reports": reports}
        click.echo(json.dumps(reports[0] if len(reports) == 1 else sweep, indent=2))
    else:
        if len(reports) == 1:
            r = reports[0]
            click.echo(f"seed {r['seed']}: {'all invariants hold' if r['ok'] else 'VIOLATION'}  "
                       f"heights {r['heights']}  digest {r['digest'][:16]}  wall {r['wall_seconds']:.2f}s")
        else:
            click.echo(f"{len(reports) - len(failed)} of {len(reports)} seeds green")
    for r in failed[:10]:
        first = r["violations"][0] if r["violations"] else {"invariant": "?", "detail": "?"}
        click.echo(f"seed {r['seed']}: {first['invariant']} violated: {first['detail']}", err=True)
        click.echo(f"  replay: {r['replay']}", err=True)
    sys.exit(1 if failed else 0)


register_remote_commands(main)  # the verbs that talk to a node over RPC
register_learning_commands(main)  # train, pol verify, delta inspect
register_attest_commands(main)  # attest export, attest verify
register_lineage_commands(main)  # lineage --expert | --dataset | --claim
register_data_commands(main)  # dataset cid, submit, status, list


if __name__ == "__main__":
    main()
