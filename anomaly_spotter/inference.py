"""Scoring new images: the one path shared by the served pyfunc model, `anomaly-spotter predict` and
the original `generate_overlay` API.

decode (Pillow, exactly as `data.images.read_rgb`: grayscale / RGBA -> RGB) -> validate size ->
resize (`data.images.resize_rgb`, exactly the prepare stage's) -> `Detector.anomaly_maps` in batches
(`scoring.score_batches`, exactly process_all's) -> image score (`anomaly_map.image_scores` with the
pipeline's `process.image_score` reduction) -> verdict: "defective" iff score > threshold; predicted
region (`process.region_threshold`, the model's pixel calibration) -> anomaly_percentage and the
annotated overlay (`overlay.render_overlay`).
Sign convention: higher score = more anomalous.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomaly_spotter.anomaly_map import RegionRule, check_reduction
from anomaly_spotter.data.images import resize_rgb
from anomaly_spotter.errors import AnomalySpotterError, ConfigError
from anomaly_spotter.models.base import Detector
from anomaly_spotter.overlay import MapScale, category_scale, render_overlay
from anomaly_spotter.scoring import region_rule, score_batches

# Largest accepted image side, in pixels (decoded size, before resizing). 8192^2 RGB is 200 MB.
MAX_SIDE = 8192
NPY_MAGIC = b"\x93NUMPY"
DEFECTIVE = "defective"
GOOD = "good"
OUTPUT_COLUMNS = ("score", "verdict", "threshold", "anomaly_percentage")


class ImageInputError(AnomalySpotterError):
    """An input image is empty, not decodable, or of an unsupported size."""


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

    def __post_init__(self) -> None:
        try:
            check_reduction(self.reduction)
            self.region()
        except ValueError as err:
            raise ConfigError(str(err)) from err
        if self.image_size < 1 or self.batch_size < 1:
            raise ConfigError(f"image_size, batch_size must be >= 1: {self.image_size}, {self.batch_size}")

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
    ) -> InferenceConfig:
        """The config of a fitted detector: its pixel calibration travels with it."""
        calibration = detector.pixel_calibration_
        region_rule(region_threshold, calibration, f"the {category} model")
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
        )

    def region(self) -> RegionRule:
        """How a map becomes the predicted region (ValueError if `calibrated` lacks a pixel threshold)."""
        pixel = self.pixel_threshold if self.region_threshold == "calibrated" else None
        return RegionRule(self.region_threshold, pixel)

    def map_scale(self, raw_map: np.ndarray) -> MapScale:
        """The category's overlay colour scale (per-image only for a model without pixel calibration)."""
        return category_scale(self.pixel_threshold, self.good_max, self.threshold, self.reduction, raw_map)


def check_array(image: Any, name: str = "image") -> np.ndarray:
    """Validate a decoded image and return it as uint8 RGB `(H, W, 3)`.

    Accepts uint8 `(H, W)`, `(H, W, 1)`, `(H, W, 3)` or `(H, W, 4)` (alpha dropped, as Pillow's
    convert("RGB") does for an opaque image). Raises ImageInputError naming `name`.
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ImageInputError(f"{name}: pixels must be uint8 (0-255), got {arr.dtype}; convert the image")
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[..., :3] if arr.shape[2] != 1 else arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ImageInputError(f"{name}: expected an (H, W) or (H, W, 3) image array, got shape {arr.shape}")
    _check_size(arr.shape[1], arr.shape[0], name)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr)


def _check_size(width: int, height: int, name: str) -> None:
    if width < 1 or height < 1:
        raise ImageInputError(f"{name}: image has no pixels ({width}x{height}); send a real image")
    if max(width, height) > MAX_SIDE:
        raise ImageInputError(
            f"{name}: image is {width}x{height}, larger than {MAX_SIDE} pixels on a side; downscale it first"
        )


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, BMP, TIFF, ... or a NumPy .npy array) to uint8 RGB `(H, W, 3)`.

    Decoding equals `data.images.read_rgb` on the same file. The size is checked from the header before
    the pixels are decoded, so a huge image is refused cheaply. Raises ImageInputError naming `name`.
    """
    if isinstance(data, str):
        raise ImageInputError(f"{name}: expected image bytes, got text; base64-decode it first")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageInputError(f"{name}: expected encoded image bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ImageInputError(f"{name}: empty image data; send a PNG or JPEG file's bytes")
    if data.startswith(NPY_MAGIC):
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ImageInputError(f"{name}: cannot read .npy array ({err})") from err
        return check_array(array, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                _check_size(img.width, img.height, name)
                img.load()  # decodes fully: a truncated file raises here
                return check_array(np.asarray(img.convert("RGB"), dtype=np.uint8), name)
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageInputError(
            f"{name}: image is too large to decode safely ({err}); the limit is {MAX_SIDE} pixels on a side"
        ) from err
    except UnidentifiedImageError as err:
        raise ImageInputError(f"{name}: not a recognised image format; send PNG or JPEG bytes") from err
    except (OSError, SyntaxError, ValueError, TypeError, MemoryError) as err:
        raise ImageInputError(f"{name}: cannot decode image ({err}); re-export or replace the file") from err


def read_image(path: Path) -> np.ndarray:
    """Read an image file as uint8 RGB `(H, W, 3)`; ImageInputError names the file when it cannot be read."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise ImageInputError(f"{path}: file not found") from err
    except OSError as err:
        raise ImageInputError(f"{path}: cannot read file ({err.strerror or err})") from err
    return decode_image(data, str(path))


def preprocess(images: Sequence[np.ndarray], image_size: int) -> np.ndarray:
    """Resize validated RGB images to the model's input: uint8 `(N, S, S, 3)`, as the prepare stage does."""
    out = np.empty((len(images), image_size, image_size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = resize_rgb(check_array(image, f"image {i}"), image_size)
    return out


def score_images(
    detector: Detector,
    images: Sequence[np.ndarray],
    config: InferenceConfig,
    return_map: bool = False,
    titles: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per image: score, verdict, threshold, anomaly_percentage (and, if `return_map`,
    `anomaly_map` and `overlay`).

    `images` are decoded RGB uint8 arrays of any size (see `check_array`); maps are `(S, S)` float32 at
    the model's input size; overlays are `overlay.render_overlay`'s annotated RGB images (the category's
    colour scale, `titles[i]` in the header).
    """
    if len(images) == 0:
        return []
    batch = preprocess(images, config.image_size)
    maps, scores = score_batches(detector, batch, config.batch_size, config.reduction, progress=False)
    region = config.region()
    rows = []
    for i, (amap, score) in enumerate(zip(maps, scores, strict=True)):
        score = float(score)
        mask = region.mask(amap)
        row: dict[str, Any] = {
            "score": score,
            "verdict": DEFECTIVE if score > config.threshold else GOOD,
            "threshold": float(config.threshold),
            "anomaly_percentage": float(100.0 * mask.mean()),
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
