"""The lock (requirements/lock.txt) agrees with pyproject.toml's bounds, and runs record it."""

from __future__ import annotations

import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from fedamole.lockfile import LOCK_PATH, lock_status, read_lock


def _declared(repo) -> list[Requirement]:
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    return [Requirement(line) for line in lines]


def test_every_locked_version_satisfies_pyproject(repo):
    pins = read_lock(repo / "requirements" / "lock.txt")
    checked = 0
    for req in _declared(repo):
        name = canonicalize_name(req.name)
        if name == "torch":
            assert name not in pins, "torch is chosen by TORCH_SPEC, not by the lock"
            continue
        assert name in pins, f"{req} is declared but not locked: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"the lock pins {name}=={pins[name]}, outside pyproject's `{req}`: run `make lock` "
            "or fix the bound"
        )
        checked += 1
    assert checked >= 15  # every core dependency and both extras' packages


def test_the_lock_pins_every_line(repo):
    text = (repo / "requirements" / "lock.txt").read_text()
    pins = read_lock(repo / "requirements" / "lock.txt")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(pins) == len(lines) and all("==" in ln for ln in lines)


def test_read_lock_rejects_a_range(tmp_path):
    bad = tmp_path / "lock.txt"
    bad.write_text("# header\nnumpy==2.0.0\nscipy>=1.11\n")
    with pytest.raises(ValueError, match=r"lock.txt:3: expected `name==version`"):
        read_lock(bad)


def test_lock_status_names_what_differs(tmp_path):
    lock = tmp_path / "lock.txt"
    numpy_version = __import__("numpy").__version__
    lock.write_text(f"numpy=={numpy_version}\nscipy==0.0.1\nno-such-package-xyz==1.0\n")
    status = lock_status(lock)
    assert len(status["sha256"]) == 64
    assert set(status["differs"]) == {"scipy", "no-such-package-xyz"}
    assert status["differs"]["no-such-package-xyz"] == {"locked": "1.0", "installed": None}
    assert lock_status(tmp_path / "absent.txt") is None


def test_env_json_records_the_lock(tmp_path):
    import json

    from fedamole.config import Config
    from fedamole.rundir import RunDir

    run = RunDir.prepare(Config(), tmp_path / "r")
    env = json.loads(run.env.read_text())
    assert env["lock"]["sha256"] == lock_status(LOCK_PATH)["sha256"]
