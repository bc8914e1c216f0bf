"""PatchCore as a Detector: fit = memory bank of good patches (no training loop), map = distance to it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Self

import numpy as np
import torch

from anomaly_spotter.anomaly_map import gaussian_smooth
from anomaly_spotter.config import TrainParams
from anomaly_spotter.data.images import to_tensor_normalized
from anomaly_spotter.errors import ConfigError
from anomaly_spotter.models.backbone import load_pretrained_backbone
from anomaly_spotter.models.base import Detector
from anomaly_spotter.models.patchcore import (
    PatchCore,
    PatchCoreConfig,
    coreset_size,
    k_center_greedy,
    random_projection,
)


class PatchCoreDetector(Detector):
    """PatchCore on an ImageNet-pretrained EfficientNet-Lite; higher = more anomalous.

    Maps are the Euclidean distance of each patch embedding to its nearest memory-bank patch,
    bilinearly upsampled to the image size and Gaussian-smoothed (`config.sigma`, scipy reflect border,
    as `anomaly_map.gaussian_smooth`). Fitted state: `model_` (the `PatchCore` module, bank included)
    and `n_train_patches_`.
    """

    kind = "patchcore"

    def __init__(self, config: PatchCoreConfig | None = None) -> None:
        self.config = config or PatchCoreConfig()

    @classmethod
    def from_options(cls, options: dict[str, Any], train: TrainParams | None = None, seed: int = 0) -> Self:
        """Build from the `model.patchcore` section of params.yaml; `seed` is used unless it sets one.

        `train` (the autoencoder's optimiser settings) is accepted for a uniform interface and unused.
        """
        options = {"seed": seed, **options}
        try:
            config = PatchCoreConfig(**options)
        except TypeError as err:
            fields = [f.name for f in dataclasses.fields(PatchCoreConfig)]
            raise ConfigError(f"model.patchcore: {err}; valid keys: {fields}") from err
        return cls(config)

    def _batches(self, images: np.ndarray) -> Iterator[torch.Tensor]:
        """Normalised float32 tensors `(B, 3, H, W)`, `config.batch_size` images at a time."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
        step = self.config.batch_size
        for start in range(0, len(images), step):
            yield torch.from_numpy(to_tensor_normalized(images[start : start + step]))

    def fit(self, train_images: np.ndarray, val_images: np.ndarray | None = None) -> Self:
        """Build the memory bank from good images `(N, H, W, 3)` uint8; `val_images` is not used.

        Extracts all patch embeddings `(N*h*w, D)` and keeps ceil(coreset_ratio * N*h*w) of them, chosen
        by greedy k-center on a seeded random projection to `projection_dim` dimensions.
        """
        model = PatchCore(self.config, load_pretrained_backbone(self.config.backbone))
        with torch.inference_mode():
            patches = torch.cat([model.flatten(model.embed(x)) for x in self._batches(train_images)])
            n_patches = len(patches)
            k = coreset_size(n_patches, self.config.coreset_ratio)
            if k < n_patches:
                feats = patches
                if 0 < self.config.projection_dim < patches.shape[1]:
                    proj = random_projection(patches.shape[1], self.config.projection_dim, self.config.seed)
                    feats = patches @ proj
                patches = patches[k_center_greedy(feats, k, self.config.seed)]
                del feats
        model.set_memory_bank(patches.clone())
        self.model_ = model.eval()
        self.n_train_patches_ = n_patches
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError("PatchCoreDetector is not fitted; call fit() or rebuild one with from_state()")

    def anomaly_maps(self, images: np.ndarray) -> np.ndarray:
        """Raw maps `(N, H, W)` float32 at the images' resolution: Gaussian(sigma) of NN patch distances."""
        self._check_fitted()
        with torch.inference_mode():
            maps = [self.model_(x).numpy() for x in self._batches(images)]
        return gaussian_smooth(np.concatenate(maps), self.config.sigma)

    def score_samples(self, images: np.ndarray) -> np.ndarray:
        """The paper's reweighted image scores `(N,)` (see `PatchCore.reweighted_scores`); higher = worse.

        The pipeline's default image score is the max of `anomaly_maps`; this is the paper's alternative.
        """
        self._check_fitted()
        with torch.inference_mode():
            scores = [
                self.model_.reweighted_scores(*self.model_.patch_scores(x)) for x in self._batches(images)
            ]
        return torch.cat(scores).numpy()

    def module(self) -> torch.nn.Module:
        self._check_fitted()
        return self.model_

    def state(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "kind": self.kind,
            "config": dataclasses.asdict(self.config),
            "state_dict": self.model_.state_dict(),
            "n_train_patches": self.n_train_patches_,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild a fitted detector from `state()` (backbone weights included: no wheel needed)."""
        det = cls(PatchCoreConfig(**state["config"]))
        model = PatchCore(det.config)
        model.load_state_dict(state["state_dict"], strict=True)
        det.model_ = model.eval()
        det.n_train_patches_ = int(state.get("n_train_patches", 0))
        return det
