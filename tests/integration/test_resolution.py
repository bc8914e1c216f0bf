"""A high-resolution, non-square category through the README's own path (docs/resolution.md): `anomaly-spotter
generate --category sheet`, `dvc repro` at native resolution in windows, then every path that scores.

The sheet is drawn small here (512 x 384, 4:3) and the windows are 64 px (88 an image), so the whole run
takes a few minutes on 2 cores; the figures at 2048 x 1536 come from `python -m
anomaly_spotter.bench.resolution` (benchmarks/resolution.md).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.integration.test_pipeline import _run, new_project

pytestmark = pytest.mark.integration

WIDTH, HEIGHT, TILE = 512, 384, 64
CLI = [sys.executable, "-m", "anomaly_spotter.cli"]
PARAMS = {
    "data": {
        "root": "data/highres",
        "categories": ["sheet"],
        "image_size": TILE,
        "val_fraction": 0.2,
        "resolution": "native",
        "overlap": 0.25,
    },
    "builtin": {"image_size": 32, "n_train": 4, "n_test_good": 2, "n_test_per_defect": 1},
    "model": {
        "name": "patchcore",
        "patchcore": {"input_size": 96, "members": [[3]], "position_max_images": 50},
    },
    "process": {"batch_size": 16},
    "thresholds": {"n_folds": 2},
    "visualize": {"max_per_defect": 1},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = new_project(tmp_path_factory.mktemp("highres"), PARAMS)
    size = ["--width", str(WIDTH), "--height", str(HEIGHT)]
    counts = ["--train", "10", "--test-good", "3", "--per-defect", "1"]
    _run([*CLI, "generate", "--category", "sheet", "--out", "data/highres", *size, *counts], project)
    _run(["dvc", "repro"], project)
    _run([*CLI, "promote", "--category", "sheet"], project)
    return project


def test_the_pipeline_works_at_native_resolution_in_windows(project: Path) -> None:
    state = torch.load(project / "models/sheet/model.pt", map_location="cpu", weights_only=True)
    assert state["geometry"] == {"tile": TILE, "canvas": [HEIGHT, WIDTH], "overlap": 0.25}  # saved with it
    summary = json.loads((project / "data/prepared/sheet/summary.json").read_text())
    assert (summary["canvas_width"], summary["canvas_height"], summary["n_windows"]) == (WIDTH, HEIGHT, 88)
    values = json.loads((project / "metrics/metrics.json").read_text())["categories"]["sheet"]
    assert (values["map_width"], values["map_height"]) == (WIDTH, HEIGHT)  # pixel metrics at native size
    assert 0.5 < values["pixel_auroc"] <= 1.0 and 0.0 <= values["image_auroc"] <= 1.0
    maps = sorted((project / "outputs/sheet/maps/test").rglob("*.npy"))
    assert maps and np.load(maps[0]).shape == (HEIGHT, WIDTH)


def test_every_path_that_scores_uses_the_windows(project: Path, tmp_path: Path) -> None:
    """predict (torch and the int8 export) draws overlays at the image's own shape; the served model gives
    predict's scores; score-spark's executors send the image at the working resolution, aspect kept."""
    import mlflow

    from anomaly_spotter.deploy import spark
    from anomaly_spotter.serving.inference import decode_image
    from anomaly_spotter.serving.model import IMAGE_COLUMN, load_service_model

    test = sorted((project / "data/highres/sheet/test").rglob("*.png"))
    model = "models:/anomaly-spotter-sheet@champion"
    _run(
        [
            *CLI,
            "predict",
            *map(str, test),
            "--model",
            model,
            "--out",
            str(tmp_path / "torch"),
            "--csv",
            str(tmp_path / "torch.csv"),
            "--no-progress",
        ],
        project,
    )
    with Image.open(next((tmp_path / "torch").rglob("*.png"))) as overlay:
        assert overlay.width > overlay.height  # 4:3, not squashed to a square
    torch_rows = pd.read_csv(tmp_path / "torch.csv")
    assert len(torch_rows) == len(test)

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    service = mlflow.pyfunc.load_model(model)
    served = service.predict(pd.DataFrame({IMAGE_COLUMN: [p.read_bytes() for p in test[:3]]}))
    np.testing.assert_allclose(served["score"], torch_rows["score"][:3], rtol=1e-5)

    config = load_service_model(model).config
    npy, error = spark.prepare_image(test[0].read_bytes(), str(test[0]), config)
    assert error is None and decode_image(npy).shape == (HEIGHT, WIDTH, 3)

    _run(
        [
            *CLI,
            "export",
            "--model",
            model,
            "--int8",
            "--out",
            str(tmp_path / "edge"),
            "--calibration",
            "data/highres/sheet/train/good",
            "--calibration-images",
            "4",
        ],
        project,
    )
    _run(
        [
            *CLI,
            "predict",
            *map(str, test),
            "--model",
            str(tmp_path / "edge"),
            "--csv",
            str(tmp_path / "edge.csv"),
            "--no-progress",
        ],
        project,
    )
    edge_rows = pd.read_csv(tmp_path / "edge.csv")
    assert (edge_rows["verdict"] == torch_rows["verdict"]).mean() >= 0.8
    buf = io.BytesIO()
    Image.fromarray(np.full((HEIGHT, HEIGHT, 3), 128, np.uint8)).save(buf, format="PNG")
    square = service.predict(pd.DataFrame({IMAGE_COLUMN: [buf.getvalue()]}))  # another shape: padded
    assert np.isfinite(square["score"]).all()
