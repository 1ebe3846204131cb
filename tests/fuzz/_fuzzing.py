"""What every fuzz property shares: the hypothesis settings, the clean-failure checks, TOML text.

Settings: ``FEDAMOLE_FUZZ_EXAMPLES`` (a positive integer) sets the generated cases per property.
Unset, CI's size applies (:data:`CI_EXAMPLES`), derandomized so that a CI run is reproducible and
never flaky; with the variable set (``make fuzz``) each run draws new cases. No example database is
kept (a failure prints the example and a ``@reproduce_failure`` blob; hypothesis still caches in
its self-ignored ``.hypothesis/``); a case that found a bug is kept as an explicit test in
``test_regressions.py``. ``--hypothesis-show-statistics`` prints the cases each property ran and
how many were refused.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import tomli_w
from hypothesis import HealthCheck, event, settings
from typer.testing import CliRunner

from fedamole.cli import app

__all__ = [
    "CI_EXAMPLES",
    "EXAMPLES_ENV",
    "FUZZ",
    "clean_outcome",
    "invoke_cli",
    "record",
    "toml_key",
    "toml_value",
]

EXAMPLES_ENV = "FEDAMOLE_FUZZ_EXAMPLES"
CI_EXAMPLES = 50


def _examples() -> int:
    raw = os.environ.get(EXAMPLES_ENV, "").strip()
    if not raw:
        return CI_EXAMPLES
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{EXAMPLES_ENV}={raw!r}: give a positive number of cases per property")
    return int(raw)


FUZZ = settings(
    max_examples=_examples(),
    deadline=None,  # the machine may be busy; a slow case is not a failure
    derandomize=EXAMPLES_ENV not in os.environ,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""The settings of every property in tests/fuzz (see the module docstring)."""

T = TypeVar("T")


def clean_outcome(
    call: Callable[[], T], clean: tuple[type[BaseException], ...]
) -> T | BaseException:
    """``call()``'s result, or the exception it raised if that is one of ``clean`` with a message.

    Any other exception propagates: that is the bug a property looks for (a traceback).
    """
    try:
        return call()
    except clean as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        return exc


_RUNNER = CliRunner()


def invoke_cli(args: Sequence[str]) -> Any:
    """Run ``fedamole ARGS`` in-process; assert it ended cleanly: exit 0, or exit 2 with an
    ``error:`` line, and never a traceback. Returns click's result."""
    result = _RUNNER.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        trace = "".join(traceback.format_exception(*result.exc_info))
        raise AssertionError(f"fedamole {list(args)!r:.300} raised:\n{trace}")
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in (0, 2), (result.exit_code, result.output)
    if result.exit_code == 2:
        assert "error:" in result.stderr, result.output
    return result


def record(must_fail: bool, refused: bool) -> None:
    """Count the case in hypothesis's statistics (``--hypothesis-show-statistics``)."""
    event(f"{'invalid on purpose' if must_fail else 'valid or unknown'}: "
          f"{'refused' if refused else 'loaded'}")  # fmt: skip


def toml_key(key: str) -> str:
    """``key`` as a TOML key (bare, or quoted when it needs to be)."""
    return tomli_w.dumps({key: 0}).rpartition(" = ")[0]


def toml_value(value: Any) -> str:
    """``value`` as one inline TOML value (tables inline), as an override's right-hand side."""
    if isinstance(value, dict):
        items = ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).partition(" = ")[2].rstrip("\n")
