"""The layer benchmark runs end to end in quick mode and writes its JSON."""

from __future__ import annotations

import json

import torch

from fedamole.bench.layer import _layers, _SortLoopMoLE, main


def test_quick_layer_benchmark(tmp_path, capsys):
    result = main(tmp_path, quick=True)
    written = json.loads((tmp_path / "layer.json").read_text())
    assert written == result
    assert {row["dtype"] for row in result["modules"]} >= {"float32"}
    for row in result["modules"] + result["steps"]:
        assert set(row["ms"]) >= {"mole", "lora"}
        assert all(value > 0 for value in row["ms"].values())
        assert row["mole/lora"] > 0
    assert "mole/lora" in capsys.readouterr().out


def test_sort_and_loop_baseline_computes_the_same_layer():
    """The benchmark's reference-style baseline must compute what MoLELinear computes."""
    layers = _layers(16, torch.float32, torch.Generator().manual_seed(0))
    mole = layers["mole"].eval()
    x = torch.randn(3, 7, 16)
    torch.testing.assert_close(_SortLoopMoLE(mole).eval()(x), mole(x))
