"""Synthetic defects: random regions of bounded area, foreign content, seeded."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from anomaly_spotter.synthetic import MAX_AREA, MIN_AREA, corrupt, random_region


def test_regions_are_one_blob_of_bounded_area() -> None:
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(40):
        mask = random_region(64, rng)
        assert mask.dtype == bool and mask.shape == (64, 64)
        assert ndimage.label(mask)[1] == 1  # one connected region
        areas.append(mask.mean())
    assert min(areas) > 0 and max(areas) <= MAX_AREA + 1e-9
    assert np.median(areas) > MIN_AREA  # not degenerate specks


def test_corrupt_changes_only_the_masked_pixels_of_the_chosen_images() -> None:
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (12, 3, 32, 32)).astype(np.float32)
    out, masks = corrupt(images, 0.5, np.random.default_rng(2))
    assert out.shape == images.shape and out.dtype == np.float32 and masks.shape == (12, 32, 32)
    changed = np.abs(out - images).max(axis=1) > 0
    assert not (changed & ~masks).any()  # nothing outside a region moves
    hit = masks.any(axis=(1, 2))
    assert 0 < hit.sum() < 12  # about half the images
    assert changed[masks].mean() > 0.5  # inside the regions the content really is foreign
    assert out.min() >= -1.0 and out.max() <= 1.0
    again, masks_again = corrupt(images, 0.5, np.random.default_rng(2))
    np.testing.assert_array_equal(again, out)  # seeded
    np.testing.assert_array_equal(masks_again, masks)
    untouched, none = corrupt(images, 0.0, np.random.default_rng(2))
    np.testing.assert_array_equal(untouched, images)
    assert not none.any()


@pytest.mark.parametrize("n_images", [1, 3])
def test_a_single_image_batch_borrows_from_itself(n_images: int) -> None:
    images = np.random.default_rng(3).uniform(-1, 1, (n_images, 3, 16, 16)).astype(np.float32)
    out, masks = corrupt(images, 1.0, np.random.default_rng(4))
    assert masks.any(axis=(1, 2)).all()
    assert np.isfinite(out).all()
