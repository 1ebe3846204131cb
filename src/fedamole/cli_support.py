"""What the commands of :mod:`fedamole.cli` share: the error exit, loading a config or exiting,
the argument and option types, and the command class whose plain help reads as written.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shlex
import signal
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, get_args, get_origin, get_type_hints

import click
import typer
from typer.core import TyperCommand
from typer.models import ArgumentInfo

from fedamole.config import Config, ConfigError, load

__all__ = [
    "FIGURES",
    "ROUND_HELP",
    "ConfigArg",
    "Engine",
    "HelpCommand",
    "Interrupted",
    "OverridesArg",
    "Projection",
    "ReportFormat",
    "RoundMode",
    "RoundOpt",
    "RunsArg",
    "check_or_exit",
    "fail",
    "interrupts_as_exceptions",
    "load_or_exit",
    "require_matplotlib",
    "what_was_saved",
    "writable_or_exit",
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` to stderr and exit with ``code``: 2 for a bad input (config,
    arguments, files), 1 when the work itself failed."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code) from None


def load_or_exit(config: Path, overrides: list[str] | None) -> Config:
    """The validated config, or :func:`fail` with every error (code 2)."""
    try:
        return load(config, overrides or [])
    except ConfigError as exc:
        fail(f"{config}: {exc}")
    except FileNotFoundError as exc:
        fail(str(exc))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM during a command: raised in the main thread, so that every
    ``finally`` runs (logs flushed and closed, the run's lock released) and nothing already
    written is lost; ``exit_code`` is 128 + the signal's number (130, 143)."""

    def __init__(self, signum: int):
        self.signum, self.exit_code = signum, 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


@contextlib.contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` while the block runs (SIGTERM would end
    the process without any ``finally``); the previous handlers come back after it."""

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def what_was_saved(run_dir: Path, start: list[str], engine: str = "embedded") -> str:
    """What a stopped ``fedamole run`` left in ``run_dir`` and the command that goes on from
    there: the resume of the checkpoint's round when there is one, else the start again
    (``start``: the command's own arguments after ``fedamole run``, ``--overwrite`` added)."""
    from fedamole.rundir import RunDir, checkpoint_rounds

    run = RunDir(run_dir)
    rounds = checkpoint_rounds(run.checkpoints) if run.holds_checkpoint else {}
    if rounds:
        name, rnd = max(rounds.items(), key=lambda item: item[1] if item[1] is not None else -1)
        resume = ["fedamole", "run", str(run.config), "--resume", "--run-dir", str(run_dir)]
        if engine != "embedded":
            resume += ["--engine", engine]
        return (
            f"round {rnd} is saved in {run.checkpoints / name} (every record written so far is "
            f"kept); continue with: {shlex.join(resume)}"
        )
    if run.path.exists() and any(run.path.iterdir()):
        again = ["fedamole", "run", *start, "--overwrite"]
        return (
            f"no round was saved in {run_dir} (nothing to resume from); start again with: "
            f"{shlex.join(again)}"
        )
    again = ["fedamole", "run", *start]
    return f"nothing was written to {run_dir}; start again with: {shlex.join(again)}"


def writable_or_exit(path: Path, option: str, *, entry: bool = False) -> None:
    """:func:`fail` unless the folder ``path`` (with ``entry``: a file or folder created in its
    parent) can be created or written: its nearest existing ancestor must be a writable folder (a
    file in the way, or a read-only folder, would otherwise end the command with a traceback)."""
    path = Path(path).expanduser()
    if not entry and path.exists() and not path.is_dir():
        fail(f"{option} {path} is a file, not a folder; give a folder (new or existing)")
    existing = path.parent if entry else path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        fail(f"{option} {path}: {existing} is a file, not a folder; give a path in a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        fail(f"{option} {path}: {existing} is not writable; give a path in a writable folder")


def require_matplotlib() -> None:
    """:func:`fail` when matplotlib cannot be imported because the ``MPLBACKEND`` environment
    variable names no backend (fedamole draws on Agg, off screen: it needs none)."""
    backend = os.environ.get("MPLBACKEND")
    try:
        import matplotlib  # noqa: F401  (reads MPLBACKEND)
    except ValueError as exc:
        if not backend:
            raise
        fail(
            f"the environment variable MPLBACKEND={backend!r} is not a matplotlib backend "
            f"({str(exc).split(';')[0]}); unset MPLBACKEND (fedamole draws off screen and needs "
            "no backend) or set it to one matplotlib knows, e.g. MPLBACKEND=Agg"
        )


def check_or_exit(config: Path, cfg: Config) -> None:
    """:func:`fail` with every problem :func:`fedamole.preflight.preflight` finds (the device,
    the model and its target modules); what this machine lacks (the data path, a hub model that
    is neither cached nor reachable) is only noted on stderr: ``fedamole run`` stops on it here,
    but the config may be meant for another machine."""
    from fedamole.preflight import preflight

    found = preflight(cfg)
    if found.errors:
        fail(f"{config}: {ConfigError(found.errors)}")
    for absent in found.absent:
        typer.echo(f"# note: {absent}. `fedamole run` stops on this here", err=True)


ConfigArg = Annotated[
    Path,
    typer.Argument(
        help="Experiment TOML (a diff over configs/defaults.toml), or the name of a config "
        "shipped with fedamole, e.g. paper/snli_dir0.1 (an unknown name lists them)."
    ),
]


# Choices are Enums: the one way every typer release we admit (and its click, bundled or not)
# turns into a checked choice with the values listed in --help.
class Engine(StrEnum):
    embedded = "embedded"
    flower = "flower"


class RoundMode(StrEnum):
    best = "best"
    last = "last"


class ReportFormat(StrEnum):
    md = "md"
    csv = "csv"


class Projection(StrEnum):
    pca = "pca"
    tsne = "tsne"


# The figures of ``fedamole plot``: fedamole.analysis.plots.FIGURES (a test keeps them equal),
# named here so that the command line does not import matplotlib to print its help.
FIGURES = (
    "ablation",
    "alpha",
    "clients",
    "experts",
    "heatmap",
    "privacy",
    "rounds",
    "routing",
    "rsea",
    "sensitivity",
)


OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Dotted overrides such as `mole.num_experts=15 train.lr=1e-4`."),
]


ROUND_HELP = "Per seed: the best round (the maximum client-mean score over rounds) or the last."
RoundOpt = Annotated[RoundMode, typer.Option("--round", help=ROUND_HELP)]
RunsArg = Annotated[
    list[Path], typer.Argument(help="Run directories, or folders searched for them (a sweep).")
]


class HelpCommand(TyperCommand):
    """A typer command whose plain help (``rich_markup_mode=None``) reads as written.

    Three fixes, each a no-op where the libraries do not need it:

    - typer escapes the ``[default: ...]`` and ``[required]`` notes for rich's markup whenever rich
      is installed, even with rich markup off, so plain help showed ``\\[default: ...]``; the
      escape is undone here.
    - click 8.5 resets the help text typer gives an argument (``Parameter.__init__`` now takes
      ``help`` itself and typer does not pass it on), so arguments had no description; it is
      restored from the command function's ``typer.Argument(help=...)``.
    - click 8.5 also lists the arguments itself ("Positional arguments"), which typer already
      does ("Arguments"); they are listed once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        helps = _argument_help(self.callback)
        for param in self.params:
            if isinstance(param, click.Argument) and not param.help:
                param.help = helps.get(param.name or "")

    def format_arguments(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Nothing: click 8.5 lists the arguments here too; :meth:`format_options` lists them."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows: dict[str, list[tuple[str, str]]] = {"argument": [], "option": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and param.param_type_name in rows:
                name, text = record
                rows[param.param_type_name].append((name, text.replace("\\[", "[")))
        for title, kind in (("Arguments", "argument"), ("Options", "option")):
            if rows[kind]:
                with formatter.section(title):
                    formatter.write_dl(rows[kind])


def _argument_help(callback: Callable[..., Any] | None) -> dict[str, str]:
    """``{parameter: help}`` of the ``typer.Argument`` parameters of a command function."""
    if callback is None:
        return {}
    hints = get_type_hints(inspect.unwrap(callback), include_extras=True)
    return {
        name: info.help
        for name, hint in hints.items()
        if get_origin(hint) is Annotated
        for info in get_args(hint)[1:]
        if isinstance(info, ArgumentInfo) and info.help
    }
