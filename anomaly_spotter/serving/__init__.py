"""Scoring new images with a registered model: the pyfunc service model (`model.py`), the scoring
path it shares with `predict` (`inference.py`), the torch-free ONNX runtime (`edge.py`), the
collection of input images (`inputs.py`) and the prototype's API (`legacy.py`).

This folder, with `core/`, `data/` and `detectors/`, is the code every registered model ships."""

from typing import Any

__all__ = ["ServiceModel"]


def __getattr__(name: str) -> Any:
    # Lazy: `serving.edge` stays importable without MLflow. Models registered before the package had
    # folders run `from anomaly_spotter.serving import ServiceModel`, which lands here.
    if name == "ServiceModel":
        from anomaly_spotter.serving.model import ServiceModel

        return ServiceModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
