"""Detector registry: params -> an unfitted detector, a saved file -> a fitted one."""

from __future__ import annotations

from pathlib import Path

import torch

from anomaly_spotter.anomaly_map import PixelCalibration
from anomaly_spotter.config import Params
from anomaly_spotter.errors import ConfigError
from anomaly_spotter.models.base import CALIBRATION_KEY, Detector

__all__ = ["Detector", "build_detector", "load_detector", "detector_class"]


def detector_class(kind: str) -> type[Detector]:
    if kind == "unet_ae":
        from anomaly_spotter.detectors.unet_ae import UNetAEDetector

        return UNetAEDetector
    if kind == "patchcore":
        from anomaly_spotter.detectors.patchcore import PatchCoreDetector

        return PatchCoreDetector
    raise ConfigError(f"unknown detector {kind!r}; choose unet_ae or patchcore")


def build_detector(params: Params) -> Detector:
    """An unfitted detector for `params.model.name`, configured from its params section."""
    return detector_class(params.model.name).from_options(params.model.options(), params.train, params.seed)


def load_detector(path: Path) -> Detector:
    """Rebuild a fitted detector from the file `Detector.save` wrote (weights only, no pickle)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found; run the train stage first (dvc repro)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    detector = detector_class(state["kind"]).from_state(state)
    if CALIBRATION_KEY in state:
        detector.pixel_calibration_ = PixelCalibration.from_dict(state[CALIBRATION_KEY])
    return detector
