"""The ONNX export of PatchCore (`anomaly_spotter.deploy.export`) and its torch-free runtime
(`anomaly_spotter.serving.edge`) on tiny fitted detectors: the exported maps equal the torch detector's,
int8 touches only the depthwise convolutions, and an exported folder scores without importing torch or
MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from anomaly_spotter.core.anomaly_map import gaussian_smooth
from anomaly_spotter.core.errors import ExportError
from anomaly_spotter.data.images import to_tensor_normalized
from anomaly_spotter.deploy.export import export_model, export_onnx, float_convs, quantize_int8, spread
from anomaly_spotter.detectors import parse_options
from anomaly_spotter.detectors.patchcore.detector import PatchCoreDetector
from anomaly_spotter.detectors.patchcore.export import (
    EdgePatchCore,
    Int8Search,
    resize_matrix,
    smoothing_matrix,
)
from anomaly_spotter.pipeline.train import calibrate_pixels
from anomaly_spotter.serving.edge import (
    MANIFEST_FILE,
    ONNX_FILE,
    EdgeModelError,
    OnnxDetector,
    is_edge_model,
    load_edge_model,
)
from anomaly_spotter.serving.inference import InferenceConfig
from tests.unit.test_inference import tiny_detector


def _images(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(60, 180, size, dtype=np.float32)[None, :, None] + np.zeros((n, size, 1, 3), np.float32)
    return np.clip(base + rng.normal(0, 12, (n, size, size, 3)), 0, 255).astype(np.uint8)


def tiny_patchcore(size: int, members: list[list[int]], input_size: int = 64) -> PatchCoreDetector:
    """A PatchCore fitted on 6 images `size` px, standardised and pixel-calibrated on 3 more."""
    options = {"members": members, "input_size": input_size, "coreset_ratio": 0.1, "sigma": 2.0}
    detector = PatchCoreDetector.from_options(parse_options("patchcore", options, 0), 0).fit(
        _images(6, size, 0), _images(3, size, 1)
    )
    calibrate_pixels(detector, _images(3, size, 1), 0.99)
    return detector


def test_smoothing_and_resize_matrices_equal_scipy_and_torch() -> None:
    x = np.random.default_rng(0).normal(size=(2, 20, 20)).astype(np.float32)
    g = smoothing_matrix(20, 2.5)
    np.testing.assert_allclose(g @ x @ g.T, gaussian_smooth(x, 2.5), atol=1e-5)
    t = torch.from_numpy(x)[:, None]
    for n_out, antialias in ((33, False), (12, True), (12, False)):
        r = resize_matrix(20, n_out, antialias)
        want = F.interpolate(
            t, size=(n_out, n_out), mode="bilinear", align_corners=False, antialias=antialias
        )
        np.testing.assert_allclose(r @ x @ r.T, want[:, 0].numpy(), atol=1e-5)


@pytest.mark.parametrize(
    ("size", "members"),
    [(32, [[3], [3, 5]]), (80, [[3]])],  # upscaled to the 64 px input (ensemble); downscaled (antialiased)
)
def test_fp32_export_maps_equal_the_torch_detector(
    tmp_path: Path, size: int, members: list[list[int]]
) -> None:
    detector = tiny_patchcore(size, members)
    assert detector.model_.position_blocks  # the default: the position-aware part is exported too
    export_onnx(detector, size, tmp_path / ONNX_FILE)
    graph = onnx.load(str(tmp_path / ONNX_FILE)).graph
    pads = {n.output[0] for n in graph.node if n.op_type == "Pad"}  # the position-aware search shifts by Pad
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert not any(set(n.input) & pads for n in convs)  # the "SAME" paddings moved into the convolutions
    read = {name for n in graph.node for name in n.input}
    assert all(init.name in read for init in graph.initializer)  # no unused ones for ONNX Runtime to warn of
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"format": "onnx", "image_size": size}))
    images = _images(5, size, 2)
    images[3, size // 3 : size // 2, size // 3 : size // 2] = 250  # one defect-like patch
    want = detector.anomaly_maps(images)
    got = OnnxDetector(tmp_path).anomaly_maps(images)
    assert got.shape == want.shape == (5, size, size) and got.dtype == np.float32
    scale = np.abs(want).max()
    np.testing.assert_allclose(got.max(axis=(1, 2)), want.max(axis=(1, 2)), rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(got, want, atol=1e-3 * scale)
    assert got[3].max() > got[[0, 1, 2, 4]].max(axis=(1, 2)).max()  # the defect stands out, as in torch


def test_int8_leaves_the_first_convolutions_in_float32(tmp_path: Path) -> None:
    detector = tiny_patchcore(32, [[3]])
    export_onnx(detector, 32, tmp_path / "fp32.onnx")
    quantize_int8(tmp_path / "fp32.onnx", tmp_path / ONNX_FILE, _images(4, 32, 3))
    fp32, int8 = onnx.load(str(tmp_path / "fp32.onnx")), onnx.load(str(tmp_path / ONNX_FILE))
    dequantized = {n.output[0] for n in int8.graph.node if n.op_type == "DequantizeLinear"}
    weights = {n.name: n.input[1] for n in int8.graph.node if n.op_type == "Conv"}
    convs = [n.name for n in fp32.graph.node if n.op_type == "Conv"]
    assert len(convs) == 15 and float_convs(fp32) == convs[:6]  # stem, blocks 0-1 of stages 1-3
    # every other convolution reads a dequantised int8 weight; the first six read float32 weights
    assert {name for name, w in weights.items() if w in dequantized} == set(convs[6:])
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"format": "onnx", "image_size": 32}))
    images = _images(3, 32, 4)
    got, want = OnnxDetector(tmp_path).anomaly_maps(images), detector.anomaly_maps(images)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.95


def test_int8_search_folds_the_bank_norms_exactly_and_stays_close_to_exact_distances() -> None:
    rng = np.random.default_rng(0)
    bank = torch.from_numpy(rng.normal(3.0, 1.0, (300, 24))).float()  # off-centre, as features are
    near, far = torch.from_numpy(rng.normal(0, 1, (2, 50, 24))).float()  # seeded: not torch's global state
    queries = torch.cat([bank[:40] + 0.05 * near[:40], 3 + 4 * far[:10]])[None]
    search = Int8Search.from_bank(bank, queries.shape[1])
    b = search.bank_int8.double()
    assert search.bank_int8.dtype == torch.int8 and b.abs().max() <= 127
    assert int(search.q_zero) <= 127 and search.extra.dtype == torch.uint8
    # the constant columns times the folded rows give -round(|b - mean|^2 / (2 s_q s_b)), exactly
    folded = (search.extra[0, 0].double() - float(search.q_zero)) @ b[24:]
    centred = bank.double() - bank.double().mean(0)
    s_qb = float(search.dot_scale) / 2
    np.testing.assert_array_equal(folded.numpy(), -torch.round((centred**2).sum(1) / (2 * s_qb)).numpy())
    got = Int8Search.squared_distances(queries, *search.buffers().values())[0]
    want = torch.cdist(queries[0].double(), bank.double()).min(1).values ** 2
    # near neighbours: within 3 % of a typical squared norm; far queries, clipped to the bank's range, come
    # out somewhat farther here (a defect's patch stays far)
    norm = float((centred**2).sum(1).mean())
    assert (got[:40] - want[:40]).abs().max() < 0.03 * norm
    assert (got[40:] >= 0.98 * want[40:]).all() and (got[40:] <= 1.3 * want[40:]).all()
    assert got[40:].min() > 10 * got[:40].max()


def test_int8_search_exports_to_integer_onnx_that_equals_its_torch_reference(tmp_path: Path) -> None:
    detector = tiny_patchcore(32, [[3], [3, 5]])
    export_onnx(detector, 32, tmp_path / ONNX_FILE, int8_search=True)
    ops = [n.op_type for n in onnx.load(str(tmp_path / ONNX_FILE)).graph.node]
    assert ops.count("MatMulInteger") == 2  # one integer search per member
    assert ops.count("ReduceMin") == 1  # the position-aware part: one float search for all 9 offsets
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"format": "onnx", "image_size": 32}))
    images = _images(4, 32, 7)
    images[2, 10:16, 10:16] = 250
    got = OnnxDetector(tmp_path).anomaly_maps(images)
    graph = EdgePatchCore(detector.module(), 32, int8_search=True).eval()
    with torch.inference_mode():
        reference = graph(torch.from_numpy(to_tensor_normalized(images))).numpy()
    scale = np.abs(reference).max()
    np.testing.assert_allclose(got, reference, atol=1e-4 * scale)  # ONNX Runtime computes what torch does
    exact = detector.anomaly_maps(images)
    assert np.corrcoef(got.ravel(), exact.ravel())[0, 1] > 0.99
    assert got[2].max() > got[[0, 1, 3]].max()


def _service(detector: PatchCoreDetector, size: int) -> SimpleNamespace:
    config = InferenceConfig.for_model(
        detector, "widget", size, 1.0, "recall_target", "max", 16, "calibrated"
    )
    return SimpleNamespace(detector=detector, config=config)


def test_exported_folder_scores_without_torch_or_mlflow(tmp_path: Path) -> None:
    detector = tiny_patchcore(32, [[3]])
    service = _service(detector, 32)
    out = tmp_path / "edge"
    result = export_model(service, out, list(_images(4, 40, 5)), False, "test")
    assert is_edge_model(out) and not is_edge_model("models:/x/1")
    assert result.n_check_images == 4 and result.verdicts_equal == 4
    assert result.max_abs_score_diff <= 1e-4 * result.max_abs_score and result.max_rel_score_diff <= 1e-4
    assert "torch" not in (out / "requirements.txt").read_text()
    assert "onnxruntime" in (out / "requirements.txt").read_text()
    images = _images(2, 48, 6)  # any size: resized to the model's 32 px as `predict` does
    np.save(tmp_path / "images.npy", images)
    code = (
        "import json, sys, numpy as np\n"
        "from anomaly_spotter.serving.edge import load_edge_model\n"
        f"model = load_edge_model({str(out)!r})\n"
        f"rows = model.score(list(np.load({str(tmp_path / 'images.npy')!r})))\n"
        "assert 'torch' not in sys.modules and 'mlflow' not in sys.modules, 'heavy import'\n"
        "print(json.dumps([r['score'] for r in rows]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    want = [row["score"] for row in load_edge_model(out).score(list(images))]
    np.testing.assert_allclose(json.loads(proc.stdout), want, rtol=1e-6)
    from anomaly_spotter.serving.inference import score_images

    torch_rows = score_images(detector, list(images), service.config)
    np.testing.assert_allclose(want, [r["score"] for r in torch_rows], rtol=1e-4, atol=1e-5)


def test_export_errors_name_what_to_do(tmp_path: Path) -> None:
    unet = tiny_detector()
    service = SimpleNamespace(detector=unet, config=_service(tiny_patchcore(32, [[3]]), 32).config)
    with pytest.raises(
        ExportError,
        match=r"unet_ae models cannot be exported to ONNX \(only detectors whose exporter\(\) writes a "
        r"graph: patchcore\)",
    ):
        export_model(service, tmp_path / "a", list(_images(2, 32, 0)), False, "test")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("")
    with pytest.raises(ExportError, match="--overwrite"):
        export_model(service, tmp_path / "b", list(_images(2, 32, 0)), False, "test")
    # --overwrite deletes only an export's own folder: never `.`, a clone or any other folder
    with pytest.raises(ExportError, match="replaces only a folder that anomaly-spotter export wrote"):
        export_model(service, tmp_path / "b", list(_images(2, 32, 0)), False, "test", overwrite=True)
    assert (tmp_path / "b" / "x").is_file()
    (tmp_path / "f").write_text("")
    with pytest.raises(ExportError, match="is a file; --out names the model folder"):
        export_model(service, tmp_path / "f", list(_images(2, 32, 0)), False, "test")
    with pytest.raises(EdgeModelError, match="not an exported model folder"):
        load_edge_model(tmp_path / "b")
    assert spread(list(range(10)), 3) == [0, 4, 9] and spread([1, 2], 5) == [1, 2]
