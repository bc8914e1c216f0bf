"""PatchCore as a Detector: fit = memory bank of good patches (no training loop), map = distance to it."""

from __future__ import annotations

import dataclasses
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
    """PatchCore on an ImageNet-pretrained EfficientNet-Lite; maps = Gaussian(sigma) of NN patch distances."""

    kind = "patchcore"

    def __init__(self, config: PatchCoreConfig | None = None) -> None:
        self.config = config or PatchCoreConfig()

    @classmethod
    def from_options(cls, options: dict[str, Any], train: TrainParams | None = None, seed: int = 0) -> Self:
        """Build from the `model.patchcore` section of params.yaml; `seed` applies unless the section sets one."""
        options = {"seed": seed, **options}
        try:
            config = PatchCoreConfig(**options)
        except TypeError as err:
            fields = [f.name for f in dataclasses.fields(PatchCoreConfig)]
            raise ConfigError(f"model.patchcore: {err}; valid keys: {fields}") from err
        return cls(config)

    def _batches(self, images: np.ndarray):  # noqa: ANN202
        """Normalised float32 tensors `(B, 3, H, W)`, `batch_size` images at a time."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
        step = self.config.batch_size
        for start in range(0, len(images), step):
            yield torch.from_numpy(to_tensor_normalized(images[start : start + step]))

    def fit(self, train_images: np.ndarray, val_images: np.ndarray | None = None) -> Self:
        """Build the memory bank from good images `(N, H, W, 3)` uint8; `val_images` is not needed.

        All patch embeddings `(N*h*w, D)` are extracted, then ceil(coreset_ratio * N*h*w) of them are kept
        by greedy k-center on a seeded random projection to `projection_dim`.
        """
        model = PatchCore(self.config, load_pretrained_backbone(self.config.backbone))
        with torch.inference_mode():
            patches = torch.cat([model.flatten(model.embed(x)) for x in self._batches(train_images)])
            k = coreset_size(len(patches), self.config.coreset_ratio)
            if k < len(patches):
                feats = patches
                if 0 < self.config.projection_dim < patches.shape[1]:
                    proj = random_projection(patches.shape[1], self.config.projection_dim, self.config.seed)
                    feats = patches @ proj
                patches = patches[k_center_greedy(feats, k, self.config.seed)]
        model.set_memory_bank(patches.clone())
        self.model_ = model.eval()
        self.n_train_patches_ = int(len(feats)) if k < len(feats) else k
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError("PatchCoreDetector is not fitted; call fit() or load a fitted one with from_state()")

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unsmoothed maps `(N, H, W)` and reweighted image scores `(N,)`."""
        self._check_fitted()
        maps, scores = [], []
        with torch.inference_mode():
            for x in self._batches(images):
                dist, idx, emb = self.model_.patch_scores(x)
                maps.append(upsample_np(self.model_, dist, x.shape[-2:]))
                scores.append(self.model_.reweighted_scores(dist, idx, emb).numpy())
        return np.concatenate(maps), np.concatenate(scores)

    def anomaly_maps(self, images: np.ndarray) -> np.ndarray:
        """Raw maps `(N, H, W)` float32 at the images' resolution: Gaussian(sigma) of NN patch distances."""
        self._check_fitted()
        maps = []
        with torch.inference_mode():
            for x in self._batches(images):
                maps.append(self.model_(x).numpy())
        return gaussian_smooth(np.concatenate(maps), self.config.sigma)

    def score_samples(self, images: np.ndarray) -> np.ndarray:
        """The paper's reweighted image scores `(N,)` (see `PatchCore.reweighted_scores`); higher = worse."""
        return self._run(images)[1]

    def module(self) -> torch.nn.Module:
        self._check_fitted()
        return self.model_

    def state(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "kind": self.kind,
            "config": dataclasses.asdict(self.config),
            "state_dict": self.model_.state_dict(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        det = cls(PatchCoreConfig(**state["config"]))
        model = PatchCore(det.config)
        model.load_state_dict(state["state_dict"], strict=True)
        det.model_ = model.eval()
        return det


def upsample_np(model: PatchCore, dist: torch.Tensor, size: torch.Size) -> np.ndarray:  # pragma: no cover
    from anomaly_spotter.models.patchcore import upsample

    return upsample(dist, size).numpy()
