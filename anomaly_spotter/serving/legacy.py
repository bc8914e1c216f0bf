"""The original prototype's Python API, kept working on top of the package.

    import torch
    from anomaly_spotter.serving.legacy import default_transform, generate_overlay, load_autoencoder
    from anomaly_spotter.detectors.unet_ae.network import UNetAutoencoder

    model = load_autoencoder("models/fabric/model.pt")        # or a raw state_dict file:
    # model = UNetAutoencoder(ORIGINAL); model.load_state_dict(torch.load("model.pth")); model.eval()
    stats = generate_overlay(image_path="part.png", model=model, transform=default_transform(128),
                             save_path="part_overlay.png")

The image is read and checked as `anomaly-spotter predict` reads it (`inference.read_image`), the map is
the pipeline's (Gaussian(sigma) of the channel-mean |x - x_hat|), and the overlay is
`plots.overlay_heatmap` with the Otsu mask outlined.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from anomaly_spotter.core.anomaly_map import (
    gaussian_smooth,
    map_stats,
    minmax_normalize,
    otsu_mask,
    residual_map,
)
from anomaly_spotter.core.errors import AnomalySpotterError
from anomaly_spotter.data.images import denormalize, resize_rgb, to_tensor_normalized
from anomaly_spotter.detectors.unet_ae.network import ORIGINAL, UNetAutoencoder, UNetConfig
from anomaly_spotter.serving.inference import read_image

Transform = Callable[[Image.Image], torch.Tensor]


def default_transform(size: int = 128) -> Transform:
    """The original `Resize((size, size)) -> ToTensor() -> Normalize(0.5, 0.5)`: PIL image -> `(3, S, S)`."""

    def transform(image: Image.Image) -> torch.Tensor:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(to_tensor_normalized(resize_rgb(rgb, size)[None])[0])

    return transform


def load_autoencoder(path: str | Path, config: UNetConfig | None = None) -> UNetAutoencoder:
    """A UNetAutoencoder in eval mode from the pipeline's `models/<cat>/model.pt` or a raw state_dict file.

    A raw state_dict is loaded into `config` (default: the original 64-128-256/512 configuration).
    Loaded with `weights_only=True`: no pickled code runs.
    """
    path = Path(path)
    if not path.is_file():
        raise AnomalySpotterError(f"{path}: model file not found; train one with `dvc repro`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for a bad file
        raise AnomalySpotterError(f"{path}: not a PyTorch weights file ({err})") from err
    if isinstance(state, dict) and "state_dict" in state and "kind" in state:
        if state["kind"] != "unet_ae":
            raise AnomalySpotterError(f"{path}: holds a {state['kind']!r} detector, not the U-Net AE")
        config = config or UNetConfig(**state["config"])
        state = state["state_dict"]
    model = UNetAutoencoder(config or ORIGINAL)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise AnomalySpotterError(
            f"{path}: weights do not fit UNetAutoencoder({config or ORIGINAL}); pass the config they were "
            f"trained with: load_autoencoder(path, config=UNetConfig(...)) ({str(err)[:300]})"
        ) from err
    model.eval()
    return model


def anomaly_map(model: torch.nn.Module, x: torch.Tensor, sigma: float = 1.0) -> np.ndarray:
    """Raw map `(S, S)` for one normalised image `(3, S, S)`: Gaussian(sigma) of |x - model(x)|."""
    model.eval()
    with torch.inference_mode():
        batch = x.unsqueeze(0) if x.ndim == 3 else x
        recon = model(batch)
    return gaussian_smooth(residual_map(batch.numpy(), recon.numpy()), sigma)[0]


def generate_overlay(
    image_path: str | Path,
    model: torch.nn.Module,
    transform: Transform | None = None,
    save_path: str | Path | None = None,
    sigma: float = 1.0,
) -> dict[str, Any]:
    """The original helper: heatmap of the reconstruction error over the (resized) image, saved as PNG.

    Returns the original's stats (mean_score, max_score, anomaly_percentage), `score` (= max of the raw
    map, the pipeline's default image score) and `anomaly_map` `(S, S)`.
    """
    from anomaly_spotter.core.plots import overlay_heatmap

    transform = transform or default_transform()
    image = read_image(Path(image_path))
    x = transform(Image.fromarray(image))
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    x = x.float()
    raw = anomaly_map(model, x, sigma)
    shown = denormalize(x.unsqueeze(0).numpy())[0]
    overlay = overlay_heatmap(shown, raw, otsu_mask(minmax_normalize(raw)))
    if save_path is not None:
        save_path = Path(save_path)
        save_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(overlay).save(save_path)
    return {**map_stats(raw), "score": float(raw.max()), "anomaly_map": raw}
