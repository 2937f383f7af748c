"""The package is layered as the README's "What is here" table says: a module imports only from its own layer or the
layers above it in that table (lazy imports inside functions count too), and no two subpackages import each other,
however indirectly."""

from __future__ import annotations

import ast
from pathlib import Path

import cinema

PACKAGE = Path(cinema.__file__).parent

# the README table, top to bottom; the package data (weights, examples) sits with I/O
LAYERS = [
    {"io", "weights", "examples"},
    {"config"},
    {"preprocess"},
    {"models"},
    {"metrics"},
    {"tasks"},
    {"train"},
    {"analysis"},
    {"evaluate", "cohort"},
    {"serve"},
    {"cli", "__main__"},
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}
# the top-level subpackages and modules of cinema
FOUND = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
FOUND -= {"__init__", "__pycache__"}


def _imported_subpackages(path: Path) -> set[str]:
    """The top-level subpackages of cinema that the module at `path` imports, anywhere in it (inside functions and
    ``if TYPE_CHECKING:`` blocks too); ``from cinema import x`` and relative imports included."""
    package = ("cinema", *path.relative_to(PACKAGE).parent.parts)
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative to the module's own package
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            modules = [f"{base}.{a.name}" for a in node.names] if base == "cinema" else [base]
        else:
            continue
        names |= {m.split(".")[1] for m in modules if m.startswith("cinema.")}
    return names & FOUND


def _import_graph() -> dict[str, set[str]]:
    """Top-level subpackage -> the other subpackages its modules import (the package root's lazy re-exports aside)."""
    graph: dict[str, set[str]] = {name: set() for name in FOUND}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative == Path("__init__.py"):
            continue
        own = relative.parts[0].removesuffix(".py")
        graph[own] |= _imported_subpackages(path) - {own}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as ``[a, b, ..., a]`` (depth-first search), or None when it is acyclic."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if target in path:
                return [*path[path.index(target) :], target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_every_subpackage_is_in_a_layer():
    assert FOUND <= set(LEVEL), f"add {sorted(FOUND - set(LEVEL))} to the README table and to LAYERS"


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


def test_no_import_cycle_between_subpackages():
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "subpackages import each other: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_planted_cycle():
    graph = _import_graph()
    assert "models" in graph["train"]  # the real graph: training builds models
    planted = {**graph, "models": graph["models"] | {"train"}}  # ... and a model that imported the trainer
    cycle = _find_cycle(planted)
    assert cycle is not None and cycle[0] == cycle[-1] and {"models", "train"} <= set(cycle)
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is no cycle
