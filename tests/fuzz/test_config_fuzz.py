"""Fuzzing configs: generated TOML files (``extends`` chains, bad bytes) and dotted overrides load,
or are refused with a :class:`ConfigError` or :class:`FileNotFoundError` that has a message; through
``fedamole validate`` they end with exit 0, or exit 2 and an ``error:`` line, never a traceback.
What was made invalid on purpose is never accepted, and a refusal of a bad value names the field."""

from __future__ import annotations

import tempfile
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedamole.config import Config, ConfigError, load

from ._config_gen import config_files, override_lists, overrides_must_fail, replaced
from ._fuzzing import FUZZ, clean_outcome, invoke_cli, record

pytestmark = pytest.mark.fuzz

CLEAN = (ConfigError, FileNotFoundError)
REPO = Path(__file__).resolve().parents[2]
BASES = [None, REPO / "configs" / "smoke.toml", REPO / "configs" / "demo.toml"]


def _names_fields(exc: BaseException, invalid: dict[str, str]) -> None:
    """A refusal of values lists each field made invalid on purpose."""
    assert isinstance(exc, ConfigError), exc
    text = str(exc)
    missing = {key: why for key, why in invalid.items() if f"`{key}" not in text}
    assert not missing, f"the error does not name {missing}:\n{text}"


@FUZZ
@given(case=config_files())
def test_generated_config_files_load_or_are_refused_cleanly(case):
    broken, known = case.chain()
    with tempfile.TemporaryDirectory() as tmp:
        entry = case.write(Path(tmp))
        outcome = clean_outcome(lambda: load(entry), CLEAN)
    record(broken or bool(case.entry_invalid()), isinstance(outcome, BaseException))
    if broken or case.entry_invalid():
        assert isinstance(outcome, BaseException), f"accepted: {case}"
    if known and not broken and case.entry_invalid():
        _names_fields(outcome, case.entry_invalid())


@FUZZ
@given(base=st.sampled_from(BASES), items=override_lists())
def test_generated_overrides_load_or_are_refused_cleanly(base, items):
    outcome = clean_outcome(lambda: load(base, [item.text for item in items]), CLEAN)
    record(overrides_must_fail(items), isinstance(outcome, BaseException))
    if overrides_must_fail(items):
        assert isinstance(outcome, ConfigError), f"accepted: {items}"


@FUZZ
@given(case=config_files(), items=override_lists(max_valid=2))
def test_validate_exits_0_or_2_with_an_error_line(case, items):
    """``fedamole validate FILE OVERRIDES``: the properties above, through the command line; what
    it prints on success is a config that loads to the same thing."""
    broken, _ = case.chain()
    kept_invalid = [key for key in case.entry_invalid() if not replaced(key, items)]
    must_fail = broken or bool(kept_invalid) or overrides_must_fail(items)
    texts = [item.text for item in items]
    with tempfile.TemporaryDirectory() as tmp:
        entry = case.write(Path(tmp))
        result = invoke_cli(["validate", str(entry), *texts])
        if result.exit_code == 0:
            printed = Config.model_validate(tomllib.loads(result.stdout))
            assert printed == load(entry, texts)
    record(must_fail, result.exit_code == 2)
    if must_fail:
        assert result.exit_code == 2, f"accepted: {case} {items}"
