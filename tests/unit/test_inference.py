"""inference: decoding and validation of new images, and scoring equal to the pipeline's."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from anomaly_spotter.core.errors import AnomalySpotterError, ConfigError
from anomaly_spotter.core.scoring import score_batches
from anomaly_spotter.data.images import read_rgb, resize_rgb
from anomaly_spotter.detectors.unet_ae.detector import UNetAEDetector
from anomaly_spotter.detectors.unet_ae.network import UNetConfig
from anomaly_spotter.detectors.unet_ae.options import UNetTraining
from anomaly_spotter.serving.inference import (
    MAX_SIDE,
    ImageInputError,
    InferenceConfig,
    check_array,
    decode_image,
    read_image,
    score_images,
)
from anomaly_spotter.serving.model import ServiceModel

TINY = UNetConfig(encoder_channels=(4, 8), bottleneck_channels=8)


def tiny_detector(images: np.ndarray | None = None, seed: int = 0, epochs: int = 1) -> UNetAEDetector:
    """A fitted 2-level U-Net AE on 32x32 images (a second on CPU)."""
    if images is None:
        rng = np.random.default_rng(seed)
        images = (100 + rng.integers(0, 40, (8, 32, 32, 3))).astype(np.uint8)
    train = UNetTraining(max_epochs=epochs, batch_size=4, lr=1e-3)
    return UNetAEDetector(TINY, train=train, seed=seed, progress=False).fit(np.asarray(images))


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` (pixel data truncated): cheap to build, huge to decode."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


TRUNCATED = encode(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))[:400]


@pytest.fixture(scope="module")
def detector() -> UNetAEDetector:
    return tiny_detector()


@pytest.mark.parametrize(
    ("mode", "fmt", "suffix"),
    [("RGB", "PNG", ".png"), ("L", "PNG", ".png"), ("RGBA", "PNG", ".png"), ("RGB", "JPEG", ".jpg")],
)
def test_decode_equals_read_rgb(tmp_path: Path, mode: str, fmt: str, suffix: str) -> None:
    rng = np.random.default_rng(1)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, (21, 17, channels), dtype=np.uint8)
    if mode == "RGBA":
        arr[..., 3] = 255
    path = tmp_path / f"x{suffix}"
    Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=mode).save(path, format=fmt)
    decoded = decode_image(path.read_bytes(), str(path))
    assert decoded.shape == (21, 17, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, read_rgb(path))
    np.testing.assert_array_equal(read_image(path), read_rgb(path))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, not an image", "not a recognised image"),
        (png_header(0, 10), "image"),
        (png_header(20000, 20000), str(MAX_SIDE)),
        (png_header(MAX_SIDE + 1, 2), str(MAX_SIDE)),
        (encode(np.zeros((1, 20000), np.uint8)), str(MAX_SIDE)),
        (TRUNCATED, "truncated"),
    ],
    ids=["empty", "garbage", "zero-width", "20000-header", "over-limit", "20000x1", "truncated"],
)
def test_decode_rejects_bad_input(data: bytes, message: str) -> None:
    with pytest.raises(ImageInputError, match=message) as info:
        decode_image(data, "upload.png")
    assert "upload.png" in str(info.value)
    assert isinstance(info.value, AnomalySpotterError)


def test_decode_npy_and_check_array() -> None:
    arr = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    buf = io.BytesIO()
    np.save(buf, arr)
    np.testing.assert_array_equal(decode_image(buf.getvalue()), arr)
    gray = check_array(arr[..., 0])
    assert gray.shape == (5, 6, 3) and (gray[..., 2] == arr[..., 0]).all()
    with pytest.raises(ImageInputError, match="uint8"):
        check_array(arr.astype(np.float32))
    with pytest.raises(ImageInputError, match="no pixels"):
        check_array(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ImageInputError, match="shape"):
        check_array(np.zeros((4, 4, 2), np.uint8))


def test_read_image_names_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError, match="nope.png: file not found"):
        read_image(tmp_path / "nope.png")


def test_score_images_equals_pipeline_scoring(detector: UNetAEDetector) -> None:
    """Same resize, same detector, same reduction as process_all: identical scores."""
    rng = np.random.default_rng(3)
    originals = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(3)]
    originals.append(rng.integers(0, 256, (32, 32), dtype=np.uint8))  # grayscale, no resize
    prepared = np.stack([resize_rgb(check_array(im), 32) for im in originals])
    for reduction in ("max", "p99"):
        _, expected = score_batches(detector, prepared, 16, reduction, progress=False)
        config = InferenceConfig("widget", 32, threshold=float(np.median(expected)), reduction=reduction)
        rows = score_images(detector, originals, config, return_map=True)
        np.testing.assert_allclose([r["score"] for r in rows], expected, rtol=1e-6)
        for row in rows:
            assert row["verdict"] == ("defective" if row["score"] > config.threshold else "good")
            assert row["threshold"] == config.threshold
            assert 0.0 <= row["anomaly_percentage"] <= 100.0
            assert row["anomaly_map"].shape == (32, 32)


def test_verdict_is_strict(detector: UNetAEDetector) -> None:
    image = np.full((32, 32, 3), 120, np.uint8)
    score = score_images(detector, [image], InferenceConfig("w", 32, 0.0))[0]["score"]
    assert score_images(detector, [image], InferenceConfig("w", 32, score))[0]["verdict"] == "good"
    below = InferenceConfig("w", 32, score - 1e-6)
    assert score_images(detector, [image], below)[0]["verdict"] == "defective"
    assert score_images(detector, [], InferenceConfig("w", 32, 0.0)) == []


def test_pixel_calibration_travels_with_the_model_file(tmp_path: Path) -> None:
    from anomaly_spotter.core.errors import ConfigError
    from anomaly_spotter.detectors import load_detector
    from anomaly_spotter.pipeline.train import calibrate_pixels

    rng = np.random.default_rng(1)
    val = (100 + rng.integers(0, 40, (4, 32, 32, 3))).astype(np.uint8)
    detector = tiny_detector()
    cal = calibrate_pixels(detector, val, 0.99)
    maps, _ = score_batches(detector, val, 16, "max", progress=False)
    assert cal.threshold == pytest.approx(float(np.quantile(maps, 0.99)))
    detector.save(tmp_path / "model.pt")
    loaded = load_detector(tmp_path / "model.pt")
    assert loaded.pixel_calibration_ == cal
    config = InferenceConfig.for_model(loaded, "w", 32, 1.0, "recall_target", "max", 16, "calibrated")
    assert (config.pixel_threshold, config.good_max) == (cal.threshold, cal.good_max)
    row = score_images(loaded, list(val[:1]), config)[0]
    assert row["anomaly_percentage"] == pytest.approx(100 * float((maps[0] > cal.threshold).mean()))
    # a model saved without a calibration: the calibrated region is refused by name, Otsu still works
    tiny_detector().save(tmp_path / "old.pt")
    old = load_detector(tmp_path / "old.pt")
    assert old.pixel_calibration_ is None
    with pytest.raises(ConfigError, match="no pixel calibration.*region_threshold: otsu"):
        InferenceConfig.for_model(old, "w", 32, 1.0, "recall_target", "max", 16, "calibrated")
    assert (
        InferenceConfig.for_model(old, "w", 32, 1.0, "recall_target", "max", 16, "otsu").pixel_threshold
        is None
    )
    # a served config saved before calibration existed keeps the original's Otsu region
    legacy = {"category": "w", "image_size": 32, "threshold": 1.0, "reduction": "max", "batch_size": 16}
    assert InferenceConfig.from_dict(legacy).region_threshold == "otsu"
    assert InferenceConfig.from_dict(config.to_dict()) == config


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _service(detector: UNetAEDetector, **limits: float) -> ServiceModel:
    model = ServiceModel()
    model.config = InferenceConfig("w", 32, 0.0, **limits)
    model.detector = detector
    return model


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (png_header(20000, 20000), r"image 0: image is too large to decode safely.* 8192 pixels on a side"),
        (png_header(9000, 20), r"image 0: image is 9000x20, larger than 8192 pixels on a side"),
        (TRUNCATED, r"image 0: cannot decode image \(image file is truncated"),
        (_npy(np.zeros((0, 40, 3), np.uint8)), r"image 0: image has no pixels \(40x0\)"),
        (b"hello, not an image", "image 0: not a recognised image format"),
    ],
    ids=["20000-header", "9000-header", "truncated", "0-pixel-array", "garbage"],
)
def test_served_model_answers_with_the_decoders_reason(
    detector: UNetAEDetector, data: bytes, message: str
) -> None:
    model = _service(detector, min_image_side=8)
    for value in (data, base64.b64encode(data)):  # raw bytes, and the `inputs` format's base64 bytes
        with pytest.raises(MlflowException, match=message) as info:
            model.predict(None, pd.DataFrame({"image": [value]}))
        assert info.value.error_code == "INVALID_PARAMETER_VALUE"


def test_request_limits_are_checked_from_headers_and_name_their_param(detector: UNetAEDetector) -> None:
    model = _service(detector, max_images_per_request=3, max_request_megapixels=1, min_image_side=16)
    png = encode(np.full((40, 40, 3), 120, np.uint8))
    assert len(model.predict(None, pd.DataFrame({"image": [png] * 3}))) == 3
    cases = {
        r"request has 4 images, over the limit of 3 \(registry\.max_images_per_request\)": [png] * 4,
        r"image 1: image is 15x40, smaller than 16 pixels on a side \(registry\.min_image_side\)": [
            png,
            encode(np.zeros((40, 15, 3), np.uint8)),
        ],
        # truncated headers: refused by the limit before any pixels are decoded
        r"request has 1\.3 megapixels of images, over the limit of 1 \(registry\.max_request_megapixels\)": [
            png_header(800, 800),
            png_header(800, 800),
        ],
    }
    for message, images in cases.items():
        with pytest.raises(MlflowException, match=message):
            model.predict(None, pd.DataFrame({"image": images}))
    with pytest.raises(MlflowException, match=r"image 0: image is 1x1, smaller than 32 pixels on a side"):
        _service(detector).predict(None, [np.zeros((1, 1, 3), np.uint8)])
    # the CLI's entry (`score`, chunks of 16 files each checked by read_image) has no request limit
    assert len(model.score([np.full((40, 40, 3), 120, np.uint8)] * 4)) == 4
    # the smallest side is capped at the model's input size; a config saved before the limits existed
    # gets the defaults
    capped = InferenceConfig("w", 32, 0.0, min_image_side=64)
    assert capped.min_side == 32
    capped.check_request([(32, 32)])
    legacy = InferenceConfig.from_dict({"category": "w", "image_size": 32, "threshold": 1.0})
    limits = (legacy.max_images_per_request, legacy.max_request_megapixels, legacy.min_image_side)
    assert limits == (64, 100, 32)
    with pytest.raises(ConfigError, match=r"registry\.max_images_per_request must be >= 1, got 0"):
        InferenceConfig("w", 32, 0.0, max_images_per_request=0)


def test_tiled_model_scores_any_shape_without_distortion(tmp_path: Path) -> None:
    """A model with a 2:1 canvas of two 32 px windows: an image of that shape fills the canvas (map at the
    working resolution, its own aspect); a square image is padded, never stretched, and its map is cut
    back to it; the saved model keeps its windows, so every path blends the same ones."""
    from anomaly_spotter.data.geometry import Geometry, score_canvases
    from anomaly_spotter.detectors import load_detector

    geometry = Geometry(32, (32, 64), 0.25)
    rng = np.random.default_rng(3)
    goods = (100 + rng.integers(0, 40, (4, 32, 64, 3))).astype(np.uint8)
    detector = tiny_detector(geometry.cut(goods))
    detector.geometry_ = geometry
    detector.save(tmp_path / "model.pt")
    loaded = load_detector(tmp_path / "model.pt")
    assert loaded.geometry_ == geometry
    config = InferenceConfig.for_model(loaded, "w", 32, 1e9, "recall_target", "max", 4, "otsu")
    assert config.scoring_geometry() == geometry

    wide = (100 + rng.integers(0, 40, (64, 128, 3))).astype(np.uint8)  # 2:1, twice the working size
    square = (100 + rng.integers(0, 40, (50, 50, 3))).astype(np.uint8)
    rows = score_images(loaded, [wide, square], config, return_map=True)
    assert rows[0]["anomaly_map"].shape == (32, 64)
    assert rows[1]["anomaly_map"].shape == (32, 32)  # the square image's part of the canvas
    canvas, box = geometry.fit(square)
    assert box == (0, 16, 32, 32)
    maps, scores = score_canvases(loaded, canvas[None], geometry, 4, "max", [box])
    np.testing.assert_allclose(rows[1]["anomaly_map"], maps[0][:, 16:48], rtol=1e-6)
    assert rows[1]["score"] == pytest.approx(float(scores[0]), rel=1e-6)
    assert rows[0]["overlay"].shape[1] > rows[0]["overlay"].shape[0]  # drawn at the image's own shape


def test_high_resolution_images_are_scored_a_few_at_a_time() -> None:
    from anomaly_spotter.data.geometry import Geometry

    square = InferenceConfig("w", 160, 1.0)
    assert square.images_per_chunk(16, 8.0) == 16
    sheet = InferenceConfig("w", 256, 1.0, geometry=Geometry(256, (1536, 2048)).to_dict())
    assert sheet.images_per_chunk(16, 8.0) == 2  # 3.1 megapixels a canvas
    assert sheet.images_per_chunk(16, 1.0) == 1  # never none
