"""PatchCore (Roth et al., 2022, "Towards Total Recall in Industrial Anomaly Detection") on EfficientNet-Lite.

Pipeline, with `x` normalised images `(N, 3, H, W)`:
  resize to `input_size` -> backbone stage outputs (stage 3 is stride 8, stages 4-5 stride 16)
  -> 3x3 average pooling, stride 1 ("locally aware patch features")
  -> every map resampled to the grid at `feature_stride` (finer ones area-averaged, coarser ones
     bilinearly upsampled) -> concatenated -> optional adaptive average pooling over channels
  -> patch embeddings `(N, D, h, w)`.
Fitting keeps a memory bank `(M, D)` of good patches, subsampled by greedy k-center coreset on randomly
projected embeddings. A test patch's score is the Euclidean distance to its nearest bank patch; the map
is that score grid bilinearly upsampled to `(H, W)` (smoothing is the detector's job).

Why the defaults (MVTec AD pill, 256 px images, mean of 3 coreset seeds; bottle is ~1.0 either way):
stage 3 alone gives the best pill image AUROC; adding a stride-16 stage lowers it (256 px input: 0.975
for stage 3, 0.966 for 3 + 4, 0.954 for 3 + 5 with one seed) because it blurs small defects. Resizing to
320 gives a finer 40 x 40 grid (stage 3: 0.983; 2 + 3: 0.969). Coresets of 2% and 5% were no better
than 1%, and 1% keeps fitting and nearest-neighbour search fast on 2 cores. sigma 6 trades 0.001 of
image AUROC for +0.003 pixel AUROC over sigma 4.

The memory bank is a registered buffer, so the fitted bank travels in `state_dict()`; loading a state
dict resizes it. Nothing here reads or writes files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_spotter.errors import ConfigError
from anomaly_spotter.models.backbone import EfficientNetLite, EfficientNetLiteConfig

BANK_KEY = "memory_bank"
CHUNK_BYTES = 64 * 2**20  # bound on the query x bank distance block in nearest-neighbour search


@dataclass
class PatchCoreConfig:
    """Hyper-parameters of PatchCore (defaults tuned on MVTec AD bottle/pill at 256 px on 2 CPU cores).

    stages: backbone stages (1..7) whose outputs are concatenated; 2 is stride 4, 3 stride 8, 4-5 stride 16.
    input_size: images are resized (bilinear, antialiased) to this square size before the backbone.
    coreset_ratio: fraction of all training patches kept in the memory bank (k-center greedy).
    num_neighbours: b of the paper's image-score reweighting (`score_samples`); 0 disables it.
    projection_dim: random-projection size used only to select the coreset (0 = no projection).
    sigma: Gaussian smoothing of the maps, in pixels of the output map.
    patch_kernel: neighbourhood of the local average pooling of each feature map.
    feature_stride: stride of the patch grid w.r.t. the resized input (8: a 40 x 40 grid at 320 px).
    embed_dim: channels of the patch embedding after adaptive average pooling over channels
        (0 = keep the concatenated channels as they are).
    batch_size: images per backbone forward pass.
    seed: seeds the random projection and the coreset's first centre.
    """

    backbone: str = "efficientnet_lite0"
    stages: tuple[int, ...] = (3,)
    input_size: int = 320
    coreset_ratio: float = 0.01
    num_neighbours: int = 9
    projection_dim: int = 128
    sigma: float = 6.0
    patch_kernel: int = 3
    feature_stride: int = 8
    embed_dim: int = 0
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        self.stages = tuple(int(s) for s in self.stages)
        if not self.stages:
            raise ConfigError("patchcore.stages is empty; list at least one backbone stage, e.g. [3]")
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ConfigError(f"patchcore.coreset_ratio={self.coreset_ratio} must be in (0, 1]")
        if self.input_size < 32:
            raise ConfigError(f"patchcore.input_size={self.input_size} is too small; use at least 32")
        if self.patch_kernel < 1 or self.patch_kernel % 2 == 0:
            raise ConfigError(f"patchcore.patch_kernel={self.patch_kernel} must be odd and >= 1, e.g. 3")
        for name in ("num_neighbours", "projection_dim", "embed_dim"):
            if getattr(self, name) < 0:
                raise ConfigError(f"patchcore.{name} must be >= 0")
        if self.sigma < 0:
            raise ConfigError(f"patchcore.sigma={self.sigma} must be >= 0")
        if self.feature_stride < 1:
            raise ConfigError(f"patchcore.feature_stride={self.feature_stride} must be >= 1, e.g. 8")
        if self.batch_size < 1:
            raise ConfigError(f"patchcore.batch_size={self.batch_size} must be >= 1")


def random_projection(dim: int, out_dim: int, seed: int) -> torch.Tensor:
    """Seeded Gaussian projection `(dim, out_dim)`, scaled by 1/sqrt(out_dim) (Johnson-Lindenstrauss)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(dim, out_dim, generator=gen) / out_dim**0.5


def k_center_greedy(features: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Greedy k-center (farthest-point) selection: `(P, D)` -> indices `(k,)` int64, deterministic per seed.

    Starts from a seeded random point; each step adds the point farthest from everything chosen so far.
    Cost per step is one matrix-vector product over all points.
    """
    n = features.shape[0]
    if not 0 < k <= n:
        raise ValueError(f"coreset size {k} must be in 1..{n}")
    feats = features.float().contiguous()
    sq = (feats * feats).sum(1)
    min_d = torch.full((n,), float("inf"))
    d = torch.empty(n)
    chosen = torch.empty(k, dtype=torch.long)
    idx = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    for i in range(k):
        chosen[i] = idx
        torch.addmv(sq, feats, feats[idx], alpha=-2.0, out=d)  # |x|^2 - 2 x.c
        d.add_(sq[idx])
        torch.minimum(min_d, d, out=min_d)
        idx = int(torch.argmax(min_d))
    return chosen


def coreset_size(num_patches: int, ratio: float) -> int:
    """Memory-bank size for `num_patches` training patches: ceil(ratio * num_patches), at least 1."""
    return max(1, min(num_patches, math.ceil(round(num_patches * ratio, 6))))


def nearest_neighbours(
    queries: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk_bytes: int = CHUNK_BYTES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean k-NN of each query in the bank, in chunks of queries.

    `(Q, D)` x `(M, D)` -> distances `(Q, k)` ascending and indices `(Q, k)`; memory is bounded by
    `chunk_bytes` for the `(chunk, M)` distance block.
    """
    if bank.shape[0] == 0:
        raise RuntimeError("PatchCore memory bank is empty; call fit() before scoring")
    k = min(k, bank.shape[0])
    bank_sq = (bank * bank).sum(1)
    chunk = max(1, chunk_bytes // (4 * bank.shape[0]))
    dists, idxs = [], []
    for start in range(0, queries.shape[0], chunk):
        q = queries[start : start + chunk]
        d2 = torch.addmm(bank_sq, q, bank.T, alpha=-2.0)  # |b|^2 - 2 q.b, then + |q|^2
        d2.add_((q * q).sum(1, keepdim=True))
        if k == 1:
            val, idx = d2.min(1, keepdim=True)
        else:
            val, idx = d2.topk(k, dim=1, largest=False)
        dists.append(val.clamp_min_(0.0).sqrt_())
        idxs.append(idx)
    return torch.cat(dists), torch.cat(idxs)


class PatchCore(nn.Module):
    """Backbone + memory bank. `forward`: normalised `(N, 3, H, W)` -> unsmoothed anomaly maps `(N, H, W)`."""

    def __init__(
        self, config: PatchCoreConfig | None = None, backbone: EfficientNetLite | None = None
    ) -> None:
        super().__init__()
        self.config = config or PatchCoreConfig()
        self.backbone = backbone or EfficientNetLite(EfficientNetLiteConfig.from_name(self.config.backbone))
        self.backbone.eval()
        if self.backbone.config.name != EfficientNetLiteConfig.from_name(self.config.backbone).name:
            raise ConfigError(
                f"backbone {self.backbone.config.name!r} does not match config {self.config.backbone!r}"
            )
        self.block_indices = [self.backbone.stage_last_block(s) for s in self.config.stages]
        self.register_buffer(BANK_KEY, torch.empty(0, self.embedding_dim))

    @property
    def embedding_dim(self) -> int:
        """D: channels of one patch embedding."""
        return self.config.embed_dim or sum(self.backbone.block_channels[i] for i in self.block_indices)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        bank = state_dict.get(prefix + BANK_KEY)
        if isinstance(bank, torch.Tensor):  # the fitted bank's size is only known from the state dict
            self.memory_bank = torch.empty_like(bank, device=self.memory_bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def set_memory_bank(self, bank: torch.Tensor) -> None:
        """Replace the memory bank with `(M, D)` patch embeddings."""
        if bank.ndim != 2 or bank.shape[1] != self.embedding_dim:
            raise ValueError(f"memory bank must be (M, {self.embedding_dim}), got {tuple(bank.shape)}")
        self.memory_bank = bank.detach().float().contiguous()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Locally aware patch embeddings: normalised `(N, 3, H, W)` -> `(N, D, h, w)`.

        h = w = ceil(input_size / feature_stride).
        """
        size = self.config.input_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        feats = self.backbone.forward_features(x, self.block_indices)
        k = self.config.patch_kernel
        maps = [feats[i] for i in self.block_indices]
        grid = (math.ceil(size / self.config.feature_stride),) * 2
        out = []
        for m in maps:
            if k > 1:
                m = F.avg_pool2d(m, k, stride=1, padding=k // 2, count_include_pad=False)
            if m.shape[-2] > grid[0]:  # finer than the grid: average down
                m = F.adaptive_avg_pool2d(m, grid)
            elif m.shape[-2:] != grid:
                m = F.interpolate(m, size=grid, mode="bilinear", align_corners=False)
            out.append(m)
        emb = torch.cat(out, dim=1)
        if self.config.embed_dim and self.config.embed_dim != emb.shape[1]:
            n, c, h, w = emb.shape
            flat = emb.permute(0, 2, 3, 1).reshape(-1, 1, c)
            emb = F.adaptive_avg_pool1d(flat, self.config.embed_dim).reshape(n, h, w, -1).permute(0, 3, 1, 2)
        return emb.contiguous()

    @staticmethod
    def flatten(emb: torch.Tensor) -> torch.Tensor:
        """Patch embeddings `(N, D, h, w)` -> one row per patch `(N*h*w, D)`, image-major, row-major."""
        return emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])

    def patch_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Nearest-bank distances `(N, h, w)`, their bank indices `(N, h, w)`, embeddings `(N, D, h, w)`."""
        emb = self.embed(x)
        n, _, h, w = emb.shape
        dist, idx = nearest_neighbours(self.flatten(emb), self.memory_bank)
        return dist.reshape(n, h, w), idx.reshape(n, h, w), emb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Unsmoothed anomaly maps `(N, H, W)` at the input's resolution."""
        scores, _, _ = self.patch_scores(x)
        return upsample(scores, x.shape[-2:])

    def reweighted_scores(self, scores: torch.Tensor, idx: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The paper's image score (eq. 7), from `patch_scores` outputs -> `(N,)`.

        For each image's most anomalous patch m_test with nearest bank patch m*, s* = |m_test - m*| is
        scaled by w = 1 - softmax_j(|m_test - m_j|)[m*] over m* and its b-1 nearest bank neighbours m_j
        (b = num_neighbours): s* counts less when m* lives in a dense region of the bank.
        """
        n = scores.shape[0]
        flat_scores = scores.reshape(n, -1)
        s_star, pos = flat_scores.max(1)
        b = min(self.config.num_neighbours, self.memory_bank.shape[0])
        if b <= 1:
            return s_star
        m_test = self.flatten(emb).reshape(n, -1, emb.shape[1])[torch.arange(n), pos]  # (N, D)
        m_star_idx = idx.reshape(n, -1)[torch.arange(n), pos]  # (N,)
        _, support = nearest_neighbours(self.memory_bank[m_star_idx], self.memory_bank, k=b)  # (N, b)
        support[:, 0] = m_star_idx  # m* itself first, even when duplicates tie with it
        dists = torch.linalg.vector_norm(self.memory_bank[support] - m_test[:, None, :], dim=2)  # (N, b)
        weights = 1.0 - torch.softmax(dists, dim=1)[:, 0]
        return weights * s_star


def upsample(scores: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear upsampling of score grids `(N, h, w)` -> `(N, H, W)`."""
    return F.interpolate(scores[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
