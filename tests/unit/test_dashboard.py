"""The review dashboard (`anomaly-spotter dashboard`): its numbers, pictures, proposals and comparison,
and the Streamlit page driven by Streamlit's AppTest (no browser).

`build_project` (also used by tests/integration/test_dashboard.py) writes real pipeline outputs in a
temporary folder with the stage functions themselves, in-process (no DVC): a tiny MVTec-layout category,
`prepare`, a tiny fitted detector, `process_all`, `extract_metrics` and `compute_thresholds`; and a SQLite
MLflow store with two registered versions of anomaly-spotter-widget, each with the tags `register` sets
and a `run.process_all` run that logged its scores.csv (version 2's scores differ on a few images).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from anomaly_spotter import cli, tracking
from anomaly_spotter.cli.dashboard import cmd_dashboard
from anomaly_spotter.core.config import params_from_dict, params_to_dict
from anomaly_spotter.core.overlay import DEFECTIVE_RGB, GOOD_RGB, category_scale, render_overlay
from anomaly_spotter.core.scoring import SCORES_FILE
from anomaly_spotter.core.thresholds import evaluate_threshold
from anomaly_spotter.data.prepared import load_prepared
from anomaly_spotter.pipeline import paths
from anomaly_spotter.pipeline.compute_thresholds import run_compute_thresholds
from anomaly_spotter.pipeline.extract_metrics import run_extract_metrics
from anomaly_spotter.pipeline.prepare import run_prepare
from anomaly_spotter.pipeline.process_all import run_process
from anomaly_spotter.pipeline.train import calibrate_pixels
from anomaly_spotter.review import dashboard
from tests.conftest import make_mvtec_category
from tests.unit.test_inference import tiny_detector

CATEGORY = "widget"
NAME = f"anomaly-spotter-{CATEGORY}"
DEFECTS = {"hole": 3, "scratch": 3}
APP = str(dashboard.APP_FILE)
APP_TIMEOUT_S = 60
CHANGED_IN_V2 = 3  # images whose version-2 score crosses the threshold


@dataclass
class Project:
    root: Path
    uri: str
    thresholds: dict
    v1_threshold: float
    v2_changed: list[str]  # image paths whose verdict differs between versions 1 and 2


def _register(client, scores: pd.DataFrame, tags: dict[str, str], tmp: Path) -> str:
    """A process_all-like run that logs `scores` as scores.csv, and a version of NAME tagged with it."""
    import mlflow

    scores.to_csv(tmp / SCORES_FILE, index=False)
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(tmp / SCORES_FILE))
    version = client.create_model_version(NAME, f"runs:/{run.info.run_id}/service_model", run.info.run_id)
    tracking.set_model_version_tags(NAME, version.version, {**tags, "run.process_all": run.info.run_id})
    return str(version.version)


def build_project(root: Path, registry: bool = True) -> Project:
    """Pipeline outputs for CATEGORY under `root` and (`registry`) an MLflow store with versions 1
    (champion) and 2; creating the store's tables takes most of the time."""
    from mlflow import MlflowClient

    make_mvtec_category(root / "raw", CATEGORY, n_train=8, n_test_good=4, defects=DEFECTS, size=32, seed=3)
    raw = {
        "data": {"root": "raw", "categories": [CATEGORY], "image_size": 32, "val_fraction": 0.25},
        "thresholds": {"n_folds": 2},
    }
    params = params_from_dict(raw)
    (root / "params.yaml").write_text(yaml.safe_dump(params_to_dict(params), sort_keys=False))
    with contextlib.chdir(root):
        run_prepare(params, CATEGORY, progress=False)
        prepared = load_prepared(paths.prepared_dir(CATEGORY))
        detector = tiny_detector(np.asarray(prepared.split("train").images))
        calibrate_pixels(detector, np.asarray(prepared.split("val").images), 0.99)
        paths.model_dir(CATEGORY).mkdir(parents=True)
        detector.save(paths.model_dir(CATEGORY) / paths.MODEL_FILE)
        run_process(params, CATEGORY, progress=False)
        run_extract_metrics(params)
        run_compute_thresholds(params)
    thresholds = json.loads((root / paths.THRESHOLDS_JSON).read_text())
    threshold = thresholds[CATEGORY]["recall_target"]["threshold"]
    scores = pd.read_csv(root / paths.outputs_dir(CATEGORY) / SCORES_FILE, keep_default_na=False)
    # version 2 scored the highest-scoring test images below version 1's threshold
    v2 = scores.copy()
    crossing = v2[(v2["split"] == "test") & (v2["score"] > threshold)].nlargest(CHANGED_IN_V2, "score").index
    v2.loc[crossing, "score"] = threshold - 1.0
    uri = f"sqlite:///{root / 'mlflow.db'}"
    changed = sorted(scores.loc[crossing, "image_path"])
    if not registry:
        return Project(root, uri, thresholds, threshold, changed)
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        with contextlib.chdir(root):
            tracking.connect()
            client = MlflowClient()
            client.create_registered_model(NAME)
            md5 = tracking.content_md5(paths.model_dir(CATEGORY) / paths.MODEL_FILE)
            common = {"category": CATEGORY, "threshold_method": "recall_target", "threshold": str(threshold)}
            v1 = _register(client, scores, {**common, "image_auroc": "0.9", "model_md5": "old"}, root)
            _register(client, v2, {**common, "image_auroc": "0.8", tracking.MODEL_MD5_TAG: md5}, root)
            tracking.set_alias(NAME, tracking.CHAMPION, v1)
            (root / SCORES_FILE).unlink()
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return Project(root, uri, thresholds, threshold, changed)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return build_project(tmp_path_factory.mktemp("dashboard"))


@pytest.fixture
def here(project: Project, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    """The project as working directory and tracking store (as `anomaly-spotter dashboard` runs)."""
    monkeypatch.chdir(project.root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project.uri)
    yield project
    for proposal in (project.root / dashboard.PROPOSALS_ROOT).glob("*.json"):
        proposal.unlink()


def _app():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=APP_TIMEOUT_S)
    at.run()
    assert not at.exception, at.exception
    return at


def _test_split(project: Project) -> pd.DataFrame:
    table = pd.read_csv(project.root / paths.outputs_dir(CATEGORY) / SCORES_FILE, keep_default_na=False)
    return table[table["split"] == "test"]


def _expected(project: Project, threshold: float) -> dict:
    test = _test_split(project)
    return evaluate_threshold(test["label"].to_numpy(), test["score"].to_numpy(), threshold)


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


# --------------------------------------------------------------------------------------------------
# the library (no Streamlit)
# --------------------------------------------------------------------------------------------------


def test_library_and_cli_import_without_streamlit() -> None:
    code = (
        "import sys; sys.modules['streamlit'] = None\n"
        "import anomaly_spotter.review.dashboard, anomaly_spotter.cli\n"
        "assert 'altair' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_dashboard_without_streamlit_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = dashboard.importlib.util.find_spec
    monkeypatch.setattr(
        dashboard.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "streamlit" else real(name, *a),
    )
    assert cli.main(["dashboard", "--port", "9"]) == 1
    assert "pip install -e '.[dashboard]'" in capsys.readouterr().err


def test_no_pipeline_outputs_says_to_run_dvc_repro(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["dashboard"]) == 1
    err = capsys.readouterr().err
    assert "params.yaml not found" in err and "run `dvc repro`" in err
    at = _app()
    assert "run `dvc repro`" in at.error[0].value
    (tmp_path / "params.yaml").write_text("data:\n  categories: [widget]\n")
    assert cli.main(["dashboard"]) == 1
    assert "metrics/thresholds.json not found" in capsys.readouterr().err


def test_a_category_without_defects_has_false_alarm_rates_only(project: Project) -> None:
    review = dashboard.load_review(project.root, CATEGORY)
    goods = dataclasses.replace(review, table=review.table[review.table["label"] == 0])
    point = dashboard.operating_point(goods, review.deployed.threshold)
    assert np.isnan([point.precision, point.recall, point.f1]).all() and point.n_defective == 0
    assert (
        point.per_defect.empty
        and point.false_positives == _expected(project, review.deployed.threshold)["false_positives"]
    )
    roc, pr = dashboard.curves(goods)
    assert roc.empty and pr.empty


def test_streamlit_command_serves_the_app_headless_on_the_port() -> None:
    cmd = dashboard.streamlit_command(8600, "127.0.0.1")
    assert cmd[:5] == [sys.executable, "-m", "streamlit", "run", APP]
    pairs = dict(zip(cmd[5::2], cmd[6::2], strict=True))
    assert pairs["--server.port"] == "8600" and pairs["--server.address"] == "127.0.0.1"
    assert pairs["--server.headless"] == "true" and pairs["--browser.gatherUsageStats"] == "false"
    assert pairs["--client.toolbarMode"] == "minimal"  # no Streamlit "Deploy" button
    args = cli.build_parser().parse_args(["dashboard", "--port", "8600"])
    assert (args.port, args.host, args.func) == (8600, "127.0.0.1", cmd_dashboard)


def test_operating_point_is_what_compute_thresholds_computes(project: Project) -> None:
    review = dashboard.load_review(project.root, CATEGORY)
    entry = project.thresholds[CATEGORY]
    assert review.deployed.threshold == entry["recall_target"]["threshold"]
    # the good-only threshold: compute_thresholds evaluated it in-sample on the test split, as here
    good_only = dashboard.operating_point(review, entry["good_only"]["threshold"])
    for key in ("precision", "recall", "f1"):
        assert getattr(good_only, key) == pytest.approx(entry["good_only"][key], abs=1e-6)
    assert good_only.false_positives == entry["good_only"]["false_positives"]
    # the recall-target threshold reaches its target on the images it was fitted on
    at_target = dashboard.operating_point(review, review.deployed.threshold)
    assert at_target.recall >= 0.95 and at_target.n_defective == sum(DEFECTS.values())
    test = _test_split(project)
    for threshold in sorted(test["score"])[::3]:
        point = dashboard.operating_point(review, threshold)
        expected = _expected(project, threshold)
        assert (point.precision, point.recall, point.detected, point.false_positives) == (
            expected["precision"],
            expected["recall"],
            expected["detected"],
            expected["false_positives"],
        )
        assert point.false_alarm_rate == expected["false_positives"] / expected["n_good"]
        for row in point.per_defect.itertuples():
            keep = (test["label"] == 0) | (test["defect_type"] == row[1])
            per_type = evaluate_threshold(test.loc[keep, "label"], test.loc[keep, "score"], threshold)
            assert row.detected == f"{per_type['detected']}/{per_type['n_defective']}"


def test_gallery_sorts_by_score_and_filters_by_outcome_and_type(project: Project) -> None:
    review = dashboard.load_review(project.root, CATEGORY)
    threshold = float(np.median(review.test["score"]))
    everything = dashboard.gallery(review, threshold)
    assert len(everything) == len(review.table) and everything["score"].is_monotonic_decreasing
    test = _test_split(project)
    expected = _expected(project, threshold)
    missed = dashboard.gallery(review, threshold, ["test"], None, [dashboard.MISSED])
    assert len(missed) == expected["n_defective"] - expected["detected"]
    assert (missed["label"] == 1).all() and (missed["score"] <= threshold).all()
    alarms = dashboard.gallery(review, threshold, ["test"], None, [dashboard.FALSE_ALARM])
    assert len(alarms) == expected["false_positives"] and (alarms["label"] == 0).all()
    holes = dashboard.gallery(review, threshold, ["test"], ["hole"])
    assert len(holes) == (test["defect_type"] == "hole").sum()


def test_tile_is_the_served_overlay_with_the_ground_truth_outlined(project: Project) -> None:
    review = dashboard.load_review(project.root, CATEGORY)
    row = next(dashboard.judged(review.test, review.deployed.threshold).query("label == 1").itertuples())
    for threshold, header in ((row.score - 0.01, DEFECTIVE_RGB), (row.score + 0.01, GOOD_RGB)):
        picture = dashboard.tile(review, row, threshold)
        assert tuple(picture[2, 2]) == header  # the verdict at this threshold
        raw_map = np.load(
            project.root / f"outputs/{CATEGORY}/maps/test/{row.defect_type}/{Path(row.image_path).stem}.npy"
        )
        scale = category_scale(review.pixel_threshold, review.good_max, threshold, review.reduction, raw_map)
        image = np.asarray(review.prepared.images[row.row])
        plain = render_overlay(image, raw_map, review.region.mask(raw_map), scale, row.score, threshold, "x")
        differs = (picture != plain).any(axis=2)
        differs[: dashboard.HEADER_PX] = False  # the title differs
        outline = (picture == dashboard.GT_OUTLINE_RGB).all(axis=2)
        assert outline.sum() > 20 and not (differs & ~outline).any()


# --------------------------------------------------------------------------------------------------
# the page, through AppTest
# --------------------------------------------------------------------------------------------------


def test_slider_starts_at_the_deployed_threshold_and_moves_the_numbers(here: Project) -> None:
    at = _app()
    slider = at.slider(key=f"threshold_{CATEGORY}")
    assert slider.value == here.v1_threshold
    test = _test_split(here)
    start = _expected(here, slider.value)
    assert _metrics(at)["precision"] == f"{start['precision']:.3f}"
    moved = float(np.quantile(test["score"], 0.6))
    slider.set_value(moved).run()
    expected = _expected(here, moved)
    assert (start["precision"], start["recall"]) != (expected["precision"], expected["recall"])
    shown = _metrics(at)
    assert (
        shown["precision"] == f"{expected['precision']:.3f}"
        and shown["recall"] == f"{expected['recall']:.3f}"
    )
    assert shown["F1"] == f"{expected['f1']:.3f}"
    assert shown["false-alarm rate (test good)"] == f"{expected['false_positives'] / expected['n_good']:.3f}"
    point = at.session_state["operating_point"]
    assert (point.threshold, point.precision, point.recall, point.f1) == (
        moved,
        expected["precision"],
        expected["recall"],
        expected["f1"],
    )
    per_defect = at.dataframe[0].value
    assert list(per_defect["defect type"]) == sorted(DEFECTS)
    assert per_defect["detected"].tolist() == point.per_defect["detected"].tolist()
    assert len(at.get("vega_lite_chart")) == 3  # histogram, ROC, PR


def test_gallery_page_shows_the_filtered_images(here: Project) -> None:
    at = _app()
    assert len(at.get("image")) == dashboard.TILES_PER_PAGE  # the first page
    at.multiselect(key=f"outcomes_{CATEGORY}").set_value([dashboard.MISSED, dashboard.FALSE_ALARM]).run()
    expected = _expected(here, here.v1_threshold)
    wrong = expected["n_defective"] - expected["detected"] + expected["false_positives"]
    review = dashboard.load_review(here.root, CATEGORY)
    wrong += dashboard.operating_point(review, here.v1_threshold).val_false_alarms
    assert len(at.get("image")) == min(wrong, dashboard.TILES_PER_PAGE)


def test_proposal_is_written_and_tagged_and_never_deployed(here: Project) -> None:
    from mlflow import MlflowClient

    registry_before = {str(v.version): dict(v.tags) for v in tracking.model_versions(NAME)}
    thresholds_before = (here.root / paths.THRESHOLDS_JSON).read_bytes()
    at = _app()
    chosen = round(float(np.quantile(_test_split(here)["score"], 0.3)), 6)  # thresholds.json's rounding
    at.slider(key=f"threshold_{CATEGORY}").set_value(chosen).run()
    at.text_input(key=f"note_{CATEGORY}").input("fewer false alarms on line 3").run()
    at.button(key=f"propose_{CATEGORY}").click().run()
    assert not at.warning, [w.value for w in at.warning]
    proposal = json.loads((here.root / "proposals" / f"{CATEGORY}.json").read_text())
    expected = _expected(here, chosen)
    assert proposal["threshold"] == chosen and proposal["deployed_threshold"] == here.v1_threshold
    assert (
        proposal["precision"] == pytest.approx(expected["precision"], abs=1e-6)
        and proposal["note"] == "fewer false alarms on line 3"
    )
    assert proposal["detected"] == f"{expected['detected']}/{expected['n_defective']}"
    # tagged on the version built from this model (version 2, by model_md5), threshold untouched
    client = MlflowClient(here.uri)
    v2 = client.get_model_version(NAME, "2").tags
    assert float(v2[dashboard.PROPOSAL_TAG]) == chosen
    assert v2["threshold_proposal_note"] == "fewer false alarms on line 3"
    assert v2["threshold"] == registry_before["2"]["threshold"]
    assert dashboard.PROPOSAL_TAG not in client.get_model_version(NAME, "1").tags
    assert (here.root / paths.THRESHOLDS_JSON).read_bytes() == thresholds_before
    # a new session starts at the deployed threshold again, and shows the proposal
    again = _app()
    assert again.slider(key=f"threshold_{CATEGORY}").value == here.v1_threshold
    assert any(f"Current proposal: {chosen:.4f}" in c.value for c in again.caption)


def test_compare_page_shows_both_versions_and_the_changed_verdicts(here: Project) -> None:
    at = _app()
    at.sidebar.radio(key="page").set_value("Compare two versions").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.selectbox(key=f"version_a_{CATEGORY}").value == "version 1 @champion"
    assert at.selectbox(key=f"version_b_{CATEGORY}").value == "version 2"
    summary, changed = at.dataframe[0].value, at.dataframe[1].value
    assert list(summary.columns) == ["version 1 @champion", "version 2"]
    assert summary.loc["image_auroc"].tolist() == ["0.9000", "0.8000"]
    detected_1 = _expected(here, here.v1_threshold)["detected"]
    assert summary.loc["detected", "version 1 @champion"].startswith(f"{detected_1}/")
    assert sorted(changed["image_path"]) == here.v2_changed
    assert (changed["verdict_a"] == "defective").all() and (changed["verdict_b"] == "good").all()
    assert len(at.get("image")) == CHANGED_IN_V2


def test_the_slider_spans_where_good_parts_are_decided(project: Project) -> None:
    review = dashboard.load_review(project.root, CATEGORY)
    lo, hi = dashboard.threshold_range(review)
    scores = review.table["score"]
    goods = review.table.loc[review.table["label"] == 0, "score"]
    assert lo < scores.min() and hi > goods.max()
    assert lo <= review.deployed.threshold <= hi
    far_out = review.table.assign(score=np.where(review.table["label"] == 1, scores + 1000.0, scores))
    assert dashboard.threshold_range(dataclasses.replace(review, table=far_out))[1] == pytest.approx(hi)


def test_the_page_says_what_champion_serves(
    here: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = dashboard.champion(CATEGORY)
    assert served is not None and served.version == "1" and served.threshold == here.v1_threshold
    at = _app()
    captions = " ".join(c.value for c in at.caption)
    assert f"@champion (version 1) serves threshold {here.v1_threshold:.4f}" in captions
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'none.db'}")  # a clone without a store
    assert dashboard.champion(CATEGORY) is None
