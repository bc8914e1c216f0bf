"""Where a run's inputs came from: the git commit and uncommitted changes, DVC's outputs and data hashes,
the clone a run was started from."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

# Files `dvc repro` rewrites in any folder: not "uncommitted changes" to code or parameters.
DVC_WRITTEN_NAMES = frozenset({"dvc.lock", ".gitignore"})


DVC_YAML = "dvc.yaml"


def dvc_uncached_outs(dvc_yaml: Path) -> list[str]:
    """Outputs dvc.yaml declares with `cache: false` (committed to git, rewritten by `dvc repro`).

    A templated path (`foreach` stages: `reports/${item}.json`) becomes the prefix before `${` plus `*`.
    Returns [] when dvc.yaml is missing or unreadable.
    """
    import yaml

    try:
        stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    found: list[str] = []
    for stage in stages.values():
        if not isinstance(stage, dict):
            continue
        body = stage.get("do", stage) if isinstance(stage.get("do"), dict) else stage
        for key in ("outs", "metrics", "plots"):
            for entry in body.get(key) or []:
                if not isinstance(entry, dict):
                    continue  # a bare path is cached
                for path, options in entry.items():
                    if isinstance(options, dict) and options.get("cache") is False:
                        path = str(path)
                        if "${" in path:
                            path = path[: path.index("${")] + "*"
                        if path != "*":
                            found.append(path)
    return found


def is_dvc_written(path: str, uncached_outs: Sequence[str]) -> bool:
    """Whether git path `path` is one `dvc repro` rewrites: dvc.lock, a .gitignore, a `cache: false` out."""
    if Path(path).name in DVC_WRITTEN_NAMES:
        return True
    for out in uncached_outs:
        if out.endswith("*"):
            if path.startswith(out[:-1]):
                return True
        elif path == out or path.startswith(out.rstrip("/") + "/"):
            return True
    return False


def _git(args: Sequence[str], cwd: Path | None) -> str:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, check=True, timeout=10, cwd=cwd
    ).stdout


def changed_files(cwd: Path | None = None) -> list[str]:
    """Tracked files with uncommitted changes (staged or not), relative to the repository root."""
    fields = _git(["status", "--porcelain", "-z", "--untracked-files=no"], cwd).split("\0")
    paths: list[str] = []
    it = iter(fields)
    for field in it:
        if len(field) < 4:
            continue
        paths.append(field[3:])
        if "R" in field[:2] or "C" in field[:2]:
            paths.append(next(it, ""))  # the rename's or copy's source follows
    return [p for p in paths if p]


def git_commit(cwd: Path | None = None) -> tuple[str, bool]:
    """(HEAD commit or "unknown", whether tracked files differ from it beyond what `dvc repro` rewrites:
    dvc.lock, .gitignore files and the `cache: false` outputs of dvc.yaml)."""
    try:
        commit, root = _git(["rev-parse", "HEAD", "--show-toplevel"], cwd).splitlines()
        uncached = dvc_uncached_outs(Path(root) / DVC_YAML)
        dirty = any(not is_dvc_written(p, uncached) for p in changed_files(cwd))
        return commit, dirty
    except (OSError, subprocess.SubprocessError, ValueError):
        return "unknown", False


def workspace() -> str:
    """Where this process runs its stages: `<host>:<absolute working directory>`, one clone on one host."""
    return f"{socket.gethostname()}:{Path.cwd().resolve()}"


def data_dvc_hash(lock_path: Path, category: str) -> str:
    """The md5 of data/prepared/<category> recorded in dvc.lock (stage `prepare@<category>`), or "unknown"."""
    import yaml

    try:
        lock = yaml.safe_load(Path(lock_path).read_text()) or {}
        outs = lock["stages"][f"prepare@{category}"]["outs"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return "unknown"
    for out in outs:
        if str(out.get("path", "")).rstrip("/") == f"data/prepared/{category}":
            return str(out.get("md5", "unknown"))
    return "unknown"


# Set by `dvc exp run` (queued, temporary or in the workspace) for the stages it runs: the experiment's name.
DVC_EXPERIMENT_ENV = "DVC_EXP_NAME"


def dvc_experiment() -> str | None:
    """The DVC experiment this stage runs for (`dvc exp show`'s name), or None under plain `dvc repro`."""
    return os.environ.get(DVC_EXPERIMENT_ENV) or None
