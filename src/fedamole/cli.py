"""The ``fedamole`` command line: parses, loads the config, calls one library function.

Run ``fedamole --help`` or ``fedamole COMMAND --help`` for usage and examples.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin, get_type_hints

import click
import typer
from typer.core import TyperCommand
from typer.models import ArgumentInfo

from fedamole.config import Config, ConfigError, differing_fields, load

__all__ = ["app", "main"]

app = typer.Typer(
    name="fedamole",
    help=(
        "Personalized federated fine-tuning of LLMs with heterogeneous mixtures of LoRA experts "
        "(FedAMoLE).\n\n"
        "Examples:\n\n"
        "  fedamole run configs/demo.toml\n\n"
        "  fedamole validate configs/paper/snli_dir1.0.toml federation.num_clients=20\n\n"
        "  fedamole partition configs/scenarios/synthetic_task.toml --plot clients.png"
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class _Command(TyperCommand):
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


def _version(value: bool) -> None:
    if value:
        from fedamole import __version__

        typer.echo(f"fedamole {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Personalized federated fine-tuning of LLMs with heterogeneous mixtures of LoRA experts."""


def _load(config: Path, overrides: list[str] | None) -> Config:
    try:
        return load(config, overrides or [])
    except ConfigError as exc:
        typer.echo(f"error: {config}: {exc}", err=True)
        raise typer.Exit(2) from None
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command(cls=_Command)
def validate(config: ConfigArg, overrides: OverridesArg = None) -> None:
    """Print the resolved config, or every configuration and feasibility error at once.

    Example: fedamole validate configs/paper/base.toml mole.num_experts=3
    """
    import tomli_w

    cfg = _load(config, overrides)
    typer.echo(tomli_w.dumps(cfg.to_dict()), nl=False)
    typer.echo(f"# {config}: valid", err=True)


@app.command(cls=_Command)
def run(
    config: ConfigArg,
    overrides: OverridesArg = None,
    engine: Annotated[
        Engine,
        typer.Option(
            help="`embedded`: every client in this process. `flower`: Flower's simulation engine "
            "(Ray; needs `make install-flower`), same results."
        ),
    ] = Engine.embedded,
    run_dir: Annotated[
        Path | None, typer.Option(help="Run directory (default: run.out_dir/run.name).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue a run from its last checkpoint.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Move an existing run directory aside and start again.")
    ] = False,
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Also write every metrics.jsonl record as a TensorBoard scalar, to DIR/<run "
            "directory's name> (sets run.tensorboard; needs `pip install "
            "'fedamole[tensorboard]'`). View with `tensorboard --logdir DIR`.",
        ),
    ] = None,
) -> None:
    """Run one experiment and write its run directory.

    Besides metrics.jsonl (per round and client, and the loss and lr of every training step),
    records can go to TensorBoard (--tensorboard DIR) and to your own functions
    (run.hooks='["package.module:function"]', each called with every record: W&B, MLflow).

    Example: fedamole run configs/smoke.toml train.steps=4 --run-dir runs/try

    Example: fedamole run configs/demo.toml --tensorboard tb
    """
    from fedamole.checkpoint import CheckpointError
    from fedamole.engines import run_experiment
    from fedamole.engines.common import RunFailedError
    from fedamole.tracking import RunDirError

    if resume and overwrite:
        typer.echo(
            "error: --resume continues the run and --overwrite starts it again: choose one",
            err=True,
        )
        raise typer.Exit(2)
    if tensorboard is not None:
        import tomli_w

        literal = tomli_w.dumps({"v": str(tensorboard)}).removeprefix("v = ").strip()
        overrides = [*(overrides or []), f"run.tensorboard={literal}"]
    cfg = _load(config, overrides)
    target = run_dir or Path(cfg.run.out_dir) / cfg.run.name
    if resume and (target / "config.toml").exists():
        differs = differing_fields(_load(target / "config.toml", []), cfg)
        if differs:
            typer.echo(
                f"error: {target} was started with another configuration (differs in "
                f"{', '.join(differs)}); resume it with the same CONFIG and overrides, or with "
                f"its own: fedamole run {target / 'config.toml'} --resume --run-dir {target}",
                err=True,
            )
            raise typer.Exit(2)
    try:
        run_experiment(cfg, target, engine=engine.value, resume=resume, overwrite=overwrite)
    except (RunDirError, CheckpointError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except RunFailedError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:  # a full disk, a file made unwritable mid-run...
        where = f" ({exc.filename})" if exc.filename else ""
        typer.echo(
            f"error: the run stopped: {exc.strerror or exc}{where}. Checkpoints are written "
            f"atomically, so the last one is intact: fix the cause, then continue with "
            f"fedamole run {config} --resume --run-dir {target}",
            err=True,
        )
        raise typer.Exit(1) from None


@app.command(cls=_Command)
def partition(
    config: ConfigArg,
    overrides: OverridesArg = None,
    plot: Annotated[Path | None, typer.Option(help="Write a stacked-bar PNG here.")] = None,
) -> None:
    """Show the client splits only: sizes and per-client category histograms.

    Example: fedamole partition configs/scenarios/synthetic_task.toml --plot clients.png
    """
    from fedamole.data import DataError
    from fedamole.data.report import describe_partition

    cfg = _load(config, overrides)
    try:
        typer.echo(describe_partition(cfg, plot))
    except DataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command(cls=_Command)
def bench(
    which: Annotated[
        str, typer.Argument(help="layer, assign, round, step, or all (layer and assign).")
    ] = "all",
    config: Annotated[
        Path | None, typer.Argument(help="`round`, `step`: the run config to time.")
    ] = None,
    overrides: OverridesArg = None,
    out: Annotated[Path, typer.Option(help="Folder for the JSON results.")] = Path("bench-results"),
    quick: Annotated[bool, typer.Option(help="Small sizes, one repeat (a smoke test).")] = False,
    against: Annotated[
        str | None,
        typer.Option(
            help="`round`, `step`: a git revision (or a folder with another checkout) timed side "
            "by side, alternating process by process."
        ),
    ] = None,
    repeats: Annotated[
        int, typer.Option(min=1, help="`round`, `step`: processes per revision.")
    ] = 2,
    client: Annotated[int, typer.Option(min=0, help="`round`, `step`: the client played.")] = 0,
    algorithm: Annotated[
        list[str] | None,
        typer.Option(
            help="`step` only: an algorithm to time (repeatable; default fedamole, fedit)."
        ),
    ] = None,
    steps: Annotated[int, typer.Option(min=1, help="`step` only: steps timed.")] = 8,
    warmup: Annotated[int, typer.Option(min=0, help="`step` only: steps before timing.")] = 2,
    profiled: Annotated[
        int, typer.Option(min=0, help="`step` only: steps profiled after the timed ones.")
    ] = 2,
) -> None:
    """Run performance benchmarks; each writes JSON and prints a table.

    `round` plays round 1 of one client of CONFIG and times each phase (train, RSEA statistics,
    test scoring, generation, test and eval loss, server aggregation and assignment); with
    --against it times another revision in the same run and prints the speed-up per phase.

    Example: fedamole bench assign --out bench-results

    `step` times the training step alone for FedAMoLE and FedIT: tokens, model FLOPs, achieved
    GFLOP/s against this machine's matrix-product rate on the model's own shapes, and a profile
    by op group (docs/results/performance.md).

    Example: fedamole bench round configs/demo.toml --against main --repeats 3

    Example: fedamole bench step configs/demo.toml --against main --client 1
    """
    from fedamole.bench import BENCHMARKS, run_benchmark

    if which == "step":
        _bench_step(
            config, overrides, out, against, repeats, client, algorithm, steps, warmup, profiled
        )
        return
    if which == "round":
        if config is None:
            typer.echo("error: `bench round` needs a CONFIG, e.g. configs/demo.toml", err=True)
            raise typer.Exit(2)
        from fedamole.bench.round import BenchError, bench_round

        cfg = _load(config, overrides)  # fail early on a bad config, with the usual message
        if client >= cfg.federation.num_clients:
            typer.echo(
                f"error: --client {client}: the config has federation.num_clients = "
                f"{cfg.federation.num_clients}; give a client below it",
                err=True,
            )
            raise typer.Exit(2)
        try:
            bench_round(
                config, overrides or [], out, against=against, repeats=repeats, client=client
            )
        except BenchError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"# round: wrote {out / 'round.json'}")
        return
    if config is not None:
        typer.echo(f"error: only `bench round` and `bench step` take a CONFIG ({config})", err=True)
        raise typer.Exit(2)
    names = sorted(BENCHMARKS) if which == "all" else [which]
    for name in names:
        if name not in BENCHMARKS:
            typer.echo(
                f"error: unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)}, round "
                "or step",
                err=True,
            )
            raise typer.Exit(2)
        result = run_benchmark(name, out, quick=quick)
        typer.echo(f"# {name}: wrote {out / (name + '.json')} ({len(json.dumps(result))} bytes)")


def _bench_step(
    config: Path | None,
    overrides: list[str] | None,
    out: Path,
    against: str | None,
    repeats: int,
    client: int,
    algorithms: list[str] | None,
    steps: int,
    warmup: int,
    profiled: int,
) -> None:
    if config is None:
        typer.echo("error: `bench step` needs a CONFIG, e.g. configs/demo.toml", err=True)
        raise typer.Exit(2)
    from fedamole.bench.round import BenchError
    from fedamole.bench.step import DEFAULT_ALGORITHMS, bench_step

    chosen = list(algorithms or DEFAULT_ALGORITHMS)
    cfg = _load(config, overrides)  # fail early on a bad config, with the usual message
    for name in chosen:  # and on an unknown algorithm, before any process starts
        _load(config, [*(overrides or []), f"federation.algorithm={name}"])
    if client >= cfg.federation.num_clients:
        typer.echo(
            f"error: --client {client}: the config has federation.num_clients = "
            f"{cfg.federation.num_clients}; give a client below it",
            err=True,
        )
        raise typer.Exit(2)
    try:
        bench_step(
            config,
            overrides or [],
            out,
            against=against,
            repeats=repeats,
            client=client,
            algorithms=chosen,
            warmup=warmup,
            steps=steps,
            profiled=profiled,
        )
    except BenchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"# step: wrote {out / 'step.json'}")


ROUND_HELP = "Per seed: the best round (the maximum client-mean score over rounds) or the last."
RoundOpt = Annotated[RoundMode, typer.Option("--round", help=ROUND_HELP)]
RunsArg = Annotated[
    list[Path], typer.Argument(help="Run directories, or folders searched for them (a sweep).")
]


@app.command(cls=_Command)
def sweep(
    grid: Annotated[Path, typer.Argument(help="Grid TOML, e.g. configs/sweeps/main.toml.")],
    dry_run: Annotated[
        bool, typer.Option(help="List the runs (name, overrides, status); run nothing.")
    ] = False,
    jobs: Annotated[
        int, typer.Option(min=1, help="Runs at a time; > 1: subprocesses, GPUs round-robin.")
    ] = 1,
    only: Annotated[
        list[str] | None,
        typer.Option(help="Only the runs with these labels: AXIS=LABEL[,LABEL] (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Parent of the run directories (default: sweep.out_dir).")
    ] = None,
    engine: Annotated[Engine, typer.Option(help="Engine of every run.")] = Engine.embedded,
    devices: Annotated[
        str | None, typer.Option(help="GPU ids for --jobs, e.g. 0,1 (default: all visible).")
    ] = None,
) -> None:
    """Expand a grid into run directories: skip finished runs, resume partial ones.

    Example: fedamole sweep configs/sweeps/main.toml --dry-run --only method=FedAMoLE,FedIT
    """
    from fedamole.experiments.grid import GridError, load_grid
    from fedamole.experiments.sweep import format_plan, plan, run_sweep
    from fedamole.tracking import setup_logging

    selection: dict[str, list[str]] = {}
    for item in only or []:
        axis, sep, labels = item.partition("=")
        if not sep:
            typer.echo(f"error: --only {item!r} must look like AXIS=LABEL[,LABEL]", err=True)
            raise typer.Exit(2)
        selection.setdefault(axis.strip(), []).extend(s.strip() for s in labels.split(","))
    try:
        loaded = load_grid(grid, out_dir=out)
        if dry_run:
            typer.echo(format_plan(loaded, plan(loaded, selection)))
            return
        setup_logging("INFO")
        ids = devices.split(",") if devices else None
        result = run_sweep(loaded, jobs=jobs, engine=engine.value, devices=ids, only=selection)
    except (GridError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if result.failed:
        raise typer.Exit(1)


@app.command(cls=_Command)
def report(
    runs: RunsArg,
    round_mode: RoundOpt = RoundMode.best,
    fmt: Annotated[ReportFormat, typer.Option("--format", help="Output.")] = ReportFormat.md,
    ours: Annotated[str, typer.Option(help="Method whose relative gain is reported.")] = "FedAMoLE",
    rsea: Annotated[
        bool,
        typer.Option(
            help="The RSEA benchmark's tables instead: assignment diagnostics per round, "
            "last-round quality, paired-by-seed verdicts against --ours (markdown)."
        ),
    ] = False,
) -> None:
    """Tables from run directories: mean ± std over seeds, gain, per client, comm and time.

    Example: fedamole report runs/sweeps/main --round best --format md
    """
    from fedamole.analysis.report import build_report, format_csv, format_markdown

    if rsea:
        from fedamole.analysis.rsea_report import rsea_tables

        try:
            typer.echo(rsea_tables(runs, reference=ours), nl=False)
        except (ValueError, FileNotFoundError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        return
    try:
        result = build_report(runs, round_mode=round_mode.value, ours=ours)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(format_markdown(result) if fmt is ReportFormat.md else format_csv(result), nl=False)


@app.command(cls=_Command)
def plot(
    figure: Annotated[str, typer.Argument(metavar="FIGURE", help=f"One of: {', '.join(FIGURES)}.")],
    runs: RunsArg,
    out: Annotated[Path, typer.Option(help="Folder for the PNG and SVG files.")] = Path("figures"),
    round_mode: Annotated[
        RoundMode,
        typer.Option(
            "--round",
            help=ROUND_HELP[:-1] + ", as in `report`. Used by ablation, alpha, clients, heatmap, "
            "privacy and sensitivity; rounds, experts and rsea show every round, routing the last "
            "checkpoint.",
        ),
    ] = RoundMode.best,
    projection: Annotated[
        Projection, typer.Option(help="routing only: tsne needs scikit-learn.")
    ] = Projection.pca,
) -> None:
    """Draw one of the paper's figures from run directories (PNG and SVG).

    Example: fedamole plot rounds runs/sweeps/main --out figures
    """
    from fedamole.analysis.plots import plot as draw
    from fedamole.checkpoint import CheckpointError

    try:
        paths = draw(figure, runs, out, round_mode=round_mode.value, projection=projection.value)
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for path in paths:
        typer.echo(f"wrote {path}")


@app.command("deploy-local", cls=_Command)
def deploy_local(
    config: ConfigArg,
    overrides: OverridesArg = None,
    nodes: Annotated[int, typer.Option(min=1, help="SuperNodes (data owners) to start.")] = 3,
    run_dir: Annotated[
        Path | None, typer.Option(help="Run directory (default: run.out_dir/run.name).")
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Folder for certificates, keys, node data, logs (default: temporary)."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds the whole run may take.")] = 1800.0,
) -> None:
    """A SuperLink and N SuperNodes on 127.0.0.1 (TLS, SuperNode authentication), one run on
    Flower's deployment engine, every started process stopped afterwards.

    Example: fedamole deploy-local configs/smoke.toml --nodes 3
    """
    import shutil
    import tempfile

    from fedamole.engines.flower import FlowerUnavailableError, require_flower
    from fedamole.engines.summary import format_summary
    from fedamole.tracking import setup_logging

    try:
        require_flower()
    except FlowerUnavailableError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    from fedamole.engines.flower.deploy import deploy_local as run_deployment

    _load(config, overrides)  # report config errors before starting anything
    setup_logging("INFO")
    folder = workdir or Path(tempfile.mkdtemp(prefix="fedamole-deploy-"))
    try:
        result = run_deployment(
            config, overrides or [], nodes=nodes, workdir=folder, run_dir=run_dir, timeout=timeout
        )
    except (ValueError, RuntimeError) as exc:
        typer.echo(f"error: {exc}\nlogs kept in {folder / 'logs'}", err=True)
        raise typer.Exit(1) from None
    typer.echo(format_summary(result))
    if workdir is None:
        shutil.rmtree(folder)


@app.command(cls=_Command)
def export(
    run: Annotated[Path, typer.Argument(help="A run directory (config.toml + checkpoints/).")],
    client: Annotated[int, typer.Option(help="0-based client id.")],
    out: Annotated[Path, typer.Option(help="New folder for the exported model.")],
    round_: Annotated[
        str,
        typer.Option(
            "--round",
            help="Which checkpoint: `last` (the end of the run), `best` (the round `fedamole "
            "report --round best` names), or a round number one of them holds.",
        ),
    ] = "last",
) -> None:
    """Export one client's model: a peft adapter folder (LoRA baselines, FDLoRA, the prompt
    methods) or a MoLE folder (FedAMoLE), with a README on how to load it.

    Example: fedamole export runs/demo --client 0 --out exports/demo-client0 --round best
    """
    from fedamole.checkpoint import CheckpointError
    from fedamole.export import export_client

    try:
        path = export_client(run, client, out, round=round_)
    except (CheckpointError, ConfigError, ValueError, FileExistsError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"exported client {client} of {run} ({round_}) to {path}")


@app.command(cls=_Command)
def generate(
    model_dir: Annotated[Path, typer.Argument(help="A folder written by `fedamole export`.")],
    prompt: Annotated[str, typer.Argument(help="The instruction (put in the Alpaca template).")],
    context: Annotated[str, typer.Option(help="Optional task input (### Input: block).")] = "",
    max_new_tokens: Annotated[int, typer.Option(help="Generation budget.")] = 128,
) -> None:
    """Answer one instruction greedily with an exported model.

    Example: fedamole generate exports/demo-client0 "List three primary colours."
    """
    from fedamole.export import generate as generate_text

    try:
        answer = generate_text(model_dir, prompt, max_new_tokens=max_new_tokens, context=context)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(answer)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="fedamole")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
