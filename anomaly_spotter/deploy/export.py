"""`anomaly-spotter export`: a registered PatchCore service model -> ONNX (optionally int8), as a pyfunc.

The exported graph (`EdgePatchCore`) computes the torch detector's raw map (equal up to float32
rounding) in one ONNX Runtime call per image: a normalised image `(1, 3, S, S)` -> resize to
`input_size` -> backbone and locally aware patch embedding (`PatchCore.embed`, the same code) -> per
member, the squared distance of each patch to every bank patch as one matrix product
(`|q|^2 - 2 q.b + |b|^2`), its minimum, square root -> border correction, bilinear upsampling to S,
standardisation, the members' mean and Gaussian smoothing -> map `(1, S, S)`.
Upsampling and smoothing (scipy's reflect border) are both linear and separable, so together with the
standardisation they are folded into two small matrix products per member (`P_k g P_k^T`, P_k = G U_k of
shape (S, h_k)), which is cheaper than smoothing an S x S map and equal up to float32 rounding.

`--int8` quantises the backbone's convolutions after its first two blocks with ONNX Runtime's static
quantisation (QDQ, int8 weights per channel, uint8 activations), calibrated on the category's good
training images (`quantize_int8` says why not the first ones), and runs each member's nearest-neighbour
search as one integer matrix product (`Int8Search`: bank and queries centred on the bank's mean, the
`|b|^2` term folded in exactly, so no float work on the `(patches, bank)` block but its ReduceMax).
Everything after the search stays float32.

The result is an MLflow pyfunc folder (`serving.ServiceModel`, the same code `register` logs) whose
detector artifact is the edge folder (`edge.OnnxDetector`), so `predict`, `mlflow models serve` and
`score-spark` take it unchanged; `--register` logs it as a version of the sibling registered model
`anomaly-spotter-<category>-edge`.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_spotter.core.errors import ExportError
from anomaly_spotter.data.geometry import Geometry, score_canvases
from anomaly_spotter.detectors.base import GRAPH_INPUT, GRAPH_OPSET
from anomaly_spotter.serving.edge import (
    DEFAULT_MICRO_BATCH,
    EDGE_ARTIFACT_DIR,
    MANIFEST_FILE,
    ONNX_FILE,
    ONNX_KIND,
    OnnxDetector,
)
from anomaly_spotter.serving.inference import InferenceConfig, preprocess

EDGE_SUFFIX = "-edge"
# convolutions int8 leaves in float32, in graph order: EfficientNet-Lite's stem (1), block 0 (depthwise +
# projection) and block 1 (expansion, depthwise, projection); see `quantize_int8`
FLOAT_LEADING_CONVS = 6
# most windows of the calibration images that calibrate int8 (a tiled model has tens of windows an image)
MAX_CALIBRATION_WINDOWS = 256


@dataclass(frozen=True)
class ExportResult:
    """What `export_model` wrote and how the exported maps compare with the torch detector's."""

    out: Path
    precision: str
    onnx_mb: float
    n_check_images: int
    max_abs_score_diff: float
    max_rel_score_diff: float  # relative to the largest |score| of the torch model
    max_abs_score: float
    verdicts_equal: int
    export_s: float

    def summary(self) -> str:
        return (
            f"exported {self.precision} ONNX ({self.onnx_mb:.1f} MB) to {self.out} in {self.export_s:.1f} s; "
            f"on {self.n_check_images} calibration images against the torch model: max |score difference| "
            f"{self.max_abs_score_diff:.3g} ({self.max_rel_score_diff:.2g} of the largest |score|, "
            f"{self.max_abs_score:.3g}), verdicts equal {self.verdicts_equal}/{self.n_check_images}"
        )


def export_onnx(detector: Any, image_size: int, path: Path, int8_search: bool = False) -> None:
    """Write the ONNX graph of a fitted detector to `path` (`Detector.exporter`: float32; with
    `int8_search`, PatchCore's nearest-neighbour search as `Int8Search`): one image `(1, 3, S, S)` per
    call, so that every shape is static (the TF "SAME" paddings fold into constants ONNX Runtime fuses into
    the convolutions); `OnnxDetector` loops over a batch."""
    exporter = detector.exporter() if hasattr(detector, "exporter") else None
    if exporter is None:
        raise ExportError(
            f"{getattr(detector, 'kind', '?')} models cannot be exported to ONNX (only detectors whose "
            f"exporter() writes a graph: {', '.join(_exportable())}); serve it with its torch model instead"
        )
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as err:
        raise ExportError("export needs onnx and onnxruntime: pip install -e '.[edge]'") from err
    with tempfile.TemporaryDirectory() as tmp:
        traced, folded = Path(tmp) / "traced.onnx", Path(tmp) / "folded.onnx"
        exporter(traced, image_size, int8_search)
        # the tracer keeps the shape arithmetic of the "SAME" paddings; ONNX Runtime's basic (portable)
        # optimisations fold it into constants, then the paddings move into the convolutions
        options = ort.SessionOptions()
        options.log_severity_level = 3  # not the notes on initializers it drops as unused
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(traced), options, providers=["CPUExecutionProvider"])
        model = onnx.load(str(folded))
    fuse_pads(model)
    drop_unused_initializers(model)
    onnx.save(model, str(path))


def _exportable() -> list[str]:
    """Registered detectors that override `Detector.exporter`."""
    from anomaly_spotter.detectors import DETECTORS, detector_class
    from anomaly_spotter.detectors.base import Detector

    return [name for name in DETECTORS if detector_class(name).exporter is not Detector.exporter]


def drop_unused_initializers(model: Any) -> int:
    """Remove the initializers no node reads (shape constants left by folding), so that ONNX Runtime does
    not warn about each one when it loads the model; returns how many were removed."""
    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return len(unused)


def fuse_pads(model: Any) -> int:
    """Move zero constant `Pad`s on the spatial axes into the `pads` of the `Conv` they feed (ONNX Conv pads
    asymmetrically, as TF "SAME" needs); returns how many were fused. A separate Pad costs two layout
    reorders and a copy per convolution on ONNX Runtime's CPU kernels."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    fused = []
    for node in graph.node:
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
        users = consumers.get(node.output[0], [])
        if node.op_type != "Pad" or mode != b"constant" or len(users) != 1 or users[0].op_type != "Conv":
            continue
        if node.input[1] not in inits or (len(node.input) > 2 and node.input[2]):
            if len(node.input) <= 2 or node.input[2] not in inits:
                continue
            if np.any(numpy_helper.to_array(inits[node.input[2]]) != 0):
                continue
        pads = numpy_helper.to_array(inits[node.input[1]]).tolist()  # (n, c, h, w) begins, then ends
        if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
            continue
        conv = users[0]
        old = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
        if any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for a in conv.attribute):
            continue
        new = [old[0] + pads[2], old[1] + pads[3], old[2] + pads[6], old[3] + pads[7]]
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend([*kept, helper.make_attribute("pads", new)])
        conv.input[0] = node.input[0]
        fused.append(node)
    for node in fused:
        graph.node.remove(node)
    return len(fused)


class _Calibration:
    """ONNX Runtime CalibrationDataReader over uint8 images `(N, S, S, 3)`, one image per call."""

    def __init__(self, images: np.ndarray) -> None:
        from anomaly_spotter.data.images import to_tensor_normalized

        self._batches = iter(
            [{GRAPH_INPUT: to_tensor_normalized(images[i : i + 1])} for i in range(len(images))]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # pragma: no cover - ONNX Runtime calls it only for some calibrators
        pass


def float_convs(model: Any) -> list[str]:
    """The convolutions `quantize_int8` leaves in float32: the first FLOAT_LEADING_CONVS in graph order
    (the stem and blocks 0-1 of EfficientNet-Lite, which read the image and the stride-2 maps)."""
    return [n.name for n in model.graph.node if n.op_type == "Conv"][:FLOAT_LEADING_CONVS]


def calibration_windows(windows: np.ndarray, most: int = MAX_CALIBRATION_WINDOWS) -> np.ndarray:
    """At most `most` of the calibration images' windows `(T, S, S, 3)`, evenly spaced (a tiled
    high-resolution model has tens of windows an image; MinMax calibration needs no more)."""
    return windows[spread(list(range(len(windows))), most)]


def quantize_int8(fp32_path: Path, int8_path: Path, images: np.ndarray) -> None:
    """Static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations, MinMax calibration on
    good images `(N, S, S, 3)` uint8) of the backbone's convolutions and their ReLU6, except the first
    ones (`float_convs`).

    Why not those: quantised, the stem and block 0 (the normalised image, then 32 stride-2 channels read
    by a depthwise convolution) moved scores by up to 6 standardised units (a good image's max is ~0, one
    unit is one standard deviation of good images' maxima) and cost pill 0.33 image AUROC; with them and
    block 1 in float32, scores move by at most 0.36 units on bottle and pill and both AUROCs stay within
    0.001 (docs/serving.md, Edge export). The nearest-neighbour search is already integer when asked
    (`export_onnx(..., int8_search=True)`, `Int8Search`); QDQ leaves it alone.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    ort.set_default_logger_severity(3)  # not its notes on initializers it drops
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(int8_path),
            _Calibration(images),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv", "Clip"],
            nodes_to_exclude=float_convs(onnx.load(str(prepared))),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )


def export_model(
    service: Any,
    out: Path,
    calibration_images: list[np.ndarray],
    int8: bool,
    source: str,
    overwrite: bool = False,
) -> ExportResult:
    """Export a loaded service model (`serving.ServiceModel`: `.detector`, `.config`) to the pyfunc folder
    `out` (see the module doc). `calibration_images`: decoded good RGB images of the category (any size);
    they calibrate int8 and check the export against the torch detector (scores, verdicts)."""
    from anomaly_spotter.serving.model import save_service_model

    start = time.perf_counter()
    config: InferenceConfig = service.config
    out = Path(out)
    check_out_folder(out, overwrite)
    if not calibration_images:
        raise ExportError(
            "no calibration images; pass --calibration with the category's good training images"
        )
    geometry = config.scoring_geometry()
    images, _ = preprocess(calibration_images, geometry)  # canvases: scored whole, as every path scores
    windows = calibration_windows(geometry.cut(images))  # what the graph itself sees
    precision = "int8" if int8 else "fp32"
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.is_dir() else None) as tmp:
        edge_dir = Path(tmp) / EDGE_ARTIFACT_DIR
        edge_dir.mkdir()
        fp32_path = Path(tmp) / "fp32.onnx"
        export_onnx(service.detector, config.image_size, fp32_path, int8_search=int8)
        if int8:
            quantize_int8(fp32_path, edge_dir / ONNX_FILE, windows)
        else:
            shutil.copyfile(fp32_path, edge_dir / ONNX_FILE)
        calibration = service.detector.pixel_calibration_
        manifest = {
            "format": ONNX_KIND,
            "precision": precision,
            "onnx_file": ONNX_FILE,
            "detector": service.detector.kind,
            "image_size": config.image_size,
            "micro_batch": DEFAULT_MICRO_BATCH,
            "opset": GRAPH_OPSET,
            "pixel_calibration": None if calibration is None else calibration.to_dict(),
            service.detector.kind: asdict(service.detector.config),
            "source_model": source,
            "calibration_images": len(images) if int8 else 0,
            "versions": _versions(),
        }
        (edge_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        check = _compare(service.detector, OnnxDetector(edge_dir), images, config, geometry)
        manifest["check"] = check
        (edge_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        staged = Path(tmp) / "model"
        save_service_model(staged, edge_dir, config, ONNX_KIND)
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(staged), str(out))
    return ExportResult(
        out=out,
        precision=precision,
        onnx_mb=(out / "artifacts" / EDGE_ARTIFACT_DIR / ONNX_FILE).stat().st_size / 2**20,
        export_s=time.perf_counter() - start,
        **check,
    )


def check_out_folder(out: Path, overwrite: bool) -> None:
    """Refuse an `--out` that is a file, or a non-empty folder unless `overwrite` and it is an export's own
    folder (an MLmodel with an edge detector artifact): --overwrite never deletes anything else."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: is a file; --out names the model folder to write")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise ExportError(f"{out}: folder exists and is not empty; pass --overwrite or choose another --out")
    from anomaly_spotter.serving.edge import ARTIFACTS_DIR

    manifest = out / ARTIFACTS_DIR / EDGE_ARTIFACT_DIR / MANIFEST_FILE
    if not ((out / "MLmodel").is_file() and manifest.is_file()):
        raise ExportError(
            f"{out}: --overwrite replaces only a folder that anomaly-spotter export wrote (MLmodel and "
            f"{ARTIFACTS_DIR}/{EDGE_ARTIFACT_DIR}/{MANIFEST_FILE}), and this is not one; choose another --out"
        )


def _compare(
    torch_detector: Any,
    edge_detector: OnnxDetector,
    images: np.ndarray,
    config: InferenceConfig,
    geometry: Geometry,
) -> dict:
    """Scores of both detectors on canvas images `images` (window by window, blended): largest
    differences and equal verdicts."""
    _, want = score_canvases(torch_detector, images, geometry, config.batch_size, config.reduction)
    _, got = score_canvases(edge_detector, images, geometry, config.batch_size, config.reduction)
    return {"n_check_images": len(images), **score_agreement(got, want, config.threshold)}


def score_agreement(got: np.ndarray, want: np.ndarray, threshold: float) -> dict[str, Any]:
    """How an export's image scores `got` agree with the torch model's `want` on the same images: the
    largest absolute difference, relative to the largest |want|, and how many verdicts (score > threshold)
    are equal."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    diff = np.abs(got - want)
    largest = float(np.abs(want).max())
    return {
        "max_abs_score_diff": float(diff.max()),
        "max_rel_score_diff": float(diff.max() / largest) if largest > 0 else math.nan,
        "max_abs_score": largest,
        "verdicts_equal": int(((got > threshold) == (want > threshold)).sum()),
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for pkg in ("torch", "onnx", "onnxruntime"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            found[pkg] = "missing"
    return found


def edge_model_name(category: str) -> str:
    """The sibling registered model that holds a category's exported versions."""
    from anomaly_spotter.tracking import registered_model_name

    return registered_model_name(category) + EDGE_SUFFIX


def default_calibration(params_path: Path, category: str) -> Path:
    """`<data.root>/<category>/train/good` from params.yaml: the category's good training images."""
    from anomaly_spotter.core.config import load_params

    if not Path(params_path).is_file():
        raise ExportError(
            f"{params_path}: not found, so the category's training images are unknown; pass --calibration "
            f"with good images of {category!r} (e.g. <data root>/{category}/train/good)"
        )
    folder = Path(load_params(Path(params_path)).data.root) / category / "train" / "good"
    if not folder.is_dir():
        raise ExportError(
            f"{folder}: no such folder (data.root in {params_path}); pass --calibration with good images "
            f"of {category!r}"
        )
    return folder


def spread(items: list[Any], n: int) -> list[Any]:
    """`n` of `items` evenly spread over the list (all of them when there are no more than `n`)."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def register_export(out: Path, source: str) -> tuple[str, str]:
    """Log the exported folder `out` as a new version of `anomaly-spotter-<category>-edge` (an MLflow run
    `export@<category>` in the project's experiment), tagged with the source model, precision and the
    check against the torch model; returns (registered name, version)."""
    from anomaly_spotter import tracking
    from anomaly_spotter.serving.edge import ARTIFACTS_DIR, CONFIG_FILE, read_config, read_manifest
    from anomaly_spotter.serving.model import log_service_model

    edge_dir = Path(out) / ARTIFACTS_DIR / EDGE_ARTIFACT_DIR
    manifest = read_manifest(edge_dir)
    config = read_config(Path(out) / ARTIFACTS_DIR / CONFIG_FILE)
    name = edge_model_name(config.category)
    tags = {
        "category": config.category,
        "detector": f"{manifest['detector']}-onnx-{manifest['precision']}",
        "source_model": source,
        "precision": manifest["precision"],
        "threshold": config.threshold,
        "image_size": config.image_size,
        **{f"check.{k}": v for k, v in manifest.get("check", {}).items()},
    }
    tracking.connect()
    with tracking.stage_run("export", config.category, {"source_model": source, **manifest["versions"]}):
        logged = log_service_model(edge_dir, config, name, ONNX_KIND)
    version = str(logged["model_version"])
    tracking.set_model_version_tags(name, version, tags)
    return name, version
