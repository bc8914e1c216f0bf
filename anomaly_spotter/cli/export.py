"""`anomaly-spotter export`: a registered PatchCore model to ONNX / int8 (docs/serving.md)."""

from __future__ import annotations

import argparse

from anomaly_spotter import tracking
from anomaly_spotter.core.errors import AnomalySpotterError
from anomaly_spotter.serving.inputs import collect_images

EXPORT_EPILOG = """examples:
  anomaly-spotter export --model models:/anomaly-spotter-bottle@champion --int8 --out edge/bottle
  anomaly-spotter export --model models:/anomaly-spotter-bottle/3 --out edge/bottle-fp32 \\
      --calibration ../shared/data/mvtec_ad_256/bottle/train/good --register

see docs/serving.md
"""


def cmd_export(args: argparse.Namespace) -> int:
    from anomaly_spotter.deploy import export
    from anomaly_spotter.serving.inference import read_image
    from anomaly_spotter.serving.model import load_service_model

    if args.calibration_images < 1:
        raise AnomalySpotterError(f"--calibration-images must be >= 1, got {args.calibration_images}")
    tracking.connect_for_model(args.model)
    service = load_service_model(args.model)
    sources = args.calibration or [export.default_calibration(args.params, service.config.category)]
    files, _, errors = collect_images(sources)
    if errors:
        raise AnomalySpotterError("; ".join(errors) + "; pass the category's good images with --calibration")
    images = [read_image(path) for path in export.spread(files, args.calibration_images)]
    result = export.export_model(service, args.out, images, args.int8, args.model, args.overwrite)
    print(result.summary())
    if args.register:
        tracking.use_existing_store(f"model {args.model}")
        name, version = export.register_export(args.out, args.model)
        print(f"registered {name} version {version}; serve it as models:/{name}/{version}")
    print(f"score with: anomaly-spotter predict IMAGES --model {args.out}")
    return 0
