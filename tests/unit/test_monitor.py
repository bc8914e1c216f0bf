"""Drift monitoring's pure computation (`anomaly_spotter.monitoring.drift`) on synthetic scoring logs: PSI
and KS, periods, the flagged share against the expected rate, the limits, the table and the summary; and
the `monitor` command's parser. The registry side: tests/integration/test_monitor.py."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from anomaly_spotter import cli
from anomaly_spotter.cli.monitor import metrics_history, registered_pairs
from anomaly_spotter.monitoring import drift
from anomaly_spotter.monitoring.drift import Limits, MonitorError, Reference, drift_report

NAME = "anomaly-spotter-widget"
THRESHOLD = 1.0
DAY0 = pd.Timestamp("2025-03-10 08:00", tz="UTC")


def log_rows(
    scores: np.ndarray,
    at: pd.Timestamp = DAY0,
    batch: str = "b0",
    version: str = "1",
    name: str = NAME,
    threshold: float = THRESHOLD,
) -> pd.DataFrame:
    """Scoring-log rows as `predict --log` writes them: the columns drift reads, verdicts at `threshold`."""
    scores = np.asarray(scores, dtype=np.float64)
    return pd.DataFrame(
        {
            "scored_at": [at] * len(scores),
            "batch": batch,
            "category": "widget",
            "model_name": name,
            "model_version": version,
            "score": scores,
            "threshold": threshold,
            "verdict": np.where(scores > threshold, "defective", "good"),
        }
    )


def reference(n: int = 400, seed: int = 0, expected: float = 0.05) -> Reference:
    return Reference(THRESHOLD, expected, np.random.default_rng(seed).normal(0.0, 0.5, n))


# --------------------------------------------------------------------------------------------------
# statistics


def test_psi_of_identical_samples_is_zero_and_of_one_filled_bin_is_the_formula() -> None:
    ref = np.arange(100.0)
    assert drift.psi(ref, ref) == 0.0
    # every current value in the first decile: a = (1, 1e-4 x 9), e = 0.1 each
    expected = (1 - 0.1) * math.log(1 / 0.1) + 9 * (1e-4 - 0.1) * math.log(1e-4 / 0.1)
    assert drift.psi(ref, np.full(50, -5.0)) == pytest.approx(expected)
    assert expected == pytest.approx(8.283, abs=1e-3)


def test_psi_bins_are_the_reference_deciles_with_ties_merged() -> None:
    assert drift.psi_edges(np.arange(101.0)) == pytest.approx(np.arange(10.0, 100.0, 10.0))
    assert drift.psi_edges(np.array([0.0] * 50 + [1.0] * 50)).tolist() == [0.0, 0.5, 1.0]
    # a value on an edge falls in the bin above it
    assert drift.bin_shares(np.array([10.0, 10.0]), np.array([10.0, 20.0]), 0.0).tolist() == [0.0, 1.0, 0.0]


def test_psi_grows_with_a_shift_and_is_nan_without_a_sample() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(0, 1, 5000)
    small, large = drift.psi(ref, rng.normal(0.1, 1, 5000)), drift.psi(ref, rng.normal(1.0, 1, 5000))
    assert 0.0 < small < 0.05 < 0.25 < large
    assert math.isnan(drift.psi(ref, np.array([])))
    assert math.isnan(drift.psi(np.array([]), ref))


def test_psi_chance_matches_what_two_samples_of_one_distribution_give() -> None:
    assert drift.psi_chance(200, 1000, 10) == pytest.approx(9 * (1 / 200 + 1 / 1000))
    assert math.isnan(drift.psi_chance(0, 10, 10))
    rng = np.random.default_rng(2)
    values = [drift.psi(rng.normal(size=200), rng.normal(size=1000)) for _ in range(200)]
    assert np.mean(values) == pytest.approx(drift.psi_chance(200, 1000, 10), rel=0.2)


def test_ks_is_scipys_two_sample_test() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 300), rng.normal(0.3, 1, 200)
    expected = ks_2samp(b, a)
    assert drift.ks(a, b) == (pytest.approx(expected.statistic), pytest.approx(expected.pvalue))
    assert all(math.isnan(v) for v in drift.ks(a, np.array([])))


# --------------------------------------------------------------------------------------------------
# the report


def test_flagged_share_expected_rate_and_good_looking_drift_per_day() -> None:
    ref = reference()
    rng = np.random.default_rng(4)
    steady = np.concatenate([rng.normal(0.0, 0.5, 285), np.full(15, 3.0)])  # 5 % flagged
    shifted = np.concatenate([rng.normal(0.4, 0.5, 300), np.full(60, 3.0)])
    log = pd.concat(
        [
            log_rows(steady),
            log_rows(shifted, DAY0 + pd.Timedelta(days=1)),
            log_rows([0.1, 2.0], DAY0 + pd.Timedelta(days=2)),
        ]
    )
    report = drift_report(log, {(NAME, "1"): ref}, "day", Limits())
    assert list(report.columns) == list(drift.REPORT_COLUMNS)
    assert report["period"].tolist() == ["2025-03-10", "2025-03-11", "2025-03-12"]
    assert report["period_index"].tolist() == [0, 1, 2]
    first, second, third = (report.iloc[i] for i in range(3))
    assert (first.n_images, first.n_flagged) == (300, 15 + int((steady[:285] > THRESHOLD).sum()))
    assert first.flagged_share == pytest.approx(first.n_flagged / 300)
    assert first.expected_rate == 0.05
    assert first.flag_excess == pytest.approx(first.flagged_share - 0.05)
    # both sides truncated at the threshold: the flagged 3.0s are not in the PSI
    goods = steady[steady <= THRESHOLD]
    validation = ref.good_scores[ref.good_scores <= THRESHOLD]
    assert (first.n_good, first.n_reference) == (len(goods), len(validation))
    assert first.psi == pytest.approx(drift.psi(validation, goods))
    assert first.ks == pytest.approx(ks_2samp(goods, validation).statistic)
    assert first.psi < 0.1 and first.status == "ok" and not first.alert
    assert second.flag_excess > 0.10 and second.psi > 0.25
    assert second.status == "ALERT flagged+psi" and second.flag_alert and second.psi_alert
    assert third.n_images == 2 and not third.judged and not third.alert and third.status == "too few images"


def test_days_are_utc_dates() -> None:
    local = pd.Timestamp("2025-03-10 01:30", tz="Europe/Berlin")  # 00:30 UTC
    log = pd.concat(
        [
            log_rows([0.0], pd.Timestamp("2025-03-09 23:30", tz="UTC")),
            log_rows([0.0], local),
            log_rows([0.0], pd.Timestamp("2025-03-10 22:00")),  # naive: read as UTC
        ]
    )
    periods = drift.with_periods(log, "day")
    assert periods["period"].tolist() == ["2025-03-09", "2025-03-10", "2025-03-10"]
    assert periods["period_index"].tolist() == [0, 1, 1]


def test_batches_are_ordered_by_their_first_image_and_judged_per_version() -> None:
    ref = reference()
    log = pd.concat(
        [
            log_rows(np.zeros(30), DAY0 + pd.Timedelta(hours=2), batch="zz-late"),
            log_rows(np.zeros(30), DAY0, batch="aa-early"),
            log_rows(np.full(30, 2.0), DAY0 + pd.Timedelta(hours=1), batch="mid", version="10"),
            log_rows(np.zeros(25), DAY0 + pd.Timedelta(hours=1), batch="mid", version="2"),
        ]
    )
    references = {(NAME, "1"): ref, (NAME, "2"): ref, (NAME, "10"): ref}
    report = drift_report(log, references, "batch")
    assert report[["period_index", "period", "model_version"]].values.tolist() == [
        [0, "aa-early", "1"],
        [1, "mid", "2"],
        [1, "mid", "10"],
        [2, "zz-late", "1"],
    ]
    ten = report.iloc[2]
    assert (ten.n_flagged, ten.flagged_share, ten.n_good) == (30, 1.0, 0)
    assert math.isnan(ten.psi) and not ten.psi_judged and ten.status == "ALERT flagged"


def test_psi_is_not_judged_where_chance_alone_exceeds_the_limit() -> None:
    """12 validation goods: PSI by chance is about 0.75 whatever the line does, above max_psi 0.25."""
    small = Reference(THRESHOLD, 0.0, np.linspace(-1.0, 0.9, 12))
    log = log_rows(np.random.default_rng(5).normal(0.0, 0.5, 400).clip(-2, 0.99))
    (row,) = drift_report(log, {(NAME, "1"): small}, "day").itertuples()
    assert row.psi_chance == pytest.approx(9 * (1 / 12 + 1 / 400))
    assert row.psi > 0.25 and not row.psi_judged and not row.psi_alert
    assert row.status == "ok (psi unjudged)"
    # a looser limit judges it: chance 0.77 <= 0.5 x 2.0
    (loose,) = drift_report(log, {(NAME, "1"): small}, "day", Limits(max_psi=2.0)).itertuples()
    assert loose.psi_judged and loose.status == ("ALERT psi" if loose.psi > 2.0 else "ok")


def test_limits_are_strict_bounds_and_min_images_applies() -> None:
    ref = reference(expected=0.0)
    log = log_rows(np.r_[np.zeros(18), [5.0, 5.0]])  # 10 % flagged, 20 images
    (at_limit,) = drift_report(log, {(NAME, "1"): ref}, "day", Limits(max_flag_excess=0.10)).itertuples()
    assert at_limit.flag_excess == pytest.approx(0.10) and at_limit.judged and not at_limit.flag_alert
    (past,) = drift_report(log, {(NAME, "1"): ref}, "day", Limits(max_flag_excess=0.09)).itertuples()
    assert past.flag_alert and past.status.startswith("ALERT flagged")
    (unjudged,) = drift_report(log, {(NAME, "1"): ref}, "day", Limits(0.09, min_images=21)).itertuples()
    assert not unjudged.judged and not unjudged.alert


def test_errors_name_what_is_missing() -> None:
    with pytest.raises(MonitorError, match=f"no reference for model {NAME} version 4"):
        drift_report(log_rows([0.0], version="4"), {(NAME, "1"): reference()}, "day")
    with pytest.raises(MonitorError, match="period must be one of day, batch"):
        drift_report(log_rows([0.0]), {(NAME, "1"): reference()}, "week")
    with pytest.raises(MonitorError, match="lacks columns verdict"):
        drift_report(log_rows([0.0]).drop(columns="verdict"), {(NAME, "1"): reference()}, "day")
    with pytest.raises(MonitorError, match="max_psi must be above 0"):
        Limits(max_psi=0.0)
    with pytest.raises(MonitorError, match="min_images must be at least 1"):
        Limits(min_images=0)
    with pytest.raises(MonitorError, match="expected_rate must lie in"):
        Reference(0.0, 1.5, np.zeros(3))


def test_table_fits_120_columns_and_summary_counts_alerts() -> None:
    ref = reference()
    long_name = "anomaly-spotter-a-very-long-category-name-for-a-line-camera"
    log = pd.concat(
        [
            log_rows(np.zeros(40), batch="0123456789abcdef"),
            log_rows(
                np.full(40, 3.0), DAY0 + pd.Timedelta(hours=1), batch="fedcba9876543210", name=long_name
            ),
        ]
    )
    report = drift_report(log, {(NAME, "1"): ref, (long_name, "1"): ref}, "batch")
    table = drift.format_table(report).splitlines()
    assert table[0].split() == [
        "period", "model", "images", "flagged", "share", "expect", "excess", "psi", "ks", "ks", "p", "status"
    ]  # fmt: skip
    assert all(len(line) <= 120 for line in table), [len(line) for line in table]
    assert table[1].split()[:7] == ["0123456789abcdef", "widget", "v1", "40", "0", "0.0%", "5.0%"]
    assert table[2].endswith("ALERT flagged") and "…" in table[2]
    line = drift.summary(report, Limits())
    assert line == "ALERT: 1 of 2 judged period rows past a limit (1 flag excess > 0.1, 0 PSI > 0.25): " + (
        "fedcba9876543210 a-very-long-category-name-for-a-line-camera v1"
    )
    calm = drift.summary(report.iloc[:1], Limits())
    assert calm == "no alerts: 1 judged period row within flag excess 0.1 and PSI 0.25"
    few_limits = Limits(min_images=41)
    few = drift.summary(
        drift_report(log, {(NAME, "1"): ref, (long_name, "1"): ref}, "batch", few_limits), few_limits
    )
    assert (
        few
        == "no alerts: 0 judged period rows within flag excess 0.1 and PSI 0.25; 2 not judged (< 41 images)"
    )


# --------------------------------------------------------------------------------------------------
# the command's pure parts


def test_metrics_history_has_a_step_per_period_and_a_column_per_metric_and_version() -> None:
    ref = reference()
    log = pd.concat([log_rows(np.zeros(30), batch="a"), log_rows(np.zeros(30), DAY0, batch="b", version="2")])
    log = pd.concat([log, log_rows(np.zeros(30), DAY0 + pd.Timedelta(days=1), batch="c")])
    report = drift_report(log, {(NAME, "1"): ref, (NAME, "2"): ref}, "day")
    history = metrics_history(report)
    assert history["step"].tolist() == [0, 1]
    assert f"psi/{NAME}/v2" in history.columns and f"flagged_share/{NAME}/v1" in history.columns
    assert history[f"expected_rate/{NAME}/v1"].tolist() == [0.05, 0.05]
    assert history[f"flagged_share/{NAME}/v2"].iloc[0] == 0.0 and math.isnan(history[f"ks/{NAME}/v2"].iloc[1])
    assert len(history.columns) == 1 + 4 * 2


def test_registered_pairs_skip_model_folders_and_sort_versions_numerically() -> None:
    log = pd.concat([log_rows([0.0], version=v) for v in ("10", "2", "2", "")])
    log = pd.concat([log, log_rows([0.0], name="", version="")])
    assert registered_pairs(log) == [(NAME, "2"), (NAME, "10")]


def test_monitor_is_a_command_with_documented_limits_and_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "monitor" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        cli.main(["monitor", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    flat = " ".join(text.split())
    for needed in (
        "--max-flag-excess",
        "default 0.1",
        "--max-psi",
        "default 0.25",
        "--min-images",
        "default 20",
    ):
        assert needed in flat
    assert "exit codes: 0 no judged period past a limit, 3 at least one" in flat
    assert "examples:" in text and text.rstrip().splitlines()[-1] == "see docs/line.md"
    args = cli.build_parser().parse_args(["monitor", "--log", "logs/x"])
    assert (args.period, args.max_flag_excess, args.max_psi, args.min_images, args.no_mlflow) == (
        "day",
        0.10,
        0.25,
        20,
        False,
    )


def test_monitor_on_a_folder_that_is_no_log_is_one_error_line(tmp_path, capsys) -> None:
    assert cli.main(["monitor", "--log", str(tmp_path / "none"), "--no-mlflow"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and err[0].startswith("anomaly-spotter monitor: error: ") and "no scoring log" in err[0]
    )
