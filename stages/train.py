"""Stage `train`: fit the configured detector on one category's good images; log and register it."""

import numpy as np

from anomaly_spotter import paths, tracking
from anomaly_spotter.config import train_params_logged
from anomaly_spotter.data.images import to_tensor_normalized
from anomaly_spotter.data.prepare import load_prepared
from anomaly_spotter.detectors import load_detector
from anomaly_spotter.pipeline.train import run_train, training_history
from anomaly_spotter.stage import main, parse_args, stage_outputs


def run() -> None:
    params, category = parse_args(__doc__, per_category=True)
    out = paths.model_dir(category)
    prepared_dir = paths.prepared_dir(category)
    with stage_outputs(out / paths.MODEL_FILE, out / paths.HISTORY_DIR):  # not the folder's .gitignore
        prepared = tracking.prepare_run(category, prepared_dir)
        detector, metrics = run_train(params, category)
        logged = {"seed": params.seed, **train_params_logged(params)}
        lineage = {
            "prepare_run_id": prepared.info.run_id,
            tracking.PREPARED_MD5_TAG: prepared.data.tags[tracking.PREPARED_MD5_TAG],
        }
        with tracking.stage_run("train", category, logged, lineage) as run:
            tracking.log_metrics(metrics)
            history = training_history(detector)
            tracking.log_history(history)
            if len(history):
                tracking.log_artifacts([out / paths.HISTORY_DIR])
            example = to_tensor_normalized(np.asarray(load_prepared(prepared_dir).images[:2]))
            model_md5 = tracking.content_md5(out / paths.MODEL_FILE)
            # log the module rebuilt from model.pt: exactly the saved weights, and no tensors made under
            # torch.inference_mode while fitting (torch.export, MLflow's format, cannot trace those)
            saved = load_detector(out / paths.MODEL_FILE)
            version = tracking.log_pytorch_model(
                saved.module(),
                category,
                example,
                tags={
                    "category": category,
                    "detector": detector.kind,
                    "run.prepare": prepared.info.run_id,
                    "run.train": run.info.run_id,
                    tracking.MODEL_MD5_TAG: model_md5,
                },
            )
            # set last: downstream stages find this run by model_md5 once it has a registered version
            tracking.set_run_tags(
                {
                    "registered_model": version["registered_model"],
                    "model_version": version["model_version"],
                    tracking.MODEL_MD5_TAG: model_md5,
                }
            )
        print(
            f"train {category}: registered {version['registered_model']} version {version['model_version']}"
        )


if __name__ == "__main__":
    main("train", run)
