"""Decision thresholds that are never fitted on the images they are reported on.

Rule everywhere: an image is flagged defective iff `score > threshold` (strict); label 1 = defective.

- `recall_thresholds_out_of_fold`: the threshold a user deploys is fitted on all test images of a
  category (or defect type), but the precision / recall it is reported with are out-of-fold: each fold
  is predicted with a threshold fitted on the other folds only.
- `good_only_threshold`: calibration from good images alone, for users without defective examples.
- `served_threshold`: which of the two a category's served model (and its plots) applies.

Precision when nothing is flagged is 0.0 (sklearn's `zero_division=0`); precision, recall and F1 are
nan when there is no defective image (a good-only test set: only false_positives / n_good mean
anything there).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from anomaly_spotter.core.config import THRESHOLD_METHODS
from anomaly_spotter.core.errors import AnomalySpotterError
from anomaly_spotter.core.metrics import (
    GOOD_TYPE,
    check_frame,
    check_image_inputs,
    strict_threshold_between,
)

ALL_TYPES = "all"
DEFAULT_RECALL_TARGET = 0.95
DEFAULT_N_FOLDS = 5
MIN_FOLDS = 2
DEFAULT_GOOD_FPR = 0.01
# recall_target * n is rounded up; this slack stops 0.7 * 10 = 7.000000000000001 from asking for 8.
CEIL_SLACK = 1e-9
FRAME_COLUMNS = ("category", "defect_type", "label", "score")


@dataclass(frozen=True)
class ThresholdRow:
    """One fitted threshold with its out-of-fold evaluation (`detected` of `n_defective` flagged).

    `detected` and `false_positives` are None (and precision / recall / f1 nan) when out-of-fold
    evaluation is impossible, e.g. a defect type with a single image.
    """

    category: str
    defect_type: str
    threshold: float
    precision: float
    recall: float
    f1: float
    detected: int | None
    n_defective: int
    n_good: int
    false_positives: int | None
    method: str


def threshold_for_recall(defect_scores: np.ndarray, recall_target: float) -> float:
    """Largest-margin threshold flagging at least `ceil(recall_target * n)` of `(n,)` defect scores.

    With `k = ceil(recall_target * n)` and `s_k` the k-th largest score, the threshold is the midpoint
    between `s_k` and the next lower distinct score (so `score > threshold` holds for at least k
    scores, and the margin helps unseen defects); if `s_k` is the lowest score it is the float just
    below `s_k`. Ties at `s_k` are all flagged, so the achieved recall can exceed the target.
    """
    scores = np.asarray(defect_scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise ValueError("defect_scores is empty; a recall threshold needs at least one defective score")
    if not np.isfinite(scores).all():
        raise ValueError(f"defect_scores must be finite; {int((~np.isfinite(scores)).sum())} are nan or inf")
    if not 0.0 < recall_target <= 1.0:
        raise ValueError(f"recall_target must be in (0, 1]; got {recall_target}")
    k = max(1, math.ceil(recall_target * scores.size - CEIL_SLACK))
    desc = np.sort(scores)[::-1]
    kth = desc[k - 1]
    lower = desc[desc < kth]
    if lower.size == 0:
        return float(np.nextafter(kth, -np.inf))
    return strict_threshold_between(kth, lower[0])


def good_only_threshold(good_scores: np.ndarray, target_fpr: float = DEFAULT_GOOD_FPR) -> float:
    """Threshold from good validation scores `(n,)` only: their `1 - target_fpr` quantile ("higher").

    The result is an observed score, so with the strict rule it never flags that score itself. Guarantee
    on the calibration set: at most `ceil(target_fpr * n)` of the good images exceed it (in fact at most
    `floor(target_fpr * (n - 1))`, up to float rounding of the quantile), and never all of them, even
    for n = 1 or all-equal scores. Raises ValueError on empty or non-finite input.
    """
    scores = np.asarray(good_scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise ValueError("good_scores is empty; calibrate on at least one good validation image")
    if not np.isfinite(scores).all():
        raise ValueError(f"good_scores must be finite; {int((~np.isfinite(scores)).sum())} are nan or inf")
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in [0, 1); got {target_fpr}")
    return float(np.quantile(scores, 1.0 - target_fpr, method="higher"))


def _counts_to_metrics(
    n_defective: int, n_good: int, detected: int, false_positives: int
) -> dict[str, float | int]:
    """Precision (0 if nothing flagged), recall and F1 (all three nan if no defective image) from counts."""
    flagged = detected + false_positives
    precision = detected / flagged if flagged else 0.0
    if n_defective == 0:
        precision = recall = f1 = math.nan
    else:
        recall = detected / n_defective
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "detected": int(detected),
        "n_defective": int(n_defective),
        "false_positives": int(false_positives),
        "n_good": int(n_good),
    }


def _evaluate_predictions(labels: np.ndarray, flagged: np.ndarray) -> dict[str, float | int]:
    """Metrics of boolean predictions `(N,)` against labels `(N,)`."""
    positive = labels == 1
    return _counts_to_metrics(
        n_defective=int(positive.sum()),
        n_good=int((~positive).sum()),
        detected=int((flagged & positive).sum()),
        false_positives=int((flagged & ~positive).sum()),
    )


def evaluate_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | int]:
    """precision, recall, f1, detected, n_defective, false_positives, n_good of `score > threshold`.

    labels `(N,)` 0/1 and scores `(N,)`. Precision is 0.0 when nothing is flagged; precision, recall and
    F1 are nan when there is no defective image.
    """
    labels, scores = check_image_inputs(labels, scores)
    return _evaluate_predictions(labels, scores > threshold)


def stratified_folds(
    labels: np.ndarray, strata: np.ndarray, n_folds: int, rng: np.random.Generator
) -> np.ndarray:
    """Fold id `(N,)` in `[0, n_folds)` per sample, each label and each stratum spread evenly.

    Within each label the strata (e.g. defect types) are shuffled internally and dealt round-robin,
    the deal continuing from one stratum to the next: per fold, a label's count differs by at most
    one and so does each stratum's. So with at least `n_folds` defects every fold holds a defect.
    """
    labels = np.asarray(labels)
    strata = np.asarray(strata)
    if labels.shape != strata.shape:
        raise ValueError(f"labels {labels.shape} and strata {strata.shape} must have the same shape")
    folds = np.empty(strata.size, dtype=np.int64)
    position = 0
    for label in sorted(set(labels.tolist()), reverse=True):
        of_label = labels == label
        for stratum in sorted(set(strata[of_label].tolist())):
            members = rng.permutation(np.flatnonzero(of_label & (strata == stratum)))
            folds[members] = (position + np.arange(members.size)) % n_folds
            position += members.size
    return folds


def _unevaluated_row(
    category: str, defect_type: str, threshold: float, n_defective: int, n_good: int, method: str
) -> ThresholdRow:
    """A row whose out-of-fold metrics could not be computed: nan rates, None counts."""
    return ThresholdRow(
        category=category,
        defect_type=defect_type,
        threshold=threshold,
        precision=math.nan,
        recall=math.nan,
        f1=math.nan,
        detected=None,
        n_defective=n_defective,
        n_good=n_good,
        false_positives=None,
        method=method,
    )


def _out_of_fold_row(
    category: str,
    defect_type: str,
    labels: np.ndarray,
    scores: np.ndarray,
    strata: np.ndarray,
    recall_target: float,
    n_folds: int,
    seed: int,
) -> ThresholdRow:
    """Threshold fitted on all defects of `scores`, evaluated out-of-fold (see module docstring)."""
    defect = labels == 1
    n_defective = int(defect.sum())
    n_good = int((~defect).sum())
    if n_defective == 0:
        method = f"recall>={recall_target:g}: no defective image, nothing to fit"
        return _unevaluated_row(category, defect_type, math.nan, 0, n_good, method)
    threshold = threshold_for_recall(scores[defect], recall_target)
    if n_defective < MIN_FOLDS:
        method = (
            f"recall>={recall_target:g}, fitted on {n_defective} defective image; "
            "out-of-fold evaluation impossible, metrics not reported"
        )
        return _unevaluated_row(category, defect_type, threshold, n_defective, n_good, method)
    folds_used = max(MIN_FOLDS, min(n_folds, n_defective, n_good))
    rng = np.random.default_rng([seed, zlib.crc32(f"{category}\0{defect_type}".encode())])
    fold_of = stratified_folds(labels, strata, folds_used, rng)
    flagged = np.zeros(labels.size, dtype=bool)
    for fold in range(folds_used):
        held_out = fold_of == fold
        fold_threshold = threshold_for_recall(scores[defect & ~held_out], recall_target)
        flagged[held_out] = scores[held_out] > fold_threshold
    m = _evaluate_predictions(labels, flagged)
    return ThresholdRow(
        category=category,
        defect_type=defect_type,
        threshold=threshold,
        precision=m["precision"],
        recall=m["recall"],
        f1=m["f1"],
        detected=m["detected"],
        n_defective=n_defective,
        n_good=n_good,
        false_positives=m["false_positives"],
        method=f"recall>={recall_target:g}, {folds_used}-fold out-of-fold",
    )


def recall_thresholds_out_of_fold(
    frame: pd.DataFrame,
    recall_target: float = DEFAULT_RECALL_TARGET,
    n_folds: int = DEFAULT_N_FOLDS,
    seed: int = 0,
) -> list[ThresholdRow]:
    """Recall-target thresholds per category ("all" row) and per defect type, with out-of-fold metrics.

    frame: test images with columns category, defect_type ("good" for good), label, score. For each
    category (sorted) the "all" row fits on all its defects and the per-type rows (sorted) on that
    type's defects, each evaluated against the category's good images. The reported threshold is fitted
    on all rows; precision / recall / f1 / detected / false_positives pool the predictions of
    `K = max(2, min(n_folds, n_defective, n_good))` stratified folds (strata = defect type, so labels
    are balanced too), each predicted with a threshold fitted on the other folds' defects. Folds are
    deterministic given `seed`, category and defect type. Fewer than 2 defects -> metrics nan, counts
    None, and `method` says why.
    """
    check_frame(frame, FRAME_COLUMNS)
    if not 0.0 < recall_target <= 1.0:
        raise ValueError(f"recall_target must be in (0, 1]; got {recall_target}")
    if n_folds < MIN_FOLDS:
        raise ValueError(f"n_folds must be at least {MIN_FOLDS}; got {n_folds}")
    scores_all = frame["score"].to_numpy(dtype=np.float64)
    if not np.isfinite(scores_all).all():
        raise ValueError(
            f"frame.score must be finite; {int((~np.isfinite(scores_all)).sum())} are nan or inf"
        )
    rows: list[ThresholdRow] = []
    for category in sorted(frame["category"].unique().tolist()):
        sub = frame[frame["category"] == category]
        labels = sub["label"].to_numpy().astype(np.int8)
        scores = sub["score"].to_numpy(dtype=np.float64)
        types = sub["defect_type"].astype(str).to_numpy()
        args = (recall_target, n_folds, seed)
        rows.append(_out_of_fold_row(str(category), ALL_TYPES, labels, scores, types, *args))
        good = labels == 0
        for defect_type in sorted(set(types[~good].tolist())):
            keep = good | (types == defect_type)
            rows.append(
                _out_of_fold_row(str(category), defect_type, labels[keep], scores[keep], types[keep], *args)
            )
    return rows


@dataclass(frozen=True)
class ServedThreshold:
    """The image threshold a category is served with: its value, the method it comes from
    (recall_target | good_only) and, when that is not the method asked for, why (`note`)."""

    threshold: float
    method: str
    note: str | None = None


def served_threshold(thresholds: Mapping[str, Any], category: str, method: str) -> ServedThreshold:
    """The threshold `category` is served with, from metrics/thresholds.json's content (`thresholds`).

    `method` is params.yaml registry.threshold. A category without defective test images has no
    recall-target threshold: asked for recall_target, it gets its good_only threshold, and `note` says
    so (register prints it and records the method used). Raises AnomalySpotterError for an unknown method
    or when the threshold is missing otherwise (thresholds.json out of date).
    """
    if method not in THRESHOLD_METHODS:
        raise AnomalySpotterError(f"registry.threshold is {method!r}; use one of {THRESHOLD_METHODS}")
    entry = thresholds.get(category)
    calibrated = entry.get(method) if isinstance(entry, Mapping) else None
    value = calibrated.get("threshold") if isinstance(calibrated, Mapping) else None
    if value is not None:
        return ServedThreshold(float(value), method)
    good_only = entry.get("good_only") if isinstance(entry, Mapping) else None
    if (
        method == "recall_target"
        and isinstance(calibrated, Mapping)
        and calibrated.get("n_defective") == 0
        and isinstance(good_only, Mapping)
        and good_only.get("threshold") is not None
    ):
        note = (
            f"{category} has no defective test image, so no recall-target threshold: serving the good-only "
            f"threshold {float(good_only['threshold']):.6g} (at most thresholds.good_fpr = "
            f"{good_only.get('target_fpr')} of the validation good images above it); set "
            "registry.threshold: good_only to choose it explicitly"
        )
        return ServedThreshold(float(good_only["threshold"]), "good_only", note)
    raise AnomalySpotterError(
        f"metrics/thresholds.json has no {category}.{method}.threshold; run `dvc repro` "
        "(compute_thresholds writes it)"
    )


def rows_to_frame(rows: list[ThresholdRow]) -> pd.DataFrame:
    """One column per ThresholdRow field (in field order); detected / false_positives as nullable Int64."""
    columns = [f.name for f in fields(ThresholdRow)]
    frame = pd.DataFrame([asdict(row) for row in rows], columns=columns)
    for column in ("detected", "false_positives", "n_defective", "n_good"):
        frame[column] = frame[column].astype("Int64")
    return frame


__all__ = [
    "ALL_TYPES",
    "GOOD_TYPE",
    "ServedThreshold",
    "ThresholdRow",
    "evaluate_threshold",
    "good_only_threshold",
    "recall_thresholds_out_of_fold",
    "rows_to_frame",
    "served_threshold",
    "stratified_folds",
    "threshold_for_recall",
]


FALSE_ALARM_KEYS = ("false_alarm_rate", "val_false_alarm_rate")


def false_alarm_rates(
    false_positives: int | None, n_good: int, val_goods: np.ndarray, threshold: float | None
) -> dict[str, float | None]:
    """The share of good images a threshold flags: on the test split (`false_alarm_rate`, from its counts)
    and on the validation goods (`val_false_alarm_rate`); None where there are none (or no threshold)."""
    test = false_positives / n_good if n_good and false_positives is not None else None
    val = float(np.mean(val_goods > threshold)) if threshold is not None and len(val_goods) else None
    return dict(zip(FALSE_ALARM_KEYS, (test, val), strict=True))


# What a threshold does on the field set (reviewed line images held out of training: anomaly_spotter.feedback)
FIELD_KEYS = ("field_recall", "field_false_alarm_rate")


def field_rates(labels: np.ndarray, scores: np.ndarray, threshold: float | None) -> dict[str, Any]:
    """A threshold on the field set: recall on the confirmed (and missed) defects and the false-alarm rate
    on the held-out reviewed goods, with their counts (`field_detected` "k/n", `field_false_alarms`
    "k/n"); a rate is None where the field set has no such images (or there is no threshold)."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    flagged = scores > threshold if threshold is not None else np.zeros(len(scores), bool)
    n_defective, n_good = int((labels == 1).sum()), int((labels == 0).sum())
    detected, false_alarms = int((flagged & (labels == 1)).sum()), int((flagged & (labels == 0)).sum())
    known = threshold is not None
    return {
        "field_recall": detected / n_defective if n_defective and known else None,
        "field_false_alarm_rate": false_alarms / n_good if n_good and known else None,
        "field_detected": f"{detected}/{n_defective}",
        "field_false_alarms": f"{false_alarms}/{n_good}",
    }
