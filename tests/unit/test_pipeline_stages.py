"""The per-stage pipeline functions on tiny inputs: what the train and compute_thresholds stages write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import pytest
import torch

from anomaly_spotter import paths
from anomaly_spotter.config import params_from_dict
from anomaly_spotter.data.prepare import prepare_category
from anomaly_spotter.models.base import Detector
from anomaly_spotter.pipeline import thresholds as thresholds_stage
from anomaly_spotter.pipeline import train as train_stage
from tests.conftest import make_mvtec_category


class _NoEpochs(Detector):
    """A detector without a training loop (like PatchCore): no `history_`."""

    kind = "no_epochs"

    def fit(self, train_images: np.ndarray, val_images: np.ndarray | None = None) -> Self:
        self.mean_ = torch.tensor(float(np.mean(train_images)))
        return self

    def anomaly_maps(self, images: np.ndarray) -> np.ndarray:
        return np.zeros(images.shape[:3], np.float32)

    def module(self) -> torch.nn.Module:
        return torch.nn.Identity()

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": self.mean_}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        return cls()


class _WithEpochs(_NoEpochs):
    def fit(self, train_images: np.ndarray, val_images: np.ndarray | None = None) -> Self:
        super().fit(train_images, val_images)
        self.history_ = pd.DataFrame({"epoch": [1, 2], "train_loss": [0.5, 0.3], "val_loss": [0.6, 0.4]})
        return self


@pytest.fixture
def prepared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A prepared category `widget` under tmp_path (the working directory)."""
    monkeypatch.chdir(tmp_path)
    make_mvtec_category(tmp_path / "raw", n_train=6)
    prepare_category(tmp_path / "raw", "widget", paths.prepared_dir("widget"), 32, 0.34, 0, False)
    return "widget"


@pytest.mark.parametrize(
    ("detector", "files"), [(_NoEpochs, []), (_WithEpochs, ["history.csv", "training_history.png"])]
)
def test_train_writes_history_only_for_detectors_with_epochs(
    prepared: str, monkeypatch: pytest.MonkeyPatch, detector: type[Detector], files: list[str]
) -> None:
    monkeypatch.setattr(train_stage, "build_detector", lambda params: detector())
    params = params_from_dict({"data": {"categories": [prepared]}})
    _, metrics = train_stage.run_train(params, prepared)
    out = paths.model_dir(prepared)
    assert (out / paths.MODEL_FILE).is_file()
    assert sorted(p.name for p in (out / paths.HISTORY_DIR).iterdir()) == sorted(files)
    assert ("best_epoch" in metrics) == bool(files)
    if files:
        assert metrics["best_epoch"] == 2
        history = pd.read_csv(out / paths.HISTORY_DIR / paths.HISTORY_CSV)
        assert history["val_loss"].tolist() == [0.6, 0.4]


def _per_image(category: str, good: list[float], defect: list[float]) -> pd.DataFrame:
    rows = [(category, "test", "good", 0, s) for s in good] + [
        (category, "test", "hole", 1, s) for s in defect
    ]
    rows += [(category, "val", "good", 0, s) for s in good]
    frame = pd.DataFrame(rows, columns=["category", "split", "defect_type", "label", "score"])
    return frame.assign(image_path=[f"{category}/{i}.png" for i in range(len(frame))])


def test_compute_thresholds_writes_one_small_metrics_file_per_category(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    paths.METRICS_ROOT.mkdir()
    pd.concat(
        [_per_image("a", [0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]), _per_image("b", [0.1, 0.5], [0.3, 0.9])]
    ).to_csv(paths.PER_IMAGE_CSV, index=False)
    image_metrics = {
        "a": {
            "image_auroc": 1.0,
            "pixel_auroc": 0.9,
            "aupro": 0.8,
            "pixel_precision": 0.5,
            "pixel_recall": 0.4,
            "pixel_iou": 0.3,
            "f1_max": 1.0,
            "image_auroc.hole": 1.0,
        },
        "b": {
            "image_auroc": 0.75,
            "pixel_auroc": None,
            "aupro": 0.6,
            "pixel_precision": None,
            "pixel_recall": None,
            "pixel_iou": None,
            "f1_max": 0.8,
            "image_auroc.hole": 0.75,
        },
    }
    paths.METRICS_JSON.write_text(json.dumps({"overall": {}, "categories": image_metrics}))
    params = params_from_dict({"data": {"categories": ["a", "b"]}, "thresholds": {"n_folds": 2}})
    result = thresholds_stage.run_compute_thresholds(params)

    a = json.loads(paths.category_metrics_file("a").read_text())
    assert list(a) == [
        "image_auroc",
        "pixel_auroc",
        "aupro",
        "pixel_precision",
        "pixel_recall",
        "pixel_iou",
        "f1",
        "precision",
        "recall",
    ]
    assert (a["image_auroc"], a["pixel_auroc"], a["aupro"]) == (1.0, 0.9, 0.8)
    assert (a["pixel_precision"], a["pixel_recall"], a["pixel_iou"]) == (0.5, 0.4, 0.3)
    detail = json.loads(paths.THRESHOLDS_JSON.read_text())
    assert set(detail["a"]) == {"recall_target", "per_defect", "good_only", "method"}
    assert [a[k] for k in ("f1", "precision", "recall")] == [
        detail["a"]["recall_target"][k] for k in ("f1", "precision", "recall")
    ]
    # out-of-fold: the lowest defect of a fold is below the threshold fitted on the other fold's defects
    assert (a["precision"], a["recall"]) == (1.0, 0.75)
    b = json.loads(paths.category_metrics_file("b").read_text())
    assert b["pixel_auroc"] is None
    overall = json.loads(paths.OVERALL_METRICS_JSON.read_text())
    assert overall["image_auroc"] == pytest.approx(0.875) and overall["pixel_auroc"] == pytest.approx(0.9)
    assert overall["recall"] == pytest.approx((a["recall"] + b["recall"]) / 2, abs=1e-6)
    assert sorted(p.name for p in paths.CATEGORY_METRICS_DIR.iterdir()) == ["a.json", "b.json"]
    assert result["categories"]["a"]["good_only_f1"] is not None and result["overall"] == pytest.approx(
        overall
    )
