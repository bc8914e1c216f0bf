"""The only module that talks to MLflow: runs, tags, params, metrics, artifacts, models, registry.

Every stage run lands in the experiment `anomaly-spotter`, named `<stage>@<category>` and tagged with
`stage`, `category`, `git_commit` and, downstream of `train`, the registered model name and version it
used. The model version in turn gets a tag `run.<stage>` per stage run that evaluated it, so the MLflow
UI leads from any model version to the runs of all six stages. `compute_thresholds` also writes one
summary run per pipeline result into `anomaly-spotter-pipelines`, with every parameter and the headline
metrics (image AUROC, pixel AUROC, F1), one row each, for side-by-side comparison.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from anomaly_spotter.errors import TrackingError

EXPERIMENT = "anomaly-spotter"
PIPELINES_EXPERIMENT = "anomaly-spotter-pipelines"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MODEL_NAME_PREFIX = "anomaly-spotter"
NETWORK_SUFFIX = "-network"
RUN_INFO_FILE = "mlflow_run.json"
HEALTH_TIMEOUT_S = 5
MAX_PARAM_LENGTH = 6000


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, or a SQLite file in the working directory (git-ignored)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def registered_model_name(category: str) -> str:
    """The served pyfunc model of a category (what `promote` moves `champion` on)."""
    return f"{MODEL_NAME_PREFIX}-{category}"


def network_model_name(category: str) -> str:
    """The raw torch network `train` registers (the service model is built from it)."""
    return f"{MODEL_NAME_PREFIX}-{category}{NETWORK_SUFFIX}"


def connect() -> str:
    """Point MLflow at the tracking URI and check it answers; raises TrackingError naming the URI."""
    uri = tracking_uri()
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(HEALTH_TIMEOUT_S))
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S) as resp:
                resp.read()
        except (urllib.error.URLError, OSError) as err:
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({err}); start it (mlflow server ...) "
                f"or unset MLFLOW_TRACKING_URI to use the local store {DEFAULT_TRACKING_URI}"
            ) from err
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment(EXPERIMENT)
    except Exception as err:  # noqa: BLE001 - any store failure is reported with its URI
        raise TrackingError(f"MLflow tracking store {uri} cannot be used: {err}") from err
    return uri


def git_commit() -> tuple[str, bool]:
    """(HEAD commit or "unknown", whether the work tree has uncommitted changes)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                check=True,
                timeout=10,
            ).stdout.strip()
        )
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def _clean_params(params: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v)[:MAX_PARAM_LENGTH] for k, v in params.items()}


@contextmanager
def stage_run(
    stage: str,
    category: str | None,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
    experiment: str = EXPERIMENT,
) -> Iterator[Any]:
    """An MLflow run for one stage execution, tagged with stage, category and git commit."""
    import mlflow

    commit, dirty = git_commit()
    mlflow.set_experiment(experiment)
    name = f"{stage}@{category}" if category else stage
    all_tags = {
        "stage": stage,
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "mlflow.source.git.commit": commit,
        **({"category": category} if category else {}),
        **(tags or {}),
    }
    with mlflow.start_run(run_name=name, tags=all_tags) as run:
        if params:
            mlflow.log_params(_clean_params(params))
        yield run


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    import math

    import mlflow

    clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_history(history: Any) -> None:
    """Per-epoch curves (a DataFrame with epoch, train_loss, val_loss) as stepped metrics."""
    for row in history.itertuples():
        log_metrics({"train_loss": row.train_loss, "val_loss": row.val_loss}, step=int(row.epoch))


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


def write_run_info(path: Path, run: Any, **extra: Any) -> dict[str, Any]:
    """Record the run (and a registered model version) beside a stage's outputs for downstream stages."""
    info = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2) + "\n")
    return info


def read_run_info(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TrackingError(f"{path}: not found; the upstream stage did not record its MLflow run")
    return json.loads(path.read_text())


def model_tags(info: Mapping[str, Any]) -> dict[str, str]:
    """Tags that link a downstream run to the model version `train` registered."""
    return {
        "registered_model": str(info["registered_model"]),
        "model_version": str(info["model_version"]),
        "train_run_id": str(info["run_id"]),
    }


def category_models(categories: list[str], model_dirs: Mapping[str, Path]) -> tuple[dict, dict[str, str]]:
    """The network version `train` registered per category, and run tags naming them all."""
    models = {c: read_run_info(model_dirs[c] / RUN_INFO_FILE) for c in categories}
    tags = {f"model_version.{c}": f"{m['registered_model']}/{m['model_version']}" for c, m in models.items()}
    return models, tags


def tag_model_version(info: Mapping[str, Any], stage: str, run_id: str) -> None:
    """Point the network version, and the service versions built from it, at a stage run (`run.<stage>`).

    `register` copies the network's `run.*` tags when it builds a service version; a stage that runs
    after it (DVC may order `visualize` and `register` either way) tags the service version here.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    name, version = info["registered_model"], str(info["model_version"])
    client.set_model_version_tag(name, version, f"run.{stage}", run_id)
    service = name.removesuffix(NETWORK_SUFFIX)
    if service != name:
        wrapping = client.search_model_versions(
            f"name = '{service}' and tags.network_version = '{name}/{version}'"
        )
        for mv in wrapping:
            client.set_model_version_tag(service, mv.version, f"run.{stage}", run_id)


def log_pytorch_model(
    module: Any, category: str, input_example: Any, tags: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Log `module` with `mlflow.pytorch.log_model` (signature from the input example) and register it.

    Returns `{"registered_model", "model_version", "model_uri"}`.
    """
    import mlflow
    from mlflow import MlflowClient

    name = network_model_name(category)
    info = mlflow.pytorch.log_model(
        module,
        name="model",
        input_example=input_example,
        registered_model_name=name,
        pip_requirements=pip_requirements(),
    )
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, key, value)
    return {"registered_model": name, "model_version": version, "model_uri": info.model_uri}


def pip_requirements() -> list[str]:
    """Pinned requirements for logged models (explicit, so MLflow need not infer them)."""
    from importlib.metadata import version

    return [
        f"{pkg}=={version(pkg)}" for pkg in ("torch", "numpy", "scipy", "scikit-image", "pillow", "mlflow")
    ]


# --------------------------------------------------------------------------------------------------
# registry: service model versions, aliases, promotion records
# --------------------------------------------------------------------------------------------------

CHAMPION = "champion"
CHALLENGER = "challenger"


def data_dvc_hash(lock_path: Path, category: str) -> str:
    """The md5 of data/prepared/<category> recorded in dvc.lock (stage `prepare@<category>`), or "unknown"."""
    import yaml

    try:
        lock = yaml.safe_load(Path(lock_path).read_text()) or {}
        outs = lock["stages"][f"prepare@{category}"]["outs"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return "unknown"
    for out in outs:
        if str(out.get("path", "")).rstrip("/") == f"data/prepared/{category}":
            return str(out.get("md5", "unknown"))
    return "unknown"


def model_version_tags(name: str, version: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return dict(MlflowClient().get_model_version(name, str(version)).tags)


def set_model_version_tags(name: str, version: str, tags: Mapping[str, Any]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def set_model_version_description(name: str, version: str, description: str) -> None:
    from mlflow import MlflowClient

    MlflowClient().update_model_version(name, str(version), description=description)


def latest_model_version(name: str) -> Any:
    """The newest (highest-numbered) version of registered model `name`; TrackingError if none."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        versions = MlflowClient().search_model_versions(f"name = '{name}'")
    except MlflowException as err:
        raise TrackingError(f"cannot list versions of {name!r} in {tracking_uri()}: {err.message}") from err
    if not versions:
        raise TrackingError(
            f"no registered model {name!r} in {tracking_uri()}; run the register stage first (dvc repro)"
        )
    return max(versions, key=lambda v: int(v.version))


def model_version_by_alias(name: str, alias: str) -> Any | None:
    """The version holding `alias`, or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def set_alias(name: str, alias: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(name, alias, str(version))


def delete_alias(name: str, alias: str) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().delete_registered_model_alias(name, alias)
    except MlflowException:
        pass
