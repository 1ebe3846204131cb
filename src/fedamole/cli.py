"""The ``fedamole`` command line: parses, loads the config, calls one library function.

Run ``fedamole --help`` or ``fedamole COMMAND --help`` for usage and examples.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fedamole.cli_analysis import plot, report
from fedamole.cli_bench import bench
from fedamole.cli_support import (
    ConfigArg,
    Engine,
    Interrupted,
    OverridesArg,
    check_or_exit,
    interrupts_as_exceptions,
    require_matplotlib,
    what_was_saved,
    writable_or_exit,
)
from fedamole.cli_support import HelpCommand as _Command  # the class of every command
from fedamole.cli_support import fail as _fail
from fedamole.cli_support import load_or_exit as _load
from fedamole.config import ConfigError

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


@app.command(cls=_Command)
def validate(config: ConfigArg, overrides: OverridesArg = None) -> None:
    """Print the resolved config, or every configuration and feasibility error at once; then
    check it against this machine and its model (data path, device, model name, target modules;
    no weights are loaded).

    Example: fedamole validate configs/paper/base.toml mole.num_experts=3
    """
    import tomli_w

    cfg = _load(config, overrides)
    check_or_exit(config, cfg)
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
            "directory's name>-<hash of its path> (sets run.tensorboard; needs `pip install "
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
    from fedamole.api import ResumeMismatchError, StoredConfigError, run_path, start_run
    from fedamole.engines.common import RunFailedError
    from fedamole.rundir import CheckpointError, RunDir, RunDirError

    if resume and overwrite:
        _fail("--resume continues the run and --overwrite starts it again: choose one")
    if tensorboard is not None:
        import tomli_w

        literal = tomli_w.dumps({"v": str(tensorboard)}).removeprefix("v = ").strip()
        overrides = [*(overrides or []), f"run.tensorboard={literal}"]
    cfg = _load(config, overrides)
    target = run_path(cfg, run_dir)
    again = [str(config), *(overrides or []), "--run-dir", str(target)]  # this command's start
    if engine is not Engine.embedded:
        again += ["--engine", engine.value]
    try:
        with interrupts_as_exceptions():
            start_run(cfg, target, engine=engine.value, resume=resume, overwrite=overwrite)
    except Interrupted as exc:
        typer.echo(f"\n{exc}: {what_was_saved(target, again, engine.value)}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except StoredConfigError as exc:
        _fail(f"{exc.path}: {exc}")
    except ConfigError as exc:  # fedamole.preflight: the machine or the model (nothing started)
        _fail(f"{config}: {exc}")
    except ResumeMismatchError as exc:
        _fail(
            f"{target} was started with another configuration (differs in "
            f"{', '.join(exc.fields)}); resume it with the same CONFIG and overrides, or with "
            f"its own: fedamole run {RunDir(target).config} --resume --run-dir {target}"
        )
    except (RunDirError, CheckpointError, ValueError) as exc:
        _fail(str(exc))
    except RunFailedError as exc:
        _fail(str(exc), 1)
    except OSError as exc:  # a full disk, a file made unwritable mid-run...
        where = f" ({exc.filename})" if exc.filename else ""
        _fail(
            f"the run stopped: {exc.strerror or exc}{where}. Fix the cause; "
            + what_was_saved(target, again, engine.value),
            1,
        )


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
    if plot is not None:
        writable_or_exit(plot, "--plot", entry=True)
        require_matplotlib()
    try:
        typer.echo(describe_partition(cfg, plot))
    except DataError as exc:
        _fail(str(exc))


# `bench` (fedamole.cli_bench) is registered here, in its place in --help.
app.command(cls=_Command)(bench)


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
    from fedamole.experiments.sweep import format_plan, parse_devices, plan, run_sweep
    from fedamole.rundir import setup_logging

    selection: dict[str, list[str]] = {}
    for item in only or []:
        axis, sep, labels = item.partition("=")
        if not sep:
            _fail(f"--only {item!r} must look like AXIS=LABEL[,LABEL]")
        selection.setdefault(axis.strip(), []).extend(s.strip() for s in labels.split(","))
    if out is not None:
        writable_or_exit(out, "--out")
    try:
        ids = parse_devices(devices)
        loaded = load_grid(grid, out_dir=out)
        if dry_run:
            typer.echo(format_plan(loaded, plan(loaded, selection)))
            return
        setup_logging("INFO")
        result = run_sweep(loaded, jobs=jobs, engine=engine.value, devices=ids, only=selection)
    except (GridError, FileNotFoundError) as exc:
        _fail(str(exc))
    if result.failed:
        raise typer.Exit(1)


# `report` and `plot` (fedamole.cli_analysis) are registered here, in their place in --help.
app.command(cls=_Command)(report)
app.command(cls=_Command)(plot)


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
    from fedamole.rundir import setup_logging

    try:
        require_flower()
    except FlowerUnavailableError as exc:
        _fail(str(exc))
    from fedamole.engines.flower.deploy import deploy_local as run_deployment

    _load(config, overrides)  # report config errors before starting anything
    setup_logging("INFO")
    folder = workdir or Path(tempfile.mkdtemp(prefix="fedamole-deploy-"))
    try:
        result = run_deployment(
            config, overrides or [], nodes=nodes, workdir=folder, run_dir=run_dir, timeout=timeout
        )
    except (ValueError, RuntimeError) as exc:
        _fail(f"{exc}\nlogs kept in {folder / 'logs'}", 1)
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
    from fedamole.export import export_client
    from fedamole.rundir import CheckpointError

    writable_or_exit(out, "--out", entry=True)  # written beside it, then renamed
    try:
        path = export_client(run, client, out, round=round_)
    except (CheckpointError, ConfigError, ValueError, FileExistsError, FileNotFoundError) as exc:
        _fail(str(exc))
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
        _fail(str(exc))
    typer.echo(answer)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="fedamole")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
