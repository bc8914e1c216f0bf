"""Stage `prepare`: index one category and cache its images on the category's canvas."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from anomaly_spotter.core.config import Params
from anomaly_spotter.data.prepared import prepare_category
from anomaly_spotter.feedback import feedback_dir, feedback_rows
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
        reviewed_rows(params, category),
        d.resolution,
        d.overlap,
    )


def reviewed_rows(params: Params, category: str) -> pd.DataFrame | None:
    """The index rows of the category's reviewed line images (feedback/<category>/), or None."""
    folder = feedback_dir(Path(params.feedback.root), category)
    if not folder.is_dir():
        return None
    return feedback_rows(folder, category, params.data.val_fraction, params.feedback.holdout_fraction)
