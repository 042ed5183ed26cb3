"""The package's modules import each other without a circle.

A circle (engine -> dispatch -> strategies -> engine, once) makes the import order matter and
the layers blur: the strategies would depend on the engine that runs them. The graph is read
from the source with ``ast`` (every import counts, also those under ``TYPE_CHECKING`` and inside
functions), so a circle is caught before it ever bites at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import matensemble

PACKAGE = Path(matensemble.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports (a package's own parents are not counted)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # ``from a import b`` imports the module a.b when there is one, else a name of a.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph as a path that ends where it starts, or ``None``."""
    done: set[str] = set()
    for root in sorted(graph):
        if root in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        path.append(root)
        on_path.add(root)
        while stack:
            node, todo = stack[-1]
            if not todo:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
                continue
            nxt = todo.pop()
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in done:
                stack.append((nxt, sorted(graph[nxt])))
                path.append(nxt)
                on_path.add(nxt)
    return None


def test_the_package_has_no_import_circle() -> None:
    graph = {name: imports_of(name, path) for name, path in MODULES.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_circle_finder_finds_a_circle_it_is_shown() -> None:
    """The check above is only worth something if it can fail."""
    graph = {"e": {"d"}, "d": {"s"}, "s": {"e", "m"}, "m": set()}
    cycle = find_cycle(graph)
    assert cycle is not None
    assert cycle[0] == cycle[-1]
    assert sorted(cycle[:-1]) == ["d", "e", "s"]
    assert find_cycle({"e": {"d"}, "d": {"m"}, "m": set()}) is None


def test_the_strategies_see_the_engine_only_through_the_control_protocol() -> None:
    for name, path in MODULES.items():
        if name.startswith("matensemble.strategies"):
            assert "matensemble.engine" not in imports_of(name, path), name
