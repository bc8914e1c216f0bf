"""`anomaly-spotter monitor`: has the line drifted from what the model versions were validated on?

It reads a scoring log (`predict`, `score-spark` and `serve` with `--log LOG`), looks up each registered
model version of its rows in the MLflow registry (its threshold, and the scores of the good images held
out of its training, validation and test goods, in the `scores.csv` of its `run.process_all` run:
`load_references`), and reports per UTC day or scoring batch and version the share flagged against the
false-alarm rate those goods give and how far the scores of the good-looking images moved from theirs
(PSI, with KS beside it:
`anomaly_spotter.monitoring.drift`). Exit code 3 when a judged period is past a limit, for schedulers.
Each call is one MLflow run in the experiment `anomaly-spotter-monitor` (`--no-mlflow`: none).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

from anomaly_spotter import tracking
from anomaly_spotter.monitoring.drift import (
    PSI_BINS,
    Limits,
    MonitorError,
    Reference,
    drift_report,
    format_table,
    references_from,
    short_name,
    summary,
)
from anomaly_spotter.serving import scoring_log
from anomaly_spotter.tracking.scores import log_validations, registered_rows
from anomaly_spotter.tracking.scores import registered_pairs as registered_pairs  # importable here too

MONITOR_EXPERIMENT = "anomaly-spotter-monitor"
EXIT_OK = 0
EXIT_ALERT = 3
REPORT_CSV = "drift_report.csv"
# the report's columns logged as MLflow metrics per model version, step = period_index
STEP_METRICS = ("flagged_share", "expected_rate", "psi", "ks")
DEFAULT_LIMITS = Limits()

MONITOR_EPILOG = """examples:
  anomaly-spotter monitor --log logs/fabric
  anomaly-spotter monitor --log logs/fabric --period batch --csv drift.csv
  anomaly-spotter monitor --log logs/line --max-flag-excess 0.05 --max-psi 0.1 --min-images 200 --no-mlflow

One row per period (UTC day, or scoring batch) and registered model version: images, flagged share against
the share of the version's held-out goods (validation and test goods) above the same threshold, and the
drift of the good-looking images' scores from those goods' at or below the threshold: PSI (10 bins at
their deciles; judged) and the Kolmogorov-Smirnov statistic and p-value (shown).
A period with fewer than --min-images images is shown, not judged; PSI is judged only where the samples
are large enough for it to exceed chance (psi_chance in the CSV). Rows scored by a model folder (no
registered version) are left out.

exit codes: 0 no judged period past a limit, 3 at least one (an alert), 1 an error (one line).
Each call logs an MLflow run in the experiment anomaly-spotter-monitor (params, per-period metrics with
step = period index, the report CSV), in the existing store at MLFLOW_TRACKING_URI (default
sqlite:///mlflow.db); --no-mlflow logs nothing.

see docs/line.md
"""


def load_references(log: pd.DataFrame) -> dict[tuple[str, str], Reference]:
    """The reference of each registered model version with rows in `log`, from the MLflow store in use
    (point MLflow at it first: `tracking.use_existing_store`): the version's `threshold` tag and the scores
    of its held-out good images (validation and test goods, label 0) in the `scores.csv` of its
    `run.process_all` run, whose share above the threshold is the expected rate
    (`tracking.scores.log_validations`, made references by `monitoring.drift.references_from`).

    Rows scored by a model folder (empty model_name or model_version) have no reference and are skipped.
    MonitorError naming a version the store does not know; TrackingError naming the version when it lacks
    a threshold or validation goods (`tracking.scores.version_validation`), or when the store or the run's
    artifact cannot be read."""
    return references_from(log_validations(log), tracking.mlflow_uri())


def metrics_history(report: pd.DataFrame) -> pd.DataFrame:
    """The report as `tracking.log_history` takes it: a `step` column (period_index), then one column per
    metric and model version, `<metric>/<model_name>/v<version>` (blank where a version has no rows)."""
    if report.empty:
        return pd.DataFrame({"step": []})
    long = report.melt(
        id_vars=["period_index", "model_name", "model_version"],
        value_vars=list(STEP_METRICS),
        var_name="metric",
    )
    long["key"] = long["metric"] + "/" + long["model_name"] + "/v" + long["model_version"].astype(str)
    wide = long.pivot_table(
        index="period_index", columns="key", values="value", aggfunc="first", dropna=False
    )
    wide = wide.reindex(sorted(wide.columns), axis=1)
    return wide.reset_index().rename(columns={"period_index": "step"})


def write_report(report: pd.DataFrame, path: Path) -> None:
    """The report as CSV (every column of `drift_report`); MonitorError naming the file when it fails."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        report.to_csv(path, index=False)
    except OSError as err:
        raise MonitorError(
            f"{path}: cannot write the report ({err.strerror or err}); choose another --csv"
        ) from err


def log_to_mlflow(report: pd.DataFrame, log_dir: Path, period: str, limits: Limits, n_rows: int) -> str:
    """One run in MONITOR_EXPERIMENT: params (the log, period, limits), the STEP_METRICS per model version
    with step = period index, totals, and the report CSV as an artifact. Returns the run id."""
    tracking.check_writable(tracking.mlflow_uri())
    categories = sorted(set(report["category"])) if not report.empty else []
    params = {
        "log": str(log_dir.resolve()),
        "period": period,
        "max_flag_excess": limits.max_flag_excess,
        "max_psi": limits.max_psi,
        "min_images": limits.min_images,
        "psi_chance_share": limits.psi_chance_share,
        "psi_bins": PSI_BINS,
        "log_rows": n_rows,
        "model_versions": ", ".join(
            sorted(
                {short_name(n, v) for n, v in report[["model_name", "model_version"]].itertuples(index=False)}
            )
        ),
    }
    category = categories[0] if len(categories) == 1 else None
    with tracking.stage_run("monitor", category, params, experiment=MONITOR_EXPERIMENT) as run:
        tracking.log_history(metrics_history(report))
        tracking.log_metrics(
            {
                "periods": int(report["period_index"].nunique()) if not report.empty else 0,
                "judged": int(report["judged"].sum()),
                "alerts": int(report["alert"].sum()),
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / REPORT_CSV
            write_report(report, path)
            tracking.log_artifacts([path])
        return run.info.run_id


def cmd_monitor(args: argparse.Namespace) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # scores.csv downloads: no bars
    limits = Limits(args.max_flag_excess, args.max_psi, args.min_images)
    log_dir = Path(args.log)
    log = scoring_log.read_log(log_dir)
    registered = registered_rows(log)
    if len(registered) < len(log):
        print(
            f"note: {len(log) - len(registered)} of {len(log)} rows of {log_dir} were scored by a model "
            "folder (no registered version, so no validation to compare with): left out",
            file=sys.stderr,
        )
    if registered.empty:
        raise MonitorError(
            f"{log_dir}: no rows scored by a registered model version; monitor compares the line with a "
            "registered version's validation, so score with --model models:/anomaly-spotter-<category>/..."
        )
    uri = tracking.use_existing_store(f"the model versions of scoring log {log_dir}")
    report = drift_report(registered, load_references(registered), args.period, limits)
    print(format_table(report))
    if args.csv is not None:
        write_report(report, Path(args.csv))
        print(f"report: {args.csv}")
    if not args.no_mlflow:
        run_id = log_to_mlflow(report, log_dir, args.period, limits, len(log))
        print(f"MLflow run {run_id} in experiment {MONITOR_EXPERIMENT} ({uri})")
    print(summary(report, limits))
    return EXIT_ALERT if bool(report["alert"].any()) else EXIT_OK
