"""The one interface every detector implements; every stage after `train` is written against it.

Sign convention, everywhere in this package: higher score = more anomalous.

Images cross this interface as uint8 arrays `(N, H, W, 3)` (RGB, the cached size from `prepare`);
each detector does its own normalisation. Raw anomaly maps come back as float32 `(N, H, W)` at the
same H, W as the input images, smoothed but *not* min-max normalised, so maps of different images
stay comparable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

from anomaly_spotter.core.anomaly_map import PixelCalibration
from anomaly_spotter.data.geometry import GEOMETRY_KEY, Geometry

if TYPE_CHECKING:
    import pandas as pd
    import torch

# Writes a fitted detector's ONNX graph: (path, image side S, int8 nearest-neighbour search) -> None.
# The graph maps one normalised image `GRAPH_INPUT` (1, 3, S, S) to its raw map `GRAPH_OUTPUT` (1, S, S),
# which the torch-free runtime (serving/edge.py) runs; see deploy/export.py.
Exporter = Callable[[Path, int, bool], None]
GRAPH_INPUT = "images"
GRAPH_OUTPUT = "maps"
GRAPH_OPSET = 17

# Key of the pixel calibration in a saved detector file (absent in files saved before it existed).
CALIBRATION_KEY = "pixel_calibration"


class Detector(ABC):
    """A fitted-on-good-images anomaly detector (scikit-learn style: learned state ends in `_`)."""

    kind: ClassVar[str]  # the registry key (params.yaml `model.name`), saved in the model file
    Options: ClassVar[type]  # frozen dataclass that params.yaml's `model.<kind>` section is parsed into
    requirements: ClassVar[tuple[str, ...]] = ()  # pip packages a served model needs beyond the core's
    data_parallel: ClassVar[bool] = False  # fits in a torchrun group (`train.world_size` > 1)
    progress: bool = True  # `fit` shows a progress bar (on stderr)
    # Set by `fit`: the training history, a table whose first column is the step (epoch, or bank_size for
    # PatchCore's coverage) and each other column a curve (train_loss, val_loss; coverage per member);
    # the train stage writes it as the category's DVC plot. `epoch_seconds_`: wall time of each epoch.
    history_: pd.DataFrame | None = None
    epoch_seconds_: list[float] | None = None
    # The category's pixel threshold, fitted after `fit` on validation good maps (pipeline.train);
    # saved with the detector, so every consumer of the model file gets the same predicted region.
    pixel_calibration_: PixelCalibration | None = None
    # The category's canvas and windows (data.geometry), set by the train stage and saved with the
    # detector: every scoring path fits images into it and blends its windows (None: a model saved before
    # canvases existed, which scores whole square images at its input size).
    geometry_: Geometry | None = None

    @classmethod
    @abstractmethod
    def from_options(cls, options: Any, seed: int) -> Self:
        """An unfitted detector from its parsed `Options` (`detectors.parse_options`)."""

    @abstractmethod
    def fit(self, train_images: np.ndarray, val_images: np.ndarray | None = None) -> Self:
        """Learn normality from good images `(N, H, W, 3)` uint8; `val_images` for early stopping."""

    @abstractmethod
    def anomaly_maps(self, images: np.ndarray) -> np.ndarray:
        """Raw anomaly maps `(N, H, W)` float32 for uint8 images `(N, H, W, 3)`."""

    @abstractmethod
    def module(self) -> torch.nn.Module:
        """The fitted torch module (what is logged to MLflow)."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild the fitted detector: `{"kind", "config", "state_dict", ...}`."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild a fitted detector from `state()`."""

    def maps_and_score_maps(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The raw maps and the maps image scores are reduced from (`process.image_score`): the same
        array unless the detector smooths the two differently (unet_ae `score_sigma`)."""
        maps = self.anomaly_maps(images)
        return maps, maps

    def fit_device(self) -> str:
        """Where `fit` runs (`cpu` | `cuda`); scoring always runs on the CPU."""
        return "cpu"

    def exporter(self) -> Exporter | None:
        """What writes this fitted detector's ONNX graph, or None: `anomaly-spotter export` refuses it."""
        return None

    def reconstruct(self, images: np.ndarray) -> np.ndarray | None:
        """uint8 reconstructions `(N, H, W, 3)` for detectors that reconstruct, else None."""
        return None

    def save(self, path: Path) -> None:
        """`state()` (plus the pixel calibration and the geometry, if set) to `path`, loadable with
        weights_only."""
        state = self.state()
        if self.pixel_calibration_ is not None:
            state[CALIBRATION_KEY] = self.pixel_calibration_.to_dict()
        if self.geometry_ is not None:
            state[GEOMETRY_KEY] = self.geometry_.to_dict()
        path.parent.mkdir(parents=True, exist_ok=True)
        import torch

        torch.save(state, path)
