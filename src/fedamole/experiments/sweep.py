"""Run a sweep grid: plan its runs, skip finished ones, resume broken ones, spread them over GPUs.

Status of a run (its directory is ``sweep.out_dir/<run name>``):

- ``new``: no ``config.toml`` and no checkpoint there yet; it is started.
- ``partial``: started with this very config but not finished; it resumes from its checkpoint, or
  restarts (the old directory moved aside, never deleted) when it has none. A missing or damaged
  ``config.toml`` beside a checkpoint of this config is no change: the resume writes it again.
- ``finished``: the engine wrote ``done.json`` at the end of the run; it is skipped.
- ``changed``: the directory holds a run of *another* config (the grid was edited); the sweep
  refuses to start until it is moved away or ``--out`` points elsewhere. The saved config is
  read through today's config model, so a field added to the defaults later is no change.
- ``invalid``: the config does not validate (e.g. an algorithm not registered yet), or does not
  fit its model or this machine's devices (:func:`fedamole.preflight.preflight`'s errors: a target
  module the model lacks, ``model.device = "cuda"`` on a CPU-only torch); the sweep refuses to
  start, and ``--dry-run`` lists the errors with the run names. What this machine merely lacks (the
  data, a hub model) does not make a run invalid here: the run itself stops on it.

``done.json``, written by the engine after the last round, is the finished criterion because the
metrics of the last round are appended client by client (a crash can leave some) and checkpoints
may be off (``run.checkpoint = false``). A run of an engine that does not write it stays
``partial``: every sweep resumes it again, which finds no round left to run.

With ``jobs > 1`` every run is a subprocess ``python -m fedamole run STAGED --run-dir DIR``; worker
slot ``s`` gets ``CUDA_VISIBLE_DEVICES = devices[s % len(devices)]`` (round-robin over the visible
GPUs), or on a CPU-only machine ``OMP_NUM_THREADS = cores // jobs``. Console output of each
subprocess goes to ``out_dir/_sweep/<name>.log``; the run's own ``log.txt`` is written as usual.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedamole.config import Config, ConfigError, dump, load
from fedamole.experiments.grid import Grid, GridError, GridRun, expand, resolve_config, select
from fedamole.preflight import preflight
from fedamole.rundir import RunDir, checkpoint_config, config_mismatch, has_checkpoint

__all__ = [
    "PlannedRun",
    "SweepResult",
    "format_plan",
    "parse_devices",
    "plan",
    "run_status",
    "run_sweep",
]

log = logging.getLogger("fedamole.sweep")


@dataclass(frozen=True)
class PlannedRun:
    """One run of a grid with its resolved config and its status on disk."""

    run: GridRun
    status: str  # new | partial | finished | changed | invalid
    config: Config | None
    errors: tuple[str, ...] = ()

    @property
    def action(self) -> str:
        """What the sweep does with it: start, resume, restart, skip or refuse."""
        if self.status == "partial":
            return "resume" if has_checkpoint(RunDir(self.run.run_dir).checkpoints) else "restart"
        return {"new": "start", "finished": "skip"}.get(self.status, "refuse")


@dataclass
class SweepResult:
    """What a sweep did."""

    planned: list[PlannedRun]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def plan(grid: Grid, only: Mapping[str, list[str]] | None = None) -> list[PlannedRun]:
    """Expand, validate and look up every run of ``grid`` (optionally a subset by labels)."""
    runs = expand(grid)
    if only:
        runs = select(grid, runs, only)
    planned = []
    for run in runs:
        try:
            cfg = resolve_config(run)
        except ConfigError as exc:
            planned.append(PlannedRun(run, "invalid", None, tuple(exc.errors)))
            continue
        except FileNotFoundError as exc:
            planned.append(PlannedRun(run, "invalid", None, (str(exc),)))
            continue
        errors = preflight(cfg).errors
        if errors:
            planned.append(PlannedRun(run, "invalid", cfg, errors))
            continue
        planned.append(PlannedRun(run, run_status(run.run_dir, cfg), cfg))
    return planned


def run_status(run_dir: Path, cfg: Config) -> str:
    """``new``, ``partial``, ``finished`` or ``changed`` (see the module docstring).

    The saved ``config.toml`` is read through today's config model, so that a field added to
    the defaults since the run started does not count as a change; neither do the tracking
    fields (``run.tensorboard``, ``run.hooks``: :func:`~fedamole.rundir.config_mismatch`).
    """
    run = RunDir(run_dir)
    if not run.config.exists() and not run.holds_checkpoint:
        return "new"
    try:
        same = config_mismatch(load(run.config), cfg) is None
    except (ConfigError, ValueError, OSError):
        same = False
    if not same:  # or a missing or damaged config.toml beside a checkpoint of cfg, which a
        # resume writes again (docs/run-directory.md#what-a-resume-checks)
        saved = checkpoint_config(run.checkpoints)
        if saved is None or config_mismatch(saved, cfg) is not None:
            return "changed"
    return "finished" if run.finished else "partial"


def format_plan(grid: Grid, planned: Sequence[PlannedRun]) -> str:
    """The ``--dry-run`` listing: one line per run (status, action, name, its own overrides)."""
    counts = {s: sum(p.status == s for p in planned) for s in _STATUSES}
    head = [
        f"grid {grid.name} ({grid.path}): {len(planned)} runs in {grid.out_dir}/",
        "  " + ", ".join(f"{n} {s}" for s, n in counts.items() if n),
        f"  axes: {', '.join(f'{a} ({len(v)})' for a, v in grid.axes.items())}",
        f"  fixed overrides: {_fmt_overrides(grid.overrides) or '-'}",
        "",
    ]
    width = max((len(p.run.name) for p in planned), default=4)
    lines = [f"{'status':<9} {'action':<8} {'name':<{width}}  overrides"]
    for p in planned:
        own = {k: v for k, v in p.run.overrides.items() if not k.startswith("run.")}
        own = {k: v for k, v in own.items() if grid.overrides.get(k, _MISSING) != v}
        if "run.seed" in p.run.overrides:
            own["run.seed"] = p.run.overrides["run.seed"]
        config = f"config={p.run.config.name}; " if p.run.config != grid.base else ""
        lines.append(
            f"{p.status:<9} {p.action:<8} {p.run.name:<{width}}  {config}{_fmt_overrides(own)}"
        )
    bad = [p for p in planned if p.errors]
    if bad:
        lines += ["", f"{len(bad)} invalid run(s):"]
        for p in bad:
            lines += [f"  {p.run.name}:"] + [f"    - {e}" for e in p.errors]
    changed = [p.run.name for p in planned if p.status == "changed"]
    if changed:
        lines += ["", _changed_message(grid, changed)]
    return "\n".join(head + lines)


def run_sweep(
    grid: Grid,
    *,
    jobs: int = 1,
    engine: str = "embedded",
    devices: Sequence[str] | None = None,
    only: Mapping[str, list[str]] | None = None,
) -> SweepResult:
    """Run every unfinished run of ``grid``; finished ones are skipped, partial ones resumed.

    Args:
        grid: a grid from :func:`~fedamole.experiments.grid.load_grid`.
        jobs: runs at a time; 1 runs them in this process, more as subprocesses.
        engine: the engine of every run.
        devices: GPU ids for the subprocesses (default: ``CUDA_VISIBLE_DEVICES`` or all GPUs).
        only: run only the runs with these labels (axis -> labels).

    Returns:
        What ran, what was skipped and what failed (a failed run does not stop the sweep).

    Raises:
        GridError: invalid or changed runs, listed all at once before anything starts.
    """
    planned = plan(grid, only)
    problems = [f"run {p.run.name}: {e}" for p in planned for e in p.errors]
    changed = [p.run.name for p in planned if p.status == "changed"]
    if changed:
        problems.append(_changed_message(grid, changed))
    if problems:
        raise GridError(problems)
    result = SweepResult(planned, skipped=[p.run.name for p in planned if p.status == "finished"])
    todo = [p for p in planned if p.status in ("new", "partial")]
    log.info(
        "sweep %s: %d runs, %d finished (skipped), %d to run with %d job(s)",
        grid.name,
        len(planned),
        len(result.skipped),
        len(todo),
        jobs,
    )
    if jobs <= 1:
        _run_sequential(todo, engine, result)
    else:
        _run_parallel(grid, todo, engine, jobs, _devices(devices), result)
    log.info(
        "sweep %s done: %d ran, %d skipped, %d failed%s",
        grid.name,
        len(result.ran),
        len(result.skipped),
        len(result.failed),
        "".join(f"\n  failed {n}: {why}" for n, why in result.failed.items()),
    )
    return result


_STATUSES = ("new", "partial", "finished", "changed", "invalid")
_MISSING = object()


def _fmt_overrides(overrides: Mapping[str, object]) -> str:
    return "; ".join(f"{k}={v}" for k, v in overrides.items())


def _changed_message(grid: Grid, names: list[str]) -> str:
    return (
        f"{len(names)} run director{'y holds' if len(names) == 1 else 'ies hold'} a run of another "
        f"config ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}): move them out of "
        f"{grid.out_dir} or pass --out to sweep into another folder"
    )


def _resume_flags(p: PlannedRun) -> tuple[bool, bool]:
    """``(resume, overwrite)`` for a run to start."""
    resume = p.action == "resume"
    overwrite = not resume and p.run.run_dir.exists() and any(p.run.run_dir.iterdir())
    return resume, overwrite


class _Progress:
    """Logs one line per finished run with counts and a naive ETA."""

    def __init__(self, total: int, jobs: int):
        self.total, self.jobs, self.done, self.t0 = total, jobs, 0, time.monotonic()

    def finished(self, name: str, seconds: float, error: str | None, running: int) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        queued = self.total - self.done - running
        log.info(
            "[%d/%d] %s %s in %.0f s | %d running, %d queued, ETA %s",
            self.done,
            self.total,
            "FAILED" if error else "finished",
            name,
            seconds,
            running,
            queued,
            time.strftime("%H:%M:%S", time.gmtime(eta)),
        )


def _run_sequential(todo: list[PlannedRun], engine: str, result: SweepResult) -> None:
    from fedamole.engines import run_experiment
    from fedamole.rundir import setup_logging

    progress, level = _Progress(len(todo), 1), logging.getLogger().level
    for p in todo:
        resume, overwrite = _resume_flags(p)
        log.info("%s %s", "resuming" if resume else "starting", p.run.name)
        t0, error = time.monotonic(), None
        try:
            run_experiment(
                p.config, p.run.run_dir, engine=engine, resume=resume, overwrite=overwrite
            )
        except Exception as exc:  # one failed run must not stop the sweep
            error = f"{type(exc).__name__}: {exc}"
            result.failed[p.run.name] = error
        else:
            result.ran.append(p.run.name)
        finally:  # the engine points logging at the run's log.txt: point it back at the console
            setup_logging(logging.getLevelName(level))
            gc.collect()  # free this run's model before the next one loads
        progress.finished(p.run.name, time.monotonic() - t0, error, 0)


_DEVICE_ID = re.compile(r"\d+|(GPU|MIG)-[\w-]+")


def parse_devices(text: str | None) -> list[str] | None:
    """The GPU ids of ``--devices`` (``"0,1"``): indices or ``GPU-``/``MIG-`` UUIDs, as
    ``CUDA_VISIBLE_DEVICES`` takes them; ``None`` for none given.

    Raises:
        GridError: an empty entry or one that is not such an id.
    """
    if text is None:
        return None
    ids = [part.strip() for part in text.split(",")]
    bad = [i for i in ids if not _DEVICE_ID.fullmatch(i)]
    if bad:
        raise GridError(
            [
                f"--devices {text!r}: {', '.join(repr(b) for b in bad)} is not a GPU id; give "
                "GPU indices separated by commas, e.g. --devices 0,1 (as nvidia-smi lists them, "
                "or GPU-/MIG- UUIDs), or leave it out to use every visible GPU"
            ]
        )
    return ids


def _devices(devices: Sequence[str] | None) -> list[str]:
    if devices is not None:
        return [str(d) for d in devices]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _launch(grid: Grid, p: PlannedRun, engine: str, env: dict[str, str]) -> subprocess.Popen:
    staging = grid.out_dir / "_sweep"
    staging.mkdir(parents=True, exist_ok=True)
    staged = staging / f"{p.run.name}.toml"
    dump(p.config, staged)
    resume, overwrite = _resume_flags(p)
    cmd = [sys.executable, "-m", "fedamole", "run", str(staged), "--run-dir", str(p.run.run_dir)]
    cmd += (
        ["--engine", engine]
        + (["--resume"] if resume else [])
        + (["--overwrite"] if overwrite else [])
    )
    out = (staging / f"{p.run.name}.log").open("a", encoding="utf-8")
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    finally:
        out.close()  # the child holds its own descriptor


def _slot_env(slot: int, devices: list[str], jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = devices[slot % len(devices)]
    elif "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def _run_parallel(
    grid: Grid,
    todo: list[PlannedRun],
    engine: str,
    jobs: int,
    devices: list[str],
    result: SweepResult,
) -> None:
    where = f"GPUs {', '.join(devices)}" if devices else "CPU"
    log.info("running %d job(s) at a time on %s", jobs, where)
    queue, running = list(todo), {}  # slot -> (process, planned run, start)
    progress = _Progress(len(todo), jobs)
    try:
        while queue or running:
            for slot in range(jobs):
                if slot not in running and queue:
                    p = queue.pop(0)
                    log.info("slot %d: %s %s", slot, p.action, p.run.name)
                    proc = _launch(grid, p, engine, _slot_env(slot, devices, jobs))
                    running[slot] = (proc, p, time.monotonic())
            time.sleep(0.2)
            for slot, (proc, p, t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[slot]
                error = None
                if proc.returncode != 0:
                    error = (
                        f"exit code {proc.returncode}; see {grid.out_dir / '_sweep'}/"
                        f"{p.run.name}.log"
                    )
                    result.failed[p.run.name] = error
                else:
                    result.ran.append(p.run.name)
                progress.finished(p.run.name, time.monotonic() - t0, error, len(running))
    finally:
        for proc, _, _ in running.values():  # interrupted: stop only the runs we started
            proc.terminate()
