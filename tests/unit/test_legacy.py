"""The original Python API: default_transform, load_autoencoder, generate_overlay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_spotter.core.errors import AnomalySpotterError
from anomaly_spotter.data.images import read_rgb, resize_rgb, to_tensor_normalized
from anomaly_spotter.detectors.unet_ae.network import ORIGINAL, UNetAutoencoder
from anomaly_spotter.serving.inference import InferenceConfig, score_images
from anomaly_spotter.serving.legacy import default_transform, generate_overlay, load_autoencoder
from tests.unit.test_inference import TINY, tiny_detector


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    det = tiny_detector()
    path = tmp_path_factory.mktemp("legacy") / "model.pt"
    det.save(path)
    return path, det


def _image(tmp_path: Path, shape: tuple[int, int] = (48, 40)) -> Path:
    path = tmp_path / "part.png"
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)
    return path


def test_default_transform_is_resize_totensor_normalize(tmp_path: Path) -> None:
    path = _image(tmp_path)
    x = default_transform(32)(Image.open(path))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    expected = to_tensor_normalized(resize_rgb(read_rgb(path), 32)[None])[0]
    np.testing.assert_array_equal(x.numpy(), expected)


def test_load_autoencoder_pipeline_file_and_raw_state_dict(
    tmp_path: Path, fitted: tuple[Path, object]
) -> None:
    path, det = fitted
    model = load_autoencoder(path)
    assert not model.training and model.config == TINY
    raw = tmp_path / "model.pth"
    torch.save(det.module().state_dict(), raw)
    # the original README's way still works ...
    readme = UNetAutoencoder(TINY)
    readme.load_state_dict(torch.load(raw, weights_only=True))
    # ... and so does load_autoencoder with the config
    loaded = load_autoencoder(raw, config=TINY)
    for a, b in zip(readme.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(AnomalySpotterError, match="config"):
        load_autoencoder(raw)  # a TINY state dict does not fit the original configuration
    original = tmp_path / "original.pth"
    torch.save(UNetAutoencoder(ORIGINAL).state_dict(), original)
    assert load_autoencoder(original).config == ORIGINAL
    with pytest.raises(AnomalySpotterError, match="not found"):
        load_autoencoder(tmp_path / "missing.pt")


def test_generate_overlay_matches_pipeline(tmp_path: Path, fitted: tuple[Path, object]) -> None:
    path, det = fitted
    image = _image(tmp_path, (48, 48))  # square: the original's API squashes, the pipeline never does
    save = tmp_path / "out" / "overlay.png"
    stats = generate_overlay(
        image_path=image,
        model=load_autoencoder(path),
        transform=default_transform(32),
        save_path=save,
        sigma=det.sigma,
    )
    with Image.open(save) as img:
        assert img.size == (32, 32) and img.mode == "RGB"
    row = score_images(det, [read_rgb(image)], InferenceConfig("w", 32, 0.0), return_map=True)[0]
    assert stats["score"] == pytest.approx(row["score"], rel=1e-6)
    assert stats["anomaly_percentage"] == pytest.approx(row["anomaly_percentage"])
    np.testing.assert_allclose(stats["anomaly_map"], row["anomaly_map"], rtol=1e-5, atol=1e-7)
    with pytest.raises(AnomalySpotterError, match="broken.png"):
        (tmp_path / "broken.png").write_bytes(b"nope")
        generate_overlay(
            image_path=tmp_path / "broken.png", model=load_autoencoder(path), transform=None, save_path=None
        )
