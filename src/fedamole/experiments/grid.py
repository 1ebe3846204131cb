"""Sweep grid files: a base experiment, fixed overrides and axes, expanded into named runs.

A grid is a TOML file (``configs/sweeps/*.toml``)::

    extends = "main.toml"              # optional: another grid this one modifies
    [sweep]
    name = "main"
    base = "../paper/base.toml"        # experiment TOML, relative to this file (default: defaults)
    out_dir = "runs/sweeps/main"       # parent of the runs, relative to the working dir, ~ expanded
    run_name = "{scenario}__{method}__{seed}"   # optional; default: the labels joined by "__"

    [overrides]                        # fixed dotted overrides of every run
    "train.steps" = 200

    [axes.scenario]                    # an axis: label -> overrides (several keys at once)
    "snli_dir0.1" = { config = "../paper/snli_dir0.1.toml" }   # `config`: this run's experiment
    [axes.method]
    "FedAMoLE-R" = { "federation.algorithm" = "fedamole", "federation.assignment" = "static" }
    [axes.seed]
    "run.seed" = [42, 62, 82]          # shorthand: one key, one value per label (seed42, ...)

    [[patch]]                          # extra overrides of the runs matching every label given
    when = { method = "FedAMoLE", clients = "N10" }
    set = { "mole.clients_per_expert" = 2 }
    [[exclude]]                        # runs left out of the product
    scenario = "ni_task"
    method = ["FDLoRA"]

Expansion is the cartesian product of the axes in file order. A run's config is its experiment file
(an axis value's ``config``, else ``base``) overlaid with the fixed overrides, the axis overrides
(in axis order), the matching patches and ``run.name``/``run.out_dir``; it is validated once, as
``fedamole validate`` would. With ``extends``, the child's ``[sweep]`` and ``[overrides]`` keys win,
an axis of the child replaces the parent's axis of the same name (an empty table removes it), and a
child's ``patch``/``exclude`` lists replace the parent's. Paths are resolved against the file that
names them.

Refused, rather than done silently: an axis without labels (other than a child's empty table
removing its parent's axis), exclusions or an ``--only`` selection that leave no run, and
``run.name`` or ``run.out_dir`` among the overrides (the sweep names and places every run itself).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedamole.config import Config, ConfigError, load, read_toml_file, resolve_config_path

__all__ = ["Grid", "GridError", "GridRun", "expand", "load_grid", "resolve_config", "select"]

_NAME_RE = re.compile(r"^[A-Za-z0-9._+=-]+$")
_SWEEP_KEYS = frozenset({"name", "description", "base", "out_dir", "run_name"})
_TOP_KEYS = frozenset({"extends", "sweep", "overrides", "axes", "patch", "exclude"})
_SWEEP_SETS = ("run.name", "run.out_dir")  # every run's, set by expand()


class GridError(ValueError):
    """Every problem of a grid file (or of its expanded runs), one per line."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{len(self.errors)} grid error(s):\n{lines}")


@dataclass(frozen=True)
class GridRun:
    """One expanded run: its name, its axis labels and how its config is built."""

    name: str
    labels: Mapping[str, str]  # axis -> label
    config: Path | None  # experiment TOML, None = configs/defaults.toml alone
    overrides: Mapping[str, Any]  # dotted key -> value, applied in order
    run_dir: Path


@dataclass(frozen=True)
class Grid:
    """A parsed grid file (paths absolute, except ``out_dir`` which is relative to the cwd)."""

    name: str
    path: Path
    base: Path | None
    out_dir: Path
    overrides: Mapping[str, Any]
    axes: Mapping[str, Mapping[str, Mapping[str, Any]]]  # axis -> label -> overrides
    run_name: str | None = None
    description: str = ""
    patches: tuple[tuple[Mapping[str, Any], Mapping[str, Any]], ...] = ()
    excludes: tuple[Mapping[str, Any], ...] = ()


def load_grid(path: str | Path, *, out_dir: str | Path | None = None) -> Grid:
    """Read and check a grid file (and the grids it extends).

    Args:
        path: the grid TOML, or the name of a shipped one (``sweeps/rsea``,
            :func:`~fedamole.config.files.resolve_config_path`).
        out_dir: replaces the grid's ``sweep.out_dir``.

    Raises:
        GridError: every structural problem at once (unknown keys, bad labels, unknown axes).
        FileNotFoundError: the grid or a file it names does not exist.
    """
    path = resolve_config_path(path, grid=True)
    data = _read(Path(path).resolve(), seen=())
    errors: list[str] = []
    sweep = data.get("sweep", {})
    raw_axes = data.get("axes", {})
    axes = {name: _axis(name, values, errors) for name, values in raw_axes.items()}
    errors += [
        f"axis `{name}` has no labels; give it at least one label or remove it"
        for name, values in raw_axes.items()
        if not axes[name] and _is_empty(values)
    ]
    axes = {name: values for name, values in axes.items() if values}
    grid = Grid(
        name=sweep.get("name", Path(path).stem),
        path=Path(path).resolve(),
        base=sweep.get("base"),
        out_dir=Path(
            out_dir or sweep.get("out_dir", f"runs/sweeps/{Path(path).stem}")
        ).expanduser(),
        overrides=dict(data.get("overrides", {})),
        axes=axes,
        run_name=sweep.get("run_name"),
        description=sweep.get("description", ""),
        patches=tuple((p.get("when", {}), p.get("set", {})) for p in data.get("patch", [])),
        excludes=tuple(data.get("exclude", [])),
    )
    errors += _check(grid, data)
    if errors:
        raise GridError([f"{path}: {e}" for e in errors])
    return grid


def expand(grid: Grid) -> list[GridRun]:
    """The grid's runs, in product order (the first axis varies slowest).

    Raises:
        GridError: duplicate or unusable run names, or a run whose axes name two ``config`` files.
    """
    runs, errors = [], []
    names = list(grid.axes)
    for combo in itertools.product(*(grid.axes[a].items() for a in names)):
        labels = {axis: label for axis, (label, _) in zip(names, combo, strict=True)}
        if any(_matches(labels, ex) for ex in grid.excludes):
            continue
        layers = [grid.overrides] + [values for _, values in combo]
        layers += [patch for when, patch in grid.patches if _matches(labels, when)]
        configs = {str(v["config"]) for v in layers if "config" in v}
        name = _run_name(grid, labels)
        if len(configs) > 1:
            errors.append(f"run {name}: several axes set `config` ({sorted(configs)}); keep one")
        if not _NAME_RE.match(name):
            errors.append(f"run name {name!r} may use only letters, digits and ._+=-")
        overrides = {k: v for layer in layers for k, v in layer.items() if k != "config"}
        overrides["run.name"] = name
        overrides["run.out_dir"] = str(grid.out_dir)
        config = Path(configs.pop()) if configs else grid.base
        runs.append(GridRun(name, labels, config, overrides, grid.out_dir / name))
    if not runs and not errors:
        errors.append(
            "[[exclude]] leaves no run: every run of the axes' product is excluded; narrow the "
            "exclusions"
        )
    seen = [r.name for r in runs]
    errors += [
        f"run name {n!r} occurs twice; set `sweep.run_name`"
        for n in sorted(set(seen))
        if seen.count(n) > 1
    ]
    if errors:
        raise GridError([f"{grid.path}: {e}" for e in errors])
    return runs


def select(grid: Grid, runs: list[GridRun], only: Mapping[str, list[str]]) -> list[GridRun]:
    """The runs whose labels match ``only`` (axis -> allowed labels), e.g. ``{"method": [...]}``.

    Raises:
        GridError: an axis or label that the grid does not have.
    """
    errors = []
    for axis, labels in only.items():
        if axis not in grid.axes:
            errors.append(f"--only: unknown axis {axis!r}; axes are {list(grid.axes)}")
            continue
        errors += [
            f"--only: axis `{axis}` has no label {label!r}; labels are {list(grid.axes[axis])}"
            for label in labels
            if label not in grid.axes[axis]
        ]
    if errors:
        raise GridError(errors)
    chosen = [run for run in runs if _matches(run.labels, dict(only))]
    if runs and not chosen:
        shown = " ".join(f"{axis}={','.join(labels)}" for axis, labels in only.items())
        raise GridError(
            [
                f"--only {shown} selects no run of the {len(runs)} the grid expands to (its "
                "[[exclude]] tables leave out the others); choose other labels"
            ]
        )
    return chosen


def resolve_config(run: GridRun) -> Config:
    """The validated config of one run.

    Raises:
        ConfigError: every type, range and feasibility error (as ``fedamole validate``).
    """
    items = [f"{key}={_toml_literal(value)}" for key, value in run.overrides.items()]
    return load(run.config, items)


def _toml_literal(value: Any) -> str:
    return tomli_w.dumps({"v": value}).partition("=")[2].strip()


def _run_name(grid: Grid, labels: Mapping[str, str]) -> str:
    if grid.run_name is None:
        return "__".join(labels.values()) or grid.name
    return grid.run_name.format(**labels)


def _matches(labels: Mapping[str, str], when: Mapping[str, Any]) -> bool:
    for axis, wanted in when.items():
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if labels.get(axis) not in allowed:
            return False
    return True


def _read(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path in seen:
        raise GridError([f"{path}: `extends` loops back to itself"])
    try:
        data = read_toml_file(path, "grid file")
    except ConfigError as exc:
        raise GridError(exc.errors) from None
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise GridError([f"{path}: unknown top-level key(s) {unknown}; use {sorted(_TOP_KEYS)}"])
    _absolutize(data, path.parent)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise GridError([f"{path}: `extends` = {parent!r} must be the path of another grid file"])
    merged = _read((path.parent / Path(parent).expanduser()).resolve(), (*seen, path))
    for key in ("sweep", "overrides"):
        merged[key] = {**merged.get(key, {}), **data.get(key, {})}
    inherited = merged.get("axes", {})
    axes = {**inherited, **data.get("axes", {})}
    # an empty table removes the parent's axis of that name (an empty one of its own is an error)
    merged["axes"] = {k: v for k, v in axes.items() if not (v == {} and k in inherited)}
    for key in ("patch", "exclude"):
        if key in data:
            merged[key] = data[key]
    return merged


def _absolutize(data: dict[str, Any], folder: Path) -> None:
    """Resolve ``sweep.base`` and every ``config`` value against the grid file's folder."""
    sweep = data.get("sweep", {})
    if "base" in sweep:
        sweep["base"] = (folder / Path(sweep["base"]).expanduser()).resolve()
    tables = [data.get("overrides", {})]
    tables += [v for axis in data.get("axes", {}).values() for v in axis.values()]
    tables += [p.get("set", {}) for p in data.get("patch", [])]
    for table in tables:
        if isinstance(table, dict) and isinstance(table.get("config"), str):
            table["config"] = str((folder / Path(table["config"]).expanduser()).resolve())


def _axis(name: str, values: Any, errors: list[str]) -> dict[str, dict[str, Any]]:
    """An axis as label -> overrides, expanding the ``"key" = [v1, v2]`` shorthand."""
    if not isinstance(values, dict):
        errors.append(f"axis `{name}` must be a table of label = {{overrides}}")
        return {}
    if len(values) == 1 and isinstance(next(iter(values.values())), list):
        key, items = next(iter(values.items()))
        return {f"{name}{_label(v)}": {key: v} for v in items}
    out = {}
    for label, overrides in values.items():
        if not isinstance(overrides, dict):
            errors.append(
                f"axis `{name}`, label {label!r}: expected a table of overrides such as "
                f'{{ "train.lr" = 1e-4 }}, got {overrides!r}'
            )
            continue
        out[str(label)] = dict(overrides)
    return out


def _is_empty(values: Any) -> bool:
    """An axis table with no label, or the shorthand ``"key" = []``."""
    if not isinstance(values, dict):
        return False
    return not values or (len(values) == 1 and next(iter(values.values())) == [])


def _label(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _check(grid: Grid, data: Mapping[str, Any]) -> list[str]:
    errors = []
    unknown = sorted(set(data.get("sweep", {})) - _SWEEP_KEYS)
    if unknown:
        errors.append(f"unknown [sweep] key(s) {unknown}; use {sorted(_SWEEP_KEYS)}")
    if grid.base is not None and not Path(grid.base).exists():
        errors.append(f"`sweep.base` {grid.base} does not exist")
    tables = [("[overrides]", grid.overrides)]
    tables += [(f"axis `{a}` {lab!r}", o) for a, v in grid.axes.items() for lab, o in v.items()]
    tables += [(f"patch {i}", p) for i, (_, p) in enumerate(grid.patches)]
    for where, table in tables:
        for key, value in table.items():
            if key == "config":
                if not Path(value).exists():
                    errors.append(f"{where}: `config` {value} does not exist")
            elif "." not in key:
                errors.append(f"{where}: override key {key!r} must look like `section.field`")
            elif key in _SWEEP_SETS:
                errors.append(
                    f"{where}: `{key}` = {value!r} is set by the sweep: the sweep names every run "
                    "(`sweep.run_name`, default: its labels joined by '__') and puts it in "
                    "`sweep.out_dir` (or --out); remove the override"
                )
    selectors = [("patch `when`", w) for w, _ in grid.patches]
    selectors += [("exclude", e) for e in grid.excludes]
    for where, sel in selectors:
        for axis, wanted in sel.items():
            if axis not in grid.axes:
                errors.append(f"{where}: unknown axis {axis!r}; axes are {list(grid.axes)}")
                continue
            for label in wanted if isinstance(wanted, list) else [wanted]:
                if label not in grid.axes[axis]:
                    errors.append(
                        f"{where}: axis `{axis}` has no label {label!r}; "
                        f"labels are {list(grid.axes[axis])}"
                    )
    if grid.run_name is not None:
        missing = sorted(set(re.findall(r"{(\w+)}", grid.run_name)) - set(grid.axes))
        if missing:
            errors.append(f"`sweep.run_name` names unknown axes {missing}; axes: {list(grid.axes)}")
    return errors
