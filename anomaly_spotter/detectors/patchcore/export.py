"""PatchCore's ONNX graph (`EdgePatchCore`): the raw map of one normalised image in one ONNX Runtime call.

See deploy/export.py for what is done with it (folding, int8, the pyfunc folder) and why the
upsampling, smoothing and standardisation fold into two small matrix products per member."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from anomaly_spotter.core.errors import ExportError
from anomaly_spotter.detectors.base import GRAPH_INPUT, GRAPH_OPSET, GRAPH_OUTPUT
from anomaly_spotter.detectors.patchcore.network import PatchCore

# the int8 search's tensors per member (`Int8Search`), registered as buffers `<name>_<k>` of EdgePatchCore
INT8_BUFFERS = ("mean", "low", "high", "q_scale", "q_zero", "extra", "bank_int8", "b_zero", "dot_scale")


def smoothing_matrix(size: int, sigma: float) -> np.ndarray:
    """The 1-D Gaussian of `anomaly_map.gaussian_smooth` (scipy, reflect border, truncate 4) as a matrix
    `(size, size)` float64: smoothing one axis of a map is `G @ map`."""
    eye = np.eye(size)
    if sigma <= 0:
        return eye
    return ndimage.gaussian_filter1d(eye, sigma, axis=0, mode="reflect")


def resize_matrix(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    """torch's bilinear resize (align_corners=False) along one axis as a matrix `(n_out, n_in)` float64:
    the images of the unit vectors, so `R @ x` resizes `x` exactly as `F.interpolate` does."""
    eye = torch.eye(n_in, dtype=torch.float64)[:, None, None, :]  # (n_in, 1, 1, n_in): a unit vector each
    # along the width: torch's antialiased kernel gives wrong values along a height with width 1
    out = F.interpolate(eye, size=(1, n_out), mode="bilinear", align_corners=False, antialias=antialias)
    return out[:, 0, 0, :].T.numpy()


# quantised queries use 7 bits (0..127): an int8 weight times a uint8 activation, summed in pairs, then fits
# in int16, which x86 CPUs without VNNI need (ONNX Runtime's `reduce_range`); with 8 bits they saturate
Q_LEVELS = 127


class _NearestInt8(torch.autograd.Function):
    """Per query, the largest integer score over the bank: `max_b (u - z) . B[:, b]` for the quantised
    queries `u` (QuantizeLinear) with constant columns `extra` appended; in ONNX, QuantizeLinear ->
    Concat -> MatMulInteger -> ReduceMax. `forward` computes the same numbers in torch (exact in float64)
    for tracing and tests."""

    @staticmethod
    def forward(ctx: Any, q, q_scale, q_zero, extra, bank_int8, b_zero):  # noqa: ANN001, ANN205
        zero = q_zero.double()
        u = torch.clamp(torch.round(q / q_scale).double() + zero, 0, 255)
        a = torch.cat([u, extra.double().expand(q.shape[0], -1, -1)], dim=2) - zero
        return torch.matmul(a, bank_int8.double()).max(dim=2).values.to(torch.int32)

    @staticmethod
    def symbolic(g, q, q_scale, q_zero, extra, bank_int8, b_zero):  # noqa: ANN001, ANN205
        u = g.op("QuantizeLinear", q, q_scale, q_zero)
        dots = g.op("MatMulInteger", g.op("Concat", u, extra, axis_i=2), bank_int8, q_zero, b_zero)
        return g.op("ReduceMax", dots, axes_i=[2], keepdims_i=0)


@dataclass(frozen=True)
class Int8Search:
    """The nearest-neighbour search of one member in int8, for `--int8` (`EdgePatchCore(int8_search=True)`).

    Squared distance `|q - b|^2 = |q|^2 - 2 q.b + |b|^2` after subtracting the bank's mean from queries and
    bank (it does not change distances and shrinks the numbers int8 must hold). The centred bank is int8
    with one scale `s_b`; queries are clipped to the centred bank's range and quantised to 7 bits (scale
    `s_q`, zero point `z`). The `|b|^2` term, in units of `2 s_q s_b`, is an integer per bank patch folded
    into the same integer matrix product: constant query columns (`extra`: a coarse one with
    `u - z = c`, |c| >= 64, repeated, and a fine one with `u - z = ±1`) against bank rows holding its
    quotient and remainder by `c`. So one MatMulInteger and a ReduceMax give `max_b (dot_b - |b|^2 / (2
    s_q s_b))`, and `|q|^2 - 2 s_q s_b` times it is the nearest squared distance up to the rounding of
    q and b (measured: docs/serving.md, Edge export).
    """

    mean: torch.Tensor  # (D,) float32, the bank's mean
    low: torch.Tensor  # () float32: centred queries are clipped to [low, high], the 7-bit grid's ends
    high: torch.Tensor
    q_scale: torch.Tensor  # () float32
    q_zero: torch.Tensor  # () uint8
    extra: torch.Tensor  # (1, P, E) uint8: the constant columns after the P quantised queries' D
    bank_int8: torch.Tensor  # (D + E, M) int8: centred bank transposed, then the folded -|b|^2 rows
    b_zero: torch.Tensor  # () int8, 0: the bank is symmetric
    dot_scale: torch.Tensor  # () float32, 2 s_q s_b

    @classmethod
    def from_bank(cls, bank: torch.Tensor, n_queries: int) -> Int8Search:
        """The quantised search of `bank` `(M, D)` for `n_queries` query patches per image."""
        mean = bank.double().mean(0)
        centred = bank.double() - mean
        low, high = float(centred.min()), float(centred.max())
        q_scale = max(high - low, 1e-12) / Q_LEVELS
        zero = min(max(round(-low / q_scale), 0), Q_LEVELS)
        b_scale = max(float(centred.abs().max()), 1e-12) / 127
        bank_int = torch.round(centred / b_scale)
        target = -torch.round((centred * centred).sum(1) / (2 * q_scale * b_scale))  # added to each dot
        coarse = Q_LEVELS if zero <= Q_LEVELS // 2 else 0  # column value: u - z = coarse - zero = c
        fine = zero + 1 if zero < Q_LEVELS else zero - 1  # u - z = ±1
        c, f = coarse - zero, fine - zero
        quotient = torch.round(target / c)
        remainder = (target - c * quotient) * f  # |remainder| <= |c| / 2 <= 63.5
        rows = max(1, math.ceil(float(quotient.abs().max()) / 127))
        # sum over j of floor((n + j) / rows) is n (Hermite), each part within [-127, 127]
        parts = [torch.floor((quotient + j) / rows) for j in range(rows)]
        bank_ext = torch.cat([bank_int.T, torch.stack(parts), remainder[None]])
        if bank_ext.abs().max() > 127:  # pragma: no cover - excluded by construction
            raise ExportError("int8 nearest-neighbour search: a bank value does not fit in int8")
        extra = torch.tensor([coarse] * rows + [fine], dtype=torch.uint8)
        return cls(
            mean=mean.float(),
            low=torch.tensor(-zero * q_scale, dtype=torch.float32),
            high=torch.tensor((Q_LEVELS - zero) * q_scale, dtype=torch.float32),
            q_scale=torch.tensor(q_scale, dtype=torch.float32),
            q_zero=torch.tensor(zero, dtype=torch.uint8),
            extra=extra.expand(1, n_queries, -1).contiguous(),
            bank_int8=bank_ext.to(torch.int8),
            b_zero=torch.tensor(0, dtype=torch.int8),
            dot_scale=torch.tensor(2 * q_scale * b_scale, dtype=torch.float32),
        )

    def buffers(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in INT8_BUFFERS}

    @staticmethod
    def squared_distances(
        q: torch.Tensor,
        mean: torch.Tensor,
        low: torch.Tensor,
        high: torch.Tensor,
        q_scale: torch.Tensor,
        q_zero: torch.Tensor,
        extra: torch.Tensor,
        bank_int8: torch.Tensor,
        b_zero: torch.Tensor,
        dot_scale: torch.Tensor,
    ) -> torch.Tensor:
        """Nearest squared distances `(N, P)` of queries `(N, P, D)` (arguments: `buffers()` in order)."""
        centred = q - mean
        clipped = torch.maximum(torch.minimum(centred, high), low)  # Min/Max: not a Clip int8 would quantise
        best = _NearestInt8.apply(clipped, q_scale, q_zero, extra, bank_int8, b_zero)
        return (centred * centred).sum(2) - dot_scale * best.float()


class EdgePatchCore(nn.Module):
    """Fitted PatchCore as one graph: normalised `(N, 3, S, S)` -> smoothed raw maps `(N, S, S)`.

    Equal to `PatchCoreDetector.anomaly_maps` on the same images up to float32 rounding (see module doc).
    Each part's standardisation folds into its matrices and constant; the position-aware part (if any) is
    searched in float32 (`int8_search` is the ensemble's nearest-neighbour search) and the map is the
    two parts' pixelwise maximum.
    """

    def __init__(self, model: PatchCore, image_size: int, int8_search: bool = False) -> None:
        super().__init__()
        self.model = model.eval()
        self.image_size = image_size
        self.int8_search = int8_search
        size, n_members = image_size, len(model.banks())
        self.input_size = model.config.input_size
        self.downscale = image_size > self.input_size
        if self.downscale:  # antialiased bilinear has no ONNX export: as two matrix products, exact
            self.register_buffer(
                "resize", torch.from_numpy(resize_matrix(size, self.input_size, True)).float()
            )
        smooth = smoothing_matrix(size, model.config.sigma)
        constant = np.zeros((size, size))
        loc, scale = model.norm_loc.double().numpy(), model.norm_scale.double().numpy()
        part_loc, part_scale = model.part_loc.double().numpy(), model.part_scale.double().numpy()
        for k, (bank, baseline) in enumerate(zip(model.banks(), model.border_baselines(), strict=True)):
            h, w = model.grid_size(k)
            rows = smooth @ resize_matrix(h, size, False)  # (S, h): upsample, then smooth
            cols = smooth @ resize_matrix(w, size, False)  # (S, w)
            weight = 1.0 / (n_members * scale[k] * part_scale[0])
            constant += weight * (rows @ baseline.double().numpy() @ cols.T + loc[k])
            self.register_buffer(f"rows_{k}", torch.from_numpy(rows * weight).float())
            self.register_buffer(f"cols_t_{k}", torch.from_numpy(cols.T.copy()).float())
            if int8_search:
                search = Int8Search.from_bank(bank, h * w)
                for name, value in search.buffers().items():
                    self.register_buffer(f"{name}_{k}", value)
            else:
                # [q, 1] @ [-2 b^T; |b|^2] = |b|^2 - 2 q.b in one matrix product `(D + 1, M)` (x -2 is exact)
                self.register_buffer(f"bank_t_{k}", torch.cat([-2.0 * bank.T, (bank * bank).sum(1)[None]]))
        constant += part_loc[0] / part_scale[0]
        self.register_buffer("constant", torch.from_numpy(constant).float())
        if model.position_blocks:
            h, w = model.position_grid_size()
            rows = smooth @ resize_matrix(h, size, False) / part_scale[1]
            self.register_buffer("position_rows", torch.from_numpy(rows).float())
            self.register_buffer(
                "position_cols_t", torch.from_numpy((smooth @ resize_matrix(w, size, False)).T.copy()).float()
            )
            self.register_buffer(
                "position_constant", torch.tensor(part_loc[1] / part_scale[1], dtype=torch.float32)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.input_size
        if self.downscale:
            x = self.resize @ x @ self.resize.T
        elif x.shape[-1] != size:  # upscaling: antialiasing changes nothing (within 3e-5 on [-1, 1])
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        out = -self.constant
        embeddings, position = self.model.embed_all(x)
        for k, emb in enumerate(embeddings):
            n, d, h, w = emb.shape
            q = emb.permute(0, 2, 3, 1).reshape(n, h * w, d)
            if self.int8_search:
                nearest = Int8Search.squared_distances(q, *(getattr(self, f"{b}_{k}") for b in INT8_BUFFERS))
            else:
                ones = torch.ones_like(q[..., :1])
                d2 = torch.matmul(torch.cat([q, ones], 2), getattr(self, f"bank_t_{k}"))
                nearest = d2.min(dim=2).values + (q * q).sum(2)
            grid = nearest.clamp_min(0.0).sqrt().reshape(n, h, w)
            out = out + getattr(self, f"rows_{k}") @ grid @ getattr(self, f"cols_t_{k}")
        if position is not None:
            grid = self.model.position_grid(position)
            out = torch.maximum(
                out, self.position_rows @ grid @ self.position_cols_t - self.position_constant
            )
        return out


@contextmanager
def _exportable_adaptive_pooling() -> Iterator[None]:
    """While tracing: `F.adaptive_avg_pool2d` to an exact divisor of the input size (how PatchCore.embed
    brings a finer stage to a member's grid) as the plain average pooling it is; the ONNX exporter cannot
    export the adaptive one here (it does not see the input size)."""
    original = F.adaptive_avg_pool2d

    def pool(x: torch.Tensor, output_size: Any) -> torch.Tensor:
        out = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        size = tuple(int(v) for v in x.shape[-2:])
        if all(o and s % o == 0 for s, o in zip(size, out, strict=True)):
            kernel = tuple(s // o for s, o in zip(size, out, strict=True))
            return F.avg_pool2d(x, kernel, stride=kernel)
        return original(x, output_size)

    F.adaptive_avg_pool2d = pool
    try:
        yield
    finally:
        F.adaptive_avg_pool2d = original


def export_graph(model: PatchCore, path: Path, image_size: int, int8_search: bool = False) -> None:
    """Trace `EdgePatchCore` of a fitted `model` to the ONNX file `path` (opset `GRAPH_OPSET`): one image
    `(1, 3, S, S)` per call, so that every shape is static; with `int8_search`, the nearest-neighbour
    search as `Int8Search`. `deploy.export` folds, fuses and quantises what this writes."""
    graph = EdgePatchCore(model, image_size, int8_search).eval()
    example = torch.zeros(1, 3, image_size, image_size)
    with warnings.catch_warnings(), torch.inference_mode(), _exportable_adaptive_pooling():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints from shapes: sizes are fixed
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=False,
            opset_version=GRAPH_OPSET,
            input_names=[GRAPH_INPUT],
            output_names=[GRAPH_OUTPUT],
            do_constant_folding=True,
        )
