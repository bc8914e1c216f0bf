"""The real pipeline on a tiny built-in dataset: real DVC and stages, a temporary SQLite MLflow store.

Checks what the README promises: `dvc repro` builds everything and logs every stage to MLflow with a
registered model per category; a second `dvc repro` runs nothing; a visualize parameter reruns only
visualize; a training parameter reruns train and everything after it, not prepare.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.integration

CATEGORIES = ["fabric", "washer"]
TINY = {
    "data": {"root": "data/builtin", "categories": CATEGORIES, "image_size": 32, "val_fraction": 0.2},
    "builtin": {"image_size": 48, "n_train": 10, "n_test_good": 4, "n_test_per_defect": 2},
    "model": {"name": "unet_ae", "unet_ae": {"encoder_channels": [4, 8, 8], "bottleneck_channels": 8}},
    "train": {"max_epochs": 2, "batch_size": 4, "lr": 1.0e-3},
    "process": {"batch_size": 8},
    "thresholds": {"n_folds": 2},
    "visualize": {"max_per_defect": 1},
}
STAGES = ("prepare", "train", "process_all", "extract_metrics", "compute_thresholds", "visualize", "register")


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def _env(project: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}",
        MLFLOW_DISABLE_TELEMETRY="true",
        DVC_NO_ANALYTICS="1",
        ANOMALY_SPOTTER_PROGRESS="0",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def _run(cmd: list[str], project: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=project, env=_env(project), capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository's pipeline in a fresh git + DVC repo, with tiny parameters."""
    project = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", "stages"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / name)
    # the stages depend on the library's source files: link the package in
    (project / "anomaly_spotter").symlink_to(REPO / "anomaly_spotter")
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny"],
    ):
        _run(cmd, project)
    first = _run(["dvc", "repro"], project)
    (project / "first_repro.log").write_text(first.stdout + first.stderr)
    return project


def test_repro_builds_every_output(project: Path) -> None:
    log = (project / "first_repro.log").read_text()
    per_category = ("prepare", "train", "process_all", "visualize", "register")
    expected = {"generate"} | {f"{s}@{c}" for s in per_category for c in CATEGORIES}
    assert expected | {"extract_metrics", "compute_thresholds"} <= _ran(log)
    metrics = json.loads((project / "metrics/metrics.json").read_text())
    for category in CATEGORIES:
        values = metrics["categories"][category]
        assert 0.0 <= values["image_auroc"] <= 1.0 and 0.0 <= values["pixel_auroc"] <= 1.0
        stats = json.loads((project / f"outputs/{category}/stats.json").read_text())
        assert set(stats) == {category} and "good" in stats[category]
        first = next(iter(stats[category]["good"]))
        assert set(first) == {"image", "mean_score", "max_score", "anomaly_percentage"}
        assert (project / f"plots/{category}/roc.png").stat().st_size > 1000
        assert any((project / f"plots/{category}/examples").glob("*.png"))
    thresholds = json.loads((project / "metrics/thresholds.json").read_text())
    assert set(thresholds) == set(CATEGORIES)
    shown = _run(["dvc", "metrics", "show", "--json"], project).stdout
    assert "image_auroc" in shown


def test_mlflow_has_every_stage_and_a_registered_model_per_category(project: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = MlflowClient()
    runs = mlflow.search_runs(experiment_names=["anomaly-spotter"], output_format="list")
    by_name = {r.info.run_name: r for r in runs}
    for category in CATEGORIES:
        for stage in ("prepare", "train", "process_all", "visualize"):
            run = by_name[f"{stage}@{category}"]
            assert run.data.tags["stage"] == stage and run.data.tags["category"] == category
            assert re.fullmatch(r"[0-9a-f]{40}", run.data.tags["git_commit"])
        train = by_name[f"train@{category}"]
        assert train.data.params["train.max_epochs"] == "2"
        assert train.data.params["model.unet_ae.encoder_channels"] == "[4, 8, 8]"
        assert (
            "fit_seconds" in train.data.metrics
            and len(client.get_metric_history(train.info.run_id, "train_loss")) == 2
        )
        (network,) = client.search_model_versions(f"name = 'anomaly-spotter-{category}-network'")
        assert network.run_id == train.info.run_id
        (version,) = client.search_model_versions(f"name = 'anomaly-spotter-{category}'")
        assert version.run_id == by_name[f"register@{category}"].info.run_id
        assert version.tags["category"] == category and version.tags["data_dvc_hash"].endswith(".dir")
        # from the model version to every stage run that produced or evaluated it
        for stage in STAGES:
            run_id = version.tags[f"run.{stage}"]
            assert client.get_run(run_id).data.tags["stage"] == stage
        assert by_name[f"process_all@{category}"].data.tags["model_version"] == str(network.version)
    metrics_run = by_name["extract_metrics"]
    assert 0.0 <= metrics_run.data.metrics["image_auroc"] <= 1.0
    assert metrics_run.data.params["metrics.aupro_fpr_limit"] == "0.3"
    pipelines = mlflow.search_runs(experiment_names=["anomaly-spotter-pipelines"], output_format="list")
    assert len(pipelines) == 1
    row = pipelines[0]
    assert {"image_auroc", "pixel_auroc", "f1"} <= set(row.data.metrics)
    assert row.data.params["train.lr"] == "0.001" and row.data.params["model.name"] == "unet_ae"


def test_second_repro_runs_nothing(project: Path) -> None:
    out = _run(["dvc", "repro"], project)
    assert _ran(out.stdout) == set(), out.stdout


def _set_param(project: Path, section: str, key: str, value: object) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_visualize_param_reruns_only_visualize(project: Path) -> None:
    _set_param(project, "visualize", "max_per_defect", 2)
    out = _run(["dvc", "repro"], project)
    assert _ran(out.stdout) == {f"visualize@{c}" for c in CATEGORIES}, out.stdout


def test_train_param_reruns_train_and_after_not_prepare(project: Path) -> None:
    _set_param(project, "train", "lr", 0.002)
    ran = _ran(_run(["dvc", "repro"], project).stdout)
    after_train = {f"{s}@{c}" for s in ("train", "process_all", "visualize", "register") for c in CATEGORIES}
    assert after_train | {"extract_metrics", "compute_thresholds"} == ran


def test_unreachable_tracking_server_fails_cleanly(project: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    uri = f"http://127.0.0.1:{port}"
    env = {**_env(project), "MLFLOW_TRACKING_URI": uri}
    shutil.rmtree(project / "data/prepared/fabric")
    result = subprocess.run(
        [sys.executable, "stages/prepare.py", "fabric"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert uri in result.stderr and "unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project / "data/prepared/fabric").exists()
