"""`blyan lineage`: where an expert's weights, a dataset or a claim came from and went to
(`chain.lineage`): datasets -> training manifest -> delta claim -> block versions, with the
accounts behind them.

It asks a node over its RPC (`--rpc URL --cookie FILE`, or `--data-dir DIR` while its daemon runs
and holds the LevelDB lock), or reads the data dir's store when no node runs there. It prints a
tree, the graph as JSON (`--json`), or JSON-LD with W3C PROV-O terms and an inline context
(`--jsonld`), which any JSON-LD processor turns into RDF.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from chain.errors import BlyanError
from chain.lineage import lineage_of, to_json, to_jsonld
from chain.types import CHAIN_DATASET, CHAIN_PARAMETER
from node.app.config import NODE_INFO_FILE
from node.app.datadir import open_store
from node.cli.remote import make_client

INVERSE = {"used": "used by", "wasGeneratedBy": "generated", "wasDerivedFrom": "derived into",
           "wasAttributedTo": "attributed with", "wasAssociatedWith": "associated with"}
"""How an edge reads from its target's side (the tree walks both ways from the subject)."""


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def register(main: click.Group) -> None:
    main.add_command(lineage)


@click.command()
@click.option("--expert", help="Block name, e.g. layer0.expert1: its head and the versions before it.")
@click.option("--dataset", help="Dataset CID: who submitted it, its tier, the claims that used it.")
@click.option("--claim", help="Claim hash (hex): its manifest, datasets, bases and what it made.")
@click.option("--jsonld", "as_jsonld", is_flag=True, help="Print JSON-LD (W3C PROV-O, inline @context).")
@click.option("--json", "as_json", is_flag=True, help="Print the graph as plain JSON.")
@click.option("--rpc", "rpc_url", help="RPC URL of a node, e.g. http://127.0.0.1:8645 (with --cookie).")
@click.option("--cookie", type=click.Path(path_type=Path, dir_okay=False), help="RPC cookie file.")
@click.option("--data-dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="A node's data dir: its RPC while it runs, else its chains directly.")
def lineage(expert: str | None, dataset: str | None, claim: str | None, as_jsonld: bool, as_json: bool,
            rpc_url: str | None, cookie: Path | None, data_dir: Path | None) -> None:
    """The provenance of an expert, a dataset or a claim, as a tree (or JSON-LD)."""
    given = {k: v for k, v in (("expert", expert), ("dataset", dataset), ("claim", claim)) if v is not None}
    if len(given) != 1:
        raise click.UsageError("give exactly one of --expert NAME, --dataset CID, --claim HASH")
    (kind, subject), = given.items()
    if kind == "claim":
        _check_hash(subject)
    try:
        doc = fetch_lineage(kind, subject, as_jsonld, rpc_url, cookie, data_dir)
    except (BlyanError, OSError) as err:
        _fail(str(err))
    if as_jsonld or as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo("\n".join(render_tree(doc)))


def _check_hash(value: str) -> None:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise click.BadParameter("not hex", param_hint="--claim") from None
    if len(raw) != 32:
        raise click.BadParameter("a hash has 32 bytes (64 hex digits)", param_hint="--claim")


def fetch_lineage(kind: str, subject: str, jsonld: bool, rpc_url: str | None, cookie: Path | None,
                  data_dir: Path | None) -> Any:
    """The node's answer to `blyan_getLineage`, or the same computed from the data dir's store."""
    if rpc_url is None and data_dir is None:
        raise click.UsageError("give --rpc URL --cookie FILE, or --data-dir DIR")
    if rpc_url is not None or (data_dir / NODE_INFO_FILE).exists():
        return make_client(data_dir, rpc_url, cookie).call("blyan_getLineage", {kind: subject, "jsonld": jsonld})
    _, store = open_store(data_dir)
    try:
        key = bytes.fromhex(subject) if kind == "claim" else subject
        graph = lineage_of(store.state(CHAIN_PARAMETER), store.state(CHAIN_DATASET), kind, key)
    finally:
        store.close()
    return to_jsonld(graph) if jsonld else to_json(graph)


# --- the tree -------------------------------------------------------------------------------


def describe_node(node: dict[str, Any]) -> str:
    """One line: the node's label, its class and what matters of it."""
    a = node["attributes"]
    facts: list[str] = []
    if node["type"] == "Dataset" and a.get("status") == "unknown":
        facts = ["not on the dataset chain"]
    elif node["type"] == "Dataset":
        facts = [a.get("status", ""), a.get("tier", ""), a.get("role", ""),
                 f"{a['size']} bytes" if "size" in a else ""]
    elif node["type"] == "DeltaClaim":
        facts = [a.get("status", ""), f"round {a['round']}" if "round" in a else ""]
        if "baseLoss" in a:
            facts.append(f"loss {a['baseLoss']:.4f} -> {a['newLoss']:.4f} (gain {a['gain']:.2%})")
        facts.append(a.get("reason", ""))
    elif node["type"] == "BlockVersion":
        facts = [f"version {a['version']}" if "version" in a else "", a.get("origin", ""),
                 "head" if a.get("isHead") else ""]
    elif node["type"] == "TrainingManifest":
        facts = [f"{a['steps']} steps, seed {a['seed']}" if "steps" in a else ""]
    text = ", ".join(f for f in facts if f)
    return f"{node['label']} [{node['type']}]" + (f" {text}" if text else "")


def render_tree(doc: dict[str, Any]) -> list[str]:
    """The graph as a tree from its subject: each node's relations, then (for the subject and
    claims) the relations that point at it; a node met again is named, not expanded."""
    nodes = {n["id"]: n for n in doc["nodes"]}
    out_edges: dict[str, list[tuple[str, str]]] = {}
    in_edges: dict[str, list[tuple[str, str]]] = {}
    for e in doc["edges"]:
        out_edges.setdefault(e["source"], []).append((e["relation"], e["target"]))
        in_edges.setdefault(e["target"], []).append((INVERSE.get(e["relation"], e["relation"]), e["source"]))
    subject = doc["subject"]
    lines = [describe_node(nodes[subject])]
    seen = {subject}

    def children(node_id: str) -> list[tuple[str, str]]:
        kids = list(out_edges.get(node_id, ()))
        if node_id == subject or nodes[node_id]["type"] == "DeltaClaim":
            kids += [(rel, src) for rel, src in in_edges.get(node_id, ())
                     if node_id == subject or rel == "generated"]
        return kids

    def walk(node_id: str, prefix: str, parent: str | None) -> None:
        kids = [(rel, other) for rel, other in children(node_id) if other != parent]
        for i, (relation, other) in enumerate(kids):
            last = i == len(kids) - 1
            if other in seen:
                lines.append(f"{prefix}{'└─' if last else '├─'} {relation} {nodes[other]['label']} (above)")
                continue
            seen.add(other)
            lines.append(f"{prefix}{'└─' if last else '├─'} {relation} {describe_node(nodes[other])}")
            walk(other, prefix + ("   " if last else "│  "), node_id)

    walk(subject, "", None)
    if doc.get("truncated"):
        lines.append("(older versions or claims left out: the query's bound)")
    return lines
