"""`anomaly-spotter`: score new images with a registered model (here, or in batch on Spark), promote
registered versions, review thresholds in a dashboard, and run a team's shared MLflow tracking server.

    anomaly-spotter predict photos/ extra.png --model models:/anomaly-spotter-fabric@champion --out results/
    anomaly-spotter score-spark --model models:/anomaly-spotter-fabric@champion --input photos/ \\
        --output scores.parquet --master 'local[2]'
    anomaly-spotter promote --category fabric
    anomaly-spotter promote --category fabric --force --reason "hotfix for line 3"
    anomaly-spotter dashboard --port 8501
    anomaly-spotter server start --dir /srv/anomaly-spotter-mlflow --host 0.0.0.0

MLflow is reached at MLFLOW_TRACKING_URI (default sqlite:///mlflow.db in the working directory); a
SQLite store that does not exist is refused, never created.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from anomaly_spotter.errors import AnomalySpotterError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
CSV_COLUMNS = ("path", "score", "verdict", "threshold", "anomaly_percentage")
PREDICTIONS_CSV = "predictions.csv"
PREDICT_CHUNK = 16
PROGRESS_MIN_IMAGES = 2

PREDICT_EPILOG = """examples:
  anomaly-spotter predict part.png --model models:/anomaly-spotter-fabric@champion
  anomaly-spotter predict photos/ --model models:/anomaly-spotter-fabric/3 --out results/
  anomaly-spotter predict a.jpg b.jpg --model ./exported_model --csv scores.csv

--model takes models:/<name>@<alias>, models:/<name>/<version>, runs:/<run id>/service_model or a local
pyfunc model folder. The CSV (columns: path, score, verdict, threshold, anomaly_percentage) goes to
--csv, else OUT/predictions.csv with --out, else stdout. A file is "defective" iff score > threshold;
anomaly_percentage is the share of its pixels in the predicted region (above the category's calibrated
pixel threshold, unless the model was registered with process.region_threshold: otsu). Each overlay
(--out) shows the map on the category's fixed colour scale (transparent below the pixel threshold, warm
above it), the region outlined in cyan, the verdict, score and threshold, and a colour bar.
Exit status 1 when any image could not be read or is too small to score (registry.min_image_side; each
is named on stderr; the others are still scored).
A last line sums up: images scored, defective, unreadable, where the CSV and overlays went (on stderr
when the CSV goes to stdout). models:/ and runs:/ URIs are looked up in MLFLOW_TRACKING_URI (default
sqlite:///mlflow.db in the working directory), which must exist: predict never creates a store.
"""

PROMOTE_EPILOG = """examples:
  anomaly-spotter promote --category fabric
  anomaly-spotter promote --category fabric --force --reason "approved by QA, ticket 123"

Compares the newest version of anomaly-spotter-<category> with the version holding the `champion`
alias on registry.promote_metric (params.yaml; default image_auroc, ties broken by pixel_auroc).
`champion` moves only when the newest is at least as good; otherwise the newest gets `challenger`.
Serve or load the result as models:/anomaly-spotter-<category>@champion.
"""

SCORE_SPARK_EPILOG = """examples:
  anomaly-spotter score-spark --model models:/anomaly-spotter-fabric@champion \\
      --input data/builtin/fabric/test --output results/fabric.parquet --master 'local[2]'
  anomaly-spotter score-spark --model models:/anomaly-spotter-fabric/3 \\
      --input 'photos/2026-*/*.png' --output scores.parquet --overwrite
  anomaly-spotter score-spark --model models:/anomaly-spotter-fabric@champion --input todo.parquet \\
      --output hdfs:///scores/fabric.parquet --master yarn --conf spark.executor.instances=8

Scores every image with the registered service model through mlflow.pyfunc.spark_udf over Spark's
binaryFile source, with the same decoding, size check, resize and scoring as `predict` (same scores).
--input is a folder (searched recursively), a glob (Hadoop syntax, quote it) or a file; from these,
files with the suffixes predict reads are taken (any case; Spark skips names starting with "_" or
"."). Or a Parquet file/dataset (name ending .parquet) with a string column `path` listing image
files: each listed file is scored, whatever its suffix, and named as listed. Paths may be local or
any Hadoop URI the cluster reads (hdfs://, s3a://, ...).
--output is written as a Parquet dataset folder (one part file, rows sorted by path): path, score,
verdict, threshold, anomaly_percentage (as predict's CSV), and error: null when scored; for an image
that could not be read or is too small (registry.min_image_side), the reason naming the file, the
other columns null. Local files are named as predict names them (relative to the working directory
when --input is relative). The output is written beside itself under a temporary name and renamed
when complete; a failed job leaves no output. An existing output is refused unless --overwrite.
A bad image never fails the job: the unreadable are counted and the first ten named on stderr; the
exit status is 0 once the output is written (1 for an error that stops the job).
--master: local[N] (N cores of this machine), spark://host:7077, yarn, k8s://...; default: the
spark-submit master, else local[*]. Each executor needs this package's Python environment (pip
install -e '.[spark]'; on a local master the workers run this interpreter). Spark needs Java 17+
(apt-get install -y openjdk-17-jre-headless).
Defaults set for images (override with --conf): spark.sql.execution.arrow.maxRecordsPerBatch=64
(at most the model's registry.max_images_per_request), spark.sql.files.maxPartitionBytes=1g and
spark.sql.files.openCostInBytes=1k (few large partitions; on a local master, where the model loads in
every task, one partition per core), one torch thread per task (spark.executorEnv.OMP_NUM_THREADS =
spark.task.cpus). Ctrl-C or SIGTERM cancels the Spark jobs and removes the temporary output.
models:/ and runs:/ URIs are looked up in MLFLOW_TRACKING_URI (default sqlite:///mlflow.db in the
working directory); an alias is pinned to its version when the job starts.
"""

EXPORT_EPILOG = """examples:
  anomaly-spotter export --model models:/anomaly-spotter-bottle@champion --int8 --out edge/bottle
  anomaly-spotter export --model models:/anomaly-spotter-bottle/3 --out edge/bottle-fp32 \\
      --calibration ../shared/data/mvtec_ad_256/bottle/train/good --register

Writes DIR, an MLflow pyfunc model folder (the same service model `register` logs: decoding, resize,
image score, region, threshold) whose detector is an ONNX graph of the PatchCore network, memory banks
and map post-processing included, run by ONNX Runtime. --int8 quantises the backbone's convolutions
after its first two blocks (static, per-channel weights, MinMax calibration on the calibration
images) and runs the nearest-neighbour search as one integer matrix product per memory bank; the
first blocks and the map post-processing stay float32.
Prints how the export's scores compare with the torch model's on the calibration images.
Use it with: anomaly-spotter predict IMAGES --model DIR (ONNX Runtime only, no MLflow or torch
import), mlflow models serve -m DIR --env-manager local, anomaly-spotter score-spark --model DIR.
--register logs it as a new version of anomaly-spotter-<category>-edge (a sibling of the service
model: its champion and promotion are untouched). Calibration images default to
<data.root>/<category>/train/good from --params. Only patchcore models can be exported.
"""

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

SERVER_EPILOG = """examples:
  anomaly-spotter server start --dir /srv/anomaly-spotter-mlflow --host 0.0.0.0 --port 5000
  anomaly-spotter server status --dir /srv/anomaly-spotter-mlflow
  anomaly-spotter server stop --dir /srv/anomaly-spotter-mlflow

`start` sets up DIR the first time: a PostgreSQL cluster (initdb, from Debian's `postgresql` package:
apt-get install -y postgresql) listening on 127.0.0.1 only, with a database `mlflow` and a random
password kept in DIR/postgres.password, and the artifact store DIR/artifacts (or --artifacts-destination,
e.g. s3://bucket/mlflow with AWS credentials in the environment). Then it starts PostgreSQL and, in the
background, `mlflow server --backend-store-uri postgresql+psycopg://mlflow@127.0.0.1:<pg port>/mlflow
--serve-artifacts --artifacts-destination ...`, waits until it answers and prints the URI to export:

  export MLFLOW_TRACKING_URI=http://<this host>:5000

Every stage, promote, predict and `mlflow models serve models:/...` then use the server; open the same
URI in a browser for the UI. Started by root, PostgreSQL runs as the user `postgres` (it refuses root),
so DIR must be reachable by that user (e.g. under /srv or /tmp, not /root). Logs: DIR/mlflow-server.log,
DIR/postgres.log. `stop` stops both; `start` again restarts them on the same data (same PostgreSQL port
and artifact store; host, port, workers and allowed hosts as last given unless given again).
The server has no authentication: with --host 0.0.0.0 keep it on a trusted network. MLflow answers
403 "Invalid Host header" to clients that reach it by a name it was not told: beyond loopback, `start`
allows localhost, private IPs and this machine's own names; list others (a DNS alias) in --allowed-hosts
(which then replaces that default; patterns like 'mlflow.example.com:*' allowed).
Needs the PostgreSQL driver: pip install -e '.[team]'.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomaly-spotter",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{predict,score-spark,promote,export,server,dashboard}"
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
    p.add_argument("--model", required=True, metavar="MODEL_URI_OR_PATH", help="service model URI or folder")
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="write an overlay PNG per image (and the CSV) here"
    )
    p.add_argument("--csv", type=Path, metavar="FILE", help="CSV path ('-' for stdout)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_predict)

    k = sub.add_parser(
        "score-spark",
        help="score a folder, glob or Parquet list of images on Spark; write Parquet",
        description="Batch scoring on Spark with a registered service model: one Parquet row per image.",
        epilog=SCORE_SPARK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    k.add_argument("--model", required=True, metavar="MODEL_URI_OR_PATH", help="service model URI or folder")
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
    k.add_argument("--no-progress", action="store_true", help="no Spark progress bar")
    k.set_defaults(func=cmd_score_spark)

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
    e.add_argument("--model", required=True, metavar="MODEL_URI_OR_PATH", help="service model URI or folder")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except AnomalySpotterError as err:
        print(f"anomaly-spotter {args.command}: error: {err}", file=sys.stderr)
        return 1


# --------------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------------


def collect_images(paths: Sequence[Path]) -> tuple[list[Path], dict[Path, str], list[str]]:
    """Files as given, folders searched recursively for image suffixes.

    Returns (files, overlay stem per file: its path inside the folder given, joined by "_"; errors).
    """
    files: list[Path] = []
    stems: dict[Path, str] = {}
    errors: list[str] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            for p in found:
                stems[p] = "_".join(p.relative_to(path).with_suffix("").parts)
            files.extend(found)
        elif path.is_file():
            files.append(path)
            stems[path] = path.stem
        else:
            errors.append(f"{path}: no such file or folder")
    return files, stems, errors


def _chunks(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _connect_for(uri: str) -> None:
    """Registry and run URIs need the tracking store; a local model folder does not."""
    if uri.startswith(("models:", "runs:")):
        from anomaly_spotter import tracking

        tracking.use_existing_store(uri, ", or pass a local model folder as --model")


def _overlay_name(stem: str, used: set[str]) -> str:
    name = f"{stem}_overlay.png"
    i = 1
    while name in used:
        name, i = f"{stem}_{i}_overlay.png", i + 1
    used.add(name)
    return name


def write_overlay(overlay: np.ndarray, path: Path) -> None:
    """Save one annotated overlay (`overlay.render_overlay`'s RGB image) as PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay).save(path)


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from anomaly_spotter.inference import ImageInputError, read_image

    if args.no_progress:  # nor MLflow's bar while it downloads the model (from a tracking server)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    _connect_for(args.model)
    files, stems, errors = collect_images(args.paths)
    for message in errors:
        print(f"anomaly-spotter predict: error: {message}", file=sys.stderr)
    model = load_scoring_model(args.model)
    csv_path = args.csv or (args.out / PREDICTIONS_CSV if args.out else Path("-"))
    used: set[str] = set()
    n_failed, n_scored, n_defective = len(errors), 0, 0
    handle: TextIO = sys.stdout if str(csv_path) == "-" else _open_csv(csv_path)
    try:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        show = not args.no_progress and len(files) >= PROGRESS_MIN_IMAGES
        bar = tqdm(total=len(files), desc="predict", unit="img", disable=not show, file=sys.stderr)
        for chunk in _chunks(files, PREDICT_CHUNK):
            ok: list[tuple[Path, np.ndarray]] = []
            for path in chunk:
                try:
                    image = read_image(path)
                    model.config.check_min_side(image.shape[1], image.shape[0], str(path))
                    ok.append((path, image))
                except ImageInputError as err:
                    n_failed += 1
                    tqdm.write(f"anomaly-spotter predict: error: {err}", file=sys.stderr)
            rows = model.score(
                [img for _, img in ok], return_map=args.out is not None, titles=[p.name for p, _ in ok]
            )
            n_scored += len(rows)
            n_defective += sum(row["verdict"] == "defective" for row in rows)
            for (path, _), row in zip(ok, rows, strict=True):
                writer.writerow({"path": str(path), **{k: row[k] for k in CSV_COLUMNS if k != "path"}})
                if args.out is not None:
                    write_overlay(row["overlay"], args.out / _overlay_name(stems[path], used))
            handle.flush()
            bar.update(len(chunk))
        bar.close()
    finally:
        if handle is not sys.stdout:
            handle.close()
    if n_failed:
        print(
            f"anomaly-spotter predict: {n_failed} input(s) could not be read (named above); "
            f"{n_scored} scored",
            file=sys.stderr,
        )
    to_stdout = str(csv_path) == "-"
    print(
        predict_summary(n_scored, n_defective, n_failed, None if to_stdout else csv_path, args.out),
        file=sys.stderr if to_stdout else sys.stdout,  # never inside the CSV on stdout
    )
    return 1 if n_failed else 0


def predict_summary(
    n_scored: int, n_defective: int, n_unreadable: int, csv_path: Path | None, out: Path | None
) -> str:
    """The last line of `predict`: counts, and where the CSV (None: stdout) and the overlays went."""
    overlays = f"{out}/" if out is not None else "none (use --out DIR)"
    return (
        f"scored {n_scored} image{'' if n_scored == 1 else 's'}: {n_defective} defective, "
        f"{n_unreadable} unreadable; CSV: {csv_path if csv_path is not None else 'stdout'}; "
        f"overlays: {overlays}"
    )


def _open_csv(path: Path) -> TextIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("w", newline="")


# --------------------------------------------------------------------------------------------------
# score-spark
# --------------------------------------------------------------------------------------------------


def cmd_score_spark(args: argparse.Namespace) -> int:
    from anomaly_spotter import spark

    conf = spark.parse_conf(args.conf)
    if args.no_progress:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        conf.setdefault("spark.ui.showConsoleProgress", "false")
    _connect_for(args.model)
    try:
        result = spark.run(args.model, args.input, args.output, args.master, conf, args.overwrite)
    except KeyboardInterrupt:
        print(f"anomaly-spotter score-spark: interrupted; nothing written to {args.output}", file=sys.stderr)
        return 130
    for message in result.errors:
        print(f"anomaly-spotter score-spark: error: {message}", file=sys.stderr)
    if result.failed:
        more = result.failed - len(result.errors)
        print(
            f"anomaly-spotter score-spark: {result.failed} image(s) could not be read"
            f"{f' ({more} more than named above)' if more else ' (named above)'}; see the error column of "
            f"{result.output}",
            file=sys.stderr,
        )
    print(result.timing())
    print(result.summary())
    return 0


# --------------------------------------------------------------------------------------------------
# promote
# --------------------------------------------------------------------------------------------------


def _registry_defaults(params_path: Path) -> Any:
    from anomaly_spotter.config import RegistryParams, load_params

    if not params_path.is_file():
        return RegistryParams()
    return load_params(params_path).registry


def _fmt(value: str | None) -> str:
    if value is None:
        return "-"
    try:
        return f"{float(value):.4f}"
    except ValueError:
        return value


def metrics_table(
    new: tuple[str, dict[str, str]], champion: tuple[str, dict[str, str]] | None, metrics: Sequence[str]
) -> str:
    """A small text table: one row per metric, one column per version."""
    headers = ["metric", f"new v{new[0]}"] + ([f"champion v{champion[0]}"] if champion else [])
    rows = [[m, _fmt(new[1].get(m))] + ([_fmt(champion[1].get(m))] if champion else []) for m in metrics]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def cmd_promote(args: argparse.Namespace) -> int:
    from anomaly_spotter import tracking
    from anomaly_spotter.serving import decide_promotion

    if args.force and not args.reason:
        raise AnomalySpotterError('--force needs --reason "..." (it is recorded on the model version)')
    reg = _registry_defaults(args.params)
    metric, tiebreak = args.metric or reg.promote_metric, args.tiebreak or reg.tiebreak_metric
    name = tracking.registered_model_name(args.category)
    tracking.use_existing_store(f"model {name}")
    newest = tracking.latest_model_version(name)
    new_tags = dict(newest.tags)
    champ = tracking.model_version_by_alias(name, tracking.CHAMPION)
    champ_tags = dict(champ.tags) if champ is not None else None
    shown = list(dict.fromkeys([metric, tiebreak, "image_auroc", "pixel_auroc", "aupro", "f1"]))
    print(
        f"{name}: newest version {newest.version}; champion: "
        f"{'none' if champ is None else 'version ' + str(champ.version)}"
    )
    print(metrics_table((newest.version, new_tags), (champ.version, champ_tags) if champ else None, shown))
    if champ is not None and str(champ.version) == str(newest.version) and not args.force:
        print(f"version {newest.version} already holds champion; nothing to do")
        return 0
    decision = decide_promotion(new_tags, champ_tags if champ is not None else None, metric, tiebreak)
    who = args.by or _user()
    now = datetime.now(UTC).isoformat(timespec="seconds")
    if decision.promote or args.force:
        reason = (
            f"forced: {args.reason} (metrics: {decision.reason})"
            if args.force
            else (args.reason or decision.reason)
        )
        tracking.set_alias(name, tracking.CHAMPION, newest.version)
        # a challenger is always older than (or is) the new champion: superseded
        tracking.delete_alias(name, tracking.CHALLENGER)
        tracking.set_model_version_tags(
            name,
            newest.version,
            {
                "promoted_by": who,
                "promotion_reason": reason,
                "promoted_at": now,
                "promotion_forced": str(bool(args.force)).lower(),
                "previous_champion": "none" if champ is None else str(champ.version),
            },
        )
        print(f"promoted version {newest.version} to champion: {reason}")
        print(f"load or serve it as models:/{name}@{tracking.CHAMPION}")
    else:
        tracking.set_alias(name, tracking.CHALLENGER, newest.version)
        tracking.set_model_version_tags(
            name,
            newest.version,
            {
                "challenger_reason": decision.reason,
                "challenger_since": now,
                "challenger_set_by": who,
            },
        )
        print(
            f"version {newest.version} is now challenger, champion stays version {champ.version}: "
            f'{decision.reason}. Use --force --reason "..." to promote anyway.'
        )
    return 0


def load_scoring_model(uri: str) -> Any:
    """The model `predict` scores with: an exported folder (`anomaly-spotter export --out`) loads with
    ONNX Runtime alone (no MLflow, no torch: a fast cold start); anything else through MLflow."""
    from anomaly_spotter import edge

    if edge.is_edge_model(uri):
        return edge.load_edge_model(Path(uri))
    from anomaly_spotter.serving import load_service_model

    return load_service_model(uri)


# --------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from anomaly_spotter import export
    from anomaly_spotter.inference import read_image
    from anomaly_spotter.serving import load_service_model

    if args.calibration_images < 1:
        raise AnomalySpotterError(f"--calibration-images must be >= 1, got {args.calibration_images}")
    _connect_for(args.model)
    service = load_service_model(args.model)
    sources = args.calibration or [export.default_calibration(args.params, service.config.category)]
    files, _, errors = collect_images(sources)
    if errors:
        raise AnomalySpotterError("; ".join(errors) + "; pass the category's good images with --calibration")
    images = [read_image(path) for path in export.spread(files, args.calibration_images)]
    result = export.export_model(service, args.out, images, args.int8, args.model, args.overwrite)
    print(result.summary())
    if args.register:
        from anomaly_spotter import tracking

        tracking.use_existing_store(f"model {args.model}")
        name, version = export.register_export(args.out, args.model)
        print(f"registered {name} version {version}; serve it as models:/{name}/{version}")
    print(f"score with: anomaly-spotter predict IMAGES --model {args.out}")
    return 0


# --------------------------------------------------------------------------------------------------
# dashboard
# --------------------------------------------------------------------------------------------------


def cmd_dashboard(args: argparse.Namespace) -> int:
    from anomaly_spotter import dashboard

    return dashboard.serve(Path.cwd(), args.port, args.host)


# --------------------------------------------------------------------------------------------------
# server
# --------------------------------------------------------------------------------------------------

DEFAULT_SERVER_PORT = 5000


def cmd_server(args: argparse.Namespace) -> int:
    from anomaly_spotter import team

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


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
