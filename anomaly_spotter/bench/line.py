"""A changed line, end to end (docs/line.md): the loop from a drifting line back to a recovered one, run with
the CLI as a user runs it, in a repository where `dvc repro` has run, with the numbers it shows.

    python -m anomaly_spotter.bench.line --project . --category component --rounds 2

Each day a batch of the line after a change (`simulate-line --change lighting`: a new lamp) is scored by
the champion with `predict --log` into that day's log and `monitor` judges it. In each of `--rounds`
review rounds, a reviewer marks the day's flagged good parts (at most `--reviewed`; from the simulation's
answer key) as false alarms with `anomaly-spotter feedback`, `dvc repro` retrains, and `promote` (test
metrics and the field gate) decides. The day after the last round (its batch also holds a few defective
parts) is the line's recovery, checked beside the unchanged line's good parts and the old champion.

Writes `benchmarks/line.md` and `.json` with `--out`. tests/integration/test_line_scenario.py runs the
same function and asserts what the issue asks of it.
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

from anomaly_spotter.bench.common import cli_command, machine, write_report
from anomaly_spotter.core.metrics import wilson_interval

CHANGE = "lighting"
N_GOOD = 40  # good parts per simulated day
N_DEFECTIVE_LAST = (
    2  # and defective ones on the last day (5 %, a line's defect rate rather than a test set's)
)
ENV: dict[str, str] = {}  # environment settings for every command (`run_scenario`'s `env`)


@dataclass
class Day:
    """One day of the changed line, as the champion of that day saw it."""

    day: int
    version: str  # the champion that scored it
    flagged_goods: float  # share of the day's good parts (none seen before) it flagged
    defects_caught: str  # "k/n" of the day's defective parts
    expected: float  # monitor's expected rate for that version (its held-out goods above the threshold)
    val_rate: float | None  # the version's val_false_alarm_rate tag
    val_flagged: tuple[int, int]  # (flagged, all) of its validation goods: the counts behind val_rate
    recall: float | None  # its recall on the test split's defects, at its served threshold
    image_auroc: float | None
    monitor_exit: int
    monitor: str  # monitor's last line


@dataclass
class Round:
    """One review round: what was reviewed, what dvc repro ran, what promote decided."""

    reviewed: int
    field_goods: int  # reviewed goods held out of training so far (the field set)
    repro_stages: list[str]
    repro_s: float
    promote_exit: int
    promote: str


@dataclass
class LineScenario:
    category: str
    days: list[Day] = field(default_factory=list)
    rounds: list[Round] = field(default_factory=list)
    unchanged_flagged: float = 0.0  # good parts of the unchanged line, by the last champion
    first_on_last_day: float = 0.0  # the last day's good parts, by the first champion


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
    tag = model.rsplit("@", 1)[-1] if "@" in model else "v" + model.rsplit("/", 1)[-1]
    csv = project / f"{batch.name}-{tag}.csv"
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


def _tags(project: Path, name: str, version: str) -> dict[str, str]:
    """The version's registry tags, and `val_flagged` ("k/n" of its validation goods above its threshold)."""
    code = (
        "import json; from mlflow import MlflowClient; "
        "from anomaly_spotter.tracking.scores import version_validation; "
        f"tags = dict(MlflowClient().get_model_version({name!r}, {version!r}).tags); "
        f"k, n = version_validation({name!r}, {version!r}).val_flagged; "
        "print(json.dumps(tags | {'val_flagged': f'{k}/{n}'}))"
    )
    return json.loads(_run([sys.executable, "-c", code], project).stdout)


def _day(project: Path, category: str, day: int, n_defective: int, seed: int) -> tuple[Day, pd.DataFrame]:
    """Simulate, score with the champion into `logs/<category>-day<day>`, monitor it."""
    name = f"anomaly-spotter-{category}"
    batch, log = Path("line") / f"day{day}", Path("logs") / f"{category}-day{day}"
    _simulate(project, category, batch, n_defective, seed)
    scored = _scored(project, batch, f"models:/{name}@champion", log)
    version = str(pd.read_parquet(project / log)["model_version"].iloc[0])
    exit_code, last, expected = _monitor(project, log)
    tags = _tags(project, name, version)
    defects = scored[scored["truth"] == "defective"]
    return Day(
        day,
        version,
        _share(scored[scored["truth"] == "good"]),
        f"{int((defects['verdict'] == 'defective').sum())}/{len(defects)}",
        expected,
        _float(tags, "val_false_alarm_rate"),
        _counts(tags["val_flagged"]),
        _float(tags, "recall"),
        _float(tags, "image_auroc"),
        exit_code,
        last,
    ), scored


def _review(project: Path, category: str, day: int, scored: pd.DataFrame, most: int) -> Round:
    """Mark the day's flagged good parts (at most `most`) false alarms; dvc repro; promote."""
    batch, log = Path("line") / f"day{day}", Path("logs") / f"{category}-day{day}"
    flagged = scored[(scored["truth"] == "good") & (scored["verdict"] == "defective")].head(most)
    listed = project / f"reviewed-day{day}.txt"
    listed.write_text("".join(f"{batch / f}\n" for f in flagged["file"]))
    _cli(
        project,
        "feedback",
        "--log",
        str(log),
        "--decision",
        "false_alarm",
        "--by",
        "qa",
        "--note",
        f"new lamp ({CHANGE})",
        "--list",
        str(listed),
    )
    start = time.perf_counter()
    repro = _run(["dvc", "repro"], project)
    seconds = time.perf_counter() - start
    summary = json.loads((project / "data" / "prepared" / category / "summary.json").read_text())
    promote = _cli(project, "promote", "--category", category, check=False)
    decided = [line for line in promote.stdout.splitlines() if line.startswith(("promoted", "version"))]
    return Round(
        len(flagged),
        summary.get("n_field", 0) - summary.get("n_field_defective", 0),
        sorted(set(re.findall(r"Running stage '([^']+)'", repro.stdout))),
        seconds,
        promote.returncode,
        decided[-1] if decided else promote.stdout.strip()[-300:],
    )


def run_scenario(
    project: Path,
    category: str,
    rounds: int = 2,
    reviewed: int = 30,
    seed: int = 42,
    env: dict[str, str] | None = None,
) -> LineScenario:
    """The scenario in `project` (a repository after `dvc repro`); its numbers (see the module docstring).
    `env`: environment settings for the commands (e.g. MLFLOW_TRACKING_URI), on top of this process's."""
    ENV.clear()
    ENV.update(env or {})
    name = f"anomaly-spotter-{category}"
    out = LineScenario(category)
    aliases = f"from mlflow import MlflowClient; print(MlflowClient().get_registered_model({name!r}).aliases)"
    if "champion" not in _run([sys.executable, "-c", aliases], project).stdout:
        _cli(project, "promote", "--category", category)
    for day in range(1, rounds + 1):
        result, scored = _day(project, category, day, 0, seed)
        out.days.append(result)
        out.rounds.append(_review(project, category, day, scored, reviewed))
    last, scored = _day(project, category, rounds + 1, N_DEFECTIVE_LAST, seed)
    out.days.append(last)
    batch = Path("line") / f"day{rounds + 1}"
    first = _scored(project, batch, f"models:/{name}/{out.days[0].version}", None)
    out.first_on_last_day = _share(first[first["truth"] == "good"])
    unchanged = Path("line") / "unchanged"
    _simulate(project, category, unchanged, 0, seed, change="none")
    out.unchanged_flagged = _share(_scored(project, unchanged, f"models:/{name}@champion", None))
    return out


def _counts(k_of_n: str) -> tuple[int, int]:
    k, n = k_of_n.split("/")
    return int(k), int(n)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def val_interval(day: Day) -> tuple[float, float]:
    """The 95 % Wilson interval of the day's champion's validation false-alarm rate: where its rate on
    new good parts may fall by chance alone, given how few validation goods measured it."""
    return wilson_interval(*day.val_flagged)


def _val(day: Day) -> str:
    low, high = val_interval(day)
    k, n = day.val_flagged
    return f"{_pct(day.val_rate)} ({k}/{n}; {low:.0%}–{high:.0%})"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def report(result: LineScenario, project: Path, command: str) -> str:
    """The days (what the champion of the day flagged, what monitor said) and the review rounds."""
    lines = [
        "| day | champion | changed good parts flagged | defective caught | expected (held-out goods) | "
        "validation rate (95 % interval) | recall (test) | image AUROC (test) | monitor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in result.days:
        status = "exit 0, ok" if d.monitor_exit == 0 else f"exit {d.monitor_exit}, ALERT"
        lines.append(
            f"| {d.day} | v{d.version} | {_pct(d.flagged_goods)} | {d.defects_caught} | {_pct(d.expected)} | "
            f"{_val(d)} | {_num(d.recall)} | {_num(d.image_auroc)} | {status} |"
        )
    lines += [
        "",
        "| round | false alarms reviewed | held out (field set) | retrained | dvc repro s | promote |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(result.rounds, 1):
        trained = ", ".join(s for s in r.repro_stages if s.startswith("train@")) or "-"
        lines.append(
            f"| {i} (day {i}) | {r.reviewed} | {r.field_goods} | {trained} | {r.repro_s:.0f} | "
            f"exit {r.promote_exit}: {r.promote} |"
        )
    last = result.days[-1]
    lines += [
        "",
        f"Day {last.day}'s good parts flagged by the first champion (v{result.days[0].version}): "
        f"{_pct(result.first_on_last_day)}; good parts of the unchanged line flagged by the last champion "
        f"(v{last.version}): {_pct(result.unchanged_flagged)}. Day {last.day}'s {_pct(last.flagged_goods)} "
        f"is {'within' if last.flagged_goods <= val_interval(last)[1] else 'above'} the 95 % interval of "
        f"v{last.version}'s validation rate, {_val(last)}.",
        "",
        f"category: {result.category}; change: {CHANGE}; {N_GOOD} good parts a day (the last day also "
        f"{N_DEFECTIVE_LAST} defective); machine: {machine()}; "
        f"command: {command}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="a repository after `dvc repro`")
    parser.add_argument("--category", default="component", help="a built-in category (default component)")
    parser.add_argument("--rounds", type=int, default=2, help="review rounds (default 2)")
    parser.add_argument("--reviewed", type=int, default=30, help="false alarms marked a round, at most (30)")
    parser.add_argument("--out", type=Path, help="write the tables here (and .json beside it)")
    args = parser.parse_args(argv)
    result = run_scenario(args.project.resolve(), args.category, args.rounds, args.reviewed)
    command = (
        f"python -m anomaly_spotter.bench.line --project {args.project} --category {args.category} "
        f"--rounds {args.rounds} --reviewed {args.reviewed}"
    )
    text = report(result, args.project, command)
    print(text)
    if args.out:
        write_report(args.out, text, asdict(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
