"""Batch scoring on Spark: `anomaly-spotter score-spark` scores every image of a folder, a glob or a
Parquet list of paths with a registered service model, through `mlflow.pyfunc.spark_udf` over Spark's
`binaryFile` source, and writes one Parquet row per image.

    anomaly-spotter score-spark --model models:/anomaly-spotter-fabric@champion \\
        --input data/builtin/fabric/test --output results/fabric.parquet --master 'local[2]'

The job, per image (no image ever passes through the driver):

1. `binaryFile` reads the bytes (folders recursively; only the suffixes `predict` reads, any case);
2. a pandas UDF prepares it exactly as `predict` does, with the same functions: `inference.decode_image`
   (8/16-bit, palette, RGB(A) -> RGB), `InferenceConfig.check_min_side` (registry.min_image_side), and
   `inference.preprocess` (the resize every scoring path uses) to the model's input size, sent on as a
   lossless `.npy` array. An image that cannot be read gets its error message (naming the file, the same
   text `predict` prints) and a mid-grey stand-in image, so that every Arrow batch the model receives is
   valid: the served model refuses a whole request for one bad image;
3. `mlflow.pyfunc.spark_udf` runs the registered pyfunc (`serving.ServiceModel.predict`): decode the
   `.npy`, resize (a no-op at the input size), score, verdict, region. The stand-ins' results are
   dropped: their rows get a null score, verdict, threshold and anomaly_percentage, and the `error`.

Output: a Parquet dataset folder (Spark's layout, one part file, rows sorted by path) with columns path,
score, verdict, threshold, anomaly_percentage (as `predict`'s CSV) and error (null when scored). It is
written to `<output>.tmp-<id>` beside the output and renamed when complete; a failed or cancelled job
(SIGINT, SIGTERM: the Spark jobs are cancelled first) removes it and leaves no output. A bad image never
fails the job: the count of unreadable images is printed.

Settings the measurements on this project asked for (`spark_conf`; `--conf` overrides any): Arrow
batches of at most 64 images (`spark.sql.execution.arrow.maxRecordsPerBatch`: the default 10,000
exhausts memory with images, and the served model takes at most `registry.max_images_per_request` per
call); large file partitions (`spark.sql.files.maxPartitionBytes` 1 GiB, `spark.sql.files.openCostInBytes`
1 KiB instead of Spark's 4 MB per file, which packs small images into many small tasks); on a local
master, where spark_udf loads the model in every task, the prepared images are then spread evenly over
one partition per core (on a cluster spark_udf keeps the model loaded in each Python worker); one torch
thread per Spark task (`OMP_NUM_THREADS` = `spark.task.cpus` in the executors); the Python workers fork
from a daemon that has imported torch, MLflow and this package once (`preloaded_daemon`); on a local
master, Python workers run this interpreter (`PYSPARK_PYTHON`) and Spark binds to 127.0.0.1
(`SPARK_LOCAL_IP`).

pyspark is optional (`pip install -e '.[spark]'`) and imported only inside the functions that need it,
so this module imports without it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly_spotter.core.errors import AnomalySpotterError
from anomaly_spotter.data.images import npy_bytes
from anomaly_spotter.serving.inputs import local_path

OUTPUT_COLUMNS = ("path", "image_sha256", "score", "verdict", "threshold", "anomaly_percentage", "error")
OUTPUT_SCHEMA = (
    "path string, image_sha256 string, score double, verdict string, threshold double, "
    "anomaly_percentage double, error string"
)
# the served model's output (serving.signature), as the Spark struct spark_udf returns
MODEL_RESULT_TYPE = "score double, verdict string, threshold double, anomaly_percentage double"
PREPARED_TYPE = "image binary, error string, shown string, sha256 string"
MAX_RECORDS_PER_BATCH = 64
# The Python worker daemon: this module's __main__ imports torch, MLflow and this package once, then
# PySpark's daemon forks the workers from it (`preloaded_daemon`)
DAEMON_CONF = "spark.python.daemon.module"
DAEMON_MODULE = "anomaly_spotter.deploy.spark"
BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"
GLOB_CHARS = "*?[{"
PARQUET_SUFFIX = ".parquet"
PATH_COLUMN = "path"
ERRORS_SHOWN = 10
JAVA_HINT = "apt-get install -y openjdk-17-jre-headless (Debian/Ubuntu), or set JAVA_HOME"
PYSPARK_HINT = "pip install -e '.[spark]'"
PROGRESS_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
# PySpark 4 warns on every pandas UDF that it "does not yet fully support pandas >= 3.0.0"; the pandas
# UDFs here (bytes and strings in, a DataFrame of bytes and strings out) are tested row by row against
# `predict` under pandas 3, so the warning is silenced for them
PANDAS3_WARNING = "PySpark does not yet fully support pandas >= 3"


# --------------------------------------------------------------------------------------------------
# pure helpers (no pyspark)
# --------------------------------------------------------------------------------------------------


def is_local_master(master: str | None) -> bool:
    """True for `local`, `local[n]`, `local[*]`, `local-cluster[...]`, and for no master outside
    spark-submit (Spark's default is then local[*]); spark-submit passes its own master to the gateway."""
    if master is None:
        return "PYSPARK_GATEWAY_PORT" not in os.environ
    return master.startswith("local")


def batch_size(config: Any) -> int:
    """Images per Arrow batch: at most 64, at most the model's `max_images_per_request`, and few enough
    that a batch of canvas-size images stays under its `max_request_megapixels` (the served model checks
    every call against its request limits)."""
    return config.images_per_chunk(
        min(MAX_RECORDS_PER_BATCH, int(config.max_images_per_request)), config.max_request_megapixels
    )


def parse_conf(pairs: Iterable[str]) -> dict[str, str]:
    """`KEY=VALUE` strings (the CLI's repeated --conf) as a dict; AnomalySpotterError on a malformed one."""
    conf: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise AnomalySpotterError(f"--conf {pair!r}: expected KEY=VALUE, e.g. spark.driver.memory=4g")
        conf[key.strip()] = value
    return conf


def spark_conf(batch: int, user: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Spark settings score-spark starts with (module docstring), `user` settings on top."""
    user = dict(user or {})
    task_cpus = user.get("spark.task.cpus", "1")
    conf = {
        BATCH_CONF: str(batch),
        "spark.sql.files.maxPartitionBytes": str(1 << 30),
        "spark.sql.files.openCostInBytes": str(1 << 10),
        "spark.executorEnv.OMP_NUM_THREADS": task_cpus,
        "spark.executorEnv.MKL_NUM_THREADS": task_cpus,
        DAEMON_CONF: DAEMON_MODULE,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "true",
    }
    conf.update(user)
    if int(conf[BATCH_CONF]) > batch:
        raise AnomalySpotterError(
            f"--conf {BATCH_CONF}={conf[BATCH_CONF]}: the model takes at most {batch} images per call "
            "(its registry.max_images_per_request / max_request_megapixels); use a smaller value"
        )
    return conf


def local_environment(master: str | None, env: Mapping[str, str]) -> dict[str, str]:
    """Environment settings for a local master: Python workers run this interpreter (a `python3` on the
    PATH may lack torch), Spark binds to loopback. Nothing for a cluster master."""
    if not is_local_master(master):
        return {}
    settings = {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    if "SPARK_LOCAL_IP" not in env:
        settings["SPARK_LOCAL_IP"] = "127.0.0.1"
    return settings


def input_kind(text: str) -> str:
    """`parquet` (a Parquet file or dataset with a `path` column), `glob` (Hadoop glob syntax) or
    `path` (a folder, searched recursively, or one file)."""
    if text.rstrip("/").lower().endswith(PARQUET_SUFFIX):
        return "parquet"
    if any(c in text for c in GLOB_CHARS):
        return "glob"
    return "path"


def has_scheme(text: str) -> bool:
    """`hdfs://...`, `s3a://...`, `file:/...`; not a local path (nor a Windows drive)."""
    head, sep, _ = text.partition(":")
    return bool(sep) and len(head) > 1 and "/" not in head


def suffix_pattern(suffixes: Sequence[str]) -> str:
    """A Java regex matching paths that end with one of `suffixes` (applied to the lower-cased path)."""
    return r"\.(" + "|".join(s.lstrip(".").lower() for s in suffixes) + ")$"


def display_path(uri: str, cwd: str | None) -> str:
    """How a file Spark read is named in the output and in error messages: a local file by its path,
    relative to `cwd` when `cwd` is given (the input was a relative path, as `predict` names files) and the
    file lies under it; any other file by its URI."""
    path = local_path(uri)
    if path is None:
        return uri
    if cwd is not None:
        prefix = cwd.rstrip("/") + "/"
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path


def stand_in(config: Any) -> bytes:
    """The mid-grey input-size image scored in place of an unreadable one (its result is dropped)."""
    return npy_bytes(np.full((config.image_size, config.image_size, 3), 128, np.uint8))


def prepare_image(content: Any, name: str, config: Any) -> tuple[bytes | None, str | None]:
    """`(model input, None)` for an image `predict` would score, `(None, error message)` otherwise.

    The model input is the image decoded, checked and brought to the working resolution exactly as
    `predict` does (`inference.decode_image`, `InferenceConfig.check_min_side`, `inference.preprocess`, cut
    back to the image's box, so the model fits it into the same place of its canvas), as `.npy` bytes.
    Error messages name the file (`name`) as `predict`'s do. Any other exception becomes the file's error
    too: in a batch of millions, one odd file must not end the job.
    """
    from anomaly_spotter.data.geometry import crop
    from anomaly_spotter.serving.inference import decode_image, preprocess

    try:
        if content is None:
            return None, f"{name}: cannot read file (no content)"
        image = decode_image(bytes(content), name)
        config.check_min_side(image.shape[1], image.shape[0], name)
        canvases, boxes = preprocess([image], config.scoring_geometry())
        return npy_bytes(np.ascontiguousarray(crop(canvases[0], boxes[0]))), None
    except AnomalySpotterError as err:
        return None, str(err)
    except Exception as err:  # noqa: BLE001 - reported in the file's row, never ends the job
        return None, f"{name}: cannot score image ({type(err).__name__}: {err})"


def prepare_batch(
    uris: Sequence[str], contents: Sequence[Any], config: Any, cwd: str | None
) -> tuple[list[bytes], list[str | None], list[str], list[str | None]]:
    """`prepare_image` over a batch: (model inputs, stand-ins for the unreadable; errors; shown paths;
    sha256 of each file's bytes, None for the unreadable)."""
    from anomaly_spotter.serving.scoring_log import sha256_hex

    grey = stand_in(config)
    images: list[bytes] = []
    errors: list[str | None] = []
    shown: list[str] = []
    hashes: list[str | None] = []
    for uri, content in zip(uris, contents, strict=True):
        name = display_path(uri, cwd)
        image, error = prepare_image(content, name, config)
        images.append(grey if image is None else image)
        errors.append(error)
        shown.append(name)
        hashes.append(None if image is None else sha256_hex(bytes(content)))
    return images, errors, shown, hashes


# --------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedModel:
    uri: str  # as given
    pinned: str  # the URI actually loaded: an alias resolved to its version
    local_dir: Path  # downloaded pyfunc folder
    config: Any  # its InferenceConfig
    name: str = ""  # registered model name and version ("" for a run URI or a folder)
    version: str = ""


def service_config(local_dir: Path, uri: str) -> Any:
    """The InferenceConfig stored with a downloaded service model (MLmodel -> python_function artifacts)."""
    import yaml

    from anomaly_spotter.serving.inference import InferenceConfig
    from anomaly_spotter.serving.model import CONFIG_ARTIFACT

    try:
        mlmodel = yaml.safe_load((local_dir / "MLmodel").read_text())
        relative = mlmodel["flavors"]["python_function"]["artifacts"][CONFIG_ARTIFACT]["path"]
        raw = json.loads((local_dir / relative).read_text())
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise AnomalySpotterError(f"{uri}: not an Anomaly Spotter service model ({err})") from err
    return InferenceConfig.from_dict(raw)


def resolve_model(uri: str, dst: Path) -> ResolvedModel:
    """Download the service model once (the driver reads its config; spark_udf ships this copy)."""
    import mlflow

    from anomaly_spotter import tracking

    pinned, name, version = tracking.model_identity(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=str(dst)))
    except Exception as err:  # noqa: BLE001 - any download failure is reported with the URI
        raise AnomalySpotterError(f"cannot load model {uri!r}: {err}") from err
    return ResolvedModel(uri, pinned, local, service_config(local, uri), name, version)


class _QuietLocalEnvWarning(logging.Filter):
    """spark_udf warns that env_manager="local" does not recreate the training environment: here that is
    the point (executors run this package's environment), so that one warning is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return 'env_manager="local"' not in record.getMessage()


def model_udf(spark: Any, model: ResolvedModel) -> Any:
    """`mlflow.pyfunc.spark_udf` of the downloaded model: struct(image) -> MODEL_RESULT_TYPE."""
    import mlflow

    quiet = _QuietLocalEnvWarning()
    logger = logging.getLogger("mlflow.pyfunc")
    logger.addFilter(quiet)
    backend = logging.getLogger("mlflow.models.flavor_backend_registry")  # "Selected backend ..." (INFO)
    backend_level = backend.level
    backend.setLevel(logging.WARNING)
    bar = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = "false"  # spark_udf copies the downloaded folder: no "Downloading" bar
    try:
        return mlflow.pyfunc.spark_udf(
            spark, str(model.local_dir), result_type=MODEL_RESULT_TYPE, env_manager="local"
        )
    finally:
        logger.removeFilter(quiet)
        backend.setLevel(backend_level)
        if bar is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = bar


# --------------------------------------------------------------------------------------------------
# the Spark job
# --------------------------------------------------------------------------------------------------


@dataclass
class ScoreResult:
    output: str
    model: str
    images: int = 0
    defective: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)  # the first ERRORS_SHOWN messages
    session_s: float = 0.0
    job_s: float = 0.0

    @property
    def scored(self) -> int:
        return self.images - self.failed

    def summary(self) -> str:
        """The last line, in `predict`'s words."""
        return (
            f"scored {self.scored} image{'' if self.scored == 1 else 's'}: {self.defective} defective, "
            f"{self.failed} unreadable; Parquet: {self.output}"
        )

    def timing(self) -> str:
        return f"timing: Spark session start {self.session_s:.1f} s, scoring and writing {self.job_s:.1f} s"


def _require_spark() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError as err:
        raise AnomalySpotterError(f"score-spark needs pyspark: {PYSPARK_HINT}") from err
    if not os.environ.get("JAVA_HOME") and shutil.which("java") is None:
        raise AnomalySpotterError(f"score-spark needs Java 17 or newer (Spark runs on it): {JAVA_HINT}")


def start_session(master: str | None, conf: Mapping[str, str], app_name: str = "anomaly-spotter") -> Any:
    """A SparkSession with `conf`; `master` None keeps spark-submit's (or Spark's default local[*])."""
    from pyspark.sql import SparkSession

    os.environ.update(local_environment(master, os.environ))
    builder = SparkSession.builder.appName(app_name)
    if master is not None:
        builder = builder.master(master)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


class _HadoopFS:
    """The Hadoop FileSystem calls the output needs (exists, rename, delete), for local paths, hdfs://,
    s3a://, ... alike, through the session's JVM."""

    def __init__(self, spark: Any) -> None:
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _path(self, path: str) -> tuple[Any, Any]:
        jpath = self._jvm.org.apache.hadoop.fs.Path(path)
        return jpath.getFileSystem(self._conf), jpath

    def exists(self, path: str) -> bool:
        fs, jpath = self._path(path)
        return bool(fs.exists(jpath))

    def is_file(self, path: str) -> bool:
        fs, jpath = self._path(path)
        return bool(fs.isFile(jpath))

    def length(self, path: str) -> int:
        fs, jpath = self._path(path)
        return int(fs.getFileStatus(jpath).getLen())

    def qualified(self, path: str) -> str:
        fs, jpath = self._path(path)
        return str(fs.makeQualified(jpath).toString())

    def delete(self, path: str) -> None:
        fs, jpath = self._path(path)
        if fs.exists(jpath):
            fs.delete(jpath, True)

    def rename(self, src: str, dst: str) -> None:
        fs, jsrc = self._path(src)
        if not fs.rename(jsrc, self._jvm.org.apache.hadoop.fs.Path(dst)):
            raise AnomalySpotterError(f"cannot rename {src} to {dst}")


def _path_not_found(err: Exception) -> bool:
    return type(err).__name__ == "AnalysisException" and "PATH_NOT_FOUND" in str(err)


def read_images(
    spark: Any, text: str
) -> tuple[Any, Any | None, list[tuple[str, str]], list[str], str | None]:
    """(binaryFile DataFrame of the images, Parquet list input's qualified -> listed path DataFrame or
    None, its missing files as (listed path, error), its zero-byte image files as shown, the cwd that shown
    paths are relative to or None)."""
    from pyspark.sql import functions as F

    from anomaly_spotter.serving.inputs import IMAGE_SUFFIXES

    kind = input_kind(text)
    relative = not has_scheme(text) and not os.path.isabs(text)
    cwd = os.getcwd() if relative else None
    reader = spark.read.format("binaryFile")
    if kind != "parquet":
        if kind == "path" and not has_scheme(text) and not os.path.exists(text):
            raise AnomalySpotterError(f"{text}: no such file or folder")
        try:
            files = reader.option("recursiveFileLookup", "true").load(text)
        except Exception as err:
            if _path_not_found(err):
                raise AnomalySpotterError(f"{text}: no such file or folder (nothing matches)") from err
            raise
        files = files.where(F.lower(F.col("path")).rlike(suffix_pattern(IMAGE_SUFFIXES)))
        return files, None, [], [display_path(uri, cwd) for uri in unread_files(files)], cwd
    listed = spark.read.parquet(text)
    if PATH_COLUMN not in listed.columns:
        raise AnomalySpotterError(
            f"{text}: a Parquet input needs a string column {PATH_COLUMN!r} of image paths; it has "
            f"{listed.columns}"
        )
    paths = [
        r[0] for r in listed.select(PATH_COLUMN).where(F.col(PATH_COLUMN).isNotNull()).distinct().collect()
    ]
    if not paths:
        raise AnomalySpotterError(f"{text}: the {PATH_COLUMN!r} column lists no paths")
    fs = _HadoopFS(spark)
    found: list[tuple[str, str]] = []
    missing: list[tuple[str, str]] = []
    empty: list[str] = []
    for path in paths:
        if has_scheme(path) and not path.startswith("file:"):
            ok = fs.is_file(path)
            qualified = fs.qualified(path) if ok else path
            is_empty = ok and fs.length(path) == 0
        else:
            local = local_path(path) or path
            ok = os.path.isfile(local)
            qualified = "file:" + os.path.abspath(local)
            is_empty = ok and os.path.getsize(local) == 0
        if is_empty:
            empty.append(path)  # Spark's file scan skips zero-byte files: they get their row here
        elif ok:
            found.append((qualified, path))
        else:
            missing.append((path, f"{path}: file not found"))
    files = reader.load([q for q, _ in found]) if found else None
    mapping = spark.createDataFrame(found, "qualified string, listed string") if found else None
    return files, mapping, missing, empty, None


def unread_files(files: Any) -> list[str]:
    """Image files that the input lists but binaryFile never reads (its file scan skips zero-byte files),
    as qualified URIs: every file of the input gets a row, these one with predict's error."""
    from urllib.parse import unquote

    from anomaly_spotter.serving.inputs import IMAGE_SUFFIXES

    def key(uri: str) -> str:  # inputFiles says file:///a/b, the path column file:/a/b
        uri = unquote(uri)
        return local_path(uri) or uri

    pattern = re.compile(suffix_pattern(IMAGE_SUFFIXES))
    listed = {key(p): p for p in files.inputFiles() if pattern.search(p.lower())}
    read = {key(r[0]) for r in files.select("path").distinct().collect()}
    return sorted(uri for k, uri in listed.items() if k not in read)


def _prepare_udf(config: Any, cwd: str | None) -> Any:
    from pyspark.sql.functions import pandas_udf

    # (pandas_udf reads the type hints, resolved in this module's globals: `pd` is imported at the top)
    @pandas_udf(PREPARED_TYPE)  # type: ignore[call-overload]
    def prepare(path: pd.Series, content: pd.Series) -> pd.DataFrame:
        images, errors, shown, hashes = prepare_batch(list(path), list(content), config, cwd)
        return pd.DataFrame({"image": images, "error": errors, "shown": shown, "sha256": hashes})

    return prepare


def scored_frame(
    spark: Any, model: ResolvedModel, files: Any, cwd: str | None, balance: int | None = None
) -> Any:
    """One row per file of `files` (binaryFile): path (shown), the model's results or nulls, error.

    `balance`: the prepared (small) images are spread evenly over that many partitions before the model
    (on a local master, where spark_udf loads the model in every task: one task per core, all equal)."""
    from pyspark.sql import functions as F

    prepare = _prepare_udf(model.config, cwd)
    predict = model_udf(spark, model)
    prepared = files.select(F.col("path").alias("uri"), prepare("path", "content").alias("p"))
    if balance:
        prepared = prepared.repartition(balance)
    scored = prepared.select(
        "uri",
        "p.shown",
        "p.error",
        "p.sha256",
        predict(F.struct(F.col("p.image").alias("image"))).alias("r"),
    )
    ok = F.col("error").isNull()
    return scored.select(
        "uri",
        F.col("shown").alias("path"),
        F.col("sha256").alias("image_sha256"),
        *(
            F.when(ok, F.col(f"r.{c}")).alias(c)
            for c in ("score", "verdict", "threshold", "anomaly_percentage")
        ),
        "error",
    )


def _remove(fs: _HadoopFS, path: str) -> None:
    try:
        fs.delete(path)
    except Exception as err:  # noqa: BLE001 - cleanup must not hide the real error
        print(f"anomaly-spotter score-spark: could not remove {path}: {err}", file=sys.stderr)


def score(
    spark: Any,
    model: ResolvedModel,
    input_text: str,
    output: str,
    overwrite: bool = False,
    log: Path | None = None,
) -> ScoreResult:
    """Score every image of `input_text` with `model` in `spark` and write the Parquet `output`; with
    `log`, append the scored rows to that scoring log (`serving.scoring_log`) once the output is complete."""
    from pyspark.sql import functions as F

    fs = _HadoopFS(spark)
    if fs.exists(output) and not overwrite:
        raise AnomalySpotterError(f"{output} exists; remove it or pass --overwrite")
    files, mapping, missing, empty, cwd = read_images(spark, input_text)
    missing += [(path, prepare_image(b"", path, model.config)[1]) for path in empty]  # predict's message
    parts = []
    if files is not None:
        context = spark.sparkContext
        balance = context.defaultParallelism if is_local_master(context.master) else None
        frame = scored_frame(spark, model, files, cwd, balance)
        if mapping is not None:  # a Parquet list: name each file as listed
            frame = frame.join(mapping, frame["uri"] == mapping["qualified"], "left").withColumn(
                "path", F.coalesce(F.col("listed"), F.col("path"))
            )
        parts.append(frame.select(*OUTPUT_COLUMNS))
    if missing:
        parts.append(
            spark.createDataFrame(
                [(path, None, None, None, None, None, error) for path, error in missing], OUTPUT_SCHEMA
            )
        )
    result = parts[0]
    for part in parts[1:]:
        result = result.unionByName(part)
    tmp = f"{output.rstrip('/')}.tmp-{uuid.uuid4().hex[:12]}"
    old = f"{output.rstrip('/')}.old-{uuid.uuid4().hex[:12]}"
    moved = False
    try:
        result.repartition(1).sortWithinPartitions("path").write.parquet(tmp)
        written = spark.read.parquet(tmp)
        counts = written.agg(
            F.count(F.lit(1)).alias("images"),
            F.count("error").alias("failed"),
            F.sum(F.when(F.col("verdict") == "defective", 1).otherwise(0)).alias("defective"),
        ).first()
        if int(counts["images"]) == 0:  # known only now: listing a folder is part of the job
            from anomaly_spotter.serving.inputs import IMAGE_SUFFIXES

            raise AnomalySpotterError(f"{input_text}: no images found ({', '.join(IMAGE_SUFFIXES)})")
        errors = [
            r[0]
            for r in written.where(F.col("error").isNotNull()).select("error").limit(ERRORS_SHOWN).collect()
        ]
        if fs.exists(output):  # --overwrite: the old output goes only once the new one is complete
            fs.rename(output, old)
            moved = True
        fs.rename(tmp, output)
    except BaseException:
        if moved and not fs.exists(output):  # put the old output back
            fs.rename(old, output)
        _remove(fs, tmp)
        raise
    _remove(fs, old)
    if log is not None:
        append_to_log(spark.read.parquet(output), model, log)
    images, failed = int(counts["images"]), int(counts["failed"])
    return ScoreResult(output, model.pinned, images, int(counts["defective"] or 0), failed, errors)


def append_to_log(written: Any, model: ResolvedModel, log: Path) -> int:
    """Append the scored rows of a score-spark output (not the unreadable) to the scoring log `log`: a
    relative local path is made absolute; returns the rows appended."""
    from pyspark.sql import functions as F

    from anomaly_spotter.serving import scoring_log

    columns = ["path", "image_sha256", *scoring_log.RESULT_COLUMNS]
    rows = written.where(F.col("error").isNull()).select(*columns).toPandas()
    images = [p if has_scheme(p) or os.path.isabs(p) else os.path.abspath(p) for p in rows["path"]]
    context = scoring_log.LogContext(
        "score-spark", model.uri, model.name, model.version, model.config.category, scoring_log.new_batch_id()
    )
    results = rows[list(scoring_log.RESULT_COLUMNS)].to_dict("records")
    scoring_log.append(log, scoring_log.make_rows(context, images, list(rows["image_sha256"]), results))
    return len(rows)


def _cancellable(spark: Any, job: Callable[[], ScoreResult]) -> ScoreResult:
    """Run `job` (Spark calls) in a thread while the main thread waits: on SIGINT or SIGTERM (Ctrl-C, a
    scheduler cancelling the job) the main thread cancels the Spark jobs, `job` fails and removes its
    temporary output, then KeyboardInterrupt / SystemExit(143) is raised. (Raising in a signal handler
    while the main thread waits for the JVM would leave py4j's connection out of step.) A second signal
    raises at once. Outside the main thread, `job` just runs."""
    if threading.current_thread() is not threading.main_thread():
        return job()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = job()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = err

    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        if received:
            raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)
        received.append(signum)
        print(f"anomaly-spotter score-spark: {signal.Signals(signum).name}: cancelling", file=sys.stderr)
        spark.sparkContext.cancelAllJobs()

    worker = threading.Thread(target=target, name="score-spark", daemon=True)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise KeyboardInterrupt if received[0] == signal.SIGINT else SystemExit(128 + received[0])
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def run(
    model_uri: str,
    input_text: str,
    output: str,
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    scoring_log: Path | None = None,
) -> ScoreResult:
    """score-spark: resolve and download the model, start Spark (unless a session is active: then use it,
    and leave it running), score, stop the session it started; with `scoring_log`, append the scored rows
    there.

    MLflow must already point at the tracking store (`tracking.connect_for_model`)."""
    _require_spark()
    from pyspark.sql import SparkSession

    if not has_scheme(output) and Path(output).exists() and not overwrite:
        raise AnomalySpotterError(f"{output} exists; remove it or pass --overwrite")
    if input_kind(input_text) != "glob" and not has_scheme(input_text) and not Path(input_text).exists():
        raise AnomalySpotterError(f"{input_text}: no such file or folder")
    with tempfile.TemporaryDirectory(prefix="anomaly-spotter-model-") as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PANDAS3_WARNING, category=FutureWarning)
        model = resolve_model(model_uri, Path(tmp))
        settings = spark_conf(batch_size(model.config), conf)
        start = time.perf_counter()
        existing = SparkSession.getActiveSession()
        spark = start_session(master, settings)
        session_s = time.perf_counter() - start
        try:
            log(
                f"model {model.pinned} ({model.config.category}, {model.config.image_size} px, threshold "
                f"{model.config.threshold:.6g}); Spark {spark.version}, master {spark.sparkContext.master}, "
                f"{spark.conf.get(BATCH_CONF)} images per Arrow batch"
            )
            start = time.perf_counter()
            result = _cancellable(
                spark, lambda: score(spark, model, input_text, output, overwrite, scoring_log)
            )
            result.job_s = time.perf_counter() - start
            result.session_s = session_s
            return result
        finally:
            if existing is None:
                spark.stop()


def preloaded_daemon() -> None:
    """PySpark's Python worker daemon, with what the UDFs import loaded before it forks the workers: each
    worker starts with torch, MLflow and this package imported (once per executor instead of once per
    worker, pages shared), and the model runs this installed package's code, as `predict` does (a worker
    that imports it first would otherwise run the copy logged with the model, and another not)."""
    import mlflow.pyfunc  # noqa: F401
    import pyspark.worker  # noqa: F401
    from pyspark.daemon import manager

    import anomaly_spotter.detectors  # noqa: F401 - the detectors and torch
    import anomaly_spotter.serving.model  # noqa: F401 - and with it inference

    manager()


if __name__ == "__main__":
    preloaded_daemon()
