"""Stage `extract_metrics`: per-image map statistics and the detection metrics of every category."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from anomaly_spotter.core.anomaly_map import RegionRule
from anomaly_spotter.core.config import Params
from anomaly_spotter.core.metrics import image_auroc, mean_present, region_metrics, summarize_category
from anomaly_spotter.core.scoring import SCORES_FILE, anomaly_pct_by_label, load_maps, load_region
from anomaly_spotter.data.index import FIELD_SPLIT
from anomaly_spotter.data.prepared import load_prepared
from anomaly_spotter.pipeline import paths
from anomaly_spotter.pipeline.results import covers_dataset, write_json

HEADLINE_METRICS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "f1_max",
    "pixel_precision",
    "pixel_recall",
    "pixel_iou",
    "anomaly_pct_good",
    "anomaly_pct_defective",
    "masked",
)


def _map_stats_table(table: pd.DataFrame, maps: np.ndarray) -> pd.DataFrame:
    flat = maps.reshape(len(maps), -1)
    stats = table[["category", "split", "defect_type", "label", "image_path", "score"]].copy()
    stats["map_mean"] = flat.mean(axis=1)
    stats["map_max"] = flat.max(axis=1)
    stats["map_std"] = flat.std(axis=1)
    stats["map_p90"] = np.percentile(flat, 90, axis=1)
    return stats


def _region_summary(
    test: pd.DataFrame, masks: np.ndarray, maps: np.ndarray, region: RegionRule
) -> dict[str, float]:
    """Pixel precision / recall / IoU of process_all's predicted regions against the ground truth (test
    images whose pixel labels are known only: has_mask), the mean anomaly_percentage of the good and of
    the defective test images, and `masked`: the share of defective test images with a mask (nan
    without defective images), with its count n_masked_defective."""
    labels = test["label"].to_numpy()
    known = test["has_mask"].to_numpy().astype(bool)
    regions = np.stack([region.mask(m) for m in maps]) if len(maps) else np.zeros(masks.shape, bool)
    n_defective = int((labels == 1).sum())
    n_masked = int(((labels == 1) & known).sum())
    return {
        **region_metrics(masks[known], regions[known]),
        **anomaly_pct_by_label(test),
        "masked": n_masked / n_defective if n_defective else float("nan"),
        "n_masked_defective": n_masked,
    }


def field_summary(field: pd.DataFrame) -> dict[str, Any]:
    """The field set of one category on its own (its rates at a threshold are compute_thresholds'): how
    many reviewed goods were held out and how many confirmed defects there are, per defect type, and how
    well the scores separate them (image AUROC, where both are present)."""
    labels = field["label"].to_numpy()
    scores = field["score"].to_numpy(dtype=np.float64)
    both = 0 < labels.sum() < len(labels)
    defects = field[field["label"] == 1]
    return {
        "n_field_good": int((labels == 0).sum()),
        "n_field_defective": int(labels.sum()),
        "field_auroc": image_auroc(labels, scores) if both else None,
        "field_defect_types": {str(k): int(v) for k, v in defects["defect_type"].value_counts().items()},
    }


def run_extract_metrics(params: Params) -> dict[str, Any]:
    """Per-image map stats to CSV; image/pixel AUROC, AUPRO, F1-max per category and overall to JSON (the
    pixel metrics at the maps' resolution, `map_height` x `map_width`: the working image's, data.geometry;
    the overall values null when the run covers only some of the dataset's categories: `covers_dataset`); a
    category with a field set (reviewed line images) gets its `field` summary (`field_summary`)."""
    per_image, summary = [], {}
    for category in params.data.categories:
        out = paths.outputs_dir(category)
        table = pd.read_csv(out / SCORES_FILE, keep_default_na=False)
        maps = load_maps(out, table)
        per_image.append(_map_stats_table(table, maps))
        test = (table["split"] == "test").to_numpy()
        prepared = load_prepared(paths.prepared_dir(category))
        masks = np.asarray(prepared.masks[table.loc[test, "row"].to_numpy()])
        summary[category] = summarize_category(
            table[test].reset_index(drop=True),
            masks,
            maps[test],
            params.metrics.aupro_fpr_limit,
            pixel_rows=table.loc[test, "has_mask"].to_numpy().astype(bool),
        )
        summary[category] |= _region_summary(table[test], masks, maps[test], load_region(out))
        # pixel metrics are computed at the maps' resolution: the working resolution (data.resolution)
        summary[category]["map_height"], summary[category]["map_width"] = maps.shape[1:]
        field = table[table["split"] == FIELD_SPLIT]
        if len(field):  # reviewed line images held out of training (anomaly_spotter.feedback)
            summary[category]["field"] = field_summary(field)
    whole = covers_dataset(params)  # a mean over some of the dataset's categories is not "overall"
    overall = {k: mean_present([summary[c][k] for c in summary]) if whole else None for k in HEADLINE_METRICS}
    result = {"overall": overall, "categories": summary}
    paths.METRICS_ROOT.mkdir(parents=True, exist_ok=True)
    pd.concat(per_image, ignore_index=True).to_csv(paths.PER_IMAGE_CSV, index=False)
    write_json(paths.METRICS_JSON, result)
    return result
