"""The exported (ONNX) detector at scoring time: NumPy + ONNX Runtime, no torch, no MLflow.

`anomaly-spotter export` (`anomaly_spotter.deploy.export`) writes an MLflow pyfunc model folder whose detector
artifact is an *edge folder* (`export.json` + `detector.onnx`) instead of `model.pt`:

    OUT/MLmodel, OUT/python_model.pkl ...          the pyfunc (ServiceModel, as `register` logs it)
    OUT/artifacts/service.json                     inference.InferenceConfig: size, threshold, region rule
    OUT/artifacts/edge/export.json                 what was exported: precision, source model, calibration
    OUT/artifacts/edge/detector.onnx               normalised images (N, 3, S, S) -> raw maps (N, S, S)

`OnnxDetector` implements the Detector interface's `anomaly_maps` (uint8 `(N, S, S, 3)` -> float32 raw
maps `(N, S, S)`, the same maps the torch detector gives: smoothing is inside the graph) and carries
the model's pixel calibration, so `inference.score_images` turns its maps into the same scores,
verdicts and regions. `load_edge_model(OUT)` scores an export folder with only this module's imports
(the light path `anomaly-spotter predict --model OUT` takes); MLflow's loader reaches the same detector
through `ServiceModel.load_context` -> `load_scoring_parts`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_spotter.core.anomaly_map import PixelCalibration
from anomaly_spotter.core.errors import AnomalySpotterError
from anomaly_spotter.data.images import to_tensor_normalized
from anomaly_spotter.detectors.base import GRAPH_INPUT, GRAPH_OUTPUT
from anomaly_spotter.serving.inference import InferenceConfig, score_images

MANIFEST_FILE = "export.json"
ONNX_FILE = "detector.onnx"
EDGE_ARTIFACT_DIR = "edge"  # the detector artifact's folder name inside the pyfunc's artifacts/
CONFIG_FILE = "service.json"  # the service model's InferenceConfig (serving imports it from here)
ARTIFACTS_DIR = "artifacts"
ONNX_KIND = "onnx"
# images per ONNX Runtime call: the graph has static shapes (`export.export_onnx`); ONNX Runtime's threads
# split each image's convolutions and nearest-neighbour search, so one image a call loses no speed, and the
# distance block (patches x bank floats, about 22 MB for 1,600 patches and a 3,500-patch bank) stays small
DEFAULT_MICRO_BATCH = 1


class EdgeModelError(AnomalySpotterError):
    """An export folder is missing a file, was written by another format version, or cannot be loaded."""


def is_edge_folder(path: Path) -> bool:
    """True for a detector artifact written by `anomaly-spotter export` (holds export.json)."""
    return (Path(path) / MANIFEST_FILE).is_file()


def edge_folder_of(model_dir: Path) -> Path | None:
    """The edge folder inside an exported pyfunc model folder (`OUT/artifacts/edge`), or None."""
    folder = Path(model_dir) / ARTIFACTS_DIR / EDGE_ARTIFACT_DIR
    return folder if is_edge_folder(folder) else None


def is_edge_model(uri: str | Path) -> bool:
    """True when `uri` is a local exported model folder (scored by `load_edge_model`, no MLflow)."""
    text = str(uri)
    if text.startswith(("models:", "runs:")) or "://" in text:
        return False
    return edge_folder_of(Path(text)) is not None


def read_manifest(folder: Path) -> dict[str, Any]:
    """The edge folder's export.json; EdgeModelError naming the file when it is missing or broken."""
    path = Path(folder) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise EdgeModelError(f"{path}: not found; export the model again (anomaly-spotter export)") from err
    except (OSError, json.JSONDecodeError) as err:
        raise EdgeModelError(f"{path}: cannot read the export manifest ({err}); export it again") from err
    if manifest.get("format") != ONNX_KIND:
        raise EdgeModelError(f"{path}: format {manifest.get('format')!r} is not 'onnx'; export it again")
    return manifest


class OnnxDetector:
    """A fitted detector exported to ONNX: `anomaly_maps` like the torch detector's, on ONNX Runtime.

    `threads` sets ONNX Runtime's intra-op threads (0: one per physical core, its default).
    Higher = more anomalous, as everywhere.
    """

    kind = ONNX_KIND

    def __init__(self, folder: Path, threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise EdgeModelError(
                f"{folder}: an exported model needs ONNX Runtime; pip install onnxruntime (or -e '.[edge]')"
            ) from err
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        path = self.folder / self.manifest.get("onnx_file", ONNX_FILE)
        if not path.is_file():
            raise EdgeModelError(
                f"{path}: ONNX file missing; export the model again (anomaly-spotter export)"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no spin-waiting between parallel sections: with as many threads as cores, spinning threads that
        # share a core with anything else (even the caller's own thread) stall each other; measured on 2
        # cores, the int8 ensemble fell from ~8 to ~15 ms per image after a few dozen images and stayed there
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ONNX Runtime raises its own types; name the file
            raise EdgeModelError(f"{path}: ONNX Runtime cannot load it ({err})") from err
        self.image_size = int(self.manifest["image_size"])
        self.micro_batch = int(self.manifest.get("micro_batch", DEFAULT_MICRO_BATCH))
        self.precision = str(self.manifest.get("precision", "fp32"))
        calibration = self.manifest.get("pixel_calibration")
        self.pixel_calibration_ = None if calibration is None else PixelCalibration.from_dict(calibration)

    def anomaly_maps(self, images: np.ndarray) -> np.ndarray:
        """Raw maps `(N, S, S)` float32 for uint8 images `(N, S, S, 3)` at the exported size S."""
        images = np.asarray(images)
        size = self.image_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 images (N, {size}, {size}, 3), got {images.dtype} {images.shape}"
            )
        out = np.empty(images.shape[:3], dtype=np.float32)
        for start in range(0, len(images), self.micro_batch):
            x = to_tensor_normalized(images[start : start + self.micro_batch])
            out[start : start + len(x)] = self.session.run([GRAPH_OUTPUT], {GRAPH_INPUT: x})[0]
        return out


def read_config(config_path: Path) -> InferenceConfig:
    """The service model's InferenceConfig from its service.json."""
    return InferenceConfig.from_dict(json.loads(Path(config_path).read_text()))


def load_scoring_parts(config_path: Path, detector_path: Path) -> tuple[InferenceConfig, Any]:
    """The served model's config (service.json) and detector: an `OnnxDetector` for an edge folder, else
    the torch detector (`detectors.load_detector`, which imports torch only then)."""
    config = read_config(config_path)
    if is_edge_folder(detector_path):
        return config, OnnxDetector(detector_path)
    from anomaly_spotter.detectors import load_detector

    return config, load_detector(detector_path)


class EdgeModel:
    """An exported model folder scored without MLflow: `.config` and `.score` as `serving.ServiceModel`."""

    def __init__(self, model_dir: Path) -> None:
        model_dir = Path(model_dir)
        folder = edge_folder_of(model_dir)
        if folder is None:
            raise EdgeModelError(
                f"{model_dir}: not an exported model folder (no {ARTIFACTS_DIR}/{EDGE_ARTIFACT_DIR}/"
                f"{MANIFEST_FILE}); write one with anomaly-spotter export"
            )
        self.config, self.detector = load_scoring_parts(model_dir / ARTIFACTS_DIR / CONFIG_FILE, folder)

    def score(
        self, images: Sequence[np.ndarray], return_map: bool = False, titles: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Rows for decoded uint8 RGB images (any size), exactly as `ServiceModel.score`."""
        return score_images(self.detector, images, self.config, return_map, titles)


def load_edge_model(model_dir: Path) -> EdgeModel:
    """An exported model folder, ready to score (NumPy + ONNX Runtime only)."""
    return EdgeModel(model_dir)
