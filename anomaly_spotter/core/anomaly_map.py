"""Anomaly-map post-processing, the original's chain, one small function a step.

residual (|x - x_hat| averaged over channels) -> Gaussian smoothing -> *raw map*. Image scores come
from the raw map, because a per-image min-max erases the difference between a clean image and a
defective one. The predicted defect *region* of a raw map is one of (`RegionRule`):

- `calibrated` (default): pixels above the category's pixel threshold, a high quantile (e.g. 99.9 %) of
  the raw maps of the validation good images (`PixelCalibration`, fitted by `train`, kept in the model);
  a good part shows ~0 % region, a defective one its defect.
- `otsu` (the original's): min-max normalise each map, then Otsu's split. Otsu always finds a split, so
  even a clean part shows a large "anomalous" area; kept for comparison with the original's figures.

Maps are float32 `(N, H, W)` or `(H, W)`; higher = more anomalous.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

IMAGE_SCORE_REDUCTIONS = ("max", "mean", "p<q>", "top<q>")  # p99: 99th percentile; top1: top-1 % mean
_REDUCTION = re.compile(r"^(max|mean|p|top)(\d+(?:\.\d+)?)?$")


def residual_map(images: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """|input - reconstruction| averaged over channels: `(N, C, H, W)` x2 -> `(N, H, W)`."""
    return np.abs(images.astype(np.float32) - reconstructions.astype(np.float32)).mean(axis=1)


SSIM_SIGMA = 1.5  # Gaussian window of the local statistics (Wang et al. 2004)
SSIM_RANGE = 2.0  # images in [-1, 1]


def ssim_map(images: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """1 - local SSIM between input and reconstruction, averaged over channels: `(N, C, H, W)` x2 ->
    `(N, H, W)` in [0, 2] (0 = identical structure). Gaussian window (SSIM_SIGMA), constants of Wang et
    al. 2004 for the data range SSIM_RANGE; sees changes of texture and edges that a flat residual misses.
    Equal to skimage's `1 - structural_similarity(..., gaussian_weights=True, full=True)` per channel."""
    import torch

    with torch.inference_mode():
        out = dissimilarity(
            torch.from_numpy(np.asarray(images, np.float32)),
            torch.from_numpy(np.asarray(reconstructions, np.float32)),
        )
    return out.mean(dim=1).numpy()


def dissimilarity(x: Any, y: Any) -> Any:
    """1 - local SSIM per channel, in torch (differentiable: the autoencoder's SSIM loss is its mean):
    `(N, C, H, W)` x2 -> `(N, C, H, W)`. Borders as scipy's `reflect` (edge pixel repeated)."""
    import torch
    import torch.nn.functional as F

    radius = int(3.5 * SSIM_SIGMA + 0.5)  # scipy's gaussian_filter with truncate=3.5, as skimage
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / SSIM_SIGMA) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    channels = x.shape[1]

    def blur(a: torch.Tensor) -> torch.Tensor:
        for dim, shape in ((-1, (1, radius * 2 + 1)), (-2, (radius * 2 + 1, 1))):
            n = a.shape[dim]
            index = torch.arange(-radius, n + radius)
            index = torch.where(index >= n, 2 * n - 1 - index, index)  # symmetric: d c b a | a b c d
            index = torch.where(index < 0, -index - 1, index)
            a = a.index_select(dim, index)
            weight = kernel.reshape(1, 1, *shape).expand(channels, 1, *shape)
            a = F.conv2d(a, weight, groups=channels)
        return a

    c1, c2 = (0.01 * SSIM_RANGE) ** 2, (0.03 * SSIM_RANGE) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    ssim = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return 1.0 - ssim


def gaussian_smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each map `(N, H, W)` (or one `(H, W)`) with scipy's reflect border."""
    if sigma <= 0:
        return maps.astype(np.float32, copy=False)
    sig = (0.0, sigma, sigma) if maps.ndim == 3 else (sigma, sigma)
    return ndimage.gaussian_filter(maps.astype(np.float32, copy=False), sigma=sig, mode="reflect")


def minmax_normalize(amap: np.ndarray) -> np.ndarray:
    """Scale one map to [0, 1]; a constant map becomes all zeros."""
    lo, hi = float(amap.min()), float(amap.max())
    if hi - lo <= np.finfo(np.float32).eps:
        return np.zeros_like(amap, dtype=np.float32)
    return ((amap - lo) / (hi - lo)).astype(np.float32)


def otsu_mask(normalized: np.ndarray) -> np.ndarray:
    """Binary mask `(H, W)` bool: pixels above Otsu's threshold of a normalised map."""
    if float(normalized.max()) == float(normalized.min()):
        return np.zeros(normalized.shape, dtype=bool)
    return normalized > threshold_otsu(normalized)


def check_reduction(reduction: str) -> tuple[str, float]:
    """Parse an image-score reduction: `max`, `mean`, `p<q>` (q-th percentile, 0 < q <= 100) or
    `top<q>` (mean of the highest q % of pixels, 0 < q <= 100) -> (kind, q); ValueError otherwise."""
    match = _REDUCTION.match(str(reduction))
    kind, q = (match.group(1), match.group(2)) if match else (None, None)
    ok = match is not None and (kind in ("max", "mean")) == (q is None) and (q is None or 0 < float(q) <= 100)
    if not ok:
        raise ValueError(
            f"unknown image score reduction {reduction!r}; use max, mean, p<q> (percentile, e.g. p99) or "
            f"top<q> (mean of the top q % of pixels, e.g. top1)"
        )
    return str(kind), float(q or 0)


def image_scores(maps: np.ndarray, reduction: str = "max") -> np.ndarray:
    """One score per raw map `(N, H, W)` -> `(N,)`; `reduction` as in `check_reduction`."""
    kind, q = check_reduction(reduction)
    flat = maps.reshape(len(maps), -1)
    if kind == "max":
        return flat.max(axis=1)
    if kind == "mean":
        return flat.mean(axis=1)
    if kind == "p":
        return np.percentile(flat, q, axis=1)
    k = max(1, int(round(q / 100 * flat.shape[1])))
    return (
        np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:]
        .mean(axis=1, dtype=np.float64)
        .astype(flat.dtype)
    )


REGION_METHODS = ("calibrated", "otsu")


@dataclass(frozen=True)
class PixelCalibration:
    """The pixel threshold of one category, fitted on the raw maps of its validation good images.

    threshold: the `quantile` of all their pixels; good_max: their highest pixel (anchors the overlay
    colour scale when the image score is not the map maximum); n_images: how many maps it was fitted on.
    """

    quantile: float
    threshold: float
    good_max: float
    n_images: int

    @classmethod
    def fit(cls, maps: np.ndarray, quantile: float) -> PixelCalibration:
        """Calibrate on raw maps `(N, H, W)` of good images; ValueError when there are none."""
        maps = np.asarray(maps, dtype=np.float32)
        if maps.ndim != 3 or len(maps) == 0:
            raise ValueError(
                f"pixel calibration needs good-image maps (N, H, W) with N >= 1, got {maps.shape}"
            )
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"pixel quantile must be in (0, 1), got {quantile}")
        return cls(float(quantile), float(np.quantile(maps, quantile)), float(maps.max()), len(maps))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PixelCalibration:
        return cls(
            float(raw["quantile"]), float(raw["threshold"]), float(raw["good_max"]), int(raw["n_images"])
        )


@dataclass(frozen=True)
class RegionRule:
    """How a raw map becomes the predicted region: `calibrated` (pixels > pixel_threshold) or `otsu`."""

    method: str = "otsu"
    pixel_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.method not in REGION_METHODS:
            raise ValueError(f"region threshold {self.method!r}: use one of {', '.join(REGION_METHODS)}")
        if self.method == "calibrated" and self.pixel_threshold is None:
            raise ValueError(
                "the calibrated region needs a pixel threshold (PixelCalibration, fitted by train)"
            )

    def mask(self, raw: np.ndarray) -> np.ndarray:
        """Predicted region `(H, W)` bool of one raw map `(H, W)`."""
        if self.method == "otsu":
            return otsu_mask(minmax_normalize(raw))
        return np.asarray(raw) > self.pixel_threshold


def region_percentage(mask: np.ndarray) -> float:
    """The `anomaly_percentage` of a predicted region `(H, W)` bool: its share of pixels, in %."""
    return float(100.0 * np.mean(mask))


def map_stats(raw: np.ndarray, region: RegionRule = RegionRule()) -> dict[str, float]:
    """The original's per-image stats of one raw map `(H, W)`: mean, max and % of pixels in the region
    `region` predicts (default: the original's min-max + Otsu)."""
    mask = region.mask(raw)
    return {
        "mean_score": float(raw.mean()),
        "max_score": float(raw.max()),
        "anomaly_percentage": region_percentage(mask),
    }
