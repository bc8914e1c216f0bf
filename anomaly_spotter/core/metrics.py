"""Detection metrics: image AUROC, pixel AUROC, AUPRO, best F1 and a per-category summary.

Conventions: higher score = more anomalous; label 1 = defective, 0 = good; an image (or pixel) is
predicted defective iff its score is strictly greater than the threshold. Every metric that needs both
classes returns nan when one is missing rather than raising, so a summary can still be written.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.metrics import roc_auc_score

GOOD_TYPE = "good"
AUPRO_FPR_LIMIT = 0.3
AUPRO_NUM_THRESHOLDS = 200
# 8-connectivity for the ground-truth regions of AUPRO (MVTec AD evaluation code uses the same).
REGION_STRUCTURE = np.ones((3, 3), dtype=bool)
# Positive pixels are matched against the sorted negatives in chunks of this many, to bound memory.
PIXEL_CHUNK = 1 << 22


# --------------------------------------------------------------------------------------------------
# input checks and shared helpers
# --------------------------------------------------------------------------------------------------


def check_image_inputs(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate `(N,)` labels in {0, 1} and `(N,)` finite scores; return them as int8 / float64."""
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels has {labels.size} entries but scores has {scores.size}; they must align")
    if labels.size and not np.isin(labels, (0, 1)).all():
        bad = np.unique(labels[~np.isin(labels, (0, 1))])[:5]
        raise ValueError(f"labels must be 0 (good) or 1 (defective); found {bad.tolist()}")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores must be finite; {int((~np.isfinite(scores)).sum())} are nan or inf")
    return labels.astype(np.int8), scores


def _check_pixel_inputs(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate `(N, H, W)` (or one `(H, W)`) masks and maps of equal shape; masks -> bool, maps float."""
    masks = np.asarray(masks)
    maps = np.asarray(maps)
    if masks.shape != maps.shape:
        raise ValueError(f"masks shape {masks.shape} differs from maps shape {maps.shape}")
    if maps.ndim == 2:
        masks, maps = masks[None], maps[None]
    if maps.ndim != 3:
        raise ValueError(f"masks and maps must be (N, H, W) or (H, W); got shape {maps.shape}")
    if masks.dtype != bool:
        masks = masks != 0
    if maps.dtype not in (np.float32, np.float64):
        maps = maps.astype(np.float64)
    if not np.isfinite(maps).all():
        raise ValueError(f"maps must be finite; {int((~np.isfinite(maps)).sum())} pixels are nan or inf")
    return masks, maps


def strict_threshold_between(upper: float, lower: float) -> float:
    """A threshold `t` with `lower <= t < upper`: their midpoint, or `lower` if rounding defeats it.

    With the strict `score > t` rule, any such `t` flags exactly the scores `>= upper` among scores
    that lie outside `(lower, upper)`. The midpoint leaves a margin on both sides for unseen images.
    """
    mid = upper / 2.0 + lower / 2.0
    return float(mid) if lower <= mid < upper else float(lower)


def descending_counts(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores in descending order `(M,)` and cumulative true / false positives `(M,)`.

    Entry `k` counts the images with score `>= distinct[k]`, i.e. those flagged by any threshold in
    `[distinct[k + 1], distinct[k])`.
    """
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    sorted_labels = labels[order].astype(np.int64)
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    tps = np.cumsum(sorted_labels)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return sorted_scores[last_of_tie], tps, fps


def curve_thresholds(distinct_desc: np.ndarray) -> np.ndarray:
    """Strict thresholds `(M,)` for the operating points of `descending_counts`.

    Point `k` (flag scores `>= distinct[k]`) gets the midpoint to the next lower distinct score; the
    last point (flag everything) gets the float just below the lowest score.
    """
    out = np.empty(distinct_desc.size, dtype=np.float64)
    for k in range(distinct_desc.size - 1):
        out[k] = strict_threshold_between(distinct_desc[k], distinct_desc[k + 1])
    if distinct_desc.size:
        out[-1] = np.nextafter(distinct_desc[-1], -np.inf)
    return out


# --------------------------------------------------------------------------------------------------
# image level
# --------------------------------------------------------------------------------------------------


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of `(N,)` scores against `(N,)` labels; nan if only one class is present."""
    labels, scores = check_image_inputs(labels, scores)
    if np.unique(labels).size < 2:
        return math.nan
    return float(roc_auc_score(labels, scores))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best F1 over all thresholds and the strict threshold achieving it (`score > threshold`).

    Returns `(nan, nan)` when there is no defective image. Ties in F1 go to the highest threshold
    (fewest flagged images). The threshold is the midpoint between the lowest flagged score and the
    next lower score (see `strict_threshold_between`). This is an in-sample optimum: report it as a
    ceiling, never as a deployable threshold.
    """
    labels, scores = check_image_inputs(labels, scores)
    n_pos = int(labels.sum())
    if n_pos == 0:
        return math.nan, math.nan
    distinct, tps, fps = descending_counts(labels, scores)
    f1 = 2.0 * tps / (tps + fps + n_pos)  # = 2PR / (P + R)
    best = int(np.argmax(f1))
    return float(f1[best]), float(curve_thresholds(distinct)[best])


# --------------------------------------------------------------------------------------------------
# pixel level
# --------------------------------------------------------------------------------------------------


def region_metrics(masks: np.ndarray, regions: np.ndarray) -> dict[str, float]:
    """How well predicted regions `(N, H, W)` bool match ground-truth masks `(N, H, W)` bool, all pixels
    of all images pooled: pixel_precision TP/(TP+FP), pixel_recall TP/(TP+FN), pixel_iou TP/(TP+FP+FN).

    Good images count too (every pixel they flag is a false positive). All three are nan when the masks
    hold no defective pixel (nothing to match: a good image's flagged area is anomaly_pct_good's), and
    precision is nan when no pixel is predicted.
    """
    masks, regions = _check_pixel_inputs(masks, regions)
    regions = regions.astype(bool, copy=False)
    tp = int(np.count_nonzero(masks & regions))
    fp = int(np.count_nonzero(regions)) - tp
    fn = int(np.count_nonzero(masks)) - tp
    if tp + fn == 0:
        return {"pixel_precision": math.nan, "pixel_recall": math.nan, "pixel_iou": math.nan}
    return {
        "pixel_precision": ratio(tp, tp + fp),
        "pixel_recall": ratio(tp, tp + fn),
        "pixel_iou": ratio(tp, tp + fp + fn),
    }


def mean_present(values: list[float | None]) -> float:
    """Mean of the finite values (None / nan are absent metrics); nan, without a warning, if none."""
    present = [float(v) for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(present)) if present else math.nan


def ratio(num: int, den: int) -> float:
    """num / den, NaN when den is 0."""
    return num / den if den else math.nan


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval `(low, high)` of a proportion k / n (95 % at z = 1.96); (0, 1) when n is 0.

    What a rate measured on few images can be: 3 of 16 validation goods flagged is 19 %, with a 95 %
    interval of 7 % to 43 %."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """Exact pixel-level AUROC of maps `(N, H, W)` float against masks `(N, H, W)` bool.

    Computed as the Mann-Whitney statistic P(pos > neg) + 0.5 P(pos == neg), equal to sklearn's
    `roc_auc_score` on the flattened arrays, but without float64 copies or an argsort of all pixels:
    only the negatives are copied (in the maps' dtype) and sorted, positives are matched in chunks.
    Returns nan if there is no defective pixel or no good pixel.
    """
    masks, maps = _check_pixel_inputs(masks, maps)
    n_pos = int(masks.sum())
    n_neg = masks.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    negatives = maps[~masks]
    negatives.sort()
    positives = maps[masks]
    positives.sort()  # sorted keys make searchsorted cache friendly
    below = 0
    ties = 0
    for start in range(0, n_pos, PIXEL_CHUNK):
        chunk = positives[start : start + PIXEL_CHUNK]
        left = np.searchsorted(negatives, chunk, side="left")
        right = np.searchsorted(negatives, chunk, side="right")
        below += int(left.sum())
        ties += int((right - left).sum())
    return float((below + 0.5 * ties) / (n_pos * n_neg))


def _label_regions(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """8-connected regions of each mask: labels `(N, H, W)` int32 (0 = background), sizes per image."""
    labeled = np.zeros(masks.shape, dtype=np.int32)
    counts = np.zeros(len(masks), dtype=np.int64)
    for i, mask in enumerate(masks):
        if mask.any():
            labeled[i], counts[i] = ndimage.label(mask, structure=REGION_STRUCTURE)
    return labeled, counts, int(counts.sum())


def _integrate_to_limit(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under `y(x)` from `x[0] = 0` to `limit`, interpolating `y` at `limit`.

    `x` must be non-decreasing and reach at least `limit`.
    """
    inside = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:inside], y[:inside]
    if inside < x.size:
        x0, y0, x1, y1 = x[inside - 1], y[inside - 1], x[inside], y[inside]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        xs, ys = np.r_[xs, limit], np.r_[ys, y_lim]
    return float(np.trapezoid(ys, xs))


def pro_curve(
    masks: np.ndarray,
    maps: np.ndarray,
    fpr_limit: float = AUPRO_FPR_LIMIT,
    num_thresholds: int | None = AUPRO_NUM_THRESHOLDS,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-region-overlap curve `(fpr, pro)`, both `(K,)` with fpr non-decreasing from 0 to 1.

    masks `(N, H, W)` bool, maps `(N, H, W)` float. Thresholds are the good-pixel scores at
    `num_thresholds` false-positive rates evenly spaced over `[0, fpr_limit]` (plus a few just past it
    and the lowest good score); each is evaluated twice, at the score and just below it, so a tied
    score's jump in FPR is a straight segment exactly as in the MVTec AD evaluation code. Every point
    is exact; only the curve between grid points (FPR step `fpr_limit / num_thresholds`) is linear,
    which moves AUPRO by ~1e-3 at most on smooth maps with the default 200. With at most about
    `num_thresholds / fpr_limit` good pixels the grid holds every relevant score and the result is
    exact. `num_thresholds=None` uses every good score up to `fpr_limit`: exact, like the MVTec AD code,
    but ~10x slower on a full category (every pixel is searched among millions of thresholds).
    Raises ValueError if there is no region or no good pixel.
    """
    masks, maps = _check_pixel_inputs(masks, maps)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1]; got {fpr_limit}")
    if num_thresholds is not None and num_thresholds < 2:
        raise ValueError(f"num_thresholds must be at least 2; got {num_thresholds}")
    labeled, _, n_regions = _label_regions(masks)
    if n_regions == 0:
        raise ValueError("no defect region in masks; the PRO curve needs at least one defective pixel")
    good = maps[~masks]
    n_good = good.size
    if n_good == 0:
        raise ValueError("masks cover every pixel; the PRO curve needs good pixels for the FPR")

    lowest = good.min()
    if num_thresholds is None:
        # Every good score that can start a segment below fpr_limit: #(good > v) < fpr_limit * n_good.
        cut = max(0, n_good - 2 - math.ceil(fpr_limit * n_good))
        good.partition(cut)
        at = np.unique(np.r_[good[cut:], lowest])
    else:
        # Good scores at the target FPRs: #(good > s_j) ~ n - 1 - j for the j-th smallest s_j.
        step = fpr_limit / (num_thresholds - 1)
        targets = np.r_[np.linspace(0.0, fpr_limit, num_thresholds), fpr_limit + step * np.arange(1, 4)]
        idx = np.clip(np.rint(n_good - 1 - np.minimum(targets, 1.0) * n_good), 0, n_good - 1).astype(np.int64)
        idx = np.unique(np.r_[idx, max(int(idx.min()) - 1, 0)])
        good.partition(idx)
        at = np.unique(np.r_[good[idx], lowest])
    del good
    below = np.nextafter(at, np.asarray(-np.inf, dtype=at.dtype))
    thresholds = np.unique(np.r_[at, below])  # ascending, in the maps' dtype

    # Histogram every pixel by how many thresholds it exceeds; counts above threshold i = tail sums.
    n_bins = thresholds.size + 1
    good_hist = np.zeros(n_bins, dtype=np.int64)
    pro_hist = np.zeros(n_bins, dtype=np.float64)
    for amap, mask, lab in zip(maps, masks, labeled, strict=True):
        # bin = number of thresholds strictly below the score; sorted keys keep the search cache friendly
        good_bins = np.searchsorted(thresholds, np.sort(amap[~mask]), side="left")
        good_hist += np.bincount(good_bins, minlength=n_bins)
        if mask.any():
            region_of = lab[mask]
            sizes = np.bincount(region_of)
            bins = np.searchsorted(thresholds, amap[mask], side="left")
            pro_hist += np.bincount(bins, weights=1.0 / sizes[region_of], minlength=n_bins)
    good_above = np.cumsum(good_hist[::-1])[::-1][1:]  # entry i: pixels above thresholds[i]
    pro_above = np.cumsum(pro_hist[::-1])[::-1][1:]
    fpr = np.clip(good_above[::-1] / n_good, 0.0, 1.0)  # descending thresholds -> ascending fpr
    pro = np.clip(pro_above[::-1] / n_regions, 0.0, 1.0)
    return np.r_[0.0, fpr, 1.0], np.r_[0.0, pro, 1.0]


def aupro(
    masks: np.ndarray,
    maps: np.ndarray,
    fpr_limit: float = AUPRO_FPR_LIMIT,
    num_thresholds: int | None = AUPRO_NUM_THRESHOLDS,
) -> float:
    """Area under the per-region-overlap curve up to `fpr_limit`, divided by `fpr_limit` (perfect = 1).

    MVTec AD definition (Bergmann et al.): ground-truth regions are the 8-connected components of each
    mask `(N, H, W)` bool; PRO at a threshold is the mean over all regions of the fraction of the
    region's pixels with `map > threshold`; FPR is the fraction of good pixels (outside every mask, all
    images) above it. The trapezoid integral runs from FPR 0 to `fpr_limit`, interpolating PRO at the
    limit. See `pro_curve` for the threshold grid (`num_thresholds=None`: all thresholds, exact).
    Returns nan if there is no region or no good pixel.
    """
    masks, maps = _check_pixel_inputs(masks, maps)
    if not masks.any() or masks.all():
        return math.nan
    fpr, pro = pro_curve(masks, maps, fpr_limit, num_thresholds)
    return _integrate_to_limit(fpr, pro, fpr_limit) / fpr_limit


# --------------------------------------------------------------------------------------------------
# per-category summary
# --------------------------------------------------------------------------------------------------


def check_frame(frame: pd.DataFrame, columns: tuple[str, ...]) -> None:
    """Raise ValueError unless `frame` has `columns`, 0/1 labels and `defect_type == 'good'` iff label 0."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing}; it has {list(frame.columns)}")
    labels = frame["label"].to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"frame.label must be 0 or 1; found {sorted(set(labels.tolist()) - {0, 1})[:5]}")
    is_good = (frame["defect_type"] == GOOD_TYPE).to_numpy()
    clash = is_good != (labels == 0)
    if clash.any():
        row = frame.index[np.flatnonzero(clash)[0]]
        raise ValueError(
            f"frame row {row!r}: defect_type {frame.loc[row, 'defect_type']!r} with label "
            f"{frame.loc[row, 'label']}; defect_type must be {GOOD_TYPE!r} exactly when label is 0"
        )


def summarize_category(
    frame: pd.DataFrame,
    masks: np.ndarray | None,
    maps: np.ndarray | None,
    aupro_fpr_limit: float = AUPRO_FPR_LIMIT,
    pixel_rows: np.ndarray | None = None,
) -> dict[str, float]:
    """Metrics of one category's test set.

    frame: one row per test image with columns label (0/1), defect_type (str, "good" for good), score.
    masks `(N, H, W)` bool and maps `(N, H, W)` float are aligned with the frame's rows; if either is
    None the pixel metrics are nan. `pixel_rows` `(N,)` bool, if given, marks the rows whose masks are
    known (the prepared index's has_mask): pixel AUROC and AUPRO use those rows only, so a defect image
    without a mask is not counted as all good. `aupro_fpr_limit` is AUPRO's integration limit (params.yaml
    `metrics.aupro_fpr_limit`). Returns image_auroc, pixel_auroc, aupro, f1_max (value only: its
    threshold is fitted on the test set), n_images and n_defective (ints), and `image_auroc.<type>` per
    defect type (that type's images vs all good images).
    """
    check_frame(frame, ("label", "defect_type", "score"))
    labels = frame["label"].to_numpy().astype(np.int8)
    scores = frame["score"].to_numpy(dtype=np.float64)
    out: dict[str, float] = {"image_auroc": image_auroc(labels, scores)}
    if masks is None or maps is None:
        out["pixel_auroc"] = math.nan
        out["aupro"] = math.nan
    else:
        if len(masks) != len(frame) or len(maps) != len(frame):
            raise ValueError(
                f"masks ({len(masks)}) and maps ({len(maps)}) must have one entry per frame row "
                f"({len(frame)}), in the same order"
            )
        if pixel_rows is not None:
            keep = np.asarray(pixel_rows, dtype=bool).reshape(-1)
            if keep.size != len(frame):
                raise ValueError(
                    f"pixel_rows has {keep.size} entries; it needs one per frame row ({len(frame)})"
                )
            masks, maps = np.asarray(masks)[keep], np.asarray(maps)[keep]
        out["pixel_auroc"] = pixel_auroc(masks, maps)
        out["aupro"] = aupro(masks, maps, fpr_limit=aupro_fpr_limit)
    out["f1_max"] = f1_max(labels, scores)[0]
    out["n_images"] = int(len(frame))
    out["n_defective"] = int(labels.sum())
    good = labels == 0
    types = frame["defect_type"].to_numpy()
    for defect_type in sorted(set(types[~good].tolist())):
        keep = good | (types == defect_type)
        out[f"image_auroc.{defect_type}"] = image_auroc(labels[keep], scores[keep])
    return out
