"""The run directory: every file a run writes, and the only code that names them
(docs/run-directory.md; docs/architecture.md#the-layers, layer 6).

- :mod:`~fedamole.rundir.layout`: every file and folder name (the only place they are spelled),
  and :class:`RunLayout`, the paths of one run directory.
- :mod:`~fedamole.rundir.lifecycle`: :class:`RunDir` (create, resume, overwrite to a backup name,
  the process lock, the done marker), the default run directory, and :func:`config_mismatch`, the
  one rule for resuming a run with a config.
- :mod:`~fedamole.rundir.env`: ``env.json`` and the run directory's :data:`FORMAT_VERSION`.
- :mod:`~fedamole.rundir.records`: the records' schema, the JSON-lines writer and readers, the
  assignments, and :func:`fold`, the one reading of scores from ``metrics.jsonl``.
- :mod:`~fedamole.rundir.checkpoints`: atomic checkpoints and the clients' state snapshots.
- :mod:`~fedamole.rundir.ledger`: what a checkpoint records of the other files, and the checks
  and repairs of a resume against it (imported by the engines directly: it needs torch).
- :mod:`~fedamole.rundir.hooks`: the record hooks (:class:`RecordHook`, TensorBoard, ``run.hooks``).
- :mod:`~fedamole.rundir.logs`: console and ``log.txt`` logging.

It imports nothing from the engines, the analysis, the algorithms or export (only the config
package; ``tests/unit/test_rundir_boundary.py`` checks it).
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from fedamole.rundir.env import FORMAT_VERSION, environment, format_version
from fedamole.rundir.hooks import (
    ClosingHook,
    HookError,
    RecordHook,
    RecordHooks,
    TensorBoardHook,
    check_hooks,
    load_hook,
    open_hooks,
    tensorboard_folder,
    tensorboard_step,
    tensorboard_tag,
)
from fedamole.rundir.layout import BEST, CONFIG, LAST, RunLayout, client_snapshot
from fedamole.rundir.lifecycle import (
    ConfigMismatch,
    RunDir,
    RunDirError,
    config_mismatch,
    default_run_dir,
    is_backup,
)
from fedamole.rundir.logs import setup_logging
from fedamole.rundir.records import (
    SERVER_CLIENT,
    Fold,
    JsonlLogger,
    JsonlTail,
    comm_record,
    fold,
    metric_record,
    prediction_records,
    read_jsonl,
    read_predictions,
)

# :mod:`~fedamole.rundir.checkpoints` needs torch: imported on first use (PEP 562), so that
# reading records (``fedamole report``, ``fedamole plot``) starts without it
_CHECKPOINT_NAMES = (
    "CheckpointError",
    "checkpoint_config",
    "checkpoint_info",
    "checkpoint_rounds",
    "client_snapshots",
    "client_state",
    "has_checkpoint",
    "load_checkpoint",
    "promote_checkpoint",
    "save_checkpoint",
)
if _TYPE_CHECKING:
    from fedamole.rundir.checkpoints import (
        CheckpointError,
        checkpoint_config,
        checkpoint_info,
        checkpoint_rounds,
        client_snapshots,
        client_state,
        has_checkpoint,
        load_checkpoint,
        promote_checkpoint,
        save_checkpoint,
    )


def __getattr__(name: str) -> object:
    if name in _CHECKPOINT_NAMES:
        from fedamole.rundir import checkpoints

        return getattr(checkpoints, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BEST",
    "CONFIG",
    "FORMAT_VERSION",
    "LAST",
    "SERVER_CLIENT",
    "CheckpointError",
    "ClosingHook",
    "ConfigMismatch",
    "Fold",
    "HookError",
    "JsonlLogger",
    "JsonlTail",
    "RecordHook",
    "RecordHooks",
    "RunDir",
    "RunDirError",
    "RunLayout",
    "TensorBoardHook",
    "check_hooks",
    "checkpoint_config",
    "checkpoint_info",
    "checkpoint_rounds",
    "client_snapshot",
    "client_snapshots",
    "client_state",
    "comm_record",
    "config_mismatch",
    "default_run_dir",
    "environment",
    "fold",
    "format_version",
    "has_checkpoint",
    "is_backup",
    "load_checkpoint",
    "load_hook",
    "metric_record",
    "open_hooks",
    "prediction_records",
    "promote_checkpoint",
    "read_jsonl",
    "read_predictions",
    "save_checkpoint",
    "setup_logging",
    "tensorboard_folder",
    "tensorboard_step",
    "tensorboard_tag",
]
