"""A team's setup, for real: `mlflow server` on PostgreSQL with served artifacts, and a DVC remote.

One PostgreSQL cluster and one `mlflow server` (anomaly_spotter.tracking.team, what `anomaly-spotter server
start` runs) on free loopback ports in a temporary folder, stopped afterwards. Against it:

- two clones of one tiny project (docs/team.md), one working on fabric and one on washer,
  run `dvc repro` at the same time: both finish, every run and model version lands in the server under
  its own clone's `workspace` tag and category, with `mlflow-artifacts:` locations (no clone's path);
- `anomaly-spotter promote` of each category from the *other* clone moves only that category's alias;
  `anomaly-spotter predict` and `mlflow models serve models:/...@champion` score from the server;
- the fabric clone `dvc push`es to a local-folder remote and commits; a third clone `dvc pull`s, and then
  `dvc status` is clean, `dvc repro` runs no stage, `dvc metrics show` prints the same, and the MLflow
  train run behind its pulled model is found in the server by the model's md5.

Skipped, saying why, only where PostgreSQL is not installed (apt-get install -y postgresql; .ci/run does
when it can) or, as root, there is no `postgres` user for it to run as.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from anomaly_spotter.bench import serve as serve_bench
from anomaly_spotter.core.errors import AnomalySpotterError
from anomaly_spotter.tracking import MODEL_MD5_TAG, WORKSPACE_TAG, content_md5, team
from tests.conftest import skip_without_tool
from tests.integration.test_pipeline import TINY, _env, _git, _merge, _ran, _run, new_project
from tests.integration.test_serving import _request, _split

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CATEGORIES = {"a": "fabric", "b": "washer"}  # clone -> the category its user works on
REPRO_TIMEOUT_S = 900
SERVE_TIMEOUT_S = 300  # 12 s alone; 111 s measured beside another test worker's pipeline


def _skip_reason() -> str | None:
    if team.find_postgres_bin() is None:
        return (
            "PostgreSQL is not installed (no initdb / pg_ctl on PATH or in /usr/lib/postgresql/*/bin): "
            "apt-get install -y postgresql (.ci/run installs it when it can)"
        )
    try:
        team.postgres_account()
    except AnomalySpotterError as err:
        return str(err)
    return None


@pytest.fixture(scope="module")
def server() -> Iterator[team.ServerState]:
    """PostgreSQL + `mlflow server` on free loopback ports; both stopped and their folder removed after."""
    reason = _skip_reason()
    if reason:
        skip_without_tool(reason)
    # not under pytest's 0700 tmp folders: as root, PostgreSQL runs as `postgres`, who must reach it
    root = Path(tempfile.mkdtemp(prefix="anomaly-spotter-team-"))
    root.chmod(0o755)
    folder = root / "server"
    try:
        yield team.start(folder, port=serve_bench.free_port(), workers=2)
    finally:
        try:
            if team.load_state(folder) is not None:
                state = team.load_state(folder)
                team.stop(folder)
                assert not team.healthy(state.tracking_uri)
                assert team.status(folder)["postgres"] == "down"
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _team_env(project: Path, uri: str) -> dict[str, str]:
    return {**_env(project), "MLFLOW_TRACKING_URI": uri}


def _team_run(cmd: list[str], project: Path, uri: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, cwd=project, env=_team_env(project, uri), capture_output=True, text=True, timeout=REPRO_TIMEOUT_S
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dvc-remote")


@pytest.fixture(scope="module")
def clones(
    server: team.ServerState, remote: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Two clones of one project with a DVC remote, each on its own category, `dvc repro` at once."""
    tiny = _merge(TINY, {"data": {"categories": [CATEGORIES["a"]]}})
    origin = new_project(tmp_path_factory.mktemp("team-origin"), tiny)
    _run(["dvc", "remote", "add", "-d", "storage", str(remote)], origin)
    _git(origin, "commit", "-qam", "DVC remote")
    found: dict[str, Path] = {}
    for name, category in CATEGORIES.items():
        project = tmp_path_factory.mktemp(f"team-{name}") / "repo"
        _run(["git", "clone", "-q", str(origin), str(project)], origin)
        params = yaml.safe_load((project / "params.yaml").read_text())
        if params["data"]["categories"] != [category]:
            params["data"]["categories"] = [category]
            (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            _git(project, "commit", "-qam", f"work on {category}")
        found[name] = project
    procs = {}
    for name, project in found.items():
        log = (project.parent / "repro.log").open("w")
        procs[name] = (
            subprocess.Popen(
                ["dvc", "repro"],
                cwd=project,
                env=_team_env(project, server.tracking_uri),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            ),
            log,
        )
    try:
        for name, (proc, log) in procs.items():
            code = proc.wait(timeout=REPRO_TIMEOUT_S)
            log.close()
            text = (found[name].parent / "repro.log").read_text()
            assert code == 0, f"dvc repro in clone {name} failed ({code}):\n{text}"
    finally:
        for proc, log in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            log.close()
    return found


def _client(server: team.ServerState):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.tracking_uri, registry_uri=server.tracking_uri)


def test_concurrent_pipelines_land_in_one_server_without_colliding(
    server: team.ServerState, clones: dict[str, Path]
) -> None:
    client = _client(server)
    for name, project in clones.items():
        assert {"generate", f"train@{CATEGORIES[name]}", "compute_thresholds"} <= _ran(
            (project.parent / "repro.log").read_text()
        )
    experiment = client.get_experiment_by_name("anomaly-spotter")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert runs and {r.info.status for r in runs} == {"FINISHED"}
    workspaces = {r.data.tags[WORKSPACE_TAG] for r in runs}
    assert len(workspaces) == 2  # both clones' runs, told apart
    for run in runs:
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
        assert not any(str(p.parent) in run.info.artifact_uri for p in clones.values())
    for name, project in clones.items():
        category = CATEGORIES[name]
        mine = [r for r in runs if r.data.tags[WORKSPACE_TAG].endswith(f":{project.resolve()}")]
        assert {r.data.tags.get("category") for r in mine} == {category, None}  # None: generate & co.
        assert {r.info.run_name for r in mine} >= {f"{s}@{category}" for s in ("train", "register")}
        (network,) = client.search_model_versions(f"name = 'anomaly-spotter-{category}-network'")
        (service,) = client.search_model_versions(f"name = 'anomaly-spotter-{category}'")
        assert service.tags["category"] == category
        assert service.tags[MODEL_MD5_TAG] == content_md5(project / f"models/{category}/model.pt")
        train = client.get_run(service.tags["run.train"])
        assert train.info.run_id == network.run_id
        assert train.data.tags[WORKSPACE_TAG] == mine[0].data.tags[WORKSPACE_TAG]
    pipelines = client.search_runs([client.get_experiment_by_name("anomaly-spotter-pipelines").experiment_id])
    assert len(pipelines) == 2


def test_promote_from_either_clone_touches_one_category(
    server: team.ServerState, clones: dict[str, Path], tmp_path: Path
) -> None:
    client = _client(server)
    aliases = {c: client.get_registered_model(f"anomaly-spotter-{c}").aliases for c in CATEGORIES.values()}
    assert aliases == {c: {} for c in CATEGORIES.values()}
    # the washer clone promotes fabric: only fabric's champion moves
    out = _team_run(["anomaly-spotter", "promote", "--category", "fabric"], clones["b"], server.tracking_uri)
    assert "promoted version 1 to champion" in out.stdout
    assert client.get_registered_model("anomaly-spotter-fabric").aliases == {"champion": "1"}
    assert client.get_registered_model("anomaly-spotter-washer").aliases == {}
    _team_run(["anomaly-spotter", "promote", "--category", "washer"], clones["a"], server.tracking_uri)
    assert client.get_registered_model("anomaly-spotter-washer").aliases == {"champion": "1"}
    assert client.get_registered_model("anomaly-spotter-fabric").aliases == {"champion": "1"}
    # predict from the other clone, with the model from the server, scores as that clone's process_all
    for name, other in (("a", "b"), ("b", "a")):
        category = CATEGORIES[other]
        images = clones[other] / f"data/builtin/{category}/test"
        csv_path = tmp_path / f"{name}.csv"
        _team_run(
            [
                "anomaly-spotter",
                "predict",
                str(images),
                "--model",
                f"models:/anomaly-spotter-{category}@champion",
            ]
            + ["--csv", str(csv_path), "--no-progress"],
            clones[name],
            server.tracking_uri,
        )
        predicted = {Path(r["path"]).resolve(): float(r["score"]) for r in csv.DictReader(csv_path.open())}
        scores = csv.DictReader(io.StringIO((clones[other] / f"outputs/{category}/scores.csv").read_text()))
        expected = {
            (clones[other] / r["image_path"]).resolve(): float(r["score"])
            for r in scores
            if r["split"] == "test"
        }
        assert predicted.keys() == expected.keys() and expected
        assert predicted == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_models_serve_from_the_server(server: team.ServerState, clones: dict[str, Path]) -> None:
    image = next((clones["a"] / "data/builtin/fabric/test").rglob("*.png"))
    env = _team_env(clones["a"], server.tracking_uri)
    model = "models:/anomaly-spotter-fabric@champion"
    log = clones["a"].parent / "serve.log"
    with serve_bench.served(model, log=log, env=env, timeout_s=SERVE_TIMEOUT_S) as url:
        status, body = _request(f"{url}/invocations", _split([image.read_bytes()]))
    assert status == 200, body
    (prediction,) = json.loads(body)["predictions"]
    assert prediction["verdict"] in ("good", "defective")


def test_dvc_push_then_fresh_clone_pull_reproduces_nothing(
    server: team.ServerState, clones: dict[str, Path], remote: Path, tmp_path: Path
) -> None:
    a = clones["a"]
    _run(["dvc", "push"], a)
    assert any(remote.rglob("*"))
    _git(a, "add", "-A")
    _git(a, "commit", "-qm", "fabric results")
    third = tmp_path / "repo"
    _run(["git", "clone", "-q", str(a), str(third)], a)
    uri = server.tracking_uri
    _team_run(["dvc", "pull"], third, uri)
    status = _team_run(["dvc", "status"], third, uri).stdout
    assert "Data and pipelines are up to date" in status, status
    repro = _team_run(["dvc", "repro"], third, uri)
    assert _ran(repro.stdout) == set(), repro.stdout
    metrics = _team_run(["dvc", "metrics", "show"], third, uri).stdout
    assert metrics == _run(["dvc", "metrics", "show"], a).stdout and "fabric" in metrics
    assert _git(third, "status", "--porcelain") == ""
    # the run records travel with the server: the pulled model's train run is found by its md5
    md5 = content_md5(third / "models/fabric/model.pt")
    client = _client(server)
    experiment = client.get_experiment_by_name("anomaly-spotter")
    (train,) = client.search_runs(
        [experiment.experiment_id], f"tags.stage = 'train' and tags.{MODEL_MD5_TAG} = '{md5}'"
    )
    assert train.data.tags["category"] == "fabric"
    assert train.data.tags[WORKSPACE_TAG].endswith(f":{a.resolve()}")


def test_server_cli_reports_status(server: team.ServerState) -> None:
    folder = Path(server.artifacts_destination).parent
    result = subprocess.run(
        [sys.executable, "-m", "anomaly_spotter.cli", "server", "status", "--dir", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"tracking_uri: {server.tracking_uri}" in result.stdout
    assert "mlflow_server: up" in result.stdout and "postgres: up" in result.stdout


def test_mlflows_database_role_is_not_a_superuser(server: team.ServerState) -> None:
    """mlflow server logs in as `mlflow`, which owns its database and nothing more; `admin` set it up."""
    folder = Path(server.artifacts_destination).parent
    env = {**os.environ, "PGPASSWORD": (folder / team.PG_PASSWORD_FILE).read_text().strip()}
    query = "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user"
    result = subprocess.run(
        [str(Path(server.bin_dir) / "psql"), "-h", "127.0.0.1", "-p", str(server.pg_port), "-U", team.DB_USER]
        + [team.DB_NAME, "-At", "-c", query],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "f|f|f"
    assert (folder / team.ADMIN_PASSWORD_FILE).stat().st_mode & 0o777 == 0o600
