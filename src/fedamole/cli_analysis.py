"""The commands of :mod:`fedamole.cli` that read run directories: ``report`` and ``plot``
(registered there, in the order ``fedamole --help`` lists them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedamole.cli_support import (
    FIGURES,
    ROUND_HELP,
    Projection,
    ReportFormat,
    RoundMode,
    RoundOpt,
    RunsArg,
    fail,
    require_matplotlib,
    writable_or_exit,
)

__all__ = ["plot", "report"]


def report(
    runs: RunsArg,
    round_mode: RoundOpt = RoundMode.best,
    fmt: Annotated[ReportFormat, typer.Option("--format", help="Output.")] = ReportFormat.md,
    ours: Annotated[str, typer.Option(help="Method whose relative gain is reported.")] = "FedAMoLE",
    against: Annotated[
        str | None,
        typer.Option(
            help="Method every other one is compared with in the paired intervals "
            "(default: --ours).",
        ),
    ] = None,
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
        except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
            fail(str(exc))
        return
    try:
        result = build_report(runs, round_mode=round_mode.value, ours=ours, against=against)
    except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
        fail(str(exc))
    typer.echo(format_markdown(result) if fmt is ReportFormat.md else format_csv(result), nl=False)


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
    writable_or_exit(out, "--out")
    require_matplotlib()
    from fedamole.analysis.plots import plot as draw
    from fedamole.rundir import CheckpointError

    try:
        paths = draw(figure, runs, out, round_mode=round_mode.value, projection=projection.value)
    except (ValueError, FileNotFoundError, NotADirectoryError, CheckpointError) as exc:
        fail(str(exc))
    for path in paths:
        typer.echo(f"wrote {path}")
