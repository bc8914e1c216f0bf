"""params.yaml -> Params: the autoencoder's training loop lives in model.unet_ae.training, train holds
num_threads only, and what the train stage logs is what it reads (the active detector's section)."""

from __future__ import annotations

import pytest

from anomaly_spotter.config import (
    Params,
    TrainParams,
    flatten,
    params_from_dict,
    params_to_dict,
    train_params_logged,
)
from anomaly_spotter.errors import ConfigError

RAW = {
    "seed": 3,
    "model": {
        "name": "patchcore",
        "unet_ae": {"encoder_channels": [4, 8], "sigma": 2.0, "training": {"lr": 0.01, "max_epochs": 7}},
        "patchcore": {"coreset_ratio": 0.05},
    },
    "train": {"num_threads": 1},
}


def test_training_section_is_merged_into_train_params() -> None:
    params = params_from_dict(RAW)
    assert params.train == TrainParams(lr=0.01, max_epochs=7, num_threads=1)
    assert params.model.unet_ae == {"encoder_channels": [4, 8], "sigma": 2.0}  # what the detector builds from
    assert RAW["model"]["unet_ae"]["training"] == {"lr": 0.01, "max_epochs": 7}  # input not modified


def test_params_to_dict_restores_the_yaml_layout() -> None:
    raw = params_to_dict(params_from_dict(RAW))
    assert raw["train"] == {"num_threads": 1, "pixel_quantile": 0.999, "world_size": 1}
    assert raw["model"]["unet_ae"]["training"] == {
        "batch_size": 32,
        "lr": 0.01,
        "betas": [0.9, 0.999],
        "max_epochs": 7,
        "epoch_size": 0,
        "patience": 10,
        "synthetic_defects": 0.0,
        "synthetic_scars": 0.0,
        "crop_size": 0,
        "lr_schedule": "constant",
        "ssim_loss": 0.0,
        "device": "cpu",
    }
    assert params_from_dict(raw) == params_from_dict(RAW)
    assert "model.unet_ae.training.lr" in flatten(raw) and "train.lr" not in flatten(raw)


def test_train_params_logged_are_the_active_detector_only() -> None:
    logged = train_params_logged(params_from_dict(RAW))
    assert logged == {
        "model.name": "patchcore",
        "model.patchcore.coreset_ratio": 0.05,
        "train.num_threads": 1,
        "train.pixel_quantile": 0.999,
        "train.world_size": 1,
    }
    unet = train_params_logged(params_from_dict({**RAW, "model": {**RAW["model"], "name": "unet_ae"}}))
    assert unet["model.unet_ae.training.lr"] == 0.01 and unet["model.unet_ae.sigma"] == 2.0
    assert not any(k.startswith("model.patchcore") for k in unet)


def test_training_keys_under_train_are_refused_with_their_new_place() -> None:
    with pytest.raises(ConfigError, match=r"train\.lr is the autoencoder's training loop: move \['lr'\] to "):
        params_from_dict({"train": {"lr": 0.1, "num_threads": 2}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lrate'\] in model\.unet_ae\.training"):
        params_from_dict({"model": {"unet_ae": {"training": {"lrate": 0.1}}}})
    with pytest.raises(ConfigError, match=r"model\.unet_ae\.training: batch_size, max_epochs and patience"):
        params_from_dict({"model": {"unet_ae": {"training": {"patience": 0}}}})


def test_defaults_without_sections() -> None:
    assert params_from_dict({}) == Params()


def test_image_size_and_request_limits_are_bounded_by_name() -> None:
    with pytest.raises(ConfigError, match=r"data\.image_size is 99999999; set it between 16 and 1024"):
        params_from_dict({"data": {"image_size": 99999999}})
    assert params_from_dict({"data": {"image_size": 1024}}).data.image_size == 1024
    with pytest.raises(ConfigError, match=r"registry\.max_images_per_request must be >= 1, got 0"):
        params_from_dict({"registry": {"max_images_per_request": 0}})
    with pytest.raises(ConfigError, match=r"registry\.min_image_side must be >= 1, got -3"):
        params_from_dict({"registry": {"min_image_side": -3}})
    registry = params_from_dict({"registry": {"max_request_megapixels": 50}}).registry
    assert (registry.max_images_per_request, registry.max_request_megapixels, registry.min_image_side) == (
        64,
        50.0,
        32,
    )
