"""The environment a run ran in, against the lock (`requirements.lock`, docs/reproducibility.md).

The lock pins every package the Quick start installs. A run records the lock's md5 and the installed
packages whose versions differ from it (`environment_tags`); a stage started in such an environment
prints one warning line naming them (`drift_warning`) and runs on: users have their reasons.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

from anomaly_spotter.core.packages import public

LOCK_FILE = "requirements.lock"
LOCK_MD5_TAG = "env.lock_md5"
DRIFT_TAG = "env.lock_drift"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them: `Opencv_Python.Headless` -> `opencv-python-headless`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def find_lock(start: Path | None = None) -> Path | None:
    """`requirements.lock` in the working directory (where stages run) or the package's checkout, if any."""
    for folder in (start or Path.cwd(), Path(__file__).resolve().parents[2]):
        if (folder / LOCK_FILE).is_file():
            return folder / LOCK_FILE
    return None


def read_lock(path: Path) -> dict[str, str]:
    """`{normalized name: version}` of the `name==version` lines; anything else in the file is a comment."""
    return dict(_pins(Path(path).read_text()))


def _pins(text: str) -> tuple[tuple[str, str], ...]:
    matches = (_PIN.match(line.strip()) for line in text.splitlines())
    return tuple((normalize(m.group(1)), m.group(2)) for m in matches if m)


def lock_drift(path: Path) -> list[str]:
    """Installed packages whose version differs from the lock, as `name installed (lock locked)`, sorted.
    Packages of the lock that are not installed (an extra not asked for) are not drift."""
    return list(_drift(_pins(Path(path).read_text())))


@functools.cache
def _drift(pins: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """Cached per lock content: the installed versions do not change while a process runs, and a stage
    asks twice (its warning line, then each run's tags)."""
    from importlib.metadata import PackageNotFoundError, version

    drift = []
    for name, locked in sorted(pins):
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue
        if public(installed) != public(locked):
            drift.append(f"{name} {installed} (lock {locked})")
    return tuple(drift)


def environment_tags(path: Path | None = None) -> dict[str, str]:
    """MLflow tags: the lock's md5 and the drift from it ("none", or the packages; "no lock" without one)."""
    path = path or find_lock()
    if path is None:
        return {LOCK_MD5_TAG: "no lock", DRIFT_TAG: "no lock"}
    drift = lock_drift(path)
    return {
        LOCK_MD5_TAG: hashlib.md5(path.read_bytes()).hexdigest(),
        DRIFT_TAG: "; ".join(drift)[:5000] if drift else "none",
    }


def drift_warning(path: Path | None = None) -> str | None:
    """One line naming the packages that differ from the lock, or None when the environment matches it."""
    path = path or find_lock()
    drift = lock_drift(path) if path is not None else []
    if not drift:
        return None
    return (
        f"warning: {len(drift)} installed package(s) differ from {path.name}: {', '.join(drift)}; results "
        "may differ from the committed ones (pip install -c requirements.lock -e '.[dev]' restores the lock; "
        "docs/reproducibility.md)"
    )
