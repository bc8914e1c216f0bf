"""A changed production line: batches of built-in parts rendered as a line that has changed would make them.

A detector trained on the built-in dataset learns what good parts look like on *its* line. When the line
changes (a lamp is replaced, a new print variant comes in) good parts suddenly look different, and a
champion model flags many of them. This module renders such batches so the closing-the-loop scenario
can be played end to end: reviewers mark the false alarms, the reviewed good images join the training
goods, and a retrained model is checked on a new batch it has never seen.

A batch is the same product as the dataset (the category's design comes from
``sample_rng(seed, category, "design", 0)``, exactly as the dataset generator draws it), rendered with
the category's own renderer and defect functions; each image's random stream is keyed by ``line/<batch>``,
so no line image coincides with a dataset image and two batches differ. The scene behind an image does
not depend on the change: ``change="none"`` and a change render the same parts, in the same poses, and
differ only by what the change does.

Changes (``LINE_CHANGES``):

- ``none``: the line as the dataset shows it; a control batch.
- ``lighting``: every category. A new lamp: a warm colour cast (red up, blue down, beyond anything in the
  dataset, where good parts vary in brightness and in a faint gradient only), the scene darker, and a
  strong brightness fall-off from the lamp's side across the image. It multiplies the whole rendered
  scene (part, background and sensor noise alike), as light does, with a little jitter per image. This is
  the change a plant meets most often, and one no defect looks like: it is everywhere in the image.
- ``print``: ``label`` only. A new print variant: the label's text, barcode and band colour come from
  another design (``sample_rng(seed, category, "line/print", 0)``); paper, surface and ink are the
  product's. Locally every stroke still looks like print, so it tests the position-aware part of a
  detector rather than its colour statistics.

Defective images use the category's defect functions, the types taking turns and each type's severities
stratified over (0, 1) as in the dataset; under a change the defect is drawn on the changed scene, so a
defect is as visible as on the original line.

Output: ``<out_dir>/<batch>_<index:04d>.png`` (good and defective in a deterministic shuffled order) and
``<out_dir>/manifest.csv`` (``file``, ``truth``, ``defect_type``), the simulation's answer key. The folder
is written atomically (a temporary sibling, renamed) and a seed gives byte-identical files.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from anomaly_spotter.core.errors import ConfigError
from anomaly_spotter.data.builtin.common import (
    BUILTIN_CATEGORIES,
    GOOD,
    MIN_IMAGE_SIZE,
    PNG_COMPRESS_LEVEL,
    Category,
    Rng,
    finalize,
    pixel_grid,
    sample_rng,
    to_u8,
)
from anomaly_spotter.data.builtin.generate import CATEGORIES

LINE_CHANGES: tuple[str, ...] = ("none", "lighting", "print")
PRINT_CATEGORIES: tuple[str, ...] = ("label",)  # the categories a `print` change applies to
DEFECTIVE = "defective"
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS: tuple[str, ...] = ("file", "truth", "defect_type")
MAX_IMAGES = 10_000  # file indices have four digits
BATCH_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class LightingChange:
    """The new lamp of the `lighting` change: multiplies the scene by `cast * brightness * ramp`.

    `ramp` runs linearly from `1 + falloff` on the lamp's side to `1 - falloff` on the far side, the lamp
    at `direction_deg` (0: on the left, 90: at the top). Per image the cast's channels, the brightness and
    the direction move by up to `jitter`, `jitter` and `10 * jitter` radians (the lamp is the same on
    every day, the parts are not placed identically under it)."""

    cast: tuple[float, float, float] = (1.25, 1.0, 0.7)
    brightness: float = 0.85
    falloff: float = 0.3
    direction_deg: float = 0.0
    jitter: float = 0.03


LIGHTING = LightingChange()


def _check(
    category: str, change: str, n_good: int, n_defective: int, seed: int, batch: str, size: int
) -> None:
    if category not in CATEGORIES:
        raise ConfigError(
            f"unknown builtin category {category!r}; choose from {', '.join(BUILTIN_CATEGORIES)}"
        )
    if change not in LINE_CHANGES:
        raise ConfigError(f"unknown line change {change!r}; choose from {', '.join(LINE_CHANGES)}")
    if change == "print" and category not in PRINT_CATEGORIES:
        raise ConfigError(
            f"line change 'print' needs a printed category, not {category!r}; choose from "
            f"{', '.join(PRINT_CATEGORIES)} (or change 'lighting', which applies to every category)"
        )
    for name, value in (("n_good", n_good), ("n_defective", n_defective)):
        if value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value}")
    if n_good + n_defective > MAX_IMAGES:
        raise ConfigError(f"n_good + n_defective must be <= {MAX_IMAGES}, got {n_good + n_defective}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0 for the builtin dataset, got {seed}")
    if not BATCH_PATTERN.fullmatch(batch):
        raise ConfigError(
            f"batch {batch!r} names the files: use letters, digits, '_' and '-' (starting with a letter "
            "or digit), e.g. 'day1'"
        )
    if size < MIN_IMAGE_SIZE:
        raise ConfigError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {size}")


def lamp(rng: Rng, s: int, spec: LightingChange | None = None) -> np.ndarray:
    """The multiplicative light `(s, s, 3)` float32 of the `lighting` change for one image (`spec`
    default: `LIGHTING`)."""
    spec = LIGHTING if spec is None else spec
    yy, xx = pixel_grid(s)
    phi = np.deg2rad(spec.direction_deg) + rng.uniform(-10 * spec.jitter, 10 * spec.jitter)
    # +1 on the lamp's side, -1 on the far side (the lamp at angle phi seen from the image centre)
    toward = -(np.cos(phi) * (xx - s / 2) + np.sin(phi) * (yy - s / 2)) * np.float32(2 / s)
    field = spec.brightness * (1 + rng.uniform(-spec.jitter, spec.jitter)) * (1 + spec.falloff * toward)
    cast = np.asarray(spec.cast, np.float32) * rng.uniform(1 - spec.jitter, 1 + spec.jitter, 3)
    return (field[..., None] * cast.astype(np.float32)).astype(np.float32)


def _severities(rng: Rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified size severities (one per 1/n bin, shuffled) and correlated contrast severities."""
    q = (np.arange(n) + rng.uniform(0.05, 0.95, n)) / n
    q = q[rng.permutation(n)]
    return q, np.clip(q + rng.uniform(-0.3, 0.3, n), 0.0, 1.0)


def _jobs(cat: Category, n_good: int, n_defective: int, rng: Rng) -> list[tuple[str, int]]:
    """`(defect_type, index within the type)` per image, in the batch's shuffled file order."""
    types = list(cat.defects)
    jobs = [(GOOD, i) for i in range(n_good)]
    jobs += [(types[i % len(types)], i // len(types)) for i in range(n_defective)]
    return [jobs[i] for i in rng.permutation(len(jobs))]


def line_design(category: str, change: str, seed: int, s: int) -> dict[str, Any]:
    """The design the line renders: the product's (as the dataset generator draws it), or its new print."""
    cat = CATEGORIES[category]
    design = cat.design(sample_rng(seed, category, "design", 0), s)
    if change != "print":
        return design
    variant = cat.design(sample_rng(seed, category, "line/print", 0), s)
    keep = ("paper_layers", "paper", "ink", "surface")  # the label stock and the ink stay the product's
    return {**variant, **{key: design[key] for key in keep}}


def _render(
    cat: Category,
    design: dict[str, Any],
    category: str,
    change: str,
    seed: int,
    batch: str,
    defect: str,
    index: int,
    severity: tuple[float, float] | None,
    s: int,
) -> np.ndarray:
    rng = sample_rng(seed, category, f"line/{batch}/{defect}", index)
    scene = cat.render(rng, s, design)
    light = 1.0
    if change == "lighting":
        light = lamp(sample_rng(seed, category, f"line/{batch}/lighting/{defect}", index), s)
    clean = to_u8(scene.image * light)
    if severity is None:
        return clean
    target, region = cat.defects[defect](scene, rng, *severity)
    return finalize(clean, target * light, region)


def generate_line(
    out_dir: Path,
    category: str,
    change: str,
    n_good: int,
    n_defective: int,
    seed: int,
    batch: str,
    image_size: int = 160,
) -> pd.DataFrame:
    """Render one batch of a changed production line into `out_dir` and return its manifest.

    Writes `<out_dir>/<batch>_<index:04d>.png` (`n_good` good and `n_defective` defective images, the
    defect types taking turns, shuffled) and `<out_dir>/manifest.csv`: `file`, `truth` ("good" or
    "defective") and `defect_type` ("good" for good ones), one row per image in file order.

    Raises ConfigError for an unknown category or change (or `print` on a category without print), a
    negative count, a negative seed, a batch name unfit for file names, or an `out_dir` that exists and
    is not an empty folder; nothing is written then, nor when rendering fails.
    """
    out_dir = Path(out_dir)
    _check(category, change, n_good, n_defective, seed, batch, image_size)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir} exists and is not an empty folder; choose another folder for the batch")
    cat = CATEGORIES[category]
    design = line_design(category, change, seed, image_size)
    jobs = _jobs(cat, n_good, n_defective, sample_rng(seed, category, f"line/{batch}/order", 0))
    counts = {d: sum(1 for t, _ in jobs if t == d) for d in cat.defects}
    severities = {
        d: _severities(sample_rng(seed, category, f"line/{batch}/severity/{d}", 0), n)
        for d, n in counts.items()
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        rows = []
        for position, (defect, index) in enumerate(jobs):
            severity = None
            if defect != GOOD:
                q, qc = severities[defect]
                severity = (float(q[index]), float(qc[index]))
            image = _render(cat, design, category, change, seed, batch, defect, index, severity, image_size)
            name = f"{batch}_{position:04d}.png"
            Image.fromarray(image).save(tmp / name, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
            rows.append((name, GOOD if defect == GOOD else DEFECTIVE, defect))
        manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
        manifest.to_csv(tmp / MANIFEST, index=False, lineterminator="\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
