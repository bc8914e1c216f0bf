"""Real users' datasets through the real pipeline (tiny `dvc repro`, temporary SQLite MLflow store).

Two categories the built-in data never has: `plain`, with no defective image at all (test/ holds only
good/, no ground_truth/), and `mixed`, a defect type with JPEG-compressed masks (`hole`) and one with no
masks at all (`scratch`). Checks that every stage finishes with the unchanged params: metrics that need
defects (or masks) are null, never 0; pixel metrics cover the masked images only and `masked`
says how many; the good-only category is served, and drawn, with its good-only threshold; `dvc metrics
show` prints it; and `registry.threshold: good_only` reruns exactly visualize and register, and works.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_mvtec_category
from tests.integration.test_pipeline import (
    MAX_METRICS_WIDTH,
    TINY,
    _merge,
    _ran,
    _run,
    _set_param,
    new_project,
)

pytestmark = pytest.mark.integration

CATEGORIES = ["plain", "mixed"]
ROOT = "userdata"
SIZE = 48  # on disk; prepared at TINY's data.image_size (32)
N_HOLE = N_SCRATCH = 3


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A git + DVC repository with the pipeline, tiny params and a users' dataset; `dvc repro` run."""
    project = tmp_path_factory.mktemp("datasets")
    data = project / ROOT
    make_mvtec_category(data, "plain", n_train=10, n_test_good=4, defects={}, size=SIZE)
    assert not (data / "plain" / "ground_truth").exists()
    cat = make_mvtec_category(
        data, "mixed", n_train=10, n_test_good=3, defects={"hole": N_HOLE, "scratch": N_SCRATCH}, size=SIZE
    )
    shutil.rmtree(cat / "ground_truth" / "scratch")  # scratch: labelled defective, no masks
    for mask_png in sorted((cat / "ground_truth" / "hole").glob("*.png")):  # hole: JPEG masks
        Image.open(mask_png).save(mask_png.with_suffix(".jpg"), quality=50)
        mask_png.unlink()
    new_project(project, _merge(TINY, {"data": {"root": ROOT, "categories": CATEGORIES}}), "users' dataset")
    result = _run(["dvc", "repro"], project)
    return {"path": project, "log": result.stdout + result.stderr}


def _json(project: dict[str, object], name: str) -> dict:
    return json.loads((project["path"] / name).read_text())


def test_every_stage_runs_and_prepare_reports_the_masks(project: dict[str, object]) -> None:
    log = project["log"]
    per_category = ("prepare", "train", "process_all", "visualize", "register")
    expected = {f"{s}@{c}" for s in per_category for c in CATEGORIES} | {
        "extract_metrics",
        "compute_thresholds",
    }
    assert expected <= _ran(log), log
    assert f"mixed: {N_SCRATCH} of {N_HOLE + N_SCRATCH} defective test images have no mask" in log
    first_jpeg = f"{ROOT}/mixed/ground_truth/hole/000_mask.jpg"  # as data.root names it
    assert f"mixed: {N_HOLE} mask(s) have more than two grey levels (first: {first_jpeg}," in log
    summary = _json(project, "data/prepared/mixed/summary.json")
    assert summary["n_defective_without_mask"] == N_SCRATCH and summary["n_masks_binarised"] == N_HOLE


def test_metrics_that_need_defects_are_null_for_a_good_only_category(project: dict[str, object]) -> None:
    values = _json(project, "metrics/metrics.json")["categories"]["plain"]
    absent = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "pixel_precision", "pixel_recall", "pixel_iou")
    assert {k: values[k] for k in absent} == dict.fromkeys(absent)
    assert values["masked"] is None and values["n_defective"] == 0 and values["n_images"] == 4
    assert 0.0 <= values["anomaly_pct_good"] <= 100.0  # what can be measured still is
    headline = _json(project, "metrics/categories/plain.json")
    assert set(headline.values()) == {None}
    thresholds = _json(project, "metrics/thresholds.json")["plain"]
    assert thresholds["recall_target"]["threshold"] is None and thresholds["per_defect"] == {}
    assert isinstance(thresholds["good_only"]["threshold"], float)
    assert thresholds["good_only"]["precision"] is None and thresholds["good_only"]["n_good"] == 4


def test_pixel_metrics_cover_only_the_images_with_masks(project: dict[str, object]) -> None:
    values = _json(project, "metrics/metrics.json")["categories"]["mixed"]
    assert values["n_defective"] == N_HOLE + N_SCRATCH and values["n_masked_defective"] == N_HOLE
    assert values["masked"] == 0.5
    assert 0.0 <= values["image_auroc"] <= 1.0 and 0.0 <= values["pixel_auroc"] <= 1.0
    assert 0.0 <= values["image_auroc.scratch"] <= 1.0  # the unmasked type is evaluated at image level
    prepared = np.load(project["path"] / "data/prepared/mixed/masks.npy")
    index = (project["path"] / "data/prepared/mixed/index.csv").read_text()
    assert "has_mask" in index.splitlines()[0]
    # JPEG masks binarised at half range: the hole masks (6 x 6..8 px of 48, at 32 px) stay that small
    assert 0 < prepared.sum(axis=(1, 2)).max() <= 6 * 8 * (32 / SIZE) ** 2 + 8
    overall = _json(project, "metrics/overall.json")
    mixed = _json(project, "metrics/categories/mixed.json")
    assert overall["image_auroc"] == mixed["image_auroc"]  # the good-only category's null is skipped


def test_good_only_category_is_served_and_drawn_with_its_good_only_threshold(
    project: dict[str, object],
) -> None:
    import mlflow

    good_t = _json(project, "metrics/thresholds.json")["plain"]["good_only"]["threshold"]
    registered = _json(project, "registry/plain.json")
    assert registered["threshold"] == good_t and registered["threshold_method"] == "good_only"
    assert registered["threshold_note"].startswith("plain has no defective test image")
    assert "register plain: plain has no defective test image" in project["log"]
    assert "visualize plain: plain has no defective test image" in project["log"]
    other = _json(project, "registry/mixed.json")
    assert other["threshold_method"] == "recall_target" and "threshold_note" not in other
    assert (
        other["threshold"] == _json(project, "metrics/thresholds.json")["mixed"]["recall_target"]["threshold"]
    )
    assert len(list((project["path"] / "plots/plain/examples").glob("good_*.png"))) == 1
    assert len(list((project["path"] / "plots/mixed/examples").glob("scratch_*.png"))) == 1
    mlflow.set_tracking_uri(f"sqlite:///{project['path'] / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["anomaly-spotter"], output_format="list")
    used = {r.info.run_name: r.data.metrics.get("threshold_good_only") for r in runs}
    assert used["visualize@plain"] == 1.0 and used["visualize@mixed"] == 0.0


def test_metrics_show_prints_the_absent_metrics(project: dict[str, object]) -> None:
    shown = _run(["dvc", "metrics", "show"], project["path"]).stdout
    lines = shown.splitlines()
    assert max(len(line) for line in lines) <= MAX_METRICS_WIDTH, shown
    assert "false_alarm_rate" in lines[0].split()
    good_only = next(line for line in lines if line.startswith("metrics/categories/plain.json"))
    assert set(good_only.split()[1:]) == {"-"}, shown
    # the plots page builds too (the good-only category's ROC / PR tables are empty: no defect to plot)
    _run(["dvc", "plots", "show"], project["path"])
    assert (project["path"] / "dvc_plots" / "index.html").is_file()
    assert (project["path"] / "plots/plain/roc.csv").read_text().strip() == "fpr,tpr,threshold"


def test_threshold_good_only_reruns_visualize_and_register(project: dict[str, object]) -> None:
    path = project["path"]
    _set_param(path, "registry.threshold", "good_only")
    out = _run(["dvc", "repro"], path)
    assert _ran(out.stdout) == {f"{s}@{c}" for s in ("visualize", "register") for c in CATEGORIES}
    thresholds = _json(project, "metrics/thresholds.json")
    for category in CATEGORIES:
        registered = _json(project, f"registry/{category}.json")
        assert registered["threshold_method"] == "good_only" and "threshold_note" not in registered
        assert registered["threshold"] == thresholds[category]["good_only"]["threshold"]
