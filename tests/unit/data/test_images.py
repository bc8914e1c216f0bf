import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_spotter.core.errors import DatasetError
from anomaly_spotter.data.images import (
    MAX_DECODE_PIXELS,
    ImageInputError,
    decode_rgb,
    denormalize,
    read_rgb,
    resize_mask,
    resize_rgb,
    rgb_array,
    to_tensor_normalized,
)
from anomaly_spotter.data.prepared import prepare_category
from anomaly_spotter.serving.inference import decode_image
from tests.conftest import make_mvtec_category
from tests.unit.test_inference import png_header


def test_resize_is_pillow_bilinear_like_torchvision_resize() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize((128, 128), Image.BILINEAR))
    assert np.array_equal(resize_rgb(image, 128), expected)
    # Pillow's bilinear antialiases when shrinking: a 2x2 checkerboard averages to flat grey
    checker = np.indices((256, 256)).sum(axis=0) % 2 * 255
    small = resize_rgb(np.repeat(checker[..., None], 3, axis=2).astype(np.uint8), 128)
    assert np.abs(small[1:-1, 1:-1].astype(int) - 128).max() <= 1


def test_to_tensor_normalize_matches_the_formula() -> None:
    image = np.array([[[0, 128, 255]]], dtype=np.uint8)[None]  # (1, 1, 1, 3)
    x = to_tensor_normalized(image)
    assert x.shape == (1, 3, 1, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], [-1.0, (128 / 255 - 0.5) / 0.5, 1.0], atol=1e-6)
    assert np.array_equal(denormalize(x), image)


def test_mask_resize_stays_binary() -> None:
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:30, 20:40] = True
    small = resize_mask(mask, 32)
    assert small.dtype == bool and small.sum() == 10 * 10


def test_read_rgb_converts_gray_and_rgba(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 5), 7, np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.full((4, 5, 4), 9, np.uint8)).save(tmp_path / "a.png")
    assert read_rgb(tmp_path / "g.png").shape == (4, 5, 3)
    assert read_rgb(tmp_path / "a.png")[0, 0].tolist() == [9, 9, 9]


def test_read_rgb_names_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nope.png: file not found"):
        read_rgb(tmp_path / "nope.png")


def png16(image: np.ndarray) -> bytes:
    """A 16-bit PNG of uint16 `(H, W)` (grayscale), `(H, W, 2)` (LA), `(H, W, 3)` (RGB) or `(H, W, 4)` (RGBA),
    written by hand: Pillow cannot write 16-bit colour PNGs."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    channels = 1 if image.ndim == 2 else image.shape[2]
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    height, width = image.shape[:2]
    rows = image.astype(">u2").reshape(height, width * channels)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def to16(image8: np.ndarray, seed: int = 0) -> np.ndarray:
    """The 16-bit version of an 8-bit image as a camera writes it: v * 257 plus low-byte noise."""
    noise = np.random.default_rng(seed).integers(0, 200, image8.shape)
    return (image8.astype(np.uint32) * 257 + noise).clip(0, 65535).astype(np.uint16)


IMAGE8 = np.random.default_rng(5).integers(0, 256, (13, 17, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["gray16", "la16", "rgb16", "rgba16", "gray16-tiff"])
def test_16bit_images_decode_as_their_8bit_versions(tmp_path: Path, kind: str) -> None:
    gray8 = IMAGE8[..., 0]
    if kind == "gray16":
        data, expected = png16(to16(gray8)), np.repeat(gray8[..., None], 3, axis=2)
    elif kind == "la16":
        data, expected = (
            png16(to16(np.stack([gray8, gray8], axis=-1))),
            np.repeat(gray8[..., None], 3, axis=2),
        )
    elif kind == "rgb16":
        data, expected = png16(to16(IMAGE8)), IMAGE8
    elif kind == "rgba16":
        alpha = np.full((13, 17, 1), 255, np.uint8)
        data, expected = png16(to16(np.concatenate([IMAGE8, alpha], axis=-1))), IMAGE8
    else:
        buf = io.BytesIO()
        Image.fromarray(to16(gray8)).save(buf, format="TIFF")  # mode I;16
        data, expected = buf.getvalue(), np.repeat(gray8[..., None], 3, axis=2)
    path = tmp_path / "img16.png"
    path.write_bytes(data)
    from_file, from_bytes = read_rgb(path), decode_rgb(data, "upload")
    assert from_file.dtype == np.uint8 and from_file.shape == (13, 17, 3)
    assert np.abs(from_file.astype(int) - expected).max() <= 1  # not a constant 255
    np.testing.assert_array_equal(from_bytes, from_file)  # one decoder for files and bytes
    np.testing.assert_array_equal(decode_image(data, "upload"), from_file)  # and the served model's


def test_palette_and_la_images_decode_as_rgb(tmp_path: Path) -> None:
    palette = Image.fromarray(IMAGE8).quantize(16)
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "p.png"), np.asarray(palette.convert("RGB")))
    Image.fromarray(np.stack([IMAGE8[..., 1], IMAGE8[..., 2]], axis=-1), mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "la.png"), np.repeat(IMAGE8[..., 1:2], 3, axis=2))


def test_16bit_arrays_and_unsupported_modes() -> None:
    assert np.abs(rgb_array(to16(IMAGE8)).astype(int) - IMAGE8).max() <= 1
    buf = io.BytesIO()
    np.save(buf, to16(IMAGE8[..., 0]))
    assert np.abs(decode_rgb(buf.getvalue())[..., 2].astype(int) - IMAGE8[..., 0]).max() <= 1
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(buf, format="TIFF")
    with pytest.raises(ImageInputError, match="x.tif: floating-point pixels are not supported"):
        decode_rgb(buf.getvalue(), "x.tif")


def test_prepare_stores_16bit_images_as_their_8bit_versions(tmp_path: Path) -> None:
    make_mvtec_category(tmp_path / "d8", size=24, gray=True, seed=2)
    cat16 = make_mvtec_category(tmp_path / "d16", size=24, gray=True, seed=2)
    for path in cat16.glob("t*/*/*.png"):  # train/ and test/ images (masks stay 8-bit)
        path.write_bytes(png16(to16(np.asarray(Image.open(path)))))
    assert Image.open(next(cat16.glob("train/good/*.png"))).mode == "I;16"
    for root in ("d8", "d16"):
        prepare_category(tmp_path / root, "widget", tmp_path / f"out{root}", 24, 0.2, 0, progress=False)
    images8 = np.load(tmp_path / "outd8" / "images.npy")
    images16 = np.load(tmp_path / "outd16" / "images.npy")
    assert images16.max() < 255  # not white
    assert np.abs(images16.astype(int) - images8).max() <= 1


def test_prepare_names_a_decompression_bomb_and_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(20000, 20000))
    message = rf"huge\.png: cannot read image: image is too large.*limit is {MAX_DECODE_PIXELS} pixels"
    with pytest.raises(DatasetError, match=message):
        read_rgb(path)


def test_an_oversized_mask_is_refused_from_its_header_before_decoding(tmp_path: Path) -> None:
    cat = make_mvtec_category(tmp_path / "raw", n_train=3, n_test_good=1, defects={"hole": 1}, size=32)
    mask = cat / "ground_truth" / "hole" / "000_mask.png"
    mask.write_bytes(png_header(10400, 10400))  # 108 Mpx claimed, no pixel data: decoding would fail
    message = (
        r"000_mask\.png: mask is 10400x10400 but its image .*hole/000\.png is 32x32; masks must match "
        "their image's size"
    )
    with pytest.raises(DatasetError, match=message):
        prepare_category(tmp_path / "raw", "widget", tmp_path / "out", 32, 0.34, 0, False)


def test_a_full_disk_while_prepare_writes_is_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    make_mvtec_category(tmp_path / "raw", n_train=3, n_test_good=1, size=32)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "open_memmap", full)
    with pytest.raises(
        DatasetError,
        match=r"out: cannot write the prepared images \(No space left on device\); they need 32,768 bytes",
    ):
        prepare_category(tmp_path / "raw", "widget", tmp_path / "out", 32, 0.34, 0, False)
