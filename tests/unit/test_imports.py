"""The shape of ebr/: no import cycles (module- or function-level), no orchestration stack."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

STACK = ("flytekit", "ray", "feast", "apache_beam")  # adapters only: ebr/ stays plain Python


def _modules() -> dict[str, Path]:
    out = {}
    for path in (REPO / "ebr").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (function-level too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_ebr_has_no_import_cycles() -> None:
    mods = _modules()
    graph = {m: {i for i in _imports(p) if i in mods and i != m} for m, p in mods.items()}
    assert _cycles(graph) == []
    # The check finds a cycle when there is one.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_ebr_imports_no_orchestration_stack() -> None:
    for path in _modules().values():
        stack = {i for i in _imports(path) if i.split(".")[0] in STACK}
        assert not stack, f"{path.relative_to(REPO)} imports {sorted(stack)}"


def test_index_layers_import_only_downwards() -> None:
    """ebr.index: query (opening and searching a slot) < build (making slots) < live (the log
    over a slot); a layer never imports one above it, so query time can be read alone."""
    layers = ("ebr.index.query", "ebr.index.build", "ebr.index.live")
    for name, path in _modules().items():
        mine = next((i for i, layer in enumerate(layers) if name.startswith(layer)), None)
        if mine is None:
            continue
        above = {i for i in _imports(path) if i.startswith(layers[mine + 1 :])}
        assert not above, f"{name} imports {sorted(above)} from a layer above it"
    assert all(_modules().get(layer) for layer in layers)  # the layers exist as packages


def _package(module: str) -> str:
    """The package a module belongs to: ebr.<pkg>, or ebr.index.<layer> inside the index."""
    parts = module.split(".")
    return ".".join(parts[:3] if parts[:2] == ["ebr", "index"] and len(parts) > 3 else parts[:2])


def test_ebr_packages_form_a_layered_stack() -> None:
    """No cycle between packages either (e.g. data -> model -> data): each can be read, tested
    and replaced with only the ones below it."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        mine = _package(name)
        deps = {_package(i) for i in _imports(path) if i in mods}
        graph.setdefault(mine, set()).update(deps - {mine})
    for deps in list(graph.values()):
        for dep in deps:
            graph.setdefault(dep, set())
    assert _cycles(graph) == []
    assert {"ebr.data", "ebr.model", "ebr.index.query", "ebr.index.live"} <= set(graph)
