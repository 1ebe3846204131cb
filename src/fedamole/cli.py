"""The ``fedamole`` command line: parses, loads the config, calls one library function.

Run ``fedamole --help`` or ``fedamole COMMAND --help`` for usage and examples.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fedamole.config import Config, ConfigError, load

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

ConfigArg = Annotated[
    Path, typer.Argument(help="Experiment TOML (a diff over configs/defaults.toml).")
]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Dotted overrides such as `mole.num_experts=15 train.lr=1e-4`."),
]


def _load(config: Path, overrides: list[str] | None) -> Config:
    try:
        return load(config, overrides or [])
    except ConfigError as exc:
        typer.echo(f"error: {config}: {exc}", err=True)
        raise typer.Exit(2) from None
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def validate(config: ConfigArg, overrides: OverridesArg = None) -> None:
    """Print the resolved config, or every configuration and feasibility error at once.

    Example: fedamole validate configs/paper/base.toml mole.num_experts=3
    """
    import tomli_w

    cfg = _load(config, overrides)
    typer.echo(tomli_w.dumps(cfg.to_dict()), nl=False)
    typer.echo(f"# {config}: valid", err=True)


@app.command()
def run(
    config: ConfigArg,
    overrides: OverridesArg = None,
    engine: Annotated[
        str, typer.Option(help="`embedded`: every client in this process.")
    ] = "embedded",
    run_dir: Annotated[
        Path | None, typer.Option(help="Run directory (default: run.out_dir/run.name).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue a run from its last checkpoint.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Move an existing run directory aside and start again.")
    ] = False,
) -> None:
    """Run one experiment and write its run directory.

    Example: fedamole run configs/smoke.toml train.steps=4 --run-dir runs/try
    """
    from fedamole.checkpoint import CheckpointError
    from fedamole.engines import run_experiment
    from fedamole.tracking import RunDirError

    if resume and run_dir is not None and (run_dir / "config.toml").exists() and not overrides:
        cfg = _load(run_dir / "config.toml", [])
    else:
        cfg = _load(config, overrides)
    target = run_dir or Path(cfg.run.out_dir) / cfg.run.name
    try:
        run_experiment(cfg, target, engine=engine, resume=resume, overwrite=overwrite)
    except (RunDirError, CheckpointError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
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


@app.command()
def bench(
    which: Annotated[str, typer.Argument(help="layer, assign, or all.")] = "all",
    out: Annotated[Path, typer.Option(help="Folder for the JSON results.")] = Path("bench-results"),
    quick: Annotated[bool, typer.Option(help="Small sizes, one repeat (a smoke test).")] = False,
) -> None:
    """Run performance benchmarks; each writes JSON and prints a table.

    Example: fedamole bench assign --out bench-results
    """
    from fedamole.bench import BENCHMARKS, run_benchmark

    names = sorted(BENCHMARKS) if which == "all" else [which]
    for name in names:
        if name not in BENCHMARKS:
            typer.echo(
                f"error: unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)}", err=True
            )
            raise typer.Exit(2)
        result = run_benchmark(name, out, quick=quick)
        typer.echo(f"# {name}: wrote {out / (name + '.json')} ({len(json.dumps(result))} bytes)")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="fedamole")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
