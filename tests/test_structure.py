"""The package's imports point one way: no cycle, imports inside functions counted too.

The graph is built from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` of a ``cache_invalidation`` module, at any depth of the file, is an edge.
``from . import x`` names the module ``x`` when it is one, else the package's ``__init__``;
importing a module of a subpackage also imports the subpackage's ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cache_invalidation"
ROOT = "cache_invalidation"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for p in PACKAGE.rglob("*.py")
        if "migrations" not in p.parts
    }


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts)
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            targets = []
            for alias in node.names:
                candidate = f"{origin}.{alias.name}"
                targets.append(candidate if candidate in known else origin)
        else:
            continue
        for target in targets:
            while target and target not in known and "." in target:
                target = target.rpartition(".")[0]  # a name inside a module
            if target in known and target != name:
                found.add(target)
                # Importing a.b.c runs the package a.b first: that is an import too.
                parent = target.rpartition(".")[0]
                while parent != ROOT and parent in known and not name.startswith(parent + "."):
                    found.add(parent)
                    parent = parent.rpartition(".")[0]
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles in cache_invalidation (imports inside functions too): " + (
        "; ".join(" <-> ".join(c) for c in found)
    )


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


LAYERS = PACKAGE.parent / "docs" / "layers.txt"


def layers() -> list[tuple[str, list[str]]]:
    """(layer name, module patterns) from docs/layers.txt, top to bottom."""
    found = []
    for line in LAYERS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            head, modules = line.split("|", 1)
            found.append((head.split(":")[0].strip(), modules.split()))
    return found


def layer_of(module: str, table: list[tuple[str, list[str]]]) -> int | None:
    import fnmatch

    name = ROOT if module == ROOT else module[len(ROOT) + 1 :]
    for index, (_, patterns) in enumerate(table):
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            return index
    return None


def test_every_module_has_a_layer_and_imports_point_down():
    table = layers()
    edges = graph()
    unplaced = sorted(m for m in edges if layer_of(m, table) is None)
    assert not unplaced, f"modules missing from docs/layers.txt: {unplaced}"
    upward = [
        f"{m} ({table[layer_of(m, table)][0]}) imports {t} ({table[layer_of(t, table)][0]})"
        for m, targets in sorted(edges.items())
        for t in sorted(targets)
        if layer_of(t, table) < layer_of(m, table)  # type: ignore[operator]
    ]
    assert not upward, "imports pointing up a layer: " + "; ".join(upward)
