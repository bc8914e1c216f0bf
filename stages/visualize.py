"""Stage `visualize`: example panels, ROC / PR curves and score distributions for one category."""

from anomaly_spotter import tracking
from anomaly_spotter.core.config import flatten
from anomaly_spotter.pipeline import paths
from anomaly_spotter.pipeline.stage import main, parse_args, stage_outputs
from anomaly_spotter.pipeline.visualize import run_visualize


def run() -> None:
    params, category = parse_args(__doc__, per_category=True)
    out = paths.plots_dir(category)
    with stage_outputs(*paths.plot_outputs(category)):  # not the folder's .gitignore
        model = tracking.train_run(category, paths.model_dir(category) / paths.MODEL_FILE)
        metrics = run_visualize(params, category)
        with tracking.stage_run(
            "visualize", category, flatten(params.visualize, "visualize."), tracking.model_tags(model)
        ) as run:
            tracking.log_metrics(metrics)
            tracking.log_artifacts([out], artifact_path="plots")
            tracking.tag_model_version(model, "visualize", run.info.run_id)


if __name__ == "__main__":
    main("visualize", run)
