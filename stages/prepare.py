"""Stage `prepare`: index one category (MVTec AD layout), check every file, cache resized images."""

from anomaly_spotter import tracking
from anomaly_spotter.pipeline import paths
from anomaly_spotter.pipeline.prepare import run_prepare
from anomaly_spotter.pipeline.stage import main, parse_args, progress_enabled, stage_outputs


def run() -> None:
    params, category = parse_args(__doc__, per_category=True)
    out = paths.prepared_dir(category)
    with stage_outputs(out):
        counts = run_prepare(params, category, progress_enabled())
        d = params.data
        logged = {
            "seed": params.seed,
            "data.root": d.root,
            "data.image_size": d.image_size,
            "data.val_fraction": d.val_fraction,
        }
        # train finds this run by the md5 of what it wrote (no run id inside the DVC output)
        tags = {tracking.PREPARED_MD5_TAG: tracking.content_md5(out)}
        with tracking.stage_run("prepare", category, logged, tags):
            tracking.log_metrics(counts)
            tracking.log_artifacts([out / "index.csv", out / "summary.json"])


if __name__ == "__main__":
    main("prepare", run)
