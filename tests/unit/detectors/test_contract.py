"""Every registered detector keeps the contract (`detectors.base.Detector`): options parsed from its
params.yaml section, fit -> maps and scores -> save -> load -> the served model -> ONNX export or a clear
refusal.

A new detector in `detectors.DETECTORS` runs through all of this with its default options unless `TINY`
gives it smaller ones."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import yaml

from anomaly_spotter.core.errors import ExportError
from anomaly_spotter.detectors import DETECTORS, detector_class, load_detector, parse_options
from anomaly_spotter.detectors.base import Detector
from anomaly_spotter.pipeline.train import calibrate_pixels
from anomaly_spotter.serving.inference import InferenceConfig
from anomaly_spotter.serving.model import save_service_model
from tests.conftest import REPO

SIZE = 32
# small, fast options per detector (a second or two of fitting on the CPU)
TINY: dict[str, dict[str, Any]] = {
    "patchcore": {"members": [[3], [3, 5]], "input_size": 64, "coreset_ratio": 0.1, "sigma": 2.0},
    "unet_ae": {
        "encoder_channels": [4, 8],
        "bottleneck_channels": 8,
        "training": {"max_epochs": 2, "batch_size": 4, "lr": 1e-3},
    },
}


def _images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.full((SIZE, SIZE, 3), 120.0) + np.linspace(0, 40, SIZE)[None, :, None]
    return np.clip(base + rng.normal(0, 6, (n, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)


def _with_defect(images: np.ndarray) -> np.ndarray:
    out = images.copy()
    out[:, 10:18, 12:20] = (250, 20, 20)  # a saturated red square: far from any good patch or pixel
    return out


@pytest.fixture(scope="module", params=sorted(DETECTORS))
def fitted(request: pytest.FixtureRequest) -> tuple[str, Detector]:
    name = request.param
    cls = detector_class(name)
    detector = cls.from_options(parse_options(name, TINY.get(name, {}), seed=0), seed=0)
    detector.progress = False
    val = _images(4, 1)
    assert detector.fit(_images(8, 0), val) is detector
    calibrate_pixels(detector, val, 0.99)
    return name, detector


def test_registry_entries_declare_the_contract() -> None:
    for name in DETECTORS:
        cls = detector_class(name)
        assert issubclass(cls, Detector) and cls.kind == name
        assert cls.Options.__dataclass_params__.frozen, f"{name}: Options must be a frozen dataclass"
        assert all(isinstance(r, str) for r in cls.requirements)


def test_params_yaml_sections_parse_into_each_detectors_options() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())["model"]
    assert raw["name"] in DETECTORS
    sections = {key for key in raw if key != "name"}
    assert sections <= set(DETECTORS), (
        f"params.yaml model has sections for no detector: {sections - set(DETECTORS)}"
    )
    for name in sections:
        assert isinstance(parse_options(name, raw[name], seed=42), detector_class(name).Options)


def test_maps_and_scores_are_higher_on_a_defect(fitted: tuple[str, Detector]) -> None:
    name, detector = fitted
    good, bad = _images(3, 2), _with_defect(_images(3, 2))
    maps, score_maps = detector.maps_and_score_maps(np.concatenate([good, bad]))
    assert maps.shape == score_maps.shape == (6, SIZE, SIZE) and maps.dtype == np.float32
    scores = score_maps.reshape(6, -1).max(axis=1)
    assert scores[3:].min() > scores[:3].max(), f"{name}: defect scores {scores[3:]} vs good {scores[:3]}"
    assert maps[3:, 10:18, 12:20].mean() > maps[3:, :, :6].mean()


def test_save_load_gives_the_same_maps(fitted: tuple[str, Detector], tmp_path: Path) -> None:
    name, detector = fitted
    detector.save(tmp_path / "model.pt")
    loaded = load_detector(tmp_path / "model.pt")
    assert type(loaded) is type(detector) and loaded.kind == name
    assert loaded.pixel_calibration_ == detector.pixel_calibration_
    images = _with_defect(_images(2, 3))
    np.testing.assert_allclose(
        loaded.anomaly_maps(images), detector.anomaly_maps(images), rtol=1e-5, atol=1e-5
    )


def test_served_model_scores_like_the_detector(fitted: tuple[str, Detector], tmp_path: Path) -> None:
    name, detector = fitted
    detector.save(tmp_path / "model.pt")
    config = InferenceConfig.for_model(detector, "part", SIZE, 0.0, "good_only", "max", 4, "calibrated")
    save_service_model(tmp_path / "served", tmp_path / "model.pt", config, name)
    requirements = (tmp_path / "served" / "requirements.txt").read_text()
    assert all(req in requirements for req in detector_class(name).requirements)
    # installable elsewhere: pins name releases an index serves (torch's CPU build is 2.13.0+cpu here)
    assert f"torch=={version('torch').split('+')[0]}\n" in requirements and "+" not in requirements
    served = mlflow.pyfunc.load_model(str(tmp_path / "served")).unwrap_python_model()
    images = list(_with_defect(_images(2, 3)))
    rows = served.score(images)
    _, score_maps = detector.maps_and_score_maps(np.stack(images))
    np.testing.assert_allclose([r["score"] for r in rows], score_maps.reshape(2, -1).max(axis=1), rtol=1e-4)


def test_export_writes_a_graph_or_refuses_clearly(fitted: tuple[str, Detector], tmp_path: Path) -> None:
    from anomaly_spotter.deploy.export import export_onnx

    name, detector = fitted
    if detector.exporter() is None:
        with pytest.raises(ExportError, match=rf"^{name} models cannot be exported to ONNX .*: patchcore\)"):
            export_onnx(detector, SIZE, tmp_path / "model.onnx")
        return
    import onnxruntime as ort

    from anomaly_spotter.data.images import to_tensor_normalized
    from anomaly_spotter.detectors.base import GRAPH_INPUT, GRAPH_OUTPUT

    export_onnx(detector, SIZE, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    image = _with_defect(_images(1, 4))
    (got,) = session.run([GRAPH_OUTPUT], {GRAPH_INPUT: to_tensor_normalized(image)})
    np.testing.assert_allclose(got, detector.anomaly_maps(image), rtol=1e-3, atol=1e-3)
