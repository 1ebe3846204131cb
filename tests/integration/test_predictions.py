"""``predictions.jsonl``: one record per test example per evaluation, reproducing the logged test
metrics exactly (docs/run-directory.md#predictionsjsonl)."""

from __future__ import annotations

import pytest

from fedamole.engines.embedded import run_embedded
from fedamole.rundir import fold, read_jsonl, read_predictions
from tests.conftest import run_killed


def _check_reproduces(run_dir, splits):
    metrics = list(read_jsonl(run_dir / "metrics.jsonl"))
    checked = 0
    for split in splits:
        scores = fold(metrics, split, "score")
        counts = fold(metrics, split, "num_examples")
        skipped = fold(metrics, split, "num_skipped")
        predictions = read_predictions(run_dir / "predictions.jsonl", split)
        assert sorted(predictions) == sorted(scores), split
        for rnd, by_client in scores.items():
            assert sorted(predictions[rnd]) == sorted(by_client)
            for client, score in by_client.items():
                records = predictions[rnd][client]
                assert [r["example"] for r in records] == list(range(len(records)))
                assert len(records) == counts[rnd][client] + skipped[rnd][client]
                kept = [r for r in records if not r.get("skipped")]
                # the evaluation sums answer-choice examples first, then free-text ones
                ordered = [r for r in kept if "correct" in r] + [
                    r for r in kept if "correct" not in r
                ]
                assert sum(r["score"] for r in ordered) / len(ordered) == score  # exactly
                for r in kept:
                    assert isinstance(r["answer"], str)
                    if "correct" in r:
                        assert r["score"] == float(r["correct"])
                checked += 1
    assert checked


@pytest.mark.parametrize(
    ("algorithm", "splits"),
    [("fedit", ("test", "test_global")), ("feddpa", ("test",)), ("fedamole", ("test",))],
)
def test_predictions_reproduce_the_logged_test_metric(smoke, tmp_path, algorithm, splits):
    timing = "both" if "test_global" in splits else "personalized"
    cfg = smoke.replace(**{"federation.algorithm": algorithm, "eval.timing": timing})
    run_embedded(cfg, tmp_path / "r", progress=False)
    _check_reproduces(tmp_path / "r", splits)


def test_a_resumed_run_keeps_one_record_per_example(smoke, tmp_path):
    """Killed at the start of round 2 and resumed: the same predictions as an uninterrupted
    run, each example once (the received-model results of the killed round are cut back)."""
    cfg = smoke.replace(**{"federation.algorithm": "fedit", "eval.timing": "both"})
    run_embedded(cfg, tmp_path / "plain", progress=False)
    run_killed(cfg, tmp_path / "killed", kill_round=2)
    run_embedded(cfg, tmp_path / "killed", progress=False, resume=True)
    plain = (tmp_path / "plain" / "predictions.jsonl").read_text()
    assert (tmp_path / "killed" / "predictions.jsonl").read_text() == plain
