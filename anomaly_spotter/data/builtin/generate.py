"""Generating the built-in dataset: every category's images and masks, written atomically."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from anomaly_spotter.core.errors import ConfigError
from anomaly_spotter.data.builtin import board, component, fabric, label, washer
from anomaly_spotter.data.builtin.common import (
    BUILTIN_CATEGORIES,
    GOOD,
    MIN_IMAGE_SIZE,
    PNG_COMPRESS_LEVEL,
    BuiltinSpec,
    Category,
    Rng,
    finalize,
    sample_rng,
    to_u8,
)

CATEGORIES: dict[str, Category] = {
    "fabric": fabric.CATEGORY,
    "washer": washer.CATEGORY,
    "label": label.CATEGORY,
    "board": board.CATEGORY,
    "component": component.CATEGORY,
}
assert tuple(CATEGORIES) == BUILTIN_CATEGORIES


def _check(category: str) -> Category:
    if category not in CATEGORIES:
        raise ConfigError(
            f"unknown builtin category {category!r}; choose from {', '.join(BUILTIN_CATEGORIES)}"
        )
    return CATEGORIES[category]


def _check_spec(spec: BuiltinSpec, seed: int) -> None:
    if spec.image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"builtin.image_size must be >= {MIN_IMAGE_SIZE}, got {spec.image_size}")
    for name in ("n_train", "n_test_good", "n_test_per_defect"):
        if getattr(spec, name) < 1:
            raise ConfigError(f"builtin.{name} must be >= 1, got {getattr(spec, name)}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0 for the builtin dataset, got {seed}")


def _severities(rng: Rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified size severities `q` (one per 1/n bin, shuffled) and correlated contrast severities."""
    q = (np.arange(n) + rng.uniform(0.05, 0.95, n)) / n
    q = q[rng.permutation(n)]
    qc = np.clip(q + rng.uniform(-0.3, 0.3, n), 0.0, 1.0)
    return q, qc


def _render_sample(
    category: str, spec: BuiltinSpec, seed: int, split: str, defect: str, index: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """One image: `(image_u8, mask_bool or None, clean_u8)`; `clean` is the scene before its defect."""
    cat = _check(category)
    s = spec.image_size
    design = cat.design(sample_rng(seed, category, "design", 0), s)
    return _render_with(cat, design, category, spec, seed, split, defect, index)


def _render_with(
    cat: Category,
    design: dict[str, Any],
    category: str,
    spec: BuiltinSpec,
    seed: int,
    split: str,
    defect: str,
    index: int,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    rng = sample_rng(seed, category, f"{split}/{defect}", index)
    scene = cat.render(rng, spec.image_size, design)
    clean = to_u8(scene.image)
    if defect == GOOD:
        return clean, None, clean
    q, qc = _severities(sample_rng(seed, category, f"severity/{defect}", 0), spec.n_test_per_defect)
    target, region = cat.defects[defect](scene, rng, float(q[index]), float(qc[index]))
    return finalize(clean, target, region), region, clean


def _save_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _jobs(cat: Category, spec: BuiltinSpec) -> list[tuple[str, str, int]]:
    jobs = [("train", GOOD, i) for i in range(spec.n_train)]
    jobs += [("test", GOOD, i) for i in range(spec.n_test_good)]
    jobs += [("test", d, i) for d in cat.defects for i in range(spec.n_test_per_defect)]
    return jobs


def _write_category(root: Path, category: str, spec: BuiltinSpec, seed: int, bar: tqdm | None) -> None:
    cat = _check(category)
    root.mkdir(parents=True, exist_ok=True)
    final = root / category
    for stale in root.glob(f".{category}.*.tmp"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{category}.", suffix=".tmp", dir=root))
    try:
        design = cat.design(sample_rng(seed, category, "design", 0), spec.image_size)
        for split, defect, index in _jobs(cat, spec):
            image, mask, _ = _render_with(cat, design, category, spec, seed, split, defect, index)
            out_dir = tmp / split / defect
            out_dir.mkdir(parents=True, exist_ok=True)
            _save_png(out_dir / f"{index:03d}.png", image)
            if mask is not None:
                gt_dir = tmp / "ground_truth" / defect
                gt_dir.mkdir(parents=True, exist_ok=True)
                _save_png(gt_dir / f"{index:03d}_mask.png", mask.astype(np.uint8) * 255)
            if bar is not None:
                bar.update(1)
        old = None
        if final.exists() or final.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{category}.", suffix=".tmp", dir=root)) / "old"
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def generate_category(root: Path, category: str, spec: BuiltinSpec, seed: int) -> None:
    """Write (replacing atomically) `<root>/<category>` in the MVTec AD layout."""
    _check_spec(spec, seed)
    _write_category(Path(root), category, spec, seed, bar=None)


def generate_dataset(
    root: Path,
    categories: Sequence[str] = BUILTIN_CATEGORIES,
    spec: BuiltinSpec = BuiltinSpec(),  # noqa: B008 (frozen dataclass: safe as a default)
    seed: int = 0,
    progress: bool = True,
) -> None:
    """Write each category under `root`, deleting and rewriting `<root>/<category>` one at a time.

    Raises ConfigError for an unknown category (before writing anything) or an invalid spec/seed.
    """
    if isinstance(categories, str):
        categories = (categories,)
    cats = [_check(c) for c in categories]
    _check_spec(spec, seed)
    total = sum(len(_jobs(cat, spec)) for cat in cats)
    with tqdm(total=total, unit="img", disable=not progress, desc="builtin dataset") as bar:
        for category in categories:
            bar.set_description(f"builtin {category}")
            _write_category(Path(root), category, spec, seed, bar)
