"""Logging setup, the run directory, and the metric/communication loggers (docs/run-directory.md).

A run directory holds::

    config.toml      the resolved config          env.json       versions, device, git sha, start
    metrics.jsonl    one record per (round, client, split, metric)
    comm.jsonl       bytes up/down per client per round, by payload kind
    assignments/     round_NNN.json                checkpoints/   last/, best/ (atomic)
    log.txt          the console log                done.json      written after the last round
    wire.jsonl       Flower only: serialized message sizes

Nothing here ever deletes a run: ``overwrite`` moves the old directory aside to ``NAME.old-<time>``.

**Tracking** (docs/run-directory.md#tracking): ``metrics.jsonl`` is the source of truth; every
record written to it is also handed, as written, to the run's record hooks (:func:`open_hooks`):
a TensorBoard mirror (``run.tensorboard``, :class:`TensorBoardHook`), the callables that
``run.hooks`` names (``"package.module:function"``) and ``fedamole.run(..., on_record=fn)``'s. A
hook that raises is logged and the run goes on; :func:`check_hooks` finds a hook that cannot be
imported, or TensorBoard missing, before a run starts.
"""

from __future__ import annotations

import fcntl
import importlib
import importlib.util
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from fedamole.config import Config, dump
from fedamole.lockfile import lock_status

__all__ = [
    "HookError",
    "JsonlLogger",
    "RecordHook",
    "RecordHooks",
    "RunDir",
    "RunDirError",
    "TensorBoardHook",
    "check_hooks",
    "environment",
    "load_hook",
    "open_hooks",
    "read_jsonl",
    "setup_logging",
    "tensorboard_step",
    "tensorboard_tag",
]

_PACKAGES = ("fedamole", "torch", "transformers", "peft", "numpy", "scipy", "safetensors", "flwr")


_STEP_FIELD = '"step": '  # how a per-step record's step appears (json.dumps, default separators)


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists, missing, mismatched, or in use)."""


# run directory -> the open lock file of the run this process holds there
_HELD: dict[Path, Any] = {}


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.toml"

    @property
    def env(self) -> Path:
        return self.path / "env.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def comm(self) -> Path:
        return self.path / "comm.jsonl"

    @property
    def assignments(self) -> Path:
        return self.path / "assignments"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def client_checkpoints(self) -> Path:
        """Flower only: the clients' own state snapshots (``state-dir`` of the simulation)."""
        return self.checkpoints / "clients"

    @property
    def log(self) -> Path:
        return self.path / "log.txt"

    @property
    def wire(self) -> Path:
        """Flower only: serialized message sizes next to the payload bytes."""
        return self.path / "wire.jsonl"

    @property
    def done(self) -> Path:
        """The marker written after the last round: a sweep skips the run as finished."""
        return self.path / "done.json"

    @property
    def lock_file(self) -> Path:
        """Held (``flock``) by the process writing the run; names it: pid, host, start."""
        return self.path / ".lock"

    def acquire(self) -> None:
        """Take the run's exclusive lock for this process (released by :meth:`release` or when
        the process ends, so a killed run leaves no stale lock).

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
        """Give the lock back (a no-op when this process does not hold it)."""
        fh = _HELD.pop(self.path.resolve(), None)
        if fh is not None:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    @property
    def finished(self) -> bool:
        """Whether the run went through its last round (:meth:`mark_done`)."""
        return self.done.exists()

    def write_assignment(self, rnd: int, record: Mapping[str, Any]) -> None:
        """``assignments/round_NNN.json``: the architecture after round ``rnd`` (atomically)."""
        path = self.assignments / f"round_{rnd:03d}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)

    def read_assignments(self) -> dict[int, dict[str, Any]]:
        """round -> the assignment record written after it (``{}`` for non-FedAMoLE runs)."""
        if not self.assignments.is_dir():
            return {}
        return {
            int(path.stem.split("_")[1]): json.loads(path.read_text())
            for path in sorted(self.assignments.glob("round_*.json"))
        }

    def mark_done(self, last_round: int) -> None:
        """Record that every round up to ``last_round`` ran."""
        self.done.write_text(json.dumps({"last_round": last_round}) + "\n")

    @classmethod
    def prepare(
        cls, cfg: Config, path: Path, *, resume: bool = False, overwrite: bool = False
    ) -> RunDir:
        """Create (or reopen with ``resume``) a run directory, take its lock (:meth:`acquire`;
        give it back with :meth:`release`) and write config and environment.

        Raises:
            RunDirError: the directory exists and neither ``resume`` nor ``overwrite`` was given,
                ``resume`` was given for a directory that does not exist, or another process is
                writing the run.
        """
        run = cls(path)
        if resume:
            if not run.config.exists():
                raise RunDirError(
                    f"cannot resume: {path} has no config.toml (start it without --resume)"
                )
            run.acquire()
            return run
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                raise RunDirError(
                    f"run directory {path} already exists; pass --resume to continue it, "
                    "--overwrite to move it aside and start again, or --run-dir for another one"
                )
            run.acquire()  # never move a live run aside
            run.release()
            backup = _backup_name(path)
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
        run.env.write_text(json.dumps(environment(), indent=2) + "\n")
        return run


def _backup_name(path: Path) -> Path:
    """``NAME.old-<time>``, with ``-2``, ``-3``... when that exists already (same second)."""
    stem = f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"
    backup, n = path.with_name(stem), 1
    while backup.exists():
        n += 1
        backup = path.with_name(f"{stem}-{n}")
    return backup


def environment() -> dict[str, Any]:
    """Package versions, the lock (:func:`fedamole.lockfile.lock_status`), device, git sha and
    start time, for ``env.json``."""
    import torch

    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "start": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "lock": lock_status(),
        "cuda": torch.cuda.is_available(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_sha": _git_sha(),
        "argv": sys.argv,
    }


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def setup_logging(level: str = "INFO", log_file: Path | None = None) -> None:
    """Console logging plus an optional file (appended, so a resumed run keeps its history)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_fedamole", False):
            root.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._fedamole = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "urllib3", "filelock", "transformers.modeling_utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class JsonlLogger:
    """Append one JSON object per line, flushed after each record.

    Args:
        path: the file (appended to).
        on_record: called after each record is written with a copy of it (keys sorted, as in
            the file), e.g. :class:`RecordHooks`; never for the records that
            :meth:`truncate_after` keeps.
    """

    def __init__(self, path: Path, on_record: RecordHook | None = None):
        self.path = path
        self.on_record = on_record
        self._fh = path.open("a", encoding="utf-8")

    def log(self, record: Mapping[str, Any]) -> None:
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")
        self._fh.flush()
        if self.on_record is not None:
            self.on_record({key: record[key] for key in sorted(record)})

    def close(self) -> None:
        self._fh.close()

    def truncate_after(
        self, round_idx: int, *, drop: Callable[[dict[str, Any]], bool] | None = None
    ) -> None:
        """Drop records of rounds after ``round_idx``, and those ``drop`` selects (used on
        resume)."""
        self._fh.close()
        text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        if text and not text.endswith("\n"):  # a kill in the middle of writing a record
            logging.getLogger(__name__).warning(
                "%s: dropped an incomplete last line left by a killed run", self.path
            )
            self.path.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")
        kept = [
            r
            for r in read_jsonl(self.path)
            if r.get("round", -1) <= round_idx and not (drop is not None and drop(r))
        ]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        tmp.replace(self.path)
        self._fh = self.path.open("a", encoding="utf-8")


def read_jsonl(path: Path, *, steps: bool | None = None) -> Iterator[dict[str, Any]]:
    """Records of a JSON-lines file; a malformed line raises with the file and line number.

    Args:
        path: the file (nothing when it does not exist).
        steps: ``False``: skip ``metrics.jsonl``'s per-step training records (those with a
            ``step``: most of the file at the paper's 200 steps) without parsing them; ``True``:
            only those; ``None``: every record.
    """
    if not path.exists():
        return
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if steps is not None and (_STEP_FIELD in line) != steps:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None


# ------------------------------------------------------------------------------------------------
# Record hooks: mirrors of metrics.jsonl (TensorBoard, run.hooks, fedamole.run(on_record=...))

RecordHook = Callable[[dict[str, Any]], None]
"""Called with every ``metrics.jsonl`` record as it is written (a fresh dict per call). An object
that also has a ``close()`` method has it called when the run ends."""

TENSORBOARD_INSTALL = "pip install 'fedamole[tensorboard]'"


class HookError(ValueError):
    """A record hook cannot be set up: a ``run.hooks`` entry that does not import or is not
    callable, or ``run.tensorboard`` without TensorBoard installed."""


def load_hook(spec: str) -> RecordHook:
    """The callable a ``run.hooks`` entry names: ``"package.module:function"`` (after the colon a
    dotted path inside the module, e.g. ``"package.module:Class.method"``).

    Raises:
        HookError: the module cannot be imported, has no such attribute, or it is not callable.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise HookError(
            f"`run.hooks` entry {spec!r}: expected 'package.module:function' (a module, a colon, "
            "the callable in it)"
        )
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module's own code failing
        raise HookError(
            f"`run.hooks` entry {spec!r}: cannot import {module_name!r} "
            f"({type(exc).__name__}: {exc}). Install the package that provides it or put its "
            "folder on PYTHONPATH (the `fedamole` command does not search the current folder: "
            "PYTHONPATH=. fedamole run ...), or remove the entry"
        ) from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HookError(
                f"`run.hooks` entry {spec!r}: {module_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(target):
        raise HookError(
            f"`run.hooks` entry {spec!r}: {type(target).__name__} is not callable; name a "
            "function that takes one record (a dict)"
        )
    return target


def check_hooks(cfg: Config) -> None:
    """Fail before a run starts where :func:`open_hooks` would: every ``run.hooks`` entry must
    import (:func:`load_hook`) and ``run.tensorboard`` needs TensorBoard installed.

    Raises:
        HookError: the first hook that cannot be set up, with the fix.
    """
    if cfg.run.tensorboard is not None and importlib.util.find_spec("tensorboard") is None:
        raise HookError(_no_tensorboard(cfg.run.tensorboard))
    for spec in cfg.run.hooks or ():
        load_hook(spec)


def _no_tensorboard(folder: str, detail: str = "") -> str:
    return (
        f"`run.tensorboard` = {folder!r} needs TensorBoard, which is not installed"
        f"{detail}: {TENSORBOARD_INSTALL} (or `pip install tensorboard`), or leave "
        "run.tensorboard unset (no --tensorboard)"
    )


def open_hooks(cfg: Config, run: RunDir, on_record: RecordHook | None = None) -> RecordHooks:
    """The run's record hooks, in this order: the TensorBoard mirror when ``run.tensorboard`` is
    set (event files in ``<run.tensorboard>/<run directory's name>``, :class:`TensorBoardHook`,
    rebuilt from the records ``metrics.jsonl`` already holds), each ``run.hooks`` entry, then
    ``on_record``. Open them after a resume has truncated ``metrics.jsonl``.

    Raises:
        HookError: as :func:`check_hooks`.
    """
    check_hooks(cfg)
    hooks: list[tuple[str, RecordHook]] = []
    if cfg.run.tensorboard is not None:
        folder = Path(cfg.run.tensorboard) / run.path.resolve().name
        written = read_jsonl(run.metrics) if run.metrics.exists() else ()
        hooks.append((f"tensorboard ({folder})", TensorBoardHook(folder, cfg, replay=written)))
    hooks += [(spec, load_hook(spec)) for spec in cfg.run.hooks or ()]
    if on_record is not None:
        hooks.append((getattr(on_record, "__qualname__", repr(on_record)), on_record))
    return RecordHooks(hooks)


class RecordHooks:
    """Hands each record to every hook in order. A hook that raises is logged (the first time
    with its traceback) and the run goes on: ``metrics.jsonl`` keeps every record regardless.

    Args:
        hooks: ``(name, hook)`` pairs; the name is what the log says.
    """

    def __init__(self, hooks: Sequence[tuple[str, RecordHook]] = ()):
        self.hooks = list(hooks)
        self.failures: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def __call__(self, record: dict[str, Any]) -> None:
        for name, hook in self.hooks:
            try:
                hook(dict(record))
            except Exception:
                count = self.failures[name] = self.failures.get(name, 0) + 1
                if count == 1:
                    logging.getLogger(__name__).exception(
                        "record hook %s failed (later failures are counted, not shown; "
                        "metrics.jsonl has every record)",
                        name,
                    )

    def close(self) -> None:
        """Close every hook that has a ``close()``; report how often each one failed."""
        for name, hook in self.hooks:
            close = getattr(hook, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    logging.getLogger(__name__).exception("closing record hook %s failed", name)
        for name, count in self.failures.items():
            logging.getLogger(__name__).warning("record hook %s failed on %d records", name, count)


def tensorboard_tag(record: Mapping[str, Any]) -> str:
    """The TensorBoard tag of a ``metrics.jsonl`` record: ``client<C>/<split>/<metric>`` (e.g.
    ``client3/test/score``, ``client3/train/step_loss``), ``server/<metric>`` for a server record
    (``server/round_seconds``, ``server/rsea/retention``), ``server/<metric>/client<C>`` for one
    about a client (``server/rejected/client2``)."""
    client, split, metric = int(record["client"]), record["split"], record["metric"]
    if split == "server":
        return f"server/{metric}" if client < 0 else f"server/{metric}/client{client}"
    return f"client{client}/{split}/{metric}"


def tensorboard_step(record: Mapping[str, Any], steps_per_round: int) -> int:
    """The TensorBoard global step of a record: its ``round``, or for a per-step record (one with
    a ``step``) ``(round - 1) * steps_per_round + step``, the client's optimizer steps so far
    (monotone across rounds when ``step <= steps_per_round``)."""
    rnd = int(record["round"])
    if record.get("step") is None:
        return rnd
    return (rnd - 1) * steps_per_round + int(record["step"])


class TensorBoardHook:
    """Mirror ``metrics.jsonl`` into TensorBoard event files: one scalar per record
    (:func:`tensorboard_tag`, :func:`tensorboard_step`), written with
    ``torch.utils.tensorboard.SummaryWriter``.

    Per-step records use ``steps_per_round`` = ``train.steps``, or FedDPA's
    ``baselines.feddpa.local_steps`` when larger, so their global step grows across rounds.

    The folder is a mirror, rebuilt whenever a run starts or resumes: its event files are
    removed and ``replay`` (the records ``metrics.jsonl`` already holds, after a resume's
    truncation) is written first. So a run killed in the middle of a round and resumed shows each
    point once, as an uninterrupted run does, and ``--tensorboard`` added on a resume shows the
    whole run.

    Raises:
        HookError: TensorBoard is not installed.
    """

    def __init__(
        self,
        folder: Path,
        cfg: Config,
        *,
        replay: Iterable[Mapping[str, Any]] = (),
        flush_secs: int = 10,
    ):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise HookError(_no_tensorboard(str(cfg.run.tensorboard), f" ({exc})")) from exc
        self.folder = folder
        self.steps_per_round = max(cfg.train.steps, cfg.baselines.feddpa.local_steps or 0)
        try:
            for old in folder.glob("events.out.tfevents.*"):  # a mirror: rebuilt from the JSONL
                old.unlink()
            self.writer = SummaryWriter(log_dir=str(folder), flush_secs=flush_secs)
        except OSError as exc:
            raise HookError(
                f"`run.tensorboard` = {str(cfg.run.tensorboard)!r}: cannot write TensorBoard "
                f"files in {folder} ({exc.strerror or exc}); give a writable folder "
                "(--tensorboard DIR) or leave it unset"
            ) from exc
        for record in replay:
            self(record)

    def __call__(self, record: dict[str, Any]) -> None:
        self.writer.add_scalar(
            tensorboard_tag(record),
            float(record["value"]),
            global_step=tensorboard_step(record, self.steps_per_round),
        )

    def close(self) -> None:
        self.writer.close()
