"""Scoring new images: the one path shared by the served pyfunc model, `anomaly-spotter predict` and
the original `generate_overlay` API.

decode (Pillow, exactly as `data.images.read_rgb`: grayscale / RGBA -> RGB) -> validate size ->
resize (`data.images.resize_rgb`, exactly the prepare stage's) -> `Detector.anomaly_maps` in batches
(`scoring.score_batches`, exactly process_all's) -> image score (`anomaly_map.image_scores` with the
pipeline's `process.image_score` reduction) -> verdict: "defective" iff score > threshold.
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

from anomaly_spotter.anomaly_map import check_reduction, map_stats
from anomaly_spotter.data.images import resize_rgb
from anomaly_spotter.errors import AnomalySpotterError, ConfigError
from anomaly_spotter.models.base import Detector
from anomaly_spotter.scoring import score_batches

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

    def __post_init__(self) -> None:
        try:
            check_reduction(self.reduction)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        if self.image_size < 1 or self.batch_size < 1:
            raise ConfigError(f"image_size, batch_size must be >= 1: {self.image_size}, {self.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> InferenceConfig:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in names})


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
) -> list[dict[str, Any]]:
    """One row per image: score, verdict, threshold, anomaly_percentage (and `anomaly_map` if asked).

    `images` are decoded RGB uint8 arrays of any size (see `check_array`); maps are `(S, S)` float32 at
    the model's input size.
    """
    if len(images) == 0:
        return []
    batch = preprocess(images, config.image_size)
    maps, scores = score_batches(detector, batch, config.batch_size, config.reduction, progress=False)
    rows = []
    for amap, score in zip(maps, scores, strict=True):
        score = float(score)
        row: dict[str, Any] = {
            "score": score,
            "verdict": DEFECTIVE if score > config.threshold else GOOD,
            "threshold": float(config.threshold),
            "anomaly_percentage": map_stats(amap)["anomaly_percentage"],
        }
        if return_map:
            row["anomaly_map"] = amap
        rows.append(row)
    return rows
