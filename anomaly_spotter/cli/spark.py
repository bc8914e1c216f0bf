"""`anomaly-spotter score-spark`: batch scoring on Spark (docs/scaling-out.md)."""

from __future__ import annotations

import argparse
import os
import sys

from anomaly_spotter import tracking

SCORE_SPARK_EPILOG = """examples:
  anomaly-spotter score-spark --model models:/anomaly-spotter-fabric@champion \\
      --input data/builtin/fabric/test --output results/fabric.parquet --master 'local[2]'
  anomaly-spotter score-spark --model models:/anomaly-spotter-fabric@champion --input todo.parquet \\
      --output hdfs:///scores/fabric.parquet --master yarn --conf spark.executor.instances=8
  anomaly-spotter score-spark --model models:/anomaly-spotter-fabric@champion --input line/day1 \\
      --output results/day1.parquet --log logs/fabric    # and append to the scoring log (docs/line.md)

see docs/scaling-out.md
"""


def cmd_score_spark(args: argparse.Namespace) -> int:
    from anomaly_spotter.deploy import spark

    conf = spark.parse_conf(args.conf)
    if args.no_progress:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        conf.setdefault("spark.ui.showConsoleProgress", "false")
    tracking.connect_for_model(args.model)
    try:
        result = spark.run(
            args.model, args.input, args.output, args.master, conf, args.overwrite, scoring_log=args.log
        )
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
    print(result.summary() + (f"; logged to {args.log}" if args.log else ""))
    return 0
