"""params.yaml -> Params, and each detector's section -> its typed Options (the registry's
`parse_options`): the autoencoder's training loop lives in model.unet_ae.training, `train` holds what every
detector reads, bad keys are refused by name, and what the train stage logs is what it reads."""

from __future__ import annotations

import pytest

from anomaly_spotter.core.config import Params, TrainParams, flatten, params_from_dict, params_to_dict
from anomaly_spotter.core.errors import ConfigError
from anomaly_spotter.detectors import build_detector, parse_options
from anomaly_spotter.detectors.unet_ae.options import UNetAEOptions, UNetTraining
from anomaly_spotter.pipeline.train import train_params_logged

RAW = {
    "seed": 3,
    "model": {
        "name": "patchcore",
        "unet_ae": {"encoder_channels": [4, 8], "sigma": 2.0, "training": {"lr": 0.01, "max_epochs": 7}},
        "patchcore": {"coreset_ratio": 0.05},
    },
    "train": {"num_threads": 1},
}


def test_sections_parse_into_each_detectors_typed_options() -> None:
    params = params_from_dict(RAW)
    assert params.train == TrainParams(num_threads=1)
    unet = parse_options("unet_ae", params.model.sections["unet_ae"], params.seed)
    assert unet == UNetAEOptions(
        encoder_channels=[4, 8], sigma=2.0, training=UNetTraining(lr=0.01, max_epochs=7)
    )
    patchcore = parse_options("patchcore", params.model.options(), params.seed)
    assert (patchcore.coreset_ratio, patchcore.seed) == (
        0.05,
        3,
    )  # the global seed unless the section sets one
    assert parse_options("patchcore", {"seed": 9}, 3).seed == 9
    assert RAW["model"]["unet_ae"]["training"] == {"lr": 0.01, "max_epochs": 7}  # input not modified
    with pytest.raises(AttributeError):
        unet.sigma = 1.0  # frozen


def test_params_to_dict_restores_the_yaml_layout() -> None:
    raw = params_to_dict(params_from_dict(RAW))
    assert raw["train"] == {"num_threads": 1, "pixel_quantile": 0.999, "world_size": 1}
    assert raw["model"] == RAW["model"]
    assert params_from_dict(raw) == params_from_dict(RAW)
    assert "model.unet_ae.training.lr" in flatten(raw) and "train.lr" not in flatten(raw)


def test_train_params_logged_are_the_active_detector_only() -> None:
    logged = train_params_logged(params_from_dict(RAW))
    assert logged["model.name"] == "patchcore" and logged["model.patchcore.coreset_ratio"] == 0.05
    assert logged["model.patchcore.seed"] == 3 and logged["train.num_threads"] == 1
    assert not any(k.startswith("model.unet_ae") for k in logged)
    unet = train_params_logged(params_from_dict({**RAW, "model": {**RAW["model"], "name": "unet_ae"}}))
    assert unet["model.unet_ae.training.lr"] == 0.01 and unet["model.unet_ae.sigma"] == 2.0
    assert unet["model.unet_ae.training.batch_size"] == 32  # defaults filled in: what was trained with
    assert not any(k.startswith("model.patchcore") for k in unet)


def test_bad_keys_and_values_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lr'\] in train"):
        params_from_dict({"train": {"lr": 0.1, "num_threads": 2}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lrate'\] in model\.unet_ae\.training"):
        parse_options("unet_ae", {"training": {"lrate": 0.1}})
    with pytest.raises(ConfigError, match=r"model\.unet_ae\.training: batch_size, max_epochs and patience"):
        parse_options("unet_ae", {"training": {"patience": 0}})
    with pytest.raises(ConfigError, match=r"model\.patchcore\.sigma must be float, got 'x'"):
        parse_options("patchcore", {"sigma": "x"})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['layers'\] in model\.patchcore; valid keys"):
        parse_options("patchcore", {"layers": [2]})
    with pytest.raises(ConfigError, match=r"model\.name is 'vae'; choose one of patchcore, unet_ae"):
        build_detector(params_from_dict({"model": {"name": "vae"}}))
    with pytest.raises(ConfigError, match=r"model\.patchcore must be a mapping"):
        params_from_dict({"model": {"patchcore": 3}})


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


@pytest.mark.parametrize("name", ["../../victim", "a/b", "..", ".hidden", "-x", "a\\b", ""])
def test_category_names_are_plain_folder_names(name: str) -> None:
    with pytest.raises(ConfigError, match=r"data\.categories: .* is not a plain folder name"):
        params_from_dict({"data": {"categories": ["fabric", name]}})
    assert (
        params_from_dict({"data": {"categories": ["screw", "metal_nut", "v1.2"]}}).data.categories[1]
        == "metal_nut"
    )
    with pytest.raises(ConfigError, match="lists a category twice"):
        params_from_dict({"data": {"categories": ["screw", "screw"]}})
