"""A changed line, end to end (docs/line.md): the loop from a drifting line back to a recovered one, run with
the CLI as a user runs it, in a repository where `dvc repro` has run, with the numbers it shows.

    python -m anomaly_spotter.bench.line --project . --category component --reviewed 40

1. the champion (promoted first if the category has none) scores a batch of the line after a change
   (`simulate-line --change lighting`, day 1) with `predict --log`; `monitor` on that log;
2. a reviewer marks the first `--reviewed` of the day's flagged good parts as false alarms
   (`anomaly-spotter feedback`, from the simulation's answer key);
3. `dvc repro` (which stages ran, how long); `promote` (test metrics and the field gate);
4. the new champion scores a new batch of the changed line it never saw (day 2, good parts and a few
   defective ones) into a new log; `monitor` on it; the old champion scores it too, and the new one a
   batch of the unchanged line, for comparison.

Writes `benchmarks/line.md` and `.json` with `--out`. The test tests/integration/test_line_scenario.py
runs the same function and asserts what the issue asks of it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from anomaly_spotter.bench.common import cli_command, cpus, write_report

CHANGE = "lighting"
N_GOOD = 40  # good parts per simulated batch
N_DEFECTIVE_DAY2 = 2  # and defective ones on day 2 (5 %, a line's defect rate rather than a test set's)
ENV: dict[str, str] = {}  # environment settings for every command (`run_scenario`'s `env`)


@dataclass
class LineScenario:
    category: str
    reviewed: int
    champion: str = ""  # the version that scored day 1
    day1_flagged: float = 0.0  # share of day 1's (changed) good parts flagged by the champion
    day1_expected: float = 0.0  # the false-alarm rate monitor expects of that version (its held-out goods)
    day1_monitor_exit: int = -1
    day1_monitor: str = ""
    field_goods: int = 0  # reviewed goods held out of training (the field set)
    repro_stages: list[str] = field(default_factory=list)
    repro_s: float = 0.0
    promote_exit: int = -1
    promote: str = ""  # the decision line
    new_version: str = ""
    day2_flagged_goods: float = 0.0  # share of day 2's good parts (never seen) the new champion flags
    day2_old_flagged_goods: float = 0.0  # ... and the old champion
    day2_unchanged_flagged: float = 0.0  # good parts of the unchanged line (change none), new champion
    day2_defects_caught: str = ""
    val_rate_old: float | None = None  # each version's val_false_alarm_rate tag
    val_rate_new: float | None = None
    day2_expected: float = 0.0  # monitor's expected rate of the new version
    day2_monitor_exit: int = -1
    day2_monitor: str = ""
    recall_old: float | None = None  # recall on the test split's defects at each served threshold
    recall_new: float | None = None
    auroc_old: float | None = None
    auroc_new: float | None = None


def _run(cmd: list[str], project: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1", **ENV}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=1800)
    if check and result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _cli(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run([*cli_command(), *args], project, check)


def _flagged(csv: Path, manifest: Path) -> pd.DataFrame:
    """predict's CSV joined with the simulation's answer key, by file name."""
    scored = pd.read_csv(csv)
    scored["file"] = [Path(p).name for p in scored["path"]]
    return scored.merge(pd.read_csv(manifest), on="file", validate="one_to_one")


def _share(rows: pd.DataFrame) -> float:
    return float((rows["verdict"] == "defective").mean()) if len(rows) else float("nan")


def _tags(project: Path, name: str, version: str) -> dict[str, str]:
    code = (
        "import json, mlflow; from mlflow import MlflowClient; "
        f"print(json.dumps(dict(MlflowClient().get_model_version({name!r}, {version!r}).tags)))"
    )
    return json.loads(_run([sys.executable, "-c", code], project).stdout)


def _float(tags: dict[str, str], key: str) -> float | None:
    try:
        return float(tags[key])
    except (KeyError, ValueError):
        return None


def _expected(monitor_stdout: str) -> float:
    """The expected rate of the last report row `monitor` printed (its `expect` column, in %)."""
    rows = [line for line in monitor_stdout.splitlines() if re.search(r"\d+\.\d%", line)]
    shares = re.findall(r"(\d+\.\d)%", rows[-1])
    return float(shares[1]) / 100


def _simulate(
    project: Path, category: str, batch: Path, n_defective: int, seed: int, change: str = CHANGE
) -> None:
    """`simulate-line`: N_GOOD good parts and `n_defective` defective ones of the (changed) line."""
    _cli(
        project,
        "simulate-line",
        "--category",
        category,
        "--change",
        change,
        "--good",
        str(N_GOOD),
        "--defective",
        str(n_defective),
        "--seed",
        str(seed),
        "--out",
        str(batch),
    )


def _scored(project: Path, batch: Path, model: str, log: Path | None) -> pd.DataFrame:
    """`predict` of a simulated batch (into the scoring log `log`, if given), joined with its answer key."""
    csv = project / f"{batch.name}-{model.rsplit('/', 1)[-1].replace('@', '')}.csv"
    _cli(
        project,
        "predict",
        str(batch),
        "--model",
        model,
        "--csv",
        str(csv),
        "--no-progress",
        *(["--log", str(log)] if log is not None else []),
    )
    return _flagged(csv, project / batch / "manifest.csv")


def _monitor(project: Path, log: Path) -> tuple[int, str, float]:
    """`monitor --period batch` on a log: its exit code, last line and the last row's expected rate."""
    result = _cli(project, "monitor", "--log", str(log), "--period", "batch", check=False)
    return result.returncode, result.stdout.strip().splitlines()[-1], _expected(result.stdout)


def run_scenario(
    project: Path, category: str, reviewed: int, seed: int = 42, env: dict[str, str] | None = None
) -> LineScenario:
    """The scenario in `project` (a repository after `dvc repro`); its numbers (see the module docstring).
    `env`: environment settings for the commands (e.g. MLFLOW_TRACKING_URI), on top of this process's."""
    ENV.clear()
    ENV.update(env or {})
    name = f"anomaly-spotter-{category}"
    out = LineScenario(category, reviewed)
    aliases = f"from mlflow import MlflowClient; print(MlflowClient().get_registered_model({name!r}).aliases)"
    if "champion" not in _run([sys.executable, "-c", aliases], project).stdout:
        _cli(project, "promote", "--category", category)
    champion = f"models:/{name}@champion"
    day1, day2 = Path("line") / "day1", Path("line") / "day2"
    log1, log2 = Path("logs") / category, Path("logs") / f"{category}-day2"
    # 1. a changed line, day 1, scored by the champion into the scoring log; monitor
    _simulate(project, category, day1, 0, seed)
    scored1 = _scored(project, day1, champion, log1)
    out.day1_flagged = _share(scored1[scored1["truth"] == "good"])
    out.champion = str(pd.read_parquet(project / log1)["model_version"].iloc[0])
    out.day1_monitor_exit, out.day1_monitor, out.day1_expected = _monitor(project, log1)
    # 2. review: the first `reviewed` flagged good parts are false alarms
    flagged_goods = scored1[(scored1["truth"] == "good") & (scored1["verdict"] == "defective")]
    listed = project / "reviewed.txt"
    listed.write_text("".join(f"{day1 / f}\n" for f in flagged_goods["file"].head(reviewed)))
    _cli(
        project,
        "feedback",
        "--log",
        str(log1),
        "--decision",
        "false_alarm",
        "--by",
        "qa",
        "--note",
        f"new lamp ({CHANGE})",
        "--list",
        str(listed),
    )
    # 3. dvc repro, promote
    start = time.perf_counter()
    repro = _run(["dvc", "repro"], project)
    out.repro_s = time.perf_counter() - start
    out.repro_stages = sorted(set(re.findall(r"Running stage '([^']+)'", repro.stdout)))
    summary = json.loads((project / "data" / "prepared" / category / "summary.json").read_text())
    out.field_goods = summary.get("n_field", 0) - summary.get("n_field_defective", 0)
    promote = _cli(project, "promote", "--category", category, check=False)
    out.promote_exit = promote.returncode
    decided = [line for line in promote.stdout.splitlines() if line.startswith(("promoted", "version"))]
    out.promote = decided[-1] if decided else promote.stdout.strip()[-300:]
    # 4. day 2: new parts of the changed line, never seen, scored by the new champion into a new log
    _simulate(project, category, day2, N_DEFECTIVE_DAY2, seed)
    scored2 = _scored(project, day2, champion, log2)
    out.day2_flagged_goods = _share(scored2[scored2["truth"] == "good"])
    defects = scored2[scored2["truth"] == "defective"]
    out.day2_defects_caught = f"{int((defects['verdict'] == 'defective').sum())}/{len(defects)}"
    out.new_version = str(pd.read_parquet(project / log2)["model_version"].iloc[0])
    old2 = _scored(project, day2, f"models:/{name}/{out.champion}", None)
    out.day2_old_flagged_goods = _share(old2[old2["truth"] == "good"])
    # what the new champion gives good parts of the line as it was before the change, for comparison
    unchanged = Path("line") / "unchanged"
    _simulate(project, category, unchanged, 0, seed, change="none")
    out.day2_unchanged_flagged = _share(_scored(project, unchanged, champion, None))
    out.day2_monitor_exit, out.day2_monitor, out.day2_expected = _monitor(project, log2)
    old, new = _tags(project, name, out.champion), _tags(project, name, out.new_version)
    out.val_rate_old, out.val_rate_new = (
        _float(old, "val_false_alarm_rate"),
        _float(new, "val_false_alarm_rate"),
    )
    out.recall_old, out.recall_new = _float(old, "recall"), _float(new, "recall")
    out.auroc_old, out.auroc_new = _float(old, "image_auroc"), _float(new, "image_auroc")
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def report(result: LineScenario, project: Path) -> str:
    r = result
    rows = [
        ("day 1: changed good parts flagged by the champion", f"v{r.champion}: {_pct(r.day1_flagged)}"),
        ("day 1: monitor (expected rate; exit code)", f"{_pct(r.day1_expected)}; exit {r.day1_monitor_exit}"),
        ("reviewed false alarms (held out as field set)", f"{r.reviewed} ({r.field_goods})"),
        ("dvc repro: stages run (wall s)", f"{', '.join(r.repro_stages)} ({r.repro_s:.0f} s)"),
        ("promote", f"exit {r.promote_exit}: {r.promote}"),
        (
            "day 2 (never seen): changed good parts flagged, new / old champion",
            f"v{r.new_version}: {_pct(r.day2_flagged_goods)} / "
            f"v{r.champion}: {_pct(r.day2_old_flagged_goods)}",
        ),
        (
            "good parts of the unchanged line (never seen) flagged, new champion",
            _pct(r.day2_unchanged_flagged),
        ),
        ("day 2: defective parts caught by the new champion", r.day2_defects_caught),
        ("validation false-alarm rate, new / old", f"{_pct(r.val_rate_new)} / {_pct(r.val_rate_old)}"),
        ("held-out goods' false-alarm rate (monitor's expected), new", _pct(r.day2_expected)),
        ("day 2: monitor (exit code)", f"exit {r.day2_monitor_exit}: {r.day2_monitor}"),
        ("recall on the test split's defects, new / old", f"{r.recall_new} / {r.recall_old}"),
        ("image AUROC (test split), new / old", f"{r.auroc_new} / {r.auroc_old}"),
    ]
    lines = ["| step | result |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]
    machine = f"{os.uname().machine}, {cpus()} CPU cores"
    lines += [
        "",
        f"category: {r.category}; change: {CHANGE}; {N_GOOD} good parts a day (day 2 also "
        f"{N_DEFECTIVE_DAY2} defective); repository: {project}; machine: {machine}; command: "
        f"python -m anomaly_spotter.bench.line --project {project} --category {r.category} "
        f"--reviewed {r.reviewed}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="a repository after `dvc repro`")
    parser.add_argument("--category", default="component", help="a built-in category (default component)")
    parser.add_argument("--reviewed", type=int, default=40, help="false alarms marked (default 40)")
    parser.add_argument("--out", type=Path, help="write the table here (and .json beside it)")
    args = parser.parse_args(argv)
    result = run_scenario(args.project.resolve(), args.category, args.reviewed)
    text = report(result, args.project)
    print(text)
    if args.out:
        write_report(args.out, text, asdict(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
