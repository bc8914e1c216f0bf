"""The registered service model: an MLflow pyfunc that takes images and returns decisions.

It holds the fitted detector (weights + config, `Detector.save`'s file), the preprocessing (resize to
the pipeline's `data.image_size`), the anomaly-map post-processing (`process.image_score` reduction,
`process.region_threshold` region with the model's pixel calibration) and the category's calibrated
threshold; all scoring goes through
`anomaly_spotter.serving.inference`, so its scores equal the pipeline's process_all scores.

Input (signature): a DataFrame with one column `image` of type binary: encoded image bytes (PNG, JPEG,
... or a NumPy `.npy` uint8 array for a batch of arrays). Over HTTP the bytes are base64 in JSON:

    {"dataframe_split": {"columns": ["image"], "data": [["<base64 PNG>"], ...]}}
    {"dataframe_records": [{"image": "<base64 PNG>"}], "params": {"return_map": true}}

Output: one row per image: score, verdict ("defective" iff score > threshold, else "good"), threshold,
anomaly_percentage (share of pixels in the predicted region: above the category's calibrated pixel
threshold, or the original's Otsu split, per `process.region_threshold`) and, with the param
`return_map=true`, anomaly_map (nested lists, S x S, raw map) and overlay (base64 PNG: the annotated
overlay of `anomaly_spotter.core.overlay`, the category's colour scale, as `predict --out` writes it).
Images are decoded as the pipeline decodes them (`data.images.decode_rgb`: 8/16-bit grayscale, palette,
RGB(A), 16-bit RGB). Bad input raises MlflowException(INVALID_PARAMETER_VALUE), which the scoring server
answers with HTTP 400 and the decoder's or the limit's reason: not an image, empty, truncated, 0 or more
than `inference.MAX_SIDE` pixels on a side, and, checked from the headers before any pixels are decoded,
the request limits stored in the model's config (params.yaml `registry.*`): more than
`max_images_per_request` images, an image smaller than `min_image_side` on a side (capped at the model's
input size), more than `max_request_megapixels` decoded megapixels in all. `ServiceModel.score` (the
CLI's entry, which scores in chunks of 16 and checks each file itself) applies no request limits.
From Python, `load_model(uri).unwrap_python_model().predict(None, arrays)` also takes uint8 arrays.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from PIL import Image

from anomaly_spotter.core.errors import AnomalySpotterError
from anomaly_spotter.core.packages import pinned
from anomaly_spotter.data.images import check_size, image_size, npy_bytes
from anomaly_spotter.serving.edge import CONFIG_FILE, ONNX_KIND
from anomaly_spotter.serving.inference import (
    MAX_SIDE,
    ImageInputError,
    InferenceConfig,
    check_array,
    decode_image,
    score_images,
)

IMAGE_COLUMN = "image"
CONFIG_ARTIFACT = "config"
DETECTOR_ARTIFACT = "detector"
DETECTOR_FILE = "model.pt"
MODEL_ARTIFACT_NAME = "service_model"
MODEL_CODE_FILE = "service_model.py"
# Logged as "models from code" (no pickled Python object): MLflow runs this file to build the model.
MODEL_CODE = """import mlflow

from anomaly_spotter.serving.model import ServiceModel

mlflow.models.set_model(ServiceModel())
"""
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# What a registered model ships of the package: the code scoring needs, nothing of the pipeline, tracking,
# CLI, dashboard, Spark, export or benchmarks (tests/unit/test_architecture.py loads one without them).
SERVED_FOLDERS = ("core", "data", "detectors", "serving")


class ServiceModel(mlflow.pyfunc.PythonModel):
    """Images in, decisions out, for one category (see the module docstring for the formats)."""

    def load_context(self, context: Any) -> None:
        # the detector artifact is model.pt (torch) or an exported edge folder (ONNX Runtime, no torch)
        from anomaly_spotter.serving.edge import load_scoring_parts

        self.config, self.detector = load_scoring_parts(
            Path(context.artifacts[CONFIG_ARTIFACT]), Path(context.artifacts[DETECTOR_ARTIFACT])
        )

    def score(
        self, images: Sequence[np.ndarray], return_map: bool = False, titles: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Rows for decoded uint8 RGB images (any size): the CLI's entry point (`inference.score_images`)."""
        return score_images(self.detector, images, self.config, return_map, titles)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Rows of decisions for the images in `model_input` (see the module docstring).

        `pd.DataFrame` is the hint MLflow 3 takes as "schema from the logged signature, no conversion",
        so the unwrapped model still accepts a dict, a list of bytes or of uint8 arrays here too.
        """
        return_map = bool((params or {}).get("return_map", False))
        log = getattr(self, "scoring_log", None)  # set by `anomaly-spotter serve --log`
        try:
            sources = _decoded_sources(model_input, self.config)
            rows = self.score([image for image, _ in sources], return_map)
        except AnomalySpotterError as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from err
        if log is not None:  # a queue put: the log's own thread hashes, keeps the images and writes
            log.submit([data if data is not None else npy_bytes(image) for image, data in sources], rows)
        frame = pd.DataFrame(rows, columns=[*_output_columns(return_map)])
        if return_map:
            frame["anomaly_map"] = [np.asarray(m).tolist() for m in frame["anomaly_map"]]
            frame["overlay"] = [base64.b64encode(png_bytes(o)).decode("ascii") for o in frame["overlay"]]
        return frame


def _output_columns(return_map: bool) -> list[str]:
    from anomaly_spotter.serving.inference import OUTPUT_COLUMNS

    return [*OUTPUT_COLUMNS, *(["anomaly_map", "overlay"] if return_map else [])]


def _images_from_input(model_input: Any, config: InferenceConfig | None = None) -> list[np.ndarray]:
    """Decoded RGB arrays from a DataFrame/dict with an `image` column, a list of bytes or of arrays.

    With `config`, the request is checked against its limits (images per request, smallest side,
    megapixels per request) from the image headers, before any pixels are decoded.
    """
    return [image for image, _ in _decoded_sources(model_input, config)]


def _decoded_sources(
    model_input: Any, config: InferenceConfig | None = None
) -> list[tuple[np.ndarray, bytes | None]]:
    """`_images_from_input`'s arrays, each with the encoded bytes it came from (None for an array sent as
    such: the scoring log encodes it as `.npy` only when there is a log), which the scoring log hashes
    and keeps."""
    if isinstance(model_input, Mapping):
        model_input = pd.DataFrame(dict(model_input))
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise AnomalySpotterError(
                f"input has columns {list(model_input.columns)}; send one column {IMAGE_COLUMN!r} of "
                "base64-encoded image bytes"
            )
        values = model_input[IMAGE_COLUMN].tolist()
    elif isinstance(model_input, np.ndarray) and model_input.dtype == np.uint8 and model_input.ndim in (3, 4):
        values = list(model_input) if model_input.ndim == 4 else [model_input]
    elif isinstance(model_input, list | tuple):
        values = list(model_input)
    else:
        raise AnomalySpotterError(
            f"unsupported input {type(model_input).__name__}; send a DataFrame with column {IMAGE_COLUMN!r}"
        )
    if not values:
        raise AnomalySpotterError("no images in the request; send at least one")
    if config is not None:
        config.check_count(len(values))
    sources = [_image_source(value, f"image {i}") for i, value in enumerate(values)]
    if config is not None:
        config.check_request([size for _, size in sources])
    return [
        (source, None) if isinstance(source, np.ndarray) else (decode_image(source, f"image {i}"), source)
        for i, (source, _) in enumerate(sources)
    ]


def _image_source(value: Any, name: str) -> tuple[np.ndarray | bytes, tuple[int, int]]:
    """A checked uint8 RGB array, or encoded image bytes whose header passed `check_size`, with its
    `(width, height)`: base64 text (str, or the bytes the JSON `inputs` format hands over) is decoded;
    bytes that are neither an image nor base64 get the decoder's own reason (too large, truncated, no
    pixels, not an image format)."""
    if isinstance(value, np.ndarray):
        array = check_array(value, name)
        return array, (array.shape[1], array.shape[0])
    if isinstance(value, str):
        data = _b64decode(value, name)
    else:
        try:
            return _checked_header(value, name)
        except ImageInputError as err:
            reason = err
        if not isinstance(value, bytes) or not value:
            raise reason
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise reason from None  # not base64 either: the decoder's own reason
    return _checked_header(data, name)


def _checked_header(data: Any, name: str) -> tuple[bytes, tuple[int, int]]:
    """`data` as bytes and its `(width, height)` from the header, checked against MAX_SIDE and the
    decompression-bomb limit (`data.images.check_size`)."""
    width, height = image_size(data, name, MAX_SIDE)
    check_size(width, height, name, MAX_SIDE)
    return bytes(data), (width, height)


def _b64decode(text: str, name: str) -> bytes:
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as err:
        raise AnomalySpotterError(f"{name}: not valid base64 ({err})") from err


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of a uint8 image (for input examples and clients)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def signature() -> Any:
    """Input: column `image` (binary); output: the decision columns; param `return_map` (bool)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("binary", IMAGE_COLUMN)])
    outputs = Schema(
        [
            ColSpec("double", "score"),
            ColSpec("string", "verdict"),
            ColSpec("double", "threshold"),
            ColSpec("double", "anomaly_percentage"),
        ]
    )
    params = ParamSchema([ParamSpec("return_map", "boolean", False)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def input_example(image_size: int) -> pd.DataFrame:
    """One mid-grey PNG of the model's input size."""
    return pd.DataFrame({IMAGE_COLUMN: [png_bytes(np.full((image_size, image_size, 3), 128, np.uint8))]})


def service_requirements(detector_kind: str) -> list[str]:
    """Pinned pip requirements of the pyfunc (the anomaly_spotter package itself travels as code)."""
    pkgs = ["torch", "numpy", "scipy", "scikit-image", "pillow", "pandas", "pyyaml", "tqdm", "mlflow"]
    if detector_kind == ONNX_KIND:  # an exported model (anomaly-spotter export): ONNX Runtime, no torch
        pkgs = [*pkgs[1:], "onnxruntime"]
    else:
        from anomaly_spotter.detectors import detector_class

        pkgs += detector_class(detector_kind).requirements
    return pinned(pkgs)


def log_service_model(
    detector_path: Path,
    config: InferenceConfig,
    registered_name: str | None,
    detector_kind: str,
) -> dict[str, Any]:
    """Log the pyfunc (in the active run) with `code_paths` for the package and register it.

    Returns `{"registered_model", "model_version", "model_uri"}` (version None when not registered).
    `detector_path`: model.pt, or an exported edge folder (`anomaly_spotter.serving.edge`).
    """
    with tempfile.TemporaryDirectory() as tmp:
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_NAME,
            registered_model_name=registered_name,
            **_pyfunc_arguments(Path(tmp), detector_path, config, detector_kind),
        )
    version = info.registered_model_version
    return {
        "registered_model": registered_name,
        "model_version": None if version is None else str(version),
        "model_uri": info.model_uri,
    }


def save_service_model(path: Path, detector_path: Path, config: InferenceConfig, detector_kind: str) -> None:
    """The same pyfunc as `log_service_model`, saved to the local folder `path` (which must not exist)."""
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.pyfunc.save_model(
            str(path), **_pyfunc_arguments(Path(tmp), detector_path, config, detector_kind)
        )


def _pyfunc_arguments(tmp: Path, detector_path: Path, config: InferenceConfig, detector_kind: str) -> dict:
    """The arguments of `mlflow.pyfunc.log_model` / `save_model` for the service model (files in `tmp`)."""
    config_path = tmp / CONFIG_FILE
    config_path.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    code_path = tmp / MODEL_CODE_FILE
    code_path.write_text(MODEL_CODE)
    return {
        "python_model": str(code_path),
        "artifacts": {DETECTOR_ARTIFACT: str(detector_path), CONFIG_ARTIFACT: str(config_path)},
        "code_paths": [str(served_code(tmp))],
        "signature": signature(),
        "input_example": input_example(config.image_size),
        "pip_requirements": service_requirements(detector_kind),
    }


def served_code(tmp: Path) -> Path:
    """A copy of the package holding `SERVED_FOLDERS` only, in `tmp`; returns its folder."""
    dst = tmp / PACKAGE_DIR.name
    dst.mkdir()
    shutil.copy2(PACKAGE_DIR / "__init__.py", dst / "__init__.py")
    for folder in SERVED_FOLDERS:
        shutil.copytree(PACKAGE_DIR / folder, dst / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def load_service_model(uri: str) -> ServiceModel:
    """Load a served model (`models:/name@alias`, `models:/name/version`, `runs:/...` or a local folder)."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*type hints.*", category=UserWarning)
            loaded = mlflow.pyfunc.load_model(uri)
    except Exception as err:  # noqa: BLE001 - any load failure is reported with the URI
        hint = ""
        if "alias" in str(err) and "not found" in str(err) and uri.startswith("models:/") and "@" in uri:
            name = uri.removeprefix("models:/").split("@")[0]
            category = name.removeprefix("anomaly-spotter-")
            hint = (
                f"; no version holds that alias yet: `anomaly-spotter promote --category {category}` gives "
                f"the newest version the champion alias, or name a version: models:/{name}/1"
            )
        raise AnomalySpotterError(f"cannot load model {uri!r}: {err}{hint}") from err
    try:
        model = loaded.unwrap_python_model()
    except (AttributeError, MlflowException) as err:
        raise AnomalySpotterError(f"{uri}: not an Anomaly Spotter service model") from err
    if not isinstance(model, ServiceModel) and not hasattr(model, "score"):
        raise AnomalySpotterError(f"{uri}: not an Anomaly Spotter service model (got {type(model).__name__})")
    return model
