"""Method and scenario labels from configs, seed statistics, variant disambiguation, run
discovery, and the report's formatting on hand-made run directories."""

from __future__ import annotations

import json
import re
import statistics

import pytest

from fedamole.analysis.report import build_report, format_csv, format_markdown, verdict_lines
from fedamole.analysis.results import (
    entries,
    find_run_dirs,
    load_runs,
    mean_std,
    method_labels,
    scenario_label,
)


def _cfg(algorithm="fedamole", timing="personalized", **sections):
    config = {"federation": {"algorithm": algorithm}, "eval": {"timing": timing}}
    for dotted, value in sections.items():
        section, key = dotted.split("__")
        config.setdefault(section, {})[key] = value
    return config


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (_cfg(), [("FedAMoLE", "test")]),
        (_cfg("fedit", "both"), [("FedIT-FT", "test"), ("FedIT", "test_global")]),
        (_cfg("fedit", "global"), [("FedIT", "test_global")]),
        (_cfg("fedit"), [("FedIT-FT", "test")]),
        (_cfg("fdlora", "global"), [("FDLoRA", "test_global")]),  # the reference's FDLoRA number
        (_cfg("fdlora"), [("FDLoRA-FT", "test")]),
        (_cfg("local", "global"), [("Local-global", "test_global")]),
        (_cfg(federation__assignment="static"), [("FedAMoLE-R", "test")]),
        (_cfg(mole__router="linear"), [("FedAMoLE-H", "test")]),
        (_cfg(mole__shared_expert=False), [("FedAMoLE-S", "test")]),
        (_cfg(federation__privacy=True), [("FedAMoLE-DP", "test")]),
        (_cfg(federation__privacy="gaussian"), [("FedAMoLE-GDP", "test")]),
        (_cfg(privacy__updates="gaussian"), [("FedAMoLE-UDP", "test")]),
        (
            _cfg("fedit", "both", privacy__updates="gaussian"),
            [("FedIT-UDP-FT", "test"), ("FedIT-UDP", "test_global")],
        ),
        (_cfg(privacy__updates="none"), [("FedAMoLE", "test")]),
        (_cfg("brand_new"), [("brand_new", "test")]),
    ],
)
def test_method_labels(config, expected):
    assert method_labels(config) == expected


@pytest.mark.parametrize(
    ("data", "partition", "expected"),
    [
        ({"dataset": "snli"}, {"kind": "dirichlet", "alpha": 0.1}, "SNLI α=0.1"),
        ({"dataset": "dolly"}, {"kind": "dirichlet", "alpha": 100.0}, "Dolly α=100"),
        ({"dataset": "natural_instructions"}, {"kind": "task", "tasks_per_client": 1}, "NI task"),
        (
            {"dataset": "synthetic"},
            {"kind": "task", "tasks_per_client": 2},
            "Synthetic 2 tasks/client",
        ),
        ({"dataset": "synthetic"}, {"kind": "iid"}, "Synthetic iid"),
    ],
)
def test_scenario_labels(data, partition, expected):
    assert scenario_label({"data": data, "partition": partition}) == expected


def test_mean_std_is_the_sample_std():
    values = [0.2, 0.5, 0.9]
    mean, std, n = mean_std(values)
    assert mean == pytest.approx(statistics.mean(values))
    assert std == pytest.approx(statistics.stdev(values)) and n == 3
    assert mean_std([0.3]) == (0.3, None, 1)


def _fake_run(folder, name, config, scores, *, done=True):
    """A run directory with ``scores``: {(round, client): score} in split ``test``."""
    import tomli_w

    path = folder / name
    path.mkdir(parents=True)
    (path / "config.toml").write_text(tomli_w.dumps(config))
    lines = [
        json.dumps({"round": r, "client": c, "split": "test", "metric": "score", "value": v})
        for (r, c), v in scores.items()
    ]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if done:
        (path / "done.json").write_text("{}")
    return path


def _config(algorithm, seed, lr=1e-3, alpha=1.0, **fed):
    return {
        "data": {"dataset": "snli"},
        "partition": {"kind": "dirichlet", "alpha": alpha},
        "federation": {"algorithm": algorithm, "num_clients": 2, "rounds": 2, **fed},
        "train": {"lr": lr},
        "eval": {"timing": "personalized"},
        "run": {"seed": seed, "name": "x"},
    }


def test_variants_of_one_label_are_told_apart_and_old_folders_skipped(tmp_path):
    _fake_run(tmp_path, "a", _config("fedamole", 1, lr=0.1), {(1, 0): 0.5})
    _fake_run(tmp_path, "b", _config("fedamole", 1, lr=0.2), {(1, 0): 0.5})
    _fake_run(tmp_path, "b.old-20250101-000000", _config("fedamole", 1), {(1, 0): 0.5})
    assert [p.name for p in find_run_dirs([tmp_path])] == ["a", "b"]
    labels = sorted(e.method for e in entries(load_runs([tmp_path])))
    assert labels == ["FedAMoLE [lr=0.1]", "FedAMoLE [lr=0.2]"]
    ignored = sorted(e.method for e in entries(load_runs([tmp_path]), ignore=("train.lr",)))
    assert ignored == ["FedAMoLE", "FedAMoLE"]


def test_a_field_an_older_run_lacks_counts_as_its_default(tmp_path):
    """Runs written before a field existed pool with newer runs at its default value, and show
    the default where a run differs from them."""
    older = _config("fedamole", 1)
    newer = _config("fedamole", 2)
    newer["mole"] = {"rsea_stats": "trained"}  # the default, written out by newer versions
    for name, config in (("a", older), ("b", newer)):
        _fake_run(tmp_path, name, config, {(1, 0): 0.5})
    assert [e.method for e in entries(load_runs([tmp_path]))] == ["FedAMoLE", "FedAMoLE"]
    smaller = _config("fedamole", 3)
    smaller["mole"] = {"rank": 4}
    _fake_run(tmp_path, "c", smaller, {(1, 0): 0.5})
    labels = sorted(e.method for e in entries(load_runs([tmp_path])))
    assert labels == ["FedAMoLE [rank=4]", "FedAMoLE [rank=8]", "FedAMoLE [rank=8]"]


def test_report_numbers_bold_gain_and_average_by_hand(tmp_path):
    # FedAMoLE: seeds give best-round client means 0.8 and 0.6 (α=0.1), 0.5 and 0.7 (α=1).
    # FedIT-FT: 0.4 and 0.6 (α=0.1), 0.5 and 0.5 (α=1); round 2 of seed 2 is its best.
    runs = {
        ("fedamole", 1, 0.1): {(1, 0): 0.8, (1, 1): 0.8, (2, 0): 0.6, (2, 1): 0.6},
        ("fedamole", 2, 0.1): {(1, 0): 0.5, (1, 1): 0.7, (2, 0): 0.6, (2, 1): 0.4},
        ("fedamole", 1, 1.0): {(1, 0): 0.5, (1, 1): 0.5},
        ("fedamole", 2, 1.0): {(1, 0): 0.7, (1, 1): 0.7},
        ("fedit", 1, 0.1): {(1, 0): 0.4, (1, 1): 0.4},
        ("fedit", 2, 0.1): {(1, 0): 0.2, (1, 1): 0.2, (2, 0): 0.6, (2, 1): 0.6},
        ("fedit", 1, 1.0): {(1, 0): 0.5, (1, 1): 0.5},
        ("fedit", 2, 1.0): {(1, 0): 0.5, (1, 1): 0.5},
    }
    for (algo, seed, alpha), scores in runs.items():
        _fake_run(tmp_path, f"{algo}{seed}{alpha}", _config(algo, seed, alpha=alpha), scores,
                  done=not (algo == "fedit" and seed == 2 and alpha == 1.0))  # fmt: skip
    report = build_report([tmp_path], round_mode="best")
    assert report.scenarios == ["SNLI α=0.1", "SNLI α=1"]
    assert report.methods == ["FedIT-FT", "FedAMoLE"]
    ours = report.cells["FedAMoLE", "SNLI α=0.1"]
    assert ours.mean == pytest.approx(70.0) and ours.std == pytest.approx(
        statistics.stdev([80, 60])
    )
    assert report.cells["FedIT-FT", "SNLI α=0.1"].mean == pytest.approx(50.0)
    assert report.cells["FedIT-FT", "SNLI α=1"].std == pytest.approx(0.0)
    assert report.average["FedAMoLE"] == pytest.approx(65.0)
    assert report.average["FedIT-FT"] == pytest.approx(50.0)
    assert report.gain["SNLI α=0.1"] == pytest.approx((70 - 50) / 50 * 100)
    assert report.gain["SNLI α=1"] == pytest.approx((60 - 50) / 50 * 100)
    assert report.gain["avg"] == pytest.approx((65 - 50) / 50 * 100)
    assert report.clients["FedAMoLE", "SNLI α=0.1"][1].mean == pytest.approx(75.0)  # 0.8, 0.7
    last = build_report([tmp_path], round_mode="last")
    assert last.cells["FedAMoLE", "SNLI α=0.1"].mean == pytest.approx(55.0)  # 0.6 and 0.5
    text = format_markdown(report)
    assert "| **70.00 ± 14.14** |" in text and "**65.00**" in text
    assert "| gain (%) | +40.00 | +20.00 | +30.00 |" in re.sub(" +", " ", text)
    assert "not finished" in text and "fedit21.0" in text
    verdict = verdict_lines(report)
    assert verdict == [
        "- **SNLI α=0.1**: FedAMoLE beats the best baseline, FedIT-FT, by +20.00 points (70.00 vs "
        "50.00); per seed seed 1: +40.00, seed 2: +0.00; wins 1 of 2 seeds.",
        "- **SNLI α=1**: FedAMoLE beats the best baseline, FedIT-FT, by +10.00 points (60.00 vs "
        "50.00); per seed seed 1: +0.00, seed 2: +20.00; wins 1 of 2 seeds; within the seed "
        "spread.",
        "- **Average over scenarios**: FedAMoLE 65.00 vs the best baseline on average, FedIT-FT, "
        "50.00 (+15.00 points, +30.00% relative); FedAMoLE is ahead in 2 of 2 scenarios.",
    ]
    assert "### Verdict: FedAMoLE against the best baseline" in text and verdict[0] in text
    assert verdict_lines(build_report([tmp_path], ours="nobody")) == []
    csv_text = format_csv(report)
    assert "main,SNLI α=0.1,FedAMoLE,,70.0" in csv_text


def test_eval_loss_table_takes_the_last_round_of_personalized_rows(tmp_path):
    for seed, losses in ((1, (0.9, 0.5)), (2, (0.8, 0.7))):
        path = _fake_run(tmp_path, f"ours{seed}", _config("fedamole", seed), {(1, 0): 0.5})
        with (path / "metrics.jsonl").open("a") as f:
            for rnd, loss in enumerate(losses, start=1):
                for client, shift in ((0, 0.0), (1, 0.2)):
                    record = {"round": rnd, "client": client, "split": "eval", "metric": "loss"}
                    f.write(json.dumps({**record, "value": loss + shift}) + "\n")
    glob = _config("fedit", 1)
    glob["eval"]["timing"] = "global"
    path = _fake_run(tmp_path, "fedit", glob, {})
    record = {"round": 3, "client": 0, "split": "test_global", "metric": "score", "value": 0.4}
    (path / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    report = build_report([tmp_path])
    cell = report.eval_loss["FedAMoLE", "SNLI α=1"]
    assert cell.mean == pytest.approx(0.7) and cell.std == pytest.approx(
        statistics.stdev([0.6, 0.8])
    )
    assert ("FedIT", "SNLI α=1") not in report.eval_loss  # global timing: no eval loss
    text = format_markdown(report)
    assert "| FedAMoLE | **0.700 ± 0.141** |" in re.sub(" +", " ", text)
    assert "eval_loss,SNLI α=1,FedAMoLE,,0.7" in format_csv(report)


def _with_predictions(path, per_client, rnd=1):
    """Write ``predictions.jsonl``: client -> per-example scores (answer choices) at ``rnd``."""
    lines = [
        json.dumps(
            {
                "round": rnd,
                "client": c,
                "split": "test",
                "example": i,
                "answer": "A",
                "score": float(v),
                "correct": bool(v),
            }
        )
        for c, scores in per_client.items()
        for i, v in enumerate(scores)
    ]
    (path / "predictions.jsonl").write_text("\n".join(lines) + "\n")


def test_paired_intervals_by_hand_and_seeds_only_without_predictions(tmp_path):
    # per seed: FedAMoLE wins every example of both clients against Local, client means 1 vs 0
    for seed in (1, 2):
        ours = _fake_run(
            tmp_path, f"a{seed}", _config("fedamole", seed), {(1, 0): 1.0, (1, 1): 1.0}
        )
        theirs = _fake_run(tmp_path, f"l{seed}", _config("local", seed), {(1, 0): 0.0, (1, 1): 0.0})
        _with_predictions(ours, {0: [1, 1, 1], 1: [1, 1]})
        _with_predictions(theirs, {0: [0, 0, 0], 1: [0, 0]})
    report = build_report([tmp_path], against="Local")
    paired = report.paired["FedAMoLE", "SNLI α=1"]
    assert paired.examples and paired.difference.seeds == (1, 2)
    assert (paired.difference.mean, paired.difference.low, paired.difference.high) == (1, 1, 1)
    assert paired.difference.verdict == "ahead"
    text = format_markdown(report)
    assert "### Paired differences against Local" in text
    assert "+100.00 [+100.00, +100.00] ahead (n=2)" in text
    assert "paired_low,SNLI α=1,FedAMoLE,,100.0,,2" in format_csv(report)
    # a run without predictions.jsonl: its pair resamples seeds only, and says so
    (tmp_path / "l2" / "predictions.jsonl").unlink()
    report = build_report([tmp_path], against="Local")
    assert not report.paired["FedAMoLE", "SNLI α=1"].examples
    assert "ahead* (n=2)" in format_markdown(report)
    assert build_report([tmp_path]).paired["Local", "SNLI α=1"].difference.mean == -1.0
