"""Image I/O and the original's preprocessing, without torchvision.

The original used torchvision's `Resize(size) -> ToTensor() -> Normalize(0.5, 0.5)` on PIL images.
torchvision's Resize on a PIL image *is* Pillow's bilinear resize (which antialiases when shrinking),
so resizing here calls Pillow directly and the result is identical; ToTensor and Normalize are NumPy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomaly_spotter.errors import DatasetError

MEAN = 0.5
STD = 0.5


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as uint8 RGB `(H, W, 3)`; grayscale and RGBA become RGB.

    Raises DatasetError naming the file when it is missing, not an image, or truncated.
    """
    try:
        with Image.open(path) as img:
            img.load()  # decodes fully: a truncated file raises here, not later
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError as err:
        raise DatasetError(f"{path}: file not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read image ({err}); replace or remove the file") from err


def read_mask(path: Path) -> np.ndarray:
    """Read a ground-truth mask as bool `(H, W)` (any non-zero pixel is defective)."""
    try:
        with Image.open(path) as img:
            img.load()
            arr = np.asarray(img.convert("L"))
    except FileNotFoundError as err:
        raise DatasetError(f"{path}: mask file not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read mask ({err}); replace or remove the file") from err
    return arr > 0


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of uint8 `(H, W, 3)` to `(size, size, 3)`, exactly as torchvision's PIL Resize."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask `(H, W)` to `(size, size)`."""
    if mask.shape == (size, size):
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((size, size), Image.Resampling.NEAREST)) > 127


def to_tensor_normalized(images: np.ndarray) -> np.ndarray:
    """ToTensor + Normalize(0.5, 0.5): uint8 `(N, H, W, 3)` -> float32 `(N, 3, H, W)` in [-1, 1]."""
    x = images.astype(np.float32) / 255.0
    return ((x - MEAN) / STD).transpose(0, 3, 1, 2).copy()


def denormalize(x: np.ndarray) -> np.ndarray:
    """Inverse of `to_tensor_normalized`: float `(N, 3, H, W)` -> uint8 `(N, H, W, 3)`."""
    img = (x * STD + MEAN).clip(0.0, 1.0) * 255.0
    return np.rint(img).astype(np.uint8).transpose(0, 2, 3, 1)
