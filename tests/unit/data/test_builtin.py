"""The built-in synthetic dataset: MVTec layout, exact masks, determinism, variety, atomic rewrites."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_spotter.core.errors import ConfigError
from anomaly_spotter.data import builtin
from anomaly_spotter.data.builtin import (
    BUILTIN_CATEGORIES,
    BuiltinSpec,
    generate,
    generate_category,
    generate_dataset,
)

SPEC = BuiltinSpec(image_size=64, n_train=3, n_test_good=2, n_test_per_defect=6)
SEED = 7


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _defect_types(cat_dir: Path) -> list[str]:
    return sorted(p.name for p in (cat_dir / "test").iterdir() if p.name != "good")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("builtin")
    generate_dataset(root, spec=SPEC, seed=SEED, progress=False)
    return root


def test_categories_and_defect_types(dataset: Path) -> None:
    assert len(BUILTIN_CATEGORIES) >= 3
    assert all(c == c.lower() for c in BUILTIN_CATEGORIES)
    assert sorted(p.name for p in dataset.iterdir()) == sorted(BUILTIN_CATEGORIES)  # no temp dirs left
    for category in BUILTIN_CATEGORIES:
        assert len(_defect_types(dataset / category)) >= 3


def test_mvtec_layout(dataset: Path) -> None:
    for category in BUILTIN_CATEGORIES:
        cat = dataset / category
        assert sorted(p.name for p in cat.iterdir()) == ["ground_truth", "test", "train"]
        assert [p.name for p in (cat / "train").iterdir()] == ["good"]
        assert len(list((cat / "train" / "good").glob("*.png"))) == SPEC.n_train
        assert len(list((cat / "test" / "good").glob("*.png"))) == SPEC.n_test_good
        assert not (cat / "ground_truth" / "good").exists()
        defects = _defect_types(cat)
        assert sorted(p.name for p in (cat / "ground_truth").iterdir()) == defects
        for defect in defects:
            images = sorted((cat / "test" / defect).glob("*.png"))
            assert [p.name for p in images] == [f"{i:03d}.png" for i in range(SPEC.n_test_per_defect)]
            masks = sorted((cat / "ground_truth" / defect).iterdir())
            assert [p.name for p in masks] == [f"{i:03d}_mask.png" for i in range(SPEC.n_test_per_defect)]


def test_images_are_uint8_rgb_of_spec_size(dataset: Path) -> None:
    for path in dataset.rglob("*.png"):
        with Image.open(path) as img:
            arr = np.asarray(img)
        if "ground_truth" in path.parts:
            assert img.mode == "L" and arr.shape == (SPEC.image_size, SPEC.image_size)
            assert set(np.unique(arr)) <= {0, 255}
        else:
            assert img.mode == "RGB" and arr.shape == (SPEC.image_size, SPEC.image_size, 3)
        assert arr.dtype == np.uint8


def test_masks_non_empty_and_sizes_vary(dataset: Path) -> None:
    for category in BUILTIN_CATEGORIES:
        for defect in _defect_types(dataset / category):
            areas = [
                int((np.asarray(Image.open(p)) > 0).sum())
                for p in sorted((dataset / category / "ground_truth" / defect).iterdir())
            ]
            assert min(areas) > 0, (category, defect, areas)
            if max(areas) < 3 * min(areas):  # a moved part changes about its whole area at any severity:
                changes = [  # then the change itself must range 3x (a small turn moves its edges faintly)
                    _change(generate._render_sample(category, SPEC, SEED, "test", defect, i))
                    for i in range(SPEC.n_test_per_defect)
                ]
                assert max(changes) >= 3 * min(changes), (category, defect, areas, changes)


def _change(sample: tuple[np.ndarray, np.ndarray | None, np.ndarray]) -> float:
    """How much a defect changes its scene: the summed per-pixel difference from the clean image."""
    image, _, clean = sample
    return float(np.abs(image.astype(int) - clean.astype(int)).max(axis=-1).sum())


def test_at_least_one_category_is_colored(dataset: Path) -> None:
    def chroma(category: str) -> float:
        img = np.asarray(Image.open(dataset / category / "train" / "good" / "000.png")).astype(float)
        return float(np.abs(img - img.mean(axis=-1, keepdims=True)).mean())

    assert max(chroma(c) for c in BUILTIN_CATEGORIES) > 10


def test_good_images_vary(dataset: Path) -> None:
    for category in BUILTIN_CATEGORIES:
        goods = [
            np.asarray(Image.open(p)).astype(float) for p in sorted(dataset.glob(f"{category}/*/good/*"))
        ]
        for a, b in zip(goods, goods[1:], strict=False):
            assert np.abs(a - b).mean() > 1.0


def test_same_seed_is_byte_identical(dataset: Path, tmp_path: Path) -> None:
    generate_dataset(tmp_path, spec=SPEC, seed=SEED, progress=False)
    assert _files(tmp_path) == _files(dataset)


def test_one_category_alone_equals_it_in_a_full_generation(dataset: Path, tmp_path: Path) -> None:
    generate_category(tmp_path, "washer", SPEC, SEED)
    generate_dataset(tmp_path / "other", categories=["label"], spec=SPEC, seed=SEED, progress=False)
    assert _files(tmp_path / "washer") == _files(dataset / "washer")
    assert _files(tmp_path / "other" / "label") == _files(dataset / "label")


def test_different_seeds_differ(dataset: Path, tmp_path: Path) -> None:
    generate_dataset(tmp_path, spec=SPEC, seed=SEED + 1, progress=False)
    ours, theirs = _files(dataset), _files(tmp_path)
    assert ours.keys() == theirs.keys()
    images = [k for k in ours if "ground_truth" not in k]
    assert all(ours[k] != theirs[k] for k in images)


@pytest.mark.parametrize("category", BUILTIN_CATEGORIES)
def test_mask_is_exactly_the_changed_pixels(category: str) -> None:
    spec = BuiltinSpec(image_size=96, n_train=1, n_test_good=1, n_test_per_defect=8)
    contrasts = []
    for defect in generate.CATEGORIES[category].defects:
        for index in range(spec.n_test_per_defect):
            image, mask, clean = generate._render_sample(category, spec, SEED, "test", defect, index)
            diff = np.abs(image.astype(int) - clean.astype(int)).max(axis=-1)
            assert mask is not None and mask.any()
            np.testing.assert_array_equal(diff > 0, mask)
            assert diff[mask].min() >= builtin.MIN_DELTA
            contrasts.append(diff[mask].mean())
    assert min(contrasts) < 25 < 60 < max(contrasts)  # from subtle to obvious


def test_good_samples_have_no_mask() -> None:
    image, mask, clean = generate._render_sample("fabric", SPEC, SEED, "test", "good", 0)
    assert mask is None and np.array_equal(image, clean)


def test_unknown_category_raises_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fabric.*washer.*label"):
        generate_dataset(tmp_path, categories=["fabric", "bottle"], spec=SPEC, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="bottle"):
        generate_category(tmp_path, "bottle", SPEC, SEED)


@pytest.mark.parametrize(
    "spec", [BuiltinSpec(image_size=8), BuiltinSpec(n_train=0), BuiltinSpec(n_test_per_defect=0)]
)
def test_invalid_spec_raises(tmp_path: Path, spec: BuiltinSpec) -> None:
    with pytest.raises(ConfigError):
        generate_dataset(tmp_path, spec=spec, progress=False)


def test_rewrite_replaces_the_category(tmp_path: Path) -> None:
    (tmp_path / "fabric" / "stale").mkdir(parents=True)
    (tmp_path / "unrelated").mkdir()
    generate_dataset(tmp_path, categories=("fabric",), spec=SPEC, seed=SEED, progress=False)
    assert not (tmp_path / "fabric" / "stale").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fabric", "unrelated"]


def test_failure_leaves_previous_category_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generate_category(tmp_path, "label", SPEC, SEED)
    before = _files(tmp_path)
    calls = []

    def failing_save(path: Path, array: np.ndarray) -> None:
        calls.append(path)
        if len(calls) > 5:
            raise OSError("disk full")
        Image.fromarray(array).save(path, format="PNG")

    monkeypatch.setattr(generate, "_save_png", failing_save)
    with pytest.raises(OSError, match="disk full"):
        generate_category(tmp_path, "label", BuiltinSpec(image_size=64, n_train=10), SEED + 1)
    assert _files(tmp_path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["label"]
