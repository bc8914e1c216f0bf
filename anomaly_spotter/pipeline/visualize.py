"""Stage `visualize`: ROC / PR tables and figures, score distribution and example panels of a category."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from anomaly_spotter.core.config import Params
from anomaly_spotter.core.overlay import category_scale, render_overlay
from anomaly_spotter.core.plots import (
    plot_example,
    plot_pr,
    plot_roc,
    plot_score_distribution,
    pr_points,
    roc_points,
)
from anomaly_spotter.core.scoring import SCORES_FILE, load_maps, load_region
from anomaly_spotter.core.thresholds import served_threshold
from anomaly_spotter.data.prepared import load_prepared
from anomaly_spotter.detectors import load_detector
from anomaly_spotter.pipeline import paths


def run_visualize(params: Params, category: str) -> dict[str, float]:
    """Example panels (capped per defect type), ROC / PR curves and score distributions.

    Each example panel holds the annotated overlay `predict --out` writes (the category's colour scale,
    the verdict at the threshold the category is served with: registry.threshold, or good_only for a
    category without defective test images, as register applies it) and the predicted region against the
    ground truth (none drawn for a defect image without a mask). The returned metrics include
    `threshold_good_only` (1 when the good-only threshold was used)."""
    out = paths.plots_dir(category)
    examples = out / "examples"
    examples.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(paths.outputs_dir(category) / SCORES_FILE, keep_default_na=False)
    test = table[table["split"] == "test"].reset_index(drop=True)
    served = served_threshold(
        json.loads(paths.THRESHOLDS_JSON.read_text()), category, params.registry.threshold
    )
    threshold = served.threshold
    if served.note:
        print(f"visualize {category}: {served.note}")
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
    calibration = detector.pixel_calibration_
    region = load_region(paths.outputs_dir(category))
    recon = detector.reconstruct(images)
    maps = load_maps(paths.outputs_dir(category), shown)
    for i, row in enumerate(shown.itertuples()):
        name = f"{category}/{row.defect_type}/{Path(row.image_path).name}"
        mask = region.mask(maps[i])
        scale = category_scale(
            None if calibration is None else calibration.threshold,
            None if calibration is None else calibration.good_max,
            threshold,
            params.process.image_score,
            maps[i],
        )
        plot_example(
            images[i],
            None if recon is None else recon[i],
            render_overlay(images[i], maps[i], mask, scale, row.score, threshold, Path(row.image_path).name),
            mask,
            gt[i] if row.label and row.has_mask else None,
            examples / f"{row.defect_type}_{Path(row.image_path).stem}.png",
            name,
        )
    return {"n_examples": len(shown), "threshold_good_only": int(served.method == "good_only")}
