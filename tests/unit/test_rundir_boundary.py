"""The run directory package owns its files: it imports nothing from the layers that use it, and
no module outside it spells the name of a file in a run directory (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import fedamole
from fedamole.rundir import layout

SRC = Path(fedamole.__file__).resolve().parent
RUNDIR = SRC / "rundir"
# The layers above the run directory (docs/architecture.md#the-layers).
ABOVE = ("fedamole.engines", "fedamole.analysis", "fedamole.algorithms", "fedamole.export")
# Every file and folder name of a run directory that is not also a common word ("last", "best"
# and "clients" are, elsewhere: round modes, a figure).
NAMES = {
    layout.CONFIG,
    layout.ENV,
    layout.METRICS,
    layout.COMM,
    layout.ASSIGNMENTS,
    layout.CHECKPOINTS,
    layout.LOG,
    layout.WIRE,
    layout.DONE,
    layout.PROCESS_LOCK,
    layout.CHECKPOINT_TENSORS,
    layout.CHECKPOINT_STATE,
}
# Names that mean another file there: Flower's own config in the deployment's FLWR_HOME.
ALLOWED = {("engines/flower/deploy.py", layout.CONFIG)}


def _imported(tree: ast.AST) -> set[str]:
    """Every module an ``import`` anywhere in ``tree`` names (functions' bodies included)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_the_rundir_package_imports_no_layer_above_it():
    modules = sorted(RUNDIR.glob("*.py"))
    assert {p.stem for p in modules} >= {"__init__", "layout", "lifecycle", "records"}
    for path in modules:
        bad = sorted(
            m for m in _imported(ast.parse(path.read_text())) if m.startswith(ABOVE) or m in ABOVE
        )
        assert not bad, f"{path.relative_to(SRC)} imports {bad}"


def test_the_names_are_spelled_only_in_the_layout():
    spelled = []
    for path in sorted(SRC.rglob("*.py")):
        where = path.relative_to(SRC).as_posix()
        if where == "rundir/layout.py":
            continue
        for name, line in _spelled(ast.parse(path.read_text())):
            if (where, name) not in ALLOWED:
                spelled.append(f"{where}:{line}: {name!r}")
    assert not spelled, "\n".join(spelled)


def _spelled(tree: ast.AST) -> list[tuple[str, int]]:
    """``(name, line)`` of every string constant that is a run directory's file name, alone
    (``path / "metrics.jsonl"``) or as a path piece of an f-string (``f"{run}/metrics.jsonl"``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = node.value.strip("/")
            if name in NAMES:
                found.append((name, node.lineno))
    return found


def test_the_scan_sees_a_spelled_name():
    code = 'a = path / "metrics.jsonl"\nb = f"{run}/checkpoints"\nc = "the metrics.jsonl file"'
    assert _spelled(ast.parse(code)) == [("metrics.jsonl", 1), ("checkpoints", 2)]
