"""Stage `extract_metrics`: per-image map stats; image/pixel AUROC, AUPRO, F1-max per category and overall."""

import math

from anomaly_spotter import tracking
from anomaly_spotter.core.config import flatten
from anomaly_spotter.pipeline import paths
from anomaly_spotter.pipeline.extract_metrics import run_extract_metrics
from anomaly_spotter.pipeline.stage import main, parse_args, stage_outputs


def run() -> None:
    params, _ = parse_args(__doc__, per_category=False)
    with stage_outputs(paths.PER_IMAGE_CSV, paths.METRICS_JSON):
        categories = params.data.categories
        model_files = {c: paths.model_dir(c) / paths.MODEL_FILE for c in categories}
        models, tags = tracking.category_models(categories, model_files)
        result = run_extract_metrics(params)
        with tracking.stage_run("extract_metrics", None, flatten(params.metrics, "metrics."), tags) as run:
            tracking.log_metrics(result["overall"])  # nothing for a subset of the dataset's categories
            for category, values in result["categories"].items():
                tracking.log_metrics(flatten(values, f"{category}."))  # the field set's as <c>.field.<key>
            tracking.log_artifacts([paths.PER_IMAGE_CSV, paths.METRICS_JSON])
            for model in models.values():
                tracking.tag_model_version(model, "extract_metrics", run.info.run_id)
    for category, values in result["categories"].items():
        image = _shown(values["image_auroc"], "needs good and defective test images")
        print(f"{category}: image AUROC {image}  pixel AUROC {_shown(values['pixel_auroc'], 'needs masks')}")
        if "field" in values:  # reviewed line images held out of training (docs/line.md)
            f = values["field"]
            print(
                f"{category}: field set {f['n_field_good']} held-out reviewed goods, "
                f"{f['n_field_defective']} confirmed defects (rates at the threshold: compute_thresholds)"
            )


def _shown(value: float, why_absent: str) -> str:
    return f"{value:.4f}" if math.isfinite(value) else f"absent ({why_absent})"


if __name__ == "__main__":
    main("extract_metrics", run)
