"""Benchmark detectors on MVTec-layout categories: accuracy, fit time, speed and peak memory.

    python -m anomaly_spotter.bench --root ../shared/data/mvtec_ad_256 --categories bottle pill \\
        --variant unet_ae --variant patchcore --out benchmarks/results.md

A variant is `DETECTOR[:key=value,...]`: the detector's section of params.yaml with those keys
overridden (`train.<key>` overrides the train section), plus two keys of its own: `image_size` (the
prepared size, default 128 for unet_ae and 256 for patchcore) and `label` (the row name). Each
(variant, category) runs in a fresh subprocess so its peak memory (max RSS) is its own. Metrics are
on the category's test split; nothing is tuned on it here.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

DEFAULT_IMAGE_SIZE = {"unet_ae": 128, "patchcore": 256}
COLUMNS = (
    "variant",
    "category",
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "f1_max",
    "fit_s",
    "ms_per_image",
    "peak_mb",
)


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """`patchcore:input_size=320,stages=[3]` -> ("patchcore", {"input_size": 320, "stages": [3]})."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, _split_top_level(rest)):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"bench: variant option {item!r} in {spec!r} is not key=value")
        options[key.strip()] = yaml.safe_load(value)
    return name, options


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def run_job(root: Path, category: str, spec: str, params_path: Path) -> dict[str, Any]:
    """Fit and evaluate one variant on one category in this process."""
    import numpy as np
    import torch

    from anomaly_spotter.anomaly_map import image_scores
    from anomaly_spotter.config import load_params
    from anomaly_spotter.data.prepare import load_prepared, prepare_category
    from anomaly_spotter.detectors import build_detector
    from anomaly_spotter.metrics import summarize_category
    from anomaly_spotter.scoring import score_batches

    name, options = parse_variant(spec)
    label = str(options.pop("label", spec))
    image_size = int(options.pop("image_size", DEFAULT_IMAGE_SIZE.get(name, 128)))
    train = {k.removeprefix("train."): options.pop(k) for k in list(options) if k.startswith("train.")}
    params = load_params(params_path)
    section = {**getattr(params.model, name), **options}
    params = replace(
        params,
        model=replace(params.model, name=name, **{name: section}),
        train=replace(params.train, **train),
    )
    torch.set_num_threads(params.train.num_threads)
    with tempfile.TemporaryDirectory() as tmp:
        prepare_category(root, category, Path(tmp), image_size, params.data.val_fraction, params.seed, False)
        data = load_prepared(Path(tmp))
        train, val, test = data.split("train"), data.split("val"), data.split("test")
        detector = build_detector(params)
        if hasattr(detector, "progress"):
            detector.progress = False
        start = time.perf_counter()
        detector.fit(np.asarray(train.images), np.asarray(val.images))
        fit_s = time.perf_counter() - start
        images = np.asarray(test.images)
        start = time.perf_counter()
        maps, _ = score_batches(
            detector, images, params.process.batch_size, params.process.image_score, False
        )
        ms = 1000 * (time.perf_counter() - start) / len(images)
        frame = test.index.assign(score=image_scores(maps, params.process.image_score))
        summary = summarize_category(frame, np.asarray(test.masks), maps)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "variant": label,
        "category": category,
        **{k: summary[k] for k in COLUMNS[2:6]},
        "fit_s": fit_s,
        "ms_per_image": ms,
        "peak_mb": peak_mb,
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [
            f"{row[c]:.4f}"
            if c in COLUMNS[2:6]
            else f"{row[c]:.1f}"
            if isinstance(row[c], float)
            else str(row[c])
            for c in COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m anomaly_spotter.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", type=Path, required=True, help="dataset root in the MVTec AD layout")
    parser.add_argument("--categories", nargs="+", required=True, help="category folder names")
    parser.add_argument(
        "--variant",
        action="append",
        default=None,
        help="DETECTOR[:key=value,...]; repeatable (default: unet_ae and patchcore)",
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="base parameters")
    parser.add_argument("--out", type=Path, help="also write the markdown table (and a .json beside it)")
    parser.add_argument("--job", nargs=2, metavar=("VARIANT", "CATEGORY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        print(json.dumps(run_job(args.root, args.job[1], args.job[0], args.params)))
        return
    rows = []
    for spec in args.variant or ["unet_ae", "patchcore"]:
        for category in args.categories:
            cmd = [
                sys.executable,
                "-m",
                "anomaly_spotter.bench",
                "--root",
                str(args.root),
                "--params",
                str(args.params),
                "--categories",
                category,
                "--job",
                spec,
                category,
            ]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f"bench: {spec} on {category} failed:\n{result.stderr[-3000:]}")
            row = json.loads(result.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{row['variant']:<40} {category:<12} image AUROC {row['image_auroc']:.4f}  pixel AUROC "
                f"{row['pixel_auroc']:.4f}  AUPRO {row['aupro']:.4f}  fit {row['fit_s']:.1f}s  "
                f"{row['ms_per_image']:.1f} ms/img  peak {row['peak_mb']:.0f} MB",
                flush=True,
            )
    table = markdown_table(rows)
    machine = f"{platform.machine()}, {_cpus()} CPU cores, Python {platform.python_version()}"
    print(f"\n{table}\n\nmachine: {machine}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"{table}\n\nmachine: {machine}; data: {args.root}\n")
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    main()
