"""One client-round timed by phase: the worker behind ``fedamole bench round`` (a script).

The driver (:mod:`fedamole.bench.round`) runs this file as ``python -P round_worker.py ...`` with
``PYTHONPATH`` set to the ``src`` folder of the revision it times, so the same worker can time
this revision and an older one side by side. It therefore imports only what every revision since
the round template has had (``config.load``, ``build_runtime``, ``load_federated_data``,
``ClientContext`` and the algorithm's ``local_update``/``aggregate``) and finds the phases by
wrapping functions by name: a probe whose function a revision lacks times nothing, and its time
shows up as ``other``.

Each repetition restores the model and the server state taken right after ``setup``, so every
repetition plays the same round 1 of the same client. The JSON written to ``--out`` holds, per
repetition, the seconds per phase, the whole client-round, and the client's metrics (which the
driver compares across revisions).
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

# (phase, "module:function" or "algo:method", parent phase it may nest in, or None). A probe called
# while another phase runs is counted only when that phase is its declared parent; otherwise its
# time stays with the running phase (eval loss calls the same loss function as test loss). Later
# revisions merge passes: scoring yields the answer-choice test loss, and the free-text test loss
# comes from the prompt pass that generation starts from, so their time counts there.
PROBES: tuple[tuple[str, str, str | None], ...] = (
    ("configure", "algo:configure_round", None),
    ("load", "algo:load", None),
    ("train", "algo:train_round", None),
    ("rsea statistics", "fedamole.mole.stats:embedding_stats", None),
    ("test scoring", "fedamole.evaluation:score_choices", None),
    ("test scoring", "fedamole.evaluation:_choice_nll", None),
    ("generation", "fedamole.evaluation:generate_responses", None),
    ("generation", "fedamole.evaluation:_free_text", None),  # + the free-text test loss
    ("test loss", "fedamole.evaluation:_loss_sums", None),
    ("eval loss", "fedamole.algorithms.base:eval_loss", None),
    ("server aggregation", "algo:aggregate", None),
    ("assignment", "algo:_next_assignment", "server aggregation"),
)
EVAL_PHASES = ("test scoring", "generation", "test loss", "eval loss")


class PhaseTimer:
    """Exclusive seconds per phase of wrapped functions (see :data:`PROBES` for nesting)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list[Any]] = []  # [phase, seconds spent in counted children]

    def reset(self) -> None:
        self.seconds.clear()
        self._stack.clear()

    def wrap(self, fn: Callable[..., Any], phase: str, parent: str | None) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._stack and self._stack[-1][0] != parent:
                return fn(*args, **kwargs)  # inside another phase: its time stays there
            frame = [phase, 0.0]
            self._stack.append(frame)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self._stack.pop()
                self.seconds[phase] += elapsed - frame[1]
                if self._stack:
                    self._stack[-1][1] += elapsed

        return timed


def install_probes(timer: PhaseTimer, algo: Any) -> dict[str, bool]:
    """Wrap every probe this revision has; returns phase -> whether it was found."""
    found: dict[str, bool] = {}
    for phase, target, parent in PROBES:
        owner, _, name = target.partition(":")
        if owner == "algo":
            method = getattr(algo, name, None)
            if method is not None:
                setattr(algo, name, timer.wrap(method, phase, parent))
            found[phase] = found.get(phase, False) or method is not None
            continue
        try:
            original = getattr(importlib.import_module(owner), name, None)
        except ImportError:
            original = None
        found[phase] = found.get(phase, False) or original is not None
        if original is None:
            continue
        wrapped = timer.wrap(original, phase, parent)
        for module in list(sys.modules.values()):  # every `from x import name` binding too
            if getattr(module, "__name__", "").startswith("fedamole"):
                for key, value in list(vars(module).items()):
                    if value is original:
                        setattr(module, key, wrapped)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--override", action="append", default=[])
    parser.add_argument("--client", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    import fedamole
    from fedamole.algorithms.base import ClientContext
    from fedamole.algorithms.runtime import build_runtime
    from fedamole.config import load
    from fedamole.data import load_federated_data

    start = time.perf_counter()
    cfg = load(args.config, args.override)
    runtime = build_runtime(cfg)
    data = load_federated_data(cfg)
    algo, model = runtime.algo, runtime.model
    algo.setup(model)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    server = copy.deepcopy(algo.state_dict())
    startup = time.perf_counter() - start

    timer = PhaseTimer()
    found = install_probes(timer, algo)
    reps = []
    for _ in range(args.repeats):
        model.load_state_dict(weights)
        algo.load_state_dict(copy.deepcopy(server))
        ctx = ClientContext(args.client, data.clients[args.client], model, runtime.tokenizer)
        timer.reset()
        start = time.perf_counter()
        messages = algo.configure_round(1)
        reply = algo.local_update(1, messages[args.client], ctx)
        algo.aggregate(1, {args.client: reply})
        total = time.perf_counter() - start
        phases = dict(timer.seconds)
        phases["other"] = total - sum(phases.values())
        reps.append(
            {"total": total, "phases": phases, "metrics": dict(sorted(reply.metrics.items()))}
        )
    result = {
        "source": str(fedamole.__file__),
        "threads": torch.get_num_threads(),
        "startup_seconds": startup,
        "probes_found": found,
        "repeats": reps,
    }
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
