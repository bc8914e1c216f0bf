"""The line review's drift charts (`anomaly_spotter.review.drift`) on synthetic scoring logs: the points
they plot (flagged share against the expected rate and its limit, PSI judged or not and why), the charts'
layers and data, the table, and the references made of the registry's validation values
(`monitoring.drift.references_from`, `tracking.scores`). On a real log and store:
tests/integration/test_line_review.py."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from anomaly_spotter.monitoring.drift import Limits, MonitorError, Reference, drift_report, references_from
from anomaly_spotter.review import drift
from anomaly_spotter.tracking.scores import VersionValidation, registered_pairs
from tests.unit.test_monitor import DAY0, NAME, THRESHOLD, log_rows

LIMITS = Limits()


def _reference(n: int, expected: float = 0.02, seed: int = 0) -> Reference:
    return Reference(THRESHOLD, expected, np.random.default_rng(seed).normal(0.0, 0.5, n))


@pytest.fixture(scope="module")
def log() -> pd.DataFrame:
    """Version 1: day 0 10 of 400 flagged, day 1 100 of 400, day 2 5 images; version 2 (12 validation
    goods) 40 images on day 1; 3 rows of a model folder."""
    rng = np.random.default_rng(3)

    def goods(mean: float, n: int) -> np.ndarray:  # good-looking: as the validation goods (sd 0.5), <= 1
        draws = rng.normal(mean, 0.5, 4 * n)
        return draws[draws <= THRESHOLD][:n]

    day0 = np.concatenate([goods(0.0, 390), np.full(10, 2.5)])
    day1 = np.concatenate([goods(0.4, 300), np.full(100, 2.5)])
    return pd.concat(
        [
            log_rows(day0, DAY0, "b0"),
            log_rows(day1, DAY0 + pd.Timedelta(days=1), "b1"),
            log_rows(np.full(5, 0.1), DAY0 + pd.Timedelta(days=2), "b2"),
            log_rows(goods(0.0, 40), DAY0 + pd.Timedelta(days=1), "b1", "2"),
            log_rows(np.zeros(3), DAY0, "b0", "", name=""),
        ],
        ignore_index=True,
    )


@pytest.fixture(scope="module")
def report(log: pd.DataFrame) -> pd.DataFrame:
    references = {(NAME, "1"): _reference(400), (NAME, "2"): _reference(12, 0.05)}
    return drift.line_report(log, references, "day", LIMITS)


def test_the_report_leaves_out_model_folder_rows(log: pd.DataFrame, report: pd.DataFrame) -> None:
    assert len(drift.registered_rows(log)) == len(log) - 3
    assert report[["period", "model_version", "n_images", "n_flagged"]].values.tolist() == [
        ["2025-03-10", "1", 400, 10],
        ["2025-03-11", "1", 400, 100],
        ["2025-03-11", "2", 40, 0],
        ["2025-03-12", "1", 5, 0],
    ]


def test_share_points_mark_the_periods_past_the_limit(log: pd.DataFrame, report: pd.DataFrame) -> None:
    points = drift.share_points(report, LIMITS)
    assert points["model"].tolist() == ["widget v1", "widget v1", "widget v2", "widget v1"]
    assert points["flagged_share"].tolist() == [0.025, 0.25, 0.0, 0.0]
    assert points["expected_rate"].tolist() == [0.02, 0.02, 0.05, 0.02]
    assert points["limit"].tolist() == pytest.approx([0.12, 0.12, 0.15, 0.12])
    assert points["mark"].tolist() == [drift.WITHIN, drift.PAST, drift.WITHIN, drift.TOO_FEW]
    assert (
        points["status"].tolist()[1] == "ALERT flagged+psi" and points["status"].iloc[3] == "too few images"
    )
    # a stricter limit: day 0's 0.5 % excess is past it too
    strict = Limits(max_flag_excess=0.001)
    references = {(NAME, "1"): _reference(400), (NAME, "2"): _reference(12, 0.05)}
    points = drift.share_points(drift.line_report(log, references, "day", strict), strict)
    assert points["mark"].tolist() == [drift.PAST, drift.PAST, drift.WITHIN, drift.TOO_FEW]
    assert points["limit"].iloc[0] == pytest.approx(0.021)


def test_psi_points_say_which_psi_is_judged_and_why(report: pd.DataFrame) -> None:
    points = drift.psi_points(report, LIMITS)
    assert points["period"].tolist() == ["2025-03-10", "2025-03-11", "2025-03-11", "2025-03-12"]
    assert points["psi"].tolist() == pytest.approx(report["psi"].tolist())
    calm, shifted, few_goods, few_images = points.to_dict("records")
    assert calm["mark"] == drift.WITHIN and calm["psi"] < LIMITS.max_psi
    assert calm["why"] == f"judged: chance alone gives about {calm['psi_chance']:.3f} (at most 0.125)"
    assert shifted["mark"] == drift.PAST and shifted["psi"] > LIMITS.max_psi
    # version 2 has 12 validation goods: chance alone exceeds half of max PSI, whatever the period
    assert few_goods["mark"] == drift.UNJUDGED and few_goods["psi_chance"] > 0.125
    assert few_goods["n_reference"] == 12 and few_goods["why"].startswith(
        f"not judged: chance alone gives about {few_goods['psi_chance']:.3f} with 40 good-looking and 12 "
    )
    assert few_images["mark"] == drift.UNJUDGED and few_images["why"] == "not judged: 5 images < 20"
    # a period with no good-looking image has no PSI: left out of the chart
    all_flagged = log_rows(np.full(30, 3.0), DAY0 + pd.Timedelta(days=5))
    no_goods = drift_report(all_flagged, {(NAME, "1"): _reference(400)}, "day")
    assert math.isnan(no_goods["psi"].iloc[0]) and drift.psi_points(no_goods, LIMITS).empty


def test_psi_reason_names_too_few_good_looking_images() -> None:
    row = pd.Series({"judged": True, "n_images": 40, "n_good": 15, "psi_judged": False})
    assert drift.psi_reason(row, LIMITS) == "not judged: 15 good-looking images < 20"


def test_periods_follow_time_not_their_names(log: pd.DataFrame) -> None:
    late_first = log.assign(batch=log["batch"].map({"b0": "zz", "b1": "aa", "b2": "mm"}))
    references = {(NAME, "1"): _reference(400), (NAME, "2"): _reference(12, 0.05)}
    by_batch = drift.line_report(late_first, references, "batch", LIMITS)
    assert drift.periods(by_batch) == ["zz", "aa", "mm"]


def _layers(chart) -> tuple[list[dict], dict]:
    spec = chart.to_dict()
    return spec["layer"], spec["datasets"]


def test_the_share_chart_draws_expected_rates_limits_and_rings_alerts(report: pd.DataFrame) -> None:
    layers, data = _layers(drift.share_chart(report, LIMITS))
    expected, limit, line, dots, rings = layers
    assert expected["mark"]["type"] == "rule" and expected["mark"]["strokeDash"] == [6, 4]
    assert [(r["model"], r["expected_rate"]) for r in data[expected["data"]["name"]]] == [
        ("widget v1", 0.02),
        ("widget v2", 0.05),
    ]
    assert [r["limit"] for r in data[limit["data"]["name"]]] == pytest.approx([0.12, 0.15])
    assert dots["encoding"]["x"]["sort"] == ["2025-03-10", "2025-03-11", "2025-03-12"]
    ringed = data[rings["data"]["name"]]
    assert [(r["period"], r["model"], r["flagged_share"]) for r in ringed] == [
        ("2025-03-11", "widget v1", 0.25)
    ]


def test_the_psi_chart_draws_the_limit_and_fades_unjudged_periods(report: pd.DataFrame) -> None:
    layers, data = _layers(drift.psi_chart(report, Limits(max_psi=0.3)))
    limit, label, line, dots, rings = layers
    assert data[limit["data"]["name"]] == [{"max_psi": 0.3, "label": "max PSI 0.3"}]
    assert dots["encoding"]["opacity"]["condition"]["value"] == 0.35
    assert {r["mark"] for r in data[dots["data"]["name"]]} == {drift.WITHIN, drift.PAST, drift.UNJUDGED}
    assert [(r["period"], r["model"]) for r in data[rings["data"]["name"]]] == [("2025-03-11", "widget v1")]


def test_report_table_has_the_monitor_columns(report: pd.DataFrame) -> None:
    table = drift.report_table(report)
    assert list(table.columns) == list(drift.TABLE_COLUMNS.values())
    assert table[["period", "model", "images", "flagged"]].values.tolist() == [
        ["2025-03-10", "widget v1", 400, 10],
        ["2025-03-11", "widget v1", 400, 100],
        ["2025-03-11", "widget v2", 40, 0],
        ["2025-03-12", "widget v1", 5, 0],
    ]
    assert table["share"].tolist() == [0.025, 0.25, 0.0, 0.0]


def test_references_come_from_the_registry_values() -> None:
    goods = np.array([0.2, 0.5, 1.5, 0.9])  # the held-out goods (validation and test)
    tagged = VersionValidation(1.0, 0.0, goods)  # the validation goods alone flagged none
    untagged = VersionValidation(1.0, None, goods)  # registered before val_false_alarm_rate existed
    assert tagged.expected_rate == untagged.expected_rate == 0.25  # what all the held-out goods get
    assert VersionValidation(1.0, 0.5, goods, goods[2:]).val_flagged == (1, 2)  # 1.5 of [1.5, 0.9]
    references = references_from({(NAME, "1"): tagged, (NAME, "2"): untagged}, "sqlite:///x.db")
    assert references[(NAME, "1")].expected_rate == references[(NAME, "2")].expected_rate == 0.25
    np.testing.assert_array_equal(references[(NAME, "2")].good_scores, goods)
    assert references[(NAME, "1")].threshold == 1.0
    with pytest.raises(
        MonitorError,
        match=r"version 7, which the MLflow store sqlite:///x.db does not know; run "
        r"the dashboard against the store",
    ):
        references_from({(NAME, "7"): None}, "sqlite:///x.db", "the dashboard")


def test_registered_pairs_skip_model_folders(log: pd.DataFrame) -> None:
    more = pd.concat([log, log_rows(np.zeros(2), version="10")], ignore_index=True)
    assert registered_pairs(more) == [(NAME, "1"), (NAME, "2"), (NAME, "10")]
