"""Team setup without a server: a SQLite store records no clone's absolute path (a copied or moved clone
reads its own artifacts), and the `anomaly-spotter server` helpers' checks and messages. The real
PostgreSQL + `mlflow server` setup is tests/integration/test_team.py."""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from anomaly_spotter import cli, tracking
from anomaly_spotter.tracking import team
from tests.conftest import skip_without_tool

# artifact locations MLflow records, per table (experiment 0, "Default", is MLflow's own: not ours)
LOCATION_QUERIES = (
    "SELECT artifact_location FROM experiments WHERE experiment_id != 0",
    "SELECT artifact_uri FROM runs",
    "SELECT artifact_location FROM logged_models",
    "SELECT source FROM model_versions",
    "SELECT storage_location FROM model_versions",
)


@pytest.fixture
def restore_mlflow_uri() -> Iterator[None]:
    import mlflow

    old_uri, old_env = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(old_uri)
    if old_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old_env


def _use(folder: Path) -> str:
    import mlflow

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    return uri


def _locations(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [str(row[0]) for query in LOCATION_QUERIES for row in con.execute(query)]
    finally:
        con.close()


def test_copied_or_moved_sqlite_store_reads_its_own_artifacts(
    tmp_path: Path, restore_mlflow_uri: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import torch

    original = tmp_path / "clone"
    original.mkdir()
    monkeypatch.chdir(original)
    _use(original)
    tracking.connect()
    with tracking.stage_run("train", "widget", {"x": 1}) as run:
        (original / "note.txt").write_text("written in the original")
        mlflow.log_artifact(str(original / "note.txt"))
        model = tracking.log_pytorch_model(torch.nn.Linear(2, 1), "widget", np.zeros((1, 2), np.float32))
    run_id = run.info.run_id

    locations = _locations(original / "mlflow.db")
    assert len(locations) == len(LOCATION_QUERIES)  # one experiment, run, logged model, model version
    assert not [loc for loc in locations if str(tmp_path) in loc], locations
    assert mlflow.get_experiment_by_name(tracking.EXPERIMENT).artifact_location == (
        f"{tracking.STORE_RELATIVE_SCHEME}:{tracking.LOCAL_ARTIFACT_DIR}/{tracking.EXPERIMENT}"
    )
    assert (original / "mlruns" / tracking.EXPERIMENT / run_id / "artifacts" / "note.txt").is_file()

    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    # the original's artifacts change and its model goes: the copy must not notice
    (original / "mlruns" / tracking.EXPERIMENT / run_id / "artifacts" / "note.txt").write_text("changed")
    shutil.rmtree(original / "mlruns" / tracking.EXPERIMENT / "models")
    moved = tmp_path / "moved"
    for folder in (copy, moved):
        if folder == moved:
            copy.rename(moved)
        _use(folder)
        note = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="note.txt", dst_path=str(folder)
        )
        assert Path(note).read_text() == "written in the original"
        loaded = mlflow.pytorch.load_model(f"models:/{model['registered_model']}/{model['model_version']}")
        assert loaded(torch.zeros(1, 2)).shape == (1, 1)


def test_store_relative_uri_outside_a_sqlite_store_is_refused(
    restore_mlflow_uri: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.exceptions import MlflowException

    monkeypatch.delenv(tracking.SERVER_BACKEND_ENV, raising=False)
    with pytest.raises(MlflowException, match="must be a relative path"):
        tracking.store_relative_repository("store-relative:../elsewhere")
    import mlflow

    server = "http://127.0.0.1:9"
    os.environ["MLFLOW_TRACKING_URI"] = server
    mlflow.set_tracking_uri(server)
    with pytest.raises(MlflowException, match="set MLFLOW_TRACKING_URI=sqlite:////"):
        tracking.store_relative_repository("store-relative:mlruns/x", tracking_uri=server)


def test_new_experiments_on_a_server_get_no_local_location() -> None:
    assert tracking.new_experiment_artifact_location("http://host:5000", "anomaly-spotter") is None
    assert tracking.new_experiment_artifact_location("sqlite:///mlflow.db", "a b/c") == (
        "store-relative:mlruns/a_b_c"
    )


def _fake_bin(folder: Path, tools: tuple[str, ...] = team.PG_TOOLS) -> Path:
    folder.mkdir(parents=True)
    for tool in tools:
        (folder / tool).write_text("#!/bin/sh\nexit 0\n")
        (folder / tool).chmod(0o755)
    return folder


def test_find_postgres_bin_needs_every_tool(tmp_path: Path) -> None:
    partial = _fake_bin(tmp_path / "partial", ("initdb", "pg_ctl"))
    full = _fake_bin(tmp_path / "full")
    assert team.find_postgres_bin([partial, full]) == full
    found = team.find_postgres_bin([partial])
    assert found != partial  # PATH or /usr/lib/postgresql/*/bin, or None


def test_unreachable_folder_is_refused_naming_it(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    inner = locked / "server"
    inner.mkdir(parents=True)
    locked.chmod(0o700)
    nobody = (65534, 65534)
    with pytest.raises(team.TeamServerError, match=f"cannot enter {locked} .*choose a --dir"):
        team._check_reachable(inner, nobody)


def test_server_commands_on_a_folder_never_set_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for action in ("status", "stop"):
        assert cli.main(["server", action, "--dir", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert f"anomaly-spotter server: error: {tmp_path} holds no server.json" in err


def test_start_in_a_foreign_folder_is_refused(tmp_path: Path) -> None:
    if team.find_postgres_bin() is None:
        skip_without_tool("PostgreSQL is not installed: apt-get install -y postgresql")
    (tmp_path / "something").write_text("x")
    with pytest.raises(team.TeamServerError, match="is not empty and holds no server.json"):
        team.start(tmp_path)


def test_failed_initdb_leaves_the_folder_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first `start` whose initdb fails leaves nothing behind, so the next `start` can set it up."""
    fake = _fake_bin(tmp_path / "bin")
    folder = tmp_path / "server"

    def initdb_fails(bin_dir: Path, tool: str, args: list[str], account: object, **kw: object) -> str:
        raise team.TeamServerError(f"{bin_dir / tool} failed (1):\ninitdb: error: no space left on device")

    monkeypatch.setattr(team, "find_postgres_bin", lambda: fake)
    monkeypatch.setattr(team, "postgres_account", lambda: None)
    monkeypatch.setattr(team, "_pg", initdb_fails)
    with pytest.raises(team.TeamServerError, match="initdb: error: no space left"):
        team.start(folder)
    assert folder.is_dir() and not any(folder.iterdir())


def test_server_command_line_has_no_password(tmp_path: Path) -> None:
    state = team.ServerState("0.0.0.0", 5000, 5433, str(tmp_path / "artifacts"), "/usr/bin", workers=2)
    cmd = team.mlflow_server_command(state)
    assert cmd[1:5] == ["server", "--backend-store-uri", state.backend_store_uri, "--serve-artifacts"]
    assert state.backend_store_uri == "postgresql+psycopg://mlflow@127.0.0.1:5433/mlflow"
    assert ["--artifacts-destination", str(tmp_path / "artifacts")] == cmd[5:7]
    assert state.tracking_uri == "http://127.0.0.1:5000"  # listening everywhere: reach it on loopback here
