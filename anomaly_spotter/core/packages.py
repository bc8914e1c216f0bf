"""Installed packages as pip requirements that another machine can install."""

from __future__ import annotations

from collections.abc import Iterable


def public(version: str) -> str:
    """`2.13.0+cpu` -> `2.13.0`: a local build label is not a release an index serves under that name."""
    return version.split("+", 1)[0]


def pinned(packages: Iterable[str]) -> list[str]:
    """`name==version` of each installed package (its public version: torch's CPU build `2.13.0+cpu` is
    pinned as `torch==2.13.0`, which PyPI and the PyTorch index both serve); a missing one unpinned."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in packages:
        try:
            out.append(f"{pkg}=={public(version(pkg))}")
        except PackageNotFoundError:
            out.append(pkg)
    return out
