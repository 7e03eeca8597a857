"""The package's layers, read from its imports (those inside functions too).

Commands (the modules a user runs) sit on top; nothing below them imports them,
and no import cycle exists anywhere: following one KEY=VALUE from the command
line to the file written goes down through the layers and never comes back up.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "face_segmentation_pytorch"
NAME = "face_segmentation_pytorch"

#: The command modules: they parse KEY=VALUE and report.
COMMANDS = {
    f"{NAME}.cli",
    f"{NAME}.video",
    f"{NAME}.train",
    f"{NAME}.evaluate",
    f"{NAME}.convert",
    f"{NAME}.export",
    f"{NAME}.label.__main__",
}

#: Modules allowed to import commands: the entry points that dispatch to them.
DISPATCHERS = {f"{NAME}.__main__", f"{NAME}.label"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules imported anywhere in the file (module level or in functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()

    def add(target: str) -> None:
        # The longest known module that is a prefix of the target (a name
        # imported from a module is that module).
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target:
            found.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(NAME):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith(NAME):
                continue
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                add(candidate if candidate in known else module)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm).

    A package's ``__init__`` re-exporting its own sub-modules is not a cycle of
    layers, so edges from a package to the modules inside it are left out.
    """
    edges = {a: {b for b in bs if not b.startswith(a + ".")} for a, bs in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _package_roots(graph: dict[str, set[str]]) -> set[str]:
    """The top-level ``__init__`` (re-exports the public API) may import anything below commands."""
    return {NAME}


def test_the_walker_sees_imports_inside_functions():
    graph = _graph()
    # evaluate imports the training evaluation inside run(): a function-level import.
    assert f"{NAME}.training.evaluation" in graph[f"{NAME}.evaluate"]


def test_no_import_cycles():
    graph = _graph()
    # The package's __init__ re-exports names from everywhere (lazily); count it
    # as the public face, not a layer, so leave its outgoing edges out.
    graph = {k: v for k, v in graph.items() if k not in _package_roots(graph)}
    graph = {k: {m for m in v if m != NAME} for k, v in graph.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_module_imports_a_command():
    """Commands share what they need through the layers below them (keys.py, the
    jobs), never through each other; only the dispatchers import them."""
    graph = _graph()
    offenders = sorted(
        f"{name} imports {target}"
        for name, targets in graph.items()
        if name not in DISPATCHERS and name != NAME
        for target in targets & COMMANDS
    )
    assert not offenders, "; ".join(offenders)
