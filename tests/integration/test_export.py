"""`anomaly-spotter export` on a registered PatchCore model, then the exported model through `predict`
(light path and registry), MLflow's pyfunc loader (what `mlflow models serve` runs) and the sibling
registered model; and, on real MVTec AD bottle and pill (../shared), the parity of the fp32 and int8
exports with the torch model."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from anomaly_spotter import cli, tracking
from anomaly_spotter.bench import serve as serve_bench
from anomaly_spotter.data.prepared import load_prepared, prepare_category
from anomaly_spotter.detectors import parse_options
from anomaly_spotter.serving.inference import InferenceConfig
from anomaly_spotter.serving.model import log_service_model
from tests.conftest import MVTEC_256, REPO
from tests.unit.test_cli import ServiceStore, build_store, read_csv
from tests.unit.test_export_files import dockerfile_env_and_cmd

pytestmark = pytest.mark.integration

CATEGORY = "widget"
NAME = f"anomaly-spotter-{CATEGORY}"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceStore]:
    """tests/unit/test_cli.py's registered store (a tiny unet_ae, version 1) plus version 2: a tiny
    PatchCore fitted on the same prepared images, registered the way `register` does."""
    import mlflow

    old = os.environ.get("MLFLOW_TRACKING_URI")
    store = build_store(tmp_path_factory.mktemp("export"))
    prepared = store.root / "prepared_pc"
    prepare_category(store.root / "data", CATEGORY, prepared, 32, 0.4, 0, progress=False)  # 2 val images
    data = load_prepared(prepared)
    detector = tiny_patchcore_on(np.asarray(data.split("train").images), np.asarray(data.split("val").images))
    detector.save(store.root / "patchcore.pt")
    with mlflow.start_run():
        config = InferenceConfig.for_model(
            detector, CATEGORY, 32, store.threshold, "recall_target", "max", 16, "calibrated"
        )
        log_service_model(store.root / "patchcore.pt", config, NAME, detector.kind)
    yield store
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def tiny_patchcore_on(train: np.ndarray, val: np.ndarray) -> object:
    from anomaly_spotter.detectors.patchcore.detector import PatchCoreDetector
    from anomaly_spotter.pipeline.train import calibrate_pixels

    options = {"members": [[3], [3, 5]], "input_size": 64, "coreset_ratio": 0.1, "sigma": 2.0}
    detector = PatchCoreDetector.from_options(parse_options("patchcore", options, 0), 0).fit(train, val)
    calibrate_pixels(detector, val, 0.99)
    return detector


def _predict(model: str, paths: list[Path], csv: Path) -> dict[str, dict[str, str]]:
    assert cli.main(["predict", *map(str, paths), "--model", model, "--csv", str(csv), "--no-progress"]) == 0
    return read_csv(csv)


def test_export_then_predict_serve_and_register(
    store: ServiceStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    good = store.root / "data" / CATEGORY / "train" / "good"
    fp32, int8 = tmp_path / "fp32", tmp_path / "int8"
    model = f"models:/{NAME}/2"
    assert cli.main(["export", "--model", model, "--out", str(fp32), "--calibration", str(good)]) == 0
    out = capsys.readouterr().out
    assert "exported fp32 ONNX" in out and "verdicts equal 6/6" in out
    args = [
        "export",
        "--model",
        model,
        "--int8",
        "--out",
        str(int8),
        "--calibration",
        str(good),
        "--register",
    ]
    assert cli.main(args) == 0
    assert f"registered {NAME}-edge version 1" in capsys.readouterr().out
    tags = tracking.model_version_tags(f"{NAME}-edge", "1")
    assert tags["precision"] == "int8" and tags["source_model"] == model and tags["category"] == CATEGORY

    want = _predict(model, store.image_paths, tmp_path / "torch.csv")
    got = _predict(str(fp32), store.image_paths, tmp_path / "fp32.csv")  # ONNX Runtime, no MLflow
    edge = _predict(f"models:/{NAME}-edge/1", store.image_paths, tmp_path / "edge.csv")  # through MLflow
    scores = {k: np.array([float(rows[str(p)]["score"]) for p in store.image_paths]) for k, rows in
              (("torch", want), ("fp32", got), ("int8", edge))}  # fmt: skip
    scale = np.abs(scores["torch"]).max()
    np.testing.assert_allclose(scores["fp32"], scores["torch"], rtol=1e-4, atol=1e-4 * scale)
    assert [got[str(p)]["verdict"] for p in store.image_paths] == [
        want[str(p)]["verdict"] for p in store.image_paths
    ]
    assert np.corrcoef(scores["int8"], scores["torch"])[0, 1] > 0.95
    assert {row["threshold"] for row in edge.values()} == {want[str(store.image_paths[0])]["threshold"]}

    # the pyfunc MLflow loads (and `mlflow models serve` runs) scores the folder as `predict` does
    loaded = mlflow.pyfunc.load_model(str(fp32))
    frame = loaded.predict(pd.DataFrame({"image": [p.read_bytes() for p in store.image_paths]}))
    np.testing.assert_allclose(frame["score"], scores["fp32"], rtol=1e-6)
    requirements = (fp32 / "requirements.txt").read_text()
    assert "onnxruntime" in requirements and "torch" not in requirements

    # what the container runs: the Dockerfile's CMD with its ENV, the folder in place of /opt/model; the
    # code comes from the folder (PYTHONPATH), and a body over the cap is answered 413 unread
    env, cmd = dockerfile_env_and_cmd((REPO / "Dockerfile").read_text())
    env = {k: v.replace("/opt/model", str(fp32)) for k, v in env.items() if not k.startswith("PIP_")}
    env["ANOMALY_SPOTTER_SERVE_MAX_BYTES"] = str(2**20)  # 1 MB for the test; the image's is 64 MB
    port = serve_bench.free_port()
    cmd = [{"0.0.0.0": "127.0.0.1", "8080": str(port)}.get(word, word) for word in cmd]
    with serve_bench.running(
        cmd, port, log=tmp_path / "container.log", env=env, what="the container's CMD"
    ) as url:
        served = serve_bench.post(
            f"{url}/invocations", serve_bench.request_body([store.image_paths[0].read_bytes()])
        )
        assert served.status == 200, served.error
        assert json.loads(served.body)["predictions"][0]["score"] == pytest.approx(
            scores["fp32"][0], rel=1e-5
        )
        junk = serve_bench.post(f"{url}/invocations", b"x" * (2**20 + 1))
        assert junk.status == 413 and "REQUEST_TOO_LARGE" in junk.body


def test_export_refuses_a_unet_ae_model(
    store: ServiceStore, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    good = store.root / "data" / CATEGORY / "train" / "good"
    args = [
        "export",
        "--model",
        f"models:/{NAME}/1",
        "--out",
        str(tmp_path / "x"),
        "--calibration",
        str(good),
    ]
    assert cli.main(args) == 1
    refusal = "unet_ae models cannot be exported to ONNX (only detectors whose exporter() writes a graph: "
    assert refusal + "patchcore)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.skipif(not MVTEC_256.is_dir(), reason=f"real MVTec AD data not found at {MVTEC_256}")
@pytest.mark.parametrize("category", ["bottle", "pill"])
def test_exports_keep_the_torch_model_accuracy_on_mvtec(category: str, tmp_path: Path) -> None:
    """Single-bank PatchCore (`members: [[3]]`, the rest as params.yaml) at 256 px: fp32 scores equal the
    torch model's to 1e-4 relative; int8 loses at most 0.005 image and 0.005 pixel AUROC."""
    from anomaly_spotter.core.config import load_params
    from anomaly_spotter.core.metrics import summarize_category
    from anomaly_spotter.core.scoring import score_batches
    from anomaly_spotter.deploy.export import export_model, spread
    from anomaly_spotter.detectors.patchcore.detector import PatchCoreDetector
    from anomaly_spotter.pipeline.train import calibrate_pixels
    from anomaly_spotter.serving.edge import load_edge_model
    from tests.conftest import REPO

    params = load_params(REPO / "params.yaml")
    prepare_category(MVTEC_256, category, tmp_path / "p", 256, params.data.val_fraction, params.seed, False)
    data = load_prepared(tmp_path / "p")
    train, val = np.asarray(data.split("train").images), np.asarray(data.split("val").images)
    options = parse_options(
        "patchcore", {**params.model.sections["patchcore"], "members": [[3]]}, params.seed
    )
    detector = PatchCoreDetector.from_options(options, params.seed).fit(train, val)
    calibrate_pixels(detector, val, params.train.pixel_quantile)
    config = InferenceConfig.for_model(detector, category, 256, 0.0, "good_only", "max", 16, "calibrated")
    service = SimpleNamespace(detector=detector, config=config)
    test = data.split("test")
    images, masks = np.asarray(test.images), np.asarray(test.masks)
    results = {}
    for name, scorer in [("torch", detector), ("fp32", None), ("int8", None)]:
        if scorer is None:
            export_model(service, tmp_path / name, spread(list(train), 32), name == "int8", "test")
            scorer = load_edge_model(tmp_path / name).detector
        maps, scores = score_batches(scorer, images, 16, "max", progress=False)
        summary = summarize_category(
            test.index.assign(score=scores),
            masks,
            maps,
            params.metrics.aupro_fpr_limit,
            pixel_rows=test.index["has_mask"].to_numpy().astype(bool),
        )
        results[name] = (scores, summary["image_auroc"], summary["pixel_auroc"])
    torch_scores, torch_image, torch_pixel = results["torch"]
    assert torch_image > 0.97 and torch_pixel > 0.98  # a real model, not a degenerate one
    scale = np.abs(torch_scores).max()
    np.testing.assert_allclose(results["fp32"][0], torch_scores, rtol=1e-4, atol=1e-4 * scale)
    assert results["int8"][1] >= torch_image - 0.005
    assert results["int8"][2] >= torch_pixel - 0.005
