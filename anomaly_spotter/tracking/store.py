"""The tracking store: which one (MLFLOW_TRACKING_URI or the local SQLite file), checks that it can be
written before any compute, our experiments, and store-relative artifact locations (see the package doc)."""

from __future__ import annotations

import os
import sqlite3
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from anomaly_spotter.core.errors import TrackingError

EXPERIMENT = "anomaly-spotter"


PIPELINES_EXPERIMENT = "anomaly-spotter-pipelines"


DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


HEALTH_TIMEOUT_S = 5


# MLflow 3's UI reads this experiment tag to choose its view (model training vs GenAI traces).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"


EXPERIMENT_KIND = "custom_model_development"


# Artifact URI scheme of SQLite stores: relative to the store's folder (see `store_relative_repository`).
STORE_RELATIVE_SCHEME = "store-relative"


LOCAL_ARTIFACT_DIR = "mlruns"


# Set by `mlflow server` / `mlflow ui` for their workers: the backend store they serve.
SERVER_BACKEND_ENV = "_MLFLOW_SERVER_FILE_STORE"


# Set by `dvc exp run` for the stages it runs: the workspace's root, also when a queued or temporary
# experiment runs them in a copy of the workspace under .dvc/tmp.
DVC_ROOT_ENV = "DVC_ROOT"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, or the SQLite file `mlflow.db` (git-ignored) of the workspace: the working
    directory, or under `dvc exp run --queue / --temp` the workspace DVC copied it from, so that an
    experiment's runs land in the store the user ran it from, never in a copy DVC throws away."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root = os.environ.get(DVC_ROOT_ENV)
    if root and Path(root).resolve() != Path.cwd().resolve():
        return f"sqlite:///{Path(root).resolve() / sqlite_path(DEFAULT_TRACKING_URI)}"
    return DEFAULT_TRACKING_URI


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI (relative to the working directory), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _read_only(uri: str, path: Path | None, why: str, fix: str = "") -> TrackingError:
    where = f"{path.absolute()}: {why}" if path is not None else why
    fix = fix or ("chown/chmod the file and its folder" if path is not None else "ask for write access")
    return TrackingError(
        f"MLflow tracking store {uri} cannot be written ({where}); make it writable for this user "
        f"({fix}) or set MLFLOW_TRACKING_URI to a writable store, e.g. sqlite:////<writable folder>/mlflow.db"
    )


def check_writable(uri: str) -> None:
    """Refuse a SQLite store this process cannot write: its file (or, before it exists, its folder) must
    be writable, and a write transaction must start. Other URIs are checked by their first write."""
    path = sqlite_path(uri)
    if path is None:
        return
    folder = path.parent
    if not folder.is_dir():
        raise _read_only(uri, folder, "not an existing folder", "create the folder")
    for target in (path, folder) if path.exists() else (folder,):
        if not os.access(target, os.W_OK):
            raise _read_only(uri, target, "no write permission")
    if not path.exists():
        return
    try:  # os.access says yes to root, and knows nothing of read-only mounts or broken files: try a write
        con = sqlite3.connect(path, timeout=HEALTH_TIMEOUT_S, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("ROLLBACK")
        finally:
            con.close()
    except sqlite3.Error as err:
        if "locked" not in str(err) and "busy" not in str(err):  # another writer: not our problem
            raise _read_only(uri, path, str(err)) from err


def store_error(uri: str, err: BaseException) -> TrackingError:
    """One line for a failing store call: read-only stores get the fix, others the first line of `err`."""
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    if "readonly" in first.lower() or "read-only" in first.lower():
        return _read_only(uri, sqlite_path(uri), first)
    if "Invalid Host header" in first:
        return TrackingError(
            f"MLflow tracking server {uri} refuses the host name it is reached by (403 Invalid Host header); "
            "start it with --allowed-hosts naming that host (anomaly-spotter server start --allowed-hosts, "
            "or mlflow server --allowed-hosts)"
        )
    return TrackingError(f"MLflow tracking store {uri} cannot be used: {first}")


def store_relative_registered() -> bool:
    """Whether MLflow can read `store-relative:` artifact URIs here (this package's entry point is
    installed: `pip install -e .` registers it)."""
    from mlflow.store.artifact.artifact_repository_registry import get_registered_artifact_repositories

    return STORE_RELATIVE_SCHEME in get_registered_artifact_repositories()


def new_experiment_artifact_location(uri: str, name: str) -> str | None:
    """Where a new experiment keeps its artifacts: on a SQLite store `store-relative:mlruns/<name>`, in
    the store's own folder whichever folder that is later; elsewhere None (the store or server decides)."""
    if sqlite_path(uri) is None:
        return None
    if not store_relative_registered():
        print(
            f"note: MLflow has no '{STORE_RELATIVE_SCHEME}' artifact repository (this package's entry "
            f"point; reinstall it with pip install -e .): experiment {name!r} records absolute artifact "
            "paths of this folder, which a moved or copied clone would not find",
            file=sys.stderr,
        )
        return None
    folder = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    return f"{STORE_RELATIVE_SCHEME}:{LOCAL_ARTIFACT_DIR}/{folder}"


def _sqlite_folder(tracking_uri: str | None) -> Path | None:
    """The absolute folder of the SQLite store a `store-relative:` URI is relative to: the store served
    by this process (`mlflow server` / `mlflow ui`), else the tracking URI given or in use."""
    import mlflow

    for uri in (os.environ.get(SERVER_BACKEND_ENV), tracking_uri, mlflow.get_tracking_uri()):
        path = sqlite_path(uri) if uri else None
        if path is not None:
            return path.absolute().parent
    return None


def store_relative_repository(
    artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None
) -> Any:
    """MLflow artifact repository for `store-relative:<path>` URIs (entry point `mlflow.artifact_repository`):
    the local folder `<path>` inside the folder of the SQLite store in use."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    relative = Path(artifact_uri.split(":", 1)[1])
    if relative.is_absolute() or ".." in relative.parts:
        raise MlflowException(f"{artifact_uri}: a {STORE_RELATIVE_SCHEME}: location must be a relative path")
    folder = _sqlite_folder(tracking_uri)
    if folder is None:
        raise MlflowException(
            f"artifact location {artifact_uri} lies in the folder of a SQLite tracking store (mlflow.db), "
            f"but the tracking URI is {tracking_uri or mlflow_uri()}; set "
            "MLFLOW_TRACKING_URI=sqlite:////<folder of that mlflow.db>/mlflow.db"
        )
    return LocalArtifactRepository(
        (folder / relative).as_uri(), tracking_uri=tracking_uri, registry_uri=registry_uri
    )


def ensure_experiment(name: str) -> str:
    """The id of experiment `name`, created or tagged as a model-training experiment for the MLflow 3 UI
    (an existing `mlflow.experimentKind` is left as it is: someone chose it). A new experiment on a SQLite
    store keeps its artifacts at a location relative to the store (`new_experiment_artifact_location`)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name,
                artifact_location=new_experiment_artifact_location(mlflow.get_tracking_uri(), name),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except MlflowException as err:
            experiment = client.get_experiment_by_name(name)  # created meanwhile by another process?
            if experiment is None:
                raise err from None
    if experiment.lifecycle_stage == "active" and EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def use_experiment(uri: str, name: str) -> str:
    import mlflow

    try:
        experiment_id = ensure_experiment(name)
        mlflow.set_experiment(experiment_id=experiment_id)
    except Exception as err:  # noqa: BLE001 - any store failure is reported with its URI, on one line
        raise store_error(uri, err) from err
    return experiment_id


def check_reachable(uri: str) -> None:
    """A tracking server must answer its health check within HEALTH_TIMEOUT_S, and MLflow's own requests
    give up as fast (no retries for minutes); raises TrackingError naming the URI. Files: nothing to do."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(HEALTH_TIMEOUT_S))
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S) as resp:
            resp.read()
    except (urllib.error.URLError, OSError) as err:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({err}); start it (mlflow server ...) "
            f"or unset MLFLOW_TRACKING_URI to use the local store {DEFAULT_TRACKING_URI}"
        ) from err


def connect() -> str:
    """Point MLflow at the tracking URI and check it answers and can be written; raises TrackingError
    (one line naming the URI and what to do) otherwise."""
    uri = tracking_uri()
    check_reachable(uri)
    check_writable(uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    use_experiment(uri, EXPERIMENT)
    return uri


def use_existing_store(wanted: str, local_hint: str = "") -> str:
    """Point MLflow at the tracking store to read `wanted` from (e.g. "model anomaly-spotter-fabric");
    refuse a SQLite store whose file does not exist (reading must not leave an empty mlflow.db behind)."""
    import mlflow

    store = tracking_uri()
    check_reachable(store)
    path = sqlite_path(store)
    if path is not None and not path.is_file():
        raise TrackingError(
            f"no MLflow tracking store at {store} ({path.absolute()} does not exist) to look up {wanted}; "
            "run from the repository folder that holds mlflow.db or set "
            f"MLFLOW_TRACKING_URI=sqlite:////<absolute path>/mlflow.db{local_hint}"
        )
    mlflow.set_tracking_uri(store)
    return store


def mlflow_uri() -> str:
    """The tracking URI in use (after `connect`), else the configured one."""
    import mlflow

    return mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else tracking_uri()


def connect_for_model(uri: str) -> None:
    """Registry and run URIs need the tracking store (checked within seconds); a local folder does not."""
    if uri.startswith(("models:", "runs:")):
        use_existing_store(uri, ", or pass a local model folder as --model")


# MLflow 3's UI opens every experiment on its GenAI pages (traces, token usage) whatever the experiment's
# kind tag says; this query opens it in "Model training" mode: runs, models, the model registry.
UI_QUERY = "?workflowType=machine_learning"


def ui_url(server: str) -> str:
    """The experiments page of an MLflow UI or tracking server at `server` (http://host:port), in its
    model-training view."""
    return f"{server.rstrip('/')}/#/experiments{UI_QUERY}"
