"""Stage `process_all`: raw anomaly maps, image scores and the original's stats for one category."""

from __future__ import annotations

import time

from anomaly_spotter.core.config import Params
from anomaly_spotter.core.errors import ConfigError
from anomaly_spotter.core.scoring import anomaly_pct_by_label, region_rule, write_scores
from anomaly_spotter.data.geometry import score_canvases, scoring_geometry
from anomaly_spotter.data.index import FIELD_SPLIT
from anomaly_spotter.data.prepared import load_prepared
from anomaly_spotter.detectors import load_detector
from anomaly_spotter.pipeline import paths


def run_process(params: Params, category: str, progress: bool = True) -> dict[str, float]:
    """Score every validation, test and field image (reviewed images held out of training, from
    anomaly_spotter.feedback); write maps, scores.csv, stats.json and region.json.

    The predicted region (and so anomaly_percentage) follows `process.region_threshold`; the returned
    metrics include the mean anomaly_percentage of the good and of the defective test images."""
    data = load_prepared(paths.prepared_dir(category)).split("val", "test", FIELD_SPLIT)
    model_file = paths.model_dir(category) / paths.MODEL_FILE
    detector = load_detector(model_file)
    calibration = detector.pixel_calibration_
    region = region_rule(
        params.process.region_threshold,
        None if calibration is None else calibration.threshold,
        str(model_file),
    )
    geometry = scoring_geometry(detector, data.images.shape[1])
    if geometry != data.geometry:
        raise ConfigError(
            f"{model_file} was trained on {geometry.describe()} but {paths.prepared_dir(category)} holds "
            f"{data.geometry.describe()}; retrain it on the prepared images (dvc repro)"
        )
    start = time.perf_counter()
    maps, scores = score_canvases(
        detector,
        data.images,
        geometry,
        params.process.batch_size,
        params.process.image_score,
        None,
        progress,
        f"score {category}",
    )
    seconds = time.perf_counter() - start
    out = paths.outputs_dir(category)
    out.mkdir(parents=True, exist_ok=True)
    table = write_scores(out, data.index, maps, scores, region, calibration)
    return {
        "n_images": len(scores),
        "ms_per_image": 1000.0 * seconds / max(len(scores), 1),
        **anomaly_pct_by_label(table[table["split"] == "test"]),
    }
