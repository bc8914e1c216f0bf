"""The model registry: registered names, logged networks, version tags and descriptions, aliases."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from anomaly_spotter.core.errors import TrackingError
from anomaly_spotter.core.packages import pinned
from anomaly_spotter.tracking.lineage import network_ref
from anomaly_spotter.tracking.store import tracking_uri

MODEL_NAME_PREFIX = "anomaly-spotter"


NETWORK_SUFFIX = "-network"


def registered_model_name(category: str) -> str:
    """The served pyfunc model of a category (what `promote` moves `champion` on)."""
    return f"{MODEL_NAME_PREFIX}-{category}"


def network_model_name(category: str) -> str:
    """The raw torch network `train` registers (the service model is built from it)."""
    return f"{MODEL_NAME_PREFIX}-{category}{NETWORK_SUFFIX}"


def tag_model_version(info: Mapping[str, Any], stage: str, run_id: str) -> None:
    """Point the network version, and the service versions built from it, at a stage run (`run.<stage>`).

    `register` copies the network's `run.*` tags when it builds a service version; a stage that runs
    after it (DVC may order `visualize` and `register` either way) tags the service version here. Nothing
    for a model whose train run this store lacks (`lineage.train_run` gave no version).
    """
    from mlflow import MlflowClient

    if network_ref(info) is None:
        return  # a model with no train run in this store (pulled): no version to point
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
    return pinned(("torch", "numpy", "scipy", "scikit-image", "pillow", "mlflow"))


CHAMPION = "champion"


CHALLENGER = "challenger"


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


def model_versions(name: str) -> list[Any]:
    """Every version of registered model `name`, newest (highest-numbered) first; [] when it has none."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        versions = MlflowClient().search_model_versions(f"name = '{name}'")
    except MlflowException as err:
        raise TrackingError(f"cannot list versions of {name!r} in {tracking_uri()}: {err.message}") from err
    return sorted(versions, key=lambda v: int(v.version), reverse=True)


def newest_version_with_tag(name: str, key: str, value: str) -> str | None:
    """The newest version of `name` if it carries tag `key` = `value`, else None (also without versions)."""
    versions = model_versions(name)
    if versions and versions[0].tags.get(key) == value:
        return str(versions[0].version)
    return None


def latest_model_version(name: str) -> Any:
    """The newest (highest-numbered) version of registered model `name`; TrackingError if none."""
    versions = model_versions(name)
    if not versions:
        raise TrackingError(
            f"no registered model {name!r} in {tracking_uri()}; run the register stage first (dvc repro)"
        )
    return versions[0]


def model_version_by_alias(name: str, alias: str) -> Any | None:
    """The version holding `alias`, or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def model_identity(uri: str) -> tuple[str, str, str]:
    """`(uri to load, registered name, version)` of a model URI: `models:/name@alias` pinned to the version
    holding the alias now (a long job then scores with one version even if the alias moves), `models:/name/3`
    as it is; a run URI or a model folder has no registered name or version (both ""). TrackingError when
    no version holds the alias."""
    if not uri.startswith("models:/"):
        return uri, "", ""
    rest = uri.removeprefix("models:/")
    if "@" in rest:
        name, _, alias = rest.partition("@")
        version = model_version_by_alias(name, alias)
        if version is None:
            category = name.removeprefix(f"{MODEL_NAME_PREFIX}-")
            raise TrackingError(
                f"cannot load model {uri!r}: no version of {name!r} holds the alias {alias!r} in "
                f"{tracking_uri()} yet; `anomaly-spotter promote --category {category}` gives the newest "
                f"version the champion alias, or name a version: models:/{name}/1"
            )
        return f"models:/{name}/{version.version}", name, str(version.version)
    name, _, version = rest.partition("/")
    if version.isdigit():
        return uri, name, version
    if version == "latest":
        newest = latest_model_version(name)
        return f"models:/{name}/{newest.version}", name, str(newest.version)
    raise TrackingError(
        f"{uri!r}: name a version (models:/{name}/3), an alias (models:/{name}@champion) or "
        f"models:/{name}/latest; stages are not used here"
    )


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


def current_user() -> str:
    """Who asks for a promotion or proposes a threshold, as recorded on the model version."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
