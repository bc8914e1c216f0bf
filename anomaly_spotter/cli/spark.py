"""`anomaly-spotter score-spark`: batch scoring on Spark (docs/scaling-out.md)."""

from __future__ import annotations

import argparse
import os
import sys

from anomaly_spotter import tracking

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


def cmd_score_spark(args: argparse.Namespace) -> int:
    from anomaly_spotter.deploy import spark

    conf = spark.parse_conf(args.conf)
    if args.no_progress:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        conf.setdefault("spark.ui.showConsoleProgress", "false")
    tracking.connect_for_model(args.model)
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
