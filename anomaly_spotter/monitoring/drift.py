"""Drift of what a model sees on the line from what it was validated on, per period and model version.

A scoring log (`anomaly_spotter.serving.scoring_log`: one row per scored image) is cut into periods, a
UTC day (`day`) or one scoring call (`batch`), and each period's rows of one registered model version are
compared with the good images held out of that version's training (its `Reference`: the validation
and test goods the pipeline scored):

- **flagged share**: the share of the period's images the version flagged (score > threshold) against
  `expected_rate`, the share of those held-out goods above the same threshold (validation and test goods
  together: the validation goods alone are few and also fit the model's calibration). Their difference is
  `flag_excess`: flags that good parts alone do not explain, from defective parts or from good parts that
  now score higher. A period is past the limit when `flag_excess > Limits.max_flag_excess`.
- **score drift of the good-looking images**: the scores of the period's images judged good (score <=
  threshold) against the held-out goods' scores at or below the same threshold, so that both sides are
  truncated alike and defects, flagged on the line and absent from the held-out goods, do not count as
  drift. The gated statistic is the population stability index

      PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

  over `PSI_BINS` (10) bins cut at the deciles of the (truncated) held-out goods' scores, the outer bins
  open, where e_i and a_i are the shares of held-out goods and of the period's good-looking images in
  bin i, each raised to at least `PSI_EPSILON` (1e-4) so that an empty bin gives a large but finite term
  (epsilon smoothing). PSI is 0 for identical histograms; 0.1-0.25 is commonly read as a moderate and above
  0.25 as a significant shift. The two-sample Kolmogorov-Smirnov statistic and p-value
  (`scipy.stats.ks_2samp`) of the same two samples are reported beside it, not judged.

Two samples drawn from one distribution do not give PSI 0: with n and m images, chance alone gives about
`(bins - 1) * (1/n + 1/m)` (the chi-square approximation; `psi_chance`), 0.75 already for 12 validation
goods whatever n. PSI is therefore judged only where that chance level is at most
`Limits.psi_chance_share` of `max_psi`, and where the period has at least `min_images` good-looking images;
a period with fewer than `Limits.min_images` images is reported and not judged at all.

This module needs pandas, NumPy and SciPy only (no MLflow): `drift_report` takes the references as
arguments. `references_from` makes them of what `anomaly_spotter.tracking.scores.log_validations` reads
from the registry; `anomaly-spotter monitor` (`anomaly_spotter.cli.monitor`) and the dashboard's line
review (`anomaly_spotter.review.drift`) both do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from anomaly_spotter.core.errors import AnomalySpotterError

PERIODS = ("day", "batch")
PSI_BINS = 10
PSI_EPSILON = 1e-4
# the log columns a report reads (scoring_log.LOG_COLUMNS has them all)
NEEDED_COLUMNS = ("scored_at", "batch", "category", "model_name", "model_version", "score", "verdict")
FLAGGED = "defective"
GOOD = "good"
REPORT_COLUMNS = (
    "period_index",
    "period",
    "period_start",
    "period_end",
    "category",
    "model_name",
    "model_version",
    "n_images",
    "n_flagged",
    "flagged_share",
    "expected_rate",
    "flag_excess",
    "n_good",
    "n_reference",
    "psi",
    "psi_chance",
    "ks",
    "ks_pvalue",
    "judged",
    "psi_judged",
    "flag_alert",
    "psi_alert",
    "alert",
    "status",
)
TABLE_WIDTH = 120
MODEL_PREFIX = (
    "anomaly-spotter-"  # registered service models are anomaly-spotter-<category>: shown as <category>
)


class MonitorError(AnomalySpotterError):
    """A scoring log cannot be judged: columns, a period or a model version's reference are missing."""


@dataclass(frozen=True, eq=False)
class Reference:
    """What one registered model version was validated on.

    threshold        the threshold it serves (a score above it is flagged)
    expected_rate    the share of its held-out good images above that threshold
    good_scores      the scores of those held-out good images: validation and test goods (truncated at
                     `threshold` where compared)
    """

    threshold: float
    expected_rate: float
    good_scores: np.ndarray

    def __post_init__(self) -> None:
        scores = np.asarray(self.good_scores, dtype=np.float64).ravel()
        if not np.isfinite(scores).all():
            raise MonitorError("held-out good scores must be finite numbers")
        if not math.isfinite(self.threshold):
            raise MonitorError(f"threshold must be a finite number, got {self.threshold}")
        if not 0.0 <= self.expected_rate <= 1.0:
            raise MonitorError(f"expected_rate must lie in [0, 1], got {self.expected_rate}")
        object.__setattr__(self, "good_scores", scores)

    def good_looking(self) -> np.ndarray:
        """The held-out goods' scores at or below the threshold: what good verdicts compare to."""
        return self.good_scores[self.good_scores <= self.threshold]


class Validation(Protocol):
    """What a reference is made of (`anomaly_spotter.tracking.scores.VersionValidation` has it)."""

    threshold: float
    expected_rate: float
    good_scores: Any


def references_from(
    validations: Mapping[tuple[str, str], Validation | None], store: str, tool: str = "monitor"
) -> dict[tuple[str, str], Reference]:
    """The `Reference` of each (model_name, model_version) in `validations` (its threshold, expected rate
    and held-out goods' scores). A version mapped to None is one the MLflow store `store` does not know:
    MonitorError naming it and the store, and telling to run `tool` against the store that registered it."""
    references: dict[tuple[str, str], Reference] = {}
    for (name, version), validation in validations.items():
        if validation is None:
            raise MonitorError(
                f"the scoring log has rows scored by {name} version {version}, which the MLflow store "
                f"{store} does not know; run {tool} against the store that registered it "
                "(MLFLOW_TRACKING_URI, or the folder holding its mlflow.db), or move the log's part files of "
                "that version aside"
            )
        references[(name, version)] = Reference(
            validation.threshold, validation.expected_rate, validation.good_scores
        )
    return references


@dataclass(frozen=True)
class Limits:
    """When a period is past a limit (`anomaly-spotter monitor`'s flags).

    max_flag_excess   flagged share minus expected rate above which a period alerts (0.10)
    max_psi           PSI above which a period alerts (0.25, the usual "significant shift")
    min_images        periods with fewer images are reported, not judged; PSI also needs this many
                      good-looking images (20)
    psi_chance_share  PSI is judged only where chance alone gives at most this share of max_psi (0.5)
    """

    max_flag_excess: float = 0.10
    max_psi: float = 0.25
    min_images: int = 20
    psi_chance_share: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_flag_excess <= 1.0:
            raise MonitorError(f"max_flag_excess must lie in [0, 1], got {self.max_flag_excess}")
        if not self.max_psi > 0.0:
            raise MonitorError(f"max_psi must be above 0, got {self.max_psi}")
        if self.min_images < 1:
            raise MonitorError(f"min_images must be at least 1, got {self.min_images}")
        if not self.psi_chance_share > 0.0:
            raise MonitorError(f"psi_chance_share must be above 0, got {self.psi_chance_share}")


def psi_edges(reference: np.ndarray, bins: int = PSI_BINS) -> np.ndarray:
    """The inner bin edges of PSI: the reference's quantiles at 1/bins ... (bins-1)/bins, ties merged (so
    a reference with few distinct values gets fewer bins); the outer bins are open."""
    reference = np.asarray(reference, dtype=np.float64)
    if reference.size == 0:
        raise MonitorError("PSI needs at least one reference score")
    return np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def bin_shares(values: np.ndarray, edges: np.ndarray, epsilon: float = PSI_EPSILON) -> np.ndarray:
    """The share of `values` in each bin (a value on an edge goes to the bin above), at least `epsilon`."""
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return np.maximum(counts / max(len(values), 1), epsilon)


def psi(
    reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS, epsilon: float = PSI_EPSILON
) -> float:
    """Population stability index of `current` against `reference` (see the module doc): NaN when either
    sample is empty."""
    reference = np.asarray(reference, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    if reference.size == 0 or current.size == 0:
        return math.nan
    edges = psi_edges(reference, bins)
    e, a = bin_shares(reference, edges, epsilon), bin_shares(current, edges, epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_chance(n_reference: int, n_current: int, bins: int) -> float:
    """About the PSI two samples of one distribution give by chance: (bins - 1) * (1/n + 1/m); NaN when
    either is empty."""
    if n_reference <= 0 or n_current <= 0:
        return math.nan
    return (bins - 1) * (1.0 / n_reference + 1.0 / n_current)


def ks(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and p-value (`scipy.stats.ks_2samp`); NaNs when either
    sample is empty."""
    from scipy.stats import ks_2samp

    if len(reference) == 0 or len(current) == 0:
        return math.nan, math.nan
    result = ks_2samp(np.asarray(current, np.float64), np.asarray(reference, np.float64))
    return float(result.statistic), float(result.pvalue)


def _utc(times: pd.Series) -> pd.Series:
    """Times as UTC timestamps; naive ones are taken to be UTC already (the log writes UTC)."""
    return pd.to_datetime(times, utc=True)


def with_periods(log: pd.DataFrame, period: str) -> pd.DataFrame:
    """`log` with columns `period` (the UTC date YYYY-MM-DD, or the batch id) and `period_index` (0 for
    the earliest period of the log, by its first scored_at)."""
    if period not in PERIODS:
        raise MonitorError(f"period must be one of {', '.join(PERIODS)}, got {period!r}")
    missing = [c for c in NEEDED_COLUMNS if c not in log.columns]
    if missing:
        raise MonitorError(f"the scoring log lacks columns {', '.join(missing)}; is it a scoring log?")
    out = log.copy()
    out["scored_at"] = _utc(out["scored_at"])
    out["period"] = out["scored_at"].dt.strftime("%Y-%m-%d") if period == "day" else out["batch"].astype(str)
    first = out.groupby("period")["scored_at"].min().sort_values(kind="stable")
    out["period_index"] = out["period"].map({p: i for i, p in enumerate(first.index)}).astype(int)
    return out


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if str(version).isdigit() else (1 << 62, str(version))


def drift_report(
    log: pd.DataFrame,
    references: Mapping[tuple[str, str], Reference],
    period: str = "day",
    limits: Limits | None = None,
) -> pd.DataFrame:
    """One row per period and model version of `log` (scoring log rows), judged against
    `references[(model_name, model_version)]`; MonitorError naming a version that has none.

    Columns (REPORT_COLUMNS), rows ordered by period_index, model_name, model_version:
      period_index     0 for the log's earliest period (the step of the MLflow metrics)
      period           UTC date (YYYY-MM-DD) or batch id
      period_start/_end  first and last scored_at of these rows (UTC)
      category, model_name, model_version
      n_images, n_flagged  rows, and rows with verdict defective
      flagged_share    n_flagged / n_images
      expected_rate    the reference's share of held-out goods above its threshold
      flag_excess      flagged_share - expected_rate
      n_good           good-looking images (verdict good) of the period
      n_reference      held-out goods at or below the threshold
      psi, psi_chance  PSI of the good-looking scores against those held-out goods, and about what chance
                       alone gives at these sizes (NaN when either side is empty)
      ks, ks_pvalue    the two-sample Kolmogorov-Smirnov statistic and p-value of the same samples
      judged           n_images >= min_images
      psi_judged       judged, n_good >= min_images and psi_chance <= psi_chance_share * max_psi
      flag_alert       judged and flag_excess > max_flag_excess
      psi_alert        psi_judged and psi > max_psi
      alert            flag_alert or psi_alert
      status           "ALERT flagged", "ALERT psi", "ALERT flagged+psi", "ok", "ok (psi unjudged)"
                       (PSI not judged) or "too few images"
    """
    limits = limits or Limits()
    frame = with_periods(log, period)
    frame["model_version"] = frame["model_version"].astype(str)
    rows = []
    for (index, name, version), group in frame.groupby(
        ["period_index", "model_name", "model_version"], sort=False
    ):
        reference = references.get((name, version))
        if reference is None:
            raise MonitorError(
                f"no reference for model {name or '(a model folder)'} version {version or '-'}: "
                "its threshold and validation scores are needed to judge its rows"
            )
        rows.append(_period_row(int(index), name, version, group, reference, limits))
    report = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))
    if report.empty:
        return report
    order = report["model_version"].map(_version_key)
    report = report.assign(_v=order).sort_values(["period_index", "model_name", "_v"], kind="stable")
    return report.drop(columns="_v").reset_index(drop=True)


def _period_row(
    index: int, name: str, version: str, group: pd.DataFrame, reference: Reference, limits: Limits
) -> dict[str, object]:
    verdicts = group["verdict"].astype(str)
    unknown = sorted(set(verdicts) - {FLAGGED, GOOD})
    if unknown:
        raise MonitorError(f"verdicts must be {FLAGGED} or {GOOD}; {name} version {version} has {unknown}")
    n_images = len(group)
    n_flagged = int((verdicts == FLAGGED).sum())
    current = group.loc[verdicts == GOOD, "score"].to_numpy(np.float64)
    validation = reference.good_looking()
    share = n_flagged / n_images
    excess = share - reference.expected_rate
    statistic = psi(validation, current)
    bins = len(psi_edges(validation)) + 1 if len(validation) else PSI_BINS
    chance = psi_chance(len(validation), len(current), bins)
    ks_stat, ks_p = ks(validation, current)
    judged = n_images >= limits.min_images
    psi_judged = bool(
        judged
        and len(current) >= limits.min_images
        and math.isfinite(statistic)
        and chance <= limits.psi_chance_share * limits.max_psi
    )
    flag_alert = bool(judged and excess > limits.max_flag_excess)
    psi_alert = bool(psi_judged and statistic > limits.max_psi)
    if not judged:
        status = "too few images"
    elif flag_alert or psi_alert:
        status = "ALERT " + "+".join(k for k, on in (("flagged", flag_alert), ("psi", psi_alert)) if on)
    else:
        status = "ok" if psi_judged else "ok (psi unjudged)"
    categories = sorted(set(group["category"].astype(str)))
    return {
        "period_index": index,
        "period": str(group["period"].iloc[0]),
        "period_start": group["scored_at"].min(),
        "period_end": group["scored_at"].max(),
        "category": ",".join(categories),
        "model_name": name,
        "model_version": version,
        "n_images": n_images,
        "n_flagged": n_flagged,
        "flagged_share": share,
        "expected_rate": reference.expected_rate,
        "flag_excess": excess,
        "n_good": len(current),
        "n_reference": len(validation),
        "psi": statistic,
        "psi_chance": chance,
        "ks": ks_stat,
        "ks_pvalue": ks_p,
        "judged": judged,
        "psi_judged": psi_judged,
        "flag_alert": flag_alert,
        "psi_alert": psi_alert,
        "alert": flag_alert or psi_alert,
        "status": status,
    }


def _num(value: float, spec: str, suffix: str = "") -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec) + suffix


def short_name(model_name: str, version: str) -> str:
    """`fabric v3` for version 3 of `anomaly-spotter-fabric`: the table's and the summary's model label."""
    return f"{model_name.removeprefix(MODEL_PREFIX) or model_name or '(folder)'} v{version}"


def format_table(report: pd.DataFrame, width: int = TABLE_WIDTH) -> str:
    """The report as a text table of at most `width` columns (the model label is shortened to fit): one
    line per period and version. The CSV (`report.to_csv`) has every column."""
    headers = ("period", "model", "images", "flagged", "share", "expect", "excess", "psi", "ks", "ks p")
    headers += ("status",)
    rows = [
        (
            str(row.period),
            short_name(row.model_name, row.model_version),
            str(row.n_images),
            str(row.n_flagged),
            _num(row.flagged_share * 100, ".1f", "%"),
            _num(row.expected_rate * 100, ".1f", "%"),
            _num(row.flag_excess * 100, "+.1f", "%"),
            _num(row.psi, ".3f"),
            _num(row.ks, ".3f"),
            _num(row.ks_pvalue, ".3f"),
            str(row.status),
        )
        for row in report.itertuples(index=False)
    ]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    room = width - (sum(widths) - widths[1]) - 2 * (len(headers) - 1)
    if widths[1] > room:
        widths[1] = max(room, len(headers[1]))
        rows = [(r[0], _clip(r[1], widths[1]), *r[2:]) for r in rows]
    left = {0, 1, len(headers) - 1}

    def line(cells: tuple[str, ...]) -> str:
        pairs = zip(cells, widths, strict=True)
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(pairs)).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def _clip(text: str, room: int) -> str:
    return text if len(text) <= room else "…" + text[len(text) - room + 1 :]


def summary(report: pd.DataFrame, limits: Limits) -> str:
    """The last line `monitor` prints: how many period rows were judged and which are past a limit."""
    if report.empty:
        return "no periods to judge"
    judged, alerts = int(report["judged"].sum()), report[report["alert"]]
    unjudged = len(report) - judged
    rest = f"; {unjudged} not judged (< {limits.min_images} images)" if unjudged else ""
    if alerts.empty:
        return (
            f"no alerts: {judged} judged period row{'s' if judged != 1 else ''} within flag excess "
            f"{limits.max_flag_excess:g} and PSI {limits.max_psi:g}{rest}"
        )
    flag, shift = int(alerts["flag_alert"].sum()), int(alerts["psi_alert"].sum())
    where = ", ".join(
        f"{r.period} {short_name(r.model_name, r.model_version)}" for r in alerts.head(3).itertuples()
    )
    more = f" and {len(alerts) - 3} more" if len(alerts) > 3 else ""
    return (
        f"ALERT: {len(alerts)} of {judged} judged period rows past a limit ({flag} flag excess > "
        f"{limits.max_flag_excess:g}, {shift} PSI > {limits.max_psi:g}): {where}{more}{rest}"
    )
