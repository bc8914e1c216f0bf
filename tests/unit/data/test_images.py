from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_spotter.data.images import denormalize, read_rgb, resize_mask, resize_rgb, to_tensor_normalized
from anomaly_spotter.errors import DatasetError


def test_resize_is_pillow_bilinear_like_torchvision_resize() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize((128, 128), Image.BILINEAR))
    assert np.array_equal(resize_rgb(image, 128), expected)
    # Pillow's bilinear antialiases when shrinking: a 2x2 checkerboard averages to flat grey
    checker = np.indices((256, 256)).sum(axis=0) % 2 * 255
    small = resize_rgb(np.repeat(checker[..., None], 3, axis=2).astype(np.uint8), 128)
    assert np.abs(small[1:-1, 1:-1].astype(int) - 128).max() <= 1


def test_to_tensor_normalize_matches_the_formula() -> None:
    image = np.array([[[0, 128, 255]]], dtype=np.uint8)[None]  # (1, 1, 1, 3)
    x = to_tensor_normalized(image)
    assert x.shape == (1, 3, 1, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], [-1.0, (128 / 255 - 0.5) / 0.5, 1.0], atol=1e-6)
    assert np.array_equal(denormalize(x), image)


def test_mask_resize_stays_binary() -> None:
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:30, 20:40] = True
    small = resize_mask(mask, 32)
    assert small.dtype == bool and small.sum() == 10 * 10


def test_read_rgb_converts_gray_and_rgba(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 5), 7, np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.full((4, 5, 4), 9, np.uint8)).save(tmp_path / "a.png")
    assert read_rgb(tmp_path / "g.png").shape == (4, 5, 3)
    assert read_rgb(tmp_path / "a.png")[0, 0].tolist() == [9, 9, 9]


def test_read_rgb_names_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nope.png: file not found"):
        read_rgb(tmp_path / "nope.png")
