"""Every name in a run directory, spelled once (docs/run-directory.md).

::

    config.toml      the resolved config          env.json       versions, device, git sha, start
    metrics.jsonl    one record per (round, client, split, metric), per step, and server records
    comm.jsonl       bytes up/down per client per round, by payload kind
    predictions.jsonl  one record per (round, client, split, test example): the answer, its score
    assignments/     round_NNN.json                checkpoints/   last/, best/ (atomic), clients/
    log.txt          the console log                done.json      written after the last round
    wire.jsonl       Flower only: serialized message sizes
    .lock            held (flock) by the process writing the run

A checkpoint is a folder ``checkpoints/<name>/`` holding ``tensors.safetensors`` and
``state.json``; a Flower client's state snapshots are checkpoint folders
``checkpoints/clients/client_NNN/round_RRR/``. No other module spells these names: code reaches
the files through :class:`RunLayout` (whose subclass :class:`~fedamole.rundir.RunDir` callers use)
and the constants here (``tests/unit/test_rundir_boundary.py`` checks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ASSIGNMENTS",
    "ASSIGNMENT_GLOB",
    "BACKUP_MARK",
    "BEST",
    "CHECKPOINTS",
    "CHECKPOINT_STATE",
    "CHECKPOINT_TENSORS",
    "CLIENT_CHECKPOINTS",
    "COMM",
    "CONFIG",
    "DONE",
    "ENV",
    "LAST",
    "LOG",
    "METRICS",
    "OLD_SUFFIX",
    "PREDICTIONS",
    "PROCESS_LOCK",
    "SNAPSHOT_GLOB",
    "TMP_SUFFIX",
    "WIRE",
    "RunLayout",
    "assignment_round",
    "checkpoint_folder",
    "client_snapshot",
    "snapshot_folder",
    "snapshot_round",
]

CONFIG = "config.toml"
ENV = "env.json"
METRICS = "metrics.jsonl"
COMM = "comm.jsonl"
PREDICTIONS = "predictions.jsonl"
ASSIGNMENTS = "assignments"
CHECKPOINTS = "checkpoints"
CLIENT_CHECKPOINTS = "clients"
LOG = "log.txt"
WIRE = "wire.jsonl"
DONE = "done.json"
PROCESS_LOCK = ".lock"

# checkpoints/<name>/: the engine keeps these two
LAST, BEST = "last", "best"
CHECKPOINT_TENSORS, CHECKPOINT_STATE = "tensors.safetensors", "state.json"
# a save in progress, and the checkpoint it replaces (kept until the new one is in place)
TMP_SUFFIX, OLD_SUFFIX = ".tmp", ".old"

# ``--overwrite`` moves a run directory aside to ``NAME.old-<time>``
BACKUP_MARK = ".old-"

_ROUND_PREFIX = "round_"  # assignments/round_NNN.json, snapshots' round_RRR/
_ASSIGNMENT = _ROUND_PREFIX + "{:03d}.json"
ASSIGNMENT_GLOB = _ROUND_PREFIX + "*.json"
SNAPSHOT_GLOB = _ROUND_PREFIX + "*"
_CLIENT = "client_{:03d}"
_ROUND = _ROUND_PREFIX + "{:03d}"


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run directory (nothing is read or written here)."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def env(self) -> Path:
        return self.path / ENV

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def comm(self) -> Path:
        return self.path / COMM

    @property
    def predictions(self) -> Path:
        """One record per test example per evaluation (absent in runs made before it existed)."""
        return self.path / PREDICTIONS

    @property
    def assignments(self) -> Path:
        return self.path / ASSIGNMENTS

    def assignment(self, rnd: int) -> Path:
        """``assignments/round_NNN.json``: the architecture after round ``rnd``."""
        return self.assignments / _ASSIGNMENT.format(rnd)

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def client_checkpoints(self) -> Path:
        """Flower only: the clients' own state snapshots (``state-dir`` of the simulation)."""
        return self.checkpoints / CLIENT_CHECKPOINTS

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def wire(self) -> Path:
        """Flower only: serialized message sizes next to the payload bytes."""
        return self.path / WIRE

    @property
    def done(self) -> Path:
        """The marker written after the last round: a sweep skips the run as finished."""
        return self.path / DONE

    @property
    def lock_file(self) -> Path:
        """The process lock: held (``flock``) by the process writing the run; names it."""
        return self.path / PROCESS_LOCK


def assignment_round(path: Path) -> int:
    """The round of an ``assignments/round_NNN.json`` file (one :data:`ASSIGNMENT_GLOB` found)."""
    return int(path.stem.removeprefix(_ROUND_PREFIX))


def checkpoint_folder(folder: Path, name: str) -> Path | None:
    """``folder/<name>``, or the ``<name>.old`` a crash in the middle of a save left, when it
    holds a checkpoint's ``state.json``; ``None`` if neither does."""
    for candidate in (name, f"{name}{OLD_SUFFIX}"):
        path = folder / candidate
        if (path / CHECKPOINT_STATE).exists():
            return path
    return None


def snapshot_folder(state_dir: Path, client: int) -> Path:
    """``<state dir>/client_NNN``: the folder of client ``client``'s state snapshots."""
    return state_dir / _CLIENT.format(client)


def client_snapshot(state_dir: Path, client: int, rnd: int) -> Path:
    """The folder of client ``client``'s state snapshot after round ``rnd``."""
    return snapshot_folder(state_dir, client) / _ROUND.format(rnd)


def snapshot_round(path: Path) -> int | None:
    """The round of a snapshot folder ``round_RRR``, or ``None`` for another name."""
    digits = path.name.removeprefix(_ROUND_PREFIX)
    return int(digits) if digits != path.name and digits.isdigit() else None
