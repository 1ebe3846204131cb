"""The figures' shared style, checked on the Figure objects drawn from hand-made run directories:
bars from 0, spreads clipped to 0-100 and explained, one y-label for the score with a caption that
defines it, colour scales from 0, a warning when the swept setting does not vary, and the routing
figure's shared-expert measure."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.image import AxesImage

import fedamole.analysis.plots as plots
from fedamole.analysis.results import (
    SCORE_LABEL,
    entries,
    load_runs,
    metric_name,
    score_definition,
)
from fedamole.analysis.routing import (
    RoutingPoints,
    client_separability,
    shared_expert_separability,
)
from fedamole.config import dump, load

BASE = ("federation.num_clients=2", "mole.num_experts=6", "mole.clients_per_expert=1")


def _run(root, name, *overrides, scores, assignments=None, checkpoints=False):
    """A run directory: the config of ``overrides`` over :data:`BASE` (a feasible small FedAMoLE)
    and the defaults, ``scores`` as {(round, client): value} of ``test/score``, optional
    ``assignments/`` records."""
    path = root / name
    path.mkdir(parents=True)
    dump(load(overrides=[*BASE, *overrides]), path / "config.toml")
    lines = [
        json.dumps({"round": r, "client": c, "split": "test", "metric": "score", "value": v})
        for (r, c), v in scores.items()
    ]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (path / "done.json").write_text("{}")
    for rnd, modules in (assignments or {}).items():
        (path / "assignments").mkdir(exist_ok=True)
        record = json.dumps({"modules": modules})
        (path / "assignments" / f"round_{rnd:03d}.json").write_text(record)
    if checkpoints:
        (path / "checkpoints").mkdir()
    return path


def _two_clients(first, second):
    """Scores of two clients over rounds 0..2: client 0 follows ``first``, client 1 ``second``."""
    return {(r, c): v for c, values in enumerate((first, second)) for r, v in enumerate(values)}


@pytest.fixture
def drawn(monkeypatch):
    """The figures :mod:`fedamole.analysis.plots` saves, in order (files are still written)."""
    figures = []
    save = plots._save

    def keep(fig, *args, **kwargs):
        figures.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


@pytest.fixture
def seeds(tmp_path):
    """FedAMoLE on SNLI and on the synthetic suite, two seeds each, scores near 1 with a wide
    spread over seeds (mean ± std passes 100), FedAMoLE-H lower."""
    root = tmp_path / "runs"
    common = ("federation.rounds=2",)
    for dataset in ("snli", "synthetic"):
        for seed, (a, b) in ((1, (0.99, 1.0)), (2, (0.55, 0.6))):
            _run(
                root,
                f"{dataset}-fedamole-{seed}",
                f'data.dataset="{dataset}"',
                f"run.seed={seed}",
                *common,
                scores=_two_clients((0.3, 0.8, a), (0.4, 0.9, b)),
            )
            _run(
                root,
                f"{dataset}-h-{seed}",
                f'data.dataset="{dataset}"',
                f"run.seed={seed}",
                'mole.router="linear"',
                *common,
                scores=_two_clients((0.3, 0.5, 0.6), (0.4, 0.5, 0.62)),
            )
    return root


def _caption(fig):
    return " ".join(t.get_text() for t in fig.texts).replace("\n", " ")


def test_ablation_bars_start_at_zero_with_clipped_whiskers(seeds, tmp_path, drawn):
    paths = plots.plot("ablation", [seeds], tmp_path / "out")
    assert [p.name for p in paths] == ["ablation.png", "ablation.svg"]
    (fig,) = drawn
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2
    for ax in axes:
        assert ax.get_ylim()[0] == 0.0 and ax.get_ylim()[1] <= 100.0
        assert ax.get_ylabel() == SCORE_LABEL
        assert all(bar.get_y() == 0.0 for bar in ax.patches)
        whiskers = [c for c in ax.collections if isinstance(c, LineCollection)]
        tops = [seg[:, 1].max() for c in whiskers for seg in c.get_segments()]
        bottoms = [seg[:, 1].min() for c in whiskers for seg in c.get_segments()]
        # FedAMoLE's seeds: 99.5 and 57.5, std 29.7: unclipped, the whisker would reach 108.2
        assert tops and max(tops) == pytest.approx(100.0) and min(bottoms) >= 0.0
        assert {t.get_text() for t in ax.texts} >= {"78.5", "61.0"}  # bars labelled by mean
    assert "whiskers: ± 1 std over seeds" in _caption(fig)


def test_rounds_one_y_label_clipped_bands_explained(seeds, tmp_path, drawn):
    plots.plot("rounds", [seeds], tmp_path / "out")
    (fig,) = drawn
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert {ax.get_ylabel() for ax in axes} == {SCORE_LABEL}
    assert {ax.get_title() for ax in axes} == {"SNLI α=1", "Synthetic α=1"}
    for ax in axes:
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert bands
        ys = np.concatenate([path.vertices[:, 1] for c in bands for path in c.get_paths()])
        assert ys.min() >= 0.0 and ys.max() == pytest.approx(100.0)  # 99.5 + 31.1, clipped
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert "FedAMoLE" in labels and "FedAMoLE-H" in labels
    assert any(label.startswith("band: ± 1 std over seeds") for label in labels)
    caption = _caption(fig)
    assert "client-mean test score × 100" in caption
    assert "accuracy on answer-choice tasks" in caption
    assert "ROUGE-L F on free-text tasks" in caption
    assert "accuracy for SNLI α=1" in caption
    assert "per-example accuracy or ROUGE-L F for Synthetic α=1" in caption


def test_metric_name_and_score_definition(tmp_path):
    for dataset in ("snli", "dolly", "synthetic"):
        _run(tmp_path, dataset, f'data.dataset="{dataset}"', scores={(1, 0): 0.5})
    items = entries(load_runs([tmp_path]))
    by = {e.run.get("data.dataset"): e for e in items}
    assert metric_name([by["snli"]]) == "accuracy"
    assert metric_name([by["dolly"]]) == "ROUGE-L F"
    assert metric_name([by["synthetic"]]) == "per-example accuracy or ROUGE-L F"
    assert metric_name([by["snli"], by["dolly"]]) == "per-example accuracy or ROUGE-L F"
    text = score_definition({"SNLI α=1": "accuracy", "Dolly α=1": "ROUGE-L F"})
    assert text.startswith("Score: the client-mean test score × 100")
    assert text.endswith("Here: accuracy for SNLI α=1; ROUGE-L F for Dolly α=1.")
    assert "Here" not in score_definition()


def _experts_runs(root, counts, *overrides):
    """A FedAMoLE run whose assignments give client c ``counts[c]`` experts in both modules."""
    modules = {m: [list(range(n)) for n in counts] for m in ("q", "v")}
    overrides = ("mole.max_experts_per_client=4", *overrides)
    return _run(root, "experts", *overrides, scores={(1, 0): 0.5}, assignments={1: modules})


def test_experts_colour_scale_from_zero_to_the_most_a_client_can_hold(tmp_path, drawn):
    root = _experts_runs(tmp_path / "runs", [3, 4, 2]).parent
    plots.plot("experts", [root], tmp_path / "out")
    (fig,) = drawn
    left, right = fig.axes[:2]
    (image,) = [a for a in left.get_children() if isinstance(a, AxesImage)]
    assert image.get_clim() == (0, 4)  # M_max = 4 < E = 6, observed 4
    assert fig.axes[2].get_ylabel() == "domain experts per module\n(scale 0 to 4 = M_max)"
    assert right.get_ylim()[0] == 0.0 and all(bar.get_y() == 0.0 for bar in right.patches)


def test_experts_scale_falls_back_to_the_observed_maximum(tmp_path, drawn):
    # M_max = 3 bounds what a client can hold; the records say 5 (e.g. written by an older rule)
    root = _experts_runs(tmp_path / "runs", [5, 1], "mole.max_experts_per_client=3").parent
    plots.plot("experts", [root], tmp_path / "out")
    (image,) = [a for a in drawn[0].axes[0].get_children() if isinstance(a, AxesImage)]
    assert image.get_clim() == (0, 5)
    assert "scale 0 to 5 = the most held" in drawn[0].axes[2].get_ylabel()


def test_heatmap_scale_is_0_to_100_and_a_constant_axis_warns(tmp_path, drawn):
    root = tmp_path / "runs"
    for m_max, value in ((3, 0.375), (4, 0.415)):
        _run(
            root,
            f"m{m_max}",
            f"mole.max_experts_per_client={m_max}",
            scores={(1, 0): value, (1, 1): value},
        )
    with pytest.warns(UserWarning, match=r"`mole\.num_experts` \(experts per module E\).*all 6"):
        paths = plots.plot("heatmap", [root], tmp_path / "out")
    assert all(p.is_file() for p in paths)
    (fig,) = drawn
    ax = fig.axes[0]
    (image,) = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    assert image.get_clim() == (0.0, 100.0)
    assert fig.axes[1].get_ylabel() == f"{SCORE_LABEL}, colour scale 0-100"
    assert {t.get_text() for t in ax.texts} == {"37.5", "41.5"}


@pytest.mark.parametrize("figure", ["clients", "alpha", "sensitivity", "privacy"])
def test_a_swept_setting_that_does_not_vary_warns_and_still_draws(tmp_path, figure, drawn):
    root = tmp_path / "runs"
    extra = ["federation.privacy=true"] if figure == "privacy" else []
    for seed in (1, 2):
        _run(root, f"s{seed}", f"run.seed={seed}", *extra, scores={(1, 0): 0.4 + seed / 10})
    key = {
        "clients": "federation.num_clients",
        "alpha": "partition.alpha",
        "sensitivity": "train.lr",
        "privacy": "federation.privacy_eta",
    }[figure]
    with pytest.warns(UserWarning, match=f"`{key}`.*does not vary over the given runs"):
        paths = plots.plot(figure, [root], tmp_path / "out")
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.is_file() for p in paths)
    (fig,) = drawn
    assert fig.axes[0].get_ylabel() == SCORE_LABEL


def test_a_varying_setting_does_not_warn_and_error_bars_stay_in_range(tmp_path, drawn):
    root = tmp_path / "runs"
    for clients in (2, 3):
        for seed, value in ((1, 1.0), (2, 0.5)):
            scores = {(1, c): value for c in range(clients)}
            _run(
                root,
                f"n{clients}-s{seed}",
                f"federation.num_clients={clients}",
                f"run.seed={seed}",
                scores=scores,
            )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        plots.plot("clients", [root], tmp_path / "out")
    ax = drawn[0].axes[0]
    segments = [
        s for c in ax.collections if isinstance(c, LineCollection) for s in c.get_segments()
    ]
    ys = np.concatenate([s[:, 1] for s in segments])
    assert ys.max() == pytest.approx(100.0) and ys.min() == pytest.approx(75 - 35.355, abs=1e-3)


def test_one_panel_without_variation_is_named(tmp_path, drawn):
    root = tmp_path / "runs"
    for dataset, alphas in (("snli", (0.1, 1.0)), ("synthetic", (0.5,))):
        for alpha in alphas:
            _run(
                root,
                f"{dataset}-{alpha}",
                f'data.dataset="{dataset}"',
                f"partition.alpha={alpha}",
                scores={(1, 0): 0.5},
            )
    with pytest.warns(UserWarning, match="does not vary within Synthetic: drawn there"):
        plots.plot("alpha", [root], tmp_path / "out")


# ------------------------------------------------------------------------------------------------
# Routing: the shared-expert measure, and what the figure says about itself


def _routing(held_a, held_b, mix_a, mix_b, n=3, num_experts=4):
    """One module: n points per client; a point puts ``mix`` (renormalised) on its held experts,
    plus a per-point wobble on the first held expert so that no two points coincide."""
    points, clients = [], []
    for client, (held, mix) in enumerate(((held_a, mix_a), (held_b, mix_b))):
        for i in range(n):
            p = np.zeros(num_experts)
            p[list(held)] = mix
            p[held[0]] += 0.01 * (i + 1)
            points.append(p / p.sum())
            clients.append(client)
    return np.array(points), np.array(clients)


def test_shared_experts_ignore_what_only_one_client_holds():
    # Clients 0 and 1 hold {0, 1, 2} and {1, 2, 3} and route alike on the shared {1, 2}:
    # the full space separates them perfectly, the shared experts cannot.
    points, clients = _routing((0, 1, 2), (3, 1, 2), (0.4, 0.3, 0.3), (0.4, 0.3, 0.3))
    assert client_separability(points, clients) == 1.0
    found = shared_expert_separability(points, clients, 4)
    assert (found.pairs, found.skipped) == (1, 0)
    assert found.chance == pytest.approx((3 * 2 + 3 * 2) / (6 * 5))
    assert found.accuracy == pytest.approx(found.chance)  # every neighbour ties: credit shared
    held = {0: [(0, 1, 2)], 1: [(1, 2, 3)]}
    assert shared_expert_separability(points, clients, 4, held) == found


def test_shared_experts_mixed_differently_separate():
    points, clients = _routing((0, 1), (0, 1), (0.8, 0.2), (0.2, 0.8), num_experts=2)
    found = shared_expert_separability(points, clients, 2)
    assert found.accuracy == 1.0 and found.pairs == 1


def test_pairs_sharing_fewer_than_two_experts_are_skipped():
    points, clients = _routing((0, 1), (1, 2), (0.5, 0.5), (0.5, 0.5), num_experts=3)
    found = shared_expert_separability(points, clients, 3)
    assert (found.pairs, found.skipped) == (0, 1) and np.isnan(found.accuracy)
    with pytest.raises(ValueError, match="modules × 3"):
        shared_expert_separability(points[:, :2], clients, 3)


def test_routing_figure_states_what_it_shows(tmp_path, monkeypatch, drawn):
    import fedamole.analysis.routing as routing

    run = _run(tmp_path / "runs", "r", scores={(1, 0): 0.5}, checkpoints=True)
    points, clients = _routing((0, 1, 2), (3, 1, 2), (0.4, 0.3, 0.3), (0.4, 0.3, 0.3))
    held = {0: ((0, 1, 2),), 1: ((1, 2, 3),)}
    found = RoutingPoints(points, clients, ("q",), 4, 2, held)
    monkeypatch.setattr(routing, "routing_points", lambda path: found)
    plots.plot("routing", [run], tmp_path / "out")
    (fig,) = drawn
    title = fig.axes[0].get_title()
    assert "shared-expert 1-NN 0.40 (chance 0.40, 1 client pairs)" in title
    assert "1-NN client acc" not in title
    caption = _caption(fig)
    assert "separate here by construction" in caption
    assert "not evidence about RSEA" in caption
    assert "by construction" in plots.plot_routing.__doc__
    assert "no evidence about RSEA" in " ".join(plots.plot_routing.__doc__.split())
