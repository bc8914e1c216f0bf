"""A changed production line: deterministic batches, the answer key, what each change does, safe writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from anomaly_spotter.core.errors import ConfigError
from anomaly_spotter.data.builtin import BuiltinSpec, generate_category
from anomaly_spotter.data.builtin.generate import CATEGORIES
from anomaly_spotter.data.builtin.line import LIGHTING, LINE_CHANGES, generate_line

SIZE = 64
SEED = 7


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def _images(root: Path, manifest: pd.DataFrame) -> np.ndarray:
    return np.stack([np.asarray(Image.open(root / f)) for f in manifest["file"]]).astype(np.float64)


@pytest.fixture(scope="module")
def washer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, pd.DataFrame]]:
    """Batch `day1` of washer parts (4 good, 6 defective) under each change that applies to it."""
    root = tmp_path_factory.mktemp("line")
    out = {}
    for change in ("none", "lighting"):
        manifest = generate_line(root / change, "washer", change, 4, 6, SEED, "day1", SIZE)
        out[change] = (root / change, manifest)
    return out


def test_changes_include_none_and_one_for_every_category() -> None:
    assert LINE_CHANGES[0] == "none"
    assert "lighting" in LINE_CHANGES
    assert len(set(LINE_CHANGES)) == len(LINE_CHANGES)


def test_files_and_manifest_are_the_answer_key(washer: dict[str, tuple[Path, pd.DataFrame]]) -> None:
    root, manifest = washer["lighting"]
    assert list(manifest.columns) == ["file", "truth", "defect_type"]
    assert manifest["file"].tolist() == [f"day1_{i:04d}.png" for i in range(10)]
    assert sorted(p.name for p in root.iterdir()) == sorted([*manifest["file"], "manifest.csv"])
    pd.testing.assert_frame_equal(pd.read_csv(root / "manifest.csv"), manifest)
    assert manifest["truth"].value_counts().to_dict() == {"good": 4, "defective": 6}
    good = manifest[manifest["truth"] == "good"]
    assert set(good["defect_type"]) == {"good"}
    # the three washer defect types take turns: two of each among six
    defective = manifest[manifest["truth"] == "defective"]
    assert defective["defect_type"].value_counts().to_dict() == {"scratch": 2, "chip": 2, "rust": 2}
    assert manifest["truth"].tolist() != sorted(manifest["truth"])  # shuffled, not goods then defects
    for name in manifest["file"]:
        with Image.open(root / name) as image:
            assert (image.mode, image.size) == ("RGB", (SIZE, SIZE))


def test_a_batch_is_byte_identical_when_generated_again(
    washer: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path
) -> None:
    root, manifest = washer["lighting"]
    again = generate_line(tmp_path / "again", "washer", "lighting", 4, 6, SEED, "day1", SIZE)
    pd.testing.assert_frame_equal(again, manifest)
    assert _files(tmp_path / "again") == _files(root)


def test_lighting_casts_darkens_and_falls_off_across_the_same_scenes(
    washer: dict[str, tuple[Path, pd.DataFrame]],
) -> None:
    none_root, manifest = washer["none"]
    lit_root, lit_manifest = washer["lighting"]
    pd.testing.assert_frame_equal(manifest, lit_manifest)  # the same parts, in the same order
    plain, lit = _images(none_root, manifest), _images(lit_root, manifest)
    assert np.abs(lit - plain).mean() > 15  # uint8 levels, averaged over every pixel of every image
    ratio = lit.mean(axis=(0, 1, 2)) / plain.mean(axis=(0, 1, 2))  # per channel: cast x brightness
    expected = np.array(LIGHTING.cast) * LIGHTING.brightness
    np.testing.assert_allclose(ratio, expected, atol=0.05)
    assert ratio[0] / ratio[2] > 1.6  # warm: red up against blue
    # the lamp on the left: the left quarter keeps more of its light than the right quarter
    left = lit[:, :, : SIZE // 4].mean() / plain[:, :, : SIZE // 4].mean()
    right = lit[:, :, -SIZE // 4 :].mean() / plain[:, :, -SIZE // 4 :].mean()
    assert left / right > 1.4


def test_print_replaces_the_labels_print_and_nothing_else(tmp_path: Path) -> None:
    plain = generate_line(tmp_path / "none", "label", "none", 3, 0, SEED, "day1", SIZE)
    printed = generate_line(tmp_path / "print", "label", "print", 3, 0, SEED, "day1", SIZE)
    a, b = _images(tmp_path / "none", plain), _images(tmp_path / "print", printed)
    changed = np.abs(b - a).max(axis=(0, 3)) > 0
    assert changed.mean() > 0.1  # text, barcode and band
    # the surface around the label (top and bottom rows) and the paper stock are the product's
    assert not changed[:4].any() and not changed[-4:].any()


def test_no_line_image_is_a_dataset_image_and_batches_differ(
    washer: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path
) -> None:
    root, manifest = washer["none"]
    day2 = generate_line(tmp_path / "day2", "washer", "none", 4, 6, SEED, "day2", SIZE)
    spec = BuiltinSpec(image_size=SIZE, n_train=4, n_test_good=4, n_test_per_defect=2)
    generate_category(tmp_path / "dataset", "washer", spec, SEED)
    dataset = {p.read_bytes() for p in (tmp_path / "dataset").rglob("*.png") if "ground_truth" not in p.parts}
    day1_files = {(root / f).read_bytes() for f in manifest["file"]}
    day2_files = {(tmp_path / "day2" / f).read_bytes() for f in day2["file"]}
    assert len(day1_files) == len(day2_files) == 10
    assert not day1_files & day2_files and not day1_files & dataset and not day2_files & dataset
    good1 = _images(root, manifest)[manifest["truth"] == "good"]
    good2 = _images(tmp_path / "day2", day2)[day2["truth"] == "good"]
    assert np.abs(good1 - good2).mean() > 5  # other parts, poses and light, not a little noise apart


def test_every_category_renders_under_lighting(tmp_path: Path) -> None:
    for category, cat in CATEGORIES.items():
        n_types = len(cat.defects)
        manifest = generate_line(tmp_path / category, category, "lighting", 1, n_types, SEED, "b", 32)
        assert sorted(manifest["defect_type"]) == sorted(["good", *cat.defects])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"category": "bottle"}, "unknown builtin category 'bottle'; choose from fabric, washer"),
        ({"change": "rain"}, "unknown line change 'rain'; choose from none, lighting"),
        ({"change": "print"}, "needs a printed category, not 'washer'; choose from label"),
        ({"n_good": -1}, "n_good must be >= 0, got -1"),
        ({"n_defective": -2}, "n_defective must be >= 0, got -2"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"batch": "../day1"}, "batch '../day1' names the files"),
        ({"batch": ""}, "batch '' names the files"),
        ({"image_size": 16}, "image_size must be >= 32, got 16"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(
    tmp_path: Path, kwargs: dict, message: str
) -> None:
    args = {"category": "washer", "change": "none", "n_good": 2, "n_defective": 1, "seed": SEED, "batch": "d"}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        generate_line(tmp_path / "out", **{**args, **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_an_empty_folder_is_filled_and_a_used_one_refused(tmp_path: Path) -> None:
    out = tmp_path / "batch"
    out.mkdir()
    manifest = generate_line(out, "washer", "none", 1, 1, SEED, "d", SIZE)
    assert sorted(p.name for p in out.iterdir()) == ["d_0000.png", "d_0001.png", "manifest.csv"]
    before = _files(out)
    with pytest.raises(ConfigError, match="choose another folder"):
        generate_line(out, "washer", "none", 1, 1, SEED, "d", SIZE)
    assert _files(out) == before
    assert len(manifest) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch"]  # no temporary folder left


def test_a_failure_while_rendering_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("renderer broke")

    monkeypatch.setitem(CATEGORIES["washer"].defects, "rust", broken)
    with pytest.raises(RuntimeError, match="renderer broke"):
        generate_line(tmp_path / "out", "washer", "none", 3, 3, SEED, "d", SIZE)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="renderer broke"):
        generate_line(tmp_path / "empty", "washer", "none", 3, 3, SEED, "d", SIZE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    assert list((tmp_path / "empty").iterdir()) == []
