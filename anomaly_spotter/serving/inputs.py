"""Input images for scoring: files as given, folders searched recursively for image files."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def collect_images(paths: Sequence[Path]) -> tuple[list[Path], dict[Path, str], list[str]]:
    """Files as given, folders searched recursively for image suffixes.

    Returns (files, overlay stem per file: its path inside the folder given, joined by "_"; errors).
    """
    files: list[Path] = []
    stems: dict[Path, str] = {}
    errors: list[str] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            for p in found:
                stems[p] = "_".join(p.relative_to(path).with_suffix("").parts)
            files.extend(found)
        elif path.is_file():
            files.append(path)
            stems[path] = path.stem
        else:
            errors.append(f"{path}: no such file or folder")
    return files, stems, errors


def chunks(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def local_path(uri: str) -> str | None:
    """The local path of a `file:` URI as Spark writes it (`file:/a/b`, `file:///a/b`), else None."""
    if not uri.startswith("file:"):
        return None
    rest = uri[len("file:") :]
    if rest.startswith("//"):
        rest = rest[2:]
        if not rest.startswith("/"):  # file://host/path: not a local path
            return None
    return rest
