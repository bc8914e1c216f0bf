"""What every built-in category shares: the spec, seeded random streams, the drawing primitives, the
scene a defect is drawn on and how a defect image is finished (pixel-exact masks)."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

BUILTIN_CATEGORIES: tuple[str, ...] = ("fabric", "washer", "label", "board", "component")

MIN_IMAGE_SIZE = 32
MIN_DELTA = 3  # every mask pixel differs from the defect-free scene by at least this much (uint8 levels)
PNG_COMPRESS_LEVEL = 1
SUBPIXEL_SHIFT = 4  # cv2 drawing: 4 fractional bits for sub-pixel vertex positions
GOOD = "good"

Rng = np.random.Generator


@dataclass(frozen=True)
class BuiltinSpec:
    """How much data to generate per category and at what (square) image size."""

    image_size: int = 160
    n_train: int = 60  # train/good per category
    n_test_good: int = 12
    n_test_per_defect: int = 8


@dataclass
class Scene:
    """A rendered defect-free image (float RGB, 0..255 scale) and the layers its defects need."""

    image: np.ndarray
    layers: dict[str, Any] = field(default_factory=dict)


DefectFn = Callable[[Scene, Rng, float, float], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Category:
    design: Callable[[Rng, int], dict[str, Any]]
    render: Callable[[Rng, int, dict[str, Any]], Scene]
    defects: dict[str, DefectFn]


# ----------------------------------------------------------------------------------------------------
# Shared helpers


def sample_rng(seed: int, category: str, key: str, index: int) -> Rng:
    """A generator seeded only by (seed, category, key, index); stable across processes and runs."""
    entropy = [seed, zlib.crc32(category.encode()), zlib.crc32(key.encode()), index]
    return np.random.default_rng(np.random.SeedSequence(entropy))


@lru_cache(maxsize=8)
def pixel_grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates `(yy, xx)`, float32 `(s, s)`; read-only, cached."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def smooth_noise(rng: Rng, s: int, cells: int) -> np.ndarray:
    """Smooth zero-mean noise of roughly unit amplitude: a `cells`x`cells` grid upsampled bicubically."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (s, s), interpolation=cv2.INTER_CUBIC)


def lighting(rng: Rng, s: int, gradient: float, unevenness: float) -> np.ndarray:
    """Multiplicative illumination `(s, s)`: a random-direction linear ramp plus low-frequency variation."""
    yy, xx = pixel_grid(s)
    phi = rng.uniform(0.0, 2.0 * np.pi)
    amount = rng.uniform(0.0, gradient)
    ramp = (np.cos(phi) * (xx - s / 2) + np.sin(phi) * (yy - s / 2)) * np.float32(2.0 * amount / s)
    return (1.0 + ramp + unevenness * smooth_noise(rng, s, 4)).astype(np.float32)


def sensor_noise(rng: Rng, s: int, sigma: float) -> np.ndarray:
    """Gaussian noise `(s, s, 3)`: mostly luminance, with a little independent chroma."""
    lum = rng.standard_normal((s, s, 1), dtype=np.float32)
    chroma = rng.standard_normal((s, s, 3), dtype=np.float32)
    return np.float32(sigma) * (0.85 * lum + 0.45 * chroma)


def to_u8(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(image, 0.0, 255.0)).astype(np.uint8)


def poly_mask(
    s: int, points: np.ndarray, closed: bool, thickness: int = 1, anchor: np.ndarray | None = None
) -> np.ndarray:
    """Rasterise a float polygon (filled when `closed`) or polyline into a bool `(s, s)` mask, no AA.

    The pixel under `anchor` (default: the first point) is always set, so the mask is never empty.
    """
    canvas = np.zeros((s, s), np.uint8)
    pts = np.rint(points * (1 << SUBPIXEL_SHIFT)).astype(np.int32).reshape(-1, 1, 2)
    if closed:
        cv2.fillPoly(canvas, [pts], 255, cv2.LINE_8, SUBPIXEL_SHIFT)
    else:
        cv2.polylines(canvas, [pts], False, 255, thickness, cv2.LINE_8, SUBPIXEL_SHIFT)
    x0, y0 = np.clip(np.floor(anchor if anchor is not None else points[0]).astype(int), 0, s - 1)
    canvas[y0, x0] = 255  # never empty, even for a sub-pixel shape
    return canvas > 0


def blob_mask(rng: Rng, s: int, cx: float, cy: float, radius: float, rough: float = 0.35) -> np.ndarray:
    """An irregular filled blob (few random harmonics on a circle) as a bool mask."""
    theta = np.linspace(0.0, 2.0 * np.pi, 40, endpoint=False)
    rad = np.ones_like(theta)
    for harmonic in (2, 3, 5):
        rad += rng.uniform(0.0, rough / harmonic * 2) * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi))
    rad = radius * np.clip(rad, 0.35, None)
    points = np.stack([cx + rad * np.cos(theta), cy + rad * np.sin(theta)], axis=1)
    return poly_mask(s, points, closed=True, anchor=np.array([cx, cy]))


def path_mask(
    rng: Rng, s: int, x0: float, y0: float, length: float, wiggle: float, thickness: int
) -> np.ndarray:
    """A slightly curved stroke starting at (x0, y0) as a bool mask."""
    n = max(2, int(length / 3.0))
    heading = rng.uniform(0.0, 2.0 * np.pi) + np.cumsum(rng.normal(0.0, wiggle, n))
    steps = np.stack([np.cos(heading), np.sin(heading)], axis=1) * (length / n)
    points = np.vstack([[x0, y0], [x0, y0] + np.cumsum(steps, axis=0)])
    return poly_mask(s, points, closed=False, thickness=thickness)


def pick_point(rng: Rng, allowed: np.ndarray) -> tuple[float, float]:
    """A random pixel centre `(x, y)` among the True pixels of `allowed`."""
    idx = np.flatnonzero(allowed)
    y, x = divmod(int(idx[rng.integers(len(idx))]), allowed.shape[1])
    return float(x), float(y)


def stroke_width(s: int, q: float) -> int:
    """1 px for most strokes; 2 px (3 at large sizes) for the most severe ones."""
    return 1 if q < 0.7 else max(2, round(s / 96))


def rot_rect(c: int, cx: float, cy: float, w: float, h: float, angle: float) -> np.ndarray:
    """Alpha `(c, c)` float32 of a filled, antialiased rotated rectangle (angle in degrees)."""
    pts = cv2.boxPoints(((cx, cy), (w, h), angle))
    canvas = np.zeros((c, c), np.uint8)
    cv2.fillPoly(
        canvas, [np.rint(pts * (1 << SUBPIXEL_SHIFT)).astype(np.int32)], 255, cv2.LINE_AA, SUBPIXEL_SHIFT
    )
    return canvas.astype(np.float32) / 255


def disc(c: int, cx: float, cy: float, r: float, thickness: int = -1) -> np.ndarray:
    """Alpha `(c, c)` float32 of an antialiased disc (or a ring `thickness` px wide)."""
    canvas = np.zeros((c, c), np.uint8)
    center = (round(cx * (1 << SUBPIXEL_SHIFT)), round(cy * (1 << SUBPIXEL_SHIFT)))
    cv2.circle(canvas, center, round(r * (1 << SUBPIXEL_SHIFT)), 255, thickness, cv2.LINE_AA, SUBPIXEL_SHIFT)
    return canvas.astype(np.float32) / 255


def paint(img: np.ndarray, alpha: np.ndarray, color: np.ndarray | float) -> np.ndarray:
    """`img` with `color` laid over it with opacity `alpha`."""
    return img + alpha[..., None] * (np.asarray(color, np.float32) - img)


def local_point(cx: float, cy: float, angle: float, u: float, v: float) -> tuple[float, float]:
    """The point at offset (u, v) in a part's frame centred at (cx, cy), rotated by `angle` degrees."""
    t = np.deg2rad(angle)
    return cx + u * np.cos(t) - v * np.sin(t), cy + u * np.sin(t) + v * np.cos(t)


def layout_variant(
    scene: Scene,
    compose: Callable[[dict[str, Any], dict[str, dict[str, Any]]], np.ndarray],
    change: Callable[[dict[str, dict[str, Any]]], None],
    delta: int,
) -> tuple[np.ndarray, np.ndarray]:
    """A structural defect: the scene re-rendered (`compose(scene.layers, layout)`) with its parts'
    layout (`scene.layers["layout"]`, copied) changed by `change`; the region is where a channel moved by
    `delta` uint8 levels or more (the strongest pixel, if none did)."""
    layout = {name: dict(part) for name, part in scene.layers["layout"].items()}
    change(layout)
    target = compose(scene.layers, layout)
    diff = np.abs(to_u8(target).astype(np.int16) - to_u8(scene.image).astype(np.int16)).max(axis=-1)
    region = diff >= delta
    if not region.any():  # a sub-threshold change at a tiny size: keep the strongest pixel
        region = diff == diff.max()
    return target, region


def lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def finalize(clean: np.ndarray, target: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Paste `target` into `clean` (uint8) on `region` only, making every region pixel change.

    Region pixels whose rounded change is under MIN_DELTA are pushed MIN_DELTA levels (in the defect's
    direction, or away from saturation), so the defect-vs-clean difference is exactly `region`.
    """
    out = clean.copy()
    out[region] = to_u8(target[region])
    diff = out.astype(np.int16) - clean.astype(np.int16)
    weak = region & (np.abs(diff).max(axis=-1) < MIN_DELTA)
    if weak.any():
        total = diff[weak].sum(axis=-1)
        away = np.where(clean[weak].mean(axis=-1) < 128, 1, -1)
        sign = np.where(total > 0, 1, np.where(total < 0, -1, away)).astype(np.int16)
        pushed = clean[weak].astype(np.int16) + sign[:, None] * MIN_DELTA
        out[weak] = np.clip(pushed, 0, 255).astype(np.uint8)
    return out
