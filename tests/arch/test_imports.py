"""The import direction of the house: a test walks every module's imports with `ast`.

chain imports nothing of ours; consensus, gpu and p2p import only chain; nothing imports node;
genesis may import chain, gpu and consensus. Only chain/leveldb.py imports plyvel; chain and
consensus stay pure (no trio, no asyncio, no libp2p).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("chain", "consensus", "p2p", "gpu", "node", "genesis")
ALLOWED = {
    "chain": set(),
    "consensus": {"chain"},
    "gpu": {"chain"},
    "p2p": {"chain"},
    "genesis": {"chain", "gpu", "consensus"},
    "node": {"chain", "consensus", "p2p", "gpu", "genesis"},
}
PURE_FORBIDDEN = {"trio", "asyncio", "libp2p", "plyvel", "hypercorn", "starlette", "torch"}


def iter_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, "." * node.level + (node.module or "")))
    return found


def modules_of(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def violations_of(package: str, path: Path) -> list[str]:
    out = []
    for lineno, name in iter_imports(path):
        top = name.split(".")[0]
        where = f"{path.relative_to(ROOT)}:{lineno} imports {name}"
        if name.startswith("."):
            continue  # relative imports stay inside the package
        if top in OURS and top != package and top not in ALLOWED[package]:
            out.append(where)
        if top == "node" and package != "node":
            out.append(where + " (nothing imports node)")
        if package in ("chain", "consensus") and top in PURE_FORBIDDEN:
            if not (top == "plyvel" and path == ROOT / "chain" / "leveldb.py"):
                out.append(where + f" ({package} stays pure)")
        if top == "plyvel" and path != ROOT / "chain" / "leveldb.py":
            out.append(where + " (only chain/leveldb.py imports plyvel)")
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_import_direction(package: str) -> None:
    problems = [v for path in modules_of(package) for v in violations_of(package, path)]
    assert not problems, "wrong import arrows:\n" + "\n".join(problems)


def test_checker_catches_a_wrong_arrow(tmp_path: Path) -> None:
    bad = ROOT / "chain" / "_probe_bad_import.py"
    assert not bad.exists()
    probe = tmp_path / "probe.py"
    probe.write_text("import node.cli\nfrom consensus import tendermint\nimport trio\n")
    found = []
    for _lineno, name in iter_imports(probe):
        top = name.split(".")[0]
        if top in OURS and top not in ALLOWED["chain"] or top in PURE_FORBIDDEN:
            found.append(name)
    assert found == ["node.cli", "consensus", "trio"]


def test_no_package_named_like_libp2p_extras() -> None:
    # libp2p installs top-level `examples`, `docs`, `interop`, `newsfragments`, `stubs`.
    for name in ("examples", "interop", "newsfragments", "stubs"):
        assert not (ROOT / name / "__init__.py").exists()
