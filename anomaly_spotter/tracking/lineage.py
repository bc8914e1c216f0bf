"""Lineage by content: a stage finds the upstream run whose output it read by that output's md5."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anomaly_spotter.core.errors import TrackingError
from anomaly_spotter.tracking.store import EXPERIMENT, ensure_experiment, mlflow_uri

# Tags naming a stage's input / output by content, so downstream stages find the run (see module doc).
PREPARED_MD5_TAG = "prepared_md5"


MODEL_MD5_TAG = "model_md5"


def content_md5(path: Path) -> str:
    """md5 of a file's bytes; of a folder, md5 of its files' sorted `relative/path md5` lines.

    Raises TrackingError naming the path if it does not exist.
    """
    path = Path(path)
    if path.is_file():
        return _file_md5(path)
    if not path.is_dir():
        raise TrackingError(f"{path}: not found; run the stage that writes it first (dvc repro)")
    lines = [
        f"{file.relative_to(path).as_posix()} {_file_md5(file)}"
        for file in sorted(p for p in path.rglob("*") if p.is_file())
    ]
    return hashlib.md5("\n".join(lines).encode()).hexdigest()


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_stage_run(stage: str, category: str | None, tags: Mapping[str, str]) -> Any:
    """The newest FINISHED run of `stage` (and `category`) in the experiment `anomaly-spotter` whose tags
    include `tags` (e.g. the md5 of the output it wrote). Raises TrackingError, naming the stage to rerun,
    if there is none (e.g. the output was made with another tracking store)."""
    from mlflow import MlflowClient

    experiment_id = ensure_experiment(EXPERIMENT)
    query = [f"tags.stage = '{stage}'", "attributes.status = 'FINISHED'"]
    query += [f"tags.category = '{category}'"] if category else []
    query += [f"tags.{key} = '{value}'" for key, value in tags.items()]
    runs = MlflowClient().search_runs(
        [experiment_id], " and ".join(query), max_results=1, order_by=["attributes.start_time DESC"]
    )
    if not runs:
        name = f"{stage}@{category}" if category else stage
        wanted = ", ".join(f"{k}={v}" for k, v in tags.items())
        raise TrackingError(
            f"no finished MLflow run of {name} with {wanted} in {mlflow_uri()}: its output was made "
            f"with another tracking store or that run was deleted; rerun it with `dvc repro --force {name}` "
            f"(or set MLFLOW_TRACKING_URI to the store that has it)"
        )
    return runs[0]


def prepare_run(category: str, prepared_dir: Path) -> Any:
    """The prepare run that wrote `prepared_dir` (matched by its content md5)."""
    return find_stage_run("prepare", category, {PREPARED_MD5_TAG: content_md5(prepared_dir)})


def train_run(category: str, model_file: Path) -> dict[str, str]:
    """The train run that wrote `model_file` (matched by md5) and the network version it registered:
    `{"run_id", "registered_model", "model_version", "model_md5"}`."""
    md5 = content_md5(model_file)
    run = find_stage_run("train", category, {MODEL_MD5_TAG: md5})
    return {
        "run_id": run.info.run_id,
        "registered_model": run.data.tags["registered_model"],
        "model_version": run.data.tags["model_version"],
        MODEL_MD5_TAG: md5,
    }


def model_tags(info: Mapping[str, Any]) -> dict[str, str]:
    """Tags that link a downstream run to the model version `train` registered (`info`: `train_run`)."""
    return {
        "registered_model": str(info["registered_model"]),
        "model_version": str(info["model_version"]),
        "train_run_id": str(info["run_id"]),
        MODEL_MD5_TAG: str(info[MODEL_MD5_TAG]),
    }


def category_models(categories: list[str], model_files: Mapping[str, Path]) -> tuple[dict, dict[str, str]]:
    """The train run and network version behind each category's model file, and run tags naming them."""
    models = {c: train_run(c, model_files[c]) for c in categories}
    tags = {f"model_version.{c}": f"{m['registered_model']}/{m['model_version']}" for c, m in models.items()}
    return models, tags
