"""Stage runs: one MLflow run per stage and category, with params, tags, metrics and artifacts; runs an
interrupted attempt left RUNNING are ended KILLED."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from anomaly_spotter.core.errors import TrackingError
from anomaly_spotter.tracking.environment import environment_tags
from anomaly_spotter.tracking.provenance import dvc_experiment, git_commit, workspace
from anomaly_spotter.tracking.store import EXPERIMENT, mlflow_uri, use_experiment

MAX_PARAM_LENGTH = 6000


# Tag set on a model version whose creating run was found RUNNING after an interrupted attempt.
KILLED_RUN_TAG = "source_run_killed"


# Tag naming the clone a stage run was started from (host and folder); see `workspace()`.
WORKSPACE_TAG = "workspace"
# Tag naming the DVC experiment (`dvc exp run`) a stage ran for: a row of `dvc exp show` finds its runs.
DVC_EXPERIMENT_TAG = "dvc_experiment"


# Tags every stage run of this process gets (`add_run_tags`): e.g. the feedback data version.
RUN_TAGS: dict[str, str] = {}


def add_run_tags(tags: Mapping[str, str]) -> None:
    """Tags for every stage run this process starts from now on (the stage plumbing sets them once)."""
    RUN_TAGS.update({k: str(v) for k, v in tags.items()})


def _clean_params(params: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v)[:MAX_PARAM_LENGTH] for k, v in params.items()}


@contextmanager
def stage_run(
    stage: str,
    category: str | None,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
    experiment: str = EXPERIMENT,
    run_name: str | None = None,
) -> Iterator[Any]:
    """An MLflow run for one stage execution, tagged with stage, category, git commit and the lock (md5 and
    the installed packages that differ from it)."""
    import mlflow

    commit, dirty = git_commit()
    experiment_id = use_experiment(mlflow.get_tracking_uri(), experiment)
    end_interrupted_runs(experiment_id, stage, category)
    name = run_name or (f"{stage}@{category}" if category else stage)
    dvc_exp = dvc_experiment()
    all_tags = {
        "stage": stage,
        WORKSPACE_TAG: workspace(),
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "mlflow.source.git.commit": commit,
        **environment_tags(),
        **({DVC_EXPERIMENT_TAG: dvc_exp} if dvc_exp else {}),
        **({"category": category} if category else {}),
        **RUN_TAGS,
        **(tags or {}),
    }
    with mlflow.start_run(run_name=name, tags=all_tags) as run:
        if params:
            mlflow.log_params(_clean_params(params))
        yield run


def end_interrupted_runs(experiment_id: str, stage: str, category: str | None) -> list[str]:
    """Mark KILLED the runs of `stage` and `category` (None: runs without a category) started from this
    workspace (`workspace()`: DVC runs one repro at a time per clone) that are still RUNNING: an earlier
    attempt was killed before it could end them. Runs of other clones, sharing the tracking server, are
    never touched. Their logged models
    still PENDING are marked FAILED; model versions they registered get the tag `source_run_killed`
    (the registry keeps them; a version still in PENDING_REGISTRATION is finished by the registry itself).
    Returns the run ids marked KILLED. Other stages' and categories' runs are left alone.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    active = mlflow.active_run()
    active_id = active.info.run_id if active is not None else None
    here = workspace()
    query = f"attributes.status = 'RUNNING' and tags.stage = '{stage}'"
    if category:
        query += f" and tags.category = '{category}'"
    stale = [
        run
        for run in client.search_runs([experiment_id], query, max_results=1000)
        if run.data.tags.get("category") == category
        and run.data.tags.get(WORKSPACE_TAG) == here
        and run.info.run_id != active_id
    ]
    killed: list[str] = []
    for run in stale:
        run_id = run.info.run_id
        try:
            _close_models_of(client, experiment_id, run_id)
        except MlflowException as err:
            print(f"{stage}: note: models of interrupted run {run_id}: {err.message}", file=sys.stderr)
        try:
            client.set_terminated(run_id, "KILLED")
        except MlflowException as err:
            print(f"{stage}: note: could not end interrupted run {run_id}: {err.message}", file=sys.stderr)
            continue
        killed.append(run_id)
    if killed:
        print(
            f"{stage}: marked {len(killed)} run(s) left RUNNING by an interrupted attempt as KILLED: "
            f"{', '.join(killed)}",
            file=sys.stderr,
        )
    return killed


def _close_models_of(client: Any, experiment_id: str, run_id: str) -> None:
    """Logged models of an interrupted run still PENDING: FAILED; its model versions: tagged."""
    # (a `status` filter does not match on SQLite stores: compare here)
    for model in client.search_logged_models([experiment_id], f"source_run_id = '{run_id}'"):
        if str(model.status) == "PENDING":
            client.finalize_logged_model(model.model_id, "FAILED")
    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        client.set_model_version_tag(version.name, version.version, KILLED_RUN_TAG, "true")


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    import math

    import mlflow

    clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    if clean:
        mlflow.log_metrics(clean, step=step)


def set_run_tags(tags: Mapping[str, Any]) -> None:
    """Tag the active run."""
    import mlflow

    mlflow.set_tags({k: str(v) for k, v in tags.items()})


LOG_BATCH = 1000  # MLflow's limit on metrics per log_batch call


def log_history(history: Any) -> None:
    """A training history (first column the step: epoch or bank_size; each other column a curve) as
    stepped metrics named after the curves; blank cells are left out."""
    import math
    import time

    import mlflow
    from mlflow.entities import Metric

    if history.empty:
        return
    step, *curves = history.columns
    now = int(time.time() * 1000)
    metrics = [
        Metric(curve, float(value), now, int(at))
        for curve in curves
        for at, value in zip(history[step], history[curve], strict=True)
        if math.isfinite(float(value))
    ]
    run_id = mlflow.active_run().info.run_id
    client = mlflow.MlflowClient()
    for start in range(0, len(metrics), LOG_BATCH):  # one request per 1,000 points, not one per point
        client.log_batch(run_id, metrics=metrics[start : start + LOG_BATCH])


def log_artifacts(paths: list[Path], artifact_path: str | None = None) -> None:
    import mlflow

    for path in paths:
        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(
                str(path), artifact_path=f"{artifact_path}/{path.name}" if artifact_path else path.name
            )
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)


def download_run_artifact(run_id: str, artifact: str, dst: Path) -> Path:
    """Download one artifact of run `run_id` (e.g. `scores.csv`) into folder `dst`; its local path.
    TrackingError naming the run and the artifact when it cannot be read."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(dst))
        )
    except (MlflowException, OSError) as err:
        raise TrackingError(
            f"run {run_id}: cannot read its artifact {artifact} from {mlflow_uri()}: {err}"
        ) from err
