"""The `prepare` step: index one category, read and check every image, cache it resized.

Output folder (one per category):
    index.csv    INDEX_COLUMNS + `row`, the position of the image in the arrays below
    images.npy   uint8 (N, S, S, 3) RGB, resized exactly as torchvision's Resize(S) on a PIL image
    masks.npy    bool  (N, S, S), all False for good images and for defect images without a mask
                 (index column has_mask 0: their pixels are unknown, not good)

Two things are reported as a MaskWarning (once per category) rather than stopping: defect images
without masks (they count in image-level metrics only), and masks with more than two grey levels
(binarised at half range, see `read_mask_levels`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from anomaly_spotter.core.errors import DatasetError
from anomaly_spotter.data.images import read_mask_levels, read_rgb, resize_mask, resize_rgb
from anomaly_spotter.data.index import FIELD_SPLIT, make_category_index, split_validation

INDEX_FILE = "index.csv"
IMAGES_FILE = "images.npy"
MASKS_FILE = "masks.npy"
SUMMARY_FILE = "summary.json"


class MaskWarning(UserWarning):
    """A category's masks are usable but not as expected (missing for a defect type, or not binary)."""


@dataclass(frozen=True)
class PreparedCategory:
    """A prepared category: the index table and the arrays its `row` column points into."""

    index: pd.DataFrame
    images: np.ndarray  # uint8 (N, S, S, 3)
    masks: np.ndarray  # bool (N, S, S)

    def subset(self, mask: pd.Series | np.ndarray) -> PreparedCategory:
        rows = self.index[mask]
        pos = rows["row"].to_numpy()
        return PreparedCategory(rows.reset_index(drop=True), self.images[pos], self.masks[pos])

    def split(self, *splits: str) -> PreparedCategory:
        return self.subset(self.index["split"].isin(splits))


def prepare_category(
    root: Path,
    category: str,
    out_dir: Path,
    image_size: int,
    val_fraction: float,
    seed: int,
    progress: bool = True,
    reviewed: pd.DataFrame | None = None,
) -> dict[str, int]:
    """Index, validate, resize and cache one category into `out_dir`; returns split counts.

    `reviewed`: index rows of reviewed line images, already split (`feedback.feedback_rows`: goods in
    train / val / field, defects in field), appended after the dataset's."""
    index = split_validation(make_category_index(root, category), val_fraction, seed)
    if reviewed is not None and len(reviewed):
        index = pd.concat([index, reviewed], ignore_index=True)
    n = len(index)
    images = np.zeros((n, image_size, image_size, 3), dtype=np.uint8)
    masks = np.zeros((n, image_size, image_size), dtype=bool)
    rows = tqdm(index.itertuples(), total=n, desc=f"prepare {category}", disable=not progress, unit="img")
    graded: list[tuple[str, int]] = []  # masks with more than two grey levels, and how many levels
    for i, row in enumerate(rows):
        image = read_rgb(Path(row.image_path))
        images[i] = resize_rgb(image, image_size)
        if row.mask_path:
            size = (image.shape[1], image.shape[0])
            mask, levels = read_mask_levels(Path(row.mask_path), size, f"its image {row.image_path}")
            if levels > 2:
                graded.append((row.mask_path, levels))
            masks[i] = resize_mask(mask, image_size)
    index["row"] = np.arange(n)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        index.to_csv(out_dir / INDEX_FILE, index=False)
        np.save(out_dir / IMAGES_FILE, images)
        np.save(out_dir / MASKS_FILE, masks)
    except OSError as err:  # a full disk, say: the stage removes what it had written
        raise DatasetError(
            f"{out_dir}: cannot write the prepared images ({err.strerror or err}); they need "
            f"{images.nbytes + masks.nbytes:,} bytes: free disk space or lower data.image_size"
        ) from err
    counts = {f"n_{k}": int(v) for k, v in index["split"].value_counts().sort_index().items()}
    test = index[index["split"] == "test"]  # the dataset's defects (the field set's are counted apart)
    counts["n_defective"] = int(test["label"].sum())
    counts["n_defect_types"] = int(test.loc[test["label"] == 1, "defect_type"].nunique())
    counts["n_defective_without_mask"] = int((test["has_mask"] == 0).sum())
    counts["n_masks_binarised"] = len(graded)
    if reviewed is not None and len(reviewed):  # reviewed images from the line (anomaly_spotter.feedback)
        field = index[index["split"] == FIELD_SPLIT]
        counts["n_field"] = len(field)
        counts["n_field_defective"] = int(field["label"].sum())
        counts["n_reviewed"] = len(reviewed)
    _warn_about_masks(category, test, graded)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(counts, indent=2) + "\n")
    return counts


def _warn_about_masks(category: str, index: pd.DataFrame, graded: list[tuple[str, int]]) -> None:
    """One MaskWarning per issue for the category: defect images without masks, non-binary masks."""
    unmasked = index[index["has_mask"] == 0]
    if len(unmasked):
        n_defective = int(index["label"].sum())
        types = ", ".join(sorted(unmasked["defect_type"].unique()))
        warnings.warn(
            f"{category}: {len(unmasked)} of {n_defective} defective test images have no mask "
            f"(defect types without ground_truth/: {types}); they count in image-level metrics only, "
            "pixel metrics use the images with masks (the column `masked` of dvc metrics show)",
            MaskWarning,
            stacklevel=3,
        )
    if graded:
        first, levels = graded[0]
        warnings.warn(
            f"{category}: {len(graded)} mask(s) have more than two grey levels (first: {first}, "
            f"{levels} levels; JPEG-compressed?); binarised at half range (>= 128 of 255, >= 32768 if "
            "16-bit), so a faint edge is not counted as defect; save masks as PNG with 0 and 255 to "
            "silence this",
            MaskWarning,
            stacklevel=3,
        )


def load_prepared(out_dir: Path) -> PreparedCategory:
    """Load what `prepare_category` wrote (arrays memory-mapped)."""
    index_path = out_dir / INDEX_FILE
    if not index_path.is_file():
        raise DatasetError(f"{index_path}: not found; run the prepare stage first (dvc repro)")
    index = pd.read_csv(index_path, keep_default_na=False)
    images = np.load(out_dir / IMAGES_FILE, mmap_mode="r")
    masks = np.load(out_dir / MASKS_FILE, mmap_mode="r")
    return PreparedCategory(index, images, masks)
