"""The package's import graph keeps the layering of docs/design.md §4: calls and imports go one way.

Read from the source with ``ast`` (nothing is imported), every import statement counted, at module
level or inside a function: a lazy import is an arrow of the graph too.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "channelnorm"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """The channelnorm modules that ``path`` imports (``from . import x`` counts as x when x is a module)."""
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "channelnorm")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "channelnorm":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if _is_module(sub) else target)
    return found


GRAPH = {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> str:
    """The package-level part a module belongs to: ``ops``, ``functional``, ``modules``, ``_checks``, ..."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "channelnorm"


def _arrows(from_layer: str, to_layer: str) -> list[str]:
    return [f"{m} -> {t}" for m, targets in GRAPH.items() if _layer(m) == from_layer
            for t in sorted(targets) if _layer(t) == to_layer]


def test_the_graph_is_read_from_the_source():
    # The helpers resolve relative imports as Python does: a few known arrows of the package.
    assert "channelnorm.ops.dispatch" in GRAPH["channelnorm.functional.core"]
    assert "channelnorm._checks" in GRAPH["channelnorm.functional.core"]
    assert "channelnorm.ops.native" in GRAPH["channelnorm.ops.dispatch"]
    assert "channelnorm.ops.triton.backend" in GRAPH["channelnorm.ops.dispatch"]  # a lazy import counts
    assert "channelnorm.functional" in GRAPH["channelnorm.modules.channel"]       # from .. import functional


@pytest.mark.parametrize("lower, upper", [
    ("ops", "functional"), ("ops", "modules"), ("ops", "tools"), ("ops", "registry"),
    ("functional", "modules"), ("functional", "tools"), ("functional", "registry"),
])
def test_no_module_of_a_lower_layer_imports_a_higher_one(lower, upper):
    # ops/ is below functional/: one arrow back up (ops/distributed.py borrowing functional's checks)
    # made the two packages import each other.
    assert _arrows(lower, upper) == []


def test_the_shared_checks_import_no_other_module_of_the_package():
    # _checks sits below functional and ops alike, so both can use it without importing each other.
    assert GRAPH["channelnorm._checks"] == set()


def test_modules_call_functional_never_ops():
    assert _arrows("modules", "ops") == []


def test_the_library_never_imports_the_experiment():
    assert [a for layer in ("ops", "functional", "modules", "tools", "registry", "_checks", "channelnorm")
            for a in _arrows(layer, "experiments")] == []


def test_no_two_packages_import_each_other():
    layers: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        layers.setdefault(_layer(module), set()).update(_layer(t) for t in targets)
    loops = sorted(f"{a} <-> {b}" for a in layers for b in layers[a]
                   if a < b and a in layers.get(b, ()) and "channelnorm" not in (a, b))
    assert loops == []
