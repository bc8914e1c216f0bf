"""Stage `train`: fit the configured detector on one category's good images; log and register it.

With `train.world_size` > 1 (unet_ae), it relaunches itself under torchrun in that many processes; under a
torchrun of your own (docs/scaling-out.md) it joins that group instead."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from anomaly_spotter import tracking
from anomaly_spotter.core.errors import AnomalySpotterError
from anomaly_spotter.data.images import to_tensor_normalized
from anomaly_spotter.data.prepared import load_prepared
from anomaly_spotter.detectors import build_detector, detector_class, distributed, load_detector
from anomaly_spotter.pipeline import paths
from anomaly_spotter.pipeline.stage import main, parse_args, progress_enabled, stage_outputs
from anomaly_spotter.pipeline.train import run_train, train_params_logged, training_history


def run() -> None:
    params, category = parse_args(__doc__, per_category=True)
    world_size = params.train.world_size
    if world_size > 1 and not detector_class(params.model.name).data_parallel:
        name = params.model.name
        print(f"train {category}: train.world_size={world_size} is ignored: {name} fits in one process")
    elif world_size > 1 and not distributed.launched():
        command = distributed.launch_command(Path(__file__), sys.argv[1:], world_size)
        print(f"train {category}: {world_size} processes: {' '.join(command[1:])}", flush=True)
        if subprocess.run(command).returncode != 0:
            raise AnomalySpotterError(f"the {world_size} training processes failed (torchrun's report above)")
        return
    if distributed.launched():
        distributed.join(build_detector(params).fit_device())
        if not distributed.is_main():
            run_train(
                params, category, progress_enabled()
            )  # trains its share; rank 0 saves, logs and registers
            return
    out = paths.model_dir(category)
    prepared_dir = paths.prepared_dir(category)
    with stage_outputs(out / paths.MODEL_FILE, out / paths.HISTORY_DIR):  # not the folder's .gitignore
        prepared = tracking.prepare_run(category, prepared_dir)
        detector, metrics = run_train(params, category, progress_enabled())
        logged = {"seed": params.seed, **train_params_logged(params)}
        # the prepared data's md5, and the run that wrote it where the store has one
        lineage = {k: v for k, v in prepared.items() if v is not None}
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
                    **({"run.prepare": prepared["prepare_run_id"]} if prepared["prepare_run_id"] else {}),
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
        timing = f"fit {metrics['fit_seconds']:.1f} s"
        if "seconds_per_epoch" in metrics:
            timing += f", {metrics['epochs_run']} epochs, {metrics['seconds_per_epoch']:.2f} s/epoch"
        print(
            f"train {category}: {timing} in {metrics['world_size']} process(es); registered "
            f"{version['registered_model']} version {version['model_version']}"
        )


if __name__ == "__main__":
    main("train", run)
