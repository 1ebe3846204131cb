"""A run directory's lifecycle: create, resume, overwrite, the process lock, the default place,
and the one rule for resuming with a config (docs/run-directory.md#starting-resuming-overwriting).

Nothing here ever deletes a run: ``overwrite`` moves the old directory aside to
``NAME.old-<time>``; only a new run that failed before it logged anything leaves nothing behind
(:func:`discard_unstarted`). The writing process holds an exclusive ``flock`` on ``.lock`` (the
*process lock*; not to be confused with the dependency pins of :mod:`fedamole.lockfile`), which
dies with the process, so a killed run leaves nothing to clean up.

:func:`config_mismatch` is the one rule that says whether a config may resume a run: every caller
that resumes (``fedamole run --resume``, ``fedamole.run(resume=True)``, a sweep, the Flower
ServerApp, the checkpoint's own config on restore) asks it, and keeps its own reaction.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from fedamole.config import Config, RunConfig, differing_fields, dump
from fedamole.rundir.env import FORMAT_VERSION, format_version, write_env
from fedamole.rundir.layout import BACKUP_MARK, BEST, CONFIG, LAST, RunLayout, checkpoint_folder
from fedamole.rundir.records import read_assignments, write_assignment

__all__ = [
    "ConfigMismatch",
    "RunDir",
    "RunDirError",
    "backup_name",
    "config_mismatch",
    "default_run_dir",
    "discard_unstarted",
    "is_backup",
]


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists, missing, mismatched, or in use)."""


# run directory -> the open process-lock file of the run this process holds there
_HELD: dict[Path, IO[str]] = {}


@dataclass(frozen=True)
class RunDir(RunLayout):
    """One run directory: its paths (:class:`~fedamole.rundir.layout.RunLayout`), its process
    lock, its assignments and its end marker."""

    def acquire(self) -> None:
        """Take the run's exclusive process lock (released by :meth:`release` or when the
        process ends, so a killed run leaves no stale lock).

        Raises:
            RunDirError: another process holds it; the message names it.
        """
        key = self.path.resolve()
        if key in _HELD:
            raise RunDirError(f"{self.path} is already in use by this process")
        fh = self.lock_file.open("a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunDirError(
                f"{self.path} is in use by {holder}; wait for that run to end or stop it "
                "(a killed run releases its lock), or choose another --run-dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        host, start = socket.gethostname(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
        fh.write(f"pid {os.getpid()} on {host} since {start}\n")
        fh.flush()
        _HELD[key] = fh

    def release(self) -> None:
        """Give the process lock back (a no-op when this process does not hold it)."""
        fh = _HELD.pop(self.path.resolve(), None)
        if fh is not None:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    @property
    def finished(self) -> bool:
        """Whether the run went through its last round (:meth:`mark_done`)."""
        return self.done.exists()

    def mark_done(self, last_round: int) -> None:
        """Record that every round up to ``last_round`` ran (``done.json``)."""
        self.done.write_text(json.dumps({"last_round": last_round}) + "\n")

    @property
    def holds_checkpoint(self) -> bool:
        """Whether ``checkpoints/`` holds a checkpoint a resume could start from (``last`` or
        ``best``, or the ``.old`` a crash in the middle of a save left)."""
        return any(checkpoint_folder(self.checkpoints, name) for name in (LAST, BEST))

    @property
    def format_version(self) -> int:
        """The run directory's format (:func:`~fedamole.rundir.env.format_version`; 1 when
        ``env.json`` names none)."""
        return format_version(self.env)

    def write_assignment(self, rnd: int, record: Mapping[str, Any]) -> None:
        """``assignments/round_NNN.json``: the architecture after round ``rnd`` (atomically)."""
        write_assignment(self, rnd, record)

    def read_assignments(self) -> dict[int, dict[str, Any]]:
        """round -> the assignment record written after it (``{}`` for non-FedAMoLE runs)."""
        return read_assignments(self)

    @classmethod
    def prepare(
        cls, cfg: Config, path: Path, *, resume: bool = False, overwrite: bool = False
    ) -> RunDir:
        """Create (or reopen with ``resume``) a run directory, take its process lock
        (:meth:`acquire`; give it back with :meth:`release`) and write config and environment.

        Raises:
            RunDirError: the directory exists and neither ``resume`` nor ``overwrite`` was given,
                ``resume`` was given for a directory that does not exist or that a newer fedamole
                wrote, or another process is writing the run.
        """
        run = cls(path)
        if resume:
            if not run.config.exists() and not run.holds_checkpoint:
                raise RunDirError(_nothing_to_resume(path))
            if run.format_version > FORMAT_VERSION:
                raise RunDirError(
                    f"cannot resume: {path} was written by a newer fedamole (run directory "
                    f"format {run.format_version}; this one knows up to {FORMAT_VERSION}). "
                    "Resume it with that version, or start a new run"
                )
            run.acquire()
            return run
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                raise RunDirError(_exists(run))
            run.acquire()  # never move a live run aside
            run.release()
            backup = backup_name(path)
            path.rename(backup)
            logging.getLogger(__name__).warning("moved the existing %s to %s", path, backup)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(
                f"cannot create the run directory {path}: {exc.strerror or exc}; choose a "
                "writable place with --run-dir (or run.out_dir)"
            ) from None
        run.acquire()
        run.assignments.mkdir(exist_ok=True)
        dump(cfg, run.config)
        write_env(run.env)
        return run


def _nothing_to_resume(path: Path) -> str:
    """Why ``--resume`` cannot continue ``path`` (no ``config.toml``, no checkpoint), and the
    start that works there."""
    if not path.exists() or not any(path.iterdir()):
        return f"cannot resume: {path} holds no run; start it without --resume"
    return (
        f"cannot resume: {path} has neither a {CONFIG} nor a checkpoint, so there is nothing to "
        "continue; start the run again with --overwrite instead of --resume (it moves the "
        "directory aside), or choose another --run-dir"
    )


def _exists(run: RunDir) -> str:
    """The refusal to start a new run in the non-empty ``run.path``, with what works there."""
    start_again = "--overwrite to move it aside and start again, or --run-dir for another one"
    if run.finished:
        return f"run directory {run.path} already holds a finished run; pass {start_again}"
    if run.holds_checkpoint:
        return (
            f"run directory {run.path} already exists; pass --resume to continue it, {start_again}"
        )
    return (
        f"run directory {run.path} already exists and holds no checkpoint to resume from; "
        f"pass {start_again}"
    )


def default_run_dir(run: RunConfig) -> Path:
    """Where a run goes without ``--run-dir``: ``run.out_dir/run.name`` (``~`` expanded, a
    relative ``run.out_dir`` from the current directory)."""
    return Path(run.out_dir).expanduser() / run.name


def backup_name(path: Path) -> Path:
    """``NAME.old-<time>``, with ``-2``, ``-3``... when that exists already (same second)."""
    stem = f"{path.name}{BACKUP_MARK}{time.strftime('%Y%m%d-%H%M%S')}"
    backup, n = path.with_name(stem), 1
    while backup.exists():
        n += 1
        backup = path.with_name(f"{stem}-{n}")
    return backup


def discard_unstarted(path: Path, *, existed: bool) -> bool:
    """Take away what :meth:`RunDir.prepare` wrote in ``path`` for a run that failed before it
    logged anything (no ``metrics.jsonl``, no checkpoint: the model or the data did not load), so
    that the same command works once the cause is fixed. ``existed``: the folder was there (and
    empty) before the run, so it stays. Anything else in ``path`` keeps it all.

    Returns:
        Whether it took the run away.
    """
    run = RunDir(path)
    if not path.is_dir() or run.metrics.exists() or _holds_anything(run.checkpoints):
        return False
    files = [run.config, run.env, run.log, run.lock_file]
    known = {p.name for p in files} | {run.assignments.name, run.checkpoints.name}
    if any(entry.name not in known for entry in path.iterdir()):
        return False
    if run.assignments.is_dir() and any(p.is_dir() for p in run.assignments.iterdir()):
        return False
    for file in files:
        file.unlink(missing_ok=True)
    for folder in (run.assignments, run.checkpoints):
        if folder.is_dir():
            for item in folder.iterdir():
                item.unlink()
            folder.rmdir()
    if not existed:
        path.rmdir()
    return True


def _holds_anything(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def is_backup(relative: Path) -> bool:
    """Whether a path (relative to a folder searched for runs) lies in a run directory that
    ``--overwrite`` moved aside."""
    return any(BACKUP_MARK in part for part in relative.parts)


@dataclass(frozen=True)
class ConfigMismatch:
    """Why a config may not resume a run: the dotted ``fields`` whose values differ."""

    fields: tuple[str, ...]

    def __str__(self) -> str:
        return f"differs in {', '.join(self.fields)}"


def config_mismatch(
    saved: Config | Mapping[str, Any], given: Config | Mapping[str, Any]
) -> ConfigMismatch | None:
    """The rule for resuming a run started with ``saved`` (its ``config.toml``, or the config in
    its checkpoint) with ``given``: ``None`` when they agree, else the fields that differ.

    The tracking fields (``run.tensorboard``, ``run.hooks``) change no result and never differ;
    a field absent from one side (a config written before the field existed) counts as its
    default (:func:`~fedamole.config.differing_fields`). Each caller reacts its own way: the CLI
    exits with code 2, the API raises, a sweep marks the run ``changed``, the Flower ServerApp
    and a checkpoint restore refuse.
    """
    fields = differing_fields(saved, given)
    return ConfigMismatch(tuple(fields)) if fields else None
