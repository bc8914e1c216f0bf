"""The real pipeline on a tiny built-in dataset: real DVC and stages, a temporary SQLite MLflow store.

One tiny `dvc repro` in an "origin" repository (a copy of this repository's pipeline and code, tiny
params), whose results are committed as a maintainer would; then a fresh `git clone` of it runs its own
`dvc repro` (its own DVC cache and MLflow store). Checks what the README and the reproducibility contract
promise: everything is built and logged to MLflow with a registered model per category; the clone's
`dvc.lock` equals the origin's and its `git status --porcelain` is empty; a second `dvc repro` runs
nothing; a parameter reruns exactly the stages that read it (an inactive detector's section: none); a
code change reruns the stages that run that code; `dvc metrics show` fits a terminal; `dvc plots show`
draws every chart in headless Chromium with no network; no MLflow run is left RUNNING; and the default
detector (PatchCore) runs every stage too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from anomaly_spotter.bench import serve as serve_bench
from anomaly_spotter.pipeline.compute_thresholds import IMAGE_HEADLINE, THRESHOLD_HEADLINE
from tests.conftest import REPO, skip_without_tool

pytestmark = pytest.mark.integration

CATEGORIES = ["fabric", "washer"]
TINY = {
    "data": {"root": "data/builtin", "categories": CATEGORIES, "image_size": 32, "val_fraction": 0.2},
    "builtin": {"image_size": 48, "n_train": 10, "n_test_good": 4, "n_test_per_defect": 2},
    "model": {
        "name": "unet_ae",
        "unet_ae": {
            "encoder_channels": [4, 8, 8],
            "bottleneck_channels": 8,
            "training": {"max_epochs": 2, "batch_size": 4, "lr": 1.0e-3},
        },
    },
    "train": {"world_size": 2},  # data-parallel under torchrun, as `dvc exp run -S train.world_size=2`
    "process": {"batch_size": 8},
    "thresholds": {"n_folds": 2},
    "visualize": {"max_per_defect": 1},
}
STAGES = ("prepare", "train", "process_all", "extract_metrics", "compute_thresholds", "visualize", "register")
PER_CATEGORY = ("prepare", "train", "process_all", "visualize", "register")
# What a clone of the repository holds that the pipeline needs (code, declarations, the plots page).
PROJECT_FILES = ("dvc.yaml", "stages", "anomaly_spotter", "vendor", "feedback", ".dvcignore", ".gitignore")
DVC_FILES = (".dvc/config", ".dvc/plots_page.html")
MAX_METRICS_WIDTH = 120
HEADLINE = IMAGE_HEADLINE + THRESHOLD_HEADLINE  # the columns of `dvc metrics show`
CHROMIUM_BUDGET_MS = 20_000


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
        # the stages import the project's own copy of the package, as in a clone
        PYTHONPATH=str(project),
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


def _git(project: Path, *args: str) -> str:
    return _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], project).stdout


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def _changed_stages(project: Path) -> set[str]:
    """Stages `dvc status` lists as changed (their own deps, params or outs; not downstream ones)."""
    status = json.loads(_run(["dvc", "status", "--json"], project).stdout)
    return set(status)


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Command logs, kept out of the repositories (they would show in git status)."""
    return tmp_path_factory.mktemp("logs")


def new_project(project: Path, overrides: dict, message: str = "tiny pipeline") -> Path:
    """A git + DVC repository at `project` (which may already hold data) with this repository's pipeline
    and code, and params.yaml = this repository's with `overrides` merged in; all committed, nothing run."""
    for name in PROJECT_FILES:
        _copy(REPO / name, project / name)
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(project, "init", "-q")
    _run(["dvc", "init", "-q"], project)
    for name in DVC_FILES:
        _copy(REPO / name, project / name)
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", message)
    return project


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory, logs: Path) -> Path:
    """A git + DVC repository with this repository's pipeline, code and tiny params; `dvc repro` run and
    its results (dvc.lock, .gitignore files, committed metrics) committed."""
    project = new_project(tmp_path_factory.mktemp("origin"), TINY)
    first = _run(["dvc", "repro"], project)
    (logs / "origin_repro.log").write_text(first.stdout + first.stderr)
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "results")
    return project


@pytest.fixture(scope="module")
def clone(origin: Path, tmp_path_factory: pytest.TempPathFactory, logs: Path) -> Path:
    """A fresh `git clone` of `origin` after its own `dvc repro` (own DVC cache, own MLflow store)."""
    project = tmp_path_factory.mktemp("clone") / "repo"
    _run(["git", "clone", "-q", str(origin), str(project)], origin)
    result = _run(["dvc", "repro"], project)
    (logs / "clone_repro.log").write_text(result.stdout + result.stderr)
    return project


def test_repro_builds_every_output(origin: Path, logs: Path) -> None:
    log = (logs / "origin_repro.log").read_text()
    expected = {"generate"} | {f"{s}@{c}" for s in PER_CATEGORY for c in CATEGORIES}
    assert expected | {"extract_metrics", "compute_thresholds"} <= _ran(log)
    metrics = json.loads((origin / "metrics/metrics.json").read_text())
    for category in CATEGORIES:
        values = metrics["categories"][category]
        assert 0.0 <= values["image_auroc"] <= 1.0 and 0.0 <= values["pixel_auroc"] <= 1.0
        stats = json.loads((origin / f"outputs/{category}/stats.json").read_text())
        assert set(stats) == {category} and "good" in stats[category]
        first = next(iter(stats[category]["good"]))
        assert set(first) == {"image", "mean_score", "max_score", "anomaly_percentage"}
        # the calibrated region: the pixel threshold kept in the model is the one process_all applied
        region = json.loads((origin / f"outputs/{category}/region.json").read_text())
        model = torch.load(origin / f"models/{category}/model.pt", weights_only=True)
        assert region["method"] == "calibrated"
        assert region["pixel_threshold"] == model["pixel_calibration"]["threshold"]
        assert 0.0 <= values["anomaly_pct_good"] <= 100.0 and 0.0 <= values["pixel_iou"] <= 1.0
        assert (origin / f"plots/{category}/roc.png").stat().st_size > 1000
        assert any((origin / f"plots/{category}/examples").glob("*.png"))
        history = (origin / f"models/{category}/history/history.csv").read_text().splitlines()
        # 2 epochs of each of the default's two trainings (training.members: 2): the second's curves first
        assert history[0] == "epoch,train_loss_1,val_loss_1,train_loss,val_loss" and len(history) == 3
        headline = json.loads((origin / f"metrics/categories/{category}.json").read_text())
        assert tuple(headline) == HEADLINE
        assert headline["image_auroc"] == values["image_auroc"]
        registered = json.loads((origin / f"registry/{category}.json").read_text())
        assert registered["registered_model"] == f"anomaly-spotter-{category}"
        assert not {"run_id", "model_version", "experiment_id"} & set(registered)
    thresholds = json.loads((origin / "metrics/thresholds.json").read_text())
    assert set(thresholds) == set(CATEGORIES)
    # no MLflow run id in any output: the records are found in MLflow by content md5
    assert not list(origin.glob("**/mlflow_run.json"))


def test_fresh_clone_repro_reproduces_dvc_lock_and_leaves_git_clean(origin: Path, clone: Path) -> None:
    assert (clone / "dvc.lock").read_text() == (origin / "dvc.lock").read_text()
    assert _git(clone, "status", "--porcelain") == ""


def test_no_run_left_running_and_none_dirty(origin: Path, clone: Path) -> None:
    import mlflow

    names = {}
    for project in (origin, clone):
        mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        assert [r.info.run_name for r in runs if r.info.status != "FINISHED"] == []
        names[project] = {r.info.run_name: r.data.tags["git_dirty"] for r in runs}
    assert (
        len(names[origin]) == 1 + len(PER_CATEGORY) * len(CATEGORIES) + 3
    )  # + extract, thresholds, pipeline
    # the clone ran every stage, compute_thresholds too (thresholds.csv is a cached out, so a fresh clone
    # lacks it): its MLflow store has the same runs, the pipeline summary included. It ran from a clean
    # checkout: dvc.lock and .gitignore rewrites are not "dirty".
    assert names[clone].keys() == names[origin].keys()
    assert {"compute_thresholds", "pipeline"} <= names[clone].keys()
    assert names[clone] == dict.fromkeys(names[clone], "false")


def test_mlflow_has_every_stage_and_a_registered_model_per_category(origin: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    from anomaly_spotter.tracking import content_md5

    mlflow.set_tracking_uri(f"sqlite:///{origin / 'mlflow.db'}")
    client = MlflowClient()
    runs = mlflow.search_runs(experiment_names=["anomaly-spotter"], output_format="list")
    by_name = {r.info.run_name: r for r in runs}
    for category in CATEGORIES:
        for stage in ("prepare", "train", "process_all", "visualize"):
            run = by_name[f"{stage}@{category}"]
            assert run.data.tags["stage"] == stage and run.data.tags["category"] == category
            assert re.fullmatch(r"[0-9a-f]{40}", run.data.tags["git_commit"])
        train = by_name[f"train@{category}"]
        assert train.data.params["model.unet_ae.training.max_epochs"] == "2"
        assert train.data.params["train.world_size"] == "2" and train.data.metrics["world_size"] == 2
        assert train.data.params["model.unet_ae.encoder_channels"] == "[4, 8, 8]"
        assert not any(k.startswith("model.patchcore") for k in train.data.params)
        assert (
            "fit_seconds" in train.data.metrics
            and len(client.get_metric_history(train.info.run_id, "train_loss")) == 2
        )
        # runs are linked by the content of what they read and wrote, not by ids inside DVC outputs
        model_md5 = content_md5(origin / f"models/{category}/model.pt")
        assert train.data.tags["model_md5"] == model_md5
        prepared_md5 = content_md5(origin / f"data/prepared/{category}")
        assert by_name[f"prepare@{category}"].data.tags["prepared_md5"] == prepared_md5
        assert train.data.tags["prepare_run_id"] == by_name[f"prepare@{category}"].info.run_id
        (network,) = client.search_model_versions(f"name = 'anomaly-spotter-{category}-network'")
        assert network.run_id == train.info.run_id and network.tags["model_md5"] == model_md5
        (version,) = client.search_model_versions(f"name = 'anomaly-spotter-{category}'")
        assert version.run_id == by_name[f"register@{category}"].info.run_id
        assert version.tags["category"] == category and version.tags["data_dvc_hash"].endswith(".dir")
        assert version.tags["model_md5"] == model_md5
        # from the model version to every stage run that produced or evaluated it
        for stage in STAGES:
            run_id = version.tags[f"run.{stage}"]
            assert client.get_run(run_id).data.tags["stage"] == stage
        process = by_name[f"process_all@{category}"]
        assert process.data.tags["model_version"] == str(network.version)
        assert process.data.tags["train_run_id"] == train.info.run_id
    # the tiny project runs 2 of the 5 built-in categories: per-category metrics, no overall mean (it
    # would not compare with a run over all of them)
    metrics_run = by_name["extract_metrics"]
    assert 0.0 <= metrics_run.data.metrics[f"{CATEGORIES[0]}.image_auroc"] <= 1.0
    assert "image_auroc" not in metrics_run.data.metrics
    assert metrics_run.data.params["metrics.aupro_fpr_limit"] == "0.3"
    pipelines = mlflow.search_runs(experiment_names=["anomaly-spotter-pipelines"], output_format="list")
    assert len(pipelines) == 1
    row = pipelines[0]
    assert {f"{c}.{k}" for c in CATEGORIES for k in ("image_auroc", "pixel_auroc", "f1")} <= set(
        row.data.metrics
    )
    assert not {"image_auroc", "pixel_auroc", "f1"} & set(row.data.metrics)
    assert set(json.loads((origin / "metrics/overall.json").read_text()).values()) == {None}
    assert row.data.params["model.unet_ae.training.lr"] == "0.001"
    assert row.data.params["model.name"] == "unet_ae" and row.data.params["train.num_threads"] == "2"


def test_metrics_show_fits_a_terminal(origin: Path) -> None:
    shown = _run(["dvc", "metrics", "show"], origin).stdout
    lines = shown.splitlines()
    widest = max(lines, key=len)
    assert len(widest) <= MAX_METRICS_WIDTH, f"{len(widest)} chars:\n{shown}"
    header = lines[0].split()  # DVC sorts the columns by name
    assert header[0] == "Path" and sorted(header[1:]) == sorted(HEADLINE), shown
    rows = {line.split()[0] for line in lines[1:] if line.strip()}
    assert rows == {f"metrics/categories/{c}.json" for c in CATEGORIES} | {"metrics/overall.json"}


class _PlotPage(HTMLParser):
    """Collects, per top-level plot div of a `dvc plots show` page, its svg marks and images."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.current: str | None = None
        self.plots: dict[str, dict[str, int]] = {}
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "div":
            if self.current is None and attr.get("id"):
                self.current, self.depth = attr["id"], 0
                self.plots[self.current] = {"svg": 0, "marks": 0, "img": 0}
            elif self.current is not None:
                self.depth += 1
        if self.current is None:
            return
        counts = self.plots[self.current]
        if tag == "svg":
            counts["svg"] += 1
        if (
            tag == "path"
            and (attr.get("d") or "").strip()
            and "mark" in (attr.get("aria-roledescription") or "")
        ):
            counts["marks"] += 1
        if tag == "img":
            counts["img"] += 1
            self.images.append(attr.get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self.current is not None:
            if self.depth == 0:
                self.current = None
            else:
                self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.lasttag not in ("script", "style"):
            self.text.append(data)


def _chromium() -> str:
    for name in ("chromium", "google-chrome", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    skip_without_tool(
        "no headless Chromium to open the plots page with: apt-get install -y chromium "
        "(.ci/run installs it when missing)"
    )


def test_plots_page_draws_every_chart_offline(origin: Path, tmp_path: Path) -> None:
    _run(["dvc", "plots", "show"], origin)
    page = origin / "dvc_plots" / "index.html"
    html = page.read_text()
    assert "cdn.jsdelivr" not in html and "../vendor/vega/vega.min.js" in html
    declared = json.loads(_run(["dvc", "plots", "show", "--json"], origin).stdout)["data"]
    vega_plots = sorted(p for p, entries in declared.items() if entries[0]["type"] == "vega")
    expected_vega = {
        f"{d}/{c}/{f}" for c in CATEGORIES for d, f in (("plots", "roc.csv"), ("plots", "pr.csv"))
    }
    expected_vega |= {f"models/{c}/history/history.csv" for c in CATEGORIES}
    assert set(vega_plots) == expected_vega
    dom = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'chromium'}",
            # no network: every host name fails to resolve and any connection goes to a closed port
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=http://127.0.0.1:9",
            f"--virtual-time-budget={CHROMIUM_BUDGET_MS}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout
    parsed = _PlotPage()
    parsed.feed(dom)
    assert "Chart not drawn" not in "".join(parsed.text)
    charts = {name: counts for name, counts in parsed.plots.items() if counts["svg"]}
    assert len(charts) == len(vega_plots), parsed.plots
    assert all(counts["marks"] >= 1 for counts in charts.values()), charts
    for src in parsed.images:
        assert (page.parent / src).is_file(), src
    assert len(parsed.images) >= 4 * len(CATEGORIES)  # roc, pr, score distribution, examples


def test_second_repro_runs_nothing(origin: Path) -> None:
    out = _run(["dvc", "repro"], origin)
    assert _ran(out.stdout) == set(), out.stdout


def test_code_change_reruns_the_stages_that_run_it(clone: Path) -> None:
    patchcore = clone / "anomaly_spotter/detectors/patchcore/detector.py"
    original = patchcore.read_text()
    try:
        patchcore.write_text(original + "# a comment\n")
        changed = _changed_stages(clone)
    finally:
        patchcore.write_text(original)
    running_detectors = {
        f"{s}@{c}" for s in ("train", "process_all", "visualize", "register") for c in CATEGORIES
    }
    assert changed == running_detectors


def _set_param(project: Path, keys: str, value: object) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    *parents, last = keys.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[last] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_inactive_detector_param_reruns_nothing(origin: Path) -> None:
    _set_param(origin, "model.patchcore.sigma", 3.0)
    assert _changed_stages(origin) == set()


def test_training_param_changes_train_not_prepare(origin: Path) -> None:
    _set_param(origin, "model.unet_ae.training.lr", 0.002)
    assert _changed_stages(origin) == {f"train@{c}" for c in CATEGORIES}
    _set_param(origin, "model.unet_ae.training.lr", 1.0e-3)


def test_visualize_param_reruns_only_visualize(origin: Path) -> None:
    _set_param(origin, "visualize.max_per_defect", 2)
    out = _run(["dvc", "repro"], origin)
    assert _ran(out.stdout) == {f"visualize@{c}" for c in CATEGORIES}, out.stdout


def test_unreachable_tracking_server_fails_cleanly(origin: Path) -> None:
    uri = f"http://127.0.0.1:{serve_bench.free_port()}"  # nothing listens there
    env = {**_env(origin), "MLFLOW_TRACKING_URI": uri}
    shutil.rmtree(origin / "data/prepared/fabric")
    result = subprocess.run(
        [sys.executable, "stages/prepare.py", "fabric"],
        cwd=origin,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert uri in result.stderr and "unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (origin / "data/prepared/fabric").exists()


def test_default_detector_patchcore_runs_end_to_end(origin: Path, tmp_path: Path) -> None:
    """The default detector (the PatchCore ensemble) through every stage: fit, maps, metrics,
    thresholds, plots, the logged network and the registered service model, no run left RUNNING."""
    import mlflow

    project = tmp_path / "repo"
    _run(["git", "clone", "-q", str(origin), str(project)], origin)
    _set_param(project, "model.name", "patchcore")
    _set_param(project, "model.patchcore.input_size", 96)  # tiny images: a 12 x 12 patch grid
    out = _run(["dvc", "repro"], project)
    expected = {"generate", "extract_metrics", "compute_thresholds"}
    assert expected | {f"{s}@{c}" for s in PER_CATEGORY for c in CATEGORIES} <= _ran(out.stdout)
    metrics = json.loads((project / "metrics/metrics.json").read_text())
    for category in CATEGORIES:
        values = metrics["categories"][category]
        assert 0.0 <= values["image_auroc"] <= 1.0 and 0.0 <= values["pixel_auroc"] <= 1.0
        kind = _model_kind(project / f"models/{category}/model.pt")
        assert kind == {"kind": "patchcore", "members": [[3], [2, 3], [3, 5]]}
        coverage = pd.read_csv(project / f"models/{category}/history/history.csv")  # bank coverage
        assert list(coverage.columns) == ["bank_size", "coverage_3", "coverage_2_3", "coverage_3_5"]
        assert coverage["coverage_3"].iloc[-1] < coverage["coverage_3"].iloc[0]
        registered = json.loads((project / f"registry/{category}.json").read_text())
        assert registered["registered_model"] == f"anomaly-spotter-{category}"
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {f"train@{c}" for c in CATEGORIES} <= {r.info.run_name for r in runs}


def _model_kind(path: Path) -> dict[str, object]:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return {"kind": state["kind"], "members": [list(m) for m in state["config"]["members"]]}


def test_the_printed_ui_address_opens_the_model_training_view(origin: Path, tmp_path: Path) -> None:
    """`mlflow ui` on the project's store, opened in headless Chromium at `tracking.ui_url`: the runs view
    with the model registry in its sidebar, not MLflow 3's GenAI pages."""
    import time
    import urllib.request

    from anomaly_spotter import tracking

    port = serve_bench.free_port()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{origin / 'mlflow.db'}"]
    server = subprocess.Popen(
        [*cmd, "-h", "127.0.0.1", "-p", str(port)],
        env=_env(origin),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "mlflow ui did not start"
                time.sleep(0.5)
        dom = subprocess.run(
            [
                _chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                f"--user-data-dir={tmp_path / 'chromium'}",
                f"--virtual-time-budget={CHROMIUM_BUDGET_MS}",
                "--dump-dom",
                tracking.ui_url(f"http://127.0.0.1:{port}"),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        ).stdout
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    assert "Model registry" in dom and "anomaly-spotter-pipelines" in dom
    assert "AI Gateway" not in dom  # the GenAI sidebar


def test_a_temporary_experiment_logs_to_the_workspaces_store(origin: Path) -> None:
    """`dvc exp run --temp` runs the stages in a copy of the workspace under .dvc/tmp: with the default
    store, their runs land in the workspace's mlflow.db (found through DVC_ROOT), named for the experiment,
    and the copy gets no store of its own."""
    import mlflow

    env = {k: v for k, v in _env(origin).items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run(
        ["dvc", "exp", "run", "--temp", "-n", "temp-check", "-S", "visualize.max_per_defect=4"],
        cwd=origin,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert _ran(result.stdout) == {f"visualize@{c}" for c in CATEGORIES}, result.stdout
    mlflow.set_tracking_uri(f"sqlite:///{origin / 'mlflow.db'}")
    runs = mlflow.search_runs(
        experiment_names=["anomaly-spotter"],
        filter_string="tags.dvc_experiment = 'temp-check'",
        output_format="list",
    )
    assert sorted(r.info.run_name for r in runs) == sorted(f"visualize@{c}" for c in CATEGORIES)
    assert not list((origin / ".dvc" / "tmp").rglob("mlflow.db"))


def _default_store_env(project: Path) -> dict[str, str]:
    """The project's environment with no MLFLOW_TRACKING_URI: the default store, sqlite:///mlflow.db."""
    return {k: v for k, v in _env(project).items() if k != "MLFLOW_TRACKING_URI"}


def test_queued_experiments_run_two_at_a_time_into_the_workspaces_store(origin: Path) -> None:
    """`dvc exp run --queue` twice, `dvc queue start -j 2`, then one more by `dvc exp run --run-all`: all
    finish, their runs land in the workspace's mlflow.db named for their experiments, and `anomaly-spotter
    experiments` shows them in 120 columns."""
    import mlflow

    env = _default_store_env(origin)

    def dvc(*args: str) -> str:
        result = subprocess.run(
            ["dvc", *args], cwd=origin, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    # values no earlier test ran: DVC would restore those stages from its run cache and run nothing
    names = {"queued-6": 6, "queued-7": 7}
    for name, value in names.items():
        dvc("exp", "run", "--queue", "-n", name, "-S", f"visualize.max_per_defect={value}")
    # the workers it starts inherit its output: to pipes, `subprocess.run` would wait for them to finish
    with (origin.parent / "queue-start.log").open("w") as log:
        started = subprocess.run(
            ["dvc", "queue", "start", "-j", "2"], cwd=origin, env=env, stdout=log, stderr=log, timeout=120
        )
    assert started.returncode == 0, (origin.parent / "queue-start.log").read_text()
    deadline = time.monotonic() + 600

    def ended(status: str) -> bool:  # each experiment's row says how it ended (not Queued, Running, ...)
        return all(re.search(rf"{name}\s+\S+ \S+\s+(Success|Failed)\b", status) for name in names)

    while not ended(status := dvc("queue", "status")):
        assert time.monotonic() < deadline, status
        time.sleep(5)
    dvc("exp", "run", "--queue", "-n", "queued-8", "-S", "visualize.max_per_defect=8")
    dvc("exp", "run", "--run-all")  # the same queue, run in the foreground
    names["queued-8"] = 8
    status = dvc("queue", "status")
    for name in names:
        assert re.search(rf"{name}\s+\S+ \S+\s+Success", status), status
    mlflow.set_tracking_uri(f"sqlite:///{origin / 'mlflow.db'}")
    for name in names:
        runs = mlflow.search_runs(
            experiment_names=["anomaly-spotter"],
            filter_string=f"tags.dvc_experiment = '{name}'",
            output_format="list",
        )
        assert sorted(r.info.run_name for r in runs) == sorted(f"visualize@{c}" for c in CATEGORIES)
    assert not list((origin / ".dvc" / "tmp").rglob("mlflow.db"))
    table = subprocess.run(
        [str(Path(sys.executable).parent / "anomaly-spotter"), "experiments", "--category", "fabric"],
        cwd=origin,
        env={**env, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert max(map(len, lines)) <= 120 and "max_per_defect" in lines[2].split()
    header = lines[2].split()  # Experiment State <changed parameters> image_auroc ...
    for name, value in names.items():
        row = next(line for line in lines if f" {name} " in line).split()[1:]  # without the tree glyph
        assert row[1] == "success" and row[header.index("max_per_defect")] == str(value), (header, row)
        assert re.fullmatch(r"\d\.\d{4}", row[header.index("image_auroc")]), row  # fabric's image AUROC


def test_a_clone_with_pulled_outputs_changes_a_training_parameter(origin: Path, tmp_path: Path) -> None:
    """The team workflow with the default store: outputs come from `dvc pull`, so this clone's store has
    no run of the stages that made them. Changing a training parameter still reproduces: lineage by md5,
    with a one-line note, and every downstream stage runs."""
    import mlflow

    remote = tmp_path / "remote"
    pusher = tmp_path / "pusher"  # the teammate who ran the pipeline pushes what is committed
    _run(["git", "clone", "-q", str(origin), str(pusher)], origin)
    _run(["dvc", "cache", "dir", "--local", str(origin / ".dvc" / "cache")], pusher)
    _run(["dvc", "remote", "add", "--local", "shared", str(remote)], pusher)  # .dvc/config.local: not in git
    _run(["dvc", "push", "-q", "-r", "shared"], pusher)
    project = tmp_path / "repo"
    _run(["git", "clone", "-q", str(origin), str(project)], origin)
    env = _default_store_env(project)

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    run("dvc", "remote", "add", "--local", "shared", str(remote))
    run("dvc", "pull", "-r", "shared")
    assert "up to date" in run("dvc", "status").stdout
    _set_param(project, "model.unet_ae.training.lr", 0.002)
    out = run("dvc", "repro")
    assert {f"{s}@{c}" for s in ("train", "process_all", "register") for c in CATEGORIES} <= _ran(out.stdout)
    notes = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("note: ")]
    assert any(f"data/prepared/{CATEGORIES[0]} (md5 " in n and "no prepare@" in n for n in notes), notes
    assert all(n.endswith("lineage is recorded by md5 only") for n in notes)
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}
    train = runs[f"train@{CATEGORIES[0]}"]
    assert "prepare_run_id" not in train.data.tags and len(train.data.tags["prepared_md5"]) == 32
    assert runs[f"process_all@{CATEGORIES[0]}"].data.tags["train_run_id"] == train.info.run_id
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
