"""Lineage by content: a stage finds the upstream run whose output it read by that output's md5."""

from __future__ import annotations

import hashlib
import sys
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


def find_stage_run(stage: str, category: str | None, tags: Mapping[str, str]) -> Any | None:
    """The newest FINISHED run of `stage` (and `category`) in the experiment `anomaly-spotter` whose tags
    include `tags` (e.g. the md5 of the output it wrote), or None if the store has none: the output came
    from `dvc pull`, DVC's run cache, `dvc exp apply` or another store, or its run was deleted."""
    from mlflow import MlflowClient

    experiment_id = ensure_experiment(EXPERIMENT)
    query = [f"tags.stage = '{stage}'", "attributes.status = 'FINISHED'"]
    query += [f"tags.category = '{category}'"] if category else []
    query += [f"tags.{key} = '{value}'" for key, value in tags.items()]
    runs = MlflowClient().search_runs(
        [experiment_id], " and ".join(query), max_results=1, order_by=["attributes.start_time DESC"]
    )
    return runs[0] if runs else None


def note_missing_run(stage: str, category: str | None, path: Path, md5: str) -> str:
    """Print (to stderr) and return the one line a stage gives when an input has no run in the store: its
    lineage is then the input's md5 alone. DVC decides what runs; the store only records it."""
    name = f"{stage}@{category}" if category else stage
    note = (
        f"note: {path} (md5 {md5}) has no {name} run in {mlflow_uri()} (pulled, restored from DVC's run "
        f"cache, applied from an experiment or made with another store): lineage is recorded by md5 only"
    )
    print(note, file=sys.stderr)
    return note


def prepare_run(category: str, prepared_dir: Path) -> dict[str, str | None]:
    """What the train stage records of the prepared data it read: `{"prepared_md5", "prepare_run_id"}`,
    the run id None (and a note printed) when the store has no prepare run that wrote that content."""
    md5 = content_md5(prepared_dir)
    run = find_stage_run("prepare", category, {PREPARED_MD5_TAG: md5})
    if run is None:
        note_missing_run("prepare", category, prepared_dir, md5)
    return {PREPARED_MD5_TAG: md5, "prepare_run_id": run.info.run_id if run else None}


def train_run(category: str, model_file: Path) -> dict[str, str | None]:
    """The train run that wrote `model_file` (matched by md5) and the network version it registered:
    `{"run_id", "registered_model", "model_version", "model_md5"}`; all but the md5 None (and a note
    printed) when the store has no such run."""
    md5 = content_md5(model_file)
    run = find_stage_run("train", category, {MODEL_MD5_TAG: md5})
    if run is None:
        note_missing_run("train", category, model_file, md5)
        return {"run_id": None, "registered_model": None, "model_version": None, MODEL_MD5_TAG: md5}
    return {
        "run_id": run.info.run_id,
        "registered_model": run.data.tags.get("registered_model"),
        "model_version": run.data.tags.get("model_version"),
        MODEL_MD5_TAG: md5,
    }


def model_tags(info: Mapping[str, Any]) -> dict[str, str]:
    """Tags that link a downstream run to the model `train` made (`info`: `train_run`): always its md5;
    the network version and train run where the store has them."""
    names = {
        "registered_model": "registered_model",
        "model_version": "model_version",
        "run_id": "train_run_id",
    }
    tags = {tag: str(info[key]) for key, tag in names.items() if info.get(key) is not None}
    return tags | {MODEL_MD5_TAG: str(info[MODEL_MD5_TAG])}


def network_ref(info: Mapping[str, Any]) -> str | None:
    """`<registered network>/<version>` of a `train_run` record, or None when the store has none."""
    if info.get("registered_model") is None or info.get("model_version") is None:
        return None
    return f"{info['registered_model']}/{info['model_version']}"


def category_models(categories: list[str], model_files: Mapping[str, Path]) -> tuple[dict, dict[str, str]]:
    """The train run and network version behind each category's model file, and run tags naming them
    (the network version, or `md5:<model md5>` for a model without a run in this store)."""
    models = {c: train_run(c, model_files[c]) for c in categories}
    tags = {f"model_version.{c}": network_ref(m) or f"md5:{m[MODEL_MD5_TAG]}" for c, m in models.items()}
    return models, tags
