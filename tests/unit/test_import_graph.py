"""The import graph of `services/`, read with `ast` (nothing is imported): no cycles, and the layers point one way.

    .venv/bin/python -m pytest tests/unit/test_import_graph.py -q

Every `import x` / `from x import y` counts, wherever it is in the file (module level, inside functions, under
`if TYPE_CHECKING:`), so a cycle through a function-local import fails too: it still ties the modules together.
`from services.a import b` is an edge to the module `services.a.b` when that is a module, else to `services.a`;
a package's `__init__.py` is the package's module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(SERVICES.rglob("*.py"))}


def imported_names(path: Path, name: str) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every import statement in the file, relative ones made absolute."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.extend((module, alias.name) for alias in node.names)
    return found


def resolve(module: str, name: str | None, modules: dict[str, Path]) -> str | None:
    """The module of `services` an import statement loads, or None for imports from outside `services`."""
    if name is not None and f"{module}.{name}" in modules:
        return f"{module}.{name}"
    parts = module.split(".")
    while parts:  # `import services.a.b` of a module that is gone or a namespace package: its nearest parent
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {resolve(module, imported, modules) for module, imported in imported_names(path, name)}
        graph[name] = {target for target in targets if target is not None and target != name}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components of more than one module (each one holds a cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def shortest_cycle(graph: dict[str, set[str]], members: set[str], start: str) -> list[str]:
    """The shortest cycle through `start` inside its component (breadth-first), starting at its smallest name."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    cycle = paths[node]
                    first = cycle.index(min(cycle))
                    cycle = cycle[first:] + cycle[:first]
                    return cycle + [cycle[0]]
                if child not in paths:
                    paths[child] = paths[node] + [child]
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # every module of a component lies on one


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Per component, the shortest cycle through each of its modules (without repeats), one per line."""
    found: list[str] = []
    for component in strongly_connected(graph):
        members = set(component)
        for start in component:
            line = " -> ".join(shortest_cycle(graph, members, start))
            if line not in found:
                found.append(line)
    return found


def test_the_graph_sees_every_kind_of_import(tmp_path):
    graph = import_graph()
    assert "services.trainer" in graph and "services.trainer.server" in graph  # packages and modules
    assert all(target.startswith("services") for targets in graph.values() for target in targets)
    source = tmp_path / "mod.py"
    source.write_text("import os, services.a.b as b\nfrom . import sibling\nfrom ..up import thing\n"
                      "if TYPE_CHECKING:\n    from services.c import d\n"
                      "def f():\n    from .pkg.mod import name\n")
    assert imported_names(source, "services.x.mod") == [
        ("os", None), ("services.a.b", None), ("services.x", "sibling"), ("services.up", "thing"),
        ("services.c", "d"), ("services.x.pkg.mod", "name")]
    modules = {"services.c": Path(), "services.c.d": Path(), "services.x": Path()}
    assert resolve("services.c", "d", modules) == "services.c.d"  # a submodule
    assert resolve("services.c", "function", modules) == "services.c"  # a name in the package
    assert resolve("services.x.gone", None, modules) == "services.x"
    assert resolve("os", None, modules) is None


def test_the_cycle_finder_on_a_known_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}, "g": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"], ["e", "f"]]
    assert cycles(graph) == ["a -> b -> c -> a", "e -> f -> e"]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_services_have_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (one per line; break each by moving what both sides need lower):\n" + \
        "\n".join(found)


# Lower layers must not know the higher ones: (package, packages it must not import).
LAYERS = [
    ("services.common", ("services.trainer", "services.inference")),
    ("services.engine", ("services.trainer", "services.inference")),
    ("services.trainer", ("services.inference",)),
]


@pytest.mark.parametrize("package, forbidden", LAYERS, ids=[package for package, _ in LAYERS])
def test_layers_import_one_way(package, forbidden):
    modules = {name: path for name, path in all_modules().items()
               if name == package or name.startswith(package + ".")}
    if not modules:
        pytest.skip(f"{package} does not exist (yet)")
    wrong = []
    for name, path in sorted(modules.items()):
        for module, imported in imported_names(path, name):
            full = f"{module}.{imported}" if imported else module
            if any(full == bad or full.startswith(bad + ".") for bad in forbidden):
                wrong.append(f"{name} imports {full}")
    assert not wrong, f"{package} must not import {' or '.join(forbidden)}:\n" + "\n".join(wrong)
