"""The training step alone, timed, counted and profiled: the worker behind ``fedamole bench step``.

The driver (:mod:`fedamole.bench.step`) runs this file as ``python -P step_worker.py ...`` with
``PYTHONPATH`` set to the ``src`` folder of the revision it times, so one worker times this
revision and an older one side by side. Like :mod:`fedamole.bench.round_worker` it therefore
imports only what every revision since the round template has had (``config.load``,
``build_runtime``, ``load_federated_data``, ``ClientContext``, ``configure_round``,
``local_update`` and ``fedamole.training.local_train``), and it holds its own FLOP formula and op
groups instead of importing them.

What it does, in one process and for one algorithm:

1. Loads the config with ``federation.algorithm`` and ``train.steps = warmup + steps + profiled``
   overridden, builds the model and data (not timed), and plays round 1 of one client up to the end
   of local training: ``local_train`` is wrapped so that it records the client's batch stream and
   the time of every optimizer step, then stops the round (RSEA statistics and evaluation are not
   played).
2. Replays the recorded stream to count each step's real tokens (attention mask), padded tokens
   (rows times the micro-batch's padded width) and the columns the lm head runs on.
3. Computes the step's model FLOPs from the backbone's shapes (:func:`model_flops`), on the real
   tokens and on the padded ones.
4. Measures this machine's matrix-product rate on the model's own shapes, dtype and thread count
   (:func:`matmul_rate`).
5. Profiles the last ``profiled`` steps with ``torch.profiler`` and sums self time by op group
   (:data:`OP_GROUPS`); the time outside every op (Python, autograd bookkeeping) is its own group.

The JSON written to ``--out`` holds all of it plus the step losses, which the driver compares
across revisions.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

IGNORE_INDEX = -100

# Op groups of the profile, by ATen op name (self time); a trailing ``*`` matches a prefix. An op
# in none of them counts as "elementwise and other ops"; time outside every op is its own group.
OP_GROUPS: dict[str, tuple[str, ...]] = {
    "matrix products": ("mm", "addmm", "bmm", "baddbmm", "addmv", "mv", "dot", "matmul", "linear"),
    "attention": ("_scaled_dot_product*", "scaled_dot_product*"),
    "copies and casts": (
        "copy_",
        "_to_copy",
        "clone",
        "contiguous",
        "cat",
        "stack",
        "index",
        "index_select",
        "gather",
        "scatter",
        "scatter_add_",
        "index_put_",
        "_index_put_impl_",
        "masked_fill_",
    ),
    "optimizer": ("_foreach_*", "_fused_adam*", "addcdiv_", "addcmul_", "lerp_"),
    "dropout and random": ("bernoulli_", "native_dropout*", "uniform_", "normal_"),
    "softmax and loss": ("_softmax*", "_log_softmax*", "nll_loss*", "cross_entropy*", "topk"),
}
OTHER_OPS = "elementwise and other ops"
OUTSIDE_OPS = "outside ops (Python, autograd)"


def op_group(name: str) -> str:
    """The group of an ATen op name such as ``"aten::mm"`` (see :data:`OP_GROUPS`)."""
    op = name.removeprefix("aten::")
    for group, patterns in OP_GROUPS.items():
        for pattern in patterns:
            if op == pattern or (pattern.endswith("*") and op.startswith(pattern[:-1])):
                return group
    return OTHER_OPS


def label_columns(labels: Sequence[Sequence[int]]) -> int:
    """Columns of a left-padded micro-batch the lm head runs on: from the column before the
    earliest labelled one to the end (the rule of ``fedamole.training.logits_window``)."""
    width = max(len(row) for row in labels)
    firsts = [
        width - len(row) + next(i for i, t in enumerate(row) if t != IGNORE_INDEX)
        for row in labels
        if any(t != IGNORE_INDEX for t in row)
    ]
    return width if not firsts else min(width, width - min(firsts) + 1)


def batch_tokens(batch: Sequence[dict[str, list[int]]], micro: int) -> dict[str, int]:
    """Token counts of one optimizer step: ``real`` (sum of lengths), ``padded`` (rows times the
    padded width, per micro-batch), ``head`` (rows times the lm head's columns) and
    ``attention_pairs`` (causal query-key pairs over real tokens, ``n (n + 1) / 2`` per row)."""
    out = {"real": 0, "padded": 0, "head": 0, "attention_pairs": 0, "padded_attention_pairs": 0}
    for start in range(0, len(batch), micro):
        rows = batch[start : start + micro]
        lengths = [len(ex["input_ids"]) for ex in rows]
        width = max(lengths)
        out["real"] += sum(lengths)
        out["padded"] += width * len(rows)
        out["head"] += label_columns([ex["labels"] for ex in rows]) * len(rows)
        out["attention_pairs"] += sum(n * (n + 1) // 2 for n in lengths)
        out["padded_attention_pairs"] += len(rows) * width * (width + 1) // 2
    return out


def frozen_linears(model: Any) -> list[tuple[str, int, int]]:
    """``(name, d_in, d_out)`` of every frozen ``nn.Linear`` of the backbone except the lm head:
    the weights every token goes through (adapters, which require gradients, are left out)."""
    from torch import nn

    head = model.get_output_embeddings()
    found = []
    for name, module in model.named_modules():
        frozen = isinstance(module, nn.Linear) and not module.weight.requires_grad
        if frozen and module is not head:
            found.append((name, module.in_features, module.out_features))
    return found


def model_flops(
    linears: Sequence[tuple[str, int, int]],
    *,
    tokens: int,
    attention_pairs: int,
    head_tokens: int,
    layers: int,
    heads: int,
    head_dim: int,
    hidden: int,
    vocab: int,
) -> dict[str, float]:
    """FLOPs of one training step of a frozen backbone with adapters (docs/results/performance.md).

    Every frozen linear ``(d_in, d_out)`` costs ``2 T d_in d_out`` forward and the same again
    backward (the input gradient only: its weight is frozen); causal attention costs
    ``4 H d_h P`` forward per layer (scores and weighted sum over ``P`` query-key pairs) and
    twice that backward; the lm head ``2 K d V`` forward and backward on the ``K`` label
    columns. Adapters, norms, activations and the optimizer are not counted (they are the
    overhead this measures against).

    Args:
        linears: ``(name, d_in, d_out)`` of the frozen linears (:func:`frozen_linears`).
        tokens: ``T``, tokens through the linears (real or padded).
        attention_pairs: ``P``, causal query-key pairs, summed over rows.
        head_tokens: ``K``, rows times label columns.
        layers, heads, head_dim, hidden, vocab: the backbone's shapes.
    """
    linear = 2 * 2 * tokens * sum(d_in * d_out for _, d_in, d_out in linears)
    attention = 3 * 4 * layers * heads * head_dim * attention_pairs
    head = 2 * 2 * head_tokens * hidden * vocab
    return {"linear": linear, "attention": attention, "lm_head": head}


def matmul_rate(
    linears: Sequence[tuple[str, int, int]], tokens: int, dtype: Any, repeats: int = 5
) -> dict[str, Any]:
    """This machine's matrix-product rate on the model's own shapes (GFLOP/s).

    For every distinct ``(d_in, d_out)`` of the frozen linears, times the forward product
    ``F.linear(x, W)`` with ``x`` of shape ``(tokens, d_in)`` and the input-gradient product
    ``g @ W`` with ``g`` of shape ``(tokens, d_out)``, in ``dtype`` with torch's current thread
    count (the median of ``repeats`` after a warm-up); the rate weighs each shape by how often the
    model uses it: total FLOPs over total time.
    """
    import torch
    import torch.nn.functional as F

    counts: dict[tuple[int, int], int] = {}
    for _, d_in, d_out in linears:
        counts[(d_in, d_out)] = counts.get((d_in, d_out), 0) + 1
    gen = torch.Generator().manual_seed(0)
    shapes, total_flops, total_seconds = [], 0.0, 0.0
    for (d_in, d_out), count in sorted(counts.items()):
        w = torch.randn(d_out, d_in, generator=gen).to(dtype)  # (d_out, d_in), like nn.Linear
        x = torch.randn(tokens, d_in, generator=gen).to(dtype)  # (T, d_in)
        g = torch.randn(tokens, d_out, generator=gen).to(dtype)  # (T, d_out)

        def both(w: Any = w, x: Any = x, g: Any = g) -> None:
            F.linear(x, w)  # (T, d_in) @ (d_in, d_out)
            g @ w  # (T, d_out) @ (d_out, d_in)

        seconds = _median_seconds(both, repeats)
        flops = 2 * 2 * tokens * d_in * d_out
        shapes.append(
            {"d_in": d_in, "d_out": d_out, "count": count, "gflops": flops / seconds / 1e9}
        )
        total_flops += flops * count
        total_seconds += seconds * count
    return {
        "tokens": tokens,
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "gflops": total_flops / total_seconds / 1e9 if total_seconds else 0.0,
        "shapes": shapes,
    }


def _median_seconds(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up: kernel selection, first allocation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def profile_groups(events: Any, wall: float) -> dict[str, float]:
    """Seconds per op group (:data:`OP_GROUPS`) from a profiler's ``key_averages()``, plus
    :data:`OUTSIDE_OPS`: the wall time the ops' self times do not cover."""
    out: dict[str, float] = {}
    covered = 0.0
    for event in events:
        seconds = event.self_cpu_time_total / 1e6
        covered += seconds
        if not event.key.startswith("aten::"):
            group = "framework (autograd nodes, annotations)"
        else:
            group = op_group(event.key)
        out[group] = out.get(group, 0.0) + seconds
    out[OUTSIDE_OPS] = max(wall - covered, 0.0)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


class _Stop(Exception):
    """Ends the round after local training: the worker needs nothing after it."""


def _wrap_local_train(record: dict[str, Any], timed: int, profiled: int) -> None:
    import torch.profiler

    import fedamole.training

    original = fedamole.training.local_train

    def wrapped(model: Any, params: Any, stream: Any, cfg: Any, **kwargs: Any) -> Any:
        record["stream"] = copy.deepcopy(stream)
        record["batch_size"] = cfg.batch_size
        record["micro"] = cfg.micro_batch_size or cfg.batch_size
        marks: list[float] = []
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

        def timing(steps: Iterator[int]) -> Iterator[int]:
            for i in steps:
                if i == timed and profiled:
                    prof.start()
                    record["profile_start"] = time.perf_counter()
                marks.append(time.perf_counter())
                yield i
            marks.append(time.perf_counter())
            if profiled:
                prof.stop()
                wall = marks[-1] - record["profile_start"]
                record["profile"] = profile_groups(prof.key_averages(), wall)
                record["profile_wall"] = wall

        kwargs["progress"] = timing
        result = original(model, params, stream, cfg, **kwargs)
        record["step_seconds"] = [b - a for a, b in itertools.pairwise(marks)]
        record["step_losses"] = list(getattr(result, "step_losses", ()))
        record["loss"] = result.loss
        raise _Stop

    for module in list(sys.modules.values()):  # every `from fedamole.training import ...` too
        if getattr(module, "__name__", "").startswith("fedamole"):
            for key, value in list(vars(module).items()):
                if value is original:
                    setattr(module, key, wrapped)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--override", action="append", default=[])
    parser.add_argument("--algorithm", required=True)
    parser.add_argument("--client", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--profiled", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    import fedamole
    from fedamole.algorithms.base import ClientContext
    from fedamole.algorithms.runtime import build_runtime
    from fedamole.config import load
    from fedamole.data import load_federated_data

    total = args.warmup + args.steps + args.profiled
    overrides = [*args.override, f"federation.algorithm={args.algorithm}", f"train.steps={total}"]
    cfg = load(args.config, overrides)
    runtime = build_runtime(cfg)
    data = load_federated_data(cfg)
    algo, model = runtime.algo, runtime.model
    algo.setup(model)
    ctx = ClientContext(args.client, data.clients[args.client], model, runtime.tokenizer)
    record: dict[str, Any] = {}
    _wrap_local_train(record, args.warmup + args.steps, args.profiled)
    messages = algo.configure_round(1)
    try:
        algo.local_update(1, messages[args.client], ctx)
    except _Stop:
        pass
    else:
        raise SystemExit("local training did not run through fedamole.training.local_train")

    stream = record.pop("stream")
    counts = [
        batch_tokens(stream.take(record["batch_size"]), record["micro"]) for _ in range(total)
    ]
    timed = slice(args.warmup, args.warmup + args.steps)
    seconds = record["step_seconds"][timed]
    mean = {k: statistics.fmean(c[k] for c in counts[timed]) for k in counts[0]}
    linears = frozen_linears(model)
    conf = model.config
    heads = conf.num_attention_heads
    shapes = {
        "layers": conf.num_hidden_layers,
        "heads": heads,
        "head_dim": getattr(conf, "head_dim", None) or conf.hidden_size // heads,
        "hidden": conf.hidden_size,
        "vocab": conf.vocab_size,
    }
    pairs = {"real": "attention_pairs", "padded": "padded_attention_pairs"}
    flops = {
        side: model_flops(
            linears,
            tokens=round(mean[side]),
            attention_pairs=round(mean[pairs[side]]),
            head_tokens=round(mean["head"]),
            **shapes,
        )
        for side in pairs
    }
    dtype = next(m.weight.dtype for m in model.modules() if isinstance(m, torch.nn.Linear))
    micro_tokens = round(mean["padded"] / max(1, -(-record["batch_size"] // record["micro"])))
    result = {
        "source": str(fedamole.__file__),
        "algorithm": args.algorithm,
        "client": args.client,
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "warmup": args.warmup,
        "steps": args.steps,
        "profiled": args.profiled,
        "step_seconds": record["step_seconds"],
        "median_step_seconds": statistics.median(seconds),
        "tokens": mean,
        "shapes": shapes,
        "flops": flops,
        "matmul": matmul_rate(linears, micro_tokens, dtype),
        "profile": record.get("profile", {}),
        "profile_wall": record.get("profile_wall", 0.0),
        "step_losses": record["step_losses"],
        "loss": record["loss"],
    }
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
