"""Modules import downwards only: the graph of the package's imports of its own modules
(every import, including those under ``if TYPE_CHECKING:`` and inside functions) has no
cycle, no module imports a layer above its own (the subpackages, in the order of
``LAYERS``), and the session core (``app.database``) stays below the block store and the
similarity search.

``import app.database`` runs ``app/__init__.py`` first, which imports the whole package
(numpy included), so what the session core needs is checked on the graph, not by importing
it in a fresh interpreter.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "app"

#: The layers, lowest first (see each subpackage's docstring and docs/architecture.md). The
#: package root's own modules are the foundation every layer shares; ``app/__init__.py``
#: and ``app/__main__.py`` sit above every layer.
LAYERS = (
    "engine",
    "writers",
    "schema",
    "database",
    "chain",
    "search",
    "blocks",
    "legacy",
    "aio",
    "operations",
    "cli",
)
#: What the root holds besides the public API: the foundation.
FOUNDATION = {
    "app._version",
    "app.errors",
    "app.settings",
    "app.models",
    "app._hints",
    "app._url_checks",
    "app._process",
    "app._telemetry",
    "app._telemetry_instruments",
}
TOP = {"app", "app.__main__"}

#: Cycles left on purpose (none: every arrow points down).
ALLOWED_CYCLES: set[tuple[str, ...]] = set()

#: What the session core must never import, directly or not: the block store, its SQL,
#: and the similarity search (which brings numpy).
BELOW_THE_BLOCK_STORE = {
    "app.search._vector_cache",
    "app.search._vector_scores",
    "app.blocks",
    "app.chain._block_sql",
}


def _module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _imports(name: str, path: Path, modules: set[str]) -> tuple[set[str], set[str]]:
    """The package's modules that ``name`` imports, and the top-level names of every other
    package it imports (anywhere in the file)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    internal: set[str] = set()
    external: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # ``from . import x`` imports the module x when there is one, else a name of .
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != "app":
                external.add(target.split(".")[0])
                continue
            while target not in modules:  # ``import app.x.y`` where y is not a module
                target = target.rpartition(".")[0]
            if target != name:
                internal.add(target)
    return internal, external


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    names = _module_names()
    graph: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}
    for name, path in names.items():
        graph[name], external[name] = _imports(name, path, set(names))
    return graph, external


def _cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Every elementary cycle, as the path from its smallest module (by name)."""
    found = set()
    for start in sorted(graph):
        paths = [(start,)]
        while paths:
            path = paths.pop()
            for target in graph[path[-1]]:
                if target == start:
                    found.add(path)
                elif target > start and target not in path:
                    paths.append((*path, target))
    return found


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def _show(cycle: tuple[str, ...]) -> str:
    return " -> ".join([*cycle, cycle[0]])


def test_the_graph_sees_every_kind_of_import() -> None:
    graph, _ = _graph()
    assert "app.database._units" in graph["app.database._write_units"]  # from ._units import ...
    assert "app._process" in graph["app.database"]  # from . import _process
    assert "app.schema" in graph["app.chain._time_window"]  # inside a function
    assert "app.database" in graph["app.blocks.short_term"]  # under if TYPE_CHECKING:


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph()[0])
    new = sorted(_show(c) for c in cycles - ALLOWED_CYCLES)
    assert not new, "import cycles:\n" + "\n".join(new)
    fixed = sorted(_show(c) for c in ALLOWED_CYCLES - cycles)
    assert not fixed, "gone, remove from ALLOWED_CYCLES:\n" + "\n".join(fixed)


def test_the_session_core_stays_below_the_block_store_and_numpy() -> None:
    graph, external = _graph()
    below = _reachable(graph, "app.database")
    assert not below & BELOW_THE_BLOCK_STORE, sorted(below & BELOW_THE_BLOCK_STORE)
    with_numpy = sorted(m for m in below | {"app.database"} if "numpy" in external[m])
    assert not with_numpy, with_numpy


def _layer(name: str) -> int:
    """0 for the foundation, 1.. for the layers in order, above them all for the top."""
    if name in TOP:
        return len(LAYERS) + 1
    parts = name.split(".")
    return LAYERS.index(parts[1]) + 1 if parts[1] in LAYERS else 0


def test_the_root_holds_the_foundation_and_the_layers_only() -> None:
    graph, _ = _graph()
    loose = sorted(m for m in graph if m.count(".") == 1 and m not in FOUNDATION | TOP)
    loose = [m for m in loose if m.split(".")[1] not in LAYERS]
    assert not loose, f"modules outside every layer: {loose}"
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert packages == sorted(LAYERS)


def test_every_layer_says_what_it_owns_and_may_import() -> None:
    for layer in LAYERS:
        doc = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text("utf-8")))
        assert doc is not None and "May import:" in doc, layer
        assert (
            f"Layer {LAYERS.index(layer) + 1}" in doc or f"(layer {LAYERS.index(layer) + 1})" in doc
        ), layer


def test_imports_point_down_the_layers() -> None:
    graph, _ = _graph()
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if _layer(target) > _layer(module)
    )
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_no_module_is_over_400_lines() -> None:
    long = sorted(
        f"{path.relative_to(PACKAGE.parent)}: {lines}"
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text("utf-8").splitlines())) > 400
    )
    assert not long, long
