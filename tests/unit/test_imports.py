"""The package's import graph: no circle, and the config package's modules in one direction."""

from __future__ import annotations

import ast
from pathlib import Path

import fedamole

SRC = Path(fedamole.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _owner(name: str) -> str:
    """The module of ``fedamole``'s own that an imported dotted name lives in."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str) -> set[str]:
    """Modules of fedamole that ``module`` imports when it is imported (its top level, and
    ``if`` blocks there such as ``if TYPE_CHECKING:``), its own parent packages left out."""
    tree = ast.parse(MODULES[module].read_text())
    nodes = []
    for stmt in tree.body:
        nodes += list(ast.walk(stmt)) if isinstance(stmt, ast.If) else [stmt]
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fedamole"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in MODULES else _owner(node.module))
        elif isinstance(node, ast.Import):
            found |= {_owner(a.name) for a in node.names if a.name.startswith("fedamole")}
    return {m for m in found if m != module and not module.startswith(m + ".")}


def _circle_through(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """An import path from ``start`` back to itself, or ``None``."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_module_imports_itself_through_others():
    graph = {module: _imports(module) for module in MODULES}
    circles = [c for m in sorted(graph) if (c := _circle_through(m, graph))]
    assert not circles, " -> ".join(circles[0])


def test_the_config_modules_import_only_those_above_them():
    order = ["files", "schema", "checks", "tree", "load"]
    assert {m for m in MODULES if m.startswith("fedamole.config.")} == {
        f"fedamole.config.{name}" for name in order
    }
    for i, name in enumerate(order):
        inside = {m for m in _imports(f"fedamole.config.{name}") if m.startswith("fedamole.config")}
        assert inside <= {f"fedamole.config.{above}" for above in order[:i]}, name
