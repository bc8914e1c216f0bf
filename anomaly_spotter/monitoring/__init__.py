"""Drift monitoring of the line: what a served model version sees, per day or scoring batch, against what it
was validated on (`drift`); `anomaly-spotter monitor` reads the scoring log and the registry and runs it."""

from __future__ import annotations

from anomaly_spotter.monitoring.drift import (  # noqa: F401
    PERIODS,
    PSI_BINS,
    PSI_EPSILON,
    REPORT_COLUMNS,
    Limits,
    MonitorError,
    Reference,
    drift_report,
    format_table,
    ks,
    psi,
    psi_chance,
    short_name,
    summary,
    with_periods,
)
