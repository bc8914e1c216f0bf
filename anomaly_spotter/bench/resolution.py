"""High-resolution benchmark: the built-in `sheet` (2048 x 1536, defects of 5 to 20 px) worked on squashed,
resized and in windows at native resolution, and a 20-megapixel image's scoring memory (docs/resolution.md).

    python -m anomaly_spotter.bench.resolution --out benchmarks/resolution.md

For each way an image can reach the detector (the default detector of params.yaml, windows of 256 px):

- `squashed 256x256`: the old behaviour, every image resized to a square, its aspect ratio lost;
- `whole, 256 px short side`: `data.resolution: null` (aspect kept: 256 x 341, two windows);
- `tiled, native`: `data.resolution: native` (2048 x 1536 in 88 windows of 256 px, overlap 0.25),

it fits on the training goods (80 %; the other 20 % standardise and calibrate, as the pipeline does), then
reports fit time, test-split image AUROC and pixel AUROC / AUPRO **at native resolution** (each map
resized to 2048 x 1536, so no setting is judged on a coarser grid than the defects), ms per megapixel of
batch scoring, and `predict` of one image as a subprocess: wall time and its own peak resident memory.
The tiled model is also exported to ONNX int8 (`anomaly-spotter export`'s code) and measured the same way.

With `--megapixels-20`, a sheet of 5472 x 3648 (20 megapixels, 532 windows) is fitted on two images'
windows (enough for a memory measurement, not for accuracy) and one such image is scored by `predict`
with the torch model and its int8 export: the peak memory the issue bounds at 1.5 GB.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from anomaly_spotter.bench.common import cli_command, machine, write_report
from anomaly_spotter.bench.export import run_child

TILE = 256
BATCH = 16
CALIBRATION_IMAGES = 8


@dataclass
class Setting:
    name: str
    geometry: Any  # data.geometry.Geometry
    squash: bool = False  # resize to the square ignoring the aspect ratio (the old behaviour)


def _to_setting(images: np.ndarray, setting: Setting) -> np.ndarray:
    """Native canvas images `(N, H, W, 3)` -> what the setting's detector is given."""
    from anomaly_spotter.data.images import resize_rgb

    if setting.squash:
        return np.stack([resize_rgb(np.asarray(im), setting.geometry.tile) for im in images])
    if setting.geometry.canvas == images.shape[1:3]:
        return np.asarray(images)
    return np.stack([setting.geometry.fit(np.asarray(im))[0] for im in images])


def _native_maps(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    out = np.empty((len(maps), height, width), np.float32)
    for i, m in enumerate(maps):
        out[i] = m if m.shape == (height, width) else cv2.resize(m, (width, height), cv2.INTER_LINEAR)
    return out


def _service(detector: Any, category: str, val_scores: np.ndarray, params: Any) -> Any:
    from anomaly_spotter.core.thresholds import good_only_threshold
    from anomaly_spotter.serving.inference import InferenceConfig

    threshold = good_only_threshold(val_scores, params.thresholds.good_fpr)
    config = InferenceConfig.for_model(
        detector, category, TILE, threshold, "good_only", params.process.image_score, BATCH, "calibrated"
    )
    return SimpleNamespace(detector=detector, config=config)


def _predict_one(folder: Path, image: Path, tmp: Path) -> tuple[float, float]:
    """`anomaly-spotter predict IMAGE --model FOLDER` as a subprocess: wall s and peak resident MB."""
    return run_child(
        [*cli_command(), "predict", str(image), "--model", str(folder), "--csv", str(tmp / "p.csv")]
    )


def bench_setting(
    setting: Setting, data: Any, params: Any, tmp: Path, one_image: Path
) -> list[dict[str, Any]]:
    """The torch row of one setting (and, for the tiled one, its int8 export's row)."""
    import torch

    from anomaly_spotter.core.metrics import aupro, image_auroc, pixel_auroc
    from anomaly_spotter.data.geometry import Geometry, score_canvases
    from anomaly_spotter.deploy.export import export_model, spread
    from anomaly_spotter.detectors import build_detector
    from anomaly_spotter.pipeline.train import calibrate_pixels
    from anomaly_spotter.serving.edge import load_edge_model
    from anomaly_spotter.serving.model import save_service_model

    torch.set_num_threads(params.train.num_threads)
    g = setting.geometry
    train = _to_setting(data.split("train").images, setting)
    val = _to_setting(data.split("val").images, setting)
    test_split = data.split("test")
    labels = test_split.index["label"].to_numpy()
    height, width = data.geometry.canvas
    detector = build_detector(params)
    detector.progress = False
    start = time.perf_counter()
    detector.fit(g.cut(train), g.cut(val))
    fit_s = time.perf_counter() - start
    detector.geometry_ = g if not setting.squash else Geometry.square(g.tile)
    calibrate_pixels(detector, val, params.train.pixel_quantile)
    _, val_scores = score_canvases(detector, val, detector.geometry_, BATCH, params.process.image_score)
    service = _service(detector, "sheet", val_scores, params)
    folder = tmp / f"{setting.name}-torch"
    detector.save(tmp / "model.pt")
    save_service_model(folder, tmp / "model.pt", service.config, detector.kind)
    scorers = {"torch": (detector, folder)}
    if not setting.squash and not g.single:
        edge = tmp / f"{setting.name}-int8"
        calibration = [np.asarray(im) for im in spread(list(data.split("train").images), CALIBRATION_IMAGES)]
        export_model(service, edge, calibration, True, "bench")
        scorers["onnx int8"] = (load_edge_model(edge).detector, edge)
    masks = np.asarray(test_split.masks)
    known = test_split.index["has_mask"].to_numpy().astype(bool)
    rows = []
    for name, (scorer, model_folder) in scorers.items():
        test = _to_setting(test_split.images, setting)
        start = time.perf_counter()
        maps, scores = score_canvases(scorer, test, detector.geometry_, BATCH, params.process.image_score)
        seconds = time.perf_counter() - start
        native = _native_maps(maps, height, width)
        predict_s, predict_mb = _predict_one(model_folder, one_image, tmp)
        rows.append(
            {
                "setting": setting.name,
                "model": name,
                "windows": detector.geometry_.n_windows,
                "detector_sees": "x".join(map(str, detector.geometry_.canvas[::-1])),
                "fit_s": fit_s,
                "image_auroc": image_auroc(labels, scores),
                "pixel_auroc": pixel_auroc(masks[known], native[known]),
                "aupro": aupro(masks[known], native[known], params.metrics.aupro_fpr_limit),
                "ms_per_megapixel": 1000 * seconds / (len(test) * height * width / 1e6),
                "predict_s": predict_s,
                "predict_peak_mb": predict_mb,
            }
        )
        print(describe(rows[-1]), flush=True)
        del native, maps
    return rows


def bench_20mp(params: Any, tmp: Path, seed: int) -> list[dict[str, Any]]:
    """Peak memory of `predict` on one 20-megapixel sheet, torch and int8 (see the module doc)."""
    import torch

    from anomaly_spotter.core.config import NATIVE
    from anomaly_spotter.data.builtin.sheet import generate_sheet
    from anomaly_spotter.data.geometry import score_canvases
    from anomaly_spotter.data.prepared import load_prepared, prepare_category
    from anomaly_spotter.deploy.export import export_model
    from anomaly_spotter.detectors import build_detector
    from anomaly_spotter.pipeline.train import calibrate_pixels
    from anomaly_spotter.serving.model import save_service_model

    torch.set_num_threads(params.train.num_threads)
    root = tmp / "sheet20"
    folder = generate_sheet(root, seed, 4, 1, 1, 5472, 3648, progress=False)
    prepare_category(root, "sheet", tmp / "prepared20", TILE, 0.5, seed, False, None, NATIVE, 0.25)
    data = load_prepared(tmp / "prepared20")
    g = data.geometry
    train, val = np.asarray(data.split("train").images), np.asarray(data.split("val").images)
    detector = build_detector(params)
    detector.progress = False
    detector.fit(g.cut(train), g.cut(val))
    detector.geometry_ = g
    calibrate_pixels(detector, val, params.train.pixel_quantile)
    _, val_scores = score_canvases(detector, val, g, BATCH, params.process.image_score)
    service = _service(detector, "sheet", val_scores, params)
    detector.save(tmp / "model20.pt")
    torch_folder = tmp / "torch20"
    save_service_model(torch_folder, tmp / "model20.pt", service.config, detector.kind)
    edge = tmp / "int8-20"
    export_model(service, edge, list(train), True, "bench")
    image = sorted((folder / "test" / "good").iterdir())[0]
    rows = []
    for name, model in (("torch", torch_folder), ("onnx int8", edge)):
        wall, peak = _predict_one(model, image, tmp)
        rows.append(
            {
                "model": name,
                "megapixels": 5472 * 3648 / 1e6,
                "windows": g.n_windows,
                "predict_s": wall,
                "predict_peak_mb": peak,
            }
        )
        print(f"20 MP {name}: predict {wall:.1f} s, peak {peak:,.0f} MB", flush=True)
    return rows


def describe(row: dict[str, Any]) -> str:
    return (
        f"{row['setting']} {row['model']}: fit {row['fit_s']:.0f} s, image AUROC {row['image_auroc']:.4f}, "
        f"pixel AUROC {row['pixel_auroc']:.4f}, AUPRO {row['aupro']:.4f}, "
        f"{row['ms_per_megapixel']:.0f} ms/MP, "
        f"predict {row['predict_s']:.1f} s / {row['predict_peak_mb']:,.0f} MB"
    )


def markdown(rows: list[dict[str, Any]], mp20: list[dict[str, Any]]) -> str:
    lines = [
        "| setting | model | working image | windows | fit s | image AUROC | pixel AUROC (native) | "
        "AUPRO (native) | ms / megapixel | predict one image s | predict peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['model']} | {r['detector_sees']} | {r['windows']} | {r['fit_s']:.0f} | "
            f"{r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | {r['aupro']:.4f} | "
            f"{r['ms_per_megapixel']:.0f} | "
            f"{r['predict_s']:.1f} | {r['predict_peak_mb']:,.0f} |"
        )
    if mp20:
        lines += [
            "",
            "| 20-megapixel image (5472 x 3648) | windows | predict s | predict peak MB |",
            "|---|---|---|---|",
        ]
        for r in mp20:
            lines.append(
                f"| {r['model']} | {r['windows']} | {r['predict_s']:.1f} | {r['predict_peak_mb']:,.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from anomaly_spotter.core.config import NATIVE, load_params
    from anomaly_spotter.data.builtin.sheet import generate_sheet
    from anomaly_spotter.data.geometry import Geometry
    from anomaly_spotter.data.prepared import load_prepared, prepare_category

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, help="a folder holding sheet/ (default: generate one in a temp dir)"
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--settings", nargs="+", default=["squashed", "whole", "tiled"])
    parser.add_argument("--megapixels-20", action="store_true", help="also the 20-megapixel memory check")
    parser.add_argument("--out", type=Path, help="write a Markdown table here (and .json beside it)")
    args = parser.parse_args(argv)
    os.environ.setdefault("ANOMALY_SPOTTER_PROGRESS", "0")
    params = load_params(args.params)
    rows: list[dict[str, Any]] = []
    mp20: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = args.data or tmp / "data"
        if not (root / "sheet").is_dir():
            generate_sheet(root, params.seed, progress=False)
        prepare_category(
            root,
            "sheet",
            tmp / "prepared",
            TILE,
            params.data.val_fraction,
            params.seed,
            False,
            None,
            NATIVE,
            0.25,
        )
        data = load_prepared(tmp / "prepared")
        height, width = data.geometry.canvas
        settings = {
            "squashed": Setting("squashed 256x256", Geometry.square(TILE), squash=True),
            "whole": Setting("whole, 256 px short side", Geometry.for_size(width, height, TILE)),
            "tiled": Setting("tiled, native", data.geometry),
        }
        one = sorted((root / "sheet" / "test" / "scratch").iterdir())[0]
        for key in args.settings:
            rows.extend(bench_setting(settings[key], data, params, tmp, one))
        if args.megapixels_20:
            mp20 = bench_20mp(params, tmp, params.seed)
    host = machine()
    table = markdown(rows, mp20)
    print(table)
    if args.out is not None:
        command = " ".join(argv if argv is not None else sys.argv[1:])
        header = (
            f"# High resolution: the built-in sheet (2048 x 1536, defects of 5-20 px)\n\n{host}; "
            f"`python -m anomaly_spotter.bench.resolution {command}`\n\n"
        )
        write_report(args.out, header + table, {"machine": host, "rows": rows, "megapixels_20": mp20})
    return 0


if __name__ == "__main__":
    sys.exit(main())
