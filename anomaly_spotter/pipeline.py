"""One function per DVC stage: read inputs, compute, write exactly the stage's outputs.

No MLflow and no DVC here: the stage scripts in `stages/` call these and do the tracking, so every
step is importable and testable on its own. Each function returns the metrics its stage logs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly_spotter import paths
from anomaly_spotter.anomaly_map import minmax_normalize, otsu_mask
from anomaly_spotter.config import Params
from anomaly_spotter.data.prepare import load_prepared, prepare_category
from anomaly_spotter.detectors import build_detector, load_detector
from anomaly_spotter.models.base import Detector
from anomaly_spotter.scoring import SCORES_FILE, load_maps, score_batches, write_scores

HEADLINE_METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1_max")


def run_prepare(params: Params, category: str, progress: bool = True) -> dict[str, int]:
    d = params.data
    return prepare_category(
        Path(d.root),
        category,
        paths.prepared_dir(category),
        d.image_size,
        d.val_fraction,
        params.seed,
        progress,
    )


def run_train(params: Params, category: str) -> tuple[Detector, dict[str, float]]:
    """Fit the configured detector on the category's train split (val split for early stopping)."""
    import torch

    from anomaly_spotter.plots import plot_training_history

    torch.set_num_threads(params.train.num_threads)
    data = load_prepared(paths.prepared_dir(category))
    train, val = data.split("train"), data.split("val")
    detector = build_detector(params)
    start = time.perf_counter()
    detector.fit(np.asarray(train.images), np.asarray(val.images))
    fit_seconds = time.perf_counter() - start
    out = paths.model_dir(category)
    out.mkdir(parents=True, exist_ok=True)
    detector.save(out / paths.MODEL_FILE)
    history = training_history(detector)
    history.to_csv(out / paths.HISTORY_CSV, index=False)
    plot_training_history(history, out / paths.HISTORY_PNG)
    metrics = {
        "fit_seconds": fit_seconds,
        "n_train": len(train.index),
        "n_val": len(val.index),
        "model_size_mb": (out / paths.MODEL_FILE).stat().st_size / 1e6,
    }
    if len(history) and history["val_loss"].notna().any():
        best = history.loc[history["val_loss"].idxmin()]
        metrics |= {
            "epochs_run": len(history),
            "best_epoch": int(best["epoch"]),
            "best_val_loss": float(best["val_loss"]),
        }
    return detector, metrics


def training_history(detector: Detector) -> pd.DataFrame:
    """Per-epoch losses; an empty table for detectors with no training loop (patchcore)."""
    history = getattr(detector, "history_", None)
    return history if history is not None else pd.DataFrame(columns=["epoch", "train_loss", "val_loss"])


def run_process(params: Params, category: str, progress: bool = True) -> dict[str, float]:
    """Score every validation and test image; write maps, scores.csv and stats.json."""
    data = load_prepared(paths.prepared_dir(category)).split("val", "test")
    detector = load_detector(paths.model_dir(category) / paths.MODEL_FILE)
    start = time.perf_counter()
    maps, scores = score_batches(
        detector,
        data.images,
        params.process.batch_size,
        params.process.image_score,
        progress,
        f"score {category}",
    )
    seconds = time.perf_counter() - start
    out = paths.outputs_dir(category)
    out.mkdir(parents=True, exist_ok=True)
    write_scores(out, data.index, maps, scores)
    return {"n_images": len(scores), "ms_per_image": 1000.0 * seconds / max(len(scores), 1)}


def _map_stats_table(table: pd.DataFrame, maps: np.ndarray) -> pd.DataFrame:
    flat = maps.reshape(len(maps), -1)
    stats = table[["category", "split", "defect_type", "label", "image_path", "score"]].copy()
    stats["map_mean"] = flat.mean(axis=1)
    stats["map_max"] = flat.max(axis=1)
    stats["map_std"] = flat.std(axis=1)
    stats["map_p90"] = np.percentile(flat, 90, axis=1)
    return stats


def run_extract_metrics(params: Params) -> dict[str, Any]:
    """Per-image map stats to CSV; image/pixel AUROC, AUPRO, F1-max per category and overall to JSON."""
    from anomaly_spotter.metrics import summarize_category

    per_image, summary = [], {}
    for category in params.data.categories:
        out = paths.outputs_dir(category)
        table = pd.read_csv(out / SCORES_FILE, keep_default_na=False)
        maps = load_maps(out, table)
        per_image.append(_map_stats_table(table, maps))
        test = (table["split"] == "test").to_numpy()
        prepared = load_prepared(paths.prepared_dir(category))
        masks = np.asarray(prepared.masks[table.loc[test, "row"].to_numpy()])
        summary[category] = summarize_category(table[test].reset_index(drop=True), masks, maps[test])
    overall = {k: float(np.nanmean([summary[c][k] for c in summary])) for k in HEADLINE_METRICS}
    result = {"overall": overall, "categories": summary}
    paths.METRICS_ROOT.mkdir(parents=True, exist_ok=True)
    pd.concat(per_image, ignore_index=True).to_csv(paths.PER_IMAGE_CSV, index=False)
    paths.METRICS_JSON.write_text(json.dumps(_rounded(result), indent=2) + "\n")
    return result


def run_compute_thresholds(params: Params) -> dict[str, Any]:
    """Recall-target thresholds (out-of-fold figures) and good-only calibration, per category and type."""
    from anomaly_spotter.thresholds import (
        evaluate_threshold,
        good_only_threshold,
        recall_thresholds_out_of_fold,
        rows_to_frame,
    )

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
        summary[category] = {
            "recall_target": {
                k: _py(overall_row[k])
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
            },
            "per_defect": {
                r.defect_type: {
                    "threshold": r.threshold,
                    "precision": r.precision,
                    "recall": r.recall,
                    "f1": r.f1,
                    "detected": _k_of_n(r.detected, r.n_defective),
                    "method": r.method,
                }
                for r in cat_rows[cat_rows["defect_type"] != "all"].itertuples()
            },
            "good_only": {
                "threshold": good_t,
                "target_fpr": tp.good_fpr,
                **{k: _py(v) for k, v in good_eval.items()},
            },
            "method": str(overall_row["method"]),
        }
    headline = {
        c: {
            "f1": s["recall_target"]["f1"],
            "precision": s["recall_target"]["precision"],
            "recall": s["recall_target"]["recall"],
            "good_only_f1": s["good_only"]["f1"],
        }
        for c, s in summary.items()
    }
    headline_overall = {
        k: float(np.mean([h[k] for h in headline.values()])) for k in ("f1", "precision", "recall")
    }
    paths.METRICS_ROOT.mkdir(parents=True, exist_ok=True)
    frame.to_csv(paths.THRESHOLDS_CSV, index=False)
    paths.THRESHOLDS_JSON.write_text(json.dumps(_rounded(summary), indent=2) + "\n")
    threshold_metrics = {"overall": headline_overall, "categories": headline}
    paths.THRESHOLD_METRICS_JSON.write_text(json.dumps(_rounded(threshold_metrics), indent=2) + "\n")
    return threshold_metrics


def run_visualize(params: Params, category: str) -> dict[str, float]:
    """Example panels (capped per defect type), ROC / PR curves and score distributions."""
    from anomaly_spotter.plots import (
        plot_example,
        plot_pr,
        plot_roc,
        plot_score_distribution,
        pr_points,
        roc_points,
    )

    out = paths.plots_dir(category)
    examples = out / "examples"
    examples.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(paths.outputs_dir(category) / SCORES_FILE, keep_default_na=False)
    test = table[table["split"] == "test"].reset_index(drop=True)
    thresholds = json.loads(paths.THRESHOLDS_JSON.read_text())[category]
    threshold = float(thresholds["recall_target"]["threshold"])
    labels, scores = test["label"].to_numpy(), test["score"].to_numpy()
    roc_points(labels, scores).to_csv(out / "roc.csv", index=False)
    pr_points(labels, scores).to_csv(out / "pr.csv", index=False)
    plot_roc(labels, scores, out / "roc.png", f"{category}: image-level ROC")
    plot_pr(labels, scores, out / "pr.png", f"{category}: image-level precision-recall")
    plot_score_distribution(
        labels, scores, out / "score_distribution.png", f"{category}: image scores", threshold
    )

    shown = test.groupby("defect_type", sort=True).head(params.visualize.max_per_defect)
    prepared = load_prepared(paths.prepared_dir(category))
    images = np.asarray(prepared.images[shown["row"].to_numpy()])
    gt = np.asarray(prepared.masks[shown["row"].to_numpy()])
    detector = load_detector(paths.model_dir(category) / paths.MODEL_FILE)
    recon = detector.reconstruct(images)
    maps = load_maps(paths.outputs_dir(category), shown)
    for i, row in enumerate(shown.itertuples()):
        verdict = "DEFECTIVE" if row.score > threshold else "good"
        plot_example(
            images[i],
            None if recon is None else recon[i],
            maps[i],
            otsu_mask(minmax_normalize(maps[i])),
            gt[i] if row.label else None,
            examples / f"{row.defect_type}_{Path(row.image_path).stem}.png",
            f"{category}/{row.defect_type}/{Path(row.image_path).name}: score {row.score:.4f} -> {verdict}",
        )
    return {"n_examples": len(shown)}


def _k_of_n(k: Any, n: int) -> str:
    """The original's "defects detected k/n"; "-" when it could not be measured out-of-fold."""
    return f"{int(k)}/{int(n)}" if not pd.isna(k) else f"-/{int(n)}"


def _py(value: Any) -> Any:
    if value is pd.NA:
        return None
    return value.item() if isinstance(value, np.generic) else value


def _rounded(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, float | np.floating):
        return None if not np.isfinite(obj) else round(float(obj), 6)
    return _py(obj)
