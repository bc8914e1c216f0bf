"""The lock (requirements.lock) against pyproject.toml and the environment: every requirement pinned at a
version its range allows, every package the project pulls in pinned, and a run in an environment that
differs from the lock says so (MLflow tags, one warning line). When these fail:
`python tools/update_lock.py`."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, distribution

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

from anomaly_spotter.pipeline.stage import main as stage_main
from anomaly_spotter.tracking.environment import (
    DRIFT_TAG,
    LOCK_MD5_TAG,
    drift_warning,
    environment_tags,
    lock_drift,
    normalize,
    read_lock,
)
from tests.conftest import REPO

LOCK = REPO / "requirements.lock"
UPDATE = "run `python tools/update_lock.py` (docs/reproducibility.md, Upgrading) and commit requirements.lock"


def _pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return [Requirement(r) for r in project["dependencies"] + [r for group in extras.values() for r in group]]


def test_lock_lines_are_exact_pins_of_distinct_packages() -> None:
    lines = [line for line in LOCK.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[^\s]+", line) for line in lines), lines
    assert len(read_lock(LOCK)) == len(lines) > 100


def test_lock_pins_every_requirement_of_pyproject_within_its_range() -> None:
    lock = read_lock(LOCK)
    problems = []
    for req in _pyproject_requirements():
        pinned = lock.get(normalize(req.name))
        if pinned is None:
            problems.append(f"{req.name} is in pyproject.toml but not in requirements.lock")
        elif not req.specifier.contains(Version(pinned), prereleases=True):
            problems.append(f"requirements.lock pins {req.name}=={pinned}, outside pyproject.toml's {req}")
    assert problems == [], "; ".join(problems) + "; " + UPDATE


def test_lock_pins_every_package_the_project_pulls_in() -> None:
    """Walks the installed metadata from anomaly-spotter[every extra]: what pip installed for the project."""
    lock = read_lock(LOCK)
    project = distribution("anomaly-spotter")
    extras = set(project.metadata.get_all("Provides-Extra") or [])
    todo = [(Requirement(r), extra) for r in project.requires or [] for extra in extras | {""}]
    seen, missing = set(), []
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({**default_environment(), "extra": extra}):
            continue
        name = normalize(req.name)
        if name in seen:
            continue
        seen.add(name)
        if name not in lock:
            missing.append(req.name)
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            continue  # not installed here: the pin check above still holds it
        todo += [(Requirement(r), extra_) for r in dist.requires or [] for extra_ in set(req.extras) | {""}]
    assert len(seen) > 100
    assert missing == [], f"not in requirements.lock: {sorted(missing)}; {UPDATE}"


def test_holds_are_what_the_lock_pins() -> None:
    lock = read_lock(REPO / "requirements.lock")
    holds = read_lock(REPO / "tools" / "lock-holds.txt")
    assert holds and all(lock[name] == version for name, version in holds.items())


def test_a_drifted_environment_is_tagged_and_warned(tmp_path, monkeypatch, capsys) -> None:
    lock = tmp_path / "requirements.lock"
    installed = distribution("numpy").version
    lock.write_text(
        f"# comment\nnumpy==0.0.1\nNot-Installed_pkg==1.0\ntorch==2.13.0\npytest=={pytest.__version__}\n"
    )
    assert lock_drift(lock) == [f"numpy {installed} (lock 0.0.1)"]  # torch's +cpu label is not drift
    tags = environment_tags(lock)
    assert tags[DRIFT_TAG] == f"numpy {installed} (lock 0.0.1)" and re.fullmatch(
        r"[0-9a-f]{32}", tags[LOCK_MD5_TAG]
    )
    warning = drift_warning(lock)
    assert warning is not None and "\n" not in warning and f"numpy {installed} (lock 0.0.1)" in warning
    monkeypatch.chdir(tmp_path)  # a stage finds the lock in its working directory, warns once, runs on
    ran = []
    stage_main("prepare", lambda: ran.append(True))
    assert ran == [True]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prepare: warning: 1 installed package(s) differ")


def test_an_environment_installed_from_the_lock_has_no_drift() -> None:
    """What the Quick start installs is the lock: CI installs with `-c requirements.lock`."""
    assert environment_tags(LOCK)[DRIFT_TAG] == "none", lock_drift(LOCK)
