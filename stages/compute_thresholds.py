"""Stage `compute_thresholds`: recall-target thresholds (out-of-fold figures) and good-only calibration.

Also writes the pipeline summary run (all parameters + headline metrics) to the MLflow experiment
`anomaly-spotter-pipelines`, for side-by-side comparison of pipeline runs.
"""

import json

from anomaly_spotter import tracking
from anomaly_spotter.core.config import flatten, params_to_dict
from anomaly_spotter.pipeline import paths
from anomaly_spotter.pipeline.compute_thresholds import run_compute_thresholds
from anomaly_spotter.pipeline.results import covers_dataset, subset_note
from anomaly_spotter.pipeline.stage import main, parse_args, stage_outputs


def run() -> None:
    params, _ = parse_args(__doc__, per_category=False)
    details = (paths.THRESHOLDS_CSV, paths.THRESHOLDS_JSON)
    with stage_outputs(*details, paths.CATEGORY_METRICS_DIR, paths.OVERALL_METRICS_JSON):
        categories = params.data.categories
        model_files = {c: paths.model_dir(c) / paths.MODEL_FILE for c in categories}
        models, tags = tracking.category_models(categories, model_files)
        result = run_compute_thresholds(params)
        logged = {"seed": params.seed, **flatten(params.thresholds, "thresholds.")}
        with tracking.stage_run("compute_thresholds", None, logged, tags) as run:
            tracking.log_metrics(result["overall"])
            for category, values in result["categories"].items():
                tracking.log_metrics({f"{category}.{k}": v for k, v in values.items()})
            tracking.log_artifacts([*details, paths.CATEGORY_METRICS_DIR, paths.OVERALL_METRICS_JSON])
            for model in models.values():
                tracking.tag_model_version(model, "compute_thresholds", run.info.run_id)
            thresholds_run = run.info.run_id
        # One row per pipeline result: every parameter and the headline metrics, for "Compare" in the UI.
        image_metrics = json.loads(paths.METRICS_JSON.read_text())
        summary = {**image_metrics["overall"], **result["overall"]}
        for category in params.data.categories:
            summary |= {f"{category}.{k}": v for k, v in image_metrics["categories"][category].items()}
            summary |= {f"{category}.{k}": v for k, v in result["categories"][category].items()}
        with tracking.stage_run(
            "pipeline",
            None,
            flatten(params_to_dict(params)),
            {**tags, "compute_thresholds_run_id": thresholds_run},
            experiment=tracking.PIPELINES_EXPERIMENT,
            run_name=tracking.dvc_experiment() or "pipeline",  # named after its `dvc exp show` row
        ):
            tracking.log_metrics({k: v for k, v in summary.items() if isinstance(v, int | float)})
            tracking.log_artifacts([paths.METRICS_JSON, paths.THRESHOLDS_CSV])
    if not covers_dataset(params):
        print(f"compute_thresholds: {subset_note(params)}")


if __name__ == "__main__":
    main("compute_thresholds", run)
