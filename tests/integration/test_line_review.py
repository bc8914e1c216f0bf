"""The dashboard's "Review the line" page on a real scoring log, driven by Streamlit's AppTest.

The project is tests/unit/test_cli.py's `build_store` (a tiny detector registered as version 1 of
anomaly-spotter-widget in a SQLite MLflow store), made a git + DVC repository with a params.yaml naming
its dataset; `anomaly-spotter predict --log logs/widget` scores the validation and test images with
`models:/anomaly-spotter-widget/1`. A reviewer marks the highest-scoring flagged image a confirmed
defect (scratch) and the next a false alarm; decisions.csv, the copied images and `feedback/widget.dvc`
are checked, and a new session shows both as decided. Version 1 carries the tags `register` sets
(`threshold`, `val_false_alarm_rate`, `run.process_all` naming a run that logged the scores.csv of its
validation and test images), so the page's "Drift over time" section judges the log against it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_spotter import cli, tracking
from anomaly_spotter.cli.monitor import load_references
from anomaly_spotter.core.scoring import SCORES_FILE
from anomaly_spotter.data.prepared import load_prepared
from anomaly_spotter.feedback import CONFIRMED_DEFECT, FALSE_ALARM, current_decisions, read_decisions
from anomaly_spotter.monitoring.drift import Limits, drift_report
from anomaly_spotter.review import dashboard, line
from anomaly_spotter.serving import scoring_log
from anomaly_spotter.serving.inference import read_image
from anomaly_spotter.serving.model import load_service_model
from tests.unit.test_cli import CATEGORY, NAME, build_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APP = str(dashboard.APP_FILE)
APP_TIMEOUT_S = 120
LOG = Path("logs") / CATEGORY
REVIEWER = "ana.quality"


@dataclass
class Line:
    root: Path
    uri: str
    log: pd.DataFrame  # the rows predict logged
    val_false_alarm_rate: float  # version 1's tag: the share of its validation goods above its threshold


def _tag_like_register(root: Path, scores: dict[str, float], threshold: float) -> float:
    """A process_all-like run logging scores.csv (split, label, score of the validation and test images)
    and version 1 tagged with it, its threshold and val_false_alarm_rate, as `register` tags a version."""
    import mlflow

    index = load_prepared(root / "prepared").split("val", "test").index
    table = index[["split", "label", "image_path"]].assign(
        score=[scores[str(p)] for p in index["image_path"]]
    )
    goods = table[(table["split"] == "val") & (table["label"] == 0)]["score"].to_numpy()
    rate = float(np.mean(goods > threshold))
    table.to_csv(root / SCORES_FILE, index=False)
    with mlflow.start_run(run_name=f"process_all@{CATEGORY}") as run:
        mlflow.log_artifact(str(root / SCORES_FILE))
    tags = {"threshold": threshold, "val_false_alarm_rate": rate, "run.process_all": run.info.run_id}
    tracking.set_model_version_tags(NAME, "1", tags)
    return rate


@pytest.fixture(scope="module")
def scored_line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    old = os.environ.get("MLFLOW_TRACKING_URI")
    root = tmp_path_factory.mktemp("line")
    try:
        store = build_store(root)
        rate = _tag_like_register(root, store.pipeline_scores, store.threshold)
        (root / "params.yaml").write_text(f"data:\n  root: data\n  categories: [{CATEGORY}]\n")
        for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
            subprocess.run(cmd, cwd=root, check=True, timeout=120)
        paths = [str(p) for p in store.image_paths]
        with contextlib.chdir(root):
            code = cli.main(
                ["predict", *paths, "--model", f"models:/{NAME}/1", "--log", str(LOG), "--csv", "p.csv"]
            )
        assert code == 0
        yield Line(root, store.uri, scoring_log.read_log(root / LOG), rate)
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture
def here(scored_line: Line, monkeypatch: pytest.MonkeyPatch) -> Line:
    """The project as working directory and tracking store (as `anomaly-spotter dashboard` runs)."""
    monkeypatch.chdir(scored_line.root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", scored_line.uri)
    return scored_line


def _line_app(**query: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=APP_TIMEOUT_S)
    at.query_params.update({"page": "line", **query})
    at.run()
    assert not at.exception, at.exception
    return at


def _summary(at) -> dict:
    return at.dataframe[0].value.set_index("category").loc[CATEGORY].to_dict()


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def test_reviewing_flagged_images_records_feedback(here: Line) -> None:
    log = here.log
    flagged = log[log["verdict"] == "defective"].sort_values("score", ascending=False)
    n_passed = int((log["verdict"] == "good").sum())
    assert len(flagged) >= 3 and n_passed >= 1 and log["image_sha256"].is_unique
    at = _line_app()
    assert at.text_input(key="line_log").value == str(LOG)  # logs/<category> of params.yaml
    summary = _summary(at)
    assert (summary["images scored"], summary["flagged"], summary["passed"]) == (
        len(log),
        len(flagged),
        n_passed,
    )
    assert (summary["decided"], summary["flagged to decide"]) == (0, len(flagged))
    assert summary["model versions"] == f"{NAME} v1"
    # every flagged image (highest score first) and the sample of passed ones, as `predict --out` draws them
    assert len(at.get("image")) == len(flagged) + min(n_passed, line.SAMPLE_SIZE)
    top = flagged.iloc[0]
    first_caption = next(c.value for c in at.caption if "· score " in c.value)
    assert first_caption.startswith(
        f"{line.short_name(top['image'])} · score {top['score']:.3f} / threshold "
    )
    assert f"{NAME} v1" in first_caption
    # the picture: version 1 rescoring the file, the overlay `predict --out` writes for it
    name = Path(top["image"]).name
    picture = line.overlay(line.load_model(f"models:/{NAME}/1"), line.scored_image(LOG, top), name)
    served = load_service_model(f"models:/{NAME}/1").score(
        [read_image(Path(top["image"]))], return_map=True, titles=[name]
    )[0]
    np.testing.assert_array_equal(picture, served["overlay"])
    assert served["score"] == pytest.approx(top["score"], rel=1e-6)
    # the defect types offered: this category's test defect types (data/widget/test/*)
    confirm_sha, alarm_sha = flagged["image_sha256"].iloc[0], flagged["image_sha256"].iloc[1]
    assert at.selectbox(key=f"line_type_{confirm_sha}").options == ["hole", "scratch"]

    at.text_input(key="reviewer").set_value(REVIEWER)
    at.selectbox(key=f"line_type_{confirm_sha}").set_value("scratch")
    at.text_input(key=f"line_note_{confirm_sha}").set_value("deep, left edge")
    at.button(key=f"line_{CONFIRMED_DEFECT}_{confirm_sha}").click().run()
    assert not at.exception and not at.error, _texts(at.error)
    assert "Recorded **confirmed defect (scratch)** by ana.quality" in _texts(at.success)
    assert not at.warning, _texts(at.warning)  # DVC took the folder
    step = _texts(at.info)
    assert f"DVC versions feedback/{CATEGORY} from now on" in step and "run `dvc repro`" in step
    assert f"git add feedback/{CATEGORY}.dvc dvc.lock" in step
    at.button(key=f"line_{FALSE_ALARM}_{alarm_sha}").click().run()
    assert not at.exception and not at.error, _texts(at.error)
    assert "Recorded **false alarm** by ana.quality" in _texts(at.success)

    folder = here.root / "feedback" / CATEGORY
    decisions = read_decisions(folder)
    assert decisions[["reviewer", "decision", "image_sha256", "defect_type", "note"]].values.tolist() == [
        [REVIEWER, CONFIRMED_DEFECT, confirm_sha, "scratch", "deep, left edge"],
        [REVIEWER, FALSE_ALARM, alarm_sha, "", ""],
    ]
    assert set(decisions["model_name"]) == {NAME} and set(decisions["model_version"]) == {"1"}
    assert set(decisions["scoring_log"]) == {str(LOG)}
    for row, source in zip(decisions.itertuples(), flagged["image"].iloc[:2], strict=True):
        assert (folder / row.image_file).read_bytes() == Path(source).read_bytes()
        assert row.source_image == source and float(row.score) == pytest.approx(
            float(flagged.set_index("image").loc[source, "score"])
        )
    assert (here.root / "feedback" / f"{CATEGORY}.dvc").is_file()

    # a new session: both shown as decided, the flagged list without them
    again = _line_app()
    summary = _summary(again)
    assert (summary["decided"], summary["flagged to decide"]) == (2, len(flagged) - 2)
    assert "#### Decided: 2" in _texts(again.markdown)
    captions = _texts(again.caption)
    assert "decided: **confirmed defect (scratch)** by ana.quality at " in captions
    assert "decided: **false alarm** by ana.quality at " in captions
    assert again.selectbox(key=f"line_type_{confirm_sha}").value == "scratch"
    # changing a decision appends one; the latest is in force
    again.button(key=f"line_{FALSE_ALARM}_{confirm_sha}").click().run()
    assert not again.error, _texts(again.error)
    decisions = read_decisions(folder)
    assert len(decisions) == 3 and decisions["decision"].iloc[0] == CONFIRMED_DEFECT
    assert current_decisions(decisions).set_index("image_sha256").loc[confirm_sha, "decision"] == FALSE_ALARM


def test_a_decision_needs_a_reviewer_and_a_defect_type(here: Line) -> None:
    log = here.log
    sha = (
        log[log["verdict"] == "defective"].sort_values("score")["image_sha256"].iloc[0]
    )  # the lowest flagged
    before = read_decisions(here.root / "feedback" / CATEGORY)
    at = _line_app()
    at.button(key=f"line_{CONFIRMED_DEFECT}_{sha}").click().run()
    assert "needs its defect type" in _texts(at.error)
    at.text_input(key="reviewer").set_value("").run()
    assert "Enter your name" in _texts(at.sidebar.warning)
    at.button(key=f"line_{FALSE_ALARM}_{sha}").click().run()
    assert "enter your name as reviewer in the sidebar" in _texts(at.error)
    assert not at.exception
    assert len(read_decisions(here.root / "feedback" / CATEGORY)) == len(before)


def test_errors_are_shown_not_raised(here: Line, tmp_path: Path) -> None:
    at = _line_app(log=str(tmp_path / "nowhere"))
    assert not at.exception
    assert f"{tmp_path / 'nowhere'}: no scoring log there" in _texts(at.error)
    # a log naming an image that is gone and a model version that does not exist
    image = tmp_path / "gone.png"
    image.write_bytes(Path(here.log["image"].iloc[0]).read_bytes())
    missing = here.log.iloc[[0]].assign(image=str(image), model_version="1")
    ghost = here.log.iloc[[1]].assign(model_version="99", verdict="defective", score=9.0)
    bad = tmp_path / "bad_log"
    scoring_log.append(bad, pd.concat([missing, ghost], ignore_index=True))
    image.unlink()
    at = _line_app(log=str(bad))
    assert not at.exception
    errors = _texts(at.error)
    assert f"{image}: image file not found" in errors
    assert f"cannot load model 'models:/{NAME}/99'" in errors
    # the drift section: version 99 is not in the store
    assert (
        f"rows scored by {NAME} version 99, which the MLflow store {here.uri} does not know; run the "
        "dashboard against the store that registered it"
    ) in errors


def test_the_drift_section_plots_the_log_against_the_version_validation(here: Line) -> None:
    log = here.log
    at = _line_app()
    assert not at.error, _texts(at.error)
    assert "#### Drift over time" in _texts(at.markdown)
    assert len(at.get("vega_lite_chart")) == 2  # the flagged share and PSI charts
    table = at.dataframe[1].value
    day = log["scored_at"].iloc[0].strftime("%Y-%m-%d")  # predict scored them all at once
    n_flagged = int((log["verdict"] == "defective").sum())
    assert table[["period", "model", "images", "flagged"]].values.tolist() == [
        [day, "widget v1", len(log), n_flagged]
    ]
    row = table.iloc[0]
    assert row["share"] == pytest.approx(n_flagged / len(log))
    assert row["expected"] == pytest.approx(here.val_false_alarm_rate)
    assert row["status"] == "too few images"  # a dozen images: under the default 20
    # the numbers `anomaly-spotter monitor` reports on the same log and store
    tracking.use_existing_store("test")
    report = drift_report(log, load_references(log), "day", Limits())
    for column, shown in (
        ("flagged_share", "share"),
        ("flag_excess", "excess"),
        ("psi", "PSI"),
        ("ks", "KS"),
    ):
        assert row[shown] == pytest.approx(report[column].iloc[0], nan_ok=True)
    assert f"1 not judged (< {Limits().min_images} images)" in _texts(at.caption)

    # per batch (one predict call) and a lower image limit: judged now, and past the flag limit (the
    # threshold is the median score, so half are flagged; the validation good scores below it)
    excess = n_flagged / len(log) - here.val_false_alarm_rate
    assert excess > 0.10
    at.selectbox(key="line_drift_period").set_value("batch")
    at.number_input(key="line_drift_min").set_value(1).run()
    assert not at.exception and not at.error, _texts(at.error)
    batch = at.dataframe[1].value
    assert batch["period"].tolist() == [log["batch"].iloc[0]] and batch["images"].tolist() == [len(log)]
    assert batch["excess"].iloc[0] == pytest.approx(excess)
    assert batch["status"].tolist() == ["ALERT flagged"]  # PSI: a single validation good, not judged
    assert "ALERT: 1 of 1 judged period rows past a limit (1 flag excess > 0.1, 0 PSI > 0.25)" in _texts(
        at.caption
    )
