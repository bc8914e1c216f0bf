"""`anomaly-spotter server`: a team's MLflow tracking server (docs/team.md)."""

from __future__ import annotations

import argparse
import socket

from anomaly_spotter import tracking

SERVER_EPILOG = """examples:
  anomaly-spotter server start --dir /srv/anomaly-spotter-mlflow --host 0.0.0.0 --port 5000
  anomaly-spotter server status --dir /srv/anomaly-spotter-mlflow
  anomaly-spotter server stop --dir /srv/anomaly-spotter-mlflow

see docs/team.md
"""


DEFAULT_SERVER_PORT = 5000


def cmd_server(args: argparse.Namespace) -> int:
    from anomaly_spotter.tracking import team

    if args.action == "start":
        state = team.start(
            args.dir,
            host=args.host,
            port=args.port,
            pg_port=args.pg_port,
            artifacts_destination=args.artifacts_destination,
            workers=args.workers,
            allowed_hosts=args.allowed_hosts,
        )
        print(
            f"mlflow server {state.tracking_uri} is up (listening on {state.host}:{state.port}, pid "
            f"{state.mlflow_pid})"
        )
        print(f"backend store {state.backend_store_uri}; artifacts {state.artifacts_destination}")
        print(f"UI: {tracking.ui_url(state.tracking_uri)}")
        print(f"logs {args.dir.absolute() / team.MLFLOW_LOG}, {args.dir.absolute() / team.PG_LOG}")
        if state.host in team.LOOPBACK_HOSTS:
            print(f"clients on this machine: export MLFLOW_TRACKING_URI={state.tracking_uri}")
        else:  # listening on other interfaces: teammates use this machine's name
            print(f"clients: export MLFLOW_TRACKING_URI=http://{socket.gethostname()}:{state.port}")
            print(f"Host names it accepts (--allowed-hosts): {state.allowed_hosts}")
    elif args.action == "stop":
        stopped_mlflow, stopped_pg = team.stop(args.dir)
        print(f"mlflow server: {'stopped' if stopped_mlflow else 'was not running'}")
        print(f"PostgreSQL: {'stopped' if stopped_pg else 'was not running'}")
    else:
        info = team.status(args.dir)
        for key, value in info.items():
            print(f"{key}: {value}")
        return 0 if info["mlflow_server"] == "up" and info["postgres"] == "up" else 3
    return 0
