"""`anomaly-spotter dashboard`: the threshold review dashboard (docs/dashboard.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

DASHBOARD_EPILOG = """examples:
  anomaly-spotter dashboard                 # http://127.0.0.1:8501
  anomaly-spotter dashboard --port 8600 --host 0.0.0.0

Run it in the repository folder after `dvc repro`: it reads the pipeline's outputs (outputs/<c>/,
data/prepared/<c>/, metrics/thresholds.json, params.yaml) and rescores nothing. Pages: a gallery of
validation and test images sorted by score (overlay, predicted and ground-truth outlines, verdict),
a threshold slider with precision, recall, F1, defects detected per type and false-alarm rates, ROC and
PR curves with the operating point; a comparison of two registered versions (MLFLOW_TRACKING_URI).
"Propose this threshold" writes proposals/<category>.json and tags the registered version
(threshold_proposal); the deployed threshold never changes. Needs pip install -e '.[dashboard]'.
"""


def cmd_dashboard(args: argparse.Namespace) -> int:
    from anomaly_spotter.review import dashboard

    return dashboard.serve(Path.cwd(), args.port, args.host)
