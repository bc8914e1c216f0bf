"""The only package that talks to MLflow: the store (`store`), stage runs (`runs`), lineage by content md5
(`lineage`), git/DVC provenance (`provenance`), the model registry (`registry`) and promotion
(`promotion`); `team` runs a team's shared tracking server. The names below are re-exported here.

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

from anomaly_spotter.tracking.lineage import (  # noqa: F401
    MODEL_MD5_TAG,
    PREPARED_MD5_TAG,
    category_models,
    content_md5,
    find_stage_run,
    model_tags,
    network_ref,
    note_missing_run,
    prepare_run,
    train_run,
)
from anomaly_spotter.tracking.provenance import (  # noqa: F401
    DVC_EXPERIMENT_ENV,
    DVC_WRITTEN_NAMES,
    DVC_YAML,
    changed_files,
    data_dvc_hash,
    dvc_experiment,
    dvc_uncached_outs,
    git_commit,
    is_dvc_written,
    workspace,
)
from anomaly_spotter.tracking.registry import (  # noqa: F401
    CHALLENGER,
    CHAMPION,
    MODEL_NAME_PREFIX,
    NETWORK_SUFFIX,
    current_user,
    delete_alias,
    latest_model_version,
    log_pytorch_model,
    model_identity,
    model_version_by_alias,
    model_version_tags,
    model_versions,
    network_model_name,
    newest_version_with_tag,
    pip_requirements,
    registered_model_name,
    set_alias,
    set_model_version_description,
    set_model_version_tags,
    tag_model_version,
)
from anomaly_spotter.tracking.runs import (  # noqa: F401
    DVC_EXPERIMENT_TAG,
    KILLED_RUN_TAG,
    MAX_PARAM_LENGTH,
    RUN_TAGS,
    WORKSPACE_TAG,
    add_run_tags,
    download_run_artifact,
    end_interrupted_runs,
    log_artifacts,
    log_history,
    log_metrics,
    set_run_tags,
    stage_run,
)
from anomaly_spotter.tracking.store import (  # noqa: F401
    DEFAULT_TRACKING_URI,
    EXPERIMENT,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    HEALTH_TIMEOUT_S,
    LOCAL_ARTIFACT_DIR,
    PIPELINES_EXPERIMENT,
    SERVER_BACKEND_ENV,
    STORE_RELATIVE_SCHEME,
    UI_QUERY,
    check_reachable,
    check_writable,
    connect,
    connect_for_model,
    ensure_experiment,
    mlflow_uri,
    new_experiment_artifact_location,
    sqlite_path,
    store_error,
    store_relative_registered,
    store_relative_repository,
    tracking_uri,
    ui_url,
    use_existing_store,
    use_experiment,
)
