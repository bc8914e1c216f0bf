"""Edge-export benchmark: the torch service model against its fp32 and int8 ONNX exports, side by side.

    python -m anomaly_spotter.bench.export --root ../shared/data/mvtec_ad_256 --categories bottle pill \\
        --variant '[[3]]' --variant '[[3],[2,3],[3,5]]' --out benchmarks/export.md

For each category and PatchCore `members` variant (other settings from params.yaml, images prepared at
`--image-size`, 80 % of train/good fitted, 20 % for the standardisation and the pixel calibration, as the
pipeline does): fit, save the torch service model as a local pyfunc folder, export it to fp32 and int8
(`anomaly_spotter.deploy.export`, calibrated on 32 training images), then for each of the three:

- ms / image: batch scoring of the test split in this process (`scoring.score_batches`, batches of 16,
  after a warm-up batch; the median of 3 passes), torch on `train.num_threads` threads, ONNX Runtime on
  its default (one thread per core);
- image and pixel AUROC on the test split, and the largest score difference from the torch model;
- `predict` on the test folder as a subprocess (`anomaly-spotter predict DIR --model FOLDER`): wall time
  per image, model loading included, and the process's peak resident memory (its own, from wait4);
- cold start: `anomaly-spotter predict ONE.png --model FOLDER` as a subprocess, wall time (median of
  `--repeat`) and peak resident memory (the largest).

The torch rows load through MLflow and torch; the exported folders through ONNX Runtime alone
(`edge.load_edge_model`). Timing depends on the machine and on what else runs: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from anomaly_spotter.bench.common import cli_command, machine, write_report

CALIBRATION_IMAGES = 32
POLL_S = 0.005
ROUNDS = 3  # batch-scoring passes over the test split per model (the median is reported)
BATCH = 16
COLUMNS = (
    "category",
    "members",
    "model",
    "ms / image (batch)",
    "× torch",
    "image AUROC",
    "pixel AUROC",
    "max Δscore vs torch",
    "predict ms / image",
    "predict peak MB",
    "cold start s",
    "cold start MB",
)


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory (VmHWM) of a running process, in MB; 0 once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def run_child(cmd: list[str]) -> tuple[float, float]:
    """Run `cmd`; its wall time (s) and its own peak resident memory (MB: VmHWM, read every 5 ms until
    it exits; not the rusage of wait4, which on Linux counts the parent's pages copied by fork)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, peak_rss_mb(proc.pid))
        time.sleep(POLL_S)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-2000:]}")
    return wall, peak


def bench_variant(
    root: Path, category: str, members: list[list[int]], image_size: int, params_path: Path, repeat: int
) -> list[dict[str, Any]]:
    """The three rows (torch, onnx fp32, onnx int8) of one category and members variant."""
    import torch

    from anomaly_spotter.core.config import ModelParams, load_params
    from anomaly_spotter.core.metrics import summarize_category
    from anomaly_spotter.core.scoring import score_batches
    from anomaly_spotter.core.thresholds import good_only_threshold
    from anomaly_spotter.data.prepared import load_prepared, prepare_category
    from anomaly_spotter.deploy.export import export_model, score_agreement, spread
    from anomaly_spotter.detectors import build_detector
    from anomaly_spotter.pipeline.train import calibrate_pixels
    from anomaly_spotter.serving.edge import load_edge_model
    from anomaly_spotter.serving.inference import InferenceConfig
    from anomaly_spotter.serving.model import save_service_model

    params = load_params(params_path)
    section = {**params.model.sections.get("patchcore", {}), "members": members}
    params = replace(params, model=ModelParams("patchcore", {"patchcore": section}))
    torch.set_num_threads(params.train.num_threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        prepare_category(
            root, category, tmp / "prepared", image_size, params.data.val_fraction, params.seed, False
        )
        data = load_prepared(tmp / "prepared")
        train, val, test = (np.asarray(data.split(s).images) for s in ("train", "val", "test"))
        detector = build_detector(params).fit(train, val)
        calibrate_pixels(detector, val, params.train.pixel_quantile)
        _, val_scores = score_batches(detector, val, BATCH, params.process.image_score, False)
        threshold = good_only_threshold(val_scores, params.thresholds.good_fpr)  # as compute_thresholds
        config = InferenceConfig.for_model(
            detector,
            category,
            image_size,
            threshold,
            "good_only",
            params.process.image_score,
            BATCH,
            "calibrated",
        )
        detector.save(tmp / "model.pt")
        folders = {"torch": tmp / "torch"}
        save_service_model(folders["torch"], tmp / "model.pt", config, detector.kind)
        service = SimpleNamespace(detector=detector, config=config)
        calibration = list(spread(list(train), CALIBRATION_IMAGES))
        for name, int8 in (("onnx fp32", False), ("onnx int8", True)):
            folders[name] = tmp / name.replace(" ", "_")
            export_model(service, folders[name], calibration, int8, "bench")
        test_dir = root / category / "test"
        one = sorted((test_dir / "good").iterdir())[0]
        masks = np.asarray(data.split("test").masks)
        index = data.split("test").index
        reference = None
        for name, folder in folders.items():
            scorer = detector if name == "torch" else load_edge_model(folder).detector
            score_batches(scorer, test[:BATCH], BATCH, config.reduction, False)  # warm-up
            times = []
            for _ in range(ROUNDS):
                start = time.perf_counter()
                maps, scores = score_batches(scorer, test, BATCH, config.reduction, False)
                times.append(time.perf_counter() - start)
            ms = 1000 * statistics.median(times) / len(test)
            summary = summarize_category(
                index.assign(score=scores),
                masks,
                maps,
                params.metrics.aupro_fpr_limit,
                pixel_rows=index["has_mask"].to_numpy().astype(bool),
            )
            reference = scores if reference is None else reference
            predict_wall, predict_mb = run_child(
                [
                    *cli_command(),
                    "predict",
                    str(test_dir),
                    "--model",
                    str(folder),
                    "--csv",
                    str(tmp / "p.csv"),
                    "--no-progress",
                ]
            )
            cold = [
                run_child(
                    [*cli_command(), "predict", str(one), "--model", str(folder), "--csv", str(tmp / "c.csv")]
                )
                for _ in range(repeat)
            ]
            rows.append(
                {
                    "category": category,
                    "members": str(members).replace(" ", ""),
                    "model": name,
                    "ms_per_image": ms,
                    "image_auroc": summary["image_auroc"],
                    "pixel_auroc": summary["pixel_auroc"],
                    **score_agreement(scores, reference, threshold),
                    "n_test": len(test),
                    "predict_s_per_image": predict_wall / len(test),
                    "predict_peak_mb": predict_mb,
                    "cold_start_s": statistics.median(c[0] for c in cold),
                    "cold_start_mb": max(c[1] for c in cold),
                }
            )
            print(describe(rows[-1], rows[0]), flush=True)
    return rows


def describe(row: dict[str, Any], torch_row: dict[str, Any]) -> str:
    return (
        f"{row['category']} {row['members']} {row['model']}: {row['ms_per_image']:.1f} ms/image "
        f"({row['ms_per_image'] / torch_row['ms_per_image']:.2f} x torch), image AUROC "
        f"{row['image_auroc']:.4f}, pixel AUROC {row['pixel_auroc']:.4f}, max |dscore| "
        f"{row['max_abs_score_diff']:.3g}, cold start "
        f"{row['cold_start_s']:.2f} s / {row['cold_start_mb']:.0f} MB"
    )


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for i, r in enumerate(rows):
        torch_row = rows[i - i % 3]
        lines.append(
            f"| {r['category']} | `{r['members']}` | {r['model']} | {r['ms_per_image']:.1f} | "
            f"{r['ms_per_image'] / torch_row['ms_per_image']:.2f} | {r['image_auroc']:.4f} | "
            f"{r['pixel_auroc']:.4f} | {r['max_abs_score_diff']:.2g} (verdicts "
            f"{r['verdicts_equal']}/{r['n_test']}) | {r['predict_s_per_image'] * 1000:.1f} | "
            f"{r['predict_peak_mb']:,.0f} | {r['cold_start_s']:.2f} | {r['cold_start_mb']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="MVTec AD layout folder")
    parser.add_argument("--categories", nargs="+", required=True)
    parser.add_argument(
        "--variant", action="append", default=None, help="PatchCore members, e.g. '[[3]]' (repeatable)"
    )
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--repeat", type=int, default=3, help="cold starts per model (median wall time)")
    parser.add_argument("--out", type=Path, help="write a Markdown table here (and .json beside it)")
    args = parser.parse_args(argv)
    import yaml

    variants = [yaml.safe_load(v) for v in (args.variant or ["[[3]]"])]
    rows: list[dict[str, Any]] = []
    for category in args.categories:
        for members in variants:
            rows.extend(
                bench_variant(args.root, category, members, args.image_size, args.params, args.repeat)
            )
    table = markdown(rows)
    print(table)
    if args.out is not None:
        command = " ".join(argv if argv is not None else sys.argv[1:])
        host = machine()
        header = (
            f"# Edge export: torch / ONNX fp32 / ONNX int8\n\n{host}; image size {args.image_size}; "
            f"`python -m anomaly_spotter.bench.export {command}`\n\n"
        )
        write_report(args.out, header + table, {"machine": host, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
