"""Batch scoring: a fitted detector over prepared images -> raw maps, image scores, per-image stats."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm import tqdm

from anomaly_spotter.core.anomaly_map import PixelCalibration, RegionRule, image_scores, map_stats
from anomaly_spotter.core.errors import ConfigError

if TYPE_CHECKING:  # annotations only: extract_metrics (load_maps) does not run detector code
    from anomaly_spotter.detectors.base import Detector

SCORES_FILE = "scores.csv"
STATS_FILE = "stats.json"
REGION_FILE = "region.json"
MAPS_DIR = "maps"


def region_rule(method: str, pixel_threshold: float | None, model: str = "the model") -> RegionRule:
    """The predicted-region rule for `process.region_threshold` = `method`, given the model's calibrated
    pixel threshold (None: a model saved without calibration); ConfigError when `calibrated` is asked of
    such a model, or for an unknown method."""
    if method == "calibrated" and pixel_threshold is None:
        raise ConfigError(
            f"{model} has no pixel calibration (it was trained before calibration existed); retrain it "
            "(dvc repro) or set process.region_threshold: otsu"
        )
    try:
        return RegionRule(method, pixel_threshold if method == "calibrated" else None)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def score_batches(
    detector: Detector,
    images: np.ndarray,
    batch_size: int,
    reduction: str,
    progress: bool = True,
    desc: str = "score",
    boxes: Sequence[tuple[int, int, int, int]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw maps `(N, H, W)` float32 and image scores `(N,)` for uint8 images `(N, H, W, 3)`, each image
    whole through the detector (a model of one window: `data.geometry.score_canvases` calls it so).

    A score is `reduction` of the image's map, or of its score map for a detector that smooths the two
    differently (`Detector.maps_and_score_maps`; an exported model has no such method: one map), inside
    the image's box `(top, left, height, width)` when `boxes` are given (an image padded into its canvas)."""
    maps = np.empty(images.shape[:3], dtype=np.float32)
    scores = []
    split = getattr(detector, "maps_and_score_maps", None)
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
        batch = np.asarray(images[start : start + batch_size])
        batch_maps, score_maps = split(batch) if split else (detector.anomaly_maps(batch),) * 2
        maps[start : start + batch_size] = batch_maps
        score_maps = np.asarray(score_maps, dtype=np.float32)
        if boxes is None:
            scores.append(image_scores(score_maps, reduction))
            continue
        for j, (top, left, h, w) in enumerate(boxes[start : start + batch_size]):
            scores.append(image_scores(score_maps[j : j + 1, top : top + h, left : left + w], reduction))
    return maps, np.concatenate(scores) if scores else np.empty(0, np.float32)


def map_path(out_dir: Path, row: pd.Series | tuple) -> Path:
    """Where the raw map of one index row lives: maps/<split>/<defect_type>/<image stem>.npy."""
    return out_dir / MAPS_DIR / row.split / row.defect_type / f"{Path(row.image_path).stem}.npy"


def write_scores(
    out_dir: Path,
    index: pd.DataFrame,
    maps: np.ndarray,
    scores: np.ndarray,
    region: RegionRule,
    calibration: PixelCalibration | None,
) -> pd.DataFrame:
    """Write one .npy map per image, scores.csv, the original's stats.json (anomaly_percentage: the share
    of pixels in `region`) and region.json (the rule and the model's calibration); returns the table."""
    table = index.copy()
    table["score"] = scores
    stats = [map_stats(m, region) for m in maps]
    for key in ("mean_score", "max_score", "anomaly_percentage"):
        table[key] = [s[key] for s in stats]
    for row, amap in zip(table.itertuples(), maps, strict=True):
        path = map_path(out_dir, row)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, amap)
    table.to_csv(out_dir / SCORES_FILE, index=False)
    (out_dir / STATS_FILE).write_text(json.dumps(stats_json(table), indent=2) + "\n")
    record = {"method": region.method, "pixel_threshold": region.pixel_threshold}
    record["calibration"] = calibration.to_dict() if calibration is not None else None
    (out_dir / REGION_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return table


def anomaly_pct_by_label(table: pd.DataFrame) -> dict[str, float]:
    """Mean anomaly_percentage of the good (label 0) and of the defective (label 1) rows of a scores
    table: anomaly_pct_good, anomaly_pct_defective (nan where there are no such rows)."""
    pct = table["anomaly_percentage"].to_numpy(dtype=np.float64)
    labels = table["label"].to_numpy()
    return {
        f"anomaly_pct_{name}": float(pct[labels == label].mean()) if (labels == label).any() else math.nan
        for name, label in (("good", 0), ("defective", 1))
    }


def load_region(out_dir: Path) -> RegionRule:
    """The region rule process_all applied (its region.json)."""
    raw = json.loads((out_dir / REGION_FILE).read_text())
    return RegionRule(raw["method"], raw["pixel_threshold"])


def stats_json(table: pd.DataFrame) -> dict[str, dict[str, list[dict[str, float | str]]]]:
    """Per-image stats in the original's shape, test images only (as the original reported them):

    `{category: {defect_type: [{image, mean_score, max_score, anomaly_percentage}]}}`.
    """
    out: dict[str, dict[str, list[dict[str, float | str]]]] = {}
    for row in table[table["split"] == "test"].itertuples():
        out.setdefault(row.category, {}).setdefault(row.defect_type, []).append(
            {
                "image": Path(row.image_path).name,
                "mean_score": round(float(row.mean_score), 6),
                "max_score": round(float(row.max_score), 6),
                "anomaly_percentage": round(float(row.anomaly_percentage), 4),
            }
        )
    return out


def load_maps(out_dir: Path, table: pd.DataFrame) -> np.ndarray:
    """The raw maps of `table`'s rows, stacked `(N, H, W)`."""
    return np.stack([np.load(map_path(out_dir, row)) for row in table.itertuples()])
