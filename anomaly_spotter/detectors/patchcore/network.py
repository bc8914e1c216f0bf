"""PatchCore (Roth et al., 2022, "Towards Total Recall in Industrial Anomaly Detection") on EfficientNet-Lite,
as an ensemble of memory banks over different backbone stage sets.

Pipeline, with `x` normalised images `(N, 3, H, W)`:
  resize to `input_size` -> one backbone pass to the deepest stage any member uses (stage 2 is stride 4,
  3 stride 8, 4-5 stride 16) -> 3x3 average pooling, stride 1 ("locally aware patch features")
  -> every map resampled to the grid at `feature_stride` (finer ones area-averaged, coarser ones
     bilinearly upsampled) -> per member: its stages' maps concatenated -> optional adaptive average
     pooling over channels -> patch embeddings `(N, D_k, h, w)`.
Fitting keeps, per member, a memory bank `(M_k, D_k)` of good patches, subsampled by greedy k-center
coreset on randomly projected embeddings. A test patch's member score is the Euclidean distance to its
nearest bank patch; each member's score grid is bilinearly upsampled to `(H, W)`, standardised with
the location and scale the detector measured on validation good images, and the members are averaged
(smoothing is the detector's job).

The position-aware part (`position_radius`, on by default): a part missing, shifted or turned, or a lead
cut short, leaves patches that each look normal *somewhere* on a good part, so a bank that forgets where a
patch came from cannot see it. Each test patch (stage set `position_stages`, stride 8) is also compared
with the patches of up to `position_max_images` good training images (all of them, at full density) that
lie within `position_radius` cells of its own place. Its map and the ensemble's are each standardised by
the validation good images' maxima (after smoothing), and the anomaly map is their pixelwise maximum: on
a texture or a part that turns freely, where no place is special, the position map is as noisy on good
images as on defective ones and standardising it keeps it below the ensemble's; on a part in a fixture it
stands out where something is not where it belongs.

Why an ensemble: stage sets see different things. Stage 3 (stride 8) finds small defects; adding stage 2
sharpens textures; adding stage 5 (stride 16, a wider receptive field) sees a part that is missing,
misplaced or of the wrong colour, which patch-local features at stride 8 miss. No single stage set is
best on every category (benchmarks/loco.md), and standardising each member by its own good-image scores
keeps one member from dominating by its units. The memory banks and the standardisation are registered
buffers, so the fitted model travels in `state_dict()`; loading a state dict resizes the banks. Nothing
here reads or writes files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_spotter.core.errors import ConfigError
from anomaly_spotter.detectors.backbone import EfficientNetLite, EfficientNetLiteConfig

BANK_KEY = "memory_bank"
BORDER_KEY = "border_baseline"
POSITION_BANK_KEY = "position_bank_t"  # (P, D, M): per grid cell, the M good images' embeddings there
# a squared distance no real one reaches: what a comparison with a cell outside the grid gets
FAR = 1e30
# query rows per grid cell in one matrix product of `position_distances` (measured on 2 cores, x86_64)
POSITION_ROWS = 16
# training-image copies per `augment` option: (quarter turns, mirror left-right) of each copy
AUGMENTS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flip": ((0, False), (0, True), (2, True)),  # (2, True) = mirrored up-down
    "rot90": ((0, False), (1, False), (2, False), (3, False)),
    "dihedral": tuple((k, m) for m in (False, True) for k in range(4)),
}
# bound on the query x bank distance block in nearest-neighbour search: a block that stays in the CPU's
# cache makes the search about twice as fast as 64 MB blocks (2 cores, x86_64)
CHUNK_BYTES = 4 * 2**20


@dataclass(frozen=True)
class PatchCoreConfig:
    """Hyper-parameters of PatchCore (defaults chosen by leave-one-category-out, see docs/detectors.md).

    members: the ensemble: one memory bank per stage set (backbone stages 1..7 whose outputs are
        concatenated; 2 is stride 4, 3 stride 8, 4-5 stride 16, 6 stride 32). All members share one
        backbone pass; each member's map is standardised by its validation good images' scores before
        the maps are averaged. `[[3]]` is plain single-bank PatchCore, the fastest.
    augment: copies of the training images added to the memory banks, for parts whose orientation
        varies: `none`, `flip` (mirrored left-right and up-down), `rot90` (turned by 90, 180, 270
        degrees) or `dihedral` (all 8 turns and mirrors). Fitting takes 3, 4 or 8 times longer.
    input_size: images are resized (bilinear, antialiased) to this square size before the backbone.
    coreset_ratio: fraction of all training patches kept in each memory bank (k-center greedy).
    pool_ratio: fraction of each image's patches pre-selected (k-center greedy, image by image) into the
        pool the bank is selected from; 1 selects from all patches (exact, quadratic in their number).
    max_bank_size: most patches kept in one member's bank (0 = no cap). With the cap, fitting costs time
        linear in the number of training images (the final greedy selection is pool x bank) and scoring
        cost stops growing; past it (1 % of 1,600 patches: 219 images at 320 px input) a larger training
        set covers normality more evenly, no longer more densely.
    max_pool_size: most pre-selected patches held per member while streaming (0 = no cap): each image
        contributes min(pool_ratio of its patches, max_pool_size / training images), so memory is bounded.
    projection_dim: random-projection size used only to select the coreset (0 = no projection).
    sigma: Gaussian smoothing of the maps, in pixels of the output map.
    border_cells: width, in patch-grid cells, of the frame along the image border where each member's
        excess distance on validation good images (over the interior's median) is subtracted: patches at
        the border see the backbone's padding, so on textures they score high on every image (0 = off).
    patch_kernel: neighbourhood of the local average pooling of each feature map.
    feature_stride: finest stride of a patch grid w.r.t. the resized input (8: a 40 x 40 grid at 320 px);
        a member's grid has the stride of its deepest stage if that is coarser ([3, 5]: 16, 20 x 20),
        which costs it little accuracy and 16 times less nearest-neighbour search.
    embed_dim: channels of each member's patch embedding after adaptive average pooling over channels
        (0 = keep the concatenated channels as they are).
    position_radius: tolerance, in cells of `feature_stride`, of the position-aware comparison (see the
        module doc): each patch is compared with good patches at most this many cells from its place
        (0: the same cell only; null: no position-aware part, the ensemble alone, as before).
    position_stages: the backbone stage set of the position-aware comparison's patch embeddings.
    position_max_images: good training images kept whole for it (the most spread out by greedy k-center
        on their 2 x 2 pooled embeddings when there are more); its memory is this times the patch grid
        times the embedding's channels (200 x 1,600 x 40 floats: 51 MB at the defaults).
    batch_size: images per backbone forward pass.
    seed: seeds the random projection and the coreset's first centre.
    """

    backbone: str = "efficientnet_lite0"
    members: tuple[tuple[int, ...], ...] = ((3,), (2, 3), (3, 5))
    augment: str = "none"
    input_size: int = 320
    coreset_ratio: float = 0.01
    pool_ratio: float = 0.1
    max_bank_size: int = 3500
    max_pool_size: int = 200_000
    projection_dim: int = 128
    sigma: float = 6.0
    border_cells: int = 3
    patch_kernel: int = 3
    feature_stride: int = 8
    embed_dim: int = 0
    position_radius: int | None = 1
    position_stages: tuple[int, ...] = (3,)
    position_max_images: int = 200
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.members, (list, tuple)) and self.members and isinstance(self.members[0], int):
            raise ConfigError(
                f"patchcore.members={list(self.members)} is one stage set; write a list of stage sets, "
                f"e.g. [{list(self.members)}]"
            )
        object.__setattr__(self, "members", tuple(tuple(int(s) for s in m) for m in self.members))
        if not self.members or not all(self.members):
            raise ConfigError("patchcore.members needs at least one non-empty stage set, e.g. [[3]]")
        if len(set(self.members)) != len(self.members):
            raise ConfigError(f"patchcore.members has a stage set twice: {[list(m) for m in self.members]}")
        if self.augment not in AUGMENTS:
            raise ConfigError(f"patchcore.augment={self.augment!r}; use one of {', '.join(AUGMENTS)}")
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ConfigError(f"patchcore.coreset_ratio={self.coreset_ratio} must be in (0, 1]")
        if not self.coreset_ratio <= self.pool_ratio <= 1.0:
            raise ConfigError(
                f"patchcore.pool_ratio={self.pool_ratio} must be in [coreset_ratio={self.coreset_ratio}, 1]"
            )
        if self.input_size < 32:
            raise ConfigError(f"patchcore.input_size={self.input_size} is too small; use at least 32")
        if self.patch_kernel < 1 or self.patch_kernel % 2 == 0:
            raise ConfigError(f"patchcore.patch_kernel={self.patch_kernel} must be odd and >= 1, e.g. 3")
        if self.max_pool_size and self.max_bank_size and self.max_pool_size < self.max_bank_size:
            raise ConfigError(
                f"patchcore.max_pool_size={self.max_pool_size} must be >= max_bank_size={self.max_bank_size} "
                "(the bank is selected from the pool), or 0 for no cap"
            )
        for name in ("projection_dim", "embed_dim", "border_cells", "max_bank_size", "max_pool_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"patchcore.{name} must be >= 0")
        if self.sigma < 0:
            raise ConfigError(f"patchcore.sigma={self.sigma} must be >= 0")
        if self.feature_stride < 1:
            raise ConfigError(f"patchcore.feature_stride={self.feature_stride} must be >= 1, e.g. 8")
        if self.batch_size < 1:
            raise ConfigError(f"patchcore.batch_size={self.batch_size} must be >= 1")
        object.__setattr__(self, "position_stages", tuple(int(s) for s in self.position_stages))
        if self.position_radius is not None:
            if self.position_radius < 0:
                raise ConfigError(
                    f"patchcore.position_radius={self.position_radius} must be >= 0, or null for no "
                    "position-aware part"
                )
            if not self.position_stages:
                raise ConfigError("patchcore.position_stages needs at least one stage, e.g. [3]")
            if self.position_max_images < 1:
                raise ConfigError(f"patchcore.position_max_images={self.position_max_images} must be >= 1")

    @classmethod
    def from_saved(cls, config: dict[str, Any]) -> PatchCoreConfig:
        """A config saved by an earlier version: one `stages` set and `num_neighbours` -> one member."""
        config = dict(config)
        if "stages" in config:
            config["members"] = [config.pop("stages")]
        config.pop("num_neighbours", None)
        config.setdefault("position_radius", None)  # saved before the position-aware part existed
        return cls(**config)


def random_projection(dim: int, out_dim: int, seed: int) -> torch.Tensor:
    """Seeded Gaussian projection `(dim, out_dim)`, scaled by 1/sqrt(out_dim) (Johnson-Lindenstrauss)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(dim, out_dim, generator=gen) / out_dim**0.5


def k_center_greedy(
    features: torch.Tensor, k: int, seed: int, radii: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Greedy k-center (farthest-point) selection: `(P, D)` -> indices `(k,)` int64, deterministic per seed.

    Starts from a seeded random point; each step adds the point farthest from everything chosen so far.
    Cost per step is one matrix-vector product over all points. A batch `(B, P, D)` selects in each of
    the B sets at once -> `(B, k)`. With `radii`, also the coverage radius after each step, `(k,)` or
    `(B, k)`: the largest distance from any point to its nearest chosen one (non-increasing; where it
    flattens, more centres add little).
    """
    batched = features.ndim == 3
    feats = (features if batched else features[None]).float().contiguous()
    b, n, _ = feats.shape
    if not 0 < k <= n:
        raise ValueError(f"coreset size {k} must be in 1..{n}")
    sq = (feats * feats).sum(2)  # (B, P)
    min_d = torch.full((b, n), float("inf"))
    chosen = torch.empty(b, k, dtype=torch.long)
    rows = torch.arange(b)
    radius = torch.empty(b, k)
    idx = torch.randint(n, (b,), generator=torch.Generator().manual_seed(seed))
    for i in range(k):
        chosen[:, i] = idx
        centre = feats[rows, idx]  # (B, D)
        d = torch.baddbmm(sq[:, :, None], feats, centre[:, :, None], alpha=-2.0)[:, :, 0]  # |x|^2 - 2 x.c
        d.add_(sq[rows, idx][:, None])
        torch.minimum(min_d, d, out=min_d)
        radius[:, i], idx = torch.max(min_d, dim=1)
    if not radii:
        return chosen if batched else chosen[0]
    radius = radius.clamp_(min=0).sqrt_()
    return (chosen, radius) if batched else (chosen[0], radius[0])


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
        d2 = torch.addmm(bank_sq, q, bank.T, alpha=-2.0)  # |b|^2 - 2 q.b; + |q|^2 after the min
        if k == 1:
            val, idx = d2.min(1, keepdim=True)
        else:
            val, idx = d2.topk(k, dim=1, largest=False)
        val.add_((q * q).sum(1, keepdim=True))  # a per-row constant: it does not change the order
        dists.append(val.clamp_min_(0.0).sqrt_())
        idxs.append(idx)
    return torch.cat(dists), torch.cat(idxs)


def position_distances(
    queries: torch.Tensor, bank_t: torch.Tensor, bank_sq: torch.Tensor, radius: int
) -> torch.Tensor:
    """Position-aware nearest distances: patch embeddings `(N, D, h, w)` -> `(N, h, w)`, each patch's
    Euclidean distance to the nearest of the good images' patches `bank_t` `(h*w, D, M)` (squared norms
    `bank_sq` `(h*w, M)`) within `radius` cells of its own place (cells outside the grid do not count).

    For each offset d the queries are shifted so that the patch at u - d meets the bank's cell u, which
    makes one batched matrix product over cells; its result is shifted back to u - d. Offsets share a
    product while it has at most POSITION_ROWS query rows per cell: a single image (the exported graph)
    reads the bank once for all offsets, a batch once per offset with small intermediates.
    """
    n, dim, h, w = queries.shape
    r = radius
    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    per_product = max(1, POSITION_ROWS // n)
    padded = F.pad(queries, (r, r, r, r))
    best = None
    for start in range(0, len(offsets), per_product):
        group = offsets[start : start + per_product]
        # [o][u] = queries[u - d_o]: (O, N, D, h, w) -> (h*w, O*N, D)
        shifted = torch.stack([padded[:, :, r - dy : r - dy + h, r - dx : r - dx + w] for dy, dx in group])
        q = shifted.permute(3, 4, 0, 1, 2).reshape(h * w, len(group) * n, dim)
        d2 = torch.baddbmm(bank_sq[:, None, :], q, bank_t, alpha=-2.0).amin(dim=2) + (q * q).sum(2)
        grids = F.pad(d2.reshape(h, w, len(group), n).permute(2, 3, 0, 1), (r, r, r, r), value=FAR)
        for o, (dy, dx) in enumerate(group):  # at cell u, grids[o] holds the query at u - d_o
            back = grids[o, :, r + dy : r + dy + h, r + dx : r + dx + w]
            best = back if best is None else torch.minimum(best, back)
    return best.clamp_min(0.0).sqrt()


class PatchCore(nn.Module):
    """Backbone + one memory bank per member. `forward`: normalised `(N, 3, H, W)` -> maps `(N, H, W)`.

    A member's raw map is the distance of each patch to its nearest bank patch; the ensemble's map is the
    members' mean after standardising each, `(d_k - loc_k) / scale_k`, with the statistics the detector
    measured on validation good images (identity until it does). With `config.position_radius` set, the
    position-aware map (`position_distances`) is a second part; `parts` returns both, each standardised
    by `part_loc` and `part_scale`, and the detector smooths them and keeps their pixelwise maximum.
    """

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
        self.member_blocks = [[self.backbone.stage_last_block(s) for s in m] for m in self.config.members]
        self.block_indices = sorted({i for blocks in self.member_blocks for i in blocks})
        for k, dim in enumerate(self.embedding_dims):
            self.register_buffer(f"{BANK_KEY}_{k}", torch.empty(0, dim))
        self.register_buffer("norm_loc", torch.zeros(len(self.config.members)))
        self.register_buffer("norm_scale", torch.ones(len(self.config.members)))
        for k in range(len(self.member_blocks)):
            self.register_buffer(f"{BORDER_KEY}_{k}", torch.zeros(self.grid_size(k)))
        self.position_blocks: list[int] = []
        if self.config.position_radius is not None:
            self.position_blocks = [self.backbone.stage_last_block(s) for s in self.config.position_stages]
            self.block_indices = sorted(set(self.block_indices) | set(self.position_blocks))
            h, w = self.position_grid_size()
            self.register_buffer(POSITION_BANK_KEY, torch.empty(h * w, self.position_dim, 0))
            self.register_buffer("position_bank_sq", torch.empty(h * w, 0))
        n_parts = 2 if self.position_blocks else 1
        self.register_buffer("part_loc", torch.zeros(n_parts))
        self.register_buffer("part_scale", torch.ones(n_parts))

    def _stride(self, blocks: list[int]) -> int:
        """Stride of the patch grid of embeddings from `blocks`: the deepest one's, at least
        `feature_stride`."""
        return max(self.config.feature_stride, max(self.backbone.block_strides[i] for i in blocks))

    def position_grid_size(self) -> tuple[int, int]:
        """(h, w) of the position-aware comparison's patch grid."""
        side = math.ceil(self.config.input_size / self._stride(self.position_blocks))
        return side, side

    @property
    def position_dim(self) -> int:
        """Channels of the position-aware comparison's patch embeddings."""
        return self.config.embed_dim or sum(self.backbone.block_channels[i] for i in self.position_blocks)

    def member_stride(self, k: int) -> int:
        """Stride of member `k`'s patch grid: its deepest stage's, and at least `feature_stride`."""
        return self._stride(self.member_blocks[k])

    def grid_size(self, k: int) -> tuple[int, int]:
        """(h, w) of member `k`'s patch grid: ceil(input_size / member_stride(k)) each."""
        side = math.ceil(self.config.input_size / self.member_stride(k))
        return side, side

    def border_baselines(self) -> list[torch.Tensor]:
        """The members' border corrections `[(h_k, w_k)]`, subtracted from their distance grids."""
        return [getattr(self, f"{BORDER_KEY}_{k}") for k in range(len(self.member_blocks))]

    @property
    def embedding_dims(self) -> list[int]:
        """D_k: channels of one patch embedding of each member."""
        return [
            self.config.embed_dim or sum(self.backbone.block_channels[i] for i in blocks)
            for blocks in self.member_blocks
        ]

    def banks(self) -> list[torch.Tensor]:
        """The members' memory banks `[(M_k, D_k)]`."""
        return [getattr(self, f"{BANK_KEY}_{k}") for k in range(len(self.member_blocks))]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        if prefix + BANK_KEY in state_dict:  # saved by the single-bank version
            state_dict[f"{prefix}{BANK_KEY}_0"] = state_dict.pop(prefix + BANK_KEY)
        for k in range(len(self.member_blocks)):  # the fitted banks' sizes are only known from the state
            bank = state_dict.get(f"{prefix}{BANK_KEY}_{k}")
            if isinstance(bank, torch.Tensor):
                setattr(self, f"{BANK_KEY}_{k}", torch.empty_like(bank))
        for key in (POSITION_BANK_KEY, "position_bank_sq"):
            if self.position_blocks and isinstance(state_dict.get(prefix + key), torch.Tensor):
                setattr(self, key, torch.empty_like(state_dict[prefix + key]))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def set_memory_bank(self, k: int, bank: torch.Tensor) -> None:
        """Replace member `k`'s memory bank with `(M, D_k)` patch embeddings."""
        dim = self.embedding_dims[k]
        if bank.ndim != 2 or bank.shape[1] != dim:
            raise ValueError(f"memory bank {k} must be (M, {dim}), got {tuple(bank.shape)}")
        setattr(self, f"{BANK_KEY}_{k}", bank.detach().float().contiguous())

    def set_border_baseline(self, k: int, grids: torch.Tensor) -> None:
        """Set member `k`'s border correction from its distance grids on good images `(N, h, w)`.

        The mean grid's excess over its interior median, kept on a frame of `border_cells` cells of
        `feature_stride` (fewer, coarser cells on a coarser grid) and zero inside, never negative, is
        what `member_maps` subtracts.
        """
        cells = math.ceil(self.config.border_cells * self.config.feature_stride / self.member_stride(k))
        baseline = torch.zeros(grids.shape[1:])
        if cells > 0 and min(grids.shape[1:]) > 2 * cells:
            mean = grids.mean(0)
            interior = mean[cells:-cells, cells:-cells].median()
            baseline = (mean - interior).clamp_min(0.0)
            baseline[cells:-cells, cells:-cells] = 0.0
        setattr(self, f"{BORDER_KEY}_{k}", baseline.float())

    def set_normalization(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        """Per-member standardisation `(K,)`, `(K,)` applied by `forward`; scales must be > 0."""
        if not bool((scale > 0).all()):
            raise ValueError(f"normalisation scales must be > 0, got {scale.tolist()}")
        self.norm_loc = loc.detach().float().clone()
        self.norm_scale = scale.detach().float().clone()

    def set_position_bank(self, embeddings: torch.Tensor) -> None:
        """The position-aware comparison's good patches: `(M, D, h, w)` embeddings of M good images."""
        m, dim, h, w = embeddings.shape
        if (dim, (h, w)) != (self.position_dim, self.position_grid_size()):
            raise ValueError(
                f"position bank must be (M, {self.position_dim}, *{self.position_grid_size()}), "
                f"got {tuple(embeddings.shape)}"
            )
        bank_t = embeddings.detach().float().permute(2, 3, 1, 0).reshape(h * w, dim, m).contiguous()
        setattr(self, POSITION_BANK_KEY, bank_t)
        self.position_bank_sq = (bank_t * bank_t).sum(1)

    def set_part_normalization(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        """Per-part standardisation `(P,)`, `(P,)` (the ensemble, then the position-aware part) applied by
        `parts`; scales must be > 0."""
        if not bool((scale > 0).all()):
            raise ValueError(f"normalisation scales must be > 0, got {scale.tolist()}")
        self.part_loc = loc.detach().float().clone()
        self.part_scale = scale.detach().float().clone()

    def embed(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Locally aware patch embeddings of each member: normalised `(N, 3, H, W)` -> `[(N, D_k, h_k, w_k)]`.

        (h_k, w_k) = `grid_size(k)`; one backbone pass serves every member.
        """
        return self.embed_all(x)[0]

    def embed_all(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """`embed`'s member embeddings and the position-aware comparison's `(N, D, h, w)` (None without
        one), from one backbone pass."""
        size = self.config.input_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        feats = self.backbone.forward_features(x, self.block_indices)
        ksize = self.config.patch_kernel
        if ksize > 1:
            feats = {
                i: F.avg_pool2d(m, ksize, stride=1, padding=ksize // 2, count_include_pad=False)
                for i, m in feats.items()
            }
        out = []
        sets = [*self.member_blocks, *([self.position_blocks] if self.position_blocks else [])]
        grids = [self.grid_size(k) for k in range(len(self.member_blocks))]
        grids += [self.position_grid_size()] if self.position_blocks else []
        for blocks, grid in zip(sets, grids, strict=True):
            maps = []
            for m in (feats[i] for i in blocks):
                if m.shape[-2] > grid[0]:  # finer than the grid: average down
                    m = F.adaptive_avg_pool2d(m, grid)
                elif m.shape[-2:] != grid:
                    m = F.interpolate(m, size=grid, mode="bilinear", align_corners=False)
                maps.append(m)
            emb = torch.cat(maps, dim=1)
            if self.config.embed_dim and self.config.embed_dim != emb.shape[1]:
                n, c, h, w = emb.shape
                flat = emb.permute(0, 2, 3, 1).reshape(-1, 1, c)
                emb = F.adaptive_avg_pool1d(flat, self.config.embed_dim).reshape(n, h, w, -1)
                emb = emb.permute(0, 3, 1, 2)
            out.append(emb.contiguous())
        if self.position_blocks:
            return out[:-1], out[-1]
        return out, None

    @staticmethod
    def flatten(emb: torch.Tensor) -> torch.Tensor:
        """Patch embeddings `(N, D, h, w)` -> one row per patch `(N*h*w, D)`, image-major, row-major."""
        return emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])

    def grids(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Each member's nearest-bank distance per patch `[(N, h_k, w_k)]` (no border correction) and the
        position-aware distances `(N, h, w)` (None without them), from one backbone pass."""
        embeddings, position = self.embed_all(x)
        return self._nearest_grids(embeddings), None if position is None else self.position_grid(position)

    def member_grids(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each member's nearest-bank distance per patch: `[(N, h_k, w_k)]`, no border correction."""
        return self._nearest_grids(self.embed(x))

    def _nearest_grids(self, embeddings: list[torch.Tensor]) -> list[torch.Tensor]:
        """Members' embeddings `[(N, D_k, h_k, w_k)]` -> their nearest-bank distances `[(N, h_k, w_k)]`."""
        grids = []
        for emb, bank in zip(embeddings, self.banks(), strict=True):
            n, _, h, w = emb.shape
            dist, _ = nearest_neighbours(self.flatten(emb), bank)
            grids.append(dist.reshape(n, h, w))
        return grids

    def position_grid(self, position: torch.Tensor) -> torch.Tensor:
        """`embed_all`'s position-aware embeddings `(N, D, h, w)` -> their distances to the position bank
        within `position_radius` cells, `(N, h, w)`."""
        bank_t = getattr(self, POSITION_BANK_KEY)
        if bank_t.shape[-1] == 0:
            raise RuntimeError("PatchCore position bank is empty; call fit() before scoring")
        return position_distances(position, bank_t, self.position_bank_sq, self.config.position_radius)

    def member_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's border-corrected distances upsampled to the input: `(K, N, H, W)`, not
        standardised."""
        return self.grids_to_maps(self.member_grids(x), x.shape[-2:])

    def grids_to_maps(self, grids: list[torch.Tensor], size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """`member_grids` output `[(N, h_k, w_k)]` -> border-corrected maps upsampled to `size`,
        `(K, N, H, W)`."""
        pairs = zip(grids, self.border_baselines(), strict=True)
        return torch.stack([upsample(grid - baseline, size) for grid, baseline in pairs])

    def raw_parts(
        self, grids: list[torch.Tensor], position: torch.Tensor | None, size: tuple[int, int] | torch.Size
    ) -> torch.Tensor:
        """`grids` output -> the unstandardised parts `(P, N, H, W)`: the ensemble's map (its members'
        standardised mean), then the position-aware distances upsampled (if any)."""
        maps = self.grids_to_maps(grids, size)
        standardised = (maps - self.norm_loc[:, None, None, None]) / self.norm_scale[:, None, None, None]
        ensemble = standardised.mean(0)
        return torch.stack([ensemble] if position is None else [ensemble, upsample(position, size)])

    def parts(self, x: torch.Tensor) -> torch.Tensor:
        """The standardised parts `(P, N, H, W)` at the input's resolution, unsmoothed: the ensemble's map
        and, with `position_radius`, the position-aware one. The anomaly map is their pixelwise maximum
        after smoothing (the detector's job)."""
        raw = self.raw_parts(*self.grids(x), x.shape[-2:])
        return (raw - self.part_loc[:, None, None, None]) / self.part_scale[:, None, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`parts(x)`: `(P, N, H, W)`, P = 1 without the position-aware part."""
        return self.parts(x)


def upsample(scores: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear upsampling of score grids `(N, h, w)` -> `(N, H, W)`."""
    return F.interpolate(scores[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
