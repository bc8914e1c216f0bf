"""The per-stage pipeline functions on tiny inputs: what the train and compute_thresholds stages write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import pytest
import torch

from anomaly_spotter.core.config import Params, params_from_dict
from anomaly_spotter.data.prepared import load_prepared, prepare_category
from anomaly_spotter.detectors.base import Detector
from anomaly_spotter.pipeline import compute_thresholds as thresholds_stage
from anomaly_spotter.pipeline import paths
from anomaly_spotter.pipeline import train as train_stage
from anomaly_spotter.pipeline import visualize as visualize_stage
from anomaly_spotter.pipeline.results import covers_dataset, subset_note
from tests.conftest import make_mvtec_category


class _NoEpochs(Detector):
    """A detector without a training loop (like PatchCore): no `history_`."""

    kind = "no_epochs"
    Options = Params  # any frozen dataclass: this detector reads no options

    @classmethod
    def from_options(cls, options: Any, seed: int) -> Self:
        return cls()

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
        # unet_ae's initialisations (training.candidates) of each member (training.members)
        self.member_candidate_losses_ = [[0.7, 0.5, 0.9], [0.4, 0.6, 0.8]]
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
        assert [metrics[f"candidate_loss_{i}"] for i in range(3)] == [0.7, 0.5, 0.9]
        assert metrics["candidate_chosen"] == 1
        assert [metrics[f"member1_candidate_loss_{i}"] for i in range(3)] == [0.4, 0.6, 0.8]
        assert metrics["member1_candidate_chosen"] == 0
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
            "masked": 1.0,
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
            "masked": 0.5,
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
        "f1",
        "precision",
        "recall",
        "false_alarm_rate",
    ]
    assert (a["image_auroc"], a["pixel_auroc"], a["aupro"]) == (1.0, 0.9, 0.8)
    detail = json.loads(paths.THRESHOLDS_JSON.read_text())
    assert set(detail["a"]) == {"recall_target", "per_defect", "good_only", "method"}
    recall_target = detail["a"]["recall_target"]
    assert a["false_alarm_rate"] == recall_target["false_positives"] / recall_target["n_good"]
    assert recall_target["val_false_alarm_rate"] is not None
    assert [a[k] for k in ("f1", "precision", "recall")] == [
        detail["a"]["recall_target"][k] for k in ("f1", "precision", "recall")
    ]
    # out-of-fold: the lowest defect of a fold is below the threshold fitted on the other fold's defects
    assert (a["precision"], a["recall"]) == (1.0, 0.75)
    b = json.loads(paths.category_metrics_file("b").read_text())
    assert b["pixel_auroc"] is None and "masked" not in b  # in metrics.json, not a DVC headline
    overall = json.loads(paths.OVERALL_METRICS_JSON.read_text())
    assert overall["image_auroc"] == pytest.approx(0.875) and overall["pixel_auroc"] == pytest.approx(0.9)
    assert overall["recall"] == pytest.approx((a["recall"] + b["recall"]) / 2, abs=1e-6)
    assert sorted(p.name for p in paths.CATEGORY_METRICS_DIR.iterdir()) == ["a.json", "b.json"]
    assert result["categories"]["a"]["good_only_f1"] is not None and result["overall"] == pytest.approx(
        overall
    )

    # run over some of the dataset's categories: no overall mean (it would not compare with the whole's)
    for category in ("a", "b", "c"):
        (tmp_path / "data" / category / "train" / "good").mkdir(parents=True)
    (tmp_path / "data" / "notes").mkdir()  # not a category: no train/good
    whole = params_from_dict({"data": {"root": "data", "categories": ["a", "b", "c"]}})
    assert covers_dataset(whole) and not covers_dataset(params_from_dict({"data": {"root": "data"}}))
    subset = params_from_dict(
        {"data": {"root": "data", "categories": ["b", "a"]}, "thresholds": {"n_folds": 2}}
    )
    assert subset_note(subset).startswith("data.categories covers 2 of the 3 categories in data (a, b):")
    result = thresholds_stage.run_compute_thresholds(subset)
    assert json.loads(paths.OVERALL_METRICS_JSON.read_text()) == dict.fromkeys(a)  # every value null
    assert json.loads(paths.category_metrics_file("a").read_text()) == a  # the categories' rows unchanged
    assert set(result["overall"].values()) == {None}


def test_compute_thresholds_reports_a_good_only_category_as_absent_not_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No defective test image: no recall-target threshold, F1 / precision / recall null (also for the
    good-only threshold), the good-only threshold calibrated; the overall mean skips the absent values."""
    monkeypatch.chdir(tmp_path)
    paths.METRICS_ROOT.mkdir()
    good_only = _per_image("g", [0.1, 0.2, 0.3, 0.9], [])
    pd.concat([_per_image("a", [0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]), good_only]).to_csv(
        paths.PER_IMAGE_CSV, index=False
    )
    absent = dict.fromkeys(thresholds_stage.IMAGE_HEADLINE)  # what extract_metrics writes for "g" (nan)
    present = dict.fromkeys(thresholds_stage.IMAGE_HEADLINE, 0.5)
    paths.METRICS_JSON.write_text(json.dumps({"overall": {}, "categories": {"a": present, "g": absent}}))
    params = params_from_dict({"data": {"categories": ["a", "g"]}, "thresholds": {"n_folds": 2}})
    thresholds_stage.run_compute_thresholds(params)

    g = json.loads(paths.category_metrics_file("g").read_text())
    assert g == dict.fromkeys(thresholds_stage.IMAGE_HEADLINE + thresholds_stage.THRESHOLD_HEADLINE)
    detail = json.loads(paths.THRESHOLDS_JSON.read_text())["g"]
    assert detail["recall_target"]["threshold"] is None and detail["recall_target"]["n_defective"] == 0
    assert detail["per_defect"] == {} and "no defective image" in detail["method"]
    # the good-only threshold: the top validation good score (1 % of 4 rounds to none flagged)
    assert detail["good_only"]["threshold"] == 0.9 and detail["good_only"]["false_positives"] == 0
    assert [detail["good_only"][k] for k in ("precision", "recall", "f1")] == [None, None, None]
    overall = json.loads(paths.OVERALL_METRICS_JSON.read_text())
    a = json.loads(paths.category_metrics_file("a").read_text())
    assert overall["recall"] == a["recall"] and overall["image_auroc"] == 0.5


class _NoReconstruction:
    """What visualize needs of a detector: no pixel calibration, no reconstruction."""

    pixel_calibration_ = None

    def reconstruct(self, images: np.ndarray) -> None:
        return None


@pytest.mark.parametrize(
    ("method", "recall_t", "n_defective", "served"),
    [
        ("recall_target", 0.4, 4, (0.4, 0)),
        ("good_only", 0.4, 4, (0.7, 1)),
        ("recall_target", None, 0, (0.7, 1)),  # no defective image: the good-only threshold, as register
    ],
)
def test_visualize_draws_at_the_served_threshold_without_contours_for_unmasked_defects(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    recall_t: float | None,
    n_defective: int,
    served: tuple[float, int],
) -> None:
    from anomaly_spotter.core.anomaly_map import RegionRule
    from anomaly_spotter.core.scoring import write_scores

    monkeypatch.chdir(tmp_path)
    make_mvtec_category(tmp_path / "raw", n_train=6)
    (tmp_path / "raw" / "widget" / "ground_truth" / "hole" / "000_mask.png").unlink()
    (tmp_path / "raw" / "widget" / "ground_truth" / "hole" / "001_mask.png").unlink()
    with pytest.warns(UserWarning, match="have no mask"):
        prepare_category(tmp_path / "raw", "widget", paths.prepared_dir("widget"), 32, 0.34, 0, False)
    data = load_prepared(paths.prepared_dir("widget")).split("val", "test")
    rng = np.random.default_rng(0)
    maps = rng.random((len(data.index), 32, 32)).astype(np.float32)
    out = paths.outputs_dir("widget")
    out.mkdir(parents=True)
    write_scores(out, data.index, maps, maps.max(axis=(1, 2)), RegionRule("otsu"), None)
    paths.METRICS_ROOT.mkdir()
    detail = {
        "recall_target": {"threshold": recall_t, "n_defective": n_defective},
        "good_only": {"threshold": 0.7},
    }
    paths.THRESHOLDS_JSON.write_text(json.dumps({"widget": detail}))
    thresholds: list[float] = []
    ground_truth: dict[str, np.ndarray | None] = {}

    def fake_overlay(image, raw_map, region, scale, score, threshold, title):  # noqa: ANN001, ANN202
        thresholds.append(threshold)
        return image

    def fake_example(image, recon, overlay, pred, gt, path, title):  # noqa: ANN001, ANN202
        ground_truth[title] = gt

    monkeypatch.setattr(visualize_stage, "load_detector", lambda path: _NoReconstruction())
    monkeypatch.setattr(visualize_stage, "render_overlay", fake_overlay)
    monkeypatch.setattr(visualize_stage, "plot_example", fake_example)
    params = params_from_dict(
        {
            "data": {"categories": ["widget"]},
            "registry": {"threshold": method},
            "visualize": {"max_per_defect": 5},
        }
    )
    metrics = visualize_stage.run_visualize(params, "widget")

    assert metrics["threshold_good_only"] == served[1]
    test = data.index[data.index["split"] == "test"]
    assert thresholds == [served[0]] * len(test)
    for row in test.itertuples():
        gt = ground_truth[f"widget/{row.defect_type}/{Path(row.image_path).name}"]
        if row.defect_type == "scratch":  # masked: the ground truth is drawn
            assert gt is not None and gt.any()
        else:  # good, or a hole without its mask: no ground-truth contour
            assert gt is None, row.image_path
