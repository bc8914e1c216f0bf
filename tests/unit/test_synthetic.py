"""Synthetic defects: random regions of bounded area (blobs and thin scars), foreign content, seeded."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from anomaly_spotter.data.synthetic import MAX_AREA, MIN_AREA, corrupt, random_region, random_scar


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


def test_scars_are_thin_connected_strokes_of_some_length() -> None:
    rng = np.random.default_rng(5)
    for _ in range(40):
        mask = random_scar(64, rng)
        assert mask.dtype == bool and mask.shape == (64, 64) and mask.any()
        assert ndimage.label(mask, np.ones((3, 3)))[1] == 1  # one stroke (8-connected)
        assert not ndimage.binary_erosion(mask, np.ones((5, 5))).any()  # at most 2 px wide at 64 px
        ys, xs = np.nonzero(mask)
        assert max(np.ptp(ys), np.ptp(xs)) >= 64 / 8 / 2  # a stroke, not a dot (it may bend back)


def test_scar_share_draws_scars_and_zero_keeps_blob_only_runs_unchanged() -> None:
    images = np.random.default_rng(6).uniform(-1, 1, (16, 3, 64, 64)).astype(np.float32)
    blobs = corrupt(images, 1.0, np.random.default_rng(7))
    np.testing.assert_array_equal(corrupt(images, 1.0, np.random.default_rng(7), scar_share=0.0)[1], blobs[1])
    _, scars = corrupt(images, 1.0, np.random.default_rng(7), scar_share=1.0)
    thin = [not ndimage.binary_erosion(m, np.ones((5, 5))).any() for m in scars]
    assert all(thin) and scars.any(axis=(1, 2)).all()
    assert np.mean([not ndimage.binary_erosion(m, np.ones((5, 5))).any() for m in blobs[1]]) < 0.5
    _, mixed = corrupt(images, 1.0, np.random.default_rng(7), scar_share=0.5)
    n_thin = sum(not ndimage.binary_erosion(m, np.ones((5, 5))).any() for m in mixed)
    assert 2 <= n_thin <= 14  # about half
