"""Fault suite: the tiny pipeline (one category) under the faults a user meets, with real DVC and MLflow.

One module-scoped project (a copy of this repository's pipeline and code with tiny params, as in
test_pipeline.py) goes through, in order:

- `dvc repro` killed with SIGKILL (whole process group) while `train@fabric` has its MLflow run open,
  then a second `dvc repro` killed once `process_all@fabric` has started writing its outputs (or opened
  its MLflow run); a plain third `dvc repro` (no user action in between: DVC drops the dead process
  from its lock files itself) finishes with complete, consistent outputs, `dvc status` clean and no
  MLflow run left RUNNING (the interrupted ones are marked KILLED by the next run of their stage);
- two `dvc repro` at once in the clone: the second is refused with one of DVC's lock errors and runs
  nothing, the first finishes intact;
- an unreachable tracking server and a read-only tracking store: the stage that needs to run fails at
  once with one line naming the store, writes nothing, leaves dvc.lock and the store as they were; with
  the store back, `dvc repro` finishes.

And a served model (tests/integration/test_serving.py's server) answers 50 concurrent requests on
loopback (every fifth one not an image: 400), each valid one with its own image's score, and is still
up afterwards; the benchmark command (`python -m anomaly_spotter.bench.serve --model ...`) starts its
own server, prints p50/p95 latency and throughput, and stops it.

No test asserts a time; subprocess timeouts only turn a hang into a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from anomaly_spotter.bench import serve as serve_bench
from tests.integration.test_pipeline import (
    TINY,
    _env,
    _merge,
    _ran,
    _run,
    _set_param,
    new_project,
)
from tests.integration.test_serving import _request, server, store  # noqa: F401 - fixtures
from tests.unit.test_cli import NAME, ServiceStore

pytestmark = pytest.mark.integration

CATEGORY = "fabric"
REPRO_TIMEOUT_S = 600
FAIL_TIMEOUT_S = 180  # a stage refusing a store must not hang (MLflow's HTTP retries are turned off)
POLL_S = 0.02
CONCURRENT_REQUESTS = 50


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _run_statuses(project: Path, run_name: str) -> list[str]:
    """Statuses of the MLflow runs named `run_name`, for polling while a stage runs: no store yet, no
    tables yet, or a writer holding the file reads as no runs (look again). After a kill, read with
    `_all_statuses`, which raises instead."""
    if not (project / "mlflow.db").exists():
        return []
    try:
        return _all_statuses(project, timeout=1).get(run_name, [])
    except sqlite3.Error:
        return []


def _dvc_writers(project: Path) -> dict[str, int]:
    """Paths DVC has write-locked for a running stage (.dvc/tmp/rwlock) -> the holding dvc's pid."""
    try:
        lock = json.loads((project / ".dvc/tmp/rwlock").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {path: int(info["pid"]) for path, info in (lock.get("write") or {}).items()}


def _kill_repro_when(project: Path, ready: Callable[[], bool], log: Path) -> str:
    """Start `dvc repro` in its own process group; SIGKILL the whole group (dvc and the stage) as soon as
    `ready()`; returns what it printed. Fails if the repro ends on its own first."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["dvc", "repro"],
            cwd=project,
            env=_env(project),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + REPRO_TIMEOUT_S
            while not ready():
                assert proc.poll() is None, f"dvc repro ended ({proc.returncode}) first:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"not ready in {REPRO_TIMEOUT_S}s:\n{log.read_text()}"
                time.sleep(POLL_S)
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return log.read_text()


def _locked_stages(project: Path) -> set[str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text()) if (project / "dvc.lock").exists() else {}
    return set((lock or {}).get("stages") or {})


def _all_statuses(project: Path, timeout: float = 5.0) -> dict[str, list[str]]:
    """Run name -> statuses (oldest first) in the project's SQLite store.

    Not a `mode=ro` connection: a stage killed inside a write transaction leaves a hot journal, which a
    read-only connection cannot roll back ("attempt to write a readonly database"), so the committed
    RUNNING row would read as no rows at all. A plain connection rolls it back first, as MLflow's own
    next connection does; while the writer lives its lock keeps the journal from counting as hot."""
    con = sqlite3.connect(project / "mlflow.db", timeout=timeout)
    try:
        rows = con.execute("SELECT name, status FROM runs ORDER BY start_time").fetchall()
    finally:
        con.close()
    found: dict[str, list[str]] = {}
    for name, status in rows:
        found.setdefault(name, []).append(status)
    return found


def _assert_complete(project: Path) -> None:
    """Every output of the pipeline there, `dvc status` clean, no MLflow run RUNNING, and the runs
    linked by the content of the files now in the workspace."""
    import mlflow

    from anomaly_spotter.detectors import load_detector
    from anomaly_spotter.tracking import content_md5

    assert json.loads(_run(["dvc", "status", "--json"], project).stdout) == {}
    load_detector(project / f"models/{CATEGORY}/model.pt")  # a whole, loadable model file
    for name in ("scores.csv", "stats.json", "region.json"):
        assert (project / f"outputs/{CATEGORY}/{name}").stat().st_size > 0, name
    metrics = json.loads((project / "metrics/metrics.json").read_text())
    assert 0.0 <= metrics["categories"][CATEGORY]["image_auroc"] <= 1.0
    assert json.loads((project / f"registry/{CATEGORY}.json").read_text())["registered_model"]
    assert (project / f"plots/{CATEGORY}/roc.png").stat().st_size > 1000
    statuses = _all_statuses(project)
    assert not [name for name, s in statuses.items() if "RUNNING" in s], statuses
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(
        experiment_names=["anomaly-spotter"],
        filter_string="attributes.status = 'FINISHED'",
        output_format="list",
    )
    newest = {}
    for run in sorted(runs, key=lambda r: r.info.start_time):
        newest[run.info.run_name] = run
    md5 = content_md5(project / f"models/{CATEGORY}/model.pt")
    assert newest[f"train@{CATEGORY}"].data.tags["model_md5"] == md5
    assert newest[f"process_all@{CATEGORY}"].data.tags["model_md5"] == md5


def _one_error_line(stderr: str, stage: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(f"{stage}: error: ")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fault-logs")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC repository with this repository's pipeline and code, tiny params, one category; no
    `dvc repro` run yet."""
    project = tmp_path_factory.mktemp("faults") / "repo"
    project.mkdir()
    return new_project(project, _merge(TINY, {"data": {"categories": [CATEGORY]}}))


@pytest.fixture(scope="module")
def recovered(project: Path, logs: Path) -> dict[str, object]:
    """`dvc repro` killed during train, again during process_all, then a plain `dvc repro`."""
    train_run = f"train@{CATEGORY}"
    killed_train = _kill_repro_when(
        project, lambda: "RUNNING" in _run_statuses(project, train_run), logs / "kill_train.log"
    )
    # after the kill nobody writes: read strictly (an error fails here rather than reading as no runs)
    after_train_kill = {
        "locked": _locked_stages(project),
        "statuses": _all_statuses(project).get(train_run, []),
    }

    outputs = project / f"outputs/{CATEGORY}"
    process_run = f"process_all@{CATEGORY}"

    def process_all_writing() -> bool:
        return outputs.exists() or "RUNNING" in _run_statuses(project, process_run)

    killed_process = _kill_repro_when(project, process_all_writing, logs / "kill_process_all.log")
    after_process_kill = {
        "locked": _locked_stages(project),
        "statuses": _all_statuses(project).get(process_run, []),
        "outputs": sorted(p.name for p in outputs.iterdir()) if outputs.is_dir() else [],
    }
    final = _run(["dvc", "repro"], project)
    (logs / "recover.log").write_text(final.stdout + final.stderr)
    return {
        "killed_train": killed_train,
        "after_train_kill": after_train_kill,
        "killed_process": killed_process,
        "after_process_kill": after_process_kill,
        "final": final,
    }


# --------------------------------------------------------------------------------------------------
# kill -9
# --------------------------------------------------------------------------------------------------


def test_kill_during_train_then_repro_completes(project: Path, recovered: dict) -> None:
    after = recovered["after_train_kill"]
    assert "Running stage 'train@fabric'" in recovered["killed_train"]
    assert f"train@{CATEGORY}" not in after["locked"]  # killed before DVC recorded it
    assert after["statuses"] == ["RUNNING"]  # the killed stage could not end its MLflow run
    # the next repro reran train (it was never recorded) and its run marked the orphan KILLED
    assert "Running stage 'train@fabric'" in recovered["killed_process"]
    assert "marked 1 run(s) left RUNNING by an interrupted attempt as KILLED" in recovered["killed_process"]
    statuses = _run_statuses(project, f"train@{CATEGORY}")
    assert sorted(statuses) == ["FINISHED", "KILLED"]
    _assert_complete(project)


def test_kill_during_process_all_then_repro_completes(project: Path, recovered: dict) -> None:
    after = recovered["after_process_kill"]
    assert f"train@{CATEGORY}" in after["locked"] and f"process_all@{CATEGORY}" not in after["locked"]
    final = recovered["final"].stdout
    # the third repro needs no user action (DVC drops the dead dvc from its lock files) and reruns
    # exactly the killed stage and what follows it
    assert _ran(final) == {
        f"process_all@{CATEGORY}",
        "extract_metrics",
        "compute_thresholds",
        f"register@{CATEGORY}",
        f"visualize@{CATEGORY}",
    }, final
    statuses = _run_statuses(project, f"process_all@{CATEGORY}")
    assert statuses[-1] == "FINISHED" and set(statuses[:-1]) <= {"KILLED"}
    assert len(statuses) == len(after["statuses"]) + 1
    if after["statuses"]:  # killed with its run open: the rerun marked it KILLED
        assert "marked 1 run(s) left RUNNING" in recovered["final"].stderr
    _assert_complete(project)


# --------------------------------------------------------------------------------------------------
# two dvc repro at once
# --------------------------------------------------------------------------------------------------


def test_second_concurrent_repro_is_refused_and_first_completes(
    project: Path, recovered: dict, logs: Path
) -> None:
    _set_param(project, "process.batch_size", 4)  # reruns process_all and everything after it
    log = logs / "first_concurrent.log"
    with log.open("w") as out:
        first = subprocess.Popen(
            ["dvc", "repro"], cwd=project, env=_env(project), stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + REPRO_TIMEOUT_S
            while first.pid not in _dvc_writers(project).values():  # the first is running a stage
                assert first.poll() is None, log.read_text()
                assert time.monotonic() < deadline
                time.sleep(POLL_S)
            second = subprocess.run(
                ["dvc", "repro"],
                cwd=project,
                env=_env(project),
                capture_output=True,
                text=True,
                timeout=FAIL_TIMEOUT_S,
            )
            still_running = first.poll() is None
            first.wait(timeout=REPRO_TIMEOUT_S)
        finally:
            if first.poll() is None:
                first.kill()
    assert still_running, "the first repro ended before the second tried: nothing was concurrent"
    assert second.returncode != 0
    # DVC holds its repository lock while it plans and records, and per-path locks (.dvc/tmp/rwlock) on
    # the deps and outs of the stage it runs (it lets go of the repository lock while a command runs):
    # the second meets one or the other, on the first stage that is not already up to date
    refused = re.compile(rf"Unable to acquire lock|is busy, it is being blocked by:\s+\(PID {first.pid}\)")
    assert refused.search(second.stderr), second.stderr
    assert _ran(second.stdout) == set()
    output = log.read_text()
    assert first.returncode == 0, output
    assert f"process_all@{CATEGORY}" in _ran(output)
    _assert_complete(project)


# --------------------------------------------------------------------------------------------------
# unreachable / read-only tracking store
# --------------------------------------------------------------------------------------------------


def _snapshot(project: Path) -> dict[str, object]:
    return {
        "lock": (project / "dvc.lock").read_text(),
        "ran_runs": sum(len(s) for s in _all_statuses(project).values()),
    }


def test_unreachable_tracking_server_fails_fast_and_writes_nothing(project: Path, recovered: dict) -> None:
    _set_param(project, "visualize.max_per_defect", 2)  # visualize@fabric has to run
    before = _snapshot(project)
    uri = f"http://127.0.0.1:{serve_bench.free_port()}"
    result = subprocess.run(
        ["dvc", "repro"],
        cwd=project,
        env={**_env(project), "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=FAIL_TIMEOUT_S,
    )
    assert result.returncode != 0
    assert _ran(result.stdout) == {f"visualize@{CATEGORY}"}
    line = _one_error_line(result.stderr, "visualize")
    assert f"MLflow tracking server {uri} is unreachable" in line and "MLFLOW_TRACKING_URI" in line
    assert not (project / f"plots/{CATEGORY}/roc.png").exists()  # nothing partial left behind
    assert _snapshot(project) == before


def _read_only_repro(project: Path, ro_store: Path) -> subprocess.CompletedProcess[str]:
    """`dvc repro` with the tracking store's folder read-only: for root, a read-only bind mount in a
    private mount namespace (root ignores file modes); for other users, file modes."""
    uri = f"sqlite:///{ro_store / 'mlflow.db'}"
    env = {**_env(project), "MLFLOW_TRACKING_URI": uri}
    cmd = ["dvc", "repro"]
    if os.geteuid() == 0:
        probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"root cannot make a read-only mount here (unshare -m: {probe.stderr.strip()})")
        mount = f"mount --bind -o ro {ro_store} {ro_store}"
        cmd = ["unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh", *cmd]
    else:
        (ro_store / "mlflow.db").chmod(0o444)
        ro_store.chmod(0o555)
    try:
        return subprocess.run(
            cmd, cwd=project, env=env, capture_output=True, text=True, timeout=FAIL_TIMEOUT_S
        )
    finally:
        ro_store.chmod(0o755)
        (ro_store / "mlflow.db").chmod(0o644)


def test_read_only_tracking_store_is_refused_and_left_unchanged(project: Path, recovered: dict) -> None:
    _set_param(project, "visualize.max_per_defect", 2)
    ro_store = Path(tempfile.mkdtemp(prefix="ro-store-"))
    try:
        shutil.copy(project / "mlflow.db", ro_store / "mlflow.db")  # a store that has every upstream run
        before = (ro_store / "mlflow.db").read_bytes()
        lock = (project / "dvc.lock").read_text()
        result = _read_only_repro(project, ro_store)
        assert result.returncode != 0
        assert _ran(result.stdout) == {f"visualize@{CATEGORY}"}
        line = _one_error_line(result.stderr, "visualize")
        assert line.startswith(
            f"visualize: error: MLflow tracking store sqlite:///{ro_store}/mlflow.db cannot be written"
        )
        assert "MLFLOW_TRACKING_URI" in line
        assert (ro_store / "mlflow.db").read_bytes() == before
        assert (project / "dvc.lock").read_text() == lock
        assert not (project / f"plots/{CATEGORY}/roc.png").exists()
    finally:
        shutil.rmtree(ro_store)


def test_repro_finishes_once_the_store_is_back(project: Path, recovered: dict) -> None:
    _set_param(project, "visualize.max_per_defect", 2)
    result = _run(["dvc", "repro"], project)
    assert _ran(result.stdout) == {f"visualize@{CATEGORY}"}
    _assert_complete(project)


# --------------------------------------------------------------------------------------------------
# a served model under concurrent requests
# --------------------------------------------------------------------------------------------------


def test_served_model_answers_50_concurrent_requests(store: ServiceStore, server: str) -> None:  # noqa: F811
    """50 requests at once, every fifth one not an image: each answered (200 with its own image's score,
    or 400 with a message), and the server still answers afterwards."""
    images = [p.read_bytes() for p in store.image_paths]
    expected = {}
    for i, image in enumerate(images):  # one at a time first: each image's own score
        status, body = _request(f"{server}/invocations", serve_bench.request_body([image]))
        assert status == 200, body
        expected[i] = json.loads(body)["predictions"][0]["score"]
    bad = set(range(4, CONCURRENT_REQUESTS, 5))
    bodies = [
        serve_bench.request_body([b"not an image" if i in bad else images[i % len(images)]])
        for i in range(CONCURRENT_REQUESTS)
    ]
    results = serve_bench.send_all(f"{server}/invocations", bodies, concurrency=CONCURRENT_REQUESTS)
    assert len(results) == CONCURRENT_REQUESTS
    statuses = [r.status for r in results]
    assert statuses == [400 if i in bad else 200 for i in range(CONCURRENT_REQUESTS)], results[0].error
    for i, result in enumerate(results):
        if i in bad:
            assert json.loads(result.body)["message"]
            continue
        (prediction,) = json.loads(result.body)["predictions"]
        # its own image's score, up to float32 rounding: requests in parallel share the cores, and the
        # matrix products' summation order follows the threads they get (measured 1.4e-5 apart)
        assert prediction["score"] == pytest.approx(expected[i % len(images)], rel=1e-4)
        assert prediction["verdict"] in ("good", "defective")
    assert _request(f"{server}/ping")[0] == 200  # still up
    status, body = _request(f"{server}/invocations", serve_bench.request_body([images[0]]))
    assert status == 200 and json.loads(body)["predictions"][0]["score"] == pytest.approx(expected[0])


def test_serve_bench_serves_the_model_and_prints_latency(
    store: ServiceStore,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The benchmark command with --model: starts its own server, prints p50/p95 and throughput, stops
    the server (its port answers no more). No time is asserted."""
    argv = ["--model", f"models:/{NAME}@champion", "--images", *map(str, store.image_paths)]
    log = tmp_path / "server.log"
    assert serve_bench.main([*argv, "--requests", "20", "--concurrency", "4", "--server-log", str(log)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("serve_bench: 20 requests x 1 image(s), concurrency 4, http://127.0.0.1:")
    assert re.fullmatch(r"latency ms: p50 [\d.]+  p95 [\d.]+  max [\d.]+", out[1])
    assert re.fullmatch(r"throughput: [\d.]+ images/s \([\d.]+ requests/s\) over [\d.]+ s", out[2])
    assert out[3] == "failed: 0"
    url = out[0].rsplit(" ", 1)[1]
    with pytest.raises(OSError):
        _request(f"{url}/ping")
