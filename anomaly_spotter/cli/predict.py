"""`anomaly-spotter predict`: score image files and folders with a registered or exported model."""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from anomaly_spotter import tracking
from anomaly_spotter.core.errors import AnomalySpotterError
from anomaly_spotter.serving import scoring_log
from anomaly_spotter.serving.inputs import chunks, collect_images

CSV_COLUMNS = ("path", "score", "verdict", "threshold", "anomaly_percentage")


PREDICTIONS_CSV = "predictions.csv"


PREDICT_CHUNK = 16  # images scored at once, at most ...
PREDICT_MEGAPIXELS = 8.0  # ... and at most this many megapixels of the model's canvas (high resolution)
CSV_DIGITS = 7


PROGRESS_MIN_IMAGES = 2
LOG_FLUSH_ROWS = 1000  # `--log`: a part file per this many images (and one at the end)


PREDICT_EPILOG = """examples:
  anomaly-spotter predict part.png --model models:/anomaly-spotter-fabric@champion
  anomaly-spotter predict photos/ --model models:/anomaly-spotter-fabric/3 --out results/
  anomaly-spotter predict a.jpg b.jpg --model ./exported_model --csv scores.csv
  anomaly-spotter predict line/day1 --model models:/anomaly-spotter-fabric@champion --log logs/fabric

--log appends one row per scored image to a scoring log (Parquet), which `anomaly-spotter monitor` and
the dashboard's line review read (docs/line.md).

see docs/serving.md
"""


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

    from anomaly_spotter.serving.inference import ImageInputError, decode_image, read_file

    if args.no_progress:  # nor MLflow's bar while it downloads the model (from a tracking server)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tracking.connect_for_model(args.model)
    files, stems, errors = collect_images(args.paths)
    for message in errors:
        print(f"anomaly-spotter predict: error: {message}", file=sys.stderr)
    # an alias is pinned to the version holding it now: every image of this run is scored by one version
    uri, model_name, model_version = tracking.model_identity(args.model)
    model = load_scoring_model(uri)
    log = (
        PredictLog(
            args.log,
            scoring_log.LogContext(
                "predict",
                args.model,
                model_name,
                model_version,
                model.config.category,
                scoring_log.new_batch_id(),
            ),
        )
        if args.log is not None
        else None
    )
    csv_path = args.csv or (args.out / PREDICTIONS_CSV if args.out else Path("-"))
    used: set[str] = set()
    n_failed, n_scored, n_defective = len(errors), 0, 0
    handle: TextIO = sys.stdout if str(csv_path) == "-" else _open_csv(csv_path)
    written: list[Path] = []  # overlays of this run: removed with the CSV if a write fails
    try:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        show = not args.no_progress and len(files) >= PROGRESS_MIN_IMAGES
        bar = tqdm(total=len(files), desc="predict", unit="img", disable=not show, file=sys.stderr)
        for chunk in chunks(files, model.config.images_per_chunk(PREDICT_CHUNK, PREDICT_MEGAPIXELS)):
            ok: list[tuple[Path, np.ndarray]] = []
            hashes: list[str] = []
            for path in chunk:
                try:
                    data = read_file(path)
                    image = decode_image(data, str(path))
                    model.config.check_min_side(image.shape[1], image.shape[0], str(path))
                    ok.append((path, image))
                    hashes.append(scoring_log.sha256_hex(data))
                except ImageInputError as err:
                    n_failed += 1
                    tqdm.write(f"anomaly-spotter predict: error: {err}", file=sys.stderr)
            rows = model.score(
                [img for _, img in ok], return_map=args.out is not None, titles=[p.name for p, _ in ok]
            )
            n_scored += len(rows)
            n_defective += sum(row["verdict"] == "defective" for row in rows)
            for (path, _), row in zip(ok, rows, strict=True):
                target = csv_path
                try:
                    writer.writerow({"path": str(path), **{k: _rounded(row[k]) for k in CSV_COLUMNS[1:]}})
                    if args.out is not None:
                        target = args.out / _overlay_name(stems[path], used)
                        write_overlay(row["overlay"], target)
                        written.append(target)
                    handle.flush()
                except OSError as err:
                    for done in [*written, *([] if handle is sys.stdout else [csv_path])]:
                        done.unlink(missing_ok=True)
                    raise AnomalySpotterError(
                        f"{target}: cannot write ({err.strerror or err}); nothing of this run is kept: "
                        "choose a writable --out or --csv"
                    ) from err
            if log is not None:  # once the chunk's CSV rows and overlays are written
                log.add([p for p, _ in ok], hashes, rows)
            bar.update(len(chunk))
        bar.close()
        if log is not None:
            log.flush()
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
    summary = predict_summary(n_scored, n_defective, n_failed, None if to_stdout else csv_path, args.out)
    print(
        summary + (f"; logged to {args.log}" if log is not None else ""),
        file=sys.stderr if to_stdout else sys.stdout,  # never inside the CSV on stdout
    )
    return 1 if n_failed else 0


class PredictLog:
    """The rows one predict run appends to its scoring log, each once its CSV row (and overlay) is written:
    a part file per LOG_FLUSH_ROWS images and one at the end (a run that fails half-way leaves the parts it
    had written in the log)."""

    def __init__(self, log_dir: Path, context: scoring_log.LogContext) -> None:
        self.log_dir = log_dir
        self.context = context
        self.pending: list[Any] = []
        self.n_pending = 0

    def add(self, paths: list[Path], hashes: list[str], rows: list[dict[str, Any]]) -> None:
        images = [str(p.resolve()) for p in paths]
        self.pending.append(scoring_log.make_rows(self.context, images, hashes, rows))
        self.n_pending += len(rows)
        if self.n_pending >= LOG_FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        import pandas as pd

        if self.pending:
            scoring_log.append(self.log_dir, pd.concat(self.pending, ignore_index=True))
        self.pending, self.n_pending = [], 0


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("w", newline="")
    except OSError as err:
        raise AnomalySpotterError(
            f"{path}: cannot write the CSV ({err.strerror or err}); choose a writable --out or --csv"
        ) from err


def _rounded(value: Any) -> Any:
    """Floats to the 7 significant digits the float32 maps hold (`0.4375`, not `0.43750000000000006`)."""
    return float(f"{value:.{CSV_DIGITS}g}") if isinstance(value, float) else value


def load_scoring_model(uri: str) -> Any:
    """The model `predict` scores with: an exported folder (`anomaly-spotter export --out`) loads with
    ONNX Runtime alone (no MLflow, no torch: a fast cold start); anything else through MLflow."""
    from anomaly_spotter.serving import edge

    if edge.is_edge_model(uri):
        return edge.load_edge_model(Path(uri))
    from anomaly_spotter.serving.model import load_service_model

    return load_service_model(uri)
