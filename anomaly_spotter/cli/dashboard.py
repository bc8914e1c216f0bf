"""`anomaly-spotter dashboard`: the threshold review dashboard (docs/dashboard.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

DASHBOARD_EPILOG = """examples:
  anomaly-spotter dashboard                 # http://127.0.0.1:8501
  anomaly-spotter dashboard --port 8600 --host 0.0.0.0

see docs/dashboard.md
"""


def cmd_dashboard(args: argparse.Namespace) -> int:
    from anomaly_spotter.review import dashboard

    return dashboard.serve(Path.cwd(), args.port, args.host)
