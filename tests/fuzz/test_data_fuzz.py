"""Fuzzing data files: generated JSON-lines and JSON datasets (local, Dolly, SNLI) and Natural
Instructions checkouts load, or are refused with a :class:`DataError` that has a message, through
the loaders, a Flower node's own file and ``fedamole partition``. What was made invalid on purpose
is never accepted, and what is valid loads every example."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from fedamole.config import Config, DataConfig
from fedamole.data import DataError, load_examples
from fedamole.data.node import load_node_data
from fedamole.data.types import ClientData

from ._data_gen import data_cases, ni_cases
from ._fuzzing import FUZZ, clean_outcome, invoke_cli, record

pytestmark = pytest.mark.fuzz


@FUZZ
@given(case=data_cases())
def test_generated_data_files_load_or_are_refused_cleanly(case):
    with tempfile.TemporaryDirectory() as tmp:
        path = case.write(Path(tmp))
        data = DataConfig(dataset=case.dataset, path=str(path))
        outcome = clean_outcome(lambda: load_examples(data), (DataError,))
    why = case.invalid()
    record(why is not None, isinstance(outcome, BaseException))
    if why is not None:
        assert isinstance(outcome, DataError), f"accepted ({why}): {case}"
    else:
        assert not isinstance(outcome, BaseException), f"refused a valid dataset: {outcome}"
        assert len(outcome) == case.examples()


@FUZZ
@given(case=ni_cases())
def test_generated_natural_instructions_load_or_are_refused_cleanly(case):
    with tempfile.TemporaryDirectory() as tmp:
        path = case.write(Path(tmp))
        data = DataConfig(dataset="natural_instructions", path=str(path), num_tasks=100)
        outcome = clean_outcome(lambda: load_examples(data), (DataError,))
    record(case.invalid is not None, isinstance(outcome, BaseException))
    if case.invalid is not None:
        assert isinstance(outcome, DataError), f"accepted ({case.invalid}): {case}"
    else:
        assert not isinstance(outcome, BaseException), f"refused a valid checkout: {outcome}"
        assert len(outcome) == case.examples


@FUZZ
@given(case=data_cases(("local", "dolly"), bulk=20), client=st.integers(0, 3))
def test_a_nodes_own_file_splits_or_is_refused_cleanly(case, client):
    """A Flower node's ``data-file`` (the local format; Dolly's records are local records)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = case.write(Path(tmp))
        outcome = clean_outcome(lambda: load_node_data(Config(), path, client=client), (DataError,))
    record(case.invalid() is not None, isinstance(outcome, BaseException))
    if case.invalid() is not None and case.dataset == "local":
        assert isinstance(outcome, DataError), f"accepted ({case.invalid()}): {case}"
    if not isinstance(outcome, BaseException):
        assert isinstance(outcome, ClientData) and outcome.train


@st.composite
def partition_settings(draw: st.DrawFn) -> tuple[dict, str | None]:
    """Partition settings, valid, or with a seed refused on purpose (numpy takes no negative)."""
    kind = draw(st.sampled_from(["iid", "dirichlet", "task"]))
    settings = {
        # fedit: no expert assignment to satisfy, whatever the number of clients
        "federation": {"algorithm": "fedit", "num_clients": draw(st.integers(1, 4))},
        "partition": {
            "kind": kind,
            "alpha": draw(st.floats(0.01, 100.0)),
            "min_size": draw(st.integers(1, 3)),
            "tasks_per_client": draw(st.integers(1, 2)),
            "seed": draw(st.integers(0, 2**63 - 1)),
        },
        "run": {"seed": draw(st.integers(0, 2**63 - 1))},
    }
    invalid = None
    if draw(st.sampled_from([False] * 5 + [True])):
        section = draw(st.sampled_from(["partition", "run"]))
        settings[section]["seed"] = draw(st.integers(-(2**63), -1))
        invalid = f"a negative {section}.seed"
    return settings, invalid


@FUZZ
@given(case=data_cases(bulk=30), settings=partition_settings())
def test_partition_command_exits_0_or_2_with_an_error_line(case, settings):
    settings, invalid_setting = settings
    with tempfile.TemporaryDirectory() as tmp:
        path = case.write(Path(tmp))
        settings["data"] = {"dataset": case.dataset, "path": str(path)}
        config = Path(tmp) / "partition.toml"
        config.write_text(tomli_w.dumps(settings))
        result = invoke_cli(["partition", str(config)])
    why = case.invalid() or invalid_setting
    record(why is not None, result.exit_code == 2)
    if why is not None:
        assert result.exit_code == 2, f"accepted ({why}): {case}"
