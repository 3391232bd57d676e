"""The house's layout, enforced: the wings of `node/`, who may import whom inside it, no import
cycle anywhere among our modules (lazy and type-checking imports included), and no module over
600 lines, tests included."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.arch.module_graph import ROOT, build_graph, find_cycles, imports_of, list_modules, module_name

MAX_LINES = 600

WINGS: dict[str, set[str]] = {
    # wing: the wings it may import (besides chain, consensus, p2p, gpu, genesis)
    "core": set(),  # the seams every wing shares: feed, NodeHandle, clock, progress
    "engine": {"core"},  # consensus of the three chains; never imports sync or a service
    "sync": {"core"},  # status, handshake, blocks by range, snapshots, fast sync, catch-up
    "experts": {"core"},  # expert serving, inference, tiles, bundle blobs, materialised heads
    "api": {"core"},  # JSON-RPC, metrics; sees the node and services only by interface
    "pol": {"core"},  # Proof-of-Learning: bundles, the contributor's training, the verifier
    "data": {"core"},  # data quality: L0 audit, content by CID, IPFS, the validators' data service
    "sim": {"core", "engine", "sync", "pol", "experts", "data"},  # the simulation harness, byzantine substitutes
    "app": {"core", "engine", "sync", "experts", "api", "pol", "data"},  # daemon wiring, data dir, devnet
    "cli": {"core", "app", "api", "sim", "pol", "data"},  # the `blyan` command line
}
"""Inner arrows of `node/`: cli -> app -> {engine, sync, experts, api, pol}; services never import
the engine but get its interface (`node.core.ports.NodeHandle`). A new wing (data, anchor) is
added here with its arrows."""
NODE_TOP_LEVEL = {"__init__.py", "__main__.py"}


def wing_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "node" else None


def inner_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        wing = wing_of(module)
        if wing is None or module == "node.__main__":
            continue
        if wing not in WINGS:
            problems.append(f"{module}: wing {wing!r} is not in the map of node/ (tests/arch/test_layout.py)")
            continue
        for target in sorted(targets):
            other = wing_of(target)
            if other is not None and other != wing and other not in WINGS[wing]:
                problems.append(f"{module} imports {target} ({wing} may not import {other})")
    return problems


def test_node_has_only_wings_at_its_top_level() -> None:
    loose = sorted(p.name for p in (ROOT / "node").glob("*.py") if p.name not in NODE_TOP_LEVEL)
    assert not loose, f"modules at node/'s top level (put them in a wing): {loose}"
    wings = sorted(p.name for p in (ROOT / "node").iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert set(wings) == set(WINGS), f"wings on disk {wings} differ from the map {sorted(WINGS)}"


def test_inner_arrows_of_node() -> None:
    problems = inner_violations(build_graph())
    assert not problems, "wrong arrows inside node/:\n" + "\n".join(problems)


def test_no_import_cycle_among_our_modules() -> None:
    cycles = find_cycles(build_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("top", ["chain", "consensus", "p2p", "gpu", "node", "genesis", "tests", "scripts"])
def test_no_module_over_600_lines(top: str) -> None:
    long = [(str(p.relative_to(ROOT)), n) for p in sorted((ROOT / top).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"


# --- the checkers themselves must be able to fail -------------------------------------------


def test_cycle_finder_finds_a_lazy_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "chain"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from chain import b\n")
    (pkg / "b.py").write_text("def f():\n    from chain.c import x\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from chain.a import y\n")
    (pkg / "d.py").write_text("import chain.a\n")
    modules = list_modules(tmp_path, ("chain",))
    graph = {name: {t for _, t in imports_of(name, path, modules) if t != name} for name, path in modules.items()}
    assert find_cycles(graph) == [["chain.a", "chain.b", "chain.c"]]


def test_inner_checker_flags_a_service_importing_the_engine() -> None:
    graph = {"node.api.server": {"node.engine.engine"}, "node.engine.runner": {"node.sync.catchup"},
             "node.app.daemon": {"node.engine.engine"}, "node.anchor.service": set()}
    problems = inner_violations(graph)
    assert any("node.api.server imports node.engine.engine" in p for p in problems)
    assert any("node.engine.runner imports node.sync.catchup" in p for p in problems)
    assert any("wing 'anchor' is not in the map" in p for p in problems)
    assert not any("node.app.daemon" in p for p in problems)


def test_module_names_resolve_packages_and_modules() -> None:
    assert module_name(ROOT / "node" / "sim" / "__init__.py") == "node.sim"
    assert module_name(ROOT / "node" / "sim" / "checks.py") == "node.sim.checks"
