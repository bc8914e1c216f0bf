"""Batch-scoring benchmark: `anomaly-spotter predict` against `anomaly-spotter score-spark` on the same
images and model: images per second, peak memory, and whether every row agrees.

    python -m anomaly_spotter.bench.spark --model models:/anomaly-spotter-fabric@champion \\
        --images data/builtin/*/train data/builtin/*/test --master 'local[2]' --copies 1 8 \\
        --out benchmarks/spark.md

The images found (as `predict` finds them) are copied into one temporary folder, the input of every
command (`--copies 1 8`: once, then a second table block with each image copied 8 times, to see how the
fixed costs weigh with more images). Each command runs as a subprocess, as a user runs it, `--repeat`
times (the table gives the median wall time and the highest peak): `predict FOLDER --csv ...` (one
process, chunks of 16, torch on all cores), the same with one torch thread (OMP_NUM_THREADS=1, as in
each Spark task) and, for each `--master`, `score-spark --input FOLDER --output ... --master M`. Wall
time is the whole command, model loading and, for Spark, starting the JVM included (score-spark's own
split is shown beside it); images/s is images / wall time. Peak memory is the highest sum over the
command's whole process tree (for Spark: the JVM, driver and executor in local mode, and every Python
worker), sampled every 0.1 s, of each process's proportional set size (PSS: pages that forked workers
share are split among them, not counted in each); the sum of resident sizes (RSS), which counts shared
pages in every process, is given too. Every row is then compared with predict's: verdict,
anomaly_percentage, and the largest score difference (float32 sums come out in another order with
another number of threads or other batches: the 1-thread predict row shows how large that is). Exit
status 1 if a verdict or an anomaly_percentage differs. Tracking store: MLFLOW_TRACKING_URI (default
sqlite:///mlflow.db here).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anomaly_spotter.bench.common import cli_command, cpu_model, cpus, write_report

SAMPLE_S = 0.1
TIMING = re.compile(r"timing: Spark session start ([\d.]+) s, scoring and writing ([\d.]+) s")


@dataclass
class Measured:
    returncode: int
    wall_s: float
    peak_mb: float  # highest sum of the tree's proportional set sizes (PSS)
    peak_rss_mb: float  # highest sum of the tree's resident set sizes (RSS: shared pages in each)
    stdout: str
    stderr: str


def tree_memory(pid: int) -> tuple[int, int]:
    """(PSS, RSS) bytes of process `pid` and all its descendants, summed ((0, 0) once it is gone). PSS
    splits the pages that forked processes share (Spark's Python workers), so its sum is the memory the
    tree really holds; where PSS cannot be read, RSS stands in."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    pss = rss = 0
    for proc in procs:
        try:
            info = proc.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return pss, rss


def run_measured(cmd: Sequence[str], env: dict[str, str] | None = None) -> Measured:
    """Run `cmd` to completion; its wall time and the peak memory of its process tree."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pss, rss = tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], pss), max(peak[1], rss)
            done.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    return Measured(proc.returncode, wall, peak[0] / 2**20, peak[1] / 2**20, stdout, stderr)


def read_rows(path: Path) -> dict[str, dict[str, Any]]:
    """Scored rows by path: predict's CSV, or score-spark's Parquet (rows with an error left out)."""
    import pandas as pd

    if path.suffix == ".csv":
        with path.open() as f:
            return {row["path"]: row for row in csv.DictReader(f)}
    frame = pd.read_parquet(path)
    return {str(r["path"]): r for r in frame[frame["error"].isna()].to_dict("records")}


def compare(got: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How far `got`'s rows are from `want`'s (predict's): rows compared (scored by either), rows with the
    same verdict and the same anomaly_percentage (a row only one of them scored counts as different), and
    the largest absolute score difference."""
    paths = set(got) | set(want)
    both = [p for p in paths if p in got and p in want]
    diffs = [abs(float(got[p]["score"]) - float(want[p]["score"])) for p in both]
    return {
        "compared": len(paths),
        "verdicts_equal": sum(got[p]["verdict"] == want[p]["verdict"] for p in both),
        "percentages_equal": sum(
            float(got[p]["anomaly_percentage"]) == float(want[p]["anomaly_percentage"]) for p in both
        ),
        "max_abs_score_diff": max(diffs, default=0.0),
        "scores_equal": sum(d == 0.0 for d in diffs),
    }


def gather_images(sources: Sequence[Path], dst: Path) -> dict[str, Any]:
    """Copy the images `predict` finds in `sources` into `dst` (one input folder for both commands, the
    same names for both), and describe them: count, sizes, formats, megabytes."""
    from PIL import Image

    from anomaly_spotter.serving.inputs import collect_images

    files, stems, errors = collect_images(list(sources))
    if errors:
        raise SystemExit(f"spark_bench: {'; '.join(errors)}")
    sizes: dict[str, int] = {}
    formats: dict[str, int] = {}
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                key, kind = f"{img.width}x{img.height}", img.format or "?"
        except (OSError, ValueError):
            key = kind = "unreadable"
        sizes[key] = sizes.get(key, 0) + 1
        formats[kind] = formats.get(kind, 0) + 1
        target = dst / f"{i:06d}_{stems[path]}{path.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return {
        "images": len(files),
        "sizes": sizes,
        "formats": formats,
        "mb": sum(p.stat().st_size for p in files) / 2**20,
    }


def machine() -> str:
    """CPU model, cores, memory, Python, torch, pyspark and Java versions."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = cpu_model()
    cores = cpus()
    try:
        import psutil

        mem = f", {psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        mem = ""
    versions = []
    for pkg in ("torch", "pyspark", "mlflow"):
        try:
            versions.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            versions.append(f"{pkg} not installed")
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=60).stderr
        versions.append(java.splitlines()[0].replace('"', "") if java else "java ?")
    except (OSError, subprocess.SubprocessError):
        versions.append("no java")
    return f"{cpu}, {cores} CPU cores{mem}; Python {platform.python_version()}, {', '.join(versions)}"


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| command | images | wall s | images/s | peak MB (PSS) | peak MB (RSS sum) | Spark start s | "
        "verdicts / percentages equal to predict's | max abs score difference |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        start = f"{r['session_s']:.1f}" if r.get("session_s") is not None else "-"
        if r.get("compared") is None:
            equal, diff = "(reference)", "-"
        else:
            equal = f"{r['verdicts_equal']} / {r['percentages_equal']} of {r['compared']}"
            diff = f"{r['max_abs_score_diff']:.1e} ({r['scores_equal']} identical)"
        lines.append(
            f"| {r['command']} | {r['images']} | {r['wall_s']:.1f} | {r['images_per_s']:.1f} | "
            f"{r['peak_mb']:,.0f} | {r['peak_rss_mb']:,.0f} | {start} | {equal} | {diff} |"
        )
    return "\n".join(lines)


def _median_run(cmd: list[str], repeat: int, env: dict[str, str]) -> tuple[Measured, list[Measured]]:
    runs = []
    for _ in range(repeat):
        run = run_measured(cmd, env)
        if run.returncode not in (0, 1) or "Traceback" in run.stderr:
            raise SystemExit(f"spark_bench: {' '.join(cmd)} failed ({run.returncode}):\n{run.stderr[-4000:]}")
        runs.append(run)
    runs.sort(key=lambda r: r.wall_s)
    return runs[len(runs) // 2], runs


def _measure(
    label: str, cmd: list[str], result: Path, env: dict[str, str], repeat: int, n: int
) -> dict[str, Any]:
    """One table row: `cmd` run `repeat` times; its rows (`result`) kept under "result" for `compare`."""
    best, runs = _median_run(cmd, repeat, env)
    timing = TIMING.search(best.stdout)
    row = {
        "command": label,
        "images": n,
        "wall_s": best.wall_s,
        "images_per_s": n / best.wall_s,
        "peak_mb": max(r.peak_mb for r in runs),
        "peak_rss_mb": max(r.peak_rss_mb for r in runs),
        "session_s": float(timing.group(1)) if timing else None,
        "job_s": float(timing.group(2)) if timing else None,
        "result": read_rows(result),
    }
    print(
        f"{label}: {n} images in {best.wall_s:.1f} s (runs: {', '.join(f'{r.wall_s:.1f}' for r in runs)} s), "
        f"peak {row['peak_mb']:,.0f} MB PSS / {row['peak_rss_mb']:,.0f} MB RSS sum"
        f"{'; ' + timing.group(0) if timing else ''}",
        flush=True,
    )
    return row


def bench_size(args: argparse.Namespace, copies: int, tmp: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """The rows for the images of `args.images`, each `copies` times: predict, predict on 1 thread, and
    score-spark on each master, each compared with predict."""
    folder = tmp / f"images-x{copies}"
    data = gather_images([p for _ in range(copies) for p in args.images], folder)
    n = data["images"]
    rows: list[dict[str, Any]] = []
    predict = [*cli_command(), "predict", str(folder), "--model", args.model, "--no-progress", "--csv"]
    csv1, csv2 = tmp / f"predict-x{copies}.csv", tmp / f"predict-1-thread-x{copies}.csv"
    rows.append(_measure("predict", [*predict, str(csv1)], csv1, env, args.repeat, n))
    one_thread = {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    rows.append(_measure("predict, 1 torch thread", [*predict, str(csv2)], csv2, one_thread, args.repeat, n))
    for i, master in enumerate(args.master or ["local[2]"]):
        out = tmp / f"scores-x{copies}-{i}.parquet"
        cmd = [*cli_command(), "score-spark", "--model", args.model, "--input", str(folder)]
        cmd += ["--output", str(out), "--master", master, "--overwrite", "--no-progress"]
        cmd += [x for c in args.conf for x in ("--conf", c)]
        rows.append(_measure(f"score-spark --master {master}", cmd, out, env, args.repeat, n))
    reference = rows[0].pop("result")
    rows[0] |= {"compared": None, "data": data}
    for row in rows[1:]:
        row |= compare(row.pop("result"), reference)
        print(
            f"{row['command']} vs predict: verdicts equal {row['verdicts_equal']}/{row['compared']}, "
            f"anomaly_percentage equal {row['percentages_equal']}/{row['compared']}, largest score "
            f"difference {row['max_abs_score_diff']:.2g} ({row['scores_equal']} identical)",
            flush=True,
        )
    return rows


def describe(data: dict[str, Any]) -> str:
    common = sorted(data["sizes"].items(), key=lambda kv: -kv[1])
    sizes = ", ".join(f"{k} ({v})" for k, v in common[:3])
    sizes += f", {len(common) - 3} other sizes" if len(common) > 3 else ""
    formats = ", ".join(f"{k} ({v})" for k, v in data["formats"].items())
    return f"{formats}; {sizes}; {data['mb']:.1f} MB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m anomaly_spotter.bench.spark",
        description="images/s and peak memory of `predict` and `score-spark` on the same images and model",
        epilog="Example: python -m anomaly_spotter.bench.spark --model "
        "models:/anomaly-spotter-fabric@champion --images data/builtin/*/train data/builtin/*/test "
        "--master 'local[2]' --copies 1 8 --out benchmarks/spark.md",
    )
    parser.add_argument("--model", required=True, help="models:/anomaly-spotter-<c>@champion, ...")
    parser.add_argument(
        "--images", type=Path, nargs="+", required=True, help="image files or folders (searched recursively)"
    )
    parser.add_argument(
        "--master", action="append", help="Spark master(s) for score-spark, repeatable (default local[2])"
    )
    parser.add_argument(
        "--copies",
        type=int,
        nargs="+",
        default=[1],
        help="also measure with the images copied this many times (e.g. 1 8: the images, then 8 x as many)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each command (median wall time)")
    parser.add_argument("--conf", action="append", default=[], help="a Spark setting for score-spark")
    parser.add_argument("--out", type=Path, help="write the table (Markdown) here, and a .json beside it")
    args = parser.parse_args(argv)
    if args.repeat < 1 or min(args.copies) < 1:
        parser.error("--repeat and --copies must be at least 1")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="spark-bench-") as tmp:
        for copies in args.copies:
            rows += bench_size(args, copies, Path(tmp), env)
    first = next(r["data"] for r in rows if "data" in r)
    sources = " ".join(str(p) for p in args.images)
    host = machine()
    text = (
        f"{markdown(rows)}\n\nmodel: {args.model}; data: the {first['images']} images of {sources} "
        f"({describe(first)}), copied {' and '.join(map(str, args.copies))} times; repeat: {args.repeat} "
        f"(median wall time); machine: {host}\n"
    )
    print(f"\n{text}")
    if args.out:
        payload = {"rows": rows, "model": args.model, "machine": host, "argv": sys.argv[1:]}
        write_report(args.out, text, payload)
    same = all(
        r["compared"] is None or r["verdicts_equal"] == r["percentages_equal"] == r["compared"] for r in rows
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
