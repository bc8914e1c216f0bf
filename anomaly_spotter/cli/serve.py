"""`anomaly-spotter serve`: a registered or exported model over HTTP with a request cap (docs/serving.md)."""

from __future__ import annotations

import argparse

from anomaly_spotter import tracking

SERVE_EPILOG = """examples:
  anomaly-spotter serve --model models:/anomaly-spotter-fabric@champion --port 5001
  anomaly-spotter serve --model edge/bottle --max-request-mb 16 --workers 2
  anomaly-spotter serve --model models:/anomaly-spotter-fabric@champion --log logs/fabric

see docs/serving.md
"""


def cmd_serve(args: argparse.Namespace) -> int:
    from anomaly_spotter.deploy.serve import serve

    tracking.connect_for_model(args.model)
    serve(args.model, args.host, args.port, args.workers, args.max_request_mb, args.log)
    return 0
