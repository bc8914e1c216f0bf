"""`washer`: a keyed steel washer on slate; defects scratch, chip, rust."""

from __future__ import annotations

from typing import Any

import numpy as np

from anomaly_spotter.data.builtin.common import (
    Category,
    Rng,
    Scene,
    blob_mask,
    lerp,
    lighting,
    path_mask,
    pick_point,
    pixel_grid,
    sensor_noise,
    smooth_noise,
    stroke_width,
)


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


def _washer_render(rng: Rng, s: int, d: dict[str, Any]) -> Scene:
    yy, xx = pixel_grid(s)
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
    bg_light = lighting(rng, s, gradient=0.15, unevenness=0.02) * brightness
    background = d["background"] * (bg_light * (1 - 0.35 * shadow) * (1 - 0.4 * hole_a))[..., None]
    background = background + sensor_noise(rng, s, rng.uniform(1.5, 3.0))
    # metal: flat face, rounded edges lit by direction, turning marks, specular highlight
    edge_w = 0.06 * s
    near_outer = np.clip(1 - (outer - r) / edge_w, 0, 1)
    near_inner = np.clip(1 - hole_sdf / edge_w, 0, 1)
    facing = np.cos(theta - np.float32(phi))
    base = rng.uniform(128, 165)
    face = 1 + 0.08 * (dx * np.float32(np.cos(phi)) + dy * np.float32(np.sin(phi))) / outer
    edge = 1 + 0.35 * facing * near_outer**1.5 - 0.3 * facing * near_inner**1.5
    rings = 1 + 0.025 * np.sin(r * np.float32(2 * np.pi / 1.7) + 1.5 * smooth_noise(rng, s, 6))
    hx, hy = cx + 0.35 * outer * np.cos(phi), cy + 0.35 * outer * np.sin(phi)
    spec = rng.uniform(20, 55) * np.exp(-((xx - hx) ** 2 + (yy - hy) ** 2) / np.float32((0.3 * outer) ** 2))
    metal_l = (base * face * edge * rings + spec) * brightness
    metal = d["metal"] * metal_l[..., None] + sensor_noise(rng, s, rng.uniform(1.5, 3.0))
    image = background * (1 - obj_a)[..., None] + metal * obj_a[..., None]
    return Scene(image, {"background": background, "obj_a": obj_a, "light": metal_l / base})


def _washer_scratch(scene: Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    s = scene.image.shape[0]
    solid = scene.layers["obj_a"] >= 0.999
    x0, y0 = pick_point(rng, solid)
    stroke = path_mask(rng, s, x0, y0, s * lerp(0.06, 0.35, q), wiggle=0.08, thickness=stroke_width(s, q))
    region = stroke & solid
    sign = 1.0 if rng.uniform() < 0.7 else -1.0
    amount = sign * lerp(7, 70, qc) * (0.7 + 0.3 * rng.uniform(size=(s, s, 1)))
    return scene.image + amount, region


def _washer_chip(scene: Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    s = scene.image.shape[0]
    obj_a = scene.layers["obj_a"]
    rim = (obj_a > 0.2) & (obj_a < 0.8)  # antialiased boundary pixels: outer edge, hole edge, key tab
    x0, y0 = pick_point(rng, rim)
    region = blob_mask(rng, s, x0, y0, s * lerp(0.015, 0.08, q), rough=0.6) & (obj_a > 0)
    return scene.layers["background"], region


RUST_COLORS = (
    np.array([150, 72, 30], np.float32),
    np.array([110, 60, 35], np.float32),
    np.array([60, 52, 44], np.float32),  # grime
)


def _washer_rust(scene: Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    s = scene.image.shape[0]
    solid = scene.layers["obj_a"] >= 0.999
    cx, cy = pick_point(rng, solid)
    region = blob_mask(rng, s, cx, cy, s * lerp(0.01, 0.07, q), rough=0.6) & solid
    color = RUST_COLORS[rng.integers(len(RUST_COLORS))] * scene.layers["light"][..., None]
    speckle = np.clip(0.7 + 0.5 * smooth_noise(rng, s, max(4, s // 6)), 0.2, 1.0)[..., None]
    alpha = lerp(0.12, 0.8, qc) * speckle
    return scene.image + alpha * (color - scene.image) + sensor_noise(rng, s, 3.0), region


CATEGORY = Category(
    _washer_design, _washer_render, {"scratch": _washer_scratch, "chip": _washer_chip, "rust": _washer_rust}
)
