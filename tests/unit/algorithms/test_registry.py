"""The algorithm registry (docs/algorithm.md#adding-an-algorithm): each registration names a class
and a writer that exist; the config's accepted names, the reports' labels and row order, the export
formats and the behaviour recordings all agree with it; registrations that clash are refused; and
reading the registry imports no torch."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import get_args

import pytest
from typer.testing import CliRunner

from fedamole.algorithms import ALGORITHMS, get_algorithm
from fedamole.algorithms.base import RoundTemplate
from fedamole.algorithms.registry import (
    SPEC_SUFFIX,
    AlgorithmSpec,
    Export,
    algorithm_names,
    algorithm_spec,
    checked,
    registry,
    resolve,
)
from fedamole.analysis.results import (
    METHOD_ORDER,
    _method_identity,
    method_labels,
    method_sort_key,
)
from fedamole.cli import app
from fedamole.config import AlgorithmName, ConfigError, load
from fedamole.export import export_kind, exportable_algorithms

# The reports' row order as it was written out by hand before the registry: the paper's baselines
# (each global-model one followed by its -FT row), the extra ones, FedAMoLE's ablations, FedAMoLE.
HAND_WRITTEN_ORDER = (
    "FedIT", "FedIT-FT", "FedPrompt", "FedPrompt-FT", "FedPTuning", "FedPTuning-FT",
    "FDLoRA", "FDLoRA-FT", "FFA-LoRA", "FFA-LoRA-FT", "FedSA-LoRA", "FedDPA", "FlexLoRA", "HetLoRA",
    "FedALT", "FedLEASE", "pFedMoE", "Local",
    "FedIT-clustered", "FedAMoLE-R", "FedAMoLE-Rand", "FedAMoLE-H", "FedAMoLE-S", "FedAMoLE-Homo",
    "FedAMoLE-DP", "FedAMoLE-GDP", "FedAMoLE",
)  # fmt: skip
# What fedamole.export.load_exported can read back.
LOADABLE_KINDS = {"peft", "feddpa", "fedalt", "fedlease", "pfedmoe", "prompt", "mole"}


def test_every_registration_names_its_class_and_its_writer():
    assert list(registry()) == sorted(registry()) == list(ALGORITHMS)
    for name, spec in registry().items():
        cls = get_algorithm(name)
        assert cls is spec.load_class() and cls.name == name and ALGORITHMS[name] == spec.cls
        assert issubclass(cls, RoundTemplate)
        if spec.export is not None:
            assert callable(resolve(spec.export.writer))


def test_the_config_accepts_exactly_the_registered_names(repo):
    assert get_args(AlgorithmName) == algorithm_names() == tuple(registry())
    for name in algorithm_names():
        overrides = [f"federation.algorithm={name}"]
        assert load(repo / "configs" / "smoke.toml", overrides).federation.algorithm == name
    with pytest.raises(ConfigError) as raised:
        load(repo / "configs" / "smoke.toml", ["federation.algorithm=fedavg"])
    assert f"('fedavg') is unknown; choose one of {sorted(registry())}" in str(raised.value)


def test_validate_lists_the_registered_names_for_an_unknown_algorithm(repo):
    smoke = str(repo / "configs" / "smoke.toml")
    result = CliRunner().invoke(app, ["validate", smoke, "federation.algorithm=fedavg"])
    assert result.exit_code == 2
    assert "`federation.algorithm` ('fedavg') is unknown; choose one of" in result.output
    assert all(repr(name) in result.output for name in algorithm_names())


def test_an_unknown_name_is_refused_with_the_registered_ones():
    with pytest.raises(KeyError, match=r"unknown algorithm 'fedavg'; choose one of \['fdlora'"):
        algorithm_spec("fedavg")
    with pytest.raises(KeyError, match="choose one of"):
        get_algorithm("fedavg")


def test_report_labels_and_row_order_come_from_the_registry():
    assert METHOD_ORDER == HAND_WRITTEN_ORDER
    for name, spec in registry().items():
        labels = method_labels({"federation": {"algorithm": name}, "eval": {"timing": "both"}})
        if spec.global_model:
            assert labels == [(f"{spec.label}-FT", "test"), (spec.label, "test_global")]
        else:
            assert labels == [(spec.label, "test"), (f"{spec.label}-global", "test_global")]
        assert all(spec.label + suffix in METHOD_ORDER for suffix in ("", *spec.ablations))
    # an unregistered algorithm keeps its name; labels no algorithm lists rank before FedAMoLE's
    assert method_labels({"federation": {"algorithm": "gone"}}) == [("gone", "test")]
    rows = ["FedAMoLE", "FedAMoLE-R", "FedAMoLE-Oracle", "Local", "FedSA-LoRA-global"]
    assert sorted(rows, key=method_sort_key) == [
        "Local",
        "FedAMoLE-Oracle",
        "FedSA-LoRA-global",
        "FedAMoLE-R",
        "FedAMoLE",
    ]


def test_fedamoles_config_flags_are_its_label_suffixes():
    config = {
        "federation": {"algorithm": "fedamole", "assignment": "static", "privacy": True},
        "mole": {"router": "linear", "shared_expert": False},
    }
    assert method_labels(config) == [("FedAMoLE-R-H-S-DP", "test")]


def test_export_formats_come_from_the_registry():
    exportable = sorted(name for name, spec in registry().items() if spec.export is not None)
    assert exportable_algorithms() == exportable
    assert exportable_algorithms(trained=True) == [
        name for name in exportable if algorithm_spec(name).export.trained
    ]
    assert {export_kind(name) for name in exportable} <= LOADABLE_KINDS
    # FDLoRA's fused adapter is a plain peft one; only the received global models of FDLoRA and
    # the prompt methods are checkpointed
    assert export_kind("fdlora") == "peft"
    assert set(exportable) - set(exportable_algorithms(trained=True)) == {
        "fdlora",
        "fedprompt",
        "fedptuning",
    }


def test_the_optional_hooks_have_defaults():
    for name in algorithm_names():
        cls = get_algorithm(name)
        overrides = cls.observe_partition is not RoundTemplate.observe_partition
        observers = {"fedamole", "fedit_clustered", "fedlease"}  # fedlease: a diagnostic
        assert cls.observes_partition == overrides == (name in observers)


def test_the_behaviour_recording_covers_every_registered_algorithm(repo):
    spec = importlib.util.spec_from_file_location("behaviour", repo / "tools" / "behaviour.py")
    behaviour = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(behaviour)
    recorded = {
        next((a.split("=")[1] for a in args if a.startswith("federation.algorithm=")), "fedamole")
        for args in behaviour.CASES.values()
    }
    assert recorded == set(algorithm_names())


def test_clashing_registrations_are_refused():
    a = AlgorithmSpec("a", "m:A", "A", table_order=1, global_model=False)
    assert checked([a]) == [a]
    clashes = {
        "name": replace(a, label="B", table_order=2),
        "label": replace(a, name="b", table_order=2),
        "table_order": replace(a, name="b", label="B"),
    }
    for field, other in clashes.items():
        with pytest.raises(ValueError, match=f"the same {field}"):
            checked([a, other])
    for bad in (replace(a, cls="m.A"), replace(a, export=Export("peft", "m:w:x"))):
        with pytest.raises(ValueError, match="must read 'module:attr'"):
            checked([bad])


def test_registrations_import_only_the_registry_and_no_torch(repo):
    folder = Path(sys.modules["fedamole.algorithms.registry"].__file__).parent
    specs = sorted(folder.glob(f"*{SPEC_SUFFIX}.py"))
    assert len(specs) == len(registry())
    for path in specs:
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert {m for m in imported if m.startswith("fedamole")} == {
            "fedamole.algorithms.registry"
        }, path.name
    code = (
        "import sys\n"
        "from fedamole.config import load\n"
        "from fedamole.analysis.results import METHOD_ORDER\n"
        f"load({str(repo / 'configs' / 'smoke.toml')!r}, ['federation.algorithm=fedit'])\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_runs_identity_in_reports_is_its_own_settings_table():
    for name, spec in registry().items():
        config = {"federation": {"algorithm": name}, "mole": {"rank": 4}, "baselines": {"rank": 4}}
        identity = _method_identity(config, ignore=())
        assert {k.split(".")[0] for k in identity} == {"federation", spec.settings}
