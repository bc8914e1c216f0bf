"""`label`: a printed label on a dark surface; defects misprint, scratch, stain."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from anomaly_spotter.data.builtin.common import (
    SUBPIXEL_SHIFT,
    Category,
    Rng,
    Scene,
    blob_mask,
    lerp,
    lighting,
    path_mask,
    pick_point,
    poly_mask,
    sensor_noise,
    smooth_noise,
    stroke_width,
)

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


def _label_render(rng: Rng, s: int, d: dict[str, Any]) -> Scene:
    k = LABEL_SUPERSAMPLE
    c = k * s
    angle = rng.uniform(-2.5, 2.5)
    shift = rng.uniform(-0.03 * s, 0.03 * s, 2) * k
    paper = _warp(d["paper_layers"], s, angle, shift, (c / 2, c / 2))
    reg_angle = angle + rng.uniform(-0.7, 0.7)
    reg_shift = shift + rng.uniform(-0.012 * s, 0.012 * s, 2) * k
    printed = _warp(d["print_layers"], s, reg_angle, reg_shift, (c / 2, c / 2))
    density = rng.uniform(0.8, 1.0)
    grain = 1 + 0.05 * smooth_noise(rng, s, max(4, s // 4))
    layers = {
        "label_a": paper[..., 0],
        "band_a": paper[..., 1],
        "ink_a": printed[..., 0] * density,
        "knock_a": printed[..., 1] * paper[..., 1],
        "surface_img": d["surface"] * grain[..., None],
        "paper_img": d["paper"] * (1 + 0.015 * smooth_noise(rng, s, 8))[..., None],
        "band": d["band"],
        "white": d["paper"],
        "ink": d["ink"] * rng.uniform(0.8, 1.3),
        "light": lighting(rng, s, gradient=0.14, unevenness=0.02) * rng.uniform(0.88, 1.1),
        "noise": sensor_noise(rng, s, rng.uniform(1.5, 3.5)),
    }
    return Scene(_label_compose(layers, layers["ink_a"]), layers)


def _label_misprint(scene: Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    s = scene.image.shape[0]
    ink_a = scene.layers["ink_a"]
    on_label = scene.layers["label_a"] >= 0.999
    for _ in range(50):
        cx, cy = pick_point(rng, (ink_a > 0.5) & on_label)
        half = s * lerp(0.012, 0.09, q) * rng.uniform(0.6, 1.4, 2)
        box = np.array([[cx - half[0], cy - half[1]], [cx + half[0], cy - half[1]]])
        box = np.vstack([box, [[cx + half[0], cy + half[1]], [cx - half[0], cy + half[1]]]])
        roi = poly_mask(s, box, closed=True, anchor=np.array([cx, cy])) & on_label
        if rng.uniform() < 0.6:  # missing or faded print
            new_ink = ink_a * np.float32(lerp(0.55, 0.0, qc))
        else:  # doubled / smeared print: a shifted ghost copy
            dx, dy = rng.integers(-3, 4, 2) * max(1, round(s / 160))
            ghost = np.roll(ink_a, (int(dy), int(dx)), axis=(0, 1)) * np.float32(lerp(0.3, 0.9, qc))
            new_ink = np.maximum(ink_a, ghost)
        new_ink = np.where(roi, new_ink, ink_a)
        region = roi & (np.abs(new_ink - ink_a) > 0.04)
        if region.any():
            return _label_compose(scene.layers, new_ink), region
    raise AssertionError("misprint: no ink to alter")  # unreachable: the roi is centred on ink


def _label_scratch(scene: Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    s = scene.image.shape[0]
    on_label = scene.layers["label_a"] >= 0.999
    x0, y0 = pick_point(rng, on_label)
    stroke = path_mask(rng, s, x0, y0, s * lerp(0.05, 0.45, q), wiggle=0.06, thickness=stroke_width(s, q))
    alpha = lerp(0.15, 0.85, qc)
    light = scene.layers["light"][..., None]
    if rng.uniform() < 0.5:  # scraped: print and paper go bright
        target = scene.image + alpha * (np.float32(252) * light - scene.image)
    else:  # scuffed: a dark line
        target = scene.image * (1 - 0.6 * alpha)
    return target, stroke & on_label


def _tint_stain(scene: Scene, rng: Rng, strength: float, tints: Sequence[np.ndarray]) -> np.ndarray:
    """The scene multiplied by a tint whose strength varies smoothly inside the stain."""
    s = scene.image.shape[0]
    tint = tints[rng.integers(len(tints))]
    inner = np.clip(0.75 + 0.35 * smooth_noise(rng, s, max(4, s // 10)), 0.3, 1.0)[..., None]
    return scene.image * (1.0 + strength * inner * (tint - 1.0))


LABEL_STAINS = (
    np.array([0.72, 0.55, 0.38], np.float32),  # coffee
    np.array([0.55, 0.62, 0.95], np.float32),  # blue ink
    np.array([0.7, 0.7, 0.66], np.float32),  # grease
)


def _label_stain(scene: Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    s = scene.image.shape[0]
    on_label = scene.layers["label_a"] >= 0.999
    cx, cy = pick_point(rng, on_label)
    region = blob_mask(rng, s, cx, cy, s * lerp(0.015, 0.11, q)) & on_label
    return _tint_stain(scene, rng, lerp(0.1, 0.85, qc), LABEL_STAINS), region


CATEGORY = Category(
    _label_design,
    _label_render,
    {"misprint": _label_misprint, "scratch": _label_scratch, "stain": _label_stain},
)
