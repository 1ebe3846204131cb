"""The Python API: what ``fedamole run``, ``fedamole report`` and ``fedamole validate`` do, as
functions for notebooks and scripts.

Re-exported by the package (``fedamole.run``, ``fedamole.report``, ...), which imports this module
on first use only: ``import fedamole`` stays cheap, and torch and transformers are imported when a
run starts.

**Overrides** are keyword arguments, a double underscore standing for each dot of the dotted name
the command line takes: ``train__steps=4`` is ``train.steps=4``, ``mole__num_experts=15`` is
``mole.num_experts=15``. Values are Python values (``1e-4``, ``True``, ``["q_proj"]``, ``"text"``);
they go through the command line's parser, so a config and its overrides pass or fail here exactly
as they do there, with the same :class:`~fedamole.config.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fedamole.config import Config, ConfigError, load, parse_overrides
from fedamole.rundir import RunDir, config_mismatch, default_run_dir

if TYPE_CHECKING:
    from fedamole.analysis.results import Run
    from fedamole.engines.summary import RunResult

__all__ = [
    "ResumeMismatchError",
    "StoredConfigError",
    "load_config",
    "load_runs",
    "report",
    "run",
    "run_path",
    "start_run",
]

ROUND_MODES = ("best", "last")
REPORT_FORMATS = ("md", "csv")


def load_config(path: str | Path | Config | None = None, **overrides: Any) -> Config:
    """The validated config: ``configs/defaults.toml`` overlaid with ``path`` and ``overrides``.

    What ``fedamole validate PATH OVERRIDES...`` prints, as a frozen
    :class:`~fedamole.config.Config`; ``path=None`` gives the defaults alone, and a ``Config``
    gives a copy with the overrides applied.

    Example::

        cfg = fedamole.load_config("configs/smoke.toml", mole__num_experts=6)
        cfg.mole.num_experts  # 6

    Raises:
        ConfigError: every type, range and feasibility error at once, each naming its field.
        FileNotFoundError: ``path`` does not exist.
    """
    return _resolve(path, overrides)


def run(
    config: str | Path | Config,
    /,
    *,
    run_dir: str | Path | None = None,
    engine: Literal["embedded", "flower"] = "embedded",
    resume: bool = False,
    overwrite: bool = False,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    **overrides: Any,
) -> RunResult:
    """Run one experiment, write its run directory and return its summary.

    ``fedamole run CONFIG OVERRIDES... --run-dir ... --engine ...`` as a function.

    Args:
        config: an experiment TOML (a diff over ``configs/defaults.toml``), or a
            :class:`~fedamole.config.Config` (from :func:`load_config`).
        run_dir: the run directory; by default ``run.out_dir/run.name`` (relative to the current
            directory), as on the command line.
        engine: ``"embedded"`` (every client in this process) or ``"flower"`` (Flower's
            simulation engine; needs ``fedamole[flower]``), with the same results.
        resume: continue the run in ``run_dir`` from its last checkpoint (same config).
        overwrite: move an existing ``run_dir`` aside and start again.
        on_record: called with every record written to ``metrics.jsonl`` as it is written (a
            dict such as ``{"round": 1, "client": 0, "split": "train", "metric": "step_loss",
            "step": 3, "value": 2.1}``), e.g. to forward it to W&B or MLflow; after the
            TensorBoard mirror (``run__tensorboard="tb"``) and the ``run.hooks`` the config
            names. One that raises is logged and the run goes on.
        **overrides: ``section__field=value``, e.g. ``train__steps=4`` for ``train.steps=4``.

    Returns:
        The :class:`~fedamole.engines.summary.RunResult`: ``run_dir``, the last round, per-client
        test metrics of the first and last rounds (``first``, ``last``), bytes up and down.

    Example::

        result = fedamole.run("configs/smoke.toml", run_dir="runs/try", train__steps=4)
        result.last[0]["score"]  # client 0's test score after the last round

        losses = []  # every optimizer step's training loss, as the run goes

        def keep(record):
            if record["metric"] == "step_loss":
                losses.append(record["value"])

        fedamole.run("configs/smoke.toml", run_dir="runs/try", overwrite=True, on_record=keep)

    A run that will take hours on the CPU logs a warning with its size and how to shrink it
    before it starts (docs/config.md#run-size).

    Raises:
        TypeError: ``config`` is ``None`` (the defaults alone are a paper-scale run: pass
            ``fedamole.load_config()`` to mean them), or ``on_record`` is not callable.
        ConfigError: a bad config or override, or what the checks before a run find: the data
            path, the device, the model name and its target modules (nothing has started).
        ValueError: an unknown engine, ``resume`` and ``overwrite`` together, or ``resume`` of a
            run started with another configuration.
        fedamole.rundir.HookError: (a ``ValueError``) a ``run.hooks`` entry does not import,
            or ``run.tensorboard`` is set without TensorBoard installed (nothing has started).
        fedamole.rundir.RunDirError: ``run_dir`` exists (pass ``resume`` or ``overwrite``), or
            is in use by another process.
        fedamole.engines.common.RunFailedError: a round in which no client succeeded.
    """
    from fedamole.engines import ENGINES

    if config is None:
        raise TypeError(
            "fedamole.run() needs a config: an experiment TOML such as 'configs/demo.toml' (a "
            "few minutes on a CPU) or a Config; the defaults alone are the paper's scale (10 "
            "clients x 30 rounds x 200 steps, hours on a CPU): pass fedamole.load_config() to "
            "mean them"
        )
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if resume and overwrite:
        raise ValueError("resume continues the run and overwrite starts it again: choose one")
    if on_record is not None and not callable(on_record):
        raise TypeError(
            f"on_record must be a callable taking one record (a dict), got "
            f"{type(on_record).__name__}"
        )
    cfg = _resolve(config, overrides)
    return start_run(
        cfg, run_dir, engine=engine, resume=resume, overwrite=overwrite, on_record=on_record
    )


class ResumeMismatchError(ValueError):
    """A run directory to resume was started with another configuration: ``fields`` differ.

    The message says how to resume from Python; ``fedamole run`` prints its own from
    ``run_dir`` and ``fields``.
    """

    def __init__(self, run_dir: Path, fields: Sequence[str]) -> None:
        self.run_dir, self.fields = run_dir, list(fields)
        super().__init__(
            f"{run_dir} was started with another configuration (differs in "
            f"{', '.join(self.fields)}); resume it with the same config and overrides, or with its "
            f"own: fedamole.run({str(RunDir(run_dir).config)!r}, run_dir={str(run_dir)!r}, "
            "resume=True)"
        )


class StoredConfigError(ConfigError):
    """The ``config.toml`` of a run directory to resume is not a valid config (at ``path``)."""

    def __init__(self, path: Path, errors: Sequence[str]) -> None:
        super().__init__(errors)
        self.path = path


def run_path(cfg: Config, run_dir: str | Path | None = None) -> Path:
    """The run directory: ``run_dir`` when given, else ``run.out_dir/run.name`` (``~`` expanded,
    relative to the current directory)."""
    return Path(run_dir).expanduser() if run_dir is not None else default_run_dir(cfg.run)


def start_run(
    cfg: Config,
    run_dir: str | Path | None = None,
    *,
    engine: str = "embedded",
    resume: bool = False,
    overwrite: bool = False,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Run the validated ``cfg`` in :func:`run_path`: what :func:`run` and ``fedamole run`` both
    do once they have checked their own arguments. A ``resume`` first compares ``cfg`` with the
    run directory's ``config.toml`` (fields that change no result aside); one that does not load
    or differs is no obstacle when the checkpoint was written with ``cfg`` (the resume writes it
    again, docs/run-directory.md#what-a-resume-checks).

    Raises:
        StoredConfigError: (a :class:`~fedamole.config.ConfigError`) ``resume`` of a run
            directory whose ``config.toml`` does not validate.
        ResumeMismatchError: (a ``ValueError``) ``resume`` of a run started with another
            configuration.
        ValueError, fedamole.rundir.RunDirError, fedamole.engines.common.RunFailedError: as
            :func:`run` says.
    """
    target = run_path(cfg, run_dir)
    stored = RunDir(target).config
    if resume and stored.exists():
        try:
            mismatch = config_mismatch(load(stored), cfg)
        except ConfigError as exc:
            if not _checkpoint_agrees(target, cfg):
                raise StoredConfigError(stored, exc.errors) from None
        else:
            if mismatch is not None and not _checkpoint_agrees(target, cfg):
                raise ResumeMismatchError(target, mismatch.fields)
        # else a damaged config.toml beside a checkpoint of cfg: the resume writes it again
    from fedamole.engines import run_experiment

    return run_experiment(
        cfg, target, engine=engine, resume=resume, overwrite=overwrite, on_record=on_record
    )


def _checkpoint_agrees(run_dir: Path, cfg: Config) -> bool:
    """Whether the checkpoint a resume of ``run_dir`` would start from was written with ``cfg``
    (then a ``config.toml`` that differs was damaged, and the resume writes it again)."""
    from fedamole.rundir import checkpoint_config

    saved = checkpoint_config(RunDir(run_dir).checkpoints)
    return saved is not None and config_mismatch(saved, cfg) is None


def load_runs(*paths: str | Path) -> list[Run]:
    """Every run directory under ``paths`` (run directories, or folders such as a sweep's) as a
    :class:`~fedamole.analysis.results.Run`: its ``config`` (a dict), its scores per round.

    Example::

        runs = fedamole.load_runs("runs/sweeps/main")
        [run.name for run in runs if run.finished]
    """
    from fedamole.analysis.results import load_runs as load

    return load(_paths(paths, "load_runs"))


def report(
    *paths: str | Path,
    round_mode: Literal["best", "last"] = "best",
    ours: str = "FedAMoLE",
    format: Literal["md", "csv"] = "md",
) -> str:
    """The tables ``fedamole report PATHS... --round ROUND_MODE`` prints: mean ± std over seeds per
    method and scenario, the gain of ``ours``, per-client, communication and time tables.

    Args:
        paths: run directories, or folders searched for them (a sweep).
        round_mode: per seed, the ``"best"`` round (the maximum client-mean score over rounds) or
            the ``"last"``.
        ours: the method whose relative gain is reported.
        format: ``"md"`` (markdown) or ``"csv"``.

    Example::

        from IPython.display import Markdown
        Markdown(fedamole.report("runs/sweeps/main", round_mode="best"))

    Raises:
        ValueError: no run with test scores under ``paths``, or an unknown ``round_mode`` or
            ``format``.
    """
    from fedamole.analysis.report import build_report, format_csv, format_markdown

    if round_mode not in ROUND_MODES:
        raise ValueError(f"round_mode {round_mode!r}: choose one of {', '.join(ROUND_MODES)}")
    if format not in REPORT_FORMATS:
        raise ValueError(f"format {format!r}: choose one of {', '.join(REPORT_FORMATS)}")
    result = build_report(_paths(paths, "report"), round_mode=round_mode, ours=ours)
    return format_markdown(result) if format == "md" else format_csv(result)


def _paths(paths: tuple[Any, ...], caller: str) -> list[str | Path]:
    if not paths:
        raise TypeError(f"{caller}() needs at least one run directory or folder of runs")
    for path in paths:
        if not isinstance(path, str | Path):
            raise TypeError(
                f"{caller}() takes paths as separate arguments, got {type(path).__name__}; "
                f"unpack a list: {caller}(*paths)"
            )
    return list(paths)


def _resolve(config: str | Path | Config | None, overrides: Mapping[str, Any]) -> Config:
    """``config`` with ``overrides`` applied and everything validated at once."""
    dotted: dict[str, Any] = {}
    for name, value in overrides.items():
        if "__" not in name:
            raise TypeError(
                f"unexpected keyword argument {name!r}: an override is section__field=value "
                "(train__steps=4 sets train.steps)"
            )
        dotted[name.replace("__", ".")] = value
    items, errors = [], []
    for key, value in dotted.items():
        try:
            items.append(_as_override(key, value))
        except ConfigError as exc:
            errors += exc.errors
    if errors:
        raise ConfigError(errors)
    if isinstance(config, Config):
        return config.replace(**parse_overrides(items))
    return load(config, items)


def _as_override(key: str, value: Any) -> str:
    """``key=value`` as the command line writes it: the value as a TOML literal."""
    import tomli_w

    if isinstance(value, Path):
        value = str(value)
    if value is None:
        raise ConfigError([f"override `{key}` = None: TOML has no None; give a value or omit it"])
    if isinstance(value, Mapping):
        raise ConfigError(
            [f"override `{key}`: a table; set its fields one by one (section__table__field=value)"]
        )
    try:
        literal = tomli_w.dumps({"v": value})
    except TypeError:
        literal = ""
    if not literal.startswith("v = "):  # not TOML, or a list of tables
        raise ConfigError(
            [f"override `{key}` = {value!r}: not a TOML value ({type(value).__name__})"]
        )
    return f"{key}={literal.removeprefix('v = ').strip()}"
