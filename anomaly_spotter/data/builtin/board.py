"""`board`: an assembled circuit board; structural defects missing, misplaced, count, color."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from anomaly_spotter.data.builtin.common import (
    Category,
    Rng,
    Scene,
    disc,
    layout_variant,
    lerp,
    lighting,
    local_point,
    paint,
    rot_rect,
    sensor_noise,
)

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


def _board_compose(layers: dict[str, Any], layout: dict[str, dict[str, Any]]) -> np.ndarray:
    """Render the board scene (float RGB, 0..255) for a layout, with the scene's own pose, light, noise."""
    d = layers["design"]
    s = layers["size"]
    k = BOARD_SUPERSAMPLE
    c = k * s
    img = np.empty((c, c, 3), np.float32)
    img[:] = d["background"]
    img = paint(img, rot_rect(c, c / 2, c / 2, 0.86 * c, 0.80 * c, 0.0), d["pcb"])
    trace = np.array(d["pcb"] * 1.35, np.float32)
    silver = np.float32(196)
    for y in (0.50, 0.56):  # fixed copper traces and mounting holes
        img = paint(img, rot_rect(c, 0.55 * c, y * c, 0.62 * c, 0.012 * c, 0.0), trace)
    img = paint(img, rot_rect(c, 0.58 * c, 0.36 * c, 0.012 * c, 0.30 * c, 0.0), trace)
    for hx, hy in ((0.12, 0.15), (0.88, 0.15), (0.12, 0.85), (0.88, 0.85)):
        img = paint(img, disc(c, hx * c, hy * c, 0.035 * c), silver)
        img = paint(img, disc(c, hx * c, hy * c, 0.02 * c), d["background"] * 0.6)
    nominal = _board_nominal()
    # pads and silkscreen outlines stay where the parts belong, so a missing or moved part shows them
    white = np.float32(225)
    cx, cy = (v * c for v in nominal["chip"]["xy"])
    img = paint(img, rot_rect(c, cx, cy, 0.30 * c, 0.25 * c, 0.0), white)
    img = paint(img, rot_rect(c, cx, cy, 0.29 * c, 0.24 * c, 0.0), d["pcb"])
    for name in ("resistor",):
        rx, ry = (v * c for v in nominal[name]["xy"])
        for side in (-1, 1):
            img = paint(img, rot_rect(c, rx + side * 0.13 * c, ry, 0.05 * c, 0.06 * c, 0.0), silver)
    kx, ky = (v * c for v in nominal["capacitor"]["xy"])
    img = paint(img, disc(c, kx, ky, 0.11 * c, max(1, round(0.006 * c))), white)
    for i in range(3):
        lx, ly = (v * c for v in nominal[f"led{i}"]["xy"])
        img = paint(img, rot_rect(c, lx, ly, 0.075 * c, 0.075 * c, 0.0), silver)
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
                px, py = local_point(cx, cy, a, u, row * 0.095 * c)
                img = paint(img, rot_rect(c, px, py, 0.018 * c, 0.05 * c, a), np.float32(170))
        img = paint(img, rot_rect(c, cx, cy, 0.26 * c, 0.15 * c, a), np.float32(28))
        dx, dy = local_point(cx, cy, a, -0.10 * c, -0.04 * c)
        img = paint(img, disc(c, dx, dy, 0.012 * c), np.float32(70))
    res = layout["resistor"]
    if res["present"]:
        rx, ry = (v * c for v in res["xy"])
        a = res["angle"]
        img = paint(img, rot_rect(c, rx, ry, 0.30 * c, 0.012 * c, a), np.float32(185))
        img = paint(img, rot_rect(c, rx, ry, 0.17 * c, 0.065 * c, a), np.array([214, 190, 150], np.float32))
        bands = res.get("bands", d["bands"])
        for j, b in enumerate(bands):
            bx, by = local_point(rx, ry, a, (-0.05 + 0.03 * j + (0.015 if j == 3 else 0)) * c, 0)
            img = paint(img, rot_rect(c, bx, by, 0.014 * c, 0.065 * c, a), BAND_PALETTE[b])
    cap = layout["capacitor"]
    if cap["present"]:
        kx, ky = (v * c for v in cap["xy"])
        a = cap["angle"]
        img = paint(img, disc(c, kx, ky, 0.10 * c), cap.get("body", CAP_BODIES[0]))
        mx, my = local_point(kx, ky, a, 0.075 * c, 0)
        stripe = disc(c, kx, ky, 0.10 * c) * rot_rect(c, mx, my, 0.05 * c, 0.3 * c, a)
        img = paint(img, stripe, np.array([190, 200, 220], np.float32))
        for arm in (0.0, 90.0):
            img = paint(img, rot_rect(c, kx, ky, 0.10 * c, 0.006 * c, a + arm), np.float32(120))
    for i in range(3):
        led = layout[f"led{i}"]
        if not led["present"]:
            continue
        lx, ly = (v * c for v in led["xy"])
        color = LED_COLORS[led["color"]]
        img = paint(img, rot_rect(c, lx, ly, 0.06 * c, 0.06 * c, led["angle"]), color * 0.7)
        img = paint(img, disc(c, lx, ly, 0.018 * c), np.minimum(color * 1.1 + 40, 255))
    mat = cv2.getRotationMatrix2D((c / 2, c / 2), layers["pose_angle"], 1.0)
    mat[:, 2] += layers["pose_shift"]
    img = cv2.warpAffine(img, mat, (c, c), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    img = cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA)
    return img * layers["light"][..., None] + layers["noise"]


def _board_render(rng: Rng, s: int, d: dict[str, Any]) -> Scene:
    k = BOARD_SUPERSAMPLE
    layers = {
        "design": d,
        "size": s,
        "pose_angle": rng.uniform(-2.0, 2.0),
        "pose_shift": rng.uniform(-0.025 * s, 0.025 * s, 2) * k,
        "light": lighting(rng, s, gradient=0.14, unevenness=0.02) * rng.uniform(0.88, 1.1),
        "noise": sensor_noise(rng, s, rng.uniform(1.5, 3.0)),
        "layout": _board_layout(rng),
    }
    return Scene(_board_compose(layers, layers["layout"]), layers)


def _board_variant(
    scene: Scene, rng: Rng, change: Callable[[dict[str, dict[str, Any]]], None]
) -> tuple[np.ndarray, np.ndarray]:
    """Re-render the scene with a changed layout; the region is where a channel moved visibly."""
    return layout_variant(scene, _board_compose, change, BOARD_REGION_DELTA)


def _board_missing(scene: Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    # small parts (an LED) for mild severities, large ones (the chip) for severe ones
    order = ("led0", "led1", "led2", "resistor", "capacitor", "chip")
    part = order[min(len(order) - 1, int(q * len(order)))]

    def change(layout: dict[str, dict[str, Any]]) -> None:
        layout[part]["present"] = False

    return _board_variant(scene, rng, change)


def _board_misplaced(scene: Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    part = ("resistor", "capacitor", "chip")[rng.integers(3)]
    sign = rng.choice([-1.0, 1.0])

    def change(layout: dict[str, dict[str, Any]]) -> None:
        p = layout[part]
        if part == "capacitor" or rng.uniform() < 0.5:  # rotated beyond the tolerance (polarity for caps)
            p["angle"] = p["angle"] + sign * lerp(12.0, 180.0 if part == "capacitor" else 60.0, q)
        else:  # shifted off its footprint
            t = rng.uniform(0, 2 * np.pi)
            dist = lerp(0.012, 0.06, q)
            p["xy"] = (p["xy"][0] + dist * np.cos(t), p["xy"][1] + dist * np.sin(t))

    return _board_variant(scene, rng, change)


def _board_count(scene: Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    pins = scene.layers["design"]["pins"]

    def change(layout: dict[str, dict[str, Any]]) -> None:
        chip = layout["chip"]
        if q < 0.5:  # one pin missing from a row
            chip["gap"] = (int(rng.choice([-1, 1])), int(rng.integers(pins)))
        else:  # a variant of the part with one pin more or fewer per row
            chip["pins"] = pins + int(rng.choice([-1, 1]))

    return _board_variant(scene, rng, change)


def _board_color(scene: Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
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
            layout["capacitor"]["body"] = CAP_BODIES[0] + lerp(0.15, 1.0, qc) ** 1.5 * (other - CAP_BODIES[0])

    return _board_variant(scene, rng, change)


CATEGORY = Category(
    _board_design,
    _board_render,
    {"missing": _board_missing, "misplaced": _board_misplaced, "count": _board_count, "color": _board_color},
)
