"""What a registered service version was evaluated with: its tags, and the `scores.csv` its `process_all`
run logged (the validation and test images' scores, as the pipeline computed them). The dashboard's version
comparison, `anomaly-spotter monitor` and the line review's drift charts (`log_validations`) read them."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anomaly_spotter.core.errors import TrackingError
from anomaly_spotter.core.scoring import SCORES_FILE
from anomaly_spotter.tracking.runs import download_run_artifact
from anomaly_spotter.tracking.store import mlflow_uri, store_error

# The model version tag naming the `process_all` run that scored it (`tag_model_version`).
PROCESS_ALL_TAG = "run.process_all"
# The version tags `register` sets: the threshold it serves and the share of validation goods above it.
THRESHOLD_TAG = "threshold"
VAL_FALSE_ALARM_TAG = "val_false_alarm_rate"


def run_scores(run_id: str) -> Any:
    """The `scores.csv` run `run_id` logged, as a DataFrame (blank cells stay ""); TrackingError naming
    the run when it cannot be read."""
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        local = download_run_artifact(run_id, SCORES_FILE, Path(tmp))
        return pd.read_csv(local, keep_default_na=False)


def find_model_version_tags(name: str, version: str) -> dict[str, str] | None:
    """The tags of version `version` of registered model `name`, or None when the store has no such
    model or version; TrackingError (one line naming the store) when the store cannot be read."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return dict(MlflowClient().get_model_version(name, str(version)).tags)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise store_error(mlflow_uri(), err) from err
    except Exception as err:  # noqa: BLE001 - any other store failure: one line with the store's URI
        raise store_error(mlflow_uri(), err) from err


def version_process_all_run(name: str, version: str, tags: dict[str, str]) -> str:
    """The `process_all` run of a version from its tags; TrackingError naming the version otherwise."""
    run_id = tags.get(PROCESS_ALL_TAG)
    if not run_id:
        raise TrackingError(
            f"{name} version {version} has no {PROCESS_ALL_TAG} tag in {mlflow_uri()}: the run holding its "
            "validation scores is unknown; register it with the pipeline (dvc repro runs process_all first)"
        )
    return run_id


@dataclass(frozen=True, eq=False)
class VersionValidation:
    """What a registered service version was validated with: the threshold it serves, the share of
    validation good images above it (`val_false_alarm_rate`; None for a version registered before that tag
    existed) and the scores of all the good images held out of its training that the pipeline scored: the
    validation goods and the test goods (`split` val or test, label 0), and of the validation goods alone."""

    threshold: float
    val_false_alarm_rate: float | None
    good_scores: Any  # numpy array of float64
    val_scores: Any = ()  # numpy array of float64: the validation goods among good_scores

    @property
    def expected_rate(self) -> float:
        """The false-alarm rate to expect on the line: the share of the held-out good images (validation
        and test goods) above the threshold. The validation goods alone are few (12 a built-in category)
        and they also fit the model's calibration (border correction, standardisation), so on their own
        they can promise less than new good parts get: on the built-in component, 0 of 12 validation goods
        against 9 of 12 test goods and 15 to 18 of 40 new parts at the recall-target threshold."""
        import numpy as np

        return float(np.mean(np.asarray(self.good_scores) > self.threshold))

    @property
    def val_flagged(self) -> tuple[int, int]:
        """(flagged, all) of the validation goods at the threshold: the counts behind
        `val_false_alarm_rate`, for its interval (`core.metrics.wilson_interval`)."""
        import numpy as np

        scores = np.asarray(self.val_scores)
        return int((scores > self.threshold).sum()), len(scores)


def _tag_float(tags: dict[str, str], key: str) -> float | None:
    try:
        value = float(tags[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def version_validation(name: str, version: str) -> VersionValidation | None:
    """The validation of version `version` of `name` in the store in use, from its tags and the scores.csv
    of its `run.process_all` run; None when the store does not know that version. TrackingError naming the
    version and what to do when it lacks a threshold or its run has no validation goods."""
    import numpy as np

    tags = find_model_version_tags(name, version)
    if tags is None:
        return None
    threshold = _tag_float(tags, THRESHOLD_TAG)
    if threshold is None:
        raise TrackingError(
            f"{name} version {version} has no numeric {THRESHOLD_TAG!r} tag in {mlflow_uri()}; only "
            "service models registered by the pipeline's register stage carry their threshold"
        )
    scores = run_scores(version_process_all_run(name, version, tags))
    missing = [c for c in ("split", "label", "score") if c not in scores.columns]
    if missing:
        raise TrackingError(
            f"the {SCORES_FILE} of {name} version {version}'s process_all run lacks {missing}"
        )
    held_out = scores["split"].astype(str).isin(["val", "test"]) & (scores["label"].astype(int) == 0)
    if not held_out.any():
        raise TrackingError(
            f"{name} version {version}: the {SCORES_FILE} of its process_all run has no held-out good "
            "images (split val or test, label 0); rerun the pipeline with data.val_fraction > 0"
        )
    goods = scores.loc[held_out, "score"].to_numpy(np.float64)
    val = scores.loc[held_out & (scores["split"].astype(str) == "val"), "score"].to_numpy(np.float64)
    return VersionValidation(threshold, _tag_float(tags, VAL_FALSE_ALARM_TAG), goods, val)


def registered_rows(log: Any) -> Any:
    """A scoring log's rows (a DataFrame) scored by a registered model version; a model folder's rows
    (model_name or model_version blank) have no registered validation to compare with."""
    return log[(log["model_name"].astype(str) != "") & (log["model_version"].astype(str) != "")]


def registered_pairs(log: Any) -> list[tuple[str, str]]:
    """The (model_name, model_version) pairs of a scoring log's rows (a DataFrame) scored by a registered
    version, versions in numeric order; rows scored by a model folder (either blank) are skipped."""
    pairs = registered_rows(log)[["model_name", "model_version"]].astype(str).drop_duplicates()
    return sorted(pairs.itertuples(index=False, name=None), key=lambda p: (p[0], _numeric(p[1])))


def _numeric(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def log_validations(log: Any) -> dict[tuple[str, str], VersionValidation | None]:
    """`version_validation` of each registered model version with rows in the scoring log `log` (a
    DataFrame; `registered_pairs`), None for a version the store in use does not know. Point MLflow at the
    store first (`use_existing_store`). TrackingError as `version_validation`."""
    return {(name, version): version_validation(name, version) for name, version in registered_pairs(log)}
