"""Image I/O and the original's preprocessing, without torchvision.

The original used torchvision's `Resize(size) -> ToTensor() -> Normalize(0.5, 0.5)` on PIL images.
torchvision's Resize on a PIL image *is* Pillow's bilinear resize (which antialiases when shrinking),
so resizing here calls Pillow directly and the result is identical; ToTensor and Normalize are NumPy.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomaly_spotter.core.errors import AnomalySpotterError, DatasetError

MEAN = 0.5
STD = 0.5
NPY_MAGIC = b"\x93NUMPY"
# Pillow's decompression-bomb limit (2 x its default Image.MAX_IMAGE_PIXELS): no image over it is decoded
MAX_DECODE_PIXELS = 2 * 89_478_485
# Pillow modes of 16-bit grayscale (PNG, TIFF); 16-bit RGB(A) and LA PNG/TIFF open as 8-bit RGB(A)/LA
# modes holding the high byte of each sample, so 16-bit grayscale is reduced the same way (v >> 8)
GRAY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageInputError(AnomalySpotterError):
    """An input image is empty, not decodable, or of an unsupported size."""


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as uint8 RGB `(H, W, 3)` with `decode_rgb` (the served model's decoder).

    Raises DatasetError naming the file when it is missing, not an image, truncated or too large.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as err:
        raise DatasetError(f"{path}: file not found") from err
    except OSError as err:
        raise DatasetError(f"{path}: cannot read file ({err.strerror or err})") from err
    try:
        return decode_rgb(data, str(path))
    except ImageInputError as err:
        reason = str(err).removeprefix(f"{path}: ")
        raise DatasetError(f"{path}: cannot read image: {reason} (or remove it from the dataset)") from err


def check_size(width: int, height: int, name: str, max_side: int | None = None) -> None:
    """ImageInputError naming `name` for 0 pixels, over `max_side` on a side or over MAX_DECODE_PIXELS."""
    if width < 1 or height < 1:
        raise ImageInputError(f"{name}: image has no pixels ({width}x{height}); send a real image")
    if max_side is not None and max(width, height) > max_side:
        raise ImageInputError(
            f"{name}: image is {width}x{height}, larger than {max_side} pixels on a side; downscale it first"
        )
    if width * height > MAX_DECODE_PIXELS:
        raise ImageInputError(
            f"{name}: image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{MAX_DECODE_PIXELS} pixels (Pillow's decompression-bomb limit); downscale it first"
        )


def _checked_bytes(data: Any, name: str) -> bytes:
    if isinstance(data, str):
        raise ImageInputError(f"{name}: expected image bytes, got text; base64-decode it first")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageInputError(f"{name}: expected encoded image bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ImageInputError(f"{name}: empty image data; send a PNG or JPEG file's bytes")
    return data


def _npy_shape(data: bytes, name: str) -> tuple[int, ...]:
    try:
        buf = io.BytesIO(data)
        version = np.lib.format.read_magic(buf)
        fmt = np.lib.format
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        return tuple(read(buf)[0])
    except (ValueError, OSError, EOFError, SyntaxError) as err:
        raise ImageInputError(f"{name}: cannot read .npy header ({err}); save it with numpy.save") from err


def image_size(data: Any, name: str = "image", max_side: int | None = None) -> tuple[int, int]:
    """`(width, height)` of encoded image bytes (as `decode_rgb` takes) from the header only.

    Raises ImageInputError naming `name` when the bytes are not an image (an (H, W[, C]) .npy array) or
    over Pillow's decompression-bomb limit (the message names `max_side` too, if given).
    """
    data = _checked_bytes(data, name)
    if data.startswith(NPY_MAGIC):
        shape = _npy_shape(data, name)
        if len(shape) not in (2, 3):
            raise ImageInputError(f"{name}: expected an (H, W) or (H, W, 3) image array, got shape {shape}")
        return shape[1], shape[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return img.width, img.height
    except Image.DecompressionBombError as err:
        limit = f"{MAX_DECODE_PIXELS} pixels" + ("" if max_side is None else f", {max_side} pixels on a side")
        raise ImageInputError(
            f"{name}: image is too large to decode safely ({err}); the limit is {limit}: downscale it"
        ) from err
    except UnidentifiedImageError as err:
        raise ImageInputError(
            f"{name}: not a recognised image format; use PNG, JPEG, BMP or TIFF (8 or 16 bits)"
        ) from err
    except (OSError, SyntaxError, ValueError, TypeError) as err:
        raise ImageInputError(f"{name}: cannot read image header ({err}); re-export the image") from err


def npy_bytes(image: np.ndarray) -> bytes:
    """A uint8 array as `.npy` bytes, which `decode_rgb` reads back losslessly."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(image), allow_pickle=False)
    return buf.getvalue()


def decode_rgb(data: Any, name: str = "image", max_side: int | None = None) -> np.ndarray:
    """The one image decoder (prepare, predict and the served model): encoded bytes (PNG, JPEG, BMP, TIFF,
    ... or a NumPy .npy array) -> uint8 RGB `(H, W, 3)`.

    8-bit grayscale, palette, LA, RGB and RGBA (alpha dropped) as Pillow's convert("RGB"); 16-bit
    samples keep their high byte (v >> 8: 16-bit RGB(A) PNGs open so in Pillow, 16-bit grayscale is
    reduced the same way). The size is checked from the header before the pixels are decoded (0 pixels,
    over `max_side` on a side, over MAX_DECODE_PIXELS). Raises ImageInputError naming `name`.
    """
    data = _checked_bytes(data, name)
    width, height = image_size(data, name, max_side)
    check_size(width, height, name, max_side)
    if data.startswith(NPY_MAGIC):
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ImageInputError(f"{name}: cannot read .npy array ({err})") from err
        return rgb_array(array, name, max_side)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_DECODE_PIXELS is checked
            with Image.open(io.BytesIO(data)) as img:
                img.load()  # decodes fully: a truncated file raises here
                return _pil_rgb(img, name)
    except ImageInputError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageInputError(f"{name}: image is too large to decode safely ({err}); downscale it") from err
    except (OSError, SyntaxError, ValueError, TypeError, MemoryError) as err:
        raise ImageInputError(f"{name}: cannot decode image ({err}); re-export or replace the file") from err


def _pil_rgb(img: Image.Image, name: str) -> np.ndarray:
    if img.mode in GRAY16_MODES or img.mode == "I":
        arr = np.asarray(img)
        if img.mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageInputError(
                f"{name}: 32-bit integer pixels ({arr.min()}..{arr.max()}) are not supported; "
                "save the image with 8 or 16 bits per sample"
            )
        return rgb_array(arr.astype(np.uint16), name)
    if img.mode == "F":
        raise ImageInputError(
            f"{name}: floating-point pixels are not supported; save the image with 8 or 16 bits per sample"
        )
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def rgb_array(image: Any, name: str = "image", max_side: int | None = None) -> np.ndarray:
    """A decoded image array as uint8 RGB `(H, W, 3)`: uint8 or uint16 (high byte kept, as `decode_rgb`),
    `(H, W)`, `(H, W, 1)`, `(H, W, 3)` or `(H, W, 4)` (alpha dropped). Raises ImageInputError naming `name`.
    """
    arr = np.asarray(image)
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        arr = (arr >> 8).astype(np.uint8)
    if arr.dtype != np.uint8:
        raise ImageInputError(
            f"{name}: pixels must be uint8 (0-255) or uint16 (0-65535), got {arr.dtype}; convert the image"
        )
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[..., :3] if arr.shape[2] != 1 else arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ImageInputError(f"{name}: expected an (H, W) or (H, W, 3) image array, got shape {arr.shape}")
    check_size(arr.shape[1], arr.shape[0], name, max_side)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr)


# Masks with more than two grey levels (JPEG-compressed, anti-aliased) are binarised at half their range.
MASK_HALF_RANGE = {8: 128, 16: 32768}


def read_mask_levels(
    path: Path, image_size: tuple[int, int] | None = None, image_name: str = "its image"
) -> tuple[np.ndarray, int]:
    """Read a ground-truth mask as bool `(H, W)` and the number of distinct grey levels in the file.

    A two-level mask (0 and one other value, as MVTec's 0/255, a 0/1 mask or a coloured outline) marks
    every non-zero pixel defective. Any other mask (e.g. a JPEG-compressed one) is binarised at half its
    range: >= 128 for 8-bit files, >= 32768 for 16-bit ones. Colour and palette masks are read as their
    grey level (a 0/1 palette index is kept as is). Raises DatasetError naming the file when it is
    missing or unreadable, or when its header says another size than `image_size` (width, height) of its
    image `image_name`: checked before anything is decoded, so an oversized mask costs no memory.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            img = Image.open(path)
        with img:
            if image_size is not None and img.size != tuple(image_size):
                raise DatasetError(
                    f"{path}: mask is {img.width}x{img.height} but {image_name} is "
                    f"{image_size[0]}x{image_size[1]}; masks must match their image's size"
                )
            img.load()
            if img.mode == "1":
                arr = np.asarray(img).astype(np.uint8)
            elif img.mode.startswith("I"):  # 16-bit grey ("I;16*", or "I" as some Pillow versions open it)
                arr = np.asarray(img).astype(np.int64)
            elif img.mode == "P" and np.isin(np.asarray(img), (0, 1)).all():
                arr = np.asarray(img)  # palette indices 0 / 1: a label map
            else:
                arr = np.asarray(img.convert("L"))
    except FileNotFoundError as err:
        raise DatasetError(f"{path}: mask file not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"{path}: cannot read mask ({err}); replace or remove the file") from err
    levels = np.unique(arr)
    if (levels.size <= 2 and levels[:1].tolist() in ([], [0])) or np.isin(levels, (0, 1)).all():
        return arr > 0, int(levels.size)
    bits = 16 if arr.dtype != np.uint8 else 8
    return arr >= MASK_HALF_RANGE[bits], int(levels.size)


def read_mask(path: Path) -> np.ndarray:
    """Read a ground-truth mask as bool `(H, W)`, binarised as `read_mask_levels` says."""
    return read_mask_levels(path)[0]


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
