"""The detectors and their one registry: params.yaml's `model.name` -> the `Detector` class.

Every consumer reads this table: the train stage (`build_detector`), scoring (`load_detector`), the served
model's requirements, the exporter (`Detector.exporter`) and the benchmarks. A new detector is a folder
(`network.py`, its options dataclass, `detector.py`) plus one line in `DETECTORS`; the contract test
(tests/unit/detectors/test_contract.py) then runs it through fit -> maps -> save -> load -> serve -> export.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_spotter.core.config import Params, from_mapping
from anomaly_spotter.core.errors import ConfigError

if TYPE_CHECKING:
    from anomaly_spotter.detectors.base import Detector

__all__ = ["DETECTORS", "build_detector", "detector_class", "load_detector", "names", "parse_options"]

# model.name -> "module:Class", imported on first use (a detector's torch code loads only when it is used)
DETECTORS: dict[str, str] = {
    "patchcore": "anomaly_spotter.detectors.patchcore.detector:PatchCoreDetector",
    "unet_ae": "anomaly_spotter.detectors.unet_ae.detector:UNetAEDetector",
}


def names() -> tuple[str, ...]:
    return tuple(DETECTORS)


def detector_class(name: str) -> type[Detector]:
    """The registered class for `name` (params.yaml `model.name`, or the `kind` saved in a model file)."""
    if name not in DETECTORS:
        raise ConfigError(f"model.name is {name!r}; choose one of {', '.join(DETECTORS)}")
    module, _, cls = DETECTORS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def parse_options(name: str, section: Mapping[str, Any] | None, seed: int = 0) -> Any:
    """params.yaml's `model.<name>` section -> the detector's frozen `Options` dataclass, checked key by key
    (unknown keys and wrong types raise ConfigError naming `model.<name>.<key>`). An `Options` with a `seed`
    field gets the global `seed` unless the section sets its own."""
    options_cls = detector_class(name).Options
    raw = dict(section or {})
    if "seed" in {f.name for f in dataclasses.fields(options_cls)}:
        raw.setdefault("seed", seed)
    return from_mapping(options_cls, raw, f"model.{name}")


def build_detector(params: Params) -> Detector:
    """An unfitted detector for `params.model.name`, configured from its params section."""
    name = params.model.name
    options = parse_options(name, params.model.options(), params.seed)
    return detector_class(name).from_options(options, params.seed)


def load_detector(path: Path) -> Detector:
    """Rebuild a fitted detector from the file `Detector.save` wrote (weights only, no pickle)."""
    import torch

    from anomaly_spotter.core.anomaly_map import PixelCalibration
    from anomaly_spotter.data.geometry import GEOMETRY_KEY, Geometry
    from anomaly_spotter.detectors.base import CALIBRATION_KEY

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found; run the train stage first (dvc repro)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    detector = detector_class(state["kind"]).from_state(state)
    if CALIBRATION_KEY in state:
        detector.pixel_calibration_ = PixelCalibration.from_dict(state[CALIBRATION_KEY])
    if GEOMETRY_KEY in state:
        detector.geometry_ = Geometry.from_dict(state[GEOMETRY_KEY])
    return detector
