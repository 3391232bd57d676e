"""No import cycles among the modules of chain, consensus and genesis, counting every import
(inside functions and under `if TYPE_CHECKING:` too), with the helper `scripts/import_cycles.py`."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HELPER = ROOT / "scripts" / "import_cycles.py"
ACYCLIC = ("chain", "consensus", "genesis")


def load_helper() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("blyan_import_cycles", HELPER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_import_cycles_none_in_pure_packages() -> None:
    helper = load_helper()
    cycles = helper.find_cycles(helper.compute_import_graph(ACYCLIC))
    assert cycles == [], f"import cycles: {cycles}"


def test_import_cycles_finds_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    helper = load_helper()
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("def f():\n    from pkg import b\n")
    (tmp_path / "pkg" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n")
    (tmp_path / "pkg" / "c.py").write_text("from pkg.a import f\n")
    helper.ROOT = tmp_path
    assert helper.find_cycles(helper.compute_import_graph(("pkg",))) == [["pkg.a", "pkg.b"]]
