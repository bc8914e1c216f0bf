"""Scoring new images: the one path shared by the served pyfunc model, `anomaly-spotter predict` and
the original `generate_overlay` API.

decode (`data.images.decode_rgb`, also `read_rgb`'s: 8/16-bit grayscale, palette, RGB(A) -> RGB) ->
validate size -> fit into the model's canvas (`data.geometry.Geometry.fit`, exactly the prepare stage's)
-> `Detector.anomaly_maps` window by window, blended (`geometry.score_canvases`, exactly process_all's)
-> image score (`anomaly_map.image_scores` with the
pipeline's `process.image_score` reduction, of the map or of a unet_ae's `score_sigma` copy of it) ->
verdict: "defective" iff score > threshold; predicted
region (`process.region_threshold`, the model's pixel calibration) -> anomaly_percentage and the
annotated overlay (`overlay.render_overlay`).
Sign convention: higher score = more anomalous.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anomaly_spotter.core.anomaly_map import RegionRule, check_reduction, region_percentage
from anomaly_spotter.core.errors import ConfigError
from anomaly_spotter.core.overlay import MapScale, category_scale, render_overlay
from anomaly_spotter.core.scoring import region_rule
from anomaly_spotter.data.geometry import Box, Geometry, crop, score_canvases
from anomaly_spotter.data.images import ImageInputError, decode_rgb, rgb_array

if TYPE_CHECKING:  # annotations only: an exported model (anomaly_spotter.serving.edge) scores without torch
    from anomaly_spotter.detectors.base import Detector

# Largest accepted image side, in pixels (decoded size, before resizing). 8192^2 RGB is 200 MB.
MAX_SIDE = 8192
DEFECTIVE = "defective"
GOOD = "good"
OUTPUT_COLUMNS = ("score", "verdict", "threshold", "anomaly_percentage")
# the served model's request limits: InferenceConfig fields, from params.yaml registry.<same key>
LIMIT_KEYS = ("max_images_per_request", "max_request_megapixels", "min_image_side")


@dataclass(frozen=True)
class InferenceConfig:
    """What turns a fitted detector into decisions for one category (stored with the served model)."""

    category: str
    image_size: int
    threshold: float
    threshold_method: str = "recall_target"
    reduction: str = "max"
    batch_size: int = 16
    # the predicted region (anomaly_percentage, outline): process.region_threshold ("calibrated" needs
    # the model's pixel calibration: `for_model` sets it, with the highest validation good pixel, which
    # anchors the colour scale); without a calibration, the original's Otsu
    region_threshold: str = "otsu"
    pixel_threshold: float | None = None
    good_max: float | None = None
    # request limits of the served model (params.yaml registry.*; a config saved before they existed gets
    # these defaults): images per request, decoded megapixels per request, smallest image side
    max_images_per_request: int = 64
    max_request_megapixels: float = 100.0
    min_image_side: int = 32
    # the model's canvas and windows (data.geometry.Geometry.to_dict, saved with the detector); None: a
    # model from before canvases existed, which scores each image fitted into one image_size square
    geometry: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        try:
            check_reduction(self.reduction)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        self.region()  # ConfigError if calibrated without a pixel threshold
        if self.image_size < 1 or self.batch_size < 1:
            raise ConfigError(f"image_size, batch_size must be >= 1: {self.image_size}, {self.batch_size}")
        for key in LIMIT_KEYS:
            if getattr(self, key) < 1:
                raise ConfigError(f"registry.{key} must be >= 1, got {getattr(self, key)}")

    def scoring_geometry(self) -> Geometry:
        """How images reach the detector: the model's canvas and windows."""
        return Geometry.from_dict(self.geometry) if self.geometry else Geometry.square(self.image_size)

    def images_per_chunk(self, most: int, megapixels: float) -> int:
        """How many images to score at once: at most `most`, and few enough that their canvases stay under
        `megapixels` (one at least), so a folder of 20-megapixel images is scored one or two at a time."""
        height, width = self.scoring_geometry().canvas
        return max(1, min(int(most), int(megapixels * 1e6 // (height * width))))

    @property
    def min_side(self) -> int:
        """The smallest image side served: min_image_side, capped at the model's input size."""
        return min(self.min_image_side, self.image_size)

    def check_min_side(self, width: int, height: int, name: str) -> None:
        """ImageInputError naming `name` and registry.min_image_side when an image is smaller than the
        model can meaningfully score (`min_side`); the served model and `predict` both refuse it."""
        if 0 < min(width, height) < self.min_side:
            raise ImageInputError(
                f"{name}: image is {width}x{height}, smaller than {self.min_side} pixels on a side "
                "(registry.min_image_side), too small to score; send a larger image"
            )

    def check_count(self, n_images: int) -> None:
        """ImageInputError naming registry.max_images_per_request when a request has more images."""
        if n_images > self.max_images_per_request:
            raise ImageInputError(
                f"request has {n_images} images, over the limit of {self.max_images_per_request} "
                "(registry.max_images_per_request); send fewer images per request"
            )

    def check_request(self, sizes: Sequence[tuple[int, int]]) -> None:
        """ImageInputError naming the limit and its params.yaml key when a request of images of these
        `(width, height)` sizes (from their headers) is over one of the served model's limits."""
        self.check_count(len(sizes))
        for i, (width, height) in enumerate(sizes):
            self.check_min_side(width, height, f"image {i}")
        megapixels = sum(w * h for w, h in sizes) / 1e6
        if megapixels > self.max_request_megapixels:
            raise ImageInputError(
                f"request has {megapixels:.1f} megapixels of images, over the limit of "
                f"{self.max_request_megapixels:g} (registry.max_request_megapixels); send fewer or smaller "
                "images"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> InferenceConfig:
        """From `to_dict`'s output (one saved before pixel calibration existed gets the default region,
        the original's Otsu, which it was served with)."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in names})

    @classmethod
    def for_model(
        cls,
        detector: Detector,
        category: str,
        image_size: int,
        threshold: float,
        threshold_method: str,
        reduction: str,
        batch_size: int,
        region_threshold: str,
        **limits: Any,
    ) -> InferenceConfig:
        """The config of a fitted detector: its pixel calibration travels with it; `limits` are the request
        limits (LIMIT_KEYS, defaults if not given)."""
        calibration = detector.pixel_calibration_
        geometry = getattr(detector, "geometry_", None)
        return cls(
            category,
            image_size,
            threshold,
            threshold_method,
            reduction,
            batch_size,
            region_threshold,
            None if calibration is None else calibration.threshold,
            None if calibration is None else calibration.good_max,
            **limits,
            geometry=None if geometry is None else geometry.to_dict(),
        )

    def region(self) -> RegionRule:
        """How a map becomes the predicted region (`scoring.region_rule`: ConfigError if `calibrated`
        lacks a pixel threshold)."""
        return region_rule(self.region_threshold, self.pixel_threshold, f"the {self.category} model")

    def map_scale(self, raw_map: np.ndarray) -> MapScale:
        """The category's overlay colour scale (per-image only for a model without pixel calibration)."""
        return category_scale(self.pixel_threshold, self.good_max, self.threshold, self.reduction, raw_map)


def check_array(image: Any, name: str = "image") -> np.ndarray:
    """Validate a decoded image and return it as uint8 RGB `(H, W, 3)` (`data.images.rgb_array`).

    Accepts uint8 or uint16 `(H, W)`, `(H, W, 1)`, `(H, W, 3)` or `(H, W, 4)` (alpha dropped, as Pillow's
    convert("RGB") does for an opaque image), 1 to MAX_SIDE pixels a side. Raises ImageInputError naming
    `name`.
    """
    return rgb_array(image, name, MAX_SIDE)


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, BMP, TIFF, ... or a NumPy .npy array) to uint8 RGB `(H, W, 3)`.

    `data.images.decode_rgb`, the decoder `data.images.read_rgb` (prepare) uses, limited to MAX_SIDE
    pixels a side. The size is checked from the header before the pixels are decoded, so a huge image
    is refused cheaply. Raises ImageInputError naming `name`.
    """
    return decode_rgb(data, name, MAX_SIDE)


def read_image(path: Path) -> np.ndarray:
    """Read an image file as uint8 RGB `(H, W, 3)`; ImageInputError names the file when it cannot be read."""
    return decode_image(read_file(path), str(path))


def read_file(path: Path) -> bytes:
    """An image file's bytes; ImageInputError names the file when it cannot be read."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError as err:
        raise ImageInputError(f"{path}: file not found") from err
    except OSError as err:
        raise ImageInputError(f"{path}: cannot read file ({err.strerror or err})") from err


def preprocess(images: Sequence[np.ndarray], geometry: Geometry) -> tuple[np.ndarray, list[Box]]:
    """Fit validated RGB images into the model's canvas, as the prepare stage does: uint8 `(N, Hc, Wc, 3)`
    and where each image lies in it (`Geometry.fit`: aspect kept, padded at the sides if it differs)."""
    out = np.empty((len(images), *geometry.canvas, 3), dtype=np.uint8)
    boxes = []
    for i, image in enumerate(images):
        out[i], box = geometry.fit(check_array(image, f"image {i}"))
        boxes.append(box)
    return out, boxes


def score_images(
    detector: Detector,
    images: Sequence[np.ndarray],
    config: InferenceConfig,
    return_map: bool = False,
    titles: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per image: score, verdict, threshold, anomaly_percentage (and, if `return_map`,
    `anomaly_map` and `overlay`).

    `images` are decoded RGB uint8 arrays of any size (see `check_array`), fitted into the model's canvas
    and scored window by window (`data.geometry`); maps are float32 at the working resolution, cut to the
    image (its aspect ratio: a square image at the default resolution gives `(S, S)`); overlays are
    `overlay.render_overlay`'s annotated RGB images at the image's own resolution, capped for display
    (the category's colour scale, `titles[i]` in the header).
    """
    if len(images) == 0:
        return []
    geometry = config.scoring_geometry()
    canvases, boxes = preprocess(images, geometry)
    maps, scores = score_canvases(detector, canvases, geometry, config.batch_size, config.reduction, boxes)
    region = config.region()
    rows = []
    for i, (canvas_map, score) in enumerate(zip(maps, scores, strict=True)):
        amap = crop(canvas_map, boxes[i])
        score = float(score)
        mask = region.mask(amap)
        row: dict[str, Any] = {
            "score": score,
            "verdict": DEFECTIVE if score > config.threshold else GOOD,
            "threshold": float(config.threshold),
            "anomaly_percentage": region_percentage(mask),
        }
        if return_map:
            row["anomaly_map"] = amap
            row["overlay"] = render_overlay(
                check_array(images[i], f"image {i}"),
                amap,
                mask,
                config.map_scale(amap),
                score,
                config.threshold,
                titles[i] if titles is not None else "",
            )
        rows.append(row)
    return rows
