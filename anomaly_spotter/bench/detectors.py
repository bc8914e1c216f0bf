"""Benchmark detectors on MVTec-layout categories: accuracy, fit time, speed and peak memory.

    python -m anomaly_spotter.bench.detectors --root ../shared/data/mvtec_ad_256 --categories bottle pill \\
        --variant unet_ae --variant patchcore --out benchmarks/results.md

A variant is `DETECTOR[:key=value,...]`: the detector's section of params.yaml with those keys
overridden (`train.<key>` overrides the train section, `process.<key>` the process section), plus three
keys of its own: `image_size` (the prepared size, default 128 for unet_ae and 256 for patchcore),
`seed` (the detector's seed: initial weights, synthetic defects, coreset sampling; the train/val split
keeps the params file's, so rows with different seeds are scored on the same images) and `label` (the
row name). Each (variant, category) runs in a fresh subprocess so its peak memory (max
RSS) is its own. Metrics are on the category's test split; nothing is tuned on it here.

`--builtin fabric washer ...` adds built-in categories, generated at `--builtin-size` px with the
`builtin` section and seed of the params file. `--loco` chooses defaults by leave-one-category-out:
for each category, the variant with the best mean image AUROC over the *other* categories (ties: the
best worst case) is picked, and its score on the held-out category is reported, so no category's
number comes from a choice that looked at it. `--cache FILE` keeps finished (variant, category) rows
in a JSON-lines file, so an interrupted or extended run recomputes only what is new (a row is keyed
by the variant, the category, the data and the params file, not by the code: start a new cache file
after changing the code).

`--seeds 0 1 2` runs each variant once per seed (its `seed` key) and adds a table of each metric's mean
over the seeds, its standard deviation (sample, n - 1) and its range, per variant and category: one
run's number is a sample of its training, the mean and spread are the result. `--loco` then chooses on
the seed means.

    python -m anomaly_spotter.bench.detectors --root ../shared/data/mvtec_ad_256 --categories bottle pill \
        --builtin fabric washer label board component --variant unet_ae --seeds 0 1 2 \
        --out seeds.md    # benchmarks/unet_ae_seeds.md: its command names the variant m2bf16

`--add-rows REPORT.json` adds the rows of an earlier report (the JSON beside its table) to this run's, so
a new variant is compared with a measured one, in the seed tables and `--loco`, without refitting it; with
`--add-rows` alone nothing is fitted and the reports' rows are tabled together.

`--per-type` adds a table of image AUROC per defect type (that type's test images against all good ones),
one column per variant: which kinds of defect a variant finds, and which it misses.

`--sigmas 1 2 4` replaces each variant's row by one row per smoothing of its anomaly maps (the detector's
`sigma`, for the map and the image score alike; post-processing only: the model is fitted once and its
test maps re-smoothed), labelled `<variant> sigma=<s>`; with `--loco` the smoothing is chosen by
leave-one-category-out like a variant. `--loco` reports the selection by image AUROC and by pixel AUROC,
each on its own (the image score's smoothing, unet_ae `score_sigma`, and the map's, `sigma`, can differ).

    python -m anomaly_spotter.bench.detectors --root ../shared/data/mvtec_ad_256 --categories bottle pill \\
        --builtin fabric washer label --variant unet_ae:label=default --sigmas 1 2 3 4 5 6 --loco \\
        --out sigma.md    # benchmarks/unet_ae_sigma.md: an earlier training, with a scars variant

`--fit-sizes 50 200 1000 2000` measures how fitting scales instead: for each category and size N, the
first variant is fitted on N training images (the category's train split repeated with light
augmentation: mirror flips and shifts of up to 8 px, seeded) and the table gives fit time, peak memory,
memory-bank size (patches, all members) and ms per scored test image, with the test AUROCs for reference.

    python -m anomaly_spotter.bench.detectors --root ../shared/data/mvtec_ad_256 --categories pill \\
        --fit-sizes 50 200 1000 2000 --out benchmarks/fit_scaling.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import yaml

from anomaly_spotter.bench.common import machine, write_report

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
    """`patchcore:input_size=320,members=[[3]]` -> ("patchcore", {"input_size": 320, "members": [[3]]})."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, _split_top_level(rest)):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"bench: variant option {item!r} in {spec!r} is not key=value")
        key = key.strip()
        options[key] = value.strip() if key == "label" else yaml.safe_load(value)
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


SCALING_COLUMNS = ("category", "n_train", "fit_s", "peak_mb", "bank_size", "ms_per_image", "image_auroc")
MAX_SHIFT = 8


def grow_training_set(images: Any, n: int, seed: int) -> Any:
    """`n` training images from `images` `(M, H, W, 3)`: the originals first (cycled), each copy after
    the first M randomly mirrored (left-right and/or up-down) and shifted by up to MAX_SHIFT px (edge
    pixels repeated), so repeats are not identical patches."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = np.empty((n, *images.shape[1:]), dtype=images.dtype)
    for i in range(n):
        img = images[i % len(images)]
        if i >= len(images):
            if rng.random() < 0.5:
                img = img[:, ::-1]
            if rng.random() < 0.5:
                img = img[::-1]
            dy, dx = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=2)
            pad = np.pad(img, ((MAX_SHIFT, MAX_SHIFT), (MAX_SHIFT, MAX_SHIFT), (0, 0)), mode="edge")
            h, w = img.shape[:2]
            img = pad[MAX_SHIFT + dy : MAX_SHIFT + dy + h, MAX_SHIFT + dx : MAX_SHIFT + dx + w]
        out[i] = img
    return out


def run_job(
    root: Path,
    category: str,
    spec: str,
    params_path: Path,
    n_train: int | None = None,
    sigmas: list[float] | None = None,
) -> list[dict[str, Any]]:
    """Fit and evaluate one variant on one category in this process (on `n_train` training images grown
    by `grow_training_set`, if given): one row, or one per smoothing in `sigmas` (same fit)."""
    import numpy as np
    import torch

    from anomaly_spotter.core.config import ModelParams, TrainParams, load_params
    from anomaly_spotter.core.metrics import summarize_category
    from anomaly_spotter.core.scoring import score_batches
    from anomaly_spotter.data.prepared import load_prepared, prepare_category
    from anomaly_spotter.detectors import build_detector

    name, options = parse_variant(spec)
    label = str(options.pop("label", spec))
    image_size = int(options.pop("image_size", DEFAULT_IMAGE_SIZE.get(name, 128)))
    seed = options.pop("seed", None)
    train = {k.removeprefix("train."): options.pop(k) for k in list(options) if k.startswith("train.")}
    process = {k.removeprefix("process."): options.pop(k) for k in list(options) if k.startswith("process.")}
    params = load_params(params_path)
    section = {**params.model.sections.get(name, {}), **options}
    # train.K: a `train` key (num_threads, ...), else a key of the detector's loop (model.<name>.training)
    shared = {f.name for f in fields(TrainParams)}
    loop = {k: train.pop(k) for k in list(train) if k not in shared}
    if loop:
        section["training"] = {**section.get("training", {}), **loop}
    params = replace(
        params,
        model=ModelParams(name, {**params.model.sections, name: section}),
        train=replace(params.train, **train),
        process=replace(params.process, **process),
    )
    torch.set_num_threads(params.train.num_threads)
    with tempfile.TemporaryDirectory() as tmp:
        prepare_category(root, category, Path(tmp), image_size, params.data.val_fraction, params.seed, False)
        data = load_prepared(Path(tmp))
        train, val, test = data.split("train"), data.split("val"), data.split("test")
        train_images = np.asarray(train.images)
        if n_train is not None:
            train_images = grow_training_set(train_images, n_train, params.seed)
        detector = build_detector(params if seed is None else replace(params, seed=int(seed)))
        detector.progress = False
        start = time.perf_counter()
        detector.fit(train_images, np.asarray(val.images))
        fit_s = time.perf_counter() - start
        images = np.asarray(test.images)
        evaluated = []
        for sigma in sigmas or [None]:
            if sigma is not None:
                set_sigma(detector, sigma)
            start = time.perf_counter()
            maps, scores = score_batches(
                detector, images, params.process.batch_size, params.process.image_score, False
            )
            ms = 1000 * (time.perf_counter() - start) / len(images)
            frame = test.index.assign(score=scores)
            summary = summarize_category(
                frame,
                np.asarray(test.masks),
                maps,
                params.metrics.aupro_fpr_limit,
                pixel_rows=test.index["has_mask"].to_numpy().astype(bool),
            )
            evaluated.append((label if sigma is None else f"{label} sigma={sigma:g}", summary, ms))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    banks = [b for n, b in detector.module().named_buffers() if n.startswith("memory_bank")]
    return [
        {
            "variant": name,
            "category": category,
            **{k: summary[k] for k in COLUMNS[2:6]},
            "fit_s": fit_s,
            "ms_per_image": ms,
            "peak_mb": peak_mb,
            "n_train": len(train_images),
            "bank_size": sum(len(b) for b in banks),
            "per_type": {k.partition(".")[2]: summary[k] for k in summary if k.startswith("image_auroc.")},
        }
        for name, summary, ms in evaluated
    ]


def set_sigma(detector: Any, sigma: float) -> None:
    """Set a fitted detector's map smoothing, for its map and its image score alike (unet_ae: `sigma`
    and `score_sigma`; patchcore: `config.sigma`)."""
    if hasattr(detector, "sigma"):
        detector.sigma, detector.score_sigma = float(sigma), None
    elif hasattr(getattr(detector, "config", None), "sigma"):
        detector.config = replace(detector.config, sigma=float(sigma))
    else:
        raise SystemExit(f"bench: --sigmas: a {detector.kind} detector has no map smoothing to set")


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


def loco_table(rows: list[dict[str, Any]], metric: str = "image_auroc") -> tuple[str, list[dict[str, Any]]]:
    """Leave-one-category-out selection over a full (variant x category) grid of rows.

    For each category c, the variant with the best mean `metric` over the other categories is chosen
    (ties broken by the best minimum over them) and its `metric` on c is reported, beside the best
    variant on c itself (the oracle, which a user never has). Returns the markdown table and its rows.
    """
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    categories = list(dict.fromkeys(r["category"] for r in rows))
    value = {(r["variant"], r["category"]): float(r[metric]) for r in rows}
    missing = [(v, c) for v in variants for c in categories if (v, c) not in value]
    if missing:
        raise SystemExit(f"bench: --loco needs every variant on every category; missing {missing}")
    if len(categories) < 2:
        raise SystemExit("bench: --loco needs at least two categories")
    out = []
    for held in categories:
        others = [c for c in categories if c != held]

        def rank(v: str, others: list[str] = others) -> tuple[float, float]:
            scores = [value[v, c] for c in others]
            return sum(scores) / len(scores), min(scores)

        chosen = max(variants, key=rank)
        oracle = max(variants, key=lambda v, held=held: value[v, held])
        out.append(
            {
                "held_out": held,
                "chosen": chosen,
                metric: value[chosen, held],
                "others_mean": rank(chosen)[0],
                "oracle": oracle,
                f"oracle_{metric}": value[oracle, held],
            }
        )
    mean = sum(r[metric] for r in out) / len(out)
    lines = [
        f"| held-out category | variant chosen on the others | {metric} | mean on the others | "
        f"best on this category | its {metric} |",
        "|---|---|---|---|---|---|",
    ]
    for r in out:
        lines.append(
            f"| {r['held_out']} | {r['chosen']} | {r[metric]:.4f} | {r['others_mean']:.4f} | "
            f"{r['oracle']} | {r[f'oracle_{metric}']:.4f} |"
        )
    lines.append(f"| **mean** | | **{mean:.4f}** | | | |")
    per_variant = ["", f"| variant | mean {metric} | min {metric} |", "|---|---|---|"]
    for v in variants:
        scores = [value[v, c] for c in categories]
        per_variant.append(f"| {v} | {sum(scores) / len(scores):.4f} | {min(scores):.4f} |")
    return "\n".join(lines + per_variant), out


def per_type_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: image AUROC per defect type (that type's images against all good images), one row per
    (category, defect type), one column per variant."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    value = {(r["variant"], r["category"]): r.get("per_type") for r in rows}
    stale = sorted({v for (v, _), types in value.items() if types is None})
    if stale:
        raise SystemExit(
            f"bench: --per-type: rows of {stale} come from a cache written before per-type values were "
            "kept; start a new --cache file"
        )
    lines = [
        "| category | defect type | " + " | ".join(variants) + " |",
        "|---|---|" + "---|" * len(variants),
    ]
    for category in dict.fromkeys(r["category"] for r in rows):
        types = dict.fromkeys(t for v in variants for t in value.get((v, category)) or {})
        for t in types:
            cells = [value.get((v, category), {}).get(t) for v in variants]
            lines.append(
                f"| {category} | {t} | " + " | ".join("" if c is None else f"{c:.4f}" for c in cells) + " |"
            )
    return "\n".join(lines)


def scaling_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per (category, training-set size)."""
    names = ("category", "training images", "fit s", "peak MB", "bank (patches)", "ms / image", "image AUROC")
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in rows:
        cells = [
            row["category"],
            str(row["n_train"]),
            f"{row['fit_s']:.1f}",
            f"{row['peak_mb']:.0f}",
            f"{row['bank_size']:,}",
            f"{row['ms_per_image']:.1f}",
            f"{row['image_auroc']:.4f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SEED_METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1_max")


def seeded(spec: str, seeds: list[int]) -> list[tuple[str, str, int]]:
    """(spec with `seed=s`, the variant's name, s) for each seed s; the name is its label (or spec)."""
    _, options = parse_variant(spec)
    if "seed" in options:
        raise SystemExit(f"bench: --seeds: variant {spec!r} sets its own seed; drop one of them")
    sep = "," if ":" in spec else ":"
    return [(f"{spec}{sep}seed={s}", str(options.get("label", spec)), s) for s in seeds]


def name_seeded(rows: list[dict[str, Any]], spec: str, base: str, seed: int) -> list[dict[str, Any]]:
    """`seeded` job rows renamed: `base` (in place of the seeded spec's label; a `--sigmas` suffix
    kept) as `base`, and `<base> seed=<seed>` as `variant`."""
    label = str(parse_variant(spec)[1].get("label", spec))
    out = []
    for row in rows:
        name = base + row["variant"].removeprefix(label)
        out.append({**row, "variant": f"{name} seed={seed}", "base": name, "seed": seed})
    return out


def seed_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (variant, category) of `--seeds` rows: each metric's mean, sample standard deviation
    (0 for one seed), min and max over the seeds, and the mean and longest fit."""
    import numpy as np

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["base"], row["category"]), []).append(row)
    out = []
    for (base, category), group in groups.items():
        summary: dict[str, Any] = {"variant": base, "category": category, "seeds": [r["seed"] for r in group]}
        for metric in (*SEED_METRICS, "fit_s", "ms_per_image", "peak_mb"):
            values = np.array([r[metric] for r in group], dtype=float)
            summary[metric] = float(values.mean())
            summary[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            summary[f"{metric}_min"], summary[f"{metric}_max"] = float(values.min()), float(values.max())
        out.append(summary)
    return out


def seed_table(summary: list[dict[str, Any]]) -> str:
    """Markdown of `seed_summary`: mean ± standard deviation (min-max) for each metric."""
    names = ("variant", "category", "seeds", "image AUROC", "pixel AUROC", "AUPRO", "F1 max", "fit s (max)")
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in summary:
        cells = [row["variant"], row["category"], " ".join(str(s) for s in row["seeds"])]
        cells += [
            f"{row[m]:.3f} ± {row[f'{m}_std']:.3f} ({row[f'{m}_min']:.3f}-{row[f'{m}_max']:.3f})"
            for m in SEED_METRICS
        ]
        cells.append(f"{row['fit_s']:.0f} ({row['fit_s_max']:.0f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _check_distinct(rows: list[dict[str, Any]]) -> None:
    """Refuse two rows of one (variant, category): from `--add-rows`, a report added twice or a label that
    another report (or this run) also uses, which the tables would merge or overwrite."""
    from collections import Counter

    counts = Counter((r["variant"], r["category"]) for r in rows)
    twice = sorted(key for key, n in counts.items() if n > 1)
    if twice:
        raise SystemExit(
            f"bench: rows of the same variant and category twice: {twice}; --add-rows each report once, and "
            "give a new variant a label no added report uses"
        )


def read_report_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a report written with `--out` (its JSON: a list of rows, or `{"rows": [...], ...}`)."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"bench: --add-rows {path}: not a readable report JSON ({exc})") from None
    rows = payload.get("rows") if isinstance(payload, dict) else payload
    if not isinstance(rows, list) or not all(isinstance(r, dict) and set(COLUMNS) <= set(r) for r in rows):
        raise SystemExit(
            f"bench: --add-rows {path}: expected the JSON a --out of this benchmark writes (rows with "
            f"{', '.join(COLUMNS)}); give the .json beside the report's .md"
        )
    return rows


def _job_key(spec: str, category: str, root: Path, params: Path, sigmas: list[float] | None = None) -> str:
    """Cache key of one (variant, category) job: the spec, the data, the params file's content (and the
    smoothings rescored, when there are)."""
    job = [spec, category, str(root.resolve()), params.read_text()] + ([sigmas] if sigmas else [])
    return hashlib.sha256(json.dumps(job).encode()).hexdigest()[:16]


def _read_cache(path: Path | None) -> dict[str, list[dict[str, Any]]]:
    """Cached jobs: key -> their rows (entries written before `--sigmas` hold one `row`)."""
    if path is None or not path.is_file():
        return {}
    entries = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {e["key"]: e["rows"] if "rows" in e else [e["row"]] for e in entries}


def _builtin_root(categories: list[str], size: int, params_path: Path, tmp: Path) -> Path:
    """Generate the built-in `categories` at `size` px under `tmp` (the params file's spec and seed)."""
    from dataclasses import asdict

    from anomaly_spotter.core.config import load_params
    from anomaly_spotter.data.builtin import BuiltinSpec, generate_dataset

    params = load_params(params_path)
    spec = BuiltinSpec(**{**asdict(params.builtin), "image_size": size})
    root = tmp / f"builtin-{size}"
    generate_dataset(root, categories, spec, params.seed, progress=False)
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m anomaly_spotter.bench.detectors",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", type=Path, help="dataset root in the MVTec AD layout")
    parser.add_argument("--categories", nargs="+", default=[], help="category folder names under --root")
    parser.add_argument("--builtin", nargs="+", default=[], help="built-in categories to generate and add")
    parser.add_argument("--builtin-size", type=int, default=256, help="size of the generated built-in images")
    parser.add_argument(
        "--variant",
        action="append",
        default=None,
        help="DETECTOR[:key=value,...]; repeatable (default: unet_ae and patchcore)",
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="base parameters")
    parser.add_argument(
        "--loco", action="store_true", help="leave-one-category-out selection tables (image, pixel AUROC)"
    )
    parser.add_argument(
        "--sigmas",
        nargs="+",
        type=float,
        metavar="S",
        help="one row per map smoothing S of each fitted variant (post-processing only, no refit)",
    )
    parser.add_argument(
        "--per-type", action="store_true", help="also a table of image AUROC per defect type and variant"
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, metavar="S", help="run each variant once per seed; adds mean ± spread"
    )
    parser.add_argument("--cache", type=Path, help="JSON-lines file of finished rows, reused and extended")
    parser.add_argument(
        "--add-rows",
        action="append",
        type=Path,
        default=[],
        metavar="REPORT_JSON",
        help="rows of an earlier report (its .json) tabled with this run's, not refitted; repeatable",
    )
    parser.add_argument("--out", type=Path, help="also write the markdown table (and a .json beside it)")
    parser.add_argument(
        "--fit-sizes",
        nargs="+",
        type=int,
        metavar="N",
        help="scaling mode: fit the first variant on N training images each (grown by augmentation)",
    )
    parser.add_argument("--job", nargs=2, metavar=("VARIANT", "CATEGORY"), help=argparse.SUPPRESS)
    parser.add_argument("--job-n-train", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sigmas and min(args.sigmas) < 0:
        parser.error("--sigmas: smoothings must be >= 0")
    if args.job:
        rows = run_job(args.root, args.job[1], args.job[0], args.params, args.job_n_train, args.sigmas)
        print(json.dumps(rows))
        return
    if args.fit_sizes:
        if args.root is None or not args.categories:
            parser.error("--fit-sizes needs --root and --categories")
        if min(args.fit_sizes) < 1:
            parser.error("--fit-sizes: sizes must be >= 1")
        return _run_scaling(args)
    if args.categories and args.root is None:
        parser.error("--categories needs --root")
    if not args.categories and not args.builtin and not args.add_rows:
        parser.error("give --root and --categories, or --builtin, or both (or --add-rows)")
    added = [row for path in args.add_rows for row in read_report_rows(path)]
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        jobs = [(args.root, c) for c in args.categories]
        if args.builtin:
            root = _builtin_root(args.builtin, args.builtin_size, args.params, Path(tmp))
            jobs += [(root, c) for c in args.builtin]
        rows = _run_jobs(args, jobs, args.builtin_size) if jobs else []
    rows += added
    _check_distinct(rows)
    table = markdown_table(rows)
    data = ", ".join(
        ([f"{args.root} ({' '.join(args.categories)})"] if args.categories else [])
        + ([f"built-in {' '.join(args.builtin)} at {args.builtin_size} px"] if args.builtin else [])
    )
    where = f"machine: {machine()}; data: {data}" if jobs else ""
    if args.add_rows:
        reports = ", ".join(str(p) for p in args.add_rows)
        added_from = f"rows added from {reports} (see each report for its machine and data)"
        where = f"{where}; {added_from}" if where else added_from
    text = f"{table}\n\n{where}\n"
    seeded_rows = bool(rows) and all("seed" in r and "base" in r for r in rows)
    if args.seeds and added and not seeded_rows:
        parser.error("--seeds: an --add-rows report has rows without seeds; add it to a run without --seeds")
    summary = seed_summary(rows) if args.seeds or (added and seeded_rows) else []
    if summary:
        seeds = sorted({r["seed"] for r in rows})
        text = (
            f"## Over seeds {' '.join(str(s) for s in seeds)}: mean ± standard deviation (min-max)\n\n"
            f"{seed_table(summary)}\n\n## Each seed\n\n{text}"
        )
    if args.per_type:
        text += f"\n## Image AUROC per defect type\n\n{per_type_table(rows)}\n"
    loco_rows = {}
    if args.loco:
        for metric, name in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC")):
            loco, loco_rows[metric] = loco_table(summary or rows, metric)
            over = " of the seed means" if summary else ""
            text += f"\n## Leave-one-category-out ({name}{over})\n\n{loco}\n"
    print(f"\n{text}")
    if args.out:
        payload: Any = rows
        if args.loco or summary:
            payload = {"rows": rows, "seeds": summary, "loco": loco_rows}
        write_report(args.out, text, payload)


def _run_scaling(args: argparse.Namespace) -> None:
    """`--fit-sizes`: one subprocess per (category, size), the table printed and written to --out."""
    spec = (args.variant or ["patchcore"])[0]
    rows = []
    for category in args.categories:
        for n in args.fit_sizes:
            rows += _subprocess_job(args.root, category, spec, args.params, n)
            row = rows[-1]
            print(
                f"{category:<12} {n:>6} images  fit {row['fit_s']:.1f}s  peak {row['peak_mb']:.0f} MB  "
                f"bank {row['bank_size']}  {row['ms_per_image']:.1f} ms/img  "
                f"image AUROC {row['image_auroc']:.4f}",
                flush=True,
            )
    host = machine()
    text = (
        f"{scaling_table(rows)}\n\nvariant: {spec}; machine: {host}; data: {args.root} "
        f"({' '.join(args.categories)}), training images grown by mirror flips and shifts <= {MAX_SHIFT} px\n"
    )
    print(f"\n{text}")
    if args.out:
        write_report(args.out, text, rows)


def _subprocess_job(
    root: Path,
    category: str,
    spec: str,
    params: Path,
    n_train: int | None = None,
    sigmas: list[float] | None = None,
) -> list[dict[str, Any]]:
    """`run_job` in a fresh process (its peak memory is its own); SystemExit with its stderr on failure."""
    cmd = [sys.executable, "-m", "anomaly_spotter.bench.detectors", "--root", str(root)]
    cmd += ["--params", str(params), "--job", spec, category]
    if n_train is not None:
        cmd += ["--job-n-train", str(n_train)]
    if sigmas:
        cmd += ["--sigmas", *(str(s) for s in sigmas)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench: {spec} on {category} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _run_jobs(args: argparse.Namespace, jobs: list[tuple[Path, str]], builtin_size: int) -> list[dict]:
    """Every (variant, category) job in its own subprocess, reusing and extending `args.cache`."""
    cache = _read_cache(args.cache)
    rows = []
    variants = args.variant or ["unet_ae", "patchcore"]
    specs: list[tuple[str, str | None, int | None]] = (
        [job for v in variants for job in seeded(v, args.seeds)]
        if args.seeds
        else [(v, None, None) for v in variants]
    )
    for spec, name, seed in specs:
        for root, category in jobs:
            data = root if root == args.root else Path(f"builtin-{builtin_size}")
            key = _job_key(spec, category, data, args.params, args.sigmas)
            if key in cache:
                job_rows = cache[key]
            else:
                job_rows = _subprocess_job(root, category, spec, args.params, sigmas=args.sigmas)
                if args.cache:
                    args.cache.parent.mkdir(parents=True, exist_ok=True)
                    with args.cache.open("a") as f:
                        f.write(json.dumps({"key": key, "rows": job_rows}) + "\n")
            if name is not None:
                job_rows = name_seeded(job_rows, spec, name, seed)
            rows += job_rows
            for row in job_rows:
                print(
                    f"{row['variant']:<40} {category:<12} image AUROC {row['image_auroc']:.4f}  pixel AUROC "
                    f"{row['pixel_auroc']:.4f}  AUPRO {row['aupro']:.4f}  fit {row['fit_s']:.1f}s  "
                    f"{row['ms_per_image']:.1f} ms/img  peak {row['peak_mb']:.0f} MB",
                    flush=True,
                )
    return rows


if __name__ == "__main__":
    main()
