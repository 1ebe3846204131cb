"""The assignment benchmark runs in quick mode and reports agreeing, optimal solvers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedamole.bench import BENCHMARKS
from fedamole.bench.assign import main


def test_quick_benchmark_writes_consistent_json(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    result = main(tmp_path, quick=True)
    assert json.loads((tmp_path / "assign.json").read_text()) == result
    assert [row["clients"] for row in result["scale"]] == [10, 100]
    for row in [result["paper"], *result["scale"]]:
        assert {"lp", "milp"} <= set(row["ms"])
        assert row["lp_objective_ok"]
        if "flow" in row["ms"]:
            assert row["flow_objective_ok"]
            assert row["flow_equals_lp"]
    assert "paper: 32 modules" in capsys.readouterr().out
    assert BENCHMARKS["assign"] == "fedamole.bench.assign:main"
