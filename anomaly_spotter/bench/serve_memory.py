"""The scoring worker's memory after one large request: `mlflow models serve` against
`anomaly-spotter serve`, which hands freed memory back after each scoring request.

    python -m anomaly_spotter.bench.serve_memory [--images 6] [--side 4096]

It serves a tiny unet_ae model (32 px; what is measured is the decoding of the request, not the model),
posts one request of `--images` smooth RGB PNGs of `--side`^2 pixels (small bodies that decode to
images x side^2 x 3 bytes), and prints the worker's resident memory before and two seconds after.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from anomaly_spotter.bench import serve as serve_bench
from anomaly_spotter.detectors.unet_ae.detector import UNetAEDetector
from anomaly_spotter.detectors.unet_ae.network import UNetConfig
from anomaly_spotter.detectors.unet_ae.options import UNetTraining
from anomaly_spotter.serving.inference import InferenceConfig
from anomaly_spotter.serving.model import save_service_model


def _tiny_model(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    images = (100 + rng.integers(0, 40, (8, 32, 32, 3))).astype(np.uint8)
    training = UNetTraining(max_epochs=1, batch_size=4, lr=1e-3)
    detector = UNetAEDetector(UNetConfig(encoder_channels=(4, 8), bottleneck_channels=8), train=training)
    detector.progress = False
    detector.fit(images)
    detector.save(folder / "model.pt")
    config = InferenceConfig.for_model(
        detector, "part", 32, 0.5, "good_only", "max", 4, "otsu", max_request_megapixels=1000.0
    )
    save_service_model(folder / "served", folder / "model.pt", config, detector.kind)
    return folder / "served"


def _request_body(n: int, side: int) -> bytes:
    ramp = (np.add.outer(np.arange(side), np.arange(side)) % 256).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.stack([ramp] * 3, -1)).save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[image]] * n}}).encode()


def _worker_rss_mb(port: str) -> int:
    """Largest resident memory (MB) among the server on `port` and its worker processes."""
    import psutil

    server = next(p for p in psutil.process_iter(["cmdline"]) if port in " ".join(p.info["cmdline"] or []))
    return max(proc.memory_info().rss for proc in [server, *server.children(recursive=True)]) // 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=6, help="images in the request (6)")
    parser.add_argument("--side", type=int, default=4096, help="their side in pixels (4096)")
    args = parser.parse_args(argv)
    body = _request_body(args.images, args.side)
    decoded = args.images * args.side**2 * 3 / 2**20
    print(
        f"request: {len(body) / 2**20:.1f} MB body, {args.images} x {args.side}^2 RGB = "
        f"{decoded:.0f} MB decoded"
    )
    with tempfile.TemporaryDirectory() as tmp:
        model = _tiny_model(Path(tmp))
        for name, cap in (("mlflow models serve", None), ("anomaly-spotter serve", 1024.0)):
            with serve_bench.served(str(model), max_request_mb=cap) as url:
                port = url.rsplit(":", 1)[1]
                before = _worker_rss_mb(port)
                request = urllib.request.Request(
                    f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=600) as response:
                    response.read()
                time.sleep(2)
                after = _worker_rss_mb(port)
            print(f"{name}: worker {before} MB before, {after} MB after (+{after - before} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
