"""Record hooks: mirrors of ``metrics.jsonl`` (docs/run-directory.md#tracking).

``metrics.jsonl`` is the source of truth; every record written to it is also handed, as written,
to the run's record hooks (:func:`open_hooks`), in this order: a TensorBoard mirror
(``run.tensorboard``, :class:`TensorBoardHook`), the callables that ``run.hooks`` names
(``"package.module:function"``) and ``fedamole.run(..., on_record=fn)``'s. Each is a
:class:`RecordHook`; one that is also :class:`ClosingHook` is closed when the run ends. A hook
that raises is logged and the run goes on; :func:`check_hooks` finds a hook that cannot be
imported, or TensorBoard missing, before a run starts.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from fedamole.config import Config
from fedamole.rundir.layout import RunLayout
from fedamole.rundir.records import read_jsonl

__all__ = [
    "TENSORBOARD_INSTALL",
    "ClosingHook",
    "HookError",
    "RecordHook",
    "RecordHooks",
    "TensorBoardHook",
    "check_hooks",
    "load_hook",
    "open_hooks",
    "tensorboard_folder",
    "tensorboard_step",
    "tensorboard_tag",
]


class RecordHook(Protocol):
    """Called with every ``metrics.jsonl`` record as it is written (a fresh dict per call, keys
    sorted as in the file); a plain function is one."""

    def __call__(self, record: dict[str, Any], /) -> None: ...


@runtime_checkable
class ClosingHook(Protocol):
    """A record hook with a ``close()``, called once when the run ends (a TensorBoard writer,
    a tracker's session)."""

    def __call__(self, record: dict[str, Any], /) -> None: ...

    def close(self) -> None: ...


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


def tensorboard_folder(setting: str | Path, run_dir: Path) -> Path:
    """Where a run's TensorBoard mirror goes: ``<setting>/<run directory's name>-<8 hex>``, the
    hex digits a hash of the run directory's resolved path, so that two runs of one name (the same
    grid point in two sweeps) mirror into two folders of one ``--tensorboard DIR`` (``~``
    expanded)."""
    return Path(setting).expanduser() / f"{run_dir.resolve().name}-{_run_key(run_dir)}"


def _run_key(run_dir: Path) -> str:
    """8 hex digits that tell run directories apart: a hash of the resolved path."""
    return hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:8]


def open_hooks(cfg: Config, run: RunLayout, on_record: RecordHook | None = None) -> RecordHooks:
    """The run's record hooks, in this order: the TensorBoard mirror when ``run.tensorboard`` is
    set (event files in :func:`tensorboard_folder`, :class:`TensorBoardHook`, rebuilt from the
    records ``metrics.jsonl`` already holds), each ``run.hooks`` entry, then ``on_record``. Open
    them after a resume has truncated ``metrics.jsonl``.

    Raises:
        HookError: as :func:`check_hooks`.
    """
    check_hooks(cfg)
    hooks: list[tuple[str, RecordHook]] = []
    if cfg.run.tensorboard is not None:
        folder = tensorboard_folder(cfg.run.tensorboard, run.path)
        written = read_jsonl(run.metrics) if run.metrics.exists() else ()
        steps = max(cfg.train.steps, cfg.baselines.feddpa.local_steps or 0)
        mirror = TensorBoardHook(
            folder, steps, setting=cfg.run.tensorboard, replay=written, key=_run_key(run.path)
        )
        hooks.append((f"tensorboard ({folder})", mirror))
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
            if isinstance(hook, ClosingHook):
                try:
                    hook.close()
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

    Per-step records use ``steps_per_round`` (:func:`open_hooks`: ``train.steps``, or FedDPA's
    ``baselines.feddpa.local_steps`` when larger), so their global step grows across rounds.
    ``setting`` is ``run.tensorboard`` as configured, which error messages name.

    The folder is a mirror, rebuilt whenever a run starts or resumes: the event files this run
    wrote before (their names end in ``.<key>``, the run directory's :func:`_run_key`) are removed
    and ``replay`` (the records ``metrics.jsonl`` already holds, after a resume's truncation) is
    written first. So a run killed in the middle of a round and resumed shows each point once, as
    an uninterrupted run does, and ``--tensorboard`` added on a resume shows the whole run. Event
    files of any other writer in the folder are left alone.

    Raises:
        HookError: TensorBoard is not installed.
    """

    def __init__(
        self,
        folder: Path,
        steps_per_round: int,
        *,
        setting: str,
        replay: Iterable[Mapping[str, Any]] = (),
        key: str = "fedamole",
        flush_secs: int = 10,
    ):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise HookError(_no_tensorboard(setting, f" ({exc})")) from exc
        self.folder = folder
        self.steps_per_round = steps_per_round
        try:
            for old in folder.glob(f"events.out.tfevents.*.{key}"):  # ours: rebuilt from the JSONL
                old.unlink()
            self.writer = SummaryWriter(
                log_dir=str(folder), flush_secs=flush_secs, filename_suffix=f".{key}"
            )
        except OSError as exc:
            raise HookError(
                f"`run.tensorboard` = {setting!r}: cannot write TensorBoard "
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
