"""The scoring log: one Parquet row per image a model scored on the line, for review and drift monitoring.

`anomaly-spotter predict --log LOG`, `score-spark --log LOG` and `anomaly-spotter serve --log LOG` append
to it; `anomaly-spotter monitor --log LOG` and the dashboard's line review read it.

A log is a folder holding a Parquet dataset: every append writes one new part file
`part-<UTC time>-<random id>.parquet`, first under a dot-name and then renamed, so a reader never sees half
a file and several writers (predict runs, serve workers, Spark jobs) can append at once. pandas reads it
with `pd.read_parquet(LOG)` (or `read_log`), Spark with `spark.read.parquet(LOG)`. A served request's
images are kept beside the rows, under `LOG/_images/<2 hex>/<sha256>.<format>` (the line's camera files
are not on the server's disk), so a reviewer can see and keep them; pyarrow and Spark skip a folder whose
name starts with `_`, so `pd.read_parquet(LOG)` and `spark.read.parquet(LOG)` read the rows only.

Columns (`LOG_SCHEMA`):
  scored_at           when it was scored (UTC, microseconds)
  source              predict | score-spark | serve
  batch               one call: a predict run, a Spark job, a served request (random hex id)
  image               what was scored: the file (absolute path), the Spark URI, or the log's own copy of
                      a served image (relative to the log folder, `_images/...`)
  image_sha256        sha256 of the image file's bytes (the same image logged twice has one hash)
  category            the model's category
  model_name          registered model (`anomaly-spotter-<category>`; empty for a model folder)
  model_version       its version (an alias is resolved to the version it held; empty for a folder)
  model_uri           the model as it was given
  score, threshold    the image score and the threshold applied (higher = more anomalous)
  verdict             defective | good (defective iff score > threshold)
  anomaly_percentage  share of pixels in the predicted region

This module needs pandas and pyarrow only: it is part of the code a registered model ships.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import queue
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from anomaly_spotter.core.errors import AnomalySpotterError

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
IMAGES_DIR = "_images"  # served images; the leading "_" keeps pyarrow and Spark from reading it as data
SOURCES = ("predict", "score-spark", "serve")
# (name, arrow type name): the one schema every writer uses, so pandas and Spark read one dataset
LOG_FIELDS = (
    ("scored_at", "timestamp"),
    ("source", "string"),
    ("batch", "string"),
    ("image", "string"),
    ("image_sha256", "string"),
    ("category", "string"),
    ("model_name", "string"),
    ("model_version", "string"),
    ("model_uri", "string"),
    ("score", "double"),
    ("threshold", "double"),
    ("verdict", "string"),
    ("anomaly_percentage", "double"),
)
LOG_COLUMNS = tuple(name for name, _ in LOG_FIELDS)
# the scoring results a row takes from `inference.score_images` (or score-spark's output)
RESULT_COLUMNS = ("score", "threshold", "verdict", "anomaly_percentage")
# the served model's writer: a part file per FLUSH_ROWS rows or FLUSH_SECONDS, whichever comes first
FLUSH_ROWS = 1000
FLUSH_SECONDS = 30.0
QUEUE_REQUESTS = 10_000  # requests waiting for the writer at most
# image formats recognised from their first bytes, for the file name of a served image kept in the log
MAGIC = (
    (b"\x89PNG", "png"),
    (b"\xff\xd8", "jpg"),
    (b"BM", "bmp"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
    (b"\x93NUMPY", "npy"),
)


class ScoringLogError(AnomalySpotterError):
    """A scoring log cannot be written or read."""


def arrow_schema() -> Any:
    import pyarrow as pa

    types = {"timestamp": pa.timestamp("us", tz="UTC"), "string": pa.string(), "double": pa.float64()}
    return pa.schema([(name, types[kind]) for name, kind in LOG_FIELDS])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_batch_id() -> str:
    return secrets.token_hex(8)


def now_utc() -> pd.Timestamp:
    return pd.Timestamp(datetime.now(UTC))


@dataclass(frozen=True)
class LogContext:
    """What every row of one scoring call shares: who scored, with which model."""

    source: str
    model_uri: str
    model_name: str
    model_version: str
    category: str
    batch: str = ""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")

    def with_new_batch(self) -> LogContext:
        return LogContext(
            self.source, self.model_uri, self.model_name, self.model_version, self.category, new_batch_id()
        )


def make_rows(
    context: LogContext,
    images: Sequence[str],
    hashes: Sequence[str],
    results: Iterable[Mapping[str, Any]],
    scored_at: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Log rows for scored images: references, content hashes and `results` (score, threshold, verdict,
    anomaly_percentage each), all with `context` and one time (default: now)."""
    results = list(results)
    if not len(images) == len(hashes) == len(results):
        raise ValueError(f"{len(images)} images, {len(hashes)} hashes, {len(results)} results")
    at = scored_at if scored_at is not None else now_utc()
    frame = pd.DataFrame(
        {
            "scored_at": [at] * len(images),
            "source": context.source,
            "batch": context.batch or new_batch_id(),
            "image": list(images),
            "image_sha256": list(hashes),
            "category": context.category,
            "model_name": context.model_name,
            "model_version": context.model_version,
            "model_uri": context.model_uri,
            **{k: [r[k] for r in results] for k in RESULT_COLUMNS},
        }
    )
    return frame[list(LOG_COLUMNS)]


def append(log_dir: Path, rows: pd.DataFrame) -> Path | None:
    """Append `rows` (LOG_COLUMNS) to the log folder as one new part file (created with the folder when
    needed); returns it, or None for no rows. ScoringLogError naming the folder when it cannot be written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if rows.empty:
        return None
    missing = [c for c in LOG_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"log rows lack columns {missing}")
    log_dir = Path(log_dir)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    name = f"{PART_PREFIX}{stamp}-{uuid.uuid4().hex[:12]}{PART_SUFFIX}"
    schema = arrow_schema()
    arrays = []
    for column, kind in LOG_FIELDS:  # column by column (pyarrow's from_pandas trips a pandas deprecation)
        if kind == "timestamp":
            utc = pd.to_datetime(rows[column], utc=True).dt.tz_convert(None).to_numpy("datetime64[us]")
            arrays.append(pa.array(utc, type=pa.timestamp("us")).cast(schema.field(column).type))
        else:
            arrays.append(pa.array(rows[column].tolist(), type=schema.field(column).type))
    table = pa.Table.from_arrays(arrays, schema=schema)
    tmp = log_dir / f".{name}.tmp"
    try:
        if log_dir.exists() and not log_dir.is_dir():
            raise ScoringLogError(f"{log_dir}: not a folder; a scoring log is a folder of Parquet files")
        log_dir.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp)
        os.replace(tmp, log_dir / name)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ScoringLogError(
            f"{log_dir}: cannot append to the scoring log ({err.strerror or err}); choose a writable --log"
        ) from err
    return log_dir / name


def part_files(log_dir: Path) -> list[Path]:
    """The log's part files, oldest first (their names start with the UTC time they were written)."""
    return sorted(Path(log_dir).glob(f"{PART_PREFIX}*{PART_SUFFIX}"))


def read_log(log_dir: Path) -> pd.DataFrame:
    """Every row of the scoring log, oldest first; ScoringLogError naming the folder when there is no log."""
    import pyarrow.parquet as pq

    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise ScoringLogError(
            f"{log_dir}: no scoring log there; write one with `anomaly-spotter predict ... --log {log_dir}`"
        )
    files = part_files(log_dir)
    if not files:
        raise ScoringLogError(f"{log_dir}: holds no {PART_PREFIX}*{PART_SUFFIX} files; not a scoring log yet")
    try:
        table = pq.ParquetDataset([str(f) for f in files], schema=arrow_schema()).read()
    except Exception as err:  # noqa: BLE001 - a damaged or foreign file: named with the folder
        raise ScoringLogError(f"{log_dir}: cannot read the scoring log ({err})") from err
    frame = table.to_pandas()
    return frame.sort_values("scored_at", kind="stable").reset_index(drop=True)  # part files in time order


def image_extension(data: bytes) -> str:
    """The file extension for encoded image bytes, from their first bytes ("bin" when unknown)."""
    for magic, ext in MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bin"


def keep_image(log_dir: Path, data: bytes, digest: str | None = None) -> str:
    """Store served image bytes in the log (`_images/<2 hex>/<sha256>.<ext>`, once per content); returns
    the path relative to the log folder, as the `image` column holds it."""
    digest = digest or sha256_hex(data)
    relative = Path(IMAGES_DIR) / digest[:2] / f"{digest}.{image_extension(data)}"
    target = Path(log_dir) / relative
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return relative.as_posix()


def image_file(log_dir: Path, image: str) -> Path:
    """The file a log row's `image` names: an absolute path as it is, a `file:` URI as its path, a served
    image relative to the log folder."""
    from anomaly_spotter.serving.inputs import local_path

    path = Path(local_path(image) or image)
    return path if path.is_absolute() else Path(log_dir) / path


class BackgroundWriter:
    """Appends the served model's rows (and keeps its images) from a thread of its own, so a request
    never waits on the disk: a part file every FLUSH_ROWS rows or FLUSH_SECONDS, and at exit. A write
    that fails is reported on stderr once per failure and the rows are dropped; scoring goes on."""

    def __init__(
        self,
        log_dir: Path,
        context: LogContext,
        flush_rows: int = FLUSH_ROWS,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.context = context
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        # bounded: a disk slower than the requests drops rows (reported) rather than filling the memory
        self._queue: queue.Queue[tuple[list[bytes], list[Mapping[str, Any]], pd.Timestamp] | None] = (
            queue.Queue(maxsize=QUEUE_REQUESTS)
        )
        import pyarrow.parquet  # noqa: F401 - loaded now: the last flush runs at exit, when imports may fail

        self._thread = threading.Thread(target=self._run, name="scoring-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def submit(self, images: Sequence[bytes], results: Sequence[Mapping[str, Any]]) -> None:
        """Queue one request's images (encoded bytes) and results; returns at once (a full queue: the
        request's rows are dropped and reported)."""
        try:
            self._queue.put_nowait((list(images), [dict(r) for r in results], now_utc()))
        except queue.Full:
            self._report(
                RuntimeError(f"{QUEUE_REQUESTS} requests wait for the disk; {len(results)} rows dropped")
            )

    def close(self) -> None:
        """Write what is queued and stop the thread (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        pending: list[pd.DataFrame] = []
        n_pending, last = 0, time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=self.flush_seconds)
            except queue.Empty:
                item = ...
            if item is not None and item is not ...:
                images, results, at = item
                try:
                    hashes = [sha256_hex(b) for b in images]
                    kept = [keep_image(self.log_dir, b, h) for b, h in zip(images, hashes, strict=True)]
                    context = self.context.with_new_batch()
                    pending.append(make_rows(context, kept, hashes, results, at))
                    n_pending += len(images)
                except Exception as err:  # noqa: BLE001 - logging must never stop the server
                    self._report(err)
            due = item is None or n_pending >= self.flush_rows
            due = due or (pending and time.monotonic() - last >= self.flush_seconds)
            if due and pending:
                try:
                    append(self.log_dir, pd.concat(pending, ignore_index=True))
                except Exception as err:  # noqa: BLE001
                    self._report(err)
                pending, n_pending, last = [], 0, time.monotonic()
            if item is None:
                return

    def _report(self, err: Exception) -> None:
        import sys

        print(f"anomaly-spotter serve: scoring log {self.log_dir}: not written: {err}", file=sys.stderr)
