"""Stage `train`: fit the configured detector on one category's good images; log and register it."""

import numpy as np

from anomaly_spotter import paths, tracking
from anomaly_spotter.config import flatten
from anomaly_spotter.data.images import to_tensor_normalized
from anomaly_spotter.data.prepare import load_prepared
from anomaly_spotter.pipeline import run_train, training_history
from anomaly_spotter.stage import main, parse_args, stage_outputs


def run() -> None:
    params, category = parse_args(__doc__, per_category=True)
    out = paths.model_dir(category)
    with stage_outputs(out):
        detector, metrics = run_train(params, category)
        prepared = tracking.read_run_info(paths.prepared_dir(category) / tracking.RUN_INFO_FILE)
        logged = {
            "seed": params.seed,
            "data.image_size": params.data.image_size,
            "model.name": params.model.name,
            **flatten(params.model.options(), f"model.{params.model.name}."),
            **flatten(params.train, "train."),
        }
        with tracking.stage_run("train", category, logged, {"prepare_run_id": prepared["run_id"]}) as run:
            tracking.log_metrics(metrics)
            tracking.log_history(training_history(detector))
            tracking.log_artifacts([out / paths.HISTORY_CSV, out / paths.HISTORY_PNG])
            example = to_tensor_normalized(np.asarray(load_prepared(paths.prepared_dir(category)).images[:2]))
            version = tracking.log_pytorch_model(
                detector.module(),
                category,
                example,
                tags={
                    "category": category,
                    "detector": detector.kind,
                    "run.prepare": prepared["run_id"],
                    "run.train": run.info.run_id,
                },
            )
            tracking.write_run_info(out / tracking.RUN_INFO_FILE, run, **version)
        print(
            f"train {category}: registered {version['registered_model']} version {version['model_version']}"
        )


if __name__ == "__main__":
    main("train", run)
