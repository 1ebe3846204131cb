"""fedamole bench step: token counts, the FLOP formula, op groups, a real run of two revisions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fedamole.bench.step import bench_step, format_table
from fedamole.bench.step_worker import (
    OTHER_OPS,
    OUTSIDE_OPS,
    batch_tokens,
    frozen_linears,
    label_columns,
    matmul_rate,
    model_flops,
    op_group,
    profile_groups,
)
from fedamole.data.collate import IGNORE_INDEX, collate
from fedamole.training import logits_window

X = IGNORE_INDEX
ROWS = [  # lengths 4, 2, 3; labels start at columns 2, 1, 2 of each row
    {"input_ids": [1, 2, 3, 4], "labels": [X, X, 3, 4]},
    {"input_ids": [5, 6], "labels": [X, 6]},
    {"input_ids": [7, 8, 9], "labels": [X, X, 9]},
]


def test_label_columns_follow_the_training_rule_on_the_left_padded_batch():
    for rows in (ROWS, ROWS[:1], ROWS[1:], [{"input_ids": [1, 2], "labels": [X, X]}]):
        batch = collate(rows, pad_id=0)
        assert label_columns([r["labels"] for r in rows]) == logits_window(batch["labels"])


def test_batch_tokens_by_hand():
    # one micro-batch of 3, left-padded to width 4: the first labels sit at columns 2 (row 0),
    # 2 + 1 = 3 (row 1, padded by 2) and 1 + 2 = 3 (row 2, padded by 1): K = 4 - 2 + 1 = 3
    counts = batch_tokens(ROWS, micro=3)
    assert counts["real"] == 9 and counts["padded"] == 12
    assert counts["head"] == 3 * 3
    assert counts["attention_pairs"] == 10 + 3 + 6  # n (n + 1) / 2 per row
    assert counts["padded_attention_pairs"] == 3 * 10
    # micro-batches of 2: [4, 2] padded to 4, then [3] alone
    split = batch_tokens(ROWS, micro=2)
    assert split["real"] == 9 and split["padded"] == 8 + 3
    assert split["head"] == 2 * 3 + 1 * 2


def test_model_flops_by_hand():
    linears = [("q", 4, 8), ("down", 8, 4)]
    flops = model_flops(
        linears,
        tokens=10,
        attention_pairs=21,
        head_tokens=3,
        layers=2,
        heads=2,
        head_dim=4,
        hidden=4,
        vocab=100,
    )
    assert flops["linear"] == 4 * 10 * (32 + 32)  # 2 T d_in d_out, forward and input gradient
    assert flops["attention"] == 3 * 4 * 2 * 2 * 4 * 21  # 4 H d_h P per layer, x3 with backward
    assert flops["lm_head"] == 4 * 3 * 4 * 100


def test_op_groups():
    assert op_group("aten::mm") == op_group("aten::addmm") == "matrix products"
    assert op_group("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert op_group("aten::copy_") == op_group("aten::_to_copy") == "copies and casts"
    assert op_group("aten::_foreach_mul_") == "optimizer"
    assert op_group("aten::bernoulli_") == "dropout and random"
    assert op_group("aten::_log_softmax") == "softmax and loss"
    assert op_group("aten::mul") == op_group("aten::mmx") == OTHER_OPS  # a prefix is not a name


def test_profile_groups_sum_self_times_and_keep_what_no_op_covers():
    events = [
        SimpleNamespace(key="aten::mm", self_cpu_time_total=2e6),
        SimpleNamespace(key="aten::addmm", self_cpu_time_total=1e6),
        SimpleNamespace(key="aten::mul", self_cpu_time_total=0.5e6),
        SimpleNamespace(key="MulBackward0", self_cpu_time_total=0.25e6),
    ]
    groups = profile_groups(events, wall=5.0)
    assert groups["matrix products"] == pytest.approx(3.0)
    assert groups[OTHER_OPS] == pytest.approx(0.5)
    assert groups[OUTSIDE_OPS] == pytest.approx(1.25)
    assert sum(groups.values()) == pytest.approx(5.0)


def test_frozen_linears_leave_out_adapters_and_the_head():
    from fedamole.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer("tiny:llama", dtype="float32", device="cpu")
    model.requires_grad_(False)
    every = frozen_linears(model)
    assert every and all(name != "lm_head" for name, _, _ in every)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    first.weight.requires_grad_(True)  # a trainable linear is not the backbone's
    assert len(frozen_linears(model)) == len(every) - 1


def test_matmul_rate_weighs_each_shape_by_its_count():
    rate = matmul_rate([("a", 16, 32), ("b", 16, 32), ("c", 32, 16)], tokens=8, dtype=torch.float32)
    assert [(s["d_in"], s["d_out"], s["count"]) for s in rate["shapes"]] == [
        (16, 32, 2),
        (32, 16, 1),
    ]
    assert rate["gflops"] > 0 and rate["dtype"] == "float32" and rate["tokens"] == 8


def test_bench_step_against_a_folder_times_both_and_compares(repo, tmp_path, capsys):
    result = bench_step(
        repo / "configs" / "smoke.toml",
        [],
        tmp_path,
        against=str(repo),
        repeats=1,
        client=1,
        algorithms=["fedamole"],
        warmup=1,
        steps=2,
        profiled=1,
    )
    assert (tmp_path / "step.json").is_file()
    summary = result["algorithms"]["fedamole"]
    for side in ("this", "other"):
        row = summary[side]
        assert row["step_seconds"] > 0 and row["model_gflop"] > 0 and row["fraction"] > 0
        assert row["tokens"]["padded"] >= row["tokens"]["real"] > 0
        assert row["profile"] and sum(row["profile"].values()) == pytest.approx(1.0, rel=0.05)
    assert summary["losses"]["differing"] == []  # the same code on both sides
    run = result["runs"]["fedamole"]["this"][0]
    assert len(run["step_seconds"]) == len(run["step_losses"]) == 1 + 2 + 1
    table = capsys.readouterr().out
    assert "speed-up" in table and "matrix products" in table
    assert format_table(result) in table


def test_revisions_alternate_so_that_load_falls_on_both():
    from fedamole.bench.round import alternate

    calls: list[str] = []
    runs = alternate(["this", "other"], 3, lambda name: calls.append(name) or {"n": len(calls)})
    assert calls == ["this", "other", "other", "this", "this", "other"]
    assert [r["n"] for r in runs["this"]] == [1, 4, 5] and len(runs["other"]) == 3
