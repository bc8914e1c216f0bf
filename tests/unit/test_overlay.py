"""The annotated overlay: one colour scale per category, transparent below the pixel threshold."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_spotter.core.overlay import (
    BAR_PX,
    DEFECTIVE_RGB,
    GOOD_RGB,
    HEADER_PX,
    MapScale,
    category_scale,
    display_size,
    render_overlay,
    warm_colours,
)

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(60, 200, (64, 64, 3), dtype=np.uint8)


def test_scale_puts_the_image_threshold_mid_way_when_the_score_is_the_map_max() -> None:
    scale = MapScale.for_category(pixel_threshold=1.0, good_max=2.0, image_threshold=3.0, reduction="max")
    assert (scale.low, scale.high, scale.image_threshold) == (1.0, 5.0, 3.0)
    assert float(scale.normalise(np.float32(3.0))) == pytest.approx(0.5)
    # another reduction: the threshold is not in map units; the highest good pixel anchors the scale
    p99 = MapScale.for_category(1.0, 2.0, 3.0, "p99")
    assert (p99.low, p99.high, p99.image_threshold) == (1.0, 3.0, None)
    # negative maps (PatchCore's standardised units) work the same way
    neg = MapScale.for_category(-1.5, -0.5, -1.0, "max")
    assert (neg.low, neg.high) == (-1.5, -0.5)
    assert category_scale(None, None, 1.0, "max", np.array([[0.0, 4.0]])).per_image
    with pytest.raises(ValueError, match="low < high"):
        MapScale(1.0, 1.0)


def test_warm_colours_run_from_pale_yellow_to_dark_red() -> None:
    lo, hi = warm_colours(np.float32(0.0)), warm_colours(np.float32(1.0))
    assert lo[0] > 250 and lo[1] > 230  # pale yellow
    assert hi[0] < 140 and hi[1] < 10  # dark red
    mid = warm_colours(np.linspace(0, 1, 9, dtype=np.float32))
    assert np.all(np.diff(mid[:, 1]) <= 0) and mid[0, 1] > mid[-1, 1] + 200  # ever warmer


def _picture(overlay: np.ndarray) -> np.ndarray:
    return overlay[HEADER_PX:, :-BAR_PX]


def test_a_clean_part_stays_untouched_a_defect_is_warm_and_outlined() -> None:
    scale = MapScale.for_category(1.0, 1.5, 2.0, "max")
    clean = np.full((64, 64), 0.2, np.float32)
    defect = clean.copy()
    defect[20:40, 20:40] = 3.0
    good = render_overlay(IMAGE, clean, clean > scale.low, scale, 0.2, 2.0, "good.png")
    bad = render_overlay(IMAGE, defect, defect > scale.low, scale, 3.0, 2.0, "bad.png")
    height, width = display_size(64, 64)
    assert good.shape == bad.shape == (height + HEADER_PX, width + BAR_PX, 3)
    from PIL import Image

    shown = np.asarray(Image.fromarray(IMAGE).resize((width, height), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(_picture(good), shown)  # nothing above the pixel threshold: no colour
    inside = _picture(bad)[height // 2, width // 2].astype(int)
    assert inside[0] > inside[2] + 40  # warm (red dominates blue) where the defect is
    assert (_picture(bad) == (0, 255, 255)).all(axis=2).any()  # the region's cyan outline
    np.testing.assert_array_equal(good[2, 2], GOOD_RGB)  # header colour = verdict
    np.testing.assert_array_equal(bad[2, 2], DEFECTIVE_RGB)
    diff = np.abs(_picture(good).astype(int) - _picture(bad).astype(int)).sum(axis=2)
    rows, cols = (
        slice(height * 20 // 64 + 2, height * 40 // 64 - 2),
        slice(width * 20 // 64 + 2, width * 40 // 64 - 2),
    )
    assert diff[rows, cols].mean() > 100 and diff[: height // 4].max() == 0  # coloured there only


def test_overlay_is_shown_at_a_legible_size_and_checks_its_inputs() -> None:
    assert display_size(32, 64) == (160, 320)  # small images upsampled to MIN_SIDE
    assert display_size(4096, 2048) == (1024, 512)  # large ones downsampled to MAX_SIDE
    assert display_size(500, 400) == (500, 400)
    scale = MapScale(0.0, 1.0)
    with pytest.raises(ValueError, match="RGB uint8"):
        render_overlay(IMAGE.astype(np.float32), np.zeros((8, 8)), np.zeros((8, 8), bool), scale, 0, 1)
    with pytest.raises(ValueError, match="same"):
        render_overlay(IMAGE, np.zeros((8, 8)), np.zeros((4, 4), bool), scale, 0, 1)


def test_a_defective_verdict_with_an_empty_region_circles_the_peak() -> None:
    scale = MapScale(1.0, 3.0, 1.0, None)
    amap = np.full((64, 64), 0.0, np.float32)
    amap[10, 50] = 0.9  # the peak, below the pixel threshold 1.0
    flagged = render_overlay(IMAGE, amap, amap > 1.0, scale, 0.9, 0.5)  # image threshold 0.5 < 1.0
    passed = render_overlay(IMAGE, amap, amap > 1.0, scale, 0.9, 0.95)
    cyan = (_picture(flagged) == (0, 255, 255)).all(axis=2)
    ys, xs = np.nonzero(cyan)
    height, width = display_size(64, 64)
    assert cyan.any() and not (_picture(passed) == (0, 255, 255)).all(axis=2).any()
    assert abs(ys.mean() - 10.5 * height / 64) < 6 and abs(xs.mean() - 50.5 * width / 64) < 6
