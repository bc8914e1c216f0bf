"""Stage `prepare`: index one category (MVTec AD layout), check every file, cache resized images."""

from anomaly_spotter import paths, tracking
from anomaly_spotter.config import flatten
from anomaly_spotter.pipeline import run_prepare
from anomaly_spotter.stage import main, parse_args, progress_enabled, stage_outputs


def run() -> None:
    params, category = parse_args(__doc__, per_category=True)
    out = paths.prepared_dir(category)
    with stage_outputs(out):
        counts = run_prepare(params, category, progress_enabled())
        with tracking.stage_run(
            "prepare", category, {"seed": params.seed, **flatten(params.data, "data.")}
        ) as run:
            tracking.log_metrics(counts)
            tracking.log_artifacts([out / "index.csv", out / "summary.json"])
            tracking.write_run_info(out / tracking.RUN_INFO_FILE, run)


if __name__ == "__main__":
    main("prepare", run)
