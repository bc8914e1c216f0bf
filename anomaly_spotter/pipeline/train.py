"""Stage `train`: fit the configured detector; save it and its per-epoch history."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from anomaly_spotter.core.anomaly_map import PixelCalibration
from anomaly_spotter.core.config import Params, flatten
from anomaly_spotter.data.geometry import score_canvases, scoring_geometry
from anomaly_spotter.data.prepared import load_prepared
from anomaly_spotter.detectors import build_detector, distributed, parse_options
from anomaly_spotter.detectors.base import Detector
from anomaly_spotter.pipeline import paths

CALIBRATION_BATCH = 16


def run_train(params: Params, category: str, progress: bool = True) -> tuple[Detector, dict[str, float]]:
    """Fit the configured detector on the category's train split (val split for early stopping).

    Then fits the pixel threshold (`train.pixel_quantile` of the validation good maps), kept in the model.
    Writes models/<c>/model.pt and models/<c>/history/ (CSV + PNG: losses per epoch, or coverage per
    bank size).
    In a torchrun group (`train.world_size` > 1) every process fits (`train.num_threads` split between
    them) and only rank 0 goes on; the others return the detector and no metrics.
    """
    import torch

    from anomaly_spotter.core.plots import plot_training_history

    torch.set_num_threads(max(1, params.train.num_threads // distributed.world_size()))
    data = load_prepared(paths.prepared_dir(category))
    train, val = data.split("train"), data.split("val")
    geometry = data.geometry
    detector = build_detector(params)
    detector.progress = progress
    start = time.perf_counter()
    detector.fit(geometry.cut(train.images), geometry.cut(val.images))  # the windows of every image
    fit_seconds = time.perf_counter() - start
    detector.geometry_ = geometry
    if not distributed.is_main():
        return detector, {}
    calibration = calibrate_pixels(detector, val.images, params.train.pixel_quantile)
    out = paths.model_dir(category)
    history_dir = out / paths.HISTORY_DIR
    history_dir.mkdir(parents=True, exist_ok=True)
    detector.save(out / paths.MODEL_FILE)
    history = training_history(detector)
    kept_epoch = getattr(detector, "best_epoch_", None)  # the weights saved (training.checkpoint)
    if len(history):
        history.to_csv(history_dir / paths.HISTORY_CSV, index=False)
        plot_training_history(history, history_dir / paths.HISTORY_PNG, kept_epoch)
    metrics = {
        "fit_seconds": fit_seconds,
        "n_train": len(train.index),
        "n_val": len(val.index),
        "n_windows": geometry.n_windows,
        "world_size": distributed.world_size(),
        "model_size_mb": (out / paths.MODEL_FILE).stat().st_size / 1e6,
        "pixel_threshold": calibration.threshold,
        "good_pixel_max": calibration.good_max,
    }
    if "val_loss" in history.columns and history["val_loss"].notna().any():
        best = history.loc[history["val_loss"].idxmin()]
        metrics |= {
            "epochs_run": len(history),
            "best_epoch": int(best["epoch"]),  # the lowest validation loss
            "best_val_loss": float(best["val_loss"]),
        }
        if kept_epoch is not None:
            metrics["kept_epoch"] = int(kept_epoch)
    # unet_ae's initialisations (training.candidates), of each member (training.members; the first unprefixed)
    for m, losses in enumerate(getattr(detector, "member_candidate_losses_", None) or []):
        prefix = f"member{m}_" if m else ""
        metrics |= {f"{prefix}candidate_loss_{i}": float(v) for i, v in enumerate(losses)}
        if losses:
            metrics[f"{prefix}candidate_chosen"] = int(np.argmin(losses))
    if epoch_seconds := detector.epoch_seconds_:
        metrics["seconds_per_epoch"] = float(np.mean(epoch_seconds))
    return detector, metrics


def calibrate_pixels(detector: Detector, val_images: np.ndarray, quantile: float) -> PixelCalibration:
    """Fit the detector's pixel threshold on the raw maps of the validation good images `(N, Hc, Wc, 3)`
    (canvas images: the blended maps of the detector's geometry) and attach it (`Detector.save` keeps it
    in the model file)."""
    if len(val_images) == 0:
        raise ValueError("no validation images to calibrate the pixel threshold on; raise data.val_fraction")
    geometry = scoring_geometry(detector, np.asarray(val_images[:1]).shape[1])
    maps, _ = score_canvases(detector, val_images, geometry, CALIBRATION_BATCH, "max")
    detector.pixel_calibration_ = PixelCalibration.fit(maps, quantile)
    return detector.pixel_calibration_


def training_history(detector: Detector) -> pd.DataFrame:
    """The detector's training history (`Detector.history_`: a step column, then curves); an empty table
    for a detector that records none."""
    history = detector.history_
    return history if history is not None else pd.DataFrame()


def train_params_logged(params: Params) -> dict[str, Any]:
    """What `train` reads, flat and named as in params.yaml: model.name, model.<active>.* (parsed, so with
    the defaults filled in) and train.*."""
    name = params.model.name
    options = parse_options(name, params.model.options(), params.seed)
    return {"model.name": name, **flatten(options, f"model.{name}."), **flatten(params.train, "train.")}
