"""tracking.py's reproducibility contract on temporary SQLite stores and git repositories: experiment
kind, the git_dirty rule, interrupted runs marked KILLED, and unwritable stores refused in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from anomaly_spotter import tracking
from anomaly_spotter.core.errors import TrackingError
from anomaly_spotter.pipeline import stage

NOBODY = 65534


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh SQLite store in tmp_path (also the working directory); MLflow's URI is restored after."""
    import mlflow

    old_uri, old_env = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    mlflow.set_tracking_uri(old_uri)
    if old_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old_env


def _kind(name: str) -> str | None:
    from mlflow import MlflowClient

    return MlflowClient().get_experiment_by_name(name).tags.get("mlflow.experimentKind")


def test_experiments_are_model_training_kind(store: str) -> None:
    """New and existing (untagged) experiments get mlflow.experimentKind; a chosen kind is kept."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(store)
    client = MlflowClient()
    client.create_experiment(tracking.PIPELINES_EXPERIMENT)  # existing, without the tag
    client.create_experiment("someone-else", tags={"mlflow.experimentKind": "genai_development"})
    assert _kind(tracking.PIPELINES_EXPERIMENT) is None

    assert tracking.connect() == store
    assert _kind(tracking.EXPERIMENT) == "custom_model_development"
    with tracking.stage_run("pipeline", None, {}, experiment=tracking.PIPELINES_EXPERIMENT) as run:
        pass
    assert _kind(tracking.PIPELINES_EXPERIMENT) == "custom_model_development"
    assert client.get_run(run.info.run_id).info.experiment_id == (
        client.get_experiment_by_name(tracking.PIPELINES_EXPERIMENT).experiment_id
    )
    tracking.ensure_experiment("someone-else")
    assert _kind("someone-else") == "genai_development"


# --------------------------------------------------------------------------------------------------
# git_dirty
# --------------------------------------------------------------------------------------------------

DVC_YAML = """stages:
  report:
    foreach: [a, b]
    do:
      cmd: python report.py ${item}
      outs:
        - data/${item}
        - reports/${item}/summary.json:
            cache: false
  score:
    cmd: python score.py
    outs:
      - scores/table.csv
    metrics:
      - metrics/scores.json:
          cache: false
    plots:
      - plots/curve.csv:
          cache: false
      - plots/big.png
"""


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def test_dvc_uncached_outs(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    assert sorted(tracking.dvc_uncached_outs(tmp_path / "dvc.yaml")) == [
        "metrics/scores.json",
        "plots/curve.csv",
        "reports/*",
    ]
    assert tracking.dvc_uncached_outs(tmp_path / "missing.yaml") == []
    assert tracking.is_dvc_written("reports/a/summary.json", ["reports/*"])
    assert tracking.is_dvc_written("metrics/scores.json", ["metrics/scores.json"])
    assert not tracking.is_dvc_written("metrics/scores.json.bak", ["metrics/scores.json"])
    assert tracking.is_dvc_written("models/a/.gitignore", []) and tracking.is_dvc_written("dvc.lock", [])


def test_git_dirty_ignores_what_dvc_repro_rewrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dvc.lock, .gitignore files and cache:false outputs changed: clean; code or params changed: dirty."""
    repo = tmp_path / "repo"
    files = {
        "dvc.yaml": DVC_YAML,
        "dvc.lock": "schema: '2.0'\n",
        ".gitignore": "mlflow.db\n",
        "data/.gitignore": "/a\n",
        "metrics/scores.json": "{}\n",
        "plots/curve.csv": "x,y\n",
        "reports/a/summary.json": "{}\n",
        "params.yaml": "seed: 0\n",
        "src.py": "print(1)\n",
    }
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "init")
    monkeypatch.chdir(repo)  # stages run in the repository root

    commit, dirty = tracking.git_commit()
    assert len(commit) == 40 and not dirty

    for name in ("dvc.lock", ".gitignore", "data/.gitignore", "metrics/scores.json", "plots/curve.csv"):
        (repo / name).write_text(files[name] + "changed by dvc repro\n")
    (repo / "reports/a/summary.json").write_text('{"auroc": 1}\n')
    (repo / "untracked.txt").write_text("not tracked\n")
    assert tracking.git_commit() == (commit, False)
    assert set(tracking.changed_files()) == {
        "dvc.lock",
        ".gitignore",
        "data/.gitignore",
        "metrics/scores.json",
        "plots/curve.csv",
        "reports/a/summary.json",
    }

    (repo / "params.yaml").write_text("seed: 1\n")
    assert tracking.git_commit() == (commit, True)
    _git(repo, "checkout", "-q", "params.yaml")
    _git(repo, "mv", "src.py", "main.py")  # a staged rename is a change too
    assert tracking.git_commit() == (commit, True)
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    assert tracking.git_commit(outside) == ("unknown", False)


# --------------------------------------------------------------------------------------------------
# interrupted runs
# --------------------------------------------------------------------------------------------------


def test_stage_run_kills_interrupted_runs_of_its_own_stage_and_category(store: str) -> None:
    import mlflow
    from mlflow import MlflowClient

    tracking.connect()
    client = MlflowClient()
    exp = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id

    def running(**tags: str) -> str:
        return client.create_run(exp, tags={tracking.WORKSPACE_TAG: tracking.workspace(), **tags}).info.run_id

    stale = running(stage="train", category="a")
    other_clone = running(stage="train", category="a", workspace="teammate-host:/home/them/anomaly-spotter")
    other_category = running(stage="train", category="b")
    other_stage = running(stage="process_all", category="a")
    finished = running(stage="train", category="a")
    client.set_terminated(finished, "FINISHED")
    no_category = running(stage="compute_thresholds")
    pending = mlflow.initialize_logged_model(name="model", source_run_id=stale, experiment_id=exp)
    client.create_registered_model("net-a")
    version = client.create_model_version("net-a", f"runs:/{stale}/model", run_id=stale).version

    with tracking.stage_run("train", "a", {"seed": 0}) as run:
        own = run.info.run_id
        assert client.get_run(stale).info.status == "KILLED"

    def status(run_id: str) -> str:
        return client.get_run(run_id).info.status

    assert status(stale) == "KILLED"
    assert status(own) == "FINISHED" and status(finished) == "FINISHED"
    assert status(other_category) == "RUNNING" and status(other_stage) == "RUNNING"
    assert status(no_category) == "RUNNING"
    assert status(other_clone) == "RUNNING"  # a teammate's run on a shared server: theirs to end
    assert client.get_run(own).data.tags[tracking.WORKSPACE_TAG] == tracking.workspace()
    assert str(client.get_logged_model(pending.model_id).status) == "FAILED"
    assert client.get_model_version("net-a", version).tags[tracking.KILLED_RUN_TAG] == "true"

    # a stage without category: only runs without a category tag
    with tracking.stage_run("compute_thresholds", None, {}):
        pass
    assert status(no_category) == "KILLED"
    assert status(other_category) == "RUNNING" and status(other_stage) == "RUNNING"


# --------------------------------------------------------------------------------------------------
# unwritable stores
# --------------------------------------------------------------------------------------------------


def _one_line(message: str) -> str:
    assert "\n" not in message.strip(), message
    return message


def _unprivileged(fn: Callable[[], str]) -> str:
    """fn() in this process, or, when we are root (who may write any file), in a child run as `nobody`."""
    if os.geteuid() != 0:
        return fn()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        os.close(read_end)
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        except OSError as err:
            result = f"SKIP: cannot drop root privileges here ({err})"
        else:
            try:
                result = fn()
            except BaseException as err:  # noqa: BLE001 - reported to the parent
                result = f"child failed: {err!r}"
        os.write(write_end, result.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        result = pipe.read().decode()
    os.waitpid(pid, 0)
    if result.startswith("SKIP: "):
        pytest.skip(result.removeprefix("SKIP: "))
    return result


def test_connect_refuses_read_only_sqlite_file(store: str) -> None:
    """A store another user owns (chmod a-w; as root the check runs as `nobody`): one line, no write."""
    import mlflow

    tracking.connect()  # creates the store
    folder = Path(tempfile.mkdtemp(prefix="ro-store-"))  # /tmp/pytest-of-root is closed to `nobody`
    try:
        db = folder / "mlflow.db"
        shutil.copy(store.removeprefix("sqlite:///"), db)
        uri = f"sqlite:///{db}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        mlflow.set_tracking_uri(uri)  # also what a child process inherits
        before = db.read_bytes()
        db.chmod(0o444)
        folder.chmod(0o555)

        def attempt() -> str:
            assert os.access(db, os.R_OK), "the test store must be readable, only not writable"
            try:
                tracking.connect()
            except TrackingError as err:
                return str(err)
            return "connect() accepted a read-only store"

        message = _one_line(_unprivileged(attempt))
        assert message.startswith(f"MLflow tracking store {uri} cannot be written ({db}")
        assert "MLFLOW_TRACKING_URI" in message and "chmod" in message
        assert db.read_bytes() == before
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


def test_connect_refuses_store_in_missing_folder_or_unopenable_file(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unwritable even for root: the folder is a file; the database 'file' is a folder."""
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}")
    with pytest.raises(TrackingError) as info:
        tracking.connect()
    assert _one_line(str(info.value)).startswith("MLflow tracking store sqlite:///")
    assert f"{tmp_path / 'a-file'}: not an existing folder" in str(info.value)

    (tmp_path / "dir.db").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'dir.db'}")
    with pytest.raises(TrackingError) as info:
        tracking.connect()
    assert "cannot be written" in _one_line(str(info.value)) and str(tmp_path / "dir.db") in str(info.value)


def test_failing_store_write_is_one_line(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write the store rejects (e.g. SQLite's 'readonly database') becomes one TrackingError line."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    def refuse(*args: object, **kwargs: object) -> str:
        raise MlflowException(
            "(sqlite3.OperationalError) attempt to write a readonly database\n"
            "[SQL: INSERT INTO experiments (name) VALUES (?)]\n(Background on this error at: ...)"
        )

    monkeypatch.setattr(SqlAlchemyStore, "create_experiment", refuse)  # the store rejects the write
    with pytest.raises(TrackingError) as info:
        tracking.connect()
    message = _one_line(str(info.value))
    assert message.startswith(f"MLflow tracking store {store} cannot be written")
    assert "attempt to write a readonly database" in message and "[SQL" not in message


def test_stage_with_unwritable_store_exits_with_one_line_before_compute(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}")
    computed: list[int] = []

    def body() -> None:
        with stage.stage_outputs(tmp_path / "out"):
            computed.append(1)

    with pytest.raises(SystemExit) as info:
        stage.main("train", body)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert _one_line(err).startswith("train: error: MLflow tracking store sqlite:///")
    assert computed == [] and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# finding upstream runs by content (no run id inside DVC outputs)
# --------------------------------------------------------------------------------------------------


def test_content_md5_of_file_and_folder(tmp_path: Path) -> None:
    import hashlib

    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("b")
    (tmp_path / "d" / "sub" / "a.txt").write_text("a")
    assert tracking.content_md5(tmp_path / "d" / "b.txt") == hashlib.md5(b"b").hexdigest()
    lines = f"b.txt {hashlib.md5(b'b').hexdigest()}\nsub/a.txt {hashlib.md5(b'a').hexdigest()}"
    folder = tracking.content_md5(tmp_path / "d")
    assert folder == hashlib.md5(lines.encode()).hexdigest()
    (tmp_path / "d" / "sub" / "a.txt").write_text("A")
    assert tracking.content_md5(tmp_path / "d") != folder
    with pytest.raises(TrackingError, match="missing: not found; run the stage that writes it"):
        tracking.content_md5(tmp_path / "missing")


def test_train_run_is_found_by_model_md5(store: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The newest FINISHED train run of the category whose model_md5 matches; others are ignored. A model
    no run wrote is recorded by md5 alone, with a note."""
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights v1")
    md5 = tracking.content_md5(model)
    tracking.connect()

    def train(category: str, model_md5: str, version: str, fail: bool = False) -> str:
        try:
            with tracking.stage_run("train", category, {}) as run:
                tracking.set_run_tags(
                    {"registered_model": f"net-{category}", "model_version": version, "model_md5": model_md5}
                )
                if fail:
                    raise RuntimeError("interrupted")
        except RuntimeError:
            pass
        return run.info.run_id

    train("a", md5, "1")
    newest = train("a", md5, "2")  # the same bytes again (deterministic training)
    train("a", md5, "3", fail=True)  # FAILED: not a source
    train("b", md5, "7")  # another category
    train("a", "0" * 32, "4")  # another model
    found = tracking.train_run("a", model)
    assert found == {"run_id": newest, "registered_model": "net-a", "model_version": "2", "model_md5": md5}
    assert tracking.model_tags(found)["train_run_id"] == newest

    # bytes no run here wrote (pulled, from DVC's run cache): lineage by md5 alone, one note, no error
    model.write_bytes(b"weights from elsewhere")
    pulled = tracking.train_run("a", model)
    other = tracking.content_md5(model)
    assert pulled == {"run_id": None, "registered_model": None, "model_version": None, "model_md5": other}
    assert tracking.model_tags(pulled) == {"model_md5": other}
    assert tracking.network_ref(pulled) is None and tracking.network_ref(found) == "net-a/2"
    note = capsys.readouterr().err.strip().splitlines()[-1]  # after MLflow's own log lines
    assert note.startswith(f"note: {model} (md5 {other}) has no train@a run in sqlite:")
    assert note.endswith("lineage is recorded by md5 only") and "\n" not in note
    tracking.tag_model_version(pulled, "process_all", newest)  # no version to tag: nothing, no error


def test_stage_runs_record_the_lock_and_the_drift_from_it(store: str, tmp_path: Path) -> None:
    import hashlib
    from importlib.metadata import version

    import mlflow

    (tmp_path / "requirements.lock").write_text("numpy==0.0.1\n")  # the working directory's lock
    tracking.connect()
    with tracking.stage_run("prepare", "a", {}) as run:
        pass
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["env.lock_md5"] == hashlib.md5(b"numpy==0.0.1\n").hexdigest()
    assert tags["env.lock_drift"] == f"numpy {version('numpy')} (lock 0.0.1)"


def test_runs_of_a_dvc_experiment_carry_its_name(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.setenv("DVC_EXP_NAME", "shaky-bass")  # what `dvc exp run` sets for its stages
    tracking.connect()
    with tracking.stage_run("prepare", "a", {}) as run:
        pass
    with tracking.stage_run(
        "pipeline", None, {}, experiment=tracking.PIPELINES_EXPERIMENT, run_name=tracking.dvc_experiment()
    ) as summary:
        pass
    assert mlflow.get_run(run.info.run_id).data.tags[tracking.DVC_EXPERIMENT_TAG] == "shaky-bass"
    assert mlflow.get_run(summary.info.run_id).info.run_name == "shaky-bass"
    monkeypatch.delenv("DVC_EXP_NAME")
    with tracking.stage_run("prepare", "a", {}) as plain:
        pass
    assert tracking.DVC_EXPERIMENT_TAG not in mlflow.get_run(plain.info.run_id).data.tags
