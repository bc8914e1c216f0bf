"""Metric values on hand-made data with known answers, and agreement with reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from anomaly_spotter.core.metrics import (
    aupro,
    curve_thresholds,
    f1_max,
    image_auroc,
    mean_present,
    pixel_auroc,
    pro_curve,
    region_metrics,
    strict_threshold_between,
    summarize_category,
    wilson_interval,
)


def reference_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """All-thresholds AUPRO, following the MVTec AD evaluation code (sort, cumsum, last of ties)."""
    fp_changes = np.zeros(maps.shape, dtype=np.float64)
    pro_changes = np.zeros(maps.shape, dtype=np.float64)
    n_good = (~masks).sum()
    n_regions = 0
    for i, mask in enumerate(masks):
        labeled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        n_regions += n
        fp_changes[i][~mask] = 1.0 / n_good
        for region in range(1, n + 1):
            sel = labeled == region
            pro_changes[i][sel] = 1.0 / sel.sum()
    scores = maps.ravel()
    order = np.argsort(scores, kind="mergesort")[::-1]
    scores = scores[order]
    fprs = np.cumsum(fp_changes.ravel()[order])
    pros = np.cumsum(pro_changes.ravel()[order]) / n_regions
    keep = np.r_[np.flatnonzero(np.diff(scores) != 0), scores.size - 1]
    fprs = np.clip(np.r_[0.0, fprs[keep]], 0, 1)
    pros = np.clip(np.r_[0.0, pros[keep]], 0, 1)
    inside = np.searchsorted(fprs, fpr_limit, side="right")
    xs, ys = fprs[:inside], pros[:inside]
    if inside < fprs.size:
        x0, y0, x1, y1 = fprs[inside - 1], pros[inside - 1], fprs[inside], pros[inside]
        xs = np.r_[xs, fpr_limit]
        ys = np.r_[ys, y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)]
    return float(np.trapezoid(ys, xs) / fpr_limit)


# --------------------------------------------------------------------------------------------------
# image level
# --------------------------------------------------------------------------------------------------


def test_image_auroc_known_value() -> None:
    assert image_auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)


def test_image_auroc_ties_count_half() -> None:
    # one defect tied with one good, the other above both: (1 + 0.5 + 1 + 1) / 4
    assert image_auroc(np.array([0, 0, 1, 1]), np.array([0.2, 0.5, 0.5, 0.9])) == pytest.approx(0.875)


def test_image_auroc_one_class_is_nan() -> None:
    assert math.isnan(image_auroc(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3])))
    assert math.isnan(image_auroc(np.array([0, 0]), np.array([0.1, 0.2])))


def test_image_auroc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="labels must be 0"):
        image_auroc(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="align"):
        image_auroc(np.array([0, 1]), np.array([0.1]))
    with pytest.raises(ValueError, match="finite"):
        image_auroc(np.array([0, 1]), np.array([0.1, np.nan]))


def test_f1_max_known_value_and_strict_threshold() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    best, threshold = f1_max(labels, scores)
    # flagging {0.35, 0.4, 0.8}: precision 2/3, recall 1 -> F1 0.8; threshold midway between 0.35 and 0.1
    assert best == pytest.approx(0.8)
    assert threshold == pytest.approx(0.225)
    flagged = scores > threshold
    tp = (flagged & (labels == 1)).sum()
    assert 2 * tp / (flagged.sum() + labels.sum()) == pytest.approx(best)


def test_f1_max_perfect_separation_and_no_defects() -> None:
    best, threshold = f1_max(np.array([0, 0, 1]), np.array([1.0, 2.0, 5.0]))
    assert best == 1.0
    assert 2.0 <= threshold < 5.0
    assert all(math.isnan(v) for v in f1_max(np.array([0, 0]), np.array([1.0, 2.0])))


def test_f1_max_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        labels = rng.integers(0, 2, 30)
        labels[0] = 1
        scores = np.round(rng.normal(size=30) + labels, 1)  # rounding creates ties
        best, threshold = f1_max(labels, scores)
        brute = 0.0
        for t in np.r_[np.unique(scores), scores.min() - 1]:
            flagged = scores > t
            tp = (flagged & (labels == 1)).sum()
            brute = max(brute, 2 * tp / (flagged.sum() + labels.sum()))
        assert best == pytest.approx(brute)
        flagged = scores > threshold
        tp = (flagged & (labels == 1)).sum()
        assert 2 * tp / (flagged.sum() + labels.sum()) == pytest.approx(best)


def test_strict_threshold_between_handles_adjacent_floats() -> None:
    assert strict_threshold_between(3.0, 1.0) == 2.0
    upper = 1.0
    lower = np.nextafter(1.0, 0.0)
    t = strict_threshold_between(upper, lower)
    assert lower <= t < upper
    thresholds = curve_thresholds(np.array([3.0, 1.0]))
    assert thresholds[0] == 2.0 and thresholds[1] < 1.0


# --------------------------------------------------------------------------------------------------
# pixel AUROC
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pixel_auroc_equals_sklearn_on_flattened(dtype: type) -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 32, 32), dtype=bool)
    masks[1, 4:12, 5:20] = True
    masks[4, 20:30, 20:25] = True
    maps = (rng.random((6, 32, 32)) + 0.4 * masks).astype(dtype)
    maps[2, :8] = 0.5  # ties across classes
    maps[1, 4:6, 5:20] = 0.5
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_chunking_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    import anomaly_spotter.core.metrics as metrics

    monkeypatch.setattr(metrics, "PIXEL_CHUNK", 7)
    rng = np.random.default_rng(1)
    masks = rng.random((3, 16, 16)) > 0.8
    maps = rng.random((3, 16, 16)).astype(np.float32)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


def test_pixel_auroc_nan_without_positive_pixel_and_accepts_uint8_masks() -> None:
    maps = np.random.default_rng(0).random((2, 8, 8))
    assert math.isnan(pixel_auroc(np.zeros((2, 8, 8), dtype=bool), maps))
    masks = np.zeros((2, 8, 8), dtype=np.uint8)
    masks[0, :2] = 255
    maps[0, :2] += 1.0
    assert pixel_auroc(masks, maps) == 1.0


def test_pixel_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match="differs"):
        pixel_auroc(np.zeros((2, 8, 8), bool), np.zeros((2, 8, 9)))
    with pytest.raises(ValueError, match="finite"):
        pixel_auroc(np.ones((1, 2, 2), bool), np.full((1, 2, 2), np.nan))


# --------------------------------------------------------------------------------------------------
# AUPRO
# --------------------------------------------------------------------------------------------------


def _ramp_background(n_images: int, size: int) -> np.ndarray:
    """Maps whose pixels all have distinct scores in [0, 1): good pixels spread uniformly."""
    return (np.arange(n_images * size * size, dtype=np.float64) / (n_images * size * size)).reshape(
        n_images, size, size
    )


def test_aupro_perfect_detector_is_one() -> None:
    masks = np.zeros((4, 32, 32), dtype=bool)
    masks[0, 3:9, 3:9] = True
    masks[2, 20:30, 10:12] = True
    maps = np.random.default_rng(0).random((4, 32, 32)) * 0.5 + masks
    assert aupro(masks, maps) == pytest.approx(1.0)


def test_aupro_half_region_constant_map_is_analytic() -> None:
    # map = 1 on half of the defect, 0 everywhere else (other half of the defect and all good pixels).
    # PRO is 0.5 at FPR 0, then the one remaining threshold (below 0) flags everything: (1, 1).
    # PRO(f) = 0.5 + 0.5 f on [0, 0.3] -> area 0.15 + 0.0225, normalised 0.575.
    masks = np.zeros((2, 16, 16), dtype=bool)
    masks[0, 4:12, 4:12] = True
    maps = np.zeros((2, 16, 16))
    maps[0, 4:12, 4:8] = 1.0
    assert aupro(masks, maps) == pytest.approx(0.575)
    assert reference_aupro(masks, maps) == pytest.approx(0.575)


def test_aupro_half_region_above_half_below_good_pixels() -> None:
    # half of the region beats every good pixel, half loses to every good pixel: PRO = 0.5 over [0, 1).
    masks = np.zeros((3, 32, 32), dtype=bool)
    masks[1, 8:24, 8:24] = True
    maps = _ramp_background(3, 32)
    maps[1, 8:24, 8:16] = 2.0
    maps[1, 8:24, 16:24] = -1.0
    assert aupro(masks, maps) == pytest.approx(0.5, abs=1e-9)


def test_aupro_weights_regions_equally_regardless_of_size() -> None:
    # a large region found at FPR 0 and a 1-pixel region found only after 10% of good pixels are flagged:
    # PRO = 0.5 on [0, 0.1), 1 on [0.1, 0.3] -> (0.1 * 0.5 + 0.2 * 1) / 0.3
    masks = np.zeros((2, 16, 16), dtype=bool)
    masks[0, 2:10, 2:10] = True  # 64 pixels
    masks[1, 14, 14] = True  # 1 pixel
    maps = _ramp_background(2, 16)
    maps[0, 2:10, 2:10] = 5.0
    good_sorted = np.sort(maps[~masks])
    n_good = good_sorted.size
    above = int(round(0.1 * n_good))  # the small region beats all but the top `above` good pixels
    maps[1, 14, 14] = (good_sorted[n_good - above - 1] + good_sorted[n_good - above]) / 2
    fpr_small = above / n_good
    expected = (fpr_small * 0.5 + (0.3 - fpr_small) * 1.0) / 0.3
    assert aupro(masks, maps) == pytest.approx(expected, abs=1e-9)
    assert reference_aupro(masks, maps) == pytest.approx(expected, abs=1e-9)


def test_aupro_regions_are_8_connected() -> None:
    # a diagonal pair (detected) and a 2x2 block (missed): 8-connectivity -> 2 regions, PRO 1/2;
    # 4-connectivity would count 3 regions and give PRO 2/3.
    masks = np.zeros((1, 12, 12), dtype=bool)
    masks[0, 2, 2] = masks[0, 3, 3] = True
    masks[0, 8:10, 8:10] = True
    maps = _ramp_background(1, 12)
    maps[0, 2, 2] = maps[0, 3, 3] = 9.0
    maps[0, 8:10, 8:10] = -1.0
    fpr, pro = pro_curve(masks, maps)
    assert pro[(fpr > 0) & (fpr < 0.99)] == pytest.approx(0.5)
    assert aupro(masks, maps) == pytest.approx(0.5, abs=1e-9)


def test_aupro_good_images_only_add_false_positives() -> None:
    masks = np.zeros((2, 16, 16), dtype=bool)
    masks[0, 4:12, 4:12] = True
    maps = _ramp_background(2, 16) * 0.5
    maps[0, 4:12, 4:12] = 0.75  # above every good pixel
    assert aupro(masks, maps) == pytest.approx(1.0)
    # the good image now holds pixels hotter than the defect: the region is found only at FPR > 0
    maps[1, :4, :] = 0.9
    value = aupro(masks, maps)
    fpr_needed = 64 / (~masks).sum()  # 4 rows x 16 good pixels above the defect
    assert value == pytest.approx(1.0 - fpr_needed / 0.3, abs=1e-9)
    assert value == pytest.approx(reference_aupro(masks, maps), abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_aupro_equals_all_threshold_reference_on_small_data(seed: int) -> None:
    # few good pixels -> every relevant good score is on the grid -> exact
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 10, 10), dtype=bool)
    masks[0, 2:6, 2:5] = True
    masks[0, 8, 8] = True
    masks[1, 5:9, 1:9] = True
    maps = np.round(rng.random((3, 10, 10)) + 0.5 * masks, 1)  # heavy ties
    assert aupro(masks, maps) == pytest.approx(reference_aupro(masks, maps), abs=1e-12)


@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_aupro_close_to_reference_on_larger_data(limit: float) -> None:
    rng = np.random.default_rng(7)
    masks = np.zeros((12, 48, 48), dtype=bool)
    for i in range(0, 12, 2):
        r, c = rng.integers(0, 36, 2)
        masks[i, r : r + rng.integers(3, 12), c : c + rng.integers(3, 12)] = True
    maps = ndimage.gaussian_filter(rng.random((12, 48, 48)) + 0.6 * masks, sigma=(0, 2, 2)).astype(np.float32)
    expected = reference_aupro(masks, maps, limit)
    assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(expected, abs=2e-3)
    assert aupro(masks, maps, fpr_limit=limit, num_thresholds=2000) == pytest.approx(expected, abs=3e-4)
    assert aupro(masks, maps, fpr_limit=limit, num_thresholds=None) == pytest.approx(expected, abs=1e-9)


def test_aupro_nan_without_regions_and_validates_arguments() -> None:
    maps = np.random.default_rng(0).random((2, 8, 8))
    assert math.isnan(aupro(np.zeros((2, 8, 8), bool), maps))
    assert math.isnan(aupro(np.ones((2, 8, 8), bool), maps))
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 0, 0] = True
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(masks, maps, fpr_limit=0.0)
    with pytest.raises(ValueError, match="num_thresholds"):
        aupro(masks, maps, num_thresholds=1)


def test_pro_curve_is_monotone_and_spans_unit_square() -> None:
    rng = np.random.default_rng(2)
    masks = rng.random((4, 16, 16)) > 0.9
    maps = rng.random((4, 16, 16)).astype(np.float32)
    fpr, pro = pro_curve(masks, maps)
    assert fpr[0] == 0.0 and fpr[-1] == 1.0 and pro[-1] == 1.0
    assert (np.diff(fpr) >= 0).all() and (np.diff(pro) >= 0).all()


# --------------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------------


def _category_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "label": [0, 0, 0, 1, 1, 1, 1],
            "defect_type": ["good", "good", "good", "crack", "crack", "scratch", "scratch"],
            "score": [0.1, 0.2, 0.5, 0.9, 0.8, 0.3, 0.05],
        }
    )


def test_summarize_category_values() -> None:
    frame = _category_frame()
    masks = np.zeros((7, 8, 8), dtype=bool)
    masks[3:, 2:5, 2:5] = True
    maps = np.zeros((7, 8, 8))
    maps[3:, 2:5, 2:5] = 1.0
    summary = summarize_category(frame, masks, maps)
    assert summary["n_images"] == 7 and summary["n_defective"] == 4
    assert summary["image_auroc"] == pytest.approx(roc_auc_score(frame["label"], frame["score"]))
    assert summary["image_auroc.crack"] == pytest.approx(1.0)
    # scratch scores 0.3, 0.05 vs good 0.1, 0.2, 0.5: (2 + 0) / 6
    assert summary["image_auroc.scratch"] == pytest.approx(2 / 6)
    assert summary["pixel_auroc"] == pytest.approx(1.0)
    assert summary["aupro"] == pytest.approx(1.0)
    assert summary["f1_max"] == pytest.approx(f1_max(frame["label"].to_numpy(), frame["score"].to_numpy())[0])
    assert set(summary) == {
        "image_auroc",
        "pixel_auroc",
        "aupro",
        "f1_max",
        "n_images",
        "n_defective",
        "image_auroc.crack",
        "image_auroc.scratch",
    }


def test_summarize_category_without_maps_has_nan_pixel_metrics() -> None:
    summary = summarize_category(_category_frame(), None, None)
    assert math.isnan(summary["pixel_auroc"]) and math.isnan(summary["aupro"])
    assert not math.isnan(summary["image_auroc"])


def test_summarize_category_rejects_inconsistent_input() -> None:
    frame = _category_frame()
    with pytest.raises(ValueError, match="one entry per frame row"):
        summarize_category(frame, np.zeros((3, 4, 4), bool), np.zeros((3, 4, 4)))
    bad = frame.assign(label=[0, 1, 0, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="defect_type must be 'good' exactly when label is 0"):
        summarize_category(bad, None, None)
    with pytest.raises(ValueError, match="lacks column"):
        summarize_category(frame.drop(columns="score"), None, None)


def test_summarize_category_uses_the_aupro_fpr_limit_it_is_given() -> None:
    """params.yaml metrics.aupro_fpr_limit reaches AUPRO (it used to be ignored for the default)."""
    frame = _category_frame()
    rng = np.random.default_rng(0)
    masks = np.zeros((7, 8, 8), dtype=bool)
    masks[3:, 2:5, 2:5] = True
    maps = rng.random((7, 8, 8)) + 0.3 * masks  # overlapping scores: the PRO curve depends on the limit
    default = summarize_category(frame, masks, maps)["aupro"]
    strict = summarize_category(frame, masks, maps, aupro_fpr_limit=0.05)["aupro"]
    assert default == pytest.approx(aupro(masks, maps, fpr_limit=0.3))
    assert strict == pytest.approx(aupro(masks, maps, fpr_limit=0.05))
    assert abs(strict - default) > 0.01


def test_region_metrics_count_pooled_pixels() -> None:
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2, :2] = True  # 4 defective pixels, image 1 is good
    regions = np.zeros((2, 4, 4), bool)
    regions[0, :2, :3] = True  # 4 TP + 2 FP
    regions[1, 3, 3] = True  # 1 FP on the good image
    out = region_metrics(masks, regions)
    assert out == {"pixel_precision": 4 / 7, "pixel_recall": 1.0, "pixel_iou": 4 / 7}
    empty = region_metrics(masks, np.zeros_like(regions))
    assert math.isnan(empty["pixel_precision"]) and empty["pixel_recall"] == 0.0 and empty["pixel_iou"] == 0.0
    none = region_metrics(np.zeros_like(masks), np.zeros_like(regions))
    assert all(math.isnan(v) for v in none.values())
    # no defective pixel to match (a good-only test set): absent, not precision / IoU 0
    good_only = region_metrics(np.zeros_like(masks), regions)
    assert all(math.isnan(v) for v in good_only.values())


def test_summarize_category_pixel_metrics_use_only_rows_with_known_masks() -> None:
    """A defect image without a mask is not scored as all good: pixel AUROC / AUPRO skip its row."""
    frame = _category_frame()  # rows 3-6 defective
    masks = np.zeros((7, 8, 8), dtype=bool)
    masks[3:5, 2:5, 2:5] = True
    maps = np.zeros((7, 8, 8))
    maps[3:, 2:5, 2:5] = 1.0  # rows 5, 6: a detected defect whose mask is unknown (all False)
    known = np.array([True, True, True, True, True, False, False])
    everything = summarize_category(frame, masks, maps)
    assert everything["pixel_auroc"] < 1.0  # the unmasked rows' hot pixels counted as false positives
    summary = summarize_category(frame, masks, maps, pixel_rows=known)
    assert summary["pixel_auroc"] == pytest.approx(1.0) and summary["aupro"] == pytest.approx(1.0)
    assert summary["pixel_auroc"] == pytest.approx(pixel_auroc(masks[known], maps[known]))
    assert summary["image_auroc"] == everything["image_auroc"]  # image metrics use every row
    none_known = summarize_category(frame, masks, maps, pixel_rows=np.arange(7) < 3)  # good rows only
    assert math.isnan(none_known["pixel_auroc"]) and math.isnan(none_known["aupro"])
    with pytest.raises(ValueError, match="pixel_rows has 3 entries"):
        summarize_category(frame, masks, maps, pixel_rows=np.ones(3, bool))


def test_mean_present_skips_absent_metrics() -> None:
    assert mean_present([0.5, None, float("nan"), 1.0]) == 0.75
    assert math.isnan(mean_present([None, float("nan")]))


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(
        3, 16
    )  # 19 %: 7 % to 43 %; each bound solves |p - k/n| = z sqrt(p (1 - p) / n)
    assert (round(low, 4), round(high, 4)) == (0.0659, 0.4301)
    assert wilson_interval(0, 12)[0] == 0.0 and round(wilson_interval(0, 12)[1], 4) == 0.2425
    assert wilson_interval(12, 12)[1] == 1.0 and wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(500, 1000)  # many images: close to the normal approximation
    assert abs(high - low - 2 * 1.96 * (0.25 / 1000) ** 0.5) < 1e-3
    with pytest.raises(ValueError, match="k=5, n=4"):
        wilson_interval(5, 4)
