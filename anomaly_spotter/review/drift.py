"""The line review's "Drift over time": `anomaly-spotter monitor`'s report on the open scoring log, plotted
over its periods (`anomaly_spotter.monitoring.drift` computes it; this module picks and charts it).

- `line_references` reads the validation reference of each registered version in the log from the MLflow
  store, as `monitor` does; `line_report` is `drift_report` on the log's rows of registered versions.
- `share_points` / `share_chart`: the flagged share per period and model version, the expected rate (the
  share of the version's held-out goods above the threshold) as a dashed line and the limit (expected rate +
  `max_flag_excess`) dotted; a period past the limit is ringed, one with too few images is drawn hollow.
- `psi_points` / `psi_chart`: PSI of the good-looking scores per period, the `max_psi` limit as a line;
  a period whose PSI is not judged (too few images, or chance alone gives more than `psi_chance_share` of
  `max_psi`: `drift.psi_chance`) is drawn faint, with why in its tooltip.
- `report_table`: the report's rows as the dashboard shows them below the charts.
"""

from __future__ import annotations

import math

import altair as alt
import pandas as pd

from anomaly_spotter import tracking
from anomaly_spotter.monitoring.drift import Limits, Reference, drift_report, references_from, short_name
from anomaly_spotter.tracking.scores import registered_rows, version_validation

CHART_HEIGHT = 260
# how a period's point is drawn: its judgement of the flagged share / of PSI
PAST = "past the limit"
WITHIN = "within the limit"
TOO_FEW = "too few images"
UNJUDGED = "not judged"
SHARE_MARKS = (PAST, WITHIN, TOO_FEW)
PSI_MARKS = (PAST, WITHIN, UNJUDGED)
ALERT_COLOUR = "#d62728"
LIMIT_COLOUR = "gray"
TABLE_COLUMNS = {
    "period": "period",
    "model": "model",
    "n_images": "images",
    "n_flagged": "flagged",
    "flagged_share": "share",
    "expected_rate": "expected",
    "flag_excess": "excess",
    "n_good": "good-looking",
    "psi": "PSI",
    "psi_chance": "PSI by chance",
    "ks": "KS",
    "ks_pvalue": "KS p",
    "status": "status",
}


def line_references(pairs: list[tuple[str, str]]) -> dict[tuple[str, str], Reference]:
    """The validation reference of each registered (model_name, model_version) of a scoring log
    (`tracking.scores.registered_pairs`), read from the MLflow store the dashboard runs against as
    `anomaly-spotter monitor` reads it. TrackingError when there is no store or a version lacks its
    threshold or validation goods; MonitorError naming a version the store does not know."""
    tracking.use_existing_store("the model versions of the scoring log")
    validations = {(name, version): version_validation(name, version) for name, version in pairs}
    return references_from(validations, tracking.mlflow_uri(), "the dashboard")


def line_report(
    log: pd.DataFrame, references: dict[tuple[str, str], Reference], period: str, limits: Limits
) -> pd.DataFrame:
    """`drift_report` of the log's rows of registered versions (`registered_rows`), per `period`."""
    return drift_report(registered_rows(log), references, period, limits)


def periods(report: pd.DataFrame) -> list[str]:
    """The report's periods in time order (by period_index): the charts' x axis."""
    return report.sort_values("period_index", kind="stable")["period"].drop_duplicates().tolist()


def _models(report: pd.DataFrame) -> pd.Series:
    return pd.Series(
        [short_name(n, v) for n, v in report[["model_name", "model_version"]].itertuples(index=False)],
        index=report.index,
        dtype=object,
    )


def share_points(report: pd.DataFrame, limits: Limits) -> pd.DataFrame:
    """One row per period and model version: period_index, period, model (`fabric v3`), n_images,
    n_flagged, flagged_share, expected_rate, limit (expected_rate + max_flag_excess: above it a judged
    period alerts), mark (SHARE_MARKS: past the limit, within the limit, too few images) and status."""
    out = report[["period_index", "period"]].copy()
    out["model"] = _models(report)
    for column in ("n_images", "n_flagged", "flagged_share", "expected_rate"):
        out[column] = report[column]
    out["limit"] = report["expected_rate"] + limits.max_flag_excess
    out["mark"] = [
        PAST if alert else WITHIN if judged else TOO_FEW
        for alert, judged in zip(report["flag_alert"], report["judged"], strict=True)
    ]
    out["status"] = report["status"]
    return out.reset_index(drop=True)


def psi_reason(row: pd.Series, limits: Limits) -> str:
    """Why a report row's PSI is or is not judged (`drift_report`'s psi_judged), in words."""
    if not row["judged"]:
        return f"not judged: {row['n_images']} images < {limits.min_images}"
    if row["n_good"] < limits.min_images:
        return f"not judged: {row['n_good']} good-looking images < {limits.min_images}"
    ceiling = limits.psi_chance_share * limits.max_psi
    if not row["psi_judged"]:
        return (
            f"not judged: chance alone gives about {row['psi_chance']:.3f} with {row['n_good']} good-looking "
            f"and {row['n_reference']} held-out goods, more than {ceiling:g} ({limits.psi_chance_share:g} "
            "of max PSI)"
        )
    return f"judged: chance alone gives about {row['psi_chance']:.3f} (at most {ceiling:g})"


def psi_points(report: pd.DataFrame, limits: Limits) -> pd.DataFrame:
    """One row per period and model version with a PSI (NaN where the period has no good-looking images:
    left out): period_index, period, model, psi, psi_chance, n_good, n_reference, mark (PSI_MARKS: past
    the limit, within the limit, not judged) and why (`psi_reason`)."""
    rows = report[report["psi"].map(lambda v: v is not None and math.isfinite(v))]
    out = rows[["period_index", "period"]].copy()
    out["model"] = _models(rows)
    for column in ("psi", "psi_chance", "n_good", "n_reference"):
        out[column] = rows[column]
    out["mark"] = [
        PAST if alert else WITHIN if judged else UNJUDGED
        for alert, judged in zip(rows["psi_alert"], rows["psi_judged"], strict=True)
    ]
    out["why"] = [psi_reason(row, limits) for _, row in rows.iterrows()]
    return out.reset_index(drop=True)


def _x(order: list[str]) -> alt.X:
    return alt.X(
        "period:N", sort=order, title="period (UTC day or scoring batch)", axis=alt.Axis(labelAngle=-30)
    )


def _ringed(points: pd.DataFrame, x: alt.X, y: str) -> alt.Chart:
    """A red ring around each point past its limit (an empty layer when there is none)."""
    return (
        alt.Chart(points[points["mark"] == PAST])
        .mark_point(shape="circle", size=320, filled=False, strokeWidth=2, color=ALERT_COLOUR)
        .encode(x=x, y=y)
    )


def share_chart(report: pd.DataFrame, limits: Limits) -> alt.LayerChart:
    """The flagged share per period, a line per model version; its expected rate dashed, its limit dotted,
    periods past the limit ringed in red and periods with too few images drawn hollow."""
    points = share_points(report, limits)
    x = _x(periods(report))
    colour = alt.Color("model:N", title="model version")
    y = alt.Y("flagged_share:Q", title="flagged share", axis=alt.Axis(format="%"))
    tooltip = [
        "period:N",
        "model:N",
        "n_images:Q",
        "n_flagged:Q",
        alt.Tooltip("flagged_share:Q", format=".1%"),
        alt.Tooltip("expected_rate:Q", format=".1%"),
        alt.Tooltip("limit:Q", format=".1%"),
        "status:N",
    ]
    line = alt.Chart(points).mark_line().encode(x=x, y=y, color=colour)
    dots = (
        alt.Chart(points)
        .mark_point(size=80, strokeWidth=2)
        .encode(
            x=x,
            y=y,
            color=colour,
            fill=alt.condition(alt.datum.mark == TOO_FEW, alt.value("white"), colour),
            shape=alt.Shape("mark:N", scale=alt.Scale(domain=list(SHARE_MARKS)), title="flagged share"),
            tooltip=tooltip,
        )
    )
    rates = points.drop_duplicates("model")
    expected = (
        alt.Chart(rates)
        .mark_rule(strokeDash=[6, 4], size=1.5)
        .encode(
            y="expected_rate:Q",
            color=colour,
            tooltip=["model:N", alt.Tooltip("expected_rate:Q", format=".1%", title="expected rate")],
        )
    )
    limit = (
        alt.Chart(rates)
        .mark_rule(strokeDash=[1, 3], size=1.5)
        .encode(
            y="limit:Q",
            color=colour,
            tooltip=["model:N", alt.Tooltip("limit:Q", format=".1%", title="limit (expected + max excess)")],
        )
    )
    return alt.layer(expected, limit, line, dots, _ringed(points, x, "flagged_share:Q")).properties(
        title="Flagged share (dashed: expected rate; dotted: its limit)", height=CHART_HEIGHT
    )


def psi_chart(report: pd.DataFrame, limits: Limits) -> alt.LayerChart:
    """PSI of the good-looking scores per period, a line per model version, the max_psi limit as a red
    dashed line; periods past it ringed in red, periods whose PSI is not judged drawn faint."""
    points = psi_points(report, limits)
    x = _x(periods(report))
    colour = alt.Color("model:N", title="model version")
    y = alt.Y("psi:Q", title="PSI of the good-looking scores")
    line = alt.Chart(points).mark_line(opacity=0.5).encode(x=x, y=y, color=colour)
    dots = (
        alt.Chart(points)
        .mark_point(size=80, filled=True)
        .encode(
            x=x,
            y=y,
            color=colour,
            shape=alt.Shape("mark:N", scale=alt.Scale(domain=list(PSI_MARKS)), title="PSI"),
            opacity=alt.condition(alt.datum.mark == UNJUDGED, alt.value(0.35), alt.value(1.0)),
            tooltip=[
                "period:N",
                "model:N",
                alt.Tooltip("psi:Q", format=".3f"),
                alt.Tooltip("psi_chance:Q", format=".3f", title="PSI by chance"),
                "n_good:Q",
                "n_reference:Q",
                "why:N",
            ],
        )
    )
    rule = pd.DataFrame({"max_psi": [limits.max_psi], "label": [f"max PSI {limits.max_psi:g}"]})
    limit = (
        alt.Chart(rule)
        .mark_rule(color=ALERT_COLOUR, strokeDash=[6, 4], size=1.5)
        .encode(y="max_psi:Q", tooltip=["label:N"])
    )
    label = (
        alt.Chart(rule)
        .mark_text(align="left", dx=4, dy=-6, color=ALERT_COLOUR, fontSize=11)
        .encode(y="max_psi:Q", x=alt.value(0), text="label:N")
    )
    return alt.layer(limit, label, line, dots, _ringed(points, x, "psi:Q")).properties(
        title="PSI of the good-looking scores (faint: not judged)", height=CHART_HEIGHT
    )


def report_table(report: pd.DataFrame) -> pd.DataFrame:
    """The report's rows as the dashboard's table: period, model, counts, shares, PSI, KS and status
    (TABLE_COLUMNS; the CSV of `anomaly-spotter monitor --csv` has every column)."""
    table = report.assign(model=_models(report))[list(TABLE_COLUMNS)]
    return table.rename(columns=TABLE_COLUMNS).reset_index(drop=True)
