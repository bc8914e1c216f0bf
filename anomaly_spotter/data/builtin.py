"""The built-in synthetic dataset: MVTec AD layout, generated in seconds so a fresh clone needs no download.

Categories (every image is RGB; good images vary in pose, lighting and noise):

- ``fabric``: denim-like 2/1 twill (indigo warp, pale weft) with jittered period, angle, phase,
  contrast, per-thread thickness, uneven dye and sensor noise.
  Defects: ``hole`` (dark backing shows through), ``stain`` (tinted blotch), ``thread`` (foreign fibre).
- ``washer``: a keyed steel washer on a plain slate background; position, rotation (the inner key tab
  shows it), size, light direction and brightness vary, with a soft cast shadow.
  Defects: ``scratch`` (thin bright or dark line), ``chip`` (missing piece of an edge), ``rust`` (spot).
- ``label``: a printed label (colour band, knocked-out name, two text lines, barcode, icon) on a dark
  surface; the label's pose, the print's registration and the ink density vary.
  Defects: ``misprint`` (missing, faded or doubled print), ``scratch`` (scuff line), ``stain`` (blotch).
- ``board``: an assembled circuit board (chip, resistor, capacitor, three LEDs, pads, silkscreen,
  traces) on a dark surface; the board's pose, each part's placement within its tolerance, light and
  noise vary. Its defects are structural, the kind a patch-local detector finds hard: ``missing`` (a
  part absent, its pads showing), ``misplaced`` (a part shifted off its footprint or rotated beyond the
  tolerance, a capacitor turned against its polarity mark), ``count`` (a pin missing from the chip, or
  a chip variant with one pin more or fewer per row) and ``color`` (two LEDs swapped, two resistor
  bands swapped, or a capacitor of another sleeve colour): every colour and shape in a defect image
  also occurs on good boards, only not there.

Defect size and contrast are drawn stratified over a severity in (0, 1), so every defect type ranges
from small, faint ones to large, obvious ones. Masks are pixel-exact: a mask pixel is 255 exactly where
the defect image differs from the same scene rendered without the defect.

Determinism: each image's random stream is seeded from (seed, category, split/defect, index) through
``np.random.SeedSequence`` (with CRC32 of the names, never ``hash()``), and PNGs are written by Pillow
with fixed compression and no metadata, so a seed gives byte-identical files on one platform, and one
category's files do not depend on which other categories are generated.
"""

from __future__ import annotations

import shutil
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from anomaly_spotter.core.errors import ConfigError

BUILTIN_CATEGORIES: tuple[str, ...] = ("fabric", "washer", "label", "board")

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
class _Scene:
    """A rendered defect-free image (float RGB, 0..255 scale) and the layers its defects need."""

    image: np.ndarray
    layers: dict[str, Any] = field(default_factory=dict)


DefectFn = Callable[[_Scene, Rng, float, float], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class _Category:
    design: Callable[[Rng, int], dict[str, Any]]
    render: Callable[[Rng, int, dict[str, Any]], _Scene]
    defects: dict[str, DefectFn]


# ----------------------------------------------------------------------------------------------------
# Shared helpers


def _rng(seed: int, category: str, key: str, index: int) -> Rng:
    """A generator seeded only by (seed, category, key, index); stable across processes and runs."""
    entropy = [seed, zlib.crc32(category.encode()), zlib.crc32(key.encode()), index]
    return np.random.default_rng(np.random.SeedSequence(entropy))


@lru_cache(maxsize=8)
def _grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates `(yy, xx)`, float32 `(s, s)`; read-only, cached."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _smooth_noise(rng: Rng, s: int, cells: int) -> np.ndarray:
    """Smooth zero-mean noise of roughly unit amplitude: a `cells`x`cells` grid upsampled bicubically."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (s, s), interpolation=cv2.INTER_CUBIC)


def _lighting(rng: Rng, s: int, gradient: float, unevenness: float) -> np.ndarray:
    """Multiplicative illumination `(s, s)`: a random-direction linear ramp plus low-frequency variation."""
    yy, xx = _grid(s)
    phi = rng.uniform(0.0, 2.0 * np.pi)
    amount = rng.uniform(0.0, gradient)
    ramp = (np.cos(phi) * (xx - s / 2) + np.sin(phi) * (yy - s / 2)) * np.float32(2.0 * amount / s)
    return (1.0 + ramp + unevenness * _smooth_noise(rng, s, 4)).astype(np.float32)


def _sensor_noise(rng: Rng, s: int, sigma: float) -> np.ndarray:
    """Gaussian noise `(s, s, 3)`: mostly luminance, with a little independent chroma."""
    lum = rng.standard_normal((s, s, 1), dtype=np.float32)
    chroma = rng.standard_normal((s, s, 3), dtype=np.float32)
    return np.float32(sigma) * (0.85 * lum + 0.45 * chroma)


def _to_u8(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(image, 0.0, 255.0)).astype(np.uint8)


def _poly_mask(
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


def _blob(rng: Rng, s: int, cx: float, cy: float, radius: float, rough: float = 0.35) -> np.ndarray:
    """An irregular filled blob (few random harmonics on a circle) as a bool mask."""
    theta = np.linspace(0.0, 2.0 * np.pi, 40, endpoint=False)
    rad = np.ones_like(theta)
    for harmonic in (2, 3, 5):
        rad += rng.uniform(0.0, rough / harmonic * 2) * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi))
    rad = radius * np.clip(rad, 0.35, None)
    points = np.stack([cx + rad * np.cos(theta), cy + rad * np.sin(theta)], axis=1)
    return _poly_mask(s, points, closed=True, anchor=np.array([cx, cy]))


def _path(rng: Rng, s: int, x0: float, y0: float, length: float, wiggle: float, thickness: int) -> np.ndarray:
    """A slightly curved stroke starting at (x0, y0) as a bool mask."""
    n = max(2, int(length / 3.0))
    heading = rng.uniform(0.0, 2.0 * np.pi) + np.cumsum(rng.normal(0.0, wiggle, n))
    steps = np.stack([np.cos(heading), np.sin(heading)], axis=1) * (length / n)
    points = np.vstack([[x0, y0], [x0, y0] + np.cumsum(steps, axis=0)])
    return _poly_mask(s, points, closed=False, thickness=thickness)


def _pick(rng: Rng, allowed: np.ndarray) -> tuple[float, float]:
    """A random pixel centre `(x, y)` among the True pixels of `allowed`."""
    idx = np.flatnonzero(allowed)
    y, x = divmod(int(idx[rng.integers(len(idx))]), allowed.shape[1])
    return float(x), float(y)


def _stroke_width(s: int, q: float) -> int:
    """1 px for most strokes; 2 px (3 at large sizes) for the most severe ones."""
    return 1 if q < 0.7 else max(2, round(s / 96))


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _finalize(clean: np.ndarray, target: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Paste `target` into `clean` (uint8) on `region` only, making every region pixel change.

    Region pixels whose rounded change is under MIN_DELTA are pushed MIN_DELTA levels (in the defect's
    direction, or away from saturation), so the defect-vs-clean difference is exactly `region`.
    """
    out = clean.copy()
    out[region] = _to_u8(target[region])
    diff = out.astype(np.int16) - clean.astype(np.int16)
    weak = region & (np.abs(diff).max(axis=-1) < MIN_DELTA)
    if weak.any():
        total = diff[weak].sum(axis=-1)
        away = np.where(clean[weak].mean(axis=-1) < 128, 1, -1)
        sign = np.where(total > 0, 1, np.where(total < 0, -1, away)).astype(np.int16)
        pushed = clean[weak].astype(np.int16) + sign[:, None] * MIN_DELTA
        out[weak] = np.clip(pushed, 0, 255).astype(np.uint8)
    return out


# ----------------------------------------------------------------------------------------------------
# fabric: a woven texture

FABRIC_SUPERSAMPLE = 2


def _fabric_design(rng: Rng, s: int) -> dict[str, Any]:
    return {
        "warp": np.array([46, 70, 128], np.float32) * rng.uniform(0.9, 1.1, 3).astype(np.float32),
        "weft": np.array([176, 178, 190], np.float32) * rng.uniform(0.95, 1.05, 3).astype(np.float32),
        "period": s / 17.0 * rng.uniform(0.9, 1.1),
        "angle": rng.uniform(-0.08, 0.08),
    }


def _fabric_render(rng: Rng, s: int, d: dict[str, Any]) -> _Scene:
    k = FABRIC_SUPERSAMPLE
    yy, xx = _grid(k * s)
    period = d["period"] * k * rng.uniform(0.96, 1.04)
    angle = d["angle"] + rng.uniform(-0.035, 0.035)
    ca, sa = np.float32(np.cos(angle) / period), np.float32(np.sin(angle) / period)
    u = xx * ca + yy * sa + np.float32(rng.uniform(0, 3))
    v = yy * ca - xx * sa + np.float32(rng.uniform(0, 3))
    iu, iv = np.floor(u), np.floor(v)
    ru, rv = u - iu, v - iv
    iu, iv = iu.astype(np.int64), iv.astype(np.int64)
    warp_on_top = (iu + iv) % 3 != 0  # 2/1 twill: diagonal ribs, warp-faced like denim
    across = np.where(warp_on_top, ru, rv)
    along = np.where(warp_on_top, rv, ru)
    pi = np.float32(np.pi)
    shade = np.sin(pi * across) ** 0.6 * (0.7 + 0.3 * np.sin(pi * along) ** 0.5)
    # per-thread thickness/brightness variation and fibre streaks along each thread
    thread_w = rng.normal(1.0, 0.06, 64).astype(np.float32)
    thread_f = rng.normal(1.0, 0.06, 64).astype(np.float32)
    per_thread = np.where(warp_on_top, thread_w[iu % 64], thread_f[iv % 64])
    table = rng.standard_normal((64, 64)).astype(np.float32)
    fib_w = cv2.remap(table, u * 6.0, v * 0.7, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    fib_f = cv2.remap(table, v * 6.0, u * 0.7, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    fibres = np.where(warp_on_top, fib_w, fib_f)
    contrast = rng.uniform(0.85, 1.15)
    lum = (1.0 - contrast * 0.6 * (1.0 - shade)) * per_thread * (1.0 + 0.06 * fibres)
    color = np.where(warp_on_top[..., None], d["warp"], d["weft"])
    texture = cv2.resize(color * lum[..., None], (s, s), interpolation=cv2.INTER_AREA)
    light = _lighting(rng, s, gradient=0.12, unevenness=0.025) * rng.uniform(0.9, 1.1)
    image = texture * light[..., None] + _sensor_noise(rng, s, rng.uniform(2.0, 4.0))
    return _Scene(image, {"light": light})


def _fabric_hole(scene: _Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    s = scene.image.shape[0]
    radius = s * _lerp(0.01, 0.075, q)
    cx, cy = rng.uniform(radius, s - radius, 2)
    region = _blob(rng, s, cx, cy, radius, rough=0.5)
    backing = np.array([24, 24, 30], np.float32) * rng.uniform(0.7, 1.6)
    depth = _lerp(0.55, 1.0, qc)  # small, shallow holes keep some of the fabric (a thin place)
    target = (1 - depth) * scene.image + depth * backing * scene.layers["light"][..., None]
    return target + _sensor_noise(rng, s, 2.5), region


FABRIC_STAINS = (
    np.array([112, 78, 46], np.float32),  # coffee/brown
    np.array([36, 36, 40], np.float32),  # oil/grease
    np.array([160, 84, 40], np.float32),  # rust
    np.array([196, 200, 212], np.float32),  # bleach
)


def _fabric_stain(scene: _Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    s = scene.image.shape[0]
    radius = s * _lerp(0.02, 0.12, q)
    cx, cy = rng.uniform(0, s, 2)
    region = _blob(rng, s, cx, cy, radius)
    color = FABRIC_STAINS[rng.integers(len(FABRIC_STAINS))] * scene.layers["light"][..., None]
    inner = np.clip(0.75 + 0.35 * _smooth_noise(rng, s, max(4, s // 10)), 0.3, 1.0)[..., None]
    alpha = _lerp(0.1, 0.75, qc) * inner  # the weave stays visible through the stain
    return scene.image + alpha * (color - scene.image), region


THREAD_COLORS = (
    np.array([236, 234, 226], np.float32),
    np.array([178, 40, 38], np.float32),
    np.array([22, 22, 26], np.float32),
    np.array([214, 180, 60], np.float32),
)


def _fabric_thread(scene: _Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    s = scene.image.shape[0]
    x0, y0 = rng.uniform(0, s, 2)
    region = _path(rng, s, x0, y0, s * _lerp(0.06, 0.5, q), wiggle=0.25, thickness=_stroke_width(s, q))
    color = THREAD_COLORS[rng.integers(len(THREAD_COLORS))] * scene.layers["light"][..., None]
    alpha = _lerp(0.12, 0.9, qc)
    return scene.image + alpha * (color - scene.image) + _sensor_noise(rng, s, 3.0), region


# ----------------------------------------------------------------------------------------------------
# washer: an object on a plain background


def _washer_design(rng: Rng, s: int) -> dict[str, Any]:
    return {
        "background": np.array([86, 98, 108], np.float32) * rng.uniform(0.9, 1.1, 3).astype(np.float32),
        "metal": np.array([1.0, 1.0, 1.04], np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32),
        "radius": s * 0.33 * rng.uniform(0.95, 1.05),
    }


def _box_sdf(a: np.ndarray, b: np.ndarray, half_a: float, half_b: float) -> np.ndarray:
    qa, qb = np.abs(a) - half_a, np.abs(b) - half_b
    outside = np.hypot(np.maximum(qa, 0), np.maximum(qb, 0))
    return outside + np.minimum(np.maximum(qa, qb), 0)


def _washer_render(rng: Rng, s: int, d: dict[str, Any]) -> _Scene:
    yy, xx = _grid(s)
    cx, cy = s / 2 + rng.uniform(-0.08 * s, 0.08 * s, 2)
    psi = rng.uniform(0, 2 * np.pi)  # rotation: where the key tab points
    outer = d["radius"] * rng.uniform(0.98, 1.02)
    inner = outer * 0.48
    phi = rng.uniform(0, 2 * np.pi)  # light direction
    brightness = rng.uniform(0.82, 1.15)
    dx, dy = xx - np.float32(cx), yy - np.float32(cy)
    r = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    # hole = circle minus the key tab pointing inward at angle psi
    a = dx * np.float32(np.cos(psi)) + dy * np.float32(np.sin(psi))
    b = dy * np.float32(np.cos(psi)) - dx * np.float32(np.sin(psi))
    tab_sdf = _box_sdf(a - np.float32(inner * 0.92), b, inner * 0.2, outer * 0.09)
    hole_sdf = np.maximum(r - inner, -tab_sdf)
    disc_a = np.clip(outer + 0.5 - r, 0, 1)
    hole_a = np.clip(0.5 - hole_sdf, 0, 1)
    obj_a = disc_a * (1 - hole_a)
    # background with a soft shadow offset away from the light, darker through the hole
    off = 0.035 * s
    sx, sy = dx + np.float32(off * np.cos(phi)), dy + np.float32(off * np.sin(phi))
    shadow = np.clip((outer - np.hypot(sx, sy)) / (0.05 * s) + 0.5, 0, 1)
    bg_light = _lighting(rng, s, gradient=0.15, unevenness=0.02) * brightness
    background = d["background"] * (bg_light * (1 - 0.35 * shadow) * (1 - 0.4 * hole_a))[..., None]
    background = background + _sensor_noise(rng, s, rng.uniform(1.5, 3.0))
    # metal: flat face, rounded edges lit by direction, turning marks, specular highlight
    edge_w = 0.06 * s
    near_outer = np.clip(1 - (outer - r) / edge_w, 0, 1)
    near_inner = np.clip(1 - hole_sdf / edge_w, 0, 1)
    facing = np.cos(theta - np.float32(phi))
    base = rng.uniform(128, 165)
    face = 1 + 0.08 * (dx * np.float32(np.cos(phi)) + dy * np.float32(np.sin(phi))) / outer
    edge = 1 + 0.35 * facing * near_outer**1.5 - 0.3 * facing * near_inner**1.5
    rings = 1 + 0.025 * np.sin(r * np.float32(2 * np.pi / 1.7) + 1.5 * _smooth_noise(rng, s, 6))
    hx, hy = cx + 0.35 * outer * np.cos(phi), cy + 0.35 * outer * np.sin(phi)
    spec = rng.uniform(20, 55) * np.exp(-((xx - hx) ** 2 + (yy - hy) ** 2) / np.float32((0.3 * outer) ** 2))
    metal_l = (base * face * edge * rings + spec) * brightness
    metal = d["metal"] * metal_l[..., None] + _sensor_noise(rng, s, rng.uniform(1.5, 3.0))
    image = background * (1 - obj_a)[..., None] + metal * obj_a[..., None]
    return _Scene(image, {"background": background, "obj_a": obj_a, "light": metal_l / base})


def _washer_scratch(scene: _Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    s = scene.image.shape[0]
    solid = scene.layers["obj_a"] >= 0.999
    x0, y0 = _pick(rng, solid)
    stroke = _path(rng, s, x0, y0, s * _lerp(0.06, 0.35, q), wiggle=0.08, thickness=_stroke_width(s, q))
    region = stroke & solid
    sign = 1.0 if rng.uniform() < 0.7 else -1.0
    amount = sign * _lerp(7, 70, qc) * (0.7 + 0.3 * rng.uniform(size=(s, s, 1)))
    return scene.image + amount, region


def _washer_chip(scene: _Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    s = scene.image.shape[0]
    obj_a = scene.layers["obj_a"]
    rim = (obj_a > 0.2) & (obj_a < 0.8)  # antialiased boundary pixels: outer edge, hole edge, key tab
    x0, y0 = _pick(rng, rim)
    region = _blob(rng, s, x0, y0, s * _lerp(0.015, 0.08, q), rough=0.6) & (obj_a > 0)
    return scene.layers["background"], region


RUST_COLORS = (
    np.array([150, 72, 30], np.float32),
    np.array([110, 60, 35], np.float32),
    np.array([60, 52, 44], np.float32),  # grime
)


def _washer_rust(scene: _Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    s = scene.image.shape[0]
    solid = scene.layers["obj_a"] >= 0.999
    cx, cy = _pick(rng, solid)
    region = _blob(rng, s, cx, cy, s * _lerp(0.01, 0.07, q), rough=0.6) & solid
    color = RUST_COLORS[rng.integers(len(RUST_COLORS))] * scene.layers["light"][..., None]
    speckle = np.clip(0.7 + 0.5 * _smooth_noise(rng, s, max(4, s // 6)), 0.2, 1.0)[..., None]
    alpha = _lerp(0.12, 0.8, qc) * speckle
    return scene.image + alpha * (color - scene.image) + _sensor_noise(rng, s, 3.0), region


# ----------------------------------------------------------------------------------------------------
# label: a part with printed marks

BAND_COLORS = (
    np.array([196, 46, 42], np.float32),
    np.array([38, 92, 172], np.float32),
    np.array([36, 138, 78], np.float32),
)
CONSONANTS = "BCDFGKLMNPRSTVZ"
VOWELS = "AEIOU"
LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"
LABEL_SUPERSAMPLE = 2


def _text_layer(
    canvas: np.ndarray, text: str, x: float, baseline: float, height: float, width: float
) -> None:
    """Draw `text` (antialiased Hershey) into `canvas`, fitted to `height` and at most `width`."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    (w1, h1), _ = cv2.getTextSize(text, font, 1.0, 1)
    scale = min(height / h1, width / w1)
    thickness = max(1, round(height / 9))
    cv2.putText(canvas, text, (round(x), round(baseline)), font, scale, 255, thickness, cv2.LINE_AA)


def _label_design(rng: Rng, s: int) -> dict[str, Any]:
    """The print is fixed per (seed, spec): good labels only differ by pose, registration and ink density."""
    k = LABEL_SUPERSAMPLE
    c = k * s
    w, h = 0.80 * s * k, 0.60 * s * k
    left, top = (c - w) / 2, (c - h) / 2
    label = np.zeros((c, c), np.uint8)
    corner = round(0.04 * s * k)
    cv2.rectangle(
        label, (round(left + corner), round(top)), (round(left + w - corner), round(top + h)), 255, -1
    )
    cv2.rectangle(
        label, (round(left), round(top + corner)), (round(left + w), round(top + h - corner)), 255, -1
    )
    for cxx in (left + corner, left + w - corner):
        for cyy in (top + corner, top + h - corner):
            cv2.circle(label, (round(cxx), round(cyy)), corner, 255, -1, cv2.LINE_AA)
    band = np.zeros_like(label)
    band[: round(top + 0.17 * s * k)] = label[: round(top + 0.17 * s * k)]
    name = "".join(rng.choice(list(CONSONANTS)) if i % 2 == 0 else rng.choice(list(VOWELS)) for i in range(6))
    knockout = np.zeros_like(label)
    _text_layer(knockout, name, left + 0.06 * s * k, top + 0.125 * s * k, 0.08 * s * k, 0.5 * s * k)
    ink = np.zeros_like(label)
    lot = f"LOT {rng.integers(1000, 10000)}-{rng.choice(list(LETTERS))}"
    ref = f"REF {''.join(rng.choice(list(LETTERS), 2))}{rng.integers(100, 1000)}"
    for line, base in ((lot, 0.29), (ref, 0.40)):
        _text_layer(ink, line, left + 0.06 * s * k, top + base * s * k, 0.075 * s * k, 0.5 * s * k)
    icon = (round(left + w - 0.13 * s * k), round(top + 0.33 * s * k))
    cv2.circle(ink, icon, round(0.065 * s * k), 255, max(1, round(0.012 * s * k)), cv2.LINE_AA)
    cv2.circle(ink, icon, round(0.025 * s * k), 255, -1, cv2.LINE_AA)
    # barcode: random bar/space widths of 1..3 units between two guard bars
    widths = np.concatenate([[1, 1, 1], rng.integers(1, 4, 40), [1, 1, 1]])
    bar_left, bar_w = left + 0.07 * s * k, w - 0.14 * s * k
    edges = bar_left + np.concatenate([[0], np.cumsum(widths)]) * (bar_w / widths.sum())
    y0, y1 = top + 0.455 * s * k, top + 0.55 * s * k
    for i in range(0, len(widths), 2):
        pts = np.array([[edges[i], y0], [edges[i + 1], y0], [edges[i + 1], y1], [edges[i], y1]])
        pts = np.rint(pts * (1 << SUBPIXEL_SHIFT)).astype(np.int32)
        cv2.fillPoly(ink, [pts], 255, cv2.LINE_AA, SUBPIXEL_SHIFT)
    to_f = np.float32(1 / 255)
    return {
        "paper_layers": np.stack([label, band], axis=-1).astype(np.float32) * to_f,
        "print_layers": np.stack([ink, knockout], axis=-1).astype(np.float32) * to_f,
        "paper": np.array([238, 233, 218], np.float32) * rng.uniform(0.96, 1.02, 3).astype(np.float32),
        "band": BAND_COLORS[rng.integers(len(BAND_COLORS))] * rng.uniform(0.9, 1.1),
        "ink": np.array([26, 30, 48], np.float32),
        "surface": np.array([62, 64, 70], np.float32) * rng.uniform(0.9, 1.1, 3).astype(np.float32),
    }


def _warp(
    layers: np.ndarray, s: int, angle_deg: float, shift: np.ndarray, center: tuple[float, float]
) -> np.ndarray:
    """Rotate/translate supersampled layers, then area-downsample them to `(s, s, n)`."""
    c = layers.shape[0]
    mat = cv2.getRotationMatrix2D(center, angle_deg, 1.0)
    mat[:, 2] += shift
    warped = cv2.warpAffine(layers, mat, (c, c), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return cv2.resize(warped, (s, s), interpolation=cv2.INTER_AREA)


def _label_compose(layers: dict[str, Any], ink_a: np.ndarray) -> np.ndarray:
    """Composite the label scene from its layers with the given ink coverage."""
    a = layers
    img = a["surface_img"] * (1 - a["label_a"])[..., None] + a["paper_img"] * a["label_a"][..., None]
    for color, alpha in ((a["band"], a["band_a"]), (a["white"], a["knock_a"]), (a["ink"], ink_a)):
        img = img + alpha[..., None] * (color - img)
    return img * a["light"][..., None] + a["noise"]


def _label_render(rng: Rng, s: int, d: dict[str, Any]) -> _Scene:
    k = LABEL_SUPERSAMPLE
    c = k * s
    angle = rng.uniform(-2.5, 2.5)
    shift = rng.uniform(-0.03 * s, 0.03 * s, 2) * k
    paper = _warp(d["paper_layers"], s, angle, shift, (c / 2, c / 2))
    reg_angle = angle + rng.uniform(-0.7, 0.7)
    reg_shift = shift + rng.uniform(-0.012 * s, 0.012 * s, 2) * k
    printed = _warp(d["print_layers"], s, reg_angle, reg_shift, (c / 2, c / 2))
    density = rng.uniform(0.8, 1.0)
    grain = 1 + 0.05 * _smooth_noise(rng, s, max(4, s // 4))
    layers = {
        "label_a": paper[..., 0],
        "band_a": paper[..., 1],
        "ink_a": printed[..., 0] * density,
        "knock_a": printed[..., 1] * paper[..., 1],
        "surface_img": d["surface"] * grain[..., None],
        "paper_img": d["paper"] * (1 + 0.015 * _smooth_noise(rng, s, 8))[..., None],
        "band": d["band"],
        "white": d["paper"],
        "ink": d["ink"] * rng.uniform(0.8, 1.3),
        "light": _lighting(rng, s, gradient=0.14, unevenness=0.02) * rng.uniform(0.88, 1.1),
        "noise": _sensor_noise(rng, s, rng.uniform(1.5, 3.5)),
    }
    return _Scene(_label_compose(layers, layers["ink_a"]), layers)


def _label_misprint(scene: _Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    s = scene.image.shape[0]
    ink_a = scene.layers["ink_a"]
    on_label = scene.layers["label_a"] >= 0.999
    for _ in range(50):
        cx, cy = _pick(rng, (ink_a > 0.5) & on_label)
        half = s * _lerp(0.012, 0.09, q) * rng.uniform(0.6, 1.4, 2)
        box = np.array([[cx - half[0], cy - half[1]], [cx + half[0], cy - half[1]]])
        box = np.vstack([box, [[cx + half[0], cy + half[1]], [cx - half[0], cy + half[1]]]])
        roi = _poly_mask(s, box, closed=True, anchor=np.array([cx, cy])) & on_label
        if rng.uniform() < 0.6:  # missing or faded print
            new_ink = ink_a * np.float32(_lerp(0.55, 0.0, qc))
        else:  # doubled / smeared print: a shifted ghost copy
            dx, dy = rng.integers(-3, 4, 2) * max(1, round(s / 160))
            ghost = np.roll(ink_a, (int(dy), int(dx)), axis=(0, 1)) * np.float32(_lerp(0.3, 0.9, qc))
            new_ink = np.maximum(ink_a, ghost)
        new_ink = np.where(roi, new_ink, ink_a)
        region = roi & (np.abs(new_ink - ink_a) > 0.04)
        if region.any():
            return _label_compose(scene.layers, new_ink), region
    raise AssertionError("misprint: no ink to alter")  # unreachable: the roi is centred on ink


def _label_scratch(scene: _Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    s = scene.image.shape[0]
    on_label = scene.layers["label_a"] >= 0.999
    x0, y0 = _pick(rng, on_label)
    stroke = _path(rng, s, x0, y0, s * _lerp(0.05, 0.45, q), wiggle=0.06, thickness=_stroke_width(s, q))
    alpha = _lerp(0.15, 0.85, qc)
    light = scene.layers["light"][..., None]
    if rng.uniform() < 0.5:  # scraped: print and paper go bright
        target = scene.image + alpha * (np.float32(252) * light - scene.image)
    else:  # scuffed: a dark line
        target = scene.image * (1 - 0.6 * alpha)
    return target, stroke & on_label


def _tint_stain(scene: _Scene, rng: Rng, strength: float, tints: Sequence[np.ndarray]) -> np.ndarray:
    """The scene multiplied by a tint whose strength varies smoothly inside the stain."""
    s = scene.image.shape[0]
    tint = tints[rng.integers(len(tints))]
    inner = np.clip(0.75 + 0.35 * _smooth_noise(rng, s, max(4, s // 10)), 0.3, 1.0)[..., None]
    return scene.image * (1.0 + strength * inner * (tint - 1.0))


LABEL_STAINS = (
    np.array([0.72, 0.55, 0.38], np.float32),  # coffee
    np.array([0.55, 0.62, 0.95], np.float32),  # blue ink
    np.array([0.7, 0.7, 0.66], np.float32),  # grease
)


def _label_stain(scene: _Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    s = scene.image.shape[0]
    on_label = scene.layers["label_a"] >= 0.999
    cx, cy = _pick(rng, on_label)
    region = _blob(rng, s, cx, cy, s * _lerp(0.015, 0.11, q)) & on_label
    return _tint_stain(scene, rng, _lerp(0.1, 0.85, qc), LABEL_STAINS), region


# ----------------------------------------------------------------------------------------------------
# board: an assembled circuit board (structural defects a patch-local detector finds hard)

BOARD_SUPERSAMPLE = 2
LED_COLORS = (
    np.array([236, 40, 32], np.float32),  # red
    np.array([250, 196, 24], np.float32),  # amber
    np.array([40, 220, 70], np.float32),  # green
)
BAND_PALETTE = (
    np.array([140, 70, 20], np.float32),  # brown
    np.array([210, 30, 30], np.float32),  # red
    np.array([240, 130, 20], np.float32),  # orange
    np.array([230, 210, 30], np.float32),  # yellow
    np.array([40, 150, 60], np.float32),  # green
    np.array([40, 70, 200], np.float32),  # blue
    np.array([150, 60, 170], np.float32),  # violet
    np.array([20, 20, 20], np.float32),  # black
)
CAP_BODIES = (
    np.array([30, 52, 120], np.float32),  # the specified part: blue sleeve
    np.array([24, 24, 28], np.float32),  # black
    np.array([110, 64, 36], np.float32),  # brown
    np.array([70, 110, 60], np.float32),  # olive
)
# good placement tolerance: components sit within this of their nominal pose
BOARD_JITTER_FRAC = 0.003
BOARD_JITTER_DEG = 1.5
BOARD_REGION_DELTA = 8  # uint8 levels: a layout change counts as defect where a channel moves this much


def _board_design(rng: Rng, s: int) -> dict[str, Any]:
    return {
        "pcb": np.array([34, 102, 60], np.float32) * rng.uniform(0.92, 1.08, 3).astype(np.float32),
        "background": np.array([46, 46, 52], np.float32) * rng.uniform(0.9, 1.1, 3).astype(np.float32),
        "bands": [int(b) for b in rng.choice(len(BAND_PALETTE), 4, replace=False)],
        "pins": 6,
    }


def _board_nominal() -> dict[str, dict[str, Any]]:
    """Nominal part poses, in fractions of the image side (x, y) and degrees."""
    parts: dict[str, dict[str, Any]] = {
        "chip": {"xy": (0.37, 0.36), "angle": 0.0},
        "resistor": {"xy": (0.37, 0.70), "angle": 0.0},
        "capacitor": {"xy": (0.73, 0.64), "angle": 0.0},
    }
    for i in range(3):
        parts[f"led{i}"] = {"xy": (0.62 + 0.11 * i, 0.27), "angle": 0.0, "color": i}
    return parts


def _board_layout(rng: Rng) -> dict[str, dict[str, Any]]:
    """A good layout: every part present, within the placement tolerance of its nominal pose."""
    layout = _board_nominal()
    for part in layout.values():
        x, y = part["xy"]
        dx, dy = rng.normal(0.0, BOARD_JITTER_FRAC, 2)
        part["xy"] = (x + dx, y + dy)
        part["angle"] = float(rng.normal(0.0, BOARD_JITTER_DEG))
        part["present"] = True
    return layout


def _rot_rect(c: int, cx: float, cy: float, w: float, h: float, angle: float) -> np.ndarray:
    """Alpha `(c, c)` float32 of a filled, antialiased rotated rectangle (angle in degrees)."""
    pts = cv2.boxPoints(((cx, cy), (w, h), angle))
    canvas = np.zeros((c, c), np.uint8)
    cv2.fillPoly(
        canvas, [np.rint(pts * (1 << SUBPIXEL_SHIFT)).astype(np.int32)], 255, cv2.LINE_AA, SUBPIXEL_SHIFT
    )
    return canvas.astype(np.float32) / 255


def _disc(c: int, cx: float, cy: float, r: float, thickness: int = -1) -> np.ndarray:
    canvas = np.zeros((c, c), np.uint8)
    center = (round(cx * (1 << SUBPIXEL_SHIFT)), round(cy * (1 << SUBPIXEL_SHIFT)))
    cv2.circle(canvas, center, round(r * (1 << SUBPIXEL_SHIFT)), 255, thickness, cv2.LINE_AA, SUBPIXEL_SHIFT)
    return canvas.astype(np.float32) / 255


def _paint(img: np.ndarray, alpha: np.ndarray, color: np.ndarray | float) -> np.ndarray:
    return img + alpha[..., None] * (np.asarray(color, np.float32) - img)


def _local(cx: float, cy: float, angle: float, u: float, v: float) -> tuple[float, float]:
    """Board point at offset (u, v) in a part's frame rotated by `angle` degrees."""
    t = np.deg2rad(angle)
    return cx + u * np.cos(t) - v * np.sin(t), cy + u * np.sin(t) + v * np.cos(t)


def _board_compose(layers: dict[str, Any], layout: dict[str, dict[str, Any]]) -> np.ndarray:
    """Render the board scene (float RGB, 0..255) for a layout, with the scene's own pose, light, noise."""
    d = layers["design"]
    s = layers["size"]
    k = BOARD_SUPERSAMPLE
    c = k * s
    img = np.empty((c, c, 3), np.float32)
    img[:] = d["background"]
    img = _paint(img, _rot_rect(c, c / 2, c / 2, 0.86 * c, 0.80 * c, 0.0), d["pcb"])
    trace = np.array(d["pcb"] * 1.35, np.float32)
    silver = np.float32(196)
    for y in (0.50, 0.56):  # fixed copper traces and mounting holes
        img = _paint(img, _rot_rect(c, 0.55 * c, y * c, 0.62 * c, 0.012 * c, 0.0), trace)
    img = _paint(img, _rot_rect(c, 0.58 * c, 0.36 * c, 0.012 * c, 0.30 * c, 0.0), trace)
    for hx, hy in ((0.12, 0.15), (0.88, 0.15), (0.12, 0.85), (0.88, 0.85)):
        img = _paint(img, _disc(c, hx * c, hy * c, 0.035 * c), silver)
        img = _paint(img, _disc(c, hx * c, hy * c, 0.02 * c), d["background"] * 0.6)
    nominal = _board_nominal()
    # pads and silkscreen outlines stay where the parts belong, so a missing or moved part shows them
    white = np.float32(225)
    cx, cy = (v * c for v in nominal["chip"]["xy"])
    img = _paint(img, _rot_rect(c, cx, cy, 0.30 * c, 0.25 * c, 0.0), white)
    img = _paint(img, _rot_rect(c, cx, cy, 0.29 * c, 0.24 * c, 0.0), d["pcb"])
    for name in ("resistor",):
        rx, ry = (v * c for v in nominal[name]["xy"])
        for side in (-1, 1):
            img = _paint(img, _rot_rect(c, rx + side * 0.13 * c, ry, 0.05 * c, 0.06 * c, 0.0), silver)
    kx, ky = (v * c for v in nominal["capacitor"]["xy"])
    img = _paint(img, _disc(c, kx, ky, 0.11 * c, max(1, round(0.006 * c))), white)
    for i in range(3):
        lx, ly = (v * c for v in nominal[f"led{i}"]["xy"])
        img = _paint(img, _rot_rect(c, lx, ly, 0.075 * c, 0.075 * c, 0.0), silver)
    # the parts
    chip = layout["chip"]
    if chip["present"]:
        cx, cy = (v * c for v in chip["xy"])
        a = chip["angle"]
        n = int(chip.get("pins", d["pins"]))
        pitch = 0.24 * c / 6
        for row in (-1, 1):
            for j in range(n):
                if (row, j) == chip.get("gap"):
                    continue
                u = (j - (n - 1) / 2) * pitch
                px, py = _local(cx, cy, a, u, row * 0.095 * c)
                img = _paint(img, _rot_rect(c, px, py, 0.018 * c, 0.05 * c, a), np.float32(170))
        img = _paint(img, _rot_rect(c, cx, cy, 0.26 * c, 0.15 * c, a), np.float32(28))
        dx, dy = _local(cx, cy, a, -0.10 * c, -0.04 * c)
        img = _paint(img, _disc(c, dx, dy, 0.012 * c), np.float32(70))
    res = layout["resistor"]
    if res["present"]:
        rx, ry = (v * c for v in res["xy"])
        a = res["angle"]
        img = _paint(img, _rot_rect(c, rx, ry, 0.30 * c, 0.012 * c, a), np.float32(185))
        img = _paint(img, _rot_rect(c, rx, ry, 0.17 * c, 0.065 * c, a), np.array([214, 190, 150], np.float32))
        bands = res.get("bands", d["bands"])
        for j, b in enumerate(bands):
            bx, by = _local(rx, ry, a, (-0.05 + 0.03 * j + (0.015 if j == 3 else 0)) * c, 0)
            img = _paint(img, _rot_rect(c, bx, by, 0.014 * c, 0.065 * c, a), BAND_PALETTE[b])
    cap = layout["capacitor"]
    if cap["present"]:
        kx, ky = (v * c for v in cap["xy"])
        a = cap["angle"]
        img = _paint(img, _disc(c, kx, ky, 0.10 * c), cap.get("body", CAP_BODIES[0]))
        mx, my = _local(kx, ky, a, 0.075 * c, 0)
        stripe = _disc(c, kx, ky, 0.10 * c) * _rot_rect(c, mx, my, 0.05 * c, 0.3 * c, a)
        img = _paint(img, stripe, np.array([190, 200, 220], np.float32))
        for arm in (0.0, 90.0):
            img = _paint(img, _rot_rect(c, kx, ky, 0.10 * c, 0.006 * c, a + arm), np.float32(120))
    for i in range(3):
        led = layout[f"led{i}"]
        if not led["present"]:
            continue
        lx, ly = (v * c for v in led["xy"])
        color = LED_COLORS[led["color"]]
        img = _paint(img, _rot_rect(c, lx, ly, 0.06 * c, 0.06 * c, led["angle"]), color * 0.7)
        img = _paint(img, _disc(c, lx, ly, 0.018 * c), np.minimum(color * 1.1 + 40, 255))
    mat = cv2.getRotationMatrix2D((c / 2, c / 2), layers["pose_angle"], 1.0)
    mat[:, 2] += layers["pose_shift"]
    img = cv2.warpAffine(img, mat, (c, c), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    img = cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA)
    return img * layers["light"][..., None] + layers["noise"]


def _board_render(rng: Rng, s: int, d: dict[str, Any]) -> _Scene:
    k = BOARD_SUPERSAMPLE
    layers = {
        "design": d,
        "size": s,
        "pose_angle": rng.uniform(-2.0, 2.0),
        "pose_shift": rng.uniform(-0.025 * s, 0.025 * s, 2) * k,
        "light": _lighting(rng, s, gradient=0.14, unevenness=0.02) * rng.uniform(0.88, 1.1),
        "noise": _sensor_noise(rng, s, rng.uniform(1.5, 3.0)),
        "layout": _board_layout(rng),
    }
    return _Scene(_board_compose(layers, layers["layout"]), layers)


def _board_variant(
    scene: _Scene, rng: Rng, change: Callable[[dict[str, dict[str, Any]]], None]
) -> tuple[np.ndarray, np.ndarray]:
    """Re-render the scene with a changed layout; the region is where a channel moved visibly."""
    layout = {name: dict(part) for name, part in scene.layers["layout"].items()}
    change(layout)
    target = _board_compose(scene.layers, layout)
    diff = np.abs(_to_u8(target).astype(np.int16) - _to_u8(scene.image).astype(np.int16)).max(axis=-1)
    region = diff >= BOARD_REGION_DELTA
    if not region.any():  # a sub-threshold change at a tiny size: keep the strongest pixel
        region = diff == diff.max()
    return target, region


def _board_missing(scene: _Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    # small parts (an LED) for mild severities, large ones (the chip) for severe ones
    order = ("led0", "led1", "led2", "resistor", "capacitor", "chip")
    part = order[min(len(order) - 1, int(q * len(order)))]

    def change(layout: dict[str, dict[str, Any]]) -> None:
        layout[part]["present"] = False

    return _board_variant(scene, rng, change)


def _board_misplaced(scene: _Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    part = ("resistor", "capacitor", "chip")[rng.integers(3)]
    sign = rng.choice([-1.0, 1.0])

    def change(layout: dict[str, dict[str, Any]]) -> None:
        p = layout[part]
        if part == "capacitor" or rng.uniform() < 0.5:  # rotated beyond the tolerance (polarity for caps)
            p["angle"] = p["angle"] + sign * _lerp(12.0, 180.0 if part == "capacitor" else 60.0, q)
        else:  # shifted off its footprint
            t = rng.uniform(0, 2 * np.pi)
            dist = _lerp(0.012, 0.06, q)
            p["xy"] = (p["xy"][0] + dist * np.cos(t), p["xy"][1] + dist * np.sin(t))

    return _board_variant(scene, rng, change)


def _board_count(scene: _Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    pins = scene.layers["design"]["pins"]

    def change(layout: dict[str, dict[str, Any]]) -> None:
        chip = layout["chip"]
        if q < 0.5:  # one pin missing from a row
            chip["gap"] = (int(rng.choice([-1, 1])), int(rng.integers(pins)))
        else:  # a variant of the part with one pin more or fewer per row
            chip["pins"] = pins + int(rng.choice([-1, 1]))

    return _board_variant(scene, rng, change)


def _board_color(scene: _Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    def change(layout: dict[str, dict[str, Any]]) -> None:
        if q < 0.25:  # a resistor of the wrong value: two colour bands swapped
            bands = list(scene.layers["design"]["bands"])
            i = int(rng.integers(3))
            bands[i], bands[i + 1] = bands[i + 1], bands[i]
            layout["resistor"]["bands"] = bands
        elif q < 0.5:  # two LEDs swapped: every colour on the board is a normal one
            i, j = rng.choice(3, 2, replace=False)
            layout[f"led{i}"]["color"], layout[f"led{j}"]["color"] = j, i
        else:  # a capacitor of another series: same shape, a sleeve colour from faintly to fully other
            other = CAP_BODIES[1 + int(rng.integers(len(CAP_BODIES) - 1))]
            layout["capacitor"]["body"] = CAP_BODIES[0] + _lerp(0.15, 1.0, qc) ** 1.5 * (
                other - CAP_BODIES[0]
            )

    return _board_variant(scene, rng, change)


# ----------------------------------------------------------------------------------------------------
# Registry and generation

_CATEGORIES: dict[str, _Category] = {
    "fabric": _Category(
        _fabric_design,
        _fabric_render,
        {"hole": _fabric_hole, "stain": _fabric_stain, "thread": _fabric_thread},
    ),
    "washer": _Category(
        _washer_design,
        _washer_render,
        {"scratch": _washer_scratch, "chip": _washer_chip, "rust": _washer_rust},
    ),
    "label": _Category(
        _label_design,
        _label_render,
        {"misprint": _label_misprint, "scratch": _label_scratch, "stain": _label_stain},
    ),
    "board": _Category(
        _board_design,
        _board_render,
        {
            "missing": _board_missing,
            "misplaced": _board_misplaced,
            "count": _board_count,
            "color": _board_color,
        },
    ),
}
assert tuple(_CATEGORIES) == BUILTIN_CATEGORIES


def _check(category: str) -> _Category:
    if category not in _CATEGORIES:
        raise ConfigError(
            f"unknown builtin category {category!r}; choose from {', '.join(BUILTIN_CATEGORIES)}"
        )
    return _CATEGORIES[category]


def _check_spec(spec: BuiltinSpec, seed: int) -> None:
    if spec.image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"builtin.image_size must be >= {MIN_IMAGE_SIZE}, got {spec.image_size}")
    for name in ("n_train", "n_test_good", "n_test_per_defect"):
        if getattr(spec, name) < 1:
            raise ConfigError(f"builtin.{name} must be >= 1, got {getattr(spec, name)}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0 for the builtin dataset, got {seed}")


def _severities(rng: Rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified size severities `q` (one per 1/n bin, shuffled) and correlated contrast severities."""
    q = (np.arange(n) + rng.uniform(0.05, 0.95, n)) / n
    q = q[rng.permutation(n)]
    qc = np.clip(q + rng.uniform(-0.3, 0.3, n), 0.0, 1.0)
    return q, qc


def _render_sample(
    category: str, spec: BuiltinSpec, seed: int, split: str, defect: str, index: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """One image: `(image_u8, mask_bool or None, clean_u8)`; `clean` is the scene before its defect."""
    cat = _check(category)
    s = spec.image_size
    design = cat.design(_rng(seed, category, "design", 0), s)
    return _render_with(cat, design, category, spec, seed, split, defect, index)


def _render_with(
    cat: _Category,
    design: dict[str, Any],
    category: str,
    spec: BuiltinSpec,
    seed: int,
    split: str,
    defect: str,
    index: int,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    rng = _rng(seed, category, f"{split}/{defect}", index)
    scene = cat.render(rng, spec.image_size, design)
    clean = _to_u8(scene.image)
    if defect == GOOD:
        return clean, None, clean
    q, qc = _severities(_rng(seed, category, f"severity/{defect}", 0), spec.n_test_per_defect)
    target, region = cat.defects[defect](scene, rng, float(q[index]), float(qc[index]))
    return _finalize(clean, target, region), region, clean


def _save_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _jobs(cat: _Category, spec: BuiltinSpec) -> list[tuple[str, str, int]]:
    jobs = [("train", GOOD, i) for i in range(spec.n_train)]
    jobs += [("test", GOOD, i) for i in range(spec.n_test_good)]
    jobs += [("test", d, i) for d in cat.defects for i in range(spec.n_test_per_defect)]
    return jobs


def _write_category(root: Path, category: str, spec: BuiltinSpec, seed: int, bar: tqdm | None) -> None:
    cat = _check(category)
    root.mkdir(parents=True, exist_ok=True)
    final = root / category
    for stale in root.glob(f".{category}.*.tmp"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{category}.", suffix=".tmp", dir=root))
    try:
        design = cat.design(_rng(seed, category, "design", 0), spec.image_size)
        for split, defect, index in _jobs(cat, spec):
            image, mask, _ = _render_with(cat, design, category, spec, seed, split, defect, index)
            out_dir = tmp / split / defect
            out_dir.mkdir(parents=True, exist_ok=True)
            _save_png(out_dir / f"{index:03d}.png", image)
            if mask is not None:
                gt_dir = tmp / "ground_truth" / defect
                gt_dir.mkdir(parents=True, exist_ok=True)
                _save_png(gt_dir / f"{index:03d}_mask.png", mask.astype(np.uint8) * 255)
            if bar is not None:
                bar.update(1)
        old = None
        if final.exists() or final.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{category}.", suffix=".tmp", dir=root)) / "old"
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def generate_category(root: Path, category: str, spec: BuiltinSpec, seed: int) -> None:
    """Write (replacing atomically) `<root>/<category>` in the MVTec AD layout."""
    _check_spec(spec, seed)
    _write_category(Path(root), category, spec, seed, bar=None)


def generate_dataset(
    root: Path,
    categories: Sequence[str] = BUILTIN_CATEGORIES,
    spec: BuiltinSpec = BuiltinSpec(),  # noqa: B008 (frozen dataclass: safe as a default)
    seed: int = 0,
    progress: bool = True,
) -> None:
    """Write each category under `root`, deleting and rewriting `<root>/<category>` one at a time.

    Raises ConfigError for an unknown category (before writing anything) or an invalid spec/seed.
    """
    if isinstance(categories, str):
        categories = (categories,)
    cats = [_check(c) for c in categories]
    _check_spec(spec, seed)
    total = sum(len(_jobs(cat, spec)) for cat in cats)
    with tqdm(total=total, unit="img", disable=not progress, desc="builtin dataset") as bar:
        for category in categories:
            bar.set_description(f"builtin {category}")
            _write_category(Path(root), category, spec, seed, bar)
