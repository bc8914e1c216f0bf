"""`anomaly-spotter monitor` on a real scoring log (Parquet part files written by `scoring_log.append`) and a
real SQLite MLflow store in tmp_path: registered versions of anomaly-spotter-widget carrying the tags
`register` sets (`threshold`, `val_false_alarm_rate`, `run.process_all`) and a process_all-like run that
logged scores.csv. No model is fitted: monitoring reads the log and the registry only.

The log holds two UTC days of version 1 (the first like its validation goods, the second shifted) and a
few images of version 2, which has no `val_false_alarm_rate` tag (registered before it existed), and a
few rows scored by a model folder. Version 3 has no threshold tag.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_spotter import cli, tracking
from anomaly_spotter.cli.monitor import MONITOR_EXPERIMENT, REPORT_CSV, load_references
from anomaly_spotter.core.scoring import SCORES_FILE
from anomaly_spotter.monitoring.drift import psi
from anomaly_spotter.serving import scoring_log

pytestmark = pytest.mark.integration

CATEGORY = "widget"
NAME = f"anomaly-spotter-{CATEGORY}"
THRESHOLD = 1.0
DAY0 = pd.Timestamp("2025-03-10 09:00", tz="UTC")


@dataclass
class Line:
    root: Path
    uri: str
    log: Path
    val_goods: np.ndarray  # the held-out goods' scores (validation and test) both versions were scored on
    v1_rate: float  # the share of them above the threshold: the rate to expect
    day0: np.ndarray  # version 1's scores on each day
    day1: np.ndarray


def _register(client, scores: pd.DataFrame, tags: dict[str, str], root: Path) -> str:
    """A process_all-like run that logged `scores` as scores.csv, and a version of NAME tagged with it."""
    import mlflow

    scores.to_csv(root / SCORES_FILE, index=False)
    with mlflow.start_run(run_name="process_all@widget") as run:
        mlflow.log_artifact(str(root / SCORES_FILE))
    (root / SCORES_FILE).unlink()
    version = client.create_model_version(NAME, f"runs:/{run.info.run_id}/service_model", run.info.run_id)
    tracking.set_model_version_tags(NAME, version.version, {**tags, "run.process_all": run.info.run_id})
    return str(version.version)


def _append(log: Path, scores: np.ndarray, at: pd.Timestamp, version: str, name: str = NAME) -> None:
    """One scoring call's rows, as `predict --log` appends them."""
    context = scoring_log.LogContext("predict", f"models:/{name}/{version}", name, version, CATEGORY)
    results = [
        {"score": float(s), "threshold": THRESHOLD, "verdict": "defective" if s > THRESHOLD else "good"}
        | {"anomaly_percentage": 0.0}
        for s in scores
    ]
    images = [f"/line/{at:%Y%m%d}/{i:04d}.png" for i in range(len(scores))]
    hashes = [scoring_log.sha256_hex(image.encode()) for image in images]
    scoring_log.append(log, scoring_log.make_rows(context.with_new_batch(), images, hashes, results, at))


def build_line(root: Path) -> Line:
    from mlflow import MlflowClient

    rng = np.random.default_rng(0)
    val_goods = rng.normal(0.0, 0.5, 300)
    test_scores = np.concatenate([rng.normal(0.0, 0.5, 20), rng.normal(2.5, 0.5, 20)])
    test = pd.DataFrame({"split": "test", "label": [0] * 20 + [1] * 20, "score": test_scores})
    scores = pd.concat(
        [pd.DataFrame({"split": "val", "label": 0, "score": val_goods}), test], ignore_index=True
    ).assign(category=CATEGORY, defect_type="good", image_path=[f"img/{i}.png" for i in range(340)])
    held_out = np.concatenate([val_goods, test_scores[:20]])  # validation and test goods
    v1_rate = float(np.mean(held_out > THRESHOLD))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        with contextlib.chdir(root):
            tracking.connect()
            client = MlflowClient()
            client.create_registered_model(NAME)
            common = {"category": CATEGORY, "threshold": f"{THRESHOLD:.6f}"}
            _register(client, scores, {**common, "val_false_alarm_rate": str(v1_rate)}, root)
            _register(client, scores, common, root)  # registered before val_false_alarm_rate existed
            _register(client, scores, {"category": CATEGORY}, root)  # not by `register`: no threshold
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    log = root / "log"
    day0 = np.concatenate([rng.normal(0.0, 0.5, 380), np.full(20, 2.5)])  # 5 % defects
    day1 = np.concatenate([rng.normal(0.45, 0.5, 380), np.full(20, 2.5)])  # the goods score higher
    _append(log, day0[:200], DAY0, "1")
    _append(log, day0[200:], DAY0 + pd.Timedelta(hours=8), "1")
    _append(log, day1, DAY0 + pd.Timedelta(days=1), "1")
    _append(log, rng.normal(0.0, 0.5, 12), DAY0 + pd.Timedelta(days=1, hours=1), "2")
    _append(log, np.zeros(3), DAY0, "", name="")  # an exported model folder: no registered version
    return Line(root, uri, log, held_out, v1_rate, day0, day1)


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Line:
    return build_line(tmp_path_factory.mktemp("monitor"))


@pytest.fixture
def store(line: Line, monkeypatch: pytest.MonkeyPatch) -> Iterator[Line]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", line.uri)
    yield line


def _monitor_runs(line: Line) -> list:
    from mlflow import MlflowClient

    experiment = MlflowClient().get_experiment_by_name(MONITOR_EXPERIMENT)
    return [] if experiment is None else MlflowClient().search_runs([experiment.experiment_id])


def test_references_come_from_the_version_tags_and_its_process_all_scores(store: Line) -> None:
    tracking.use_existing_store("test")
    log = scoring_log.read_log(store.log)
    references = load_references(log)
    assert sorted(references) == [(NAME, "1"), (NAME, "2")]  # the model folder's rows have none
    one, two = references[(NAME, "1")], references[(NAME, "2")]
    assert one.threshold == THRESHOLD and one.expected_rate == store.v1_rate
    np.testing.assert_allclose(one.good_scores, store.val_goods)  # validation goods only, not test
    # no tag: the share of validation goods above the threshold, as `register` computes it
    assert two.expected_rate == pytest.approx(np.mean(store.val_goods > THRESHOLD))
    assert 0.01 < two.expected_rate < 0.05


def test_monitor_reports_alerts_writes_the_csv_and_logs_a_run(
    store: Line, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow import MlflowClient

    before = len(_monitor_runs(store))
    csv = tmp_path / "report.csv"
    assert cli.main(["monitor", "--log", str(store.log), "--csv", str(csv)]) == 3
    out, err = capsys.readouterr()
    assert "note: 3 of 815 rows" in err and "model folder" in err
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["period", "model", "images"] and all(len(x) <= 120 for x in lines[:4])
    assert lines[1].split()[:5] == ["2025-03-10", "widget", "v1", "400", str(int((store.day0 > 1).sum()))]
    assert lines[2].startswith("2025-03-11  widget v1") and lines[2].endswith("ALERT flagged+psi")
    assert lines[3].startswith("2025-03-11  widget v2") and lines[3].endswith("too few images")
    assert lines[-1] == (
        "ALERT: 1 of 2 judged period rows past a limit (1 flag excess > 0.1, 1 PSI > 0.25): "
        "2025-03-11 widget v1; 1 not judged (< 20 images)"
    )

    report = pd.read_csv(csv)
    assert report[["period", "model_version", "n_images"]].values.tolist() == [
        ["2025-03-10", 1, 400],
        ["2025-03-11", 1, 400],
        ["2025-03-11", 2, 12],
    ]
    calm, shifted = report.iloc[0], report.iloc[1]
    validation = store.val_goods[store.val_goods <= THRESHOLD]
    assert calm.psi == pytest.approx(psi(validation, store.day0[store.day0 <= THRESHOLD]))
    assert calm.psi < 0.1 and calm.status == "ok" and calm.expected_rate == pytest.approx(store.v1_rate)
    assert shifted.psi == pytest.approx(psi(validation, store.day1[store.day1 <= THRESHOLD]))
    assert shifted.psi > 0.25 and shifted.flag_excess > 0.10 and shifted.ks_pvalue < 1e-6

    runs = _monitor_runs(store)
    assert len(runs) == before + 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_id in out
    assert run.data.params["log"] == str(store.log.resolve()) and run.data.params["period"] == "day"
    assert (run.data.params["max_flag_excess"], run.data.params["max_psi"]) == ("0.1", "0.25")
    assert run.data.params["min_images"] == "20" and run.data.tags["category"] == CATEGORY
    assert run.data.metrics["alerts"] == 1 and run.data.metrics["judged"] == 2
    client = MlflowClient()
    history = client.get_metric_history(run.info.run_id, f"psi/{NAME}/v1")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (0, pytest.approx(calm.psi)),
        (1, pytest.approx(shifted.psi)),
    ]
    shares = client.get_metric_history(run.info.run_id, f"flagged_share/{NAME}/v2")
    assert [(m.step, m.value) for m in shares] == [(1, pytest.approx(report.iloc[2].flagged_share))]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == [REPORT_CSV]
    experiment = client.get_experiment_by_name(MONITOR_EXPERIMENT)
    assert experiment.artifact_location == f"{tracking.STORE_RELATIVE_SCHEME}:mlruns/{MONITOR_EXPERIMENT}"
    logged = pd.read_csv(client.download_artifacts(run.info.run_id, REPORT_CSV, str(tmp_path)))
    pd.testing.assert_frame_equal(logged, report)


def test_per_batch_without_mlflow_and_no_alert_is_exit_0(
    store: Line, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "calm"
    _append(log, store.day0[:200], DAY0, "1")
    _append(log, store.day0[200:], DAY0 + pd.Timedelta(hours=8), "1")
    before = len(_monitor_runs(store))
    assert cli.main(["monitor", "--log", str(log), "--period", "batch", "--no-mlflow"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    batches = scoring_log.read_log(log).drop_duplicates("batch")["batch"].tolist()
    assert [x.split()[0] for x in lines[1:3]] == batches and len(lines) == 4
    assert lines[-1] == "no alerts: 2 judged period rows within flag excess 0.1 and PSI 0.25"
    assert len(_monitor_runs(store)) == before
    # a stricter flag limit makes the same log an alert
    assert cli.main(["monitor", "--log", str(log), "--no-mlflow", "--max-flag-excess", "0.0"]) == 3


def test_a_version_the_store_does_not_know_is_one_error_line(
    store: Line, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "other-store"
    _append(log, np.zeros(30), DAY0, "7")
    assert cli.main(["monitor", "--log", str(log), "--no-mlflow"]) == 1
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err.startswith(
        f"anomaly-spotter monitor: error: the scoring log has rows scored by {NAME} version 7"
    )
    assert f"which the MLflow store {store.uri} does not know; run monitor against the store" in err


def test_no_store_is_refused_and_not_created(
    line: Line, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")
    assert cli.main(["monitor", "--log", str(line.log)]) == 1
    assert "no MLflow tracking store at" in capsys.readouterr().err and not missing.exists()


def test_a_version_without_a_threshold_tag_is_one_error_line(
    store: Line, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "no-threshold"
    _append(log, np.zeros(30), DAY0, "3")
    assert cli.main(["monitor", "--log", str(log), "--no-mlflow"]) == 1
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert f"error: {NAME} version 3 has no numeric 'threshold' tag in {store.uri}" in err
