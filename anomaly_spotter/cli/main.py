"""`anomaly-spotter`: score new images with a registered model (here, or in batch on Spark), promote
registered versions, review thresholds in a dashboard, and run a team's shared MLflow tracking server.

    anomaly-spotter predict photos/ extra.png --model models:/anomaly-spotter-fabric@champion --out results/
    anomaly-spotter score-spark --model models:/anomaly-spotter-fabric@champion --input photos/ \\
        --output scores.parquet --master 'local[2]'
    anomaly-spotter promote --category fabric
    anomaly-spotter promote --category fabric --force --reason "hotfix for line 3"
    anomaly-spotter dashboard --port 8501
    anomaly-spotter experiments --category fabric
    anomaly-spotter monitor --log logs/fabric --period day
    anomaly-spotter feedback --log logs/fabric --decision false_alarm line/day1/day1_0003.png
    anomaly-spotter simulate-line --category component --change lighting --out line/day1
    anomaly-spotter generate --category sheet --out data/highres
    anomaly-spotter server start --dir /srv/anomaly-spotter-mlflow --host 0.0.0.0

MLflow is reached at MLFLOW_TRACKING_URI (default sqlite:///mlflow.db in the working directory); a
SQLite store that does not exist is refused, never created."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from anomaly_spotter.cli import experiments as experiments_cli
from anomaly_spotter.cli.dashboard import DASHBOARD_EPILOG, cmd_dashboard
from anomaly_spotter.cli.experiments import EXPERIMENTS_EPILOG, cmd_experiments
from anomaly_spotter.cli.export import EXPORT_EPILOG, cmd_export
from anomaly_spotter.cli.generate import GENERATE_EPILOG, cmd_generate
from anomaly_spotter.cli.line import FEEDBACK_EPILOG, SIMULATE_EPILOG, cmd_feedback, cmd_simulate_line
from anomaly_spotter.cli.monitor import DEFAULT_LIMITS, MONITOR_EPILOG, cmd_monitor
from anomaly_spotter.cli.predict import PREDICT_EPILOG, cmd_predict
from anomaly_spotter.cli.promote import PROMOTE_EPILOG, cmd_promote
from anomaly_spotter.cli.serve import SERVE_EPILOG, cmd_serve
from anomaly_spotter.cli.server import DEFAULT_SERVER_PORT, SERVER_EPILOG, cmd_server
from anomaly_spotter.cli.spark import SCORE_SPARK_EPILOG, cmd_score_spark
from anomaly_spotter.core.errors import AnomalySpotterError
from anomaly_spotter.deploy.serve import DEFAULT_MAX_REQUEST_MB


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomaly-spotter",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="{predict,serve,score-spark,monitor,feedback,promote,export,server,dashboard,experiments,"
        "simulate-line,generate}",
    )

    p = sub.add_parser(
        "predict",
        help="score image files and folders with a registered model",
        epilog=PREDICT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="image files or folders (searched recursively)"
    )
    _add_model(p)
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="write an overlay PNG per image (and the CSV) here"
    )
    p.add_argument("--csv", type=Path, metavar="FILE", help="CSV path ('-' for stdout)")
    _add_log(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_predict)

    k = sub.add_parser(
        "score-spark",
        help="score a folder, glob or Parquet list of images on Spark; write Parquet",
        description="Batch scoring on Spark with a registered service model: one Parquet row per image.",
        epilog=SCORE_SPARK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model(k)
    k.add_argument(
        "--input",
        required=True,
        metavar="INPUT",
        help="folder, file, glob, or a .parquet with a `path` column (local path or Hadoop URI)",
    )
    k.add_argument("--output", required=True, metavar="OUTPUT", help="Parquet dataset folder to write")
    k.add_argument("--master", help="Spark master: local[2], spark://host:7077, yarn, ... (default local[*])")
    k.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Spark setting, repeatable (e.g. spark.driver.memory=4g)",
    )
    k.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    _add_log(k)
    k.add_argument("--no-progress", action="store_true", help="no Spark progress bar")
    k.set_defaults(func=cmd_score_spark)

    m = sub.add_parser(
        "monitor",
        help="drift of a scoring log from validation, per day or batch and model version (exit 3: alert)",
        description="Judge a scoring log against its model versions' validation, per day or batch.",
        epilog=MONITOR_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("--log", required=True, type=Path, metavar="LOG", help="the scoring log folder to read")
    m.add_argument(
        "--period",
        choices=("day", "batch"),
        default="day",
        help="a report row per UTC day (default) or per scoring batch (a predict run, Spark job, request)",
    )
    m.add_argument(
        "--max-flag-excess",
        type=float,
        default=DEFAULT_LIMITS.max_flag_excess,
        metavar="SHARE",
        help="alert when the flagged share exceeds the expected false-alarm rate by more than this "
        f"(default {DEFAULT_LIMITS.max_flag_excess:g}: 10 percentage points)",
    )
    m.add_argument(
        "--max-psi",
        type=float,
        default=DEFAULT_LIMITS.max_psi,
        metavar="PSI",
        help="alert when the good-looking scores' PSI against the validation goods exceeds this "
        f"(default {DEFAULT_LIMITS.max_psi:g}, the usual 'significant shift')",
    )
    m.add_argument(
        "--min-images",
        type=int,
        default=DEFAULT_LIMITS.min_images,
        metavar="N",
        help=f"judge only periods with at least N images (default {DEFAULT_LIMITS.min_images}); "
        "fewer are shown, not judged",
    )
    m.add_argument("--csv", type=Path, metavar="FILE", help="also write the report (every column) here")
    m.add_argument("--no-mlflow", action="store_true", help="log no MLflow run")
    m.set_defaults(func=cmd_monitor)

    f = sub.add_parser(
        "feedback",
        help="record reviewers' decisions on scored line images (false alarm, confirmed / missed defect)",
        description="Append decisions on images of a scoring log to feedback/<category>/ (DVC-tracked).",
        epilog=FEEDBACK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument("images", nargs="*", type=Path, metavar="IMAGE", help="image files decided on (as scored)")
    f.add_argument("--log", required=True, type=Path, metavar="LOG", help="the scoring log that scored them")
    f.add_argument(
        "--decision",
        required=True,
        choices=("false_alarm", "confirmed_defect", "missed_defect"),
        help="false_alarm: flagged but good; confirmed_defect: flagged and defective (needs --defect-type); "
        "missed_defect: passed but defective",
    )
    f.add_argument("--defect-type", metavar="TYPE", help="the defect's type, e.g. scratch")
    f.add_argument("--note", metavar="TEXT", help="why (recorded with the decision)")
    f.add_argument("--by", metavar="NAME", help="who decides (default: the current user)")
    f.add_argument(
        "--list", type=Path, metavar="FILE", help="more images: one path per line, or a CSV with 'path'"
    )
    f.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters file (feedback.root)")
    f.set_defaults(func=cmd_feedback)

    g = sub.add_parser(
        "simulate-line",
        help="write a batch of built-in parts from a changed production line (new lighting, new print)",
        description="Images of a built-in category as a changed line would make them, with the answer key.",
        epilog=SIMULATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument(
        "--category", required=True, help="a built-in category (fabric, washer, label, board, component)"
    )
    g.add_argument(
        "--change", default="lighting", help="none | lighting | print (label only); default lighting"
    )
    g.add_argument("--good", type=int, default=40, metavar="N", help="good parts (default 40)")
    g.add_argument("--defective", type=int, default=0, metavar="N", help="defective parts (default 0)")
    g.add_argument("--batch", metavar="NAME", help="batch name, the files' prefix (default: --out's name)")
    g.add_argument("--seed", type=int, help="default: params.yaml seed (the product's design comes from it)")
    g.add_argument("--image-size", type=int, metavar="PX", help="default: params.yaml builtin.image_size")
    g.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write (new or empty)")
    g.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters file")
    g.set_defaults(func=cmd_simulate_line)

    n = sub.add_parser(
        "generate",
        help="write a built-in category (e.g. sheet, 2048 x 1536 with defects of 5-20 px) into a folder",
        description="One built-in category in the MVTec AD layout, deterministic from the seed.",
        epilog=GENERATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    n.add_argument("--category", required=True, help="sheet, or fabric, washer, label, board, component")
    n.add_argument("--out", required=True, type=Path, metavar="DIR", help="writes DIR/<category>/ (replaced)")
    n.add_argument("--width", type=int, metavar="PX", help="sheet only: image width (default 2048)")
    n.add_argument("--height", type=int, metavar="PX", help="sheet only: image height (default 1536)")
    n.add_argument(
        "--image-size", type=int, metavar="PX", help="square categories: default builtin.image_size"
    )
    n.add_argument("--train", type=int, metavar="N", help="good training images (default builtin.n_train)")
    n.add_argument(
        "--test-good", type=int, metavar="N", help="good test images (default builtin.n_test_good)"
    )
    n.add_argument(
        "--per-defect", type=int, metavar="N", help="test images per defect type (builtin.n_test_per_defect)"
    )
    n.add_argument("--seed", type=int, help="default: params.yaml seed")
    n.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters file")
    n.set_defaults(func=cmd_generate)

    q = sub.add_parser(
        "promote",
        help="move the champion alias to the newest version if it is as good",
        epilog=PROMOTE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument(
        "--category", required=True, help="category whose model anomaly-spotter-<category> to promote"
    )
    q.add_argument("--force", action="store_true", help="promote regardless of metrics (needs --reason)")
    q.add_argument("--reason", help="why (recorded as the promotion_reason tag)")
    q.add_argument("--by", default=None, help="who asks (default: the current user)")
    q.add_argument("--metric", help="metric to compare (default: registry.promote_metric)")
    q.add_argument("--tiebreak", help="tie-break metric (default: registry.tiebreak_metric)")
    q.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="parameters file (registry section)"
    )
    q.set_defaults(func=cmd_promote)

    s = sub.add_parser(
        "server",
        help="start / stop / check a team's MLflow tracking server (PostgreSQL + served artifacts)",
        description="A shared MLflow tracking server on this machine: PostgreSQL backend store, "
        "served artifact store.",
        epilog=SERVER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("action", choices=("start", "stop", "status"), help="what to do")
    s.add_argument(
        "--dir",
        required=True,
        type=Path,
        metavar="DIR",
        help="the server's folder: PostgreSQL data, artifacts, logs, server.json (made by the first start)",
    )
    s.add_argument("--host", help="interface mlflow server listens on (default 127.0.0.1; 0.0.0.0: all)")
    s.add_argument("--port", type=int, help=f"mlflow server port (default {DEFAULT_SERVER_PORT})")
    s.add_argument(
        "--pg-port", type=int, help="PostgreSQL port on 127.0.0.1 (first start only; default: a free one)"
    )
    s.add_argument(
        "--artifacts-destination",
        metavar="URI",
        help="where artifacts are stored (first start only): a folder (default DIR/artifacts) or "
        "s3://bucket/path, gs://..., wasbs://...",
    )
    s.add_argument("--workers", type=int, help="mlflow server worker processes (default: MLflow's, 4)")
    s.add_argument(
        "--allowed-hosts",
        metavar="HOSTS",
        help="comma-separated Host names clients may use (mlflow server --allowed-hosts; default: "
        "localhost and private IPs)",
    )
    s.set_defaults(func=cmd_server)

    e = sub.add_parser(
        "export",
        help="export a registered PatchCore model to ONNX (optionally int8) for edge devices",
        description="A registered service model -> an MLflow pyfunc folder that scores with ONNX Runtime.",
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model(e)
    e.add_argument("--format", default="onnx", choices=("onnx",), help="export format (default onnx)")
    e.add_argument("--int8", action="store_true", help="quantise (static, calibrated on good images)")
    e.add_argument("--out", required=True, type=Path, metavar="DIR", help="model folder to write")
    e.add_argument(
        "--calibration",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="good images or folders of the category (default: <data.root>/<category>/train/good)",
    )
    e.add_argument(
        "--calibration-images", type=int, default=32, metavar="N", help="use N of them, evenly spread (32)"
    )
    e.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="for data.root (default calibration)"
    )
    e.add_argument("--register", action="store_true", help="register it as anomaly-spotter-<category>-edge")
    e.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    e.set_defaults(func=cmd_export)

    d = sub.add_parser(
        "dashboard",
        help="review thresholds in the browser: gallery, threshold slider, curves, version comparison",
        description="The review dashboard (Streamlit) on the pipeline's outputs in this folder.",
        epilog=DASHBOARD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    d.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; 0.0.0.0: all)"
    )
    d.set_defaults(func=cmd_dashboard)

    x = sub.add_parser(
        "experiments",
        help="DVC's experiment table in 120 columns: changed parameters and headline metrics",
        description=experiments_cli.__doc__,
        epilog=EXPERIMENTS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    x.add_argument("--category", metavar="NAME", help="that category's metrics, not the overall means")
    x.add_argument("--sort-by", metavar="METRIC", help="sort the rows by this metric, best first")
    x.set_defaults(func=cmd_experiments, passes_unknown_args=True)  # the rest goes to dvc exp show

    v = sub.add_parser(
        "serve",
        help="serve a registered or exported model over HTTP, refusing oversized requests",
        description="mlflow models serve's scoring app for one model, with a cap on the request body (413).",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model(v)
    v.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1; 0.0.0.0: all)")
    v.add_argument("--port", type=int, default=5001, help="port (default 5001)")
    v.add_argument("--workers", type=int, default=1, help="worker processes, each holding the model (1)")
    v.add_argument(
        "--max-request-mb",
        type=float,
        default=DEFAULT_MAX_REQUEST_MB,
        metavar="MB",
        help=f"larger request bodies are answered 413 unread (default {DEFAULT_MAX_REQUEST_MB:g})",
    )
    _add_log(v, served=True)
    v.set_defaults(func=cmd_serve)
    return parser


def _add_log(parser: argparse.ArgumentParser, served: bool = False) -> None:
    """--log: the scoring log (a Parquet folder) a scoring command appends its rows to (docs/line.md)."""
    kept = "; request images are kept in LOG/images/ for review" if served else ""
    parser.add_argument(
        "--log",
        type=Path,
        metavar="LOG",
        help=f"append one row per scored image to this scoring log (a Parquet folder: image, sha256, "
        f"model version, score, threshold, verdict, time){kept}; read by `monitor` and the dashboard",
    )


def _add_model(parser: argparse.ArgumentParser) -> None:
    """The --model of every command that scores: a registry or run URI, or a model folder."""
    parser.add_argument(
        "--model", required=True, metavar="MODEL_URI_OR_PATH", help="service model URI or folder"
    )


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "passes_unknown_args", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.dvc_args = unknown
    try:
        return int(args.func(args))
    except AnomalySpotterError as err:
        print(f"anomaly-spotter {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
