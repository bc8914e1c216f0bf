"""Stage `compute_thresholds`: deployable thresholds with out-of-fold figures; the DVC headline metrics."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from anomaly_spotter.core.config import Params
from anomaly_spotter.core.metrics import mean_present
from anomaly_spotter.core.thresholds import (
    FIELD_KEYS,
    evaluate_threshold,
    false_alarm_rates,
    field_rates,
    good_only_threshold,
    recall_thresholds_out_of_fold,
    rows_to_frame,
)
from anomaly_spotter.data.index import FIELD_SPLIT
from anomaly_spotter.pipeline import paths
from anomaly_spotter.pipeline.results import covers_dataset, k_of_n, py, write_json

# The DVC metrics files (metrics/categories/<c>.json, metrics/overall.json), what `dvc metrics show` prints
# in 120 columns: image AUROC, pixel AUROC and AUPRO from extract_metrics, then the out-of-fold figures at the
# recall-target threshold. The predicted region's pixel precision / recall / IoU and `masked` (the share of
# defective test images with a mask) stay in metrics/metrics.json. A metric that needs defective images (or
# masks) the category lacks is null: `dvc metrics show` prints "-".
IMAGE_HEADLINE = ("image_auroc", "pixel_auroc", "aupro")
# false_alarm_rate: the share of good test images the threshold flags (out-of-fold, as precision and recall)
THRESHOLD_HEADLINE = ("f1", "precision", "recall", "false_alarm_rate")


def run_compute_thresholds(params: Params) -> dict[str, Any]:
    """Recall-target thresholds (out-of-fold figures) and good-only calibration, per category and type.

    Writes thresholds.csv / .json (full detail) and the DVC metrics: metrics/categories/<c>.json (image
    AUROC, pixel AUROC, AUPRO from metrics.json; F1, precision, recall, false-alarm rate out-of-fold;
    field_recall and field_false_alarm_rate on the field set of reviewed line images, where there is one)
    and their mean, metrics/overall.json (all null when the run covers only some of the dataset's
    categories: `covers_dataset`). Each threshold also has its false-alarm rate on good test and
    validation images.
    Returns those per category (plus good_only_f1) and overall, for MLflow.
    """
    tp = params.thresholds
    per_image = pd.read_csv(paths.PER_IMAGE_CSV, keep_default_na=False)
    test = per_image[per_image["split"] == "test"].reset_index(drop=True)
    rows = recall_thresholds_out_of_fold(test, tp.recall_target, tp.n_folds, params.seed)
    frame = rows_to_frame(rows)
    summary: dict[str, Any] = {}
    for category in params.data.categories:
        cat_rows = frame[frame["category"] == category]
        overall_row = cat_rows[cat_rows["defect_type"] == "all"].iloc[0]
        val = per_image[(per_image["category"] == category) & (per_image["split"] == "val")]
        cat_test = test[test["category"] == category]
        good_t = good_only_threshold(val["score"].to_numpy(), tp.good_fpr)
        good_eval = evaluate_threshold(cat_test["label"].to_numpy(), cat_test["score"].to_numpy(), good_t)
        val_goods = val.loc[val["label"] == 0, "score"].to_numpy()
        field = per_image[(per_image["category"] == category) & (per_image["split"] == FIELD_SPLIT)]

        def on_field(threshold: float | None, field: pd.DataFrame = field) -> dict[str, Any]:
            """The threshold on the field set, for a category that has one (else nothing)."""
            if field.empty:
                return {}
            return field_rates(field["label"].to_numpy(), field["score"].to_numpy(), threshold)

        recall_entry = {
            k: py(overall_row[k])
            for k in (
                "threshold",
                "precision",
                "recall",
                "f1",
                "detected",
                "n_defective",
                "false_positives",
                "n_good",
            )
        }
        summary[category] = {
            "recall_target": {
                **recall_entry,
                **false_alarm_rates(
                    recall_entry["false_positives"],
                    recall_entry["n_good"],
                    val_goods,
                    recall_entry["threshold"],
                ),
                **on_field(recall_entry["threshold"]),
            },
            "per_defect": {
                r.defect_type: {
                    "threshold": r.threshold,
                    "precision": r.precision,
                    "recall": r.recall,
                    "f1": r.f1,
                    "detected": k_of_n(r.detected, r.n_defective),
                    "method": r.method,
                }
                for r in cat_rows[cat_rows["defect_type"] != "all"].itertuples()
            },
            "good_only": {
                "threshold": good_t,
                "target_fpr": tp.good_fpr,
                **{k: py(v) for k, v in good_eval.items()},
                **false_alarm_rates(good_eval["false_positives"], good_eval["n_good"], val_goods, good_t),
                **on_field(good_t),
            },
            "method": str(overall_row["method"]),
        }
    image_metrics = json.loads(paths.METRICS_JSON.read_text())["categories"]
    # a category with a field set (reviewed line images) also gets its recall and false-alarm rate there
    headline = {
        c: {
            **{k: image_metrics[c][k] for k in IMAGE_HEADLINE},
            **{k: s["recall_target"][k] for k in THRESHOLD_HEADLINE + FIELD_KEYS if k in s["recall_target"]},
        }
        for c, s in summary.items()
    }
    whole = covers_dataset(params)
    overall = {
        k: mean_present([h[k] for h in headline.values()]) if whole else None
        for k in IMAGE_HEADLINE + THRESHOLD_HEADLINE
    }
    paths.METRICS_ROOT.mkdir(parents=True, exist_ok=True)
    frame.to_csv(paths.THRESHOLDS_CSV, index=False)
    write_json(paths.THRESHOLDS_JSON, summary)
    paths.CATEGORY_METRICS_DIR.mkdir(parents=True, exist_ok=True)
    for category, values in headline.items():
        write_json(paths.category_metrics_file(category), values)
    write_json(paths.OVERALL_METRICS_JSON, overall)
    good_only = {c: {"good_only_f1": s["good_only"]["f1"]} for c, s in summary.items()}
    return {"overall": overall, "categories": {c: {**headline[c], **good_only[c]} for c in headline}}
