"""Where `data.path` resolves (docs/data.md#where-datapath-resolves): `~` expanded, a relative path
in the data root ($FEDAMOLE_DATA, else the working directory), resolved once when the data loads."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from fedamole.config import DataConfig
from fedamole.data import DataError, DataFileNotFoundError, load_examples, resolve_data_path
from fedamole.data.paths import DATA_ROOT_ENV, data_root

from ._util import FIXTURES

SNLI = FIXTURES / "snli"  # two files, 6 labelled pairs
SNLI_PAIRS = len(load_examples(DataConfig(dataset="snli", path=str(SNLI))))


@pytest.fixture(autouse=True)
def _no_data_root(monkeypatch):
    """Every test starts without FEDAMOLE_DATA (`make` may export one)."""
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)


def _snli(path: str | Path) -> int:
    return len(load_examples(DataConfig(dataset="snli", path=str(path))))


def test_a_relative_path_is_in_fedamole_data(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no snli/ here
    monkeypatch.setenv(DATA_ROOT_ENV, str(FIXTURES))
    assert data_root() == FIXTURES
    assert resolve_data_path("snli") == SNLI
    assert _snli("snli") == SNLI_PAIRS


def test_without_fedamole_data_a_relative_path_is_in_the_working_directory(monkeypatch):
    monkeypatch.chdir(FIXTURES)
    assert data_root() == Path.cwd()
    assert resolve_data_path("snli") == Path.cwd() / "snli"
    assert _snli("snli") == SNLI_PAIRS
    monkeypatch.setenv(DATA_ROOT_ENV, "")  # empty counts as unset
    assert _snli("./snli") == SNLI_PAIRS


def test_an_absolute_path_ignores_the_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    assert resolve_data_path(str(SNLI)) == SNLI
    assert _snli(SNLI) == SNLI_PAIRS


def test_a_relative_fedamole_data_is_taken_from_the_working_directory(monkeypatch):
    monkeypatch.chdir(FIXTURES.parent)
    monkeypatch.setenv(DATA_ROOT_ENV, "data")
    assert data_root() == FIXTURES
    assert resolve_data_path("snli/../snli") == SNLI  # `..` folded
    assert _snli("snli") == SNLI_PAIRS


def test_tilde_is_expanded_in_data_path_and_in_fedamole_data(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(FIXTURES.parent))
    monkeypatch.chdir(tmp_path)
    assert resolve_data_path("~/data/snli") == SNLI
    assert _snli("~/data/snli") == SNLI_PAIRS
    monkeypatch.setenv(DATA_ROOT_ENV, "~/data")
    assert data_root() == FIXTURES
    assert _snli("snli") == SNLI_PAIRS


def test_every_loader_reads_the_resolved_path(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DATA_ROOT_ENV, str(FIXTURES))
    ni = load_examples(DataConfig(dataset="natural_instructions", path="ni_v28"))
    assert ni
    assert len(load_examples(DataConfig(dataset="local", path="local_ok.jsonl"))) == 4
    with pytest.raises(DataError, match=rf"{FIXTURES / 'bad_json.jsonl'}:2: not valid JSON"):
        load_examples(DataConfig(dataset="dolly", path="bad_json.jsonl"))


def test_the_resolved_path_is_logged(monkeypatch, caplog):
    monkeypatch.setenv(DATA_ROOT_ENV, str(FIXTURES))
    with caplog.at_level(logging.INFO, logger="fedamole"):
        _snli("snli")
    assert f"data.path 'snli': reading {SNLI} (relative to {DATA_ROOT_ENV}={FIXTURES})" in (
        caplog.text
    )


def test_the_synthetic_suite_ignores_data_path():
    data = DataConfig(dataset="synthetic", path="no/such/folder", num_examples=10)
    assert len(load_examples(data)) == 10


def _missing(path: str) -> str:
    with pytest.raises(DataFileNotFoundError) as info:
        _snli(path)
    assert isinstance(info.value, FileNotFoundError)
    return str(info.value)


def test_a_missing_relative_path_names_value_resolved_path_data_root_and_fix(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    message = _missing("snli")
    assert f"`data.path` = 'snli' resolves to {tmp_path / 'snli'}" in message
    assert "relative to the working directory, FEDAMOLE_DATA is not set" in message
    assert "does not exist" in message
    assert (
        "set FEDAMOLE_DATA to the folder that holds snli/, dolly/ and natural-instructions/"
        in message
    )
    assert "pass data.path=ABSOLUTE_PATH" in message
    assert message.endswith("see docs/data.md#where-datapath-resolves")

    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "data"))
    message = _missing("snli")
    assert f"resolves to {tmp_path / 'data' / 'snli'}" in message
    assert f"relative to FEDAMOLE_DATA={tmp_path / 'data'}, a folder that does not exist" in message
    assert "set FEDAMOLE_DATA to the folder that holds snli/, dolly/ and" in message


def test_a_missing_absolute_path_says_fedamole_data_is_not_used(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ROOT_ENV, str(FIXTURES))
    path = str(tmp_path / "snli")
    message = _missing(path)
    assert f"`data.path` = {path!r} resolves to {path} (an absolute path: " in message
    assert f"FEDAMOLE_DATA={FIXTURES} is not used), which does not exist" in message
    assert "point data.path at the dataset file or folder" in message
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(DATA_ROOT_ENV)
    message = _missing("~/snli")
    assert f"`data.path` = '~/snli' resolves to {tmp_path / 'snli'} (`~` expanded: " in message
    assert "FEDAMOLE_DATA is not set" in message


def test_the_data_config_keeps_the_path_as_given(monkeypatch):
    monkeypatch.setenv(DATA_ROOT_ENV, str(FIXTURES))
    data = DataConfig(dataset="snli", path="snli")
    load_examples(data)
    assert data.path == "snli"  # what the run's config.toml records
    assert os.path.isabs(resolve_data_path(data.path))
