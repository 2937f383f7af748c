"""The package is layered as the README's "What is here" table says: a module imports only from its own layer or the
layers above it in that table (lazy imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import cinema

PACKAGE = Path(cinema.__file__).parent

# the README table, top to bottom; the package data (weights, examples) sits with I/O
LAYERS = [
    {"io", "weights", "examples"},
    {"preprocess"},
    {"models"},
    {"metrics"},
    {"tasks", "train"},
    {"analysis"},
    {"evaluate"},
    {"serve"},
    {"cli", "__main__"},
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def _imported_subpackages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        names |= {m.split(".")[1] for m in modules if m.startswith("cinema.")}
    return names


def test_every_subpackage_is_in_a_layer():
    found = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    found -= {"__init__", "__pycache__"}
    assert found <= set(LEVEL), f"add {sorted(found - set(LEVEL))} to the README table and to LAYERS"


def test_imports_point_only_up_the_table():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative == Path("__init__.py"):
            continue  # the package root re-exports checkpoint I/O lazily
        own = relative.parts[0].removesuffix(".py")
        for name in _imported_subpackages(path):
            if LEVEL[name] > LEVEL[own]:
                upward.append(f"{relative} imports cinema.{name}")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)
