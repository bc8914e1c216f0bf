"""Stage `prepare`: index one category and cache its resized images."""

from __future__ import annotations

from pathlib import Path

from anomaly_spotter.core.config import Params
from anomaly_spotter.data.prepared import prepare_category
from anomaly_spotter.pipeline import paths


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
