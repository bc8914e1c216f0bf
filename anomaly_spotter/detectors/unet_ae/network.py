"""The original prototype's U-Net autoencoder: a module and its config, nothing else.

Input `(B, 3, S, S)` in [-1, 1] -> reconstruction `(B, 3, S, S)` in [-1, 1] (Tanh).
Encoder: one block per width in `encoder_channels`, each followed by 2x2 MaxPool; bottleneck block at
S / 2**levels; decoder: bilinear x2 upsampling, concatenation with the encoder skip (unless
`skip_connections` is false: a plain encoder-decoder), block.
A block is `convs_per_block` x (3x3 conv [+ BatchNorm] + ReLU).

ORIGINAL is the prototype's configuration: 128x128 input, widths 64-128-256, a 512-channel
bottleneck at 16x16, one conv per block, no BatchNorm: 3.87 M parameters, 15.5 MB of float32 weights.

`ReconstructAndSegment` is DRAEM's pair (Zavrtanik et al., ICCV 2021): the autoencoder reconstructs, a
second U-Net (6 input channels: image and reconstruction, 1 output logit per pixel) segments what differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    encoder_channels: tuple[int, ...] = (16, 32, 64)
    bottleneck_channels: int = 128
    convs_per_block: int = 1
    in_channels: int = 3
    batch_norm: bool = False  # BatchNorm after each conv (the original has none)
    out_channels: int = 3
    skip_connections: bool = True  # False: a plain encoder-decoder (DRAEM's reconstructive network)

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_channels", tuple(int(c) for c in self.encoder_channels))
        if not self.encoder_channels or min(self.encoder_channels) < 1 or self.bottleneck_channels < 1:
            raise ValueError(f"UNetConfig widths must be positive, got {self}")
        if self.convs_per_block < 1:
            raise ValueError(f"convs_per_block must be >= 1, got {self.convs_per_block}")

    @property
    def downsampling(self) -> int:
        """The input side must be a multiple of this."""
        return 2 ** len(self.encoder_channels)


ORIGINAL = UNetConfig(encoder_channels=(64, 128, 256), bottleneck_channels=512, convs_per_block=1)


def _block(c_in: int, c_out: int, n_convs: int, batch_norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers.append(nn.Conv2d(c_in if i == 0 else c_out, c_out, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """Encoder-decoder with skip connections; returns the 1x1 head's output (no activation)."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        config = config or UNetConfig()
        self.config = config
        widths = config.encoder_channels
        n = config.convs_per_block
        self.encoders = nn.ModuleList()
        c_in = config.in_channels
        for width in widths:
            self.encoders.append(_block(c_in, width, n, config.batch_norm))
            c_in = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _block(c_in, config.bottleneck_channels, n, config.batch_norm)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.decoders = nn.ModuleList()
        c_in = config.bottleneck_channels
        for width in reversed(widths):
            skip = width if config.skip_connections else 0
            self.decoders.append(_block(c_in + skip, width, n, config.batch_norm))
            c_in = width
        self.head = nn.Conv2d(c_in, config.out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, in, S, S)` -> `(B, out, S, S)`, S a multiple of `config.downsampling`."""
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for decoder, skip in zip(self.decoders, reversed(skips), strict=True):
            x = self.up(x)
            x = decoder(torch.cat([x, skip], dim=1) if self.config.skip_connections else x)
        return self.head(x)


class UNetAutoencoder(UNet):
    """`(B, 3, S, S)` in [-1, 1] -> reconstruction in [-1, 1] (Tanh)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(super().forward(x))


def segmenter_config(widths: tuple[int, ...], batch_norm: bool = True) -> UNetConfig:
    """The segmentation U-Net: image + reconstruction in (6 channels), one logit out, bottleneck 2x the
    last width."""
    widths = tuple(int(w) for w in widths)
    if not widths:
        raise ValueError("the segmenter needs at least one width")
    return UNetConfig(widths, 2 * widths[-1], 1, in_channels=6, batch_norm=batch_norm, out_channels=1)


class ReconstructAndSegment(nn.Module):
    """DRAEM's two networks: `forward(x)` -> anomaly probability `(B, 1, S, S)` in [0, 1]."""

    def __init__(self, reconstructor: UNetConfig, segmenter: UNetConfig) -> None:
        super().__init__()
        self.reconstructor = UNetAutoencoder(reconstructor)
        self.segmenter = UNet(segmenter)

    def logits(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        return self.segmenter(torch.cat([x, x_hat], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x, self.reconstructor(x)))


class Ensemble(nn.Module):
    """Networks of one architecture trained apart (`training.members`): `forward(x)` is the mean of their
    outputs (defect probabilities, or reconstructions)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    @property
    def reconstructor(self) -> nn.Module:
        """The members' reconstructions averaged: an ensemble of their reconstructing autoencoders (for
        DRAEM pairs), or this ensemble itself (for autoencoders)."""
        if isinstance(self.members[0], ReconstructAndSegment):
            return Ensemble([member.reconstructor for member in self.members])
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)
