"""Thresholds: known values, out-of-fold honesty, and the good-only calibration guarantee."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from anomaly_spotter.core.errors import AnomalySpotterError
from anomaly_spotter.core.thresholds import (
    ServedThreshold,
    ThresholdRow,
    evaluate_threshold,
    good_only_threshold,
    recall_thresholds_out_of_fold,
    rows_to_frame,
    served_threshold,
    stratified_folds,
    threshold_for_recall,
)

# --------------------------------------------------------------------------------------------------
# threshold_for_recall
# --------------------------------------------------------------------------------------------------


def test_threshold_for_recall_known_scores() -> None:
    scores = np.arange(1.0, 21.0)  # 20 defects
    t = threshold_for_recall(scores, 0.95)
    assert (scores > t).sum() == 19
    assert t == pytest.approx(1.5)  # midpoint between the 19th largest (2) and the next (1)


def test_threshold_for_recall_full_recall_and_float_rounding() -> None:
    scores = np.arange(1.0, 11.0)
    t = threshold_for_recall(scores, 1.0)
    assert (scores > t).all() and t == np.nextafter(1.0, -np.inf)
    # 0.7 * 10 = 7.000000000000001 in floats: still 7 must be above, not 8
    assert (scores > threshold_for_recall(scores, 0.7)).sum() == 7


def test_threshold_for_recall_ties_and_order() -> None:
    scores = np.array([5.0, 3.0, 3.0, 3.0, 1.0])
    t = threshold_for_recall(scores, 0.4)  # k = 2 -> 2nd largest is 3 (tied): all three 3s pass
    assert (scores > t).sum() == 4 and t == pytest.approx(2.0)
    shuffled = np.random.default_rng(0).permutation(scores)
    assert threshold_for_recall(shuffled, 0.4) == t


@pytest.mark.parametrize("target", [0.05, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0])
def test_threshold_for_recall_meets_target_and_is_largest(target: float) -> None:
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 7, 20, 101):
        scores = np.round(rng.normal(size=n), 1)
        t = threshold_for_recall(scores, target)
        k = math.ceil(target * n - 1e-9)
        assert (scores > t).sum() >= k
        # any threshold at or above the k-th largest score flags fewer than k
        kth = np.sort(scores)[::-1][k - 1]
        assert t < kth and (scores > kth).sum() < k


def test_threshold_for_recall_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        threshold_for_recall(np.array([]), 0.9)
    with pytest.raises(ValueError, match="recall_target"):
        threshold_for_recall(np.array([1.0]), 0.0)
    with pytest.raises(ValueError, match="finite"):
        threshold_for_recall(np.array([1.0, np.inf]), 0.9)


# --------------------------------------------------------------------------------------------------
# evaluate_threshold
# --------------------------------------------------------------------------------------------------


def test_evaluate_threshold_counts() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.6, 0.5, 0.5, 0.9, 0.8, 0.2])
    m = evaluate_threshold(labels, scores, 0.5)  # strict: the two 0.5s are not flagged
    assert m == {
        "precision": pytest.approx(2 / 3),
        "recall": pytest.approx(0.5),
        "f1": pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5)),
        "detected": 2,
        "n_defective": 4,
        "false_positives": 1,
        "n_good": 3,
    }


def test_evaluate_threshold_zero_division_conventions() -> None:
    m = evaluate_threshold(np.array([0, 1]), np.array([0.1, 0.2]), 1.0)
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0 and m["detected"] == 0
    # no defective image (a good-only test set): precision, recall, F1 absent; the false alarms counted
    m = evaluate_threshold(np.array([0, 0]), np.array([0.1, 0.2]), 0.15)
    assert math.isnan(m["precision"]) and math.isnan(m["recall"]) and math.isnan(m["f1"])
    assert m["false_positives"] == 1 and m["n_good"] == 2 and m["n_defective"] == 0


# --------------------------------------------------------------------------------------------------
# out-of-fold thresholds
# --------------------------------------------------------------------------------------------------


def _frame(category: str, defects: dict[str, list[float]], good: list[float]) -> pd.DataFrame:
    rows = [(category, "good", 0, s) for s in good]
    rows += [(category, t, 1, s) for t, scores in defects.items() for s in scores]
    return pd.DataFrame(rows, columns=["category", "defect_type", "label", "score"])


def test_out_of_fold_never_uses_own_score() -> None:
    # Recall target 1.0 with 10 folds (one defect each): in-sample the threshold sits below the weakest
    # defect (recall 1.0). Out of fold, the weakest defect (score 1) is predicted with a threshold fitted
    # on the other nine (minimum 2), so it is missed; every other fold's training set contains score 1.
    defects = [float(s) for s in range(1, 11)]
    frame = _frame("bottle", {"crack": defects}, good=[0.1 * i for i in range(10)])
    in_sample = evaluate_threshold(
        frame["label"].to_numpy(), frame["score"].to_numpy(), threshold_for_recall(np.array(defects), 1.0)
    )
    assert in_sample["recall"] == 1.0
    rows = recall_thresholds_out_of_fold(frame, recall_target=1.0, n_folds=10, seed=0)
    assert [r.defect_type for r in rows] == ["all", "crack"]
    for row in rows:
        assert row.threshold == np.nextafter(1.0, -np.inf)  # deployed threshold: fitted on all defects
        assert row.detected == 9 and row.n_defective == 10 and row.recall == pytest.approx(0.9)
        assert row.false_positives == 0 and row.precision == 1.0 and row.n_good == 10
        assert row.method == "recall>=1, 10-fold out-of-fold"


def test_out_of_fold_counts_per_type_and_determinism() -> None:
    rng = np.random.default_rng(0)
    frame = pd.concat(
        [
            _frame(
                "screw",
                {"scratch": list(rng.normal(2, 1, 12)), "thread": list(rng.normal(1, 1, 9))},
                good=list(rng.normal(0, 1, 30)),
            ),
            _frame("bottle", {"crack": list(rng.normal(3, 1, 4))}, good=list(rng.normal(0, 1, 3))),
        ],
        ignore_index=True,
    )
    rows = recall_thresholds_out_of_fold(frame, recall_target=0.95, n_folds=5, seed=0)
    keyed = {(r.category, r.defect_type): r for r in rows}
    expected_keys = [("bottle", "all"), ("bottle", "crack"), ("screw", "all"), ("screw", "scratch")]
    assert list(keyed) == [*expected_keys, ("screw", "thread")]
    assert (keyed["screw", "all"].n_defective, keyed["screw", "all"].n_good) == (21, 30)
    assert (keyed["screw", "thread"].n_defective, keyed["screw", "thread"].n_good) == (9, 30)
    assert keyed["screw", "all"].method == "recall>=0.95, 5-fold out-of-fold"
    # bottle: 4 defects, 3 good -> folds capped at the minority count
    assert keyed["bottle", "crack"].method == "recall>=0.95, 3-fold out-of-fold"
    for row in rows:
        sub = frame[frame["category"] == row.category]
        if row.defect_type != "all":
            sub = sub[sub["defect_type"].isin(["good", row.defect_type])]
        defect_scores = sub.loc[sub["label"] == 1, "score"].to_numpy()
        assert row.threshold == threshold_for_recall(defect_scores, 0.95)
        assert 0 <= row.detected <= row.n_defective and 0 <= row.false_positives <= row.n_good
        assert row.recall == pytest.approx(row.detected / row.n_defective)
        flagged = row.detected + row.false_positives
        assert row.precision == pytest.approx(row.detected / flagged if flagged else 0.0)
    assert recall_thresholds_out_of_fold(frame, 0.95, 5, seed=0) == rows
    other_seed = recall_thresholds_out_of_fold(frame, 0.95, 5, seed=1)
    assert [r.threshold for r in other_seed] == [r.threshold for r in rows]
    # a category's rows do not depend on which other categories are in the frame
    alone = recall_thresholds_out_of_fold(frame[frame["category"] == "screw"], 0.95, 5, seed=0)
    assert alone == [r for r in rows if r.category == "screw"]


def test_out_of_fold_single_defect_type_is_reported_without_metrics() -> None:
    frame = _frame("cable", {"cut": [5.0, 6.0, 7.0], "poke": [4.0]}, good=[1.0, 2.0, 3.0])
    rows = {r.defect_type: r for r in recall_thresholds_out_of_fold(frame)}
    poke = rows["poke"]
    assert poke.threshold == np.nextafter(4.0, -np.inf)
    assert math.isnan(poke.precision) and math.isnan(poke.recall) and math.isnan(poke.f1)
    assert poke.detected is None and poke.false_positives is None
    assert "out-of-fold evaluation impossible" in poke.method
    assert rows["cut"].method == "recall>=0.95, 3-fold out-of-fold"
    frame_out = rows_to_frame(list(rows.values()))
    assert str(frame_out["detected"].dtype) == "Int64"
    assert frame_out.loc[frame_out["defect_type"] == "poke", "detected"].isna().all()


def test_out_of_fold_rejects_bad_frames() -> None:
    frame = _frame("cable", {"cut": [5.0, 6.0]}, good=[1.0, 2.0])
    with pytest.raises(ValueError, match="lacks column"):
        recall_thresholds_out_of_fold(frame.drop(columns="category"))
    with pytest.raises(ValueError, match="finite"):
        recall_thresholds_out_of_fold(frame.assign(score=[1.0, np.nan, 5.0, 6.0]))
    with pytest.raises(ValueError, match="n_folds"):
        recall_thresholds_out_of_fold(frame, n_folds=1)


def test_stratified_folds_balance_labels_and_strata() -> None:
    labels = np.array([1] * 7 + [0] * 11)
    strata = np.array(["a"] * 4 + ["b"] * 3 + ["good"] * 11)
    folds = stratified_folds(labels, strata, 3, np.random.default_rng(0))
    for selector in (labels == 1, labels == 0, strata == "a", strata == "b"):
        counts = np.bincount(folds[selector], minlength=3)
        assert counts.max() - counts.min() <= 1


def test_rows_to_frame_columns() -> None:
    row = ThresholdRow("a", "all", 0.5, 1.0, 0.5, 2 / 3, 1, 2, 3, 0, "m")
    frame = rows_to_frame([row])
    assert list(frame.columns) == [
        "category",
        "defect_type",
        "threshold",
        "precision",
        "recall",
        "f1",
        "detected",
        "n_defective",
        "n_good",
        "false_positives",
        "method",
    ]
    assert frame.loc[0, "detected"] == 1
    assert rows_to_frame([]).empty


# --------------------------------------------------------------------------------------------------
# good-only calibration
# --------------------------------------------------------------------------------------------------


def test_good_only_threshold_known_value() -> None:
    scores = np.arange(1.0, 101.0)
    t = good_only_threshold(scores, 0.01)
    assert t == 100.0 and (scores > t).sum() == 0
    t = good_only_threshold(scores, 0.05)
    assert t in scores and (scores > t).sum() <= 5


def test_good_only_threshold_never_flags_every_image() -> None:
    rng = np.random.default_rng(0)
    for trial in range(3000):
        n = int(rng.integers(1, 12)) if trial % 2 else int(rng.integers(1, 400))
        kind = trial % 4
        if kind == 0:
            scores = np.full(n, rng.normal())  # all equal
        elif kind == 1:
            scores = rng.integers(0, 3, n).astype(np.float64)  # heavy ties
        else:
            scores = rng.normal(size=n)
        fpr = float(rng.choice([0.0, 0.001, 0.01, 0.05, 0.1, 0.3, 0.5, 0.9, 0.999]))
        t = good_only_threshold(scores, fpr)
        flagged = int((scores > t).sum())
        assert flagged < n, (scores, fpr, t)
        assert flagged <= math.ceil(fpr * n), (scores, fpr, t)
        assert t in scores


def test_good_only_threshold_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        good_only_threshold(np.array([]))
    with pytest.raises(ValueError, match="finite"):
        good_only_threshold(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="target_fpr"):
        good_only_threshold(np.array([0.1]), 1.0)


# --------------------------------------------------------------------------------------------------
# served_threshold
# --------------------------------------------------------------------------------------------------


def _thresholds_json(recall_threshold: float | None, n_defective: int) -> dict:
    return {
        "widget": {
            "recall_target": {"threshold": recall_threshold, "n_defective": n_defective},
            "good_only": {"threshold": 0.7, "target_fpr": 0.01},
        }
    }


def test_served_threshold_is_the_method_asked_for() -> None:
    detail = _thresholds_json(0.4, 6)
    assert served_threshold(detail, "widget", "recall_target") == ServedThreshold(0.4, "recall_target")
    assert served_threshold(detail, "widget", "good_only") == ServedThreshold(0.7, "good_only")


def test_served_threshold_falls_back_to_good_only_without_defective_images() -> None:
    served = served_threshold(_thresholds_json(None, 0), "widget", "recall_target")
    assert (served.threshold, served.method) == (0.7, "good_only")
    assert served.note is not None and served.note.startswith("widget has no defective test image")
    assert "registry.threshold: good_only" in served.note


def test_served_threshold_missing_entry_says_run_dvc_repro() -> None:
    with pytest.raises(AnomalySpotterError, match=r"no widget.recall_target.threshold; run `dvc repro`"):
        served_threshold(_thresholds_json(None, 3), "widget", "recall_target")  # defects, yet no threshold
    with pytest.raises(AnomalySpotterError, match=r"no gadget.good_only.threshold"):
        served_threshold(_thresholds_json(0.4, 6), "gadget", "good_only")
    with pytest.raises(AnomalySpotterError, match="registry.threshold is 'f1_max'"):
        served_threshold(_thresholds_json(0.4, 6), "widget", "f1_max")
