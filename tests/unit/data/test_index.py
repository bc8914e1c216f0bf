import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_spotter.core.errors import DatasetError
from anomaly_spotter.data.images import read_mask, read_mask_levels
from anomaly_spotter.data.index import INDEX_COLUMNS, make_category_index, split_validation
from anomaly_spotter.data.prepared import MaskWarning, load_prepared, prepare_category
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
    assert (index["has_mask"] == 1).all()  # every mask present; good images' pixels are all good


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
    assert counts == {
        "n_test": 6,
        "n_train": 4,
        "n_val": 1,
        "n_defective": 4,
        "n_defect_types": 2,
        "n_defective_without_mask": 0,
        "n_masks_binarised": 0,
        "canvas_height": 32,
        "canvas_width": 32,
        "n_windows": 1,
    }
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


def test_category_without_ground_truth_is_indexed_without_masks(tmp_path: Path) -> None:
    make_mvtec_category(tmp_path, "widget")
    shutil.rmtree(tmp_path / "widget" / "ground_truth")
    index = make_category_index(tmp_path, "widget")
    defects = index[index["label"] == 1]
    assert len(defects) == 4 and (defects["mask_path"] == "").all() and (defects["has_mask"] == 0).all()
    assert (index.loc[index["label"] == 0, "has_mask"] == 1).all()


def test_defect_type_without_masks_is_accepted_and_reported(tmp_path: Path) -> None:
    make_mvtec_category(tmp_path, "widget", size=40)
    shutil.rmtree(tmp_path / "widget" / "ground_truth" / "hole")
    with pytest.warns(MaskWarning, match=r"widget: 2 of 4 defective test images have no mask .*: hole\)"):
        counts = prepare_category(tmp_path, "widget", tmp_path / "out", 32, 0.2, 0, progress=False)
    assert counts["n_defective_without_mask"] == 2
    data = load_prepared(tmp_path / "out")
    hole = (data.index["defect_type"] == "hole").to_numpy()
    scratch = (data.index["defect_type"] == "scratch").to_numpy()
    assert data.index.loc[hole, "has_mask"].tolist() == [0, 0]
    assert data.index.loc[scratch, "has_mask"].tolist() == [1, 1]
    assert not data.masks[hole].any() and data.masks[scratch].any(axis=(1, 2)).all()


def test_defect_type_with_some_masks_missing_names_the_image(tmp_path: Path) -> None:
    make_mvtec_category(tmp_path, "widget")
    (tmp_path / "widget" / "ground_truth" / "hole" / "000_mask.png").unlink()
    message = _error(tmp_path)
    assert "hole/000.png: defect image has no mask, but other hole images have one" in message
    assert "000_mask.png" in message and "to evaluate hole at image level only" in message


def test_jpeg_mask_is_binarised_at_half_range_and_warned_once(tmp_path: Path) -> None:
    make_mvtec_category(tmp_path, "widget", size=64)
    truth = np.zeros((64, 64), np.uint8)
    truth[16:40, 20:44] = 255  # 24 x 24 = 576 defective pixels
    gt = tmp_path / "widget" / "ground_truth"
    for mask_png in sorted(gt.glob("*/*_mask.png")):
        mask_png.unlink()
        Image.fromarray(truth).save(mask_png.with_suffix(".jpg"), quality=50)
    jpeg = gt / "hole" / "000_mask.jpg"
    raw = np.asarray(Image.open(jpeg))
    assert len(np.unique(raw)) > 2 and (raw > 0).sum() > 576  # the compression halo counted before
    mask, levels = read_mask_levels(jpeg)
    assert levels == len(np.unique(raw)) and abs(int(mask.sum()) - 576) <= 24
    assert np.array_equal(mask, raw >= 128)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counts = prepare_category(tmp_path, "widget", tmp_path / "out", 64, 0.2, 0, progress=False)
    found = [str(w.message) for w in caught if issubclass(w.category, MaskWarning)]
    assert len(found) == 1, found
    assert found[0].startswith(f"widget: 4 mask(s) have more than two grey levels (first: {jpeg}, ")
    assert counts["n_masks_binarised"] == 4
    assert load_prepared(tmp_path / "out").masks.sum(axis=(1, 2)).max() <= 576 + 24


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [
        ([0, 255], np.uint8, [False, True]),  # MVTec: 0 / 255
        ([0, 1], np.uint8, [False, True]),  # a 0/1 label map is kept
        ([0, 40], np.uint8, [False, True]),  # two levels: every non-zero pixel (e.g. a dark colour)
        ([0, 127, 128, 255], np.uint8, [False, False, True, True]),  # graded: half range
        ([0, 32767, 32768, 65535], np.uint16, [False, False, True, True]),  # 16-bit: half of 65535
    ],
)
def test_read_mask_binarises_graded_masks_at_half_range(
    tmp_path: Path, values: list[int], dtype: type, expected: list[bool]
) -> None:
    path = tmp_path / "m.png"
    Image.fromarray(np.array([values], dtype=dtype)).save(path)
    assert read_mask(path).tolist() == [expected]


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
    from anomaly_spotter.pipeline.outputs import all_or_nothing

    make_mvtec_category(tmp_path, "widget")
    (tmp_path / "widget" / "test" / "good" / "009.png").write_text("not a png")
    out = tmp_path / "out"
    with pytest.raises(DatasetError), all_or_nothing(out):
        out.mkdir()
        (out / "partial.npy").write_bytes(b"x")
        prepare_category(tmp_path, "widget", out, 32, 0.2, 0, progress=False)
    assert not out.exists()


def test_prepare_keeps_the_aspect_ratio_and_refuses_another_one(tmp_path: Path) -> None:
    """A 4:3 category at native resolution in windows of 16: canvases of 48 x 36, masks on the same pixels;
    an image of another aspect ratio is named, not squashed or padded."""
    cat = make_mvtec_category(tmp_path / "data", "wide", size=32)
    for path in sorted(cat.rglob("*.png")):  # every image and mask 48 x 36, drawn from its 32 x 32 self
        with Image.open(path) as img:
            img.resize((48, 36), Image.Resampling.NEAREST).save(path)
    counts = prepare_category(
        tmp_path / "data", "wide", tmp_path / "out", 16, 0.2, 0, False, None, "native", 0.25
    )
    data = load_prepared(tmp_path / "out")
    assert data.images.shape[1:] == (36, 48, 3) and data.masks.shape[1:] == (36, 48)
    assert (counts["canvas_width"], counts["canvas_height"], counts["n_windows"]) == (48, 36, 12)
    row = data.index[data.index["label"] == 1].iloc[0]
    np.testing.assert_array_equal(data.masks[row["row"]], read_mask(Path(row["mask_path"])))
    with Image.open(cat / "train" / "good" / "000.png") as img:
        img.resize((36, 36)).save(cat / "train" / "good" / "000.png")
    with pytest.raises(DatasetError, match=r"train/good/000\.png: image is 36x36, another aspect ratio"):
        prepare_category(
            tmp_path / "data", "wide", tmp_path / "out2", 16, 0.2, 0, False, None, "native", 0.25
        )
