import numpy as np
import pytest
import torch

from anomaly_spotter.config import TrainParams
from anomaly_spotter.detectors import load_detector
from anomaly_spotter.detectors.unet_ae import UNetAEDetector
from anomaly_spotter.errors import ConfigError
from anomaly_spotter.models.unet_ae import ORIGINAL, UNetAutoencoder, UNetConfig


def _activations(model: UNetAutoencoder, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        model.bottleneck.register_forward_hook(lambda m, i, o: shapes.__setitem__("bottleneck", o.shape))
    ]
    for k, enc in enumerate(model.encoders):
        hooks.append(enc.register_forward_hook(lambda m, i, o, k=k: shapes.__setitem__(f"enc{k}", o.shape)))
    out = model(x)
    shapes["out"] = tuple(out.shape)
    for h in hooks:
        h.remove()
    return shapes


def test_original_configuration_shapes_and_size() -> None:
    model = UNetAutoencoder(ORIGINAL)
    shapes = _activations(model, torch.zeros(2, 3, 128, 128))
    assert shapes["enc0"] == (2, 64, 128, 128)
    assert shapes["enc2"] == (2, 256, 32, 32)
    assert shapes["bottleneck"] == (2, 512, 16, 16)
    assert shapes["out"] == (2, 3, 128, 128)
    n_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert 14.5e6 < n_bytes < 16.5e6  # "about 15 MB of float32 weights"
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 1
    assert isinstance(model.up, torch.nn.Upsample) and model.up.mode == "bilinear"


def test_default_configuration_shapes_and_tanh_range() -> None:
    model = UNetAutoencoder(UNetConfig())
    shapes = _activations(model, torch.randn(1, 3, 128, 128) * 10)
    assert shapes["bottleneck"] == (1, 128, 16, 16)
    assert shapes["out"] == (1, 3, 128, 128)
    with torch.no_grad():
        y = model(torch.randn(1, 3, 64, 64) * 10)
    assert y.abs().max() <= 1.0


def _images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.tile(np.linspace(60, 180, 32, dtype=np.float32), (32, 1))[..., None].repeat(3, axis=2)
    return np.clip(base + rng.normal(0, 3, (n, 32, 32, 3)), 0, 255).astype(np.uint8)


def test_training_is_deterministic_and_early_stops(tmp_path) -> None:
    train = TrainParams(batch_size=4, lr=1e-3, max_epochs=40, patience=2)
    cfg = UNetConfig(encoder_channels=(4, 8), bottleneck_channels=8)
    a = UNetAEDetector(cfg, train=train, seed=3, progress=False).fit(_images(8, 0), _images(4, 1))
    b = UNetAEDetector(cfg, train=train, seed=3, progress=False).fit(_images(8, 0), _images(4, 1))
    assert a.history_.equals(b.history_)
    assert a.history_["train_loss"].iloc[-1] < a.history_["train_loss"].iloc[0]
    assert a.best_epoch_ == int(a.history_.loc[a.history_["val_loss"].idxmin(), "epoch"])
    # the saved file rebuilds the same detector (weights only)
    a.save(tmp_path / "model.pt")
    loaded = load_detector(tmp_path / "model.pt")
    test = _images(2, 5)
    test[1, 10:20, 10:20] = 255
    maps = loaded.anomaly_maps(test)
    np.testing.assert_allclose(maps, a.anomaly_maps(test), rtol=1e-6)
    assert maps.shape == (2, 32, 32)
    assert maps[1, 10:20, 10:20].mean() > maps[0, 10:20, 10:20].mean()


def test_side_not_multiple_of_downsampling_is_a_config_error() -> None:
    det = UNetAEDetector(UNetConfig(encoder_channels=(4, 8, 8)), progress=False)
    with pytest.raises(ConfigError, match="multiple of 8"):
        det.fit(np.zeros((2, 30, 30, 3), np.uint8))


def test_synthetic_defects_train_to_remove_them_and_ssim_maps_survive_saving(tmp_path) -> None:
    from anomaly_spotter.synthetic import corrupt

    cfg = UNetConfig(encoder_channels=(4, 8), bottleneck_channels=8)
    train = TrainParams(batch_size=4, lr=1e-3, max_epochs=3, patience=3, synthetic_defects=1.0)
    det = UNetAEDetector(cfg, train=train, seed=3, progress=False, map_kind="ssim")
    det.fit(_images(8, 0), _images(4, 1))
    # the validation loss is defect removal: the loss of the corrupted validation images vs their clean
    # versions, recomputed here for the kept (best) weights
    from anomaly_spotter.data.images import to_tensor_normalized

    clean = to_tensor_normalized(_images(4, 1))
    corrupted, masks = corrupt(clean, 1.0, np.random.default_rng(3 + 1))
    assert masks.any(axis=(1, 2)).all()
    with torch.inference_mode():
        out = det.module()(torch.from_numpy(corrupted)).numpy()
    best = det.history_.loc[det.history_["epoch"] == det.best_epoch_, "val_loss"].item()
    assert float(((out - clean) ** 2).mean()) == pytest.approx(best, rel=1e-5)
    det.save(tmp_path / "model.pt")
    loaded = load_detector(tmp_path / "model.pt")
    assert loaded.map_kind == "ssim"
    test = _images(2, 5)
    np.testing.assert_allclose(loaded.anomaly_maps(test), det.anomaly_maps(test), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="model.unet_ae.map_kind"):
        UNetAEDetector(cfg, map_kind="l1")
