"""`anomaly-spotter experiments`: DVC's experiments as one table that reads in 120 columns.

`dvc exp show` cannot be read in a terminal for this pipeline: it has a column for each of 58 parameters,
7 metrics per category plus the overall ones (all named `<file>:<key>`, since every metrics file has the
same keys) and 70 dependencies. This reads `dvc exp show --json` and prints one row per commit and
experiment with its state, the parameters that differ between the rows, and five headline metrics of
one metrics file. Arguments it does not know go to `dvc exp show` (e.g. `-A`, `-n 3`, `--rev main`).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from anomaly_spotter.core.config import flatten
from anomaly_spotter.core.errors import AnomalySpotterError

EXPERIMENTS_EPILOG = """examples:
  anomaly-spotter experiments                       # overall means (metrics/overall.json)
  anomaly-spotter experiments --category fabric     # one category (a run over some categories has no
                                                    # overall mean: docs/pipeline.md)
  anomaly-spotter experiments --sort-by image_auroc -A

Each experiment's pipeline summary run in MLflow (experiment anomaly-spotter-pipelines) is named after it.
see docs/pipeline.md
"""

# the headline per row: ranking (image, pixel, region), then what the recall-target threshold costs
SHOWN_METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1", "false_alarm_rate")
HEADERS = {"false_alarm_rate": "false_alarms"}
WIDTH = 120


@dataclass(frozen=True)
class Row:
    """One line of the table: a commit (or the workspace) or an experiment derived from it."""

    name: str
    state: str
    params: Mapping[str, Any]
    metrics: Mapping[str, Any]


def rows_from_json(shown: list[dict[str, Any]], metrics_file: str) -> list[Row]:
    """`dvc exp show --json` -> rows: each baseline, then its experiments (indented), newest first as DVC
    lists them. A baseline or experiment that failed to load shows its state and no values."""
    rows = []
    for baseline in shown:
        rev = str(baseline.get("rev", ""))
        name = baseline.get("name") or (rev if rev == "workspace" else rev[:7])
        rows.append(_row(name, "-", baseline.get("data") or {}, metrics_file))
        experiments = baseline.get("experiments") or []
        for i, experiment in enumerate(experiments):
            rev = (experiment.get("revs") or [{}])[0]
            branch = "└── " if i == len(experiments) - 1 else "├── "
            label = experiment.get("name") or rev.get("name") or str(rev.get("rev", ""))[:7]
            state = (experiment.get("executor") or {}).get("state") or "success"
            rows.append(_row(branch + label, state, rev.get("data") or {}, metrics_file))
    return rows


def _row(name: str, state: str, data: Mapping[str, Any], metrics_file: str) -> Row:
    params = {}
    for content in (data.get("params") or {}).values():
        params |= flatten(content.get("data") or {})
    metrics = ((data.get("metrics") or {}).get(metrics_file) or {}).get("data") or {}
    return Row(name, state, params, metrics)


def changed_params(rows: Sequence[Row]) -> list[str]:
    """The parameters whose value differs between the rows, in params.yaml order."""
    keys = list(dict.fromkeys(k for row in rows for k in row.params))
    return [k for k in keys if len({repr(row.params.get(k)) for row in rows}) > 1]


def render(rows: Sequence[Row], metrics_file: str, width: int = WIDTH) -> str:
    """The table: Experiment, State, the changed parameters, then SHOWN_METRICS (4 decimals, "-" where
    absent). A parameter's header is its last key part(s) needed to tell it from the others; values wider
    than the table allows are cut with "…"."""
    params = changed_params(rows)
    headers = ["Experiment", "State", *_short_names(params), *(HEADERS.get(m, m) for m in SHOWN_METRICS)]
    body = [
        [
            row.name,
            row.state,
            *(_param_text(row.params.get(p)) for p in params),
            *(_metric_text(row.metrics.get(m)) for m in SHOWN_METRICS),
        ]
        for row in rows
    ]
    widths = [max(len(r[i]) for r in [headers, *body]) for i in range(len(headers))]
    n_params = len(params)
    budget = width - 2 * (len(headers) - 1) - sum(widths[:2]) - sum(widths[2 + n_params :])
    if n_params and sum(widths[2 : 2 + n_params]) > budget:  # share what is left between the parameters
        each = max(8, budget // n_params)
        widths[2 : 2 + n_params] = [min(w, each) for w in widths[2 : 2 + n_params]]
    numeric = set(range(2 + n_params, len(headers)))

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, (cell, w) in enumerate(zip(cells, widths, strict=True)):
            cell = cell if len(cell) <= w else cell[: w - 1] + "…"
            out.append(cell.rjust(w) if i in numeric else cell.ljust(w))
        return "  ".join(out).rstrip()

    rule = "─" * min(width, sum(widths) + 2 * (len(widths) - 1))
    title = f"metrics: {metrics_file}" + (f"; changed parameters: {', '.join(params)}" if params else "")
    titles = textwrap.wrap(title, width, subsequent_indent="  ")
    return "\n".join([*titles, rule, line(headers), rule, *(line(r) for r in body), rule])


def _short_names(keys: Sequence[str]) -> list[str]:
    """Each dotted key cut to its shortest tail that no other key shares (model.patchcore.sigma -> sigma)."""
    names = []
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(k == tail or k.endswith("." + tail) for k in keys if k != key):
                break
        names.append(tail)
    return names


def _param_text(value: Any) -> str:
    return "-" if value is None else json.dumps(value) if isinstance(value, list | dict) else str(value)


def _metric_text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return f"{value:.4f}"


def cmd_experiments(args: argparse.Namespace) -> int:
    if shutil.which("dvc") is None:
        raise AnomalySpotterError("dvc is not on PATH; install the project (README Quick start)")
    metrics_file = f"metrics/categories/{args.category}.json" if args.category else "metrics/overall.json"
    command = ["dvc", "exp", "show", "--json", *args.dvc_args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AnomalySpotterError(
            f"{' '.join(command)} failed: {result.stderr.strip() or result.stdout.strip()}"
        )
    rows = rows_from_json(json.loads(result.stdout or "[]"), metrics_file)
    if args.category and not any(row.metrics for row in rows):
        raise AnomalySpotterError(f"no row has {metrics_file}: is {args.category!r} in data.categories?")
    if args.sort_by:
        if args.sort_by not in SHOWN_METRICS:
            raise AnomalySpotterError(f"--sort-by {args.sort_by}: one of {', '.join(SHOWN_METRICS)}")
        rows = sorted(rows, key=lambda r: _sort_key(r.metrics.get(args.sort_by)), reverse=True)
    print(render(rows, metrics_file, width=shutil.get_terminal_size((WIDTH, 24)).columns))
    if not args.category and not any(_metric_text(v) != "-" for row in rows for v in row.metrics.values()):
        print(
            "no overall values: these runs cover some of the dataset's categories, so they have no overall "
            "mean; add --category NAME"
        )
    return 0


def _sort_key(value: Any) -> float:
    return value if isinstance(value, int | float) and math.isfinite(value) else -math.inf
