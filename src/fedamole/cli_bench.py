"""The ``bench`` command of :mod:`fedamole.cli` (registered there, in its place in ``--help``):
performance benchmarks (docs/results/performance.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fedamole.cli_support import OverridesArg, fail, load_or_exit, writable_or_exit
from fedamole.config import Config

__all__ = ["bench"]


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

    `step` times the training step alone for FedAMoLE and FedIT: tokens, model FLOPs, achieved
    GFLOP/s against this machine's matrix-product rate on the model's own shapes, and a profile
    by op group (docs/results/performance.md).

    Example: fedamole bench assign --out bench-results

    Example: fedamole bench round configs/demo.toml --against main --repeats 3

    Example: fedamole bench step configs/demo.toml --against main --client 1
    """
    from fedamole.bench import BENCHMARKS, run_benchmark

    writable_or_exit(out, "--out")
    if which == "step":
        _bench_step(
            config, overrides, out, against, repeats, client, algorithm, steps, warmup, profiled
        )
        return
    if which == "round":
        if config is None:
            fail("`bench round` needs a CONFIG, e.g. configs/demo.toml")
        from fedamole.bench.round import BenchError, bench_round

        cfg = load_or_exit(config, overrides)  # fail early on a bad config, with the usual message
        _check_client(client, cfg)
        try:
            bench_round(
                config, overrides or [], out, against=against, repeats=repeats, client=client
            )
        except BenchError as exc:
            fail(str(exc), code=1)
        typer.echo(f"# round: wrote {out / 'round.json'}")
        return
    if config is not None:
        fail(f"only `bench round` and `bench step` take a CONFIG ({config})")
    names = sorted(BENCHMARKS) if which == "all" else [which]
    for name in names:
        if name not in BENCHMARKS:
            fail(f"unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)}, round or step")
        result = run_benchmark(name, out, quick=quick)
        typer.echo(f"# {name}: wrote {out / (name + '.json')} ({len(json.dumps(result))} bytes)")


def _check_client(client: int, cfg: Config) -> None:
    if client >= cfg.federation.num_clients:
        fail(
            f"--client {client}: the config has federation.num_clients = "
            f"{cfg.federation.num_clients}; give a client below it"
        )


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
        fail("`bench step` needs a CONFIG, e.g. configs/demo.toml")
    from fedamole.bench.round import BenchError
    from fedamole.bench.step import DEFAULT_ALGORITHMS, bench_step

    chosen = list(algorithms or DEFAULT_ALGORITHMS)
    cfg = load_or_exit(config, overrides)  # fail early on a bad config, with the usual message
    for name in chosen:  # and on an unknown algorithm, before any process starts
        load_or_exit(config, [*(overrides or []), f"federation.algorithm={name}"])
    _check_client(client, cfg)
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
        fail(str(exc), code=1)
    typer.echo(f"# step: wrote {out / 'step.json'}")
