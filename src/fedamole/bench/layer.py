"""Benchmark of the HMoLE layer: module level and one whole training step
(docs/algorithm.md#routing).

Module level: forward+backward (train mode, dropout 0.05, gradient w.r.t. the input too, as inside
a model) of :class:`~fedamole.mole.MoLELinear` (n=6 held experts, top-2, r=8) against a peft LoRA
``Linear`` (r=8) and against a sort-and-loop MoLE in the reference's style (tokens sorted by
expert, a Python loop over experts, un-permuted), which shares the MoLE layer's parameters. Sizes
``d_in = d_out`` in {576 (SmolLM2), 2048 (Llama-3.2-1B)} and {512, 2048} tokens, with the default
dtype policy's base (bf16 where the CPU supports it) and fp32; adapters are fp32 in every variant.

Step level: one optimizer step (forward, backward, Adam) of the embedded SmolLM2 with MoLE on q/v
(balance loss included) against the same with one peft LoRA (r=8, q/v), batch 4 x 128 tokens, with
the default dtype policy (``models.resolve_dtype('auto')``) and fp32.

Variants are run interleaved (rotating order every repetition) and medians are reported, because
the target machine is noisy. ``quick=True`` shrinks everything to a tiny model for smoke tests.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import peft
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedamole.config import MoLEConfig
from fedamole.models import load_model_and_tokenizer, resolve_dtype, tiny_causal_lm
from fedamole.mole import (
    MoLELinear,
    balance_loss,
    expert_embedding_logits,
    get_mole_state,
    inject_mole,
    mole_parameters,
    route,
    set_mole_state,
)

__all__ = ["main"]

_HELD, _TOP_K, _RANK, _DROPOUT = 6, 2, 8, 0.05


def main(out_dir: Path, *, quick: bool = False) -> dict:
    """Run the layer benchmark, write ``layer.json`` under ``out_dir`` and print a table.

    Args:
        out_dir: output folder (created if missing).
        quick: tiny sizes and few repetitions (a smoke test, a few seconds).

    Returns:
        The JSON-able results: ``modules`` and ``steps`` rows with median milliseconds and ratios.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    policy = resolve_dtype("auto", torch.device("cpu"))
    dtypes = [torch.float32] if policy == torch.float32 else [policy, torch.float32]
    threads = torch.get_num_threads()
    result = {
        "quick": quick,
        "threads": threads,
        "torch": torch.__version__,
        "peft": peft.__version__,
        "loadavg_before": _loadavg(),
        # One thread as well: on a busy 2-core machine multi-threaded timings swing with the load.
        "modules": [row for t in sorted({threads, 1}) for row in _module_rows(dtypes, quick, t)],
        "steps": _step_rows(dtypes, quick),
        "loadavg_after": _loadavg(),
    }
    (out_dir / "layer.json").write_text(json.dumps(result, indent=2) + "\n")
    _print_table(result)
    return result


# --------------------------------------------------------------------------------------------------
# Timing


def _interleaved(
    fns: dict[str, Callable[[], None]], reps: int, warmup: int = 1
) -> dict[str, float]:
    """Median milliseconds of each function, repetitions interleaved with a rotating order."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(warmup + reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            fns[name]()
            if rep >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


# --------------------------------------------------------------------------------------------------
# Module level


class _Holder(nn.Module):
    def __init__(self, proj: nn.Linear) -> None:
        super().__init__()
        self.proj = proj


class _SortLoopMoLE(nn.Module):
    """The reference's execution scheme over a MoLELinear's parameters (benchmark only).

    Tokens are duplicated per top-k slot, sorted by expert, split, run through a Python loop over
    experts (an independent dropout mask per expert call), weighted, un-permuted and summed over k.
    """

    def __init__(self, mole: MoLELinear) -> None:
        super().__init__()
        self.mole = mole

    def forward(self, x: Tensor) -> Tensor:
        m = self.mole
        result = m.base_layer(x)  # (..., d_out)
        x_flat = x.reshape(-1, x.shape[-1]).to(m.lora_A.dtype)  # (T, d_in)
        num_tokens, (n, rank, d_in), k = x_flat.shape[0], m.lora_A.shape, m.top_k
        token = x_flat @ m.token_proj.weight.T  # (T, d_in) @ (d_in, r)
        a_rows = m.lora_A.reshape(n * rank, d_in)  # (n*r, d_in)
        expert = (x_flat @ a_rows.T).view(num_tokens, n, rank)  # (T, n, r)
        routing = route(expert_embedding_logits(expert, token), k)
        x_shared = F.dropout(x_flat, m.dropout, m.training)  # (T, d_in)
        shared = x_shared @ m.shared_A.T @ m.shared_B.T  # (T, d_out)
        slots = routing.indices.reshape(-1)  # (T*k,)
        order = slots.argsort()  # (T*k,)
        counts = torch.bincount(slots, minlength=n).tolist()
        sorted_x = x_flat[order // k]  # (T*k, d_in)
        pieces = [
            F.dropout(chunk, m.dropout, m.training) @ m.lora_A[e].T @ m.lora_B[e].T  # (c_e, d_out)
            for e, chunk in enumerate(sorted_x.split(counts))
        ]
        sorted_y = torch.cat(pieces) * routing.weights.reshape(-1)[order, None]  # (T*k, d_out)
        slot_y = torch.zeros_like(sorted_y).index_copy(0, order, sorted_y)  # (T*k, d_out)
        delta = (shared + slot_y.view(num_tokens, k, -1).sum(dim=1)) * m.scaling  # (T, d_out)
        return (result + delta.reshape(result.shape)).to(x.dtype)


def _layers(d: int, dtype: torch.dtype, gen: torch.Generator) -> dict[str, nn.Module]:
    weight = (torch.randn(d, d, generator=gen) / d**0.5).to(dtype)  # (d_out, d_in)
    bases = []
    for _ in range(2):
        base = nn.Linear(d, d, bias=False, device="meta").to_empty(device="cpu").to(dtype)
        with torch.no_grad():
            base.weight.copy_(weight)
        bases.append(base.requires_grad_(False))
    mole = MoLELinear(
        bases[0], num_experts=_HELD, rank=_RANK, alpha=16, top_k=_TOP_K, dropout=_DROPOUT
    )
    small = d**-0.5
    mole.set_experts(
        torch.arange(_HELD),
        torch.randn(_HELD, _RANK, d, generator=gen) * small,  # (n, r, d_in)
        torch.randn(_HELD, d, _RANK, generator=gen) * 0.1,  # (n, d_out, r)
    )
    with torch.no_grad():
        for param in (mole.token_proj.weight, mole.shared_A, mole.shared_B):
            param.copy_(torch.randn(param.shape, generator=gen) * small)
    cfg = peft.LoraConfig(r=_RANK, lora_alpha=16, lora_dropout=_DROPOUT, target_modules=["proj"])
    lora = peft.get_peft_model(_Holder(bases[1]), cfg).base_model.model.proj
    return {"mole": mole.train(), "lora": lora.train(), "sort_loop": _SortLoopMoLE(mole).train()}


def _module_rows(dtypes: list[torch.dtype], quick: bool, threads: int) -> list[dict]:
    sizes = [(64, 64)] if quick else [(576, 512), (576, 2048), (2048, 512), (2048, 2048)]
    reps = 3 if quick else 15
    gen = torch.Generator().manual_seed(0)
    rows = []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for dtype in dtypes:
            rows += _module_size_rows(dtype, sizes, reps, gen, threads)
    finally:
        torch.set_num_threads(previous)
    return rows


def _module_size_rows(
    dtype: torch.dtype, sizes: list[tuple[int, int]], reps: int, gen: torch.Generator, threads: int
) -> list[dict]:
    rows = []
    for d, tokens in sizes:
        layers = _layers(d, dtype, gen)
        x = torch.randn(tokens, d, generator=gen).to(dtype).requires_grad_()
        grad = torch.randn(tokens, d, generator=gen).to(dtype)
        fns = {name: functools.partial(_fwd_bwd, layer, x, grad) for name, layer in layers.items()}
        ms = _interleaved(fns, reps)
        key = dict(threads=threads, dtype=str(dtype).removeprefix("torch."), d=d, tokens=tokens)
        rows.append(_row(key, ms))
    return rows


def _fwd_bwd(layer: nn.Module, x: Tensor, grad: Tensor) -> None:
    layer(x).backward(grad)


def _loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def _row(key: dict, ms: dict[str, float]) -> dict:
    ratios = {f"mole/{name}": ms["mole"] / ms[name] for name in ms if name != "mole"}
    return {**key, "ms": {k: round(v, 3) for k, v in ms.items()}, **_rounded(ratios)}


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in values.items()}


# --------------------------------------------------------------------------------------------------
# Step level


def _step_rows(dtypes: list[torch.dtype], quick: bool) -> list[dict]:
    batch, seq, reps = (2, 16, 3) if quick else (4, 128, 7)
    rows = []
    for dtype in dtypes:
        models = {"mole": _mole_model(dtype, quick), "lora": _lora_model(dtype, quick)}
        vocab = models["mole"].config.vocab_size
        ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
        steps = {
            name: _train_step(model, ids, mole=name == "mole") for name, model in models.items()
        }
        ms = _interleaved(steps, reps)
        name = "tiny:llama" if quick else "embedded:smollm2-135m-instruct"
        key = dict(model=name, dtype=str(dtype).removeprefix("torch."), batch=batch, seq=seq)
        rows.append(
            _row(key, ms)
            | {"tokens_per_s": _rounded({k: batch * seq / v * 1e3 for k, v in ms.items()})}
        )
    return rows


def _backbone(dtype: torch.dtype, quick: bool) -> nn.Module:
    if quick:
        return tiny_causal_lm("llama", seed=0).to(dtype).requires_grad_(False)
    name = "embedded:smollm2-135m-instruct"
    return load_model_and_tokenizer(name, dtype=str(dtype).removeprefix("torch."), device="cpu")[0]


def _mole_model(dtype: torch.dtype, quick: bool) -> nn.Module:
    model = _backbone(dtype, quick)
    cfg = MoLEConfig(min_experts_per_client=_HELD, top_k=_TOP_K, rank=_RANK, dropout=_DROPOUT)
    inject_mole(model, cfg, generator=torch.Generator().manual_seed(0))
    # Non-zero B so routing changes the output, as after the first rounds of training.
    states = get_mole_state(model)
    gen = torch.Generator().manual_seed(1)
    for name, state in states.items():
        lora_B = torch.randn(state.lora_B.shape, generator=gen) * 0.01
        states[name] = dataclasses.replace(state, lora_B=lora_B)
    set_mole_state(model, states)
    return model.train()


def _lora_model(dtype: torch.dtype, quick: bool) -> nn.Module:
    cfg = peft.LoraConfig(
        r=_RANK, lora_alpha=16, lora_dropout=_DROPOUT, target_modules=["q_proj", "v_proj"]
    )
    with warnings.catch_warnings():  # peft 0.21 calls a transformers 5 deprecated helper
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        return peft.get_peft_model(_backbone(dtype, quick), cfg).train()


def _train_step(model: nn.Module, ids: Tensor, *, mole: bool) -> Callable[[], None]:
    params = mole_parameters(model) if mole else [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-5, eps=1e-6)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if mole:
            with balance_loss(model, coef=1e-3) as bal:
                loss = model(input_ids=ids, labels=ids).loss
            loss = loss + bal.total()
        else:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()

    return step


# --------------------------------------------------------------------------------------------------
# Report


def _print_table(result: dict) -> None:
    print("module forward+backward, median ms (MoLE: n=6, top-2, r=8; LoRA: r=8)")
    columns = ["threads", "dtype", "d", "tokens", "mole", "lora", "sort_loop", "mole/lora"]
    columns.append("mole/sort_loop")
    print(" ".join(f"{c:>10}" for c in columns))
    for row in result["modules"]:
        values = {**row, **row["ms"]}
        print(" ".join(_cell(values[c]) for c in columns))
    print(f"training step (fwd+bwd+Adam), median ms, {result['threads']} threads")
    columns = ["model", "dtype", "batch", "seq", "mole", "lora", "mole/lora"]
    print(" ".join(f"{c:>10}" for c in columns[1:]), " model")
    for row in result["steps"]:
        values = {**row, **row["ms"]}
        print(" ".join(_cell(values[c]) for c in columns[1:]), "", row["model"])


def _cell(value: object) -> str:
    return f"{value:>10.2f}" if isinstance(value, float) else f"{value!s:>10}"
