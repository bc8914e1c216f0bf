"""Stage `process_all`: score every validation and test image of one category; maps and stats."""

from anomaly_spotter import tracking
from anomaly_spotter.core.config import flatten
from anomaly_spotter.core.scoring import REGION_FILE, SCORES_FILE, STATS_FILE
from anomaly_spotter.pipeline import paths
from anomaly_spotter.pipeline.process_all import run_process
from anomaly_spotter.pipeline.stage import main, parse_args, progress_enabled, stage_outputs


def run() -> None:
    params, category = parse_args(__doc__, per_category=True)
    out = paths.outputs_dir(category)
    with stage_outputs(out):
        model = tracking.train_run(category, paths.model_dir(category) / paths.MODEL_FILE)
        metrics = run_process(params, category, progress_enabled())
        with tracking.stage_run(
            "process_all", category, flatten(params.process, "process."), tracking.model_tags(model)
        ) as run:
            tracking.log_metrics(metrics)
            tracking.log_artifacts([out / SCORES_FILE, out / STATS_FILE, out / REGION_FILE])
            tracking.tag_model_version(model, "process_all", run.info.run_id)


if __name__ == "__main__":
    main("process_all", run)
