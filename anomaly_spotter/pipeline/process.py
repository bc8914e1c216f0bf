"""Stage `process_all`: raw anomaly maps, image scores and the original's stats for one category."""

from __future__ import annotations

import time

from anomaly_spotter import paths
from anomaly_spotter.config import Params
from anomaly_spotter.data.prepare import load_prepared
from anomaly_spotter.detectors import load_detector
from anomaly_spotter.scoring import score_batches, write_scores


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
