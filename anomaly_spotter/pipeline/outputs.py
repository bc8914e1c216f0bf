"""Stage outputs are all-or-nothing: a failing stage removes what it had started to write."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def all_or_nothing(*paths: Path) -> Iterator[None]:
    """Clear `paths` before the block; if the block raises, remove them again and re-raise."""
    for path in paths:
        remove(Path(path))
    try:
        yield
    except BaseException:
        for path in paths:
            remove(Path(path))
        raise
