from pathlib import Path

import numpy as np
import pytest

from anomaly_spotter.data.index import INDEX_COLUMNS, make_category_index, split_validation
from anomaly_spotter.data.prepare import load_prepared, prepare_category
from anomaly_spotter.errors import DatasetError
from tests.conftest import make_mvtec_category, write_png


def test_index_has_one_row_per_image_with_fixed_columns(tiny_mvtec: Path) -> None:
    index = make_category_index(tiny_mvtec, "widget")
    assert tuple(index.columns) == INDEX_COLUMNS
    assert len(index) == 5 + 2 + 2 + 2
    assert (index.loc[index["split"] == "train", "defect_type"] == "good").all()
    defects = index[index["label"] == 1]
    assert sorted(defects["defect_type"].unique()) == ["hole", "scratch"]
    assert all(
        Path(p).stem == Path(i).stem + "_mask"
        for p, i in zip(defects["mask_path"], defects["image_path"], strict=True)
    )
    assert (index.loc[index["label"] == 0, "mask_path"] == "").all()


def test_validation_split_is_seeded_and_twenty_percent(tmp_path: Path) -> None:
    make_mvtec_category(tmp_path, "widget", n_train=10)
    index = make_category_index(tmp_path, "widget")
    a, b = split_validation(index, 0.2, seed=1), split_validation(index, 0.2, seed=1)
    assert (a["split"] == "val").sum() == 2
    assert a["split"].tolist() == b["split"].tolist()
    c = split_validation(index, 0.2, seed=2)
    assert (c["split"] == "val").sum() == 2


def test_prepare_caches_resized_images_masks_and_gray_becomes_rgb(tmp_path: Path) -> None:
    make_mvtec_category(tmp_path / "data", "gray", size=40, gray=True)
    counts = prepare_category(tmp_path / "data", "gray", tmp_path / "out", 32, 0.2, 0, progress=False)
    data = load_prepared(tmp_path / "out")
    assert counts == {"n_test": 6, "n_train": 4, "n_val": 1, "n_defective": 4, "n_defect_types": 2}
    assert data.images.shape == (11, 32, 32, 3) and data.images.dtype == np.uint8
    assert np.array_equal(data.images[..., 0], data.images[..., 2])  # grayscale replicated to 3 channels
    assert data.masks.shape == (11, 32, 32)
    assert data.masks[data.index["label"].to_numpy() == 1].any(axis=(1, 2)).all()
    assert not data.masks[data.index["label"].to_numpy() == 0].any()


def _error(root: Path, category: str = "widget") -> str:
    with pytest.raises(DatasetError) as info:
        make_category_index(root, category)
    return str(info.value)


def test_truncated_image_is_named(tmp_path: Path) -> None:
    make_mvtec_category(tmp_path, "widget")
    bad = tmp_path / "widget" / "train" / "good" / "001.png"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(DatasetError, match="001.png: cannot read image"):
        prepare_category(tmp_path, "widget", tmp_path / "out", 32, 0.2, 0, progress=False)


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    make_mvtec_category(tmp_path, "widget")
    (tmp_path / "widget" / "test" / "good" / "009.png").write_text("not a png")
    with pytest.raises(DatasetError, match="009.png: cannot read image"):
        prepare_category(tmp_path, "widget", tmp_path / "out", 32, 0.2, 0, progress=False)


def test_mask_without_image(tmp_path: Path) -> None:
    make_mvtec_category(tmp_path, "widget")
    write_png(tmp_path / "widget" / "ground_truth" / "scratch" / "007_mask.png", np.zeros((32, 32), np.uint8))
    assert "007_mask.png: mask has no matching image" in _error(tmp_path)


def test_mask_type_folder_without_test_folder(tmp_path: Path) -> None:
    make_mvtec_category(tmp_path, "widget")
    write_png(tmp_path / "widget" / "ground_truth" / "crack" / "000_mask.png", np.zeros((32, 32), np.uint8))
    assert "000_mask.png: mask has no matching image" in _error(tmp_path)


def test_image_without_mask(tmp_path: Path) -> None:
    make_mvtec_category(tmp_path, "widget")
    (tmp_path / "widget" / "ground_truth" / "hole" / "001_mask.png").unlink()
    assert "hole/001.png: defect image has no mask" in _error(tmp_path)


def test_mask_size_differs_from_image(tmp_path: Path) -> None:
    make_mvtec_category(tmp_path, "widget")
    write_png(tmp_path / "widget" / "ground_truth" / "hole" / "000_mask.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(DatasetError, match=r"000_mask.png: mask is 16x16 but its image .* is 32x32"):
        prepare_category(tmp_path, "widget", tmp_path / "out", 32, 0.2, 0, progress=False)


def test_empty_category(tmp_path: Path) -> None:
    make_mvtec_category(tmp_path, "widget", n_train=0)
    (tmp_path / "widget" / "train" / "good").mkdir(parents=True, exist_ok=True)
    assert "empty category" in _error(tmp_path)


def test_folder_not_in_mvtec_layout(tmp_path: Path) -> None:
    (tmp_path / "widget" / "images").mkdir(parents=True)
    assert "not in the MVTec AD layout" in _error(tmp_path)


def test_missing_category_lists_what_is_there(tmp_path: Path) -> None:
    make_mvtec_category(tmp_path, "widget")
    assert "categories found there: ['widget']" in _error(tmp_path, "gadget")


def test_stray_file_is_not_skipped(tmp_path: Path) -> None:
    make_mvtec_category(tmp_path, "widget")
    (tmp_path / "widget" / "train" / "good" / "notes.txt").write_text("x")
    assert "notes.txt: not an image file" in _error(tmp_path)


def test_defects_in_train_folder_rejected(tmp_path: Path) -> None:
    make_mvtec_category(tmp_path, "widget")
    write_png(tmp_path / "widget" / "train" / "scratch" / "000.png", np.zeros((32, 32, 3), np.uint8))
    assert "train/ may only hold good/" in _error(tmp_path)


def test_failed_prepare_leaves_no_partial_output(tmp_path: Path) -> None:
    from anomaly_spotter.outputs import all_or_nothing

    make_mvtec_category(tmp_path, "widget")
    (tmp_path / "widget" / "test" / "good" / "009.png").write_text("not a png")
    out = tmp_path / "out"
    with pytest.raises(DatasetError), all_or_nothing(out):
        out.mkdir()
        (out / "partial.npy").write_bytes(b"x")
        prepare_category(tmp_path, "widget", out, 32, 0.2, 0, progress=False)
    assert not out.exists()
