"""unet_ae's speed with its weights in the two memory layouts: one training step (the params file's
`model.unet_ae` networks, batch size and crop, synthetic defects included) and scoring (whole images at
`--size` px, per image), contiguous (NCHW) against channels-last (NHWC: a fitted `UNetAEDetector` scores
in it, see `detector._scoring_layout`; training follows `training.channels_last`), both in float32; and
a channels-last training step in bfloat16 (`training.precision: bf16`, the default; scoring stays float32).
Each is timed `--repeats` times after `--warmup` untimed runs on this process's torch threads
(`train.num_threads` of the params file); the table gives the median. Rerun:

    python -m anomaly_spotter.bench.unet_layout --out benchmarks/unet_layout.md
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_spotter.bench.common import machine, write_report

LAYOUTS = ("contiguous", "channels_last")
BF16 = "channels_last, bf16 training"  # the third row: its scoring is channels_last's (float32)


def time_layouts(
    detector: Any, crop: int, size: int, batch_size: int, repeats: int, warmup: int
) -> list[dict[str, Any]]:
    """Median ms per training step (a batch of `batch_size` crops of side `crop`) and per scored image
    (`size` px) for `detector`'s network in each layout of `LAYOUTS`; and the largest difference between
    the two layouts' maps of the same images, with the same weights."""
    import torch

    from anomaly_spotter.data.synthetic import corrupt

    rng = np.random.default_rng(0)
    clean = torch.from_numpy(rng.uniform(-1, 1, (batch_size, 3, crop, crop)).astype(np.float32))
    inputs, masks = corrupt(clean.numpy(), detector.train.synthetic_defects, rng, 0.0)
    step = (torch.from_numpy(inputs), clean, torch.from_numpy(masks))
    images = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    # each row sets its own layout and precision: the runs start contiguous and float32 whatever the params
    detector.train = dataclasses.replace(detector.train, channels_last=False, precision="fp32")
    torch.manual_seed(0)
    initial = detector._new_model().state_dict()
    rows, maps = [], {}
    for layout in LAYOUTS:
        run = detector._start(torch.device("cpu"), total_steps=2 * (warmup + repeats) + 1)
        run.model.load_state_dict(initial)
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        run.model.to(memory_format=fmt)
        detector.model_ = run.model.eval()  # scored with the initial weights, before any step
        maps[layout] = detector._unsmoothed(images)
        score_ms = _median_ms(lambda: detector._unsmoothed(images), repeats, warmup) / len(images)
        run.model.train()
        step_ms = _median_ms(lambda run=run: run.step(*step), repeats, warmup)
        rows.append({"layout": layout, "train_step_ms": step_ms, "score_ms_per_image": score_ms})
        if layout == "channels_last":
            run.bf16 = True
            step_ms = _median_ms(lambda run=run: run.step(*step), repeats, warmup)
            rows.append({"layout": BF16, "train_step_ms": step_ms, "score_ms_per_image": score_ms})
    difference = float(np.abs(maps[LAYOUTS[0]] - maps[LAYOUTS[1]]).max())
    for row in rows:
        row["speedup_train"] = rows[0]["train_step_ms"] / row["train_step_ms"]
        row["speedup_score"] = rows[0]["score_ms_per_image"] / row["score_ms_per_image"]
        row["max_map_difference"] = difference
    return rows


def _median_ms(fn: Any, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m anomaly_spotter.bench.unet_layout",
        description=__doc__.split("Rerun:")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the params file")
    parser.add_argument("--size", type=int, default=128, help="scored image side, px (default 128)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs of each (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument(
        "--out", type=Path, help="write the table here (Markdown), its rows beside it (.json)"
    )
    args = parser.parse_args(argv)
    if min(args.repeats, args.warmup + 1, args.size) < 1:
        raise SystemExit("bench: --repeats and --size must be >= 1 and --warmup >= 0")

    import torch

    from anomaly_spotter.core.config import ModelParams, load_params
    from anomaly_spotter.detectors import build_detector

    params = load_params(args.params)
    params = dataclasses.replace(params, model=ModelParams("unet_ae", params.model.sections))
    torch.set_num_threads(params.train.num_threads)
    detector = build_detector(params)
    crop = detector._crop_side(args.size)
    rows = time_layouts(detector, crop, args.size, detector.train.batch_size, args.repeats, args.warmup)
    host = f"{machine()}, {torch.get_num_threads()} torch threads"
    lines = [
        "| layout | training step, ms | scoring, ms/image | speed-up (train / score) |",
        "|---|---|---|---|",
        *(
            f"| {r['layout']} | {r['train_step_ms']:.0f} | {r['score_ms_per_image']:.1f} | "
            f"{r['speedup_train']:.2f}x / {r['speedup_score']:.2f}x |"
            for r in rows
        ),
    ]
    text = (
        f"{chr(10).join(lines)}\n\nmedian of {args.repeats}; training step: batch "
        f"{detector.train.batch_size} of {crop} px crops; scoring: {args.size} px images; largest map "
        f"difference between the layouts: "
        f"{rows[0]['max_map_difference']:.1e}; machine: {host}\n"
    )
    print(text)
    if args.out:
        write_report(args.out, text, {"rows": rows, "machine": host})


if __name__ == "__main__":
    main()
