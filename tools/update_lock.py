"""Update requirements.lock: the newest versions pyproject.toml allows, installed in a fresh virtual
environment and frozen, every package (transitive ones included) at one exact version.

    python tools/update_lock.py              # rewrite requirements.lock
    python tools/update_lock.py --out X      # write elsewhere (e.g. to compare)

Then `dvc repro`, `dvc metrics diff`, and commit requirements.lock, dvc.lock and the numbers together
(docs/reproducibility.md, "Upgrading"). tools/lock-holds.txt holds packages back, each with its reason.
The lock is for CPython 3.11 on Linux (x86_64; aarch64 takes the same pins); torch is pinned without its
local build label, so that its CPU build (2.13.0+cpu) and any other 2.13.0 build satisfy it.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
HOLDS = REPO / "tools" / "lock-holds.txt"
HEADER = """\
# Exact versions of every package the Quick start installs (pip install -c requirements.lock -e '.[dev]'),
# transitive ones included: CPython {python} on Linux {machine}. pyproject.toml keeps the ranges, for
# using the library in an environment of your own. Update with `python tools/update_lock.py`
# (docs/reproducibility.md); tests/unit/test_environment.py fails when this and pyproject.toml disagree.
# Made {date}.
"""


def freeze(python: str) -> list[str]:
    out = subprocess.run(
        [python, "-m", "pip", "freeze", "--exclude-editable", "--all"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lines = []
    for line in out.splitlines():
        name = line.split("==", 1)[0].lower()
        if "==" not in line or name in ("pip", "anomaly-spotter"):
            continue  # the installer and the project itself are not the lock's
        lines.append(re.sub(r"^(torch==[^+]+)\+\w+$", r"\1", line))
    return sorted(lines, key=str.lower)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=LOCK, help=f"where to write (default {LOCK.name})")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="anomaly-spotter-lock-") as tmp:
        subprocess.run([sys.executable, "-m", "venv", tmp], check=True)
        python = str(Path(tmp) / "bin" / "python")
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "-c", str(HOLDS), "-e", f"{REPO}[dev]"], check=True
        )
        lines = freeze(python)
    header = HEADER.format(
        python=platform.python_version(), machine=platform.machine(), date=datetime.date.today().isoformat()
    )
    args.out.write_text(header + "\n".join(lines) + "\n")
    print(f"{args.out}: {len(lines)} packages pinned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
