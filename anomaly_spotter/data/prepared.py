"""The `prepare` step: index one category, read and check every image, cache it on the category's canvas.

Output folder (one per category):
    index.csv     INDEX_COLUMNS + `row`, the position of the image in the arrays below
    geometry.json the canvas and its windows (`data.geometry.Geometry`): the train stage saves it with
                  the model
    images.npy    uint8 (N, Hc, Wc, 3) RGB: each image fitted into the canvas (aspect kept; resized with
                  Pillow's bilinear filter, exactly as torchvision's Resize on a PIL image); a square
                  image at the default resolution is (N, S, S, 3) as before tiling existed. Every image of
                  a category has the canvas's aspect ratio (within ASPECT_TOLERANCE, else DatasetError
                  naming the file): a category is one camera view, and nothing is padded
    masks.npy     bool  (N, Hc, Wc), all False for good images and for defect images without a mask
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
from PIL import Image
from tqdm import tqdm

from anomaly_spotter.core.errors import DatasetError
from anomaly_spotter.data.geometry import Geometry, common_size
from anomaly_spotter.data.images import read_mask_levels, read_rgb
from anomaly_spotter.data.index import FIELD_SPLIT, GOOD, make_category_index, split_validation

INDEX_FILE = "index.csv"
IMAGES_FILE = "images.npy"
MASKS_FILE = "masks.npy"
SUMMARY_FILE = "summary.json"
GEOMETRY_FILE = "geometry.json"


class MaskWarning(UserWarning):
    """A category's masks are usable but not as expected (missing for a defect type, or not binary)."""


@dataclass(frozen=True)
class PreparedCategory:
    """A prepared category: the index table and the arrays its `row` column points into."""

    index: pd.DataFrame
    images: np.ndarray  # uint8 (N, Hc, Wc, 3)
    masks: np.ndarray  # bool (N, Hc, Wc)
    geometry: Geometry

    def subset(self, mask: pd.Series | np.ndarray) -> PreparedCategory:
        rows = self.index[mask]
        pos = rows["row"].to_numpy()
        return PreparedCategory(rows.reset_index(drop=True), self.images[pos], self.masks[pos], self.geometry)

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
    resolution: int | str | None = None,
    overlap: float = 0.25,
) -> dict[str, int]:
    """Index, validate and cache one category into `out_dir` on its canvas; returns split counts.

    The canvas (`Geometry.for_size`: `image_size`, `resolution`, `overlap`) comes from the most common size
    of the category's good training images. `reviewed`: index rows of reviewed line images, already split
    (`feedback.feedback_rows`: goods in train / val / field, defects in field), appended after the
    dataset's."""
    index = split_validation(make_category_index(root, category), val_fraction, seed)
    if reviewed is not None and len(reviewed):
        index = pd.concat([index, reviewed], ignore_index=True)
    n = len(index)
    geometry = Geometry.for_size(*_reference_size(index), image_size, resolution, overlap)
    out_dir.mkdir(parents=True, exist_ok=True)
    need = n * geometry.canvas[0] * geometry.canvas[1] * 4
    try:  # written straight to disk: memory holds one image, whatever the number and size of images
        images = np.lib.format.open_memmap(out_dir / IMAGES_FILE, "w+", np.uint8, (n, *geometry.canvas, 3))
        masks = np.lib.format.open_memmap(out_dir / MASKS_FILE, "w+", np.bool_, (n, *geometry.canvas))
    except OSError as err:  # a full disk, say: the stage removes what it had written
        raise DatasetError(
            f"{out_dir}: cannot write the prepared images ({err.strerror or err}); they need {need:,} bytes: "
            "free disk space, or lower data.image_size or data.resolution"
        ) from err
    rows = tqdm(index.itertuples(), total=n, desc=f"prepare {category}", disable=not progress, unit="img")
    graded: list[tuple[str, int]] = []  # masks with more than two grey levels, and how many levels
    for i, row in enumerate(rows):
        image = read_rgb(Path(row.image_path))
        _check_aspect(geometry, image, row.image_path, category)
        images[i], _ = geometry.fit(image)
        if row.mask_path:
            size = (image.shape[1], image.shape[0])
            mask, levels = read_mask_levels(Path(row.mask_path), size, f"its image {row.image_path}")
            if levels > 2:
                graded.append((row.mask_path, levels))
            masks[i] = geometry.fit_mask(mask)
    images.flush()
    masks.flush()
    del images, masks
    index["row"] = np.arange(n)
    index.to_csv(out_dir / INDEX_FILE, index=False)
    (out_dir / GEOMETRY_FILE).write_text(json.dumps(geometry.to_dict(), indent=2) + "\n")
    counts = {f"n_{k}": int(v) for k, v in index["split"].value_counts().sort_index().items()}
    test = index[index["split"] == "test"]  # the dataset's defects (the field set's are counted apart)
    counts["n_defective"] = int(test["label"].sum())
    counts["n_defect_types"] = int(test.loc[test["label"] == 1, "defect_type"].nunique())
    counts["n_defective_without_mask"] = int((test["has_mask"] == 0).sum())
    counts["n_masks_binarised"] = len(graded)
    counts["canvas_height"], counts["canvas_width"] = geometry.canvas
    counts["n_windows"] = geometry.n_windows
    if reviewed is not None and len(reviewed):  # reviewed images from the line (anomaly_spotter.feedback)
        field = index[index["split"] == FIELD_SPLIT]
        counts["n_field"] = len(field)
        counts["n_field_defective"] = int(field["label"].sum())
        counts["n_reviewed"] = len(reviewed)
    _warn_about_masks(category, test, graded)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(counts, indent=2) + "\n")
    return counts


def _check_aspect(geometry: Geometry, image: np.ndarray, path: str, category: str) -> None:
    """DatasetError naming the file when the image's aspect ratio is not the category's canvas's."""
    if not geometry.fills(image.shape[1], image.shape[0]):
        ch, cw = geometry.canvas
        raise DatasetError(
            f"{path}: image is {image.shape[1]}x{image.shape[0]}, another aspect ratio than the other "
            f"{category} images (the canvas is {cw}x{ch}, from the most common size of its good training "
            "images); a category is one camera view: crop or remove this image"
        )


def _reference_size(index: pd.DataFrame) -> tuple[int, int]:
    """(width, height) the canvas is made for: the most common size of the good training images (from
    the files' headers; one that cannot be read is named by read_rgb when it is read in full)."""
    goods = index[index["split"].isin(["train", "val"]) & (index["defect_type"] == GOOD)]
    sizes = []
    for path in (goods if len(goods) else index)["image_path"]:
        try:
            with Image.open(path) as img:
                sizes.append(img.size)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            continue  # read_rgb raises the DatasetError naming the file
    if not sizes:
        return tuple(read_rgb(Path(index["image_path"].iloc[0])).shape[1::-1])  # raises, naming it
    return common_size(sizes)


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
    geometry_path = out_dir / GEOMETRY_FILE
    if geometry_path.is_file():
        geometry = Geometry.from_dict(json.loads(geometry_path.read_text()))
    else:  # prepared before canvases existed: square images, one window
        geometry = Geometry.square(images.shape[1])
    return PreparedCategory(index, images, masks, geometry)
