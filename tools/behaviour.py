"""Record smoke runs of every algorithm, and compare two recordings byte for byte.

A refactoring that must not change behaviour is checked with it: record before, record after,
compare. What is compared is what a run's results are made of: ``metrics.jsonl``, ``comm.jsonl``
and every file under ``assignments/`` (``env.json``, logs and checkpoints may differ), byte for
byte except the wall-clock ``server/round_seconds`` records, which no two runs share.

Usage::

    python tools/behaviour.py record OUT [--engine embedded --engine flower] [--case NAME ...]
    python tools/behaviour.py compare BEFORE AFTER

``record`` runs ``configs/smoke.toml`` (tiny model, 3 clients, 2 rounds) once per case (every
registered algorithm has one) and engine, each in its own ``fedamole`` process with one torch
thread, under ``OUT/<engine>/<case>/``. The Flower engine needs ``make install-flower``. To
record another revision of the code side by side, check it out in a git worktree and run its own
copy of this script with ``PYTHONPATH=<tree>/src``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from fedamole.algorithms.registry import algorithm_names

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.toml"

# One case per algorithm (eval.timing=both wherever the algorithm has a global model), plus the
# FedAMoLE ablations whose server paths differ (assignment policy, privacy noise, linear router).
CASES: dict[str, list[str]] = {
    "fedamole": [],
    "fedamole_static": ["federation.assignment=static"],
    "fedamole_random_homog": ["federation.assignment=random", "federation.homogeneous=true"],
    "fedamole_privacy": ["federation.privacy=true"],
    "fedamole_linear_noshared": ["mole.router=linear", "mole.shared_expert=false"],
    "local": ["federation.algorithm=local"],
    "fedit": ["federation.algorithm=fedit", "eval.timing=both"],
    "ffa_lora": ["federation.algorithm=ffa_lora", "eval.timing=both"],
    "fedsa_lora": ["federation.algorithm=fedsa_lora", "eval.timing=both"],
    "feddpa": ["federation.algorithm=feddpa", "eval.timing=both"],
    "fdlora": ["federation.algorithm=fdlora", "eval.timing=both", "federation.rounds=3"],
    "fedprompt": ["federation.algorithm=fedprompt", "eval.timing=both"],
    "fedptuning": ["federation.algorithm=fedptuning", "eval.timing=both"],
}
# Any other registered algorithm (fedamole.algorithms.registry), with the smoke config's settings.
CASES |= {name: [f"federation.algorithm={name}"] for name in algorithm_names() if name not in CASES}
COMPARED = ("metrics.jsonl", "comm.jsonl")
TIMING = b'"metric": "round_seconds"'  # wall-clock records: never equal between two runs
STEP = b'"step": '  # per-step training records: absent from recordings made before they existed


def record(out: Path, engines: list[str], cases: list[str]) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    failed = 0
    for engine in engines:
        for case in cases:
            run_dir = out / engine / case
            cmd = [sys.executable, "-m", "fedamole", "run", str(SMOKE), *CASES[case]]
            cmd += [f"run.name={case}", "--run-dir", str(run_dir), "--engine", engine]
            cmd.append("--overwrite")
            start = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            took = time.perf_counter() - start
            status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
            print(f"{engine:9s} {case:26s} {took:6.1f} s  {status}", flush=True)
            if proc.returncode:
                failed += 1
                print(proc.stderr[-2000:], file=sys.stderr)
    return 1 if failed else 0


def _files(run: Path) -> list[str]:
    names = [n for n in COMPARED if (run / n).exists()]
    folder = run / "assignments"
    if folder.is_dir():
        names += sorted(str(p.relative_to(run)) for p in folder.rglob("*") if p.is_file())
    return names


def _content(path: Path) -> list[bytes]:
    """The file's lines, without the wall-clock and the per-step records (the per-round ones are
    derived from the same steps, so any change in training still shows)."""
    return [
        line for line in path.read_bytes().splitlines() if TIMING not in line and STEP not in line
    ]


def compare(before: Path, after: Path) -> int:
    runs = sorted({p.parent.relative_to(before) for p in before.rglob("metrics.jsonl")})
    if not runs:
        print(f"error: no recorded run under {before}", file=sys.stderr)
        return 2
    differing = 0
    for run in runs:
        names = _files(before / run)
        problems = []
        if not (after / run).is_dir():
            problems.append("missing")
        else:
            extra = set(_files(after / run)) - set(names)
            problems += [f"{n}: only after" for n in sorted(extra)]
            for name in names:
                a, b = before / run / name, after / run / name
                if not b.exists():
                    problems.append(f"{name}: missing")
                elif _content(a) != _content(b):
                    problems.append(f"{name}: differs")
        verdict = "identical" if not problems else "; ".join(problems)
        print(f"{run!s:36s} {len(names):3d} files  {verdict}")
        differing += bool(problems)
    print(f"{len(runs) - differing} of {len(runs)} runs byte-identical")
    return 1 if differing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run every case and engine into OUT")
    rec.add_argument("out", type=Path)
    rec.add_argument("--engine", action="append", choices=["embedded", "flower"])
    rec.add_argument("--case", action="append", choices=sorted(CASES))
    cmp_ = sub.add_parser("compare", help="compare two recordings; exit 1 if any file differs")
    cmp_.add_argument("before", type=Path)
    cmp_.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "record":
        return record(args.out, args.engine or ["embedded"], args.case or list(CASES))
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
