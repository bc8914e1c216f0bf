"""`fabric`: denim-like 2/1 twill; defects hole, stain, thread."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from anomaly_spotter.data.builtin.common import (
    Category,
    Rng,
    Scene,
    blob_mask,
    lerp,
    lighting,
    path_mask,
    pixel_grid,
    sensor_noise,
    smooth_noise,
    stroke_width,
)

FABRIC_SUPERSAMPLE = 2


def _fabric_design(rng: Rng, s: int) -> dict[str, Any]:
    return {
        "warp": np.array([46, 70, 128], np.float32) * rng.uniform(0.9, 1.1, 3).astype(np.float32),
        "weft": np.array([176, 178, 190], np.float32) * rng.uniform(0.95, 1.05, 3).astype(np.float32),
        "period": s / 17.0 * rng.uniform(0.9, 1.1),
        "angle": rng.uniform(-0.08, 0.08),
    }


def _fabric_render(rng: Rng, s: int, d: dict[str, Any]) -> Scene:
    k = FABRIC_SUPERSAMPLE
    yy, xx = pixel_grid(k * s)
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
    light = lighting(rng, s, gradient=0.12, unevenness=0.025) * rng.uniform(0.9, 1.1)
    image = texture * light[..., None] + sensor_noise(rng, s, rng.uniform(2.0, 4.0))
    return Scene(image, {"light": light})


def _fabric_hole(scene: Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    s = scene.image.shape[0]
    radius = s * lerp(0.01, 0.075, q)
    cx, cy = rng.uniform(radius, s - radius, 2)
    region = blob_mask(rng, s, cx, cy, radius, rough=0.5)
    backing = np.array([24, 24, 30], np.float32) * rng.uniform(0.7, 1.6)
    depth = lerp(0.55, 1.0, qc)  # small, shallow holes keep some of the fabric (a thin place)
    target = (1 - depth) * scene.image + depth * backing * scene.layers["light"][..., None]
    return target + sensor_noise(rng, s, 2.5), region


FABRIC_STAINS = (
    np.array([112, 78, 46], np.float32),  # coffee/brown
    np.array([36, 36, 40], np.float32),  # oil/grease
    np.array([160, 84, 40], np.float32),  # rust
    np.array([196, 200, 212], np.float32),  # bleach
)


def _fabric_stain(scene: Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    s = scene.image.shape[0]
    radius = s * lerp(0.02, 0.12, q)
    cx, cy = rng.uniform(0, s, 2)
    region = blob_mask(rng, s, cx, cy, radius)
    color = FABRIC_STAINS[rng.integers(len(FABRIC_STAINS))] * scene.layers["light"][..., None]
    inner = np.clip(0.75 + 0.35 * smooth_noise(rng, s, max(4, s // 10)), 0.3, 1.0)[..., None]
    alpha = lerp(0.1, 0.75, qc) * inner  # the weave stays visible through the stain
    return scene.image + alpha * (color - scene.image), region


THREAD_COLORS = (
    np.array([236, 234, 226], np.float32),
    np.array([178, 40, 38], np.float32),
    np.array([22, 22, 26], np.float32),
    np.array([214, 180, 60], np.float32),
)


def _fabric_thread(scene: Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    s = scene.image.shape[0]
    x0, y0 = rng.uniform(0, s, 2)
    region = path_mask(rng, s, x0, y0, s * lerp(0.06, 0.5, q), wiggle=0.25, thickness=stroke_width(s, q))
    color = THREAD_COLORS[rng.integers(len(THREAD_COLORS))] * scene.layers["light"][..., None]
    alpha = lerp(0.12, 0.9, qc)
    return scene.image + alpha * (color - scene.image) + sensor_noise(rng, s, 3.0), region


CATEGORY = Category(
    _fabric_design, _fabric_render, {"hole": _fabric_hole, "stain": _fabric_stain, "thread": _fabric_thread}
)
