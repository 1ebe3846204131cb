"""checkpoints/best: promotion (atomic, hard-linked, independent of later saves) and the rule that
picks the round (the report's: the highest client-mean score of the run's main split, the earliest
on ties; a round's mean counts once every client reported it)."""

from __future__ import annotations

import json

import pytest
import torch

from fedamole.engines.best import BestCheckpoint, selection_split
from fedamole.rundir import (
    CheckpointError,
    JsonlLogger,
    RunDir,
    checkpoint_info,
    checkpoint_rounds,
    load_checkpoint,
    promote_checkpoint,
    save_checkpoint,
)


def _state(rnd: int) -> dict:
    return {"round": rnd, "server": {"w": torch.full((3,), float(rnd))}, "clients": {}}


def test_promote_copies_last_with_its_selection(tmp_path):
    save_checkpoint(tmp_path, _state(2))
    promote_checkpoint(tmp_path, {"round": 2, "split": "test", "value": 0.5})
    assert checkpoint_info(tmp_path, "best") == {
        "round": 2,
        "selection": {"round": 2, "split": "test", "value": 0.5},
    }
    assert checkpoint_info(tmp_path) == {"round": 2}
    # later saves of `last` never touch `best` (hard-linked tensors are replaced, not rewritten)
    save_checkpoint(tmp_path, _state(3))
    save_checkpoint(tmp_path, _state(4))
    assert torch.equal(load_checkpoint(tmp_path, "best")["server"]["w"], torch.full((3,), 2.0))
    assert load_checkpoint(tmp_path)["round"] == 4
    assert checkpoint_rounds(tmp_path) == {"last": 4, "best": 2}
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".old"))]


def test_best_falls_back_to_old_after_a_crash_in_the_swap(tmp_path):
    save_checkpoint(tmp_path, _state(1))
    promote_checkpoint(tmp_path, {"round": 1})
    (tmp_path / "best").rename(tmp_path / "best.old")
    assert load_checkpoint(tmp_path, "best")["round"] == 1
    assert checkpoint_info(tmp_path, "best")["round"] == 1
    # a half-written best.tmp is ignored and replaced by the next promotion
    (tmp_path / "best.tmp").mkdir()
    save_checkpoint(tmp_path, _state(5))
    promote_checkpoint(tmp_path, {"round": 5})
    assert load_checkpoint(tmp_path, "best")["round"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last"]


def test_missing_named_checkpoint_lists_what_exists(tmp_path):
    save_checkpoint(tmp_path, _state(3))
    with pytest.raises(CheckpointError, match=r"no checkpoint 'best'.*last \(round 3\)"):
        load_checkpoint(tmp_path, "best")
    with pytest.raises(CheckpointError, match="no checkpoint 'last' in .* to copy"):
        promote_checkpoint(tmp_path / "empty", {"round": 0})


def test_round_of_a_checkpoint_written_before_it_was_recorded(tmp_path):
    save_checkpoint(tmp_path, _state(6))
    body = json.loads((tmp_path / "last" / "state.json").read_text())
    del body["round"]
    (tmp_path / "last" / "state.json").write_text(json.dumps(body))
    assert checkpoint_info(tmp_path) == {"round": 6}
    assert checkpoint_info(tmp_path, "best") is None


@pytest.mark.parametrize(
    ("algorithm", "timing", "split"),
    [
        ("fedamole", "personalized", "test"),
        ("fedit", "personalized", "test"),
        ("fedit", "global", "test_global"),
        ("fedit", "both", "test_global"),  # FedIT's main row; FedIT-FT is the other
        ("fedsa_lora", "both", "test"),  # a personalized method: its plain row is `test`
        ("fdlora", "both", "test_global"),
    ],
)
def test_selection_split_is_the_reports_main_row(smoke, algorithm, timing, split):
    cfg = smoke.replace(**{"federation.algorithm": algorithm, "eval.timing": timing})
    assert selection_split(cfg) == split


class _Run:
    """A run directory written by hand: scores per round, `last` saved like the engine does."""

    def __init__(self, tmp_path, cfg):
        self.run = RunDir(tmp_path)
        self.run.checkpoints.mkdir(parents=True)
        self.log = JsonlLogger(self.run.metrics)
        self.best = BestCheckpoint(cfg, self.run)

    def score(self, rnd: int, split: str, values: list[float]) -> None:
        for client, value in enumerate(values):
            self.log.log(
                {"round": rnd, "client": client, "split": split, "metric": "score", "value": value}
            )
        # noise the rule must ignore: other metrics, other splits
        self.log.log({"round": rnd, "client": 0, "split": "train", "metric": "score", "value": 9})
        self.log.log({"round": rnd, "client": 0, "split": split, "metric": "loss", "value": 9})

    def end_round(self, rnd: int) -> None:
        """What run_federation does after a round: update, save `last`, update."""
        self.best.update(rnd)
        save_checkpoint(self.run.checkpoints, _state(rnd))
        self.best.update(rnd)

    def best_round(self):
        info = checkpoint_info(self.run.checkpoints, "best")
        return None if info is None else info["round"]


def test_best_follows_the_client_mean_of_test_scores(tmp_path, smoke):
    run = _Run(tmp_path, smoke)
    expected = []
    for rnd, scores in enumerate([[0.2, 0.4], [0.1, 0.1], [0.5, 0.5], [0.6, 0.4], [0.4, 0.5]]):
        run.score(rnd, "test", scores)
        run.end_round(rnd)
        expected.append(run.best_round())
    # round 3 ties round 2 (mean 0.5): the earliest stays, as in `fedamole report --round best`
    assert expected == [0, 0, 2, 2, 2]
    best = load_checkpoint(run.run.checkpoints, "best")
    assert best["round"] == 2 and torch.equal(best["server"]["w"], torch.full((3,), 2.0))
    selection = checkpoint_info(run.run.checkpoints, "best")["selection"]
    assert selection == {
        "rule": "best",
        "round": 2,
        "split": "test",
        "metric": "score",
        "value": 0.5,
    }


def test_best_by_test_global_promotes_the_round_before(tmp_path, smoke):
    """``test_global`` of round r is the global model after round r, measured by the clients in
    round r + 1: ``last`` still holds round r when the scores arrive, before it is replaced."""
    cfg = smoke.replace(**{"federation.algorithm": "fedit", "eval.timing": "global"})
    run = _Run(tmp_path, cfg)
    rounds = cfg.federation.rounds
    scores = {0: [0.1, 0.1], 1: [0.3, 0.5], 2: [0.2, 0.2]}  # test_global of rounds 0..R
    history = []
    for rnd in range(1, rounds + 2):  # rounds 1..R+1 (evaluation only)
        run.score(rnd - 1, "test_global", scores[rnd - 1])
        run.end_round(rnd)
        history.append(run.best_round())
    assert history == [None, 1, 1]  # round 0 has no checkpoint here (no test_init round)
    assert load_checkpoint(run.run.checkpoints, "best")["round"] == 1
    assert checkpoint_info(run.run.checkpoints, "best")["selection"]["split"] == "test_global"


def test_a_kill_between_saving_last_and_promoting_is_repaired(tmp_path, smoke):
    run = _Run(tmp_path, smoke)
    run.score(0, "test", [0.5, 0.5])
    run.end_round(0)
    run.score(1, "test", [0.9, 0.9])
    run.best.update(1)
    save_checkpoint(run.run.checkpoints, _state(1))  # killed here, before the second update
    assert run.best_round() == 0
    resumed = BestCheckpoint(smoke, run.run)  # what run_federation builds on resume
    resumed.update(1)
    assert run.best_round() == 1


def test_a_line_being_written_is_read_on_the_next_update(tmp_path, smoke):
    run = _Run(tmp_path, smoke)
    save_checkpoint(run.run.checkpoints, _state(0))
    with run.run.metrics.open("a") as fh:
        fh.write('{"client": 0, "metric": "score", "round": 0, "split": "test", "val')
    run.best.update(0)
    assert run.best_round() is None
    with run.run.metrics.open("a") as fh:
        fh.write('ue": 0.5}\n')
    run.best.update(0)
    assert run.best_round() == 0


def test_untested_rounds_are_never_promoted(tmp_path, smoke):
    """``eval.every = 2`` over 3 rounds: round 1 has no scores. It never becomes ``best`` even
    while ``last`` holds it; round 2, tested and better, is promoted while ``last`` holds it."""
    cfg = smoke.replace(**{"federation.rounds": 3, "eval.every": 2})
    run = _Run(tmp_path, cfg)
    scores = {0: [0.2, 0.2], 2: [0.6, 0.4], 3: [0.1, 0.3]}
    history = []
    for rnd in range(4):
        if rnd in scores:
            run.score(rnd, "test", scores[rnd])
        run.end_round(rnd)
        history.append(run.best_round())
    assert history == [0, 0, 2, 2]


def test_untested_global_rounds_are_never_promoted(tmp_path, smoke):
    """The same with ``test_global``: round 1's global model is not tested in round 2, round 2's
    is (in round 3) and is the best; round 3's arrives in the evaluation-only round 4."""
    overrides = {"federation.algorithm": "fedit", "eval.timing": "global", "eval.every": 2}
    cfg = smoke.replace(**{**overrides, "federation.rounds": 3})
    run = _Run(tmp_path, cfg)
    scores = {0: [0.1, 0.1], 2: [0.5, 0.5], 3: [0.2, 0.2]}  # test_global of the tested rounds
    history = []
    for rnd in range(1, 5):  # rounds 1..R+1; round r brings test_global of r-1 if it is tested
        if rnd - 1 in scores:
            run.score(rnd - 1, "test_global", scores[rnd - 1])
        run.end_round(rnd)
        history.append(run.best_round())
    assert history == [None, None, 2, 2]
