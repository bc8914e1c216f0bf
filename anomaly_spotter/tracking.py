"""The only module that talks to MLflow: runs, tags, params, metrics, artifacts, models, registry.

Every stage run lands in the experiment `anomaly-spotter`, named `<stage>@<category>` and tagged with
`stage`, `category`, `git_commit` and, downstream of `train`, the registered model name and version it
used. No run id is written into a DVC output (their hashes would change with every run): a stage finds
the upstream run it used by MLflow search on `stage`, `category` and the md5 of the upstream output it
read (`prepared_md5` of data/prepared/<c>, `model_md5` of models/<c>/model.pt), the newest FINISHED
one. That also holds when DVC restores an output from its run cache without running the stage.

The model version in turn gets a tag `run.<stage>` per stage run that evaluated it, so the MLflow
UI leads from any model version to the runs of all six stages. `compute_thresholds` also writes one
summary run per pipeline result into `anomaly-spotter-pipelines`, with every parameter and the headline
metrics (image AUROC, pixel AUROC, F1), one row each, for side-by-side comparison.

Both experiments carry `mlflow.experimentKind = custom_model_development`, so the MLflow 3 UI opens them
in its model-training view. A stage run finds and marks KILLED the runs of the same stage and category
that an interrupted earlier attempt left RUNNING. `connect` refuses a store it cannot write (one line
naming it) before any compute.

Artifact locations never name one clone's folder. On a SQLite store our experiments keep their artifacts
at `store-relative:mlruns/<experiment>` (MLflow itself would record `<clone>/mlruns/<id>`), which
`store_relative_repository` (the `mlflow.artifact_repository` entry point of this package) resolves
against the folder of the SQLite file in use: a copied or moved clone reads its own `mlruns/`. On a
tracking server (`http://...`, e.g. `anomaly-spotter server start`) the server decides: with served
artifacts, `mlflow-artifacts:/...`.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from anomaly_spotter.errors import TrackingError

EXPERIMENT = "anomaly-spotter"
PIPELINES_EXPERIMENT = "anomaly-spotter-pipelines"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MODEL_NAME_PREFIX = "anomaly-spotter"
NETWORK_SUFFIX = "-network"
# Tags naming a stage's input / output by content, so downstream stages find the run (see module doc).
PREPARED_MD5_TAG = "prepared_md5"
MODEL_MD5_TAG = "model_md5"
HEALTH_TIMEOUT_S = 5
MAX_PARAM_LENGTH = 6000
# MLflow 3's UI reads this experiment tag to choose its view (model training vs GenAI traces).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# Files `dvc repro` rewrites in any folder: not "uncommitted changes" to code or parameters.
DVC_WRITTEN_NAMES = frozenset({"dvc.lock", ".gitignore"})
DVC_YAML = "dvc.yaml"
# Tag set on a model version whose creating run was found RUNNING after an interrupted attempt.
KILLED_RUN_TAG = "source_run_killed"
# Tag naming the clone a stage run was started from (host and folder); see `workspace()`.
WORKSPACE_TAG = "workspace"
# Artifact URI scheme of SQLite stores: relative to the store's folder (see `store_relative_repository`).
STORE_RELATIVE_SCHEME = "store-relative"
LOCAL_ARTIFACT_DIR = "mlruns"
# Set by `mlflow server` / `mlflow ui` for their workers: the backend store they serve.
SERVER_BACKEND_ENV = "_MLFLOW_SERVER_FILE_STORE"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, or a SQLite file in the working directory (git-ignored)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def registered_model_name(category: str) -> str:
    """The served pyfunc model of a category (what `promote` moves `champion` on)."""
    return f"{MODEL_NAME_PREFIX}-{category}"


def network_model_name(category: str) -> str:
    """The raw torch network `train` registers (the service model is built from it)."""
    return f"{MODEL_NAME_PREFIX}-{category}{NETWORK_SUFFIX}"


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


def _use_experiment(uri: str, name: str) -> str:
    import mlflow

    try:
        experiment_id = ensure_experiment(name)
        mlflow.set_experiment(experiment_id=experiment_id)
    except Exception as err:  # noqa: BLE001 - any store failure is reported with its URI, on one line
        raise store_error(uri, err) from err
    return experiment_id


def connect() -> str:
    """Point MLflow at the tracking URI and check it answers and can be written; raises TrackingError
    (one line naming the URI and what to do) otherwise."""
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
    check_writable(uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    _use_experiment(uri, EXPERIMENT)
    return uri


def use_existing_store(wanted: str, local_hint: str = "") -> str:
    """Point MLflow at the tracking store to read `wanted` from (e.g. "model anomaly-spotter-fabric");
    refuse a SQLite store whose file does not exist (reading must not leave an empty mlflow.db behind)."""
    import mlflow

    store = tracking_uri()
    path = sqlite_path(store)
    if path is not None and not path.is_file():
        raise TrackingError(
            f"no MLflow tracking store at {store} ({path.absolute()} does not exist) to look up {wanted}; "
            "run from the repository folder that holds mlflow.db or set "
            f"MLFLOW_TRACKING_URI=sqlite:////<absolute path>/mlflow.db{local_hint}"
        )
    mlflow.set_tracking_uri(store)
    return store


def dvc_uncached_outs(dvc_yaml: Path) -> list[str]:
    """Outputs dvc.yaml declares with `cache: false` (committed to git, rewritten by `dvc repro`).

    A templated path (`foreach` stages: `reports/${item}.json`) becomes the prefix before `${` plus `*`.
    Returns [] when dvc.yaml is missing or unreadable.
    """
    import yaml

    try:
        stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    found: list[str] = []
    for stage in stages.values():
        if not isinstance(stage, dict):
            continue
        body = stage.get("do", stage) if isinstance(stage.get("do"), dict) else stage
        for key in ("outs", "metrics", "plots"):
            for entry in body.get(key) or []:
                if not isinstance(entry, dict):
                    continue  # a bare path is cached
                for path, options in entry.items():
                    if isinstance(options, dict) and options.get("cache") is False:
                        path = str(path)
                        if "${" in path:
                            path = path[: path.index("${")] + "*"
                        if path != "*":
                            found.append(path)
    return found


def is_dvc_written(path: str, uncached_outs: Sequence[str]) -> bool:
    """Whether git path `path` is one `dvc repro` rewrites: dvc.lock, a .gitignore, a `cache: false` out."""
    if Path(path).name in DVC_WRITTEN_NAMES:
        return True
    for out in uncached_outs:
        if out.endswith("*"):
            if path.startswith(out[:-1]):
                return True
        elif path == out or path.startswith(out.rstrip("/") + "/"):
            return True
    return False


def _git(args: Sequence[str], cwd: Path | None) -> str:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, check=True, timeout=10, cwd=cwd
    ).stdout


def changed_files(cwd: Path | None = None) -> list[str]:
    """Tracked files with uncommitted changes (staged or not), relative to the repository root."""
    fields = _git(["status", "--porcelain", "-z", "--untracked-files=no"], cwd).split("\0")
    paths: list[str] = []
    it = iter(fields)
    for field in it:
        if len(field) < 4:
            continue
        paths.append(field[3:])
        if "R" in field[:2] or "C" in field[:2]:
            paths.append(next(it, ""))  # the rename's or copy's source follows
    return [p for p in paths if p]


def git_commit(cwd: Path | None = None) -> tuple[str, bool]:
    """(HEAD commit or "unknown", whether tracked files differ from it beyond what `dvc repro` rewrites:
    dvc.lock, .gitignore files and the `cache: false` outputs of dvc.yaml)."""
    try:
        commit, root = _git(["rev-parse", "HEAD", "--show-toplevel"], cwd).splitlines()
        uncached = dvc_uncached_outs(Path(root) / DVC_YAML)
        dirty = any(not is_dvc_written(p, uncached) for p in changed_files(cwd))
        return commit, dirty
    except (OSError, subprocess.SubprocessError, ValueError):
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
    experiment_id = _use_experiment(mlflow.get_tracking_uri(), experiment)
    end_interrupted_runs(experiment_id, stage, category)
    name = f"{stage}@{category}" if category else stage
    all_tags = {
        "stage": stage,
        WORKSPACE_TAG: workspace(),
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


def workspace() -> str:
    """Where this process runs its stages: `<host>:<absolute working directory>`, one clone on one host."""
    return f"{socket.gethostname()}:{Path.cwd().resolve()}"


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


def mlflow_uri() -> str:
    """The tracking URI in use (after `connect`), else the configured one."""
    import mlflow

    return mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else tracking_uri()


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


def model_versions(name: str) -> list[Any]:
    """Every version of registered model `name`, newest (highest-numbered) first; [] when it has none."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        versions = MlflowClient().search_model_versions(f"name = '{name}'")
    except MlflowException as err:
        raise TrackingError(f"cannot list versions of {name!r} in {tracking_uri()}: {err.message}") from err
    return sorted(versions, key=lambda v: int(v.version), reverse=True)


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
