"""Index a dataset in the MVTec AD layout into one table, failing loudly on anything off.

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<defect_type>/*.png        (good images under test/good)
    <root>/<category>/ground_truth/<defect_type>/<name>_mask.png

Every downstream step reads the table this module builds (columns in INDEX_COLUMNS).
Nothing is skipped silently: a stray file, a mask without its image, or a defect type whose masks
cover only some of its images raises DatasetError naming the file.

Masks are optional per defect type: a category without ground_truth/, or a defect type without its
ground_truth/<defect_type>/ folder, is indexed with `mask_path` empty and `has_mask` 0 for those
images; they count in image-level metrics only. `has_mask` is 1 for every image whose pixel labels are
known: a defect image with its mask, and every good image (all pixels good).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from anomaly_spotter.core.errors import DatasetError

INDEX_COLUMNS = ("category", "split", "defect_type", "label", "image_path", "mask_path", "has_mask")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GOOD = "good"
MASK_SUFFIX = "_mask"
# Reviewed line images held out of training (anomaly_spotter.feedback): the prepared index's fourth split
FIELD_SPLIT = "field"


def _image_files(folder: Path) -> list[Path]:
    """The image files of one folder, sorted; any other entry raises DatasetError."""
    files = []
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            raise DatasetError(f"{path}: unexpected folder inside {folder}; image folders hold only images")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DatasetError(
                f"{path}: not an image file (expected one of {', '.join(IMAGE_SUFFIXES)}); move it out"
            )
        files.append(path)
    return files


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def dataset_categories(root: Path) -> list[str]:
    """The categories of an MVTec-layout folder: its subfolders that hold `train/good`, sorted; none if
    `root` is not a folder."""
    root = Path(root)
    return [p.name for p in _subfolders(root) if (p / "train" / "good").is_dir()] if root.is_dir() else []


def make_category_index(root: Path, category: str) -> pd.DataFrame:
    """Index one category of an MVTec-layout folder: one row per image, split train or test.

    Raises DatasetError if the folder is not in the MVTec layout, a category is empty, a mask has no
    image, or a defect type has masks for some of its images but not all. A defect type without any
    mask (no ground_truth/<defect_type>/ folder, or an empty one) is indexed with has_mask 0.
    """
    root = Path(root)
    cat_dir = root / category
    if not cat_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        hint = f"categories found there: {found}" if found else f"{root} does not exist or holds no folders"
        raise DatasetError(
            f"{cat_dir}: category folder not found ({hint}); check data.root and data.categories"
        )
    train_dir, test_dir, gt_dir = cat_dir / "train", cat_dir / "test", cat_dir / "ground_truth"
    for required in (train_dir / GOOD, test_dir):
        if not required.is_dir():
            raise DatasetError(
                f"{required}: missing; not in the MVTec AD layout "
                f"(<category>/train/good/, <category>/test/<defect_type>/, <category>/ground_truth/)"
            )
    extra = [p.name for p in _subfolders(train_dir) if p.name != GOOD]
    if extra:
        raise DatasetError(f"{train_dir}: holds {extra}; train/ may only hold good/ (defects go under test/)")

    rows: list[dict[str, object]] = []
    train_files = _image_files(train_dir / GOOD)
    if not train_files:
        raise DatasetError(f"{train_dir / GOOD}: empty category, no training images; add good images")
    rows += [_row(category, "train", GOOD, p, None) for p in train_files]

    defect_types = _subfolders(test_dir)
    if not defect_types:
        raise DatasetError(f"{test_dir}: no test folders; add test/good/ and test/<defect_type>/ folders")
    for type_dir in defect_types:
        files = _image_files(type_dir)
        if not files:
            raise DatasetError(f"{type_dir}: empty test folder; add images or remove the folder")
        if type_dir.name == GOOD:
            rows += [_row(category, "test", GOOD, p, None) for p in files]
            continue
        mask_dir = gt_dir / type_dir.name
        masks = (
            {p.stem.removesuffix(MASK_SUFFIX): p for p in _image_files(mask_dir)} if mask_dir.is_dir() else {}
        )
        if not masks:  # no masks for this defect type: image-level labels only
            rows += [_row(category, "test", type_dir.name, p, None) for p in files]
            continue
        for path in files:
            mask = masks.pop(path.stem, None)
            if mask is None:
                raise DatasetError(
                    f"{path}: defect image has no mask, but other {type_dir.name} images have one; "
                    f"add {mask_dir / (path.stem + MASK_SUFFIX + '.png')}, or remove {mask_dir} to "
                    f"evaluate {type_dir.name} at image level only"
                )
            rows.append(_row(category, "test", type_dir.name, path, mask))
        if masks:
            orphan = sorted(masks.values())[0]
            raise DatasetError(f"{orphan}: mask has no matching image in {type_dir}")
    if gt_dir.is_dir():
        test_types = {p.name for p in defect_types}
        for mask_dir in _subfolders(gt_dir):
            if mask_dir.name not in test_types:
                orphans = _image_files(mask_dir)
                first = orphans[0] if orphans else mask_dir
                raise DatasetError(
                    f"{first}: mask has no matching image (no folder {test_dir / mask_dir.name})"
                )
    return pd.DataFrame(rows, columns=list(INDEX_COLUMNS))


def _row(category: str, split: str, defect_type: str, image: Path, mask: Path | None) -> dict[str, object]:
    return {
        "category": category,
        "split": split,
        "defect_type": defect_type,
        "label": int(defect_type != GOOD),
        "image_path": str(image),
        "mask_path": str(mask) if mask is not None else "",
        "has_mask": int(defect_type == GOOD or mask is not None),
    }


def split_validation(index: pd.DataFrame, val_fraction: float, seed: int) -> pd.DataFrame:
    """Mark a seeded `val_fraction` of each category's train/good rows as split "val"."""
    index = index.copy()
    for category, group in index[index["split"] == "train"].groupby("category", sort=True):
        rng = np.random.default_rng([seed, _stable_hash(str(category))])
        n_val = int(round(val_fraction * len(group)))
        if len(group) - n_val < 1 or n_val < 1:
            raise DatasetError(
                f"category {category!r}: {len(group)} training image(s) cannot be split into train and "
                f"{val_fraction:.0%} validation; add good training images"
            )
        val_rows = rng.choice(group.index.to_numpy(), size=n_val, replace=False)
        index.loc[val_rows, "split"] = "val"
    return index


def _stable_hash(text: str) -> int:
    """A process-independent hash (Python's hash() is salted per process)."""
    return int.from_bytes(text.encode(), "little") % (2**63)
