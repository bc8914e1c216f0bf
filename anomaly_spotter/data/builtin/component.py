"""`component`: a three-lead part seated in an assembly fixture; structural defects missing, misplaced,
bent_lead and cut_lead (what is where, not what it looks like: MVTec AD's transistor is the real case),
and damaged_case (a piece broken off the plastic)."""

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

SUPERSAMPLE = 2
# good seating tolerance: the part sits within this of its nominal pose in the fixture
SEAT_JITTER_FRAC = 0.01
SEAT_JITTER_DEG = 1.5
REGION_DELTA = 8  # uint8 levels: a layout change counts as defect where a channel moves this much

PART_XY = (0.5, 0.40)  # nominal centre of the part's body, fractions of the image side
SOCKET_PITCH = 0.11
LEAD_U = (-SOCKET_PITCH, 0.0, SOCKET_PITCH)  # the leads' offsets across the part
LEAD_TOP, LEAD_BOTTOM = 0.12, 0.40  # where the leads leave the body and enter their sockets (part frame)
LEAD_WIDTH = 0.032


def _design(rng: Rng, s: int) -> dict[str, Any]:
    return {
        "plate": np.array([176, 172, 160], np.float32) * rng.uniform(0.92, 1.06, 3).astype(np.float32),
        "pocket": np.array([70, 72, 78], np.float32) * rng.uniform(0.9, 1.1, 3).astype(np.float32),
    }


def _good_layout(rng: Rng) -> dict[str, dict[str, Any]]:
    """The part seated within tolerance. Good parts differ as real ones do: the plastic's shade and tint,
    the marking's print, the leads' finish, and each lead slightly bent (a few degrees) somewhere."""
    dx, dy = rng.normal(0.0, SEAT_JITTER_FRAC, 2)
    part = {
        "xy": (PART_XY[0] + dx, PART_XY[1] + dy),
        "angle": float(rng.normal(0.0, SEAT_JITTER_DEG)),
        "present": True,
        "body": np.array([30, 30, 34], np.float32) * rng.uniform(0.7, 1.6) + rng.uniform(-5, 5, 3),
        "metal": float(rng.uniform(0.8, 1.1)),
        "marks": (
            float(rng.uniform(0.10, 0.20)),
            float(rng.uniform(0.05, 0.14)),
            float(rng.uniform(115, 195)),
        ),
    }
    leads = {
        f"lead{i}": {
            "bend_at": float(rng.uniform(0.3, 0.85)),
            "bend_deg": float(rng.normal(0.0, 3.0)),
            "keep": 1.0,
        }
        for i in range(len(LEAD_U))
    }
    return {"part": part, **leads}


def _lead_polyline(c: int, part: dict[str, Any], u: float, lead: dict[str, Any]) -> np.ndarray:
    """The lead's centre line `(n, 2)` in canvas pixels: straight down into its socket, or bent at
    `bend_at` (a fraction of its length) by `bend_deg`, and cut to `keep` of its length."""
    cx, cy = (v * c for v in part["xy"])
    a = part["angle"]
    length = (LEAD_BOTTOM - LEAD_TOP) * c
    keep = lead["keep"] * length
    start = np.array(local_point(cx, cy, a, u * c, LEAD_TOP * c))
    down = np.array([-np.sin(np.deg2rad(a)), np.cos(np.deg2rad(a))])
    if keep <= 0:
        return start[None]
    if lead["bend_at"] is None or lead["bend_at"] * length >= keep:
        return np.stack([start, start + keep * down])
    knee = start + lead["bend_at"] * length * down
    t = np.deg2rad(lead["bend_deg"])
    bent = np.array([down[0] * np.cos(t) - down[1] * np.sin(t), down[0] * np.sin(t) + down[1] * np.cos(t)])
    return np.stack([start, knee, knee + (keep - lead["bend_at"] * length) * bent])


def _stroke(c: int, points: np.ndarray, width: float) -> np.ndarray:
    """Alpha `(c, c)` of a polyline `width` px wide with square segment joints, antialiased."""
    alpha = np.zeros((c, c), np.float32)
    for p, q in zip(points[:-1], points[1:], strict=True):
        (x0, y0), (x1, y1) = p, q
        angle = float(np.degrees(np.arctan2(y1 - y0, x1 - x0)))
        seg = float(np.hypot(x1 - x0, y1 - y0))
        alpha = np.maximum(alpha, rot_rect(c, (x0 + x1) / 2, (y0 + y1) / 2, seg + width * 0.5, width, angle))
    return alpha


def _compose(layers: dict[str, Any], layout: dict[str, dict[str, Any]]) -> np.ndarray:
    """Render the fixture and the part (float RGB, 0..255) with the scene's pose, light and noise."""
    d = layers["design"]
    s = layers["size"]
    c = SUPERSAMPLE * s
    img = np.empty((c, c, 3), np.float32)
    img[:] = d["plate"]
    steel = np.float32(205)
    # the fixture: a wide recessed pocket with a row of five lead sockets (the part uses the middle three,
    # so an empty socket and bare pocket floor are normal sights), locating pins and screws outside it
    px, py = (v * c for v in PART_XY)
    img = paint(img, rot_rect(c, 0.5 * c, 0.50 * c, 0.76 * c, 0.74 * c, 0.0), d["plate"] * 0.8)
    img = paint(img, rot_rect(c, 0.5 * c, 0.50 * c, 0.73 * c, 0.71 * c, 0.0), d["pocket"])
    for k in range(-2, 3):
        sx, sy = px + k * SOCKET_PITCH * c, py + LEAD_BOTTOM * c
        img = paint(img, disc(c, sx, sy, 0.034 * c), steel * 0.85)
        img = paint(img, disc(c, sx, sy, 0.020 * c), d["pocket"] * 0.5)
    for hx, hy in ((0.07, 0.07), (0.93, 0.07), (0.07, 0.93), (0.93, 0.93)):
        img = paint(img, disc(c, hx * c, hy * c, 0.04 * c), steel * 0.9)
        img = paint(img, rot_rect(c, hx * c, hy * c, 0.055 * c, 0.011 * c, 35.0), d["plate"] * 0.45)
    for hx in (0.30, 0.70):
        img = paint(img, disc(c, hx * c, 0.065 * c, 0.02 * c), steel)
    # the part: leads first (the body covers their roots), then the body, its tab and its marking
    part = layout["part"]
    if part["present"]:
        metal = steel * np.float32(part["metal"])
        for i, u in enumerate(LEAD_U):
            line = _lead_polyline(c, part, u, layout[f"lead{i}"])
            if len(line) > 1:  # a lead of length 0 is missing
                img = paint(img, _stroke(c, line, LEAD_WIDTH * c), metal)
        cx, cy = (v * c for v in part["xy"])
        a = part["angle"]
        if part.get("tab", True):  # the metal mounting tab, with its hole
            tx, ty = local_point(cx, cy, a, 0.0, -0.16 * c)
            img = paint(img, rot_rect(c, tx, ty, 0.30 * c, 0.12 * c, a), metal * 0.92)
            img = paint(img, disc(c, tx, ty, 0.03 * c), d["pocket"])
        body = rot_rect(c, cx, cy, 0.32 * c, 0.24 * c, a)
        img = paint(img, body, part["body"])
        if part.get("damage"):  # a piece of the case broken off: the pocket shows through, partly
            u, v, r, depth = part["damage"]
            hx, hy = local_point(cx, cy, a, u * c, v * c)
            img = paint(img, body * disc(c, hx, hy, r * c) * depth, d["pocket"] * 1.1)
        *widths, ink = part["marks"]
        for j, width in enumerate(widths):
            mx, my = local_point(cx, cy, a, -0.03 * c, (-0.035 + 0.05 * j) * c)
            img = paint(img, rot_rect(c, mx, my, width * c, 0.02 * c, a), np.float32(ink))
        dx, dy = local_point(cx, cy, a, 0.11 * c, 0.07 * c)
        img = paint(img, disc(c, dx, dy, 0.014 * c), part["body"] * 2.2 + 20)
    mat = cv2.getRotationMatrix2D((c / 2, c / 2), layers["pose_angle"], 1.0)
    mat[:, 2] += layers["pose_shift"]
    img = cv2.warpAffine(img, mat, (c, c), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    img = cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA)
    return img * layers["light"][..., None] * layers["tint"] + layers["noise"]


def _render(rng: Rng, s: int, d: dict[str, Any]) -> Scene:
    layers = {
        "design": d,
        "size": s,
        "pose_angle": rng.uniform(-2.0, 2.0),  # the fixture in the camera's view
        "pose_shift": rng.uniform(-0.03 * s, 0.03 * s, 2) * SUPERSAMPLE,
        "light": lighting(rng, s, gradient=0.25, unevenness=0.03) * rng.uniform(0.8, 1.18),
        "tint": (1.0 + rng.uniform(-0.05, 0.05, 3)).astype(np.float32),  # the light's colour
        "noise": sensor_noise(rng, s, rng.uniform(1.5, 3.0)),
        "layout": _good_layout(rng),
    }
    return Scene(_compose(layers, layers["layout"]), layers)


def _variant(
    scene: Scene, change: Callable[[dict[str, dict[str, Any]]], None]
) -> tuple[np.ndarray, np.ndarray]:
    return layout_variant(scene, _compose, change, REGION_DELTA)


def _missing(scene: Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    """Something absent: one lead (mild), the metal tab, or the whole part (severe)."""
    lead = f"lead{rng.integers(len(LEAD_U))}"

    def change(layout: dict[str, dict[str, Any]]) -> None:
        if q < 1 / 3:
            layout[lead] = {**layout[lead], "keep": 0.0}
        elif q < 2 / 3:
            layout["part"] = {**layout["part"], "tab": False}
        else:
            layout["part"] = {**layout["part"], "present": False}

    return _variant(scene, change)


def _misplaced(scene: Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    """Shifted off its seat, or turned beyond the tolerance, by a little (q near 0) up to a lot."""
    turn = rng.uniform() < 0.5
    sign = float(rng.choice([-1.0, 1.0]))
    direction = rng.uniform(0, 2 * np.pi)

    def change(layout: dict[str, dict[str, Any]]) -> None:
        part = layout["part"]
        if turn:
            part["angle"] = part["angle"] + sign * lerp(2.0, 30.0, q)
        else:
            dist = lerp(0.015, 0.12, q)
            part["xy"] = (part["xy"][0] + dist * np.cos(direction), part["xy"][1] + dist * np.sin(direction))

    return _variant(scene, change)


def _damaged_case(scene: Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    """A piece broken off the case's edge: small and faint (q, qc near 0) up to large and plain."""
    side = rng.integers(4)
    along = rng.uniform(-0.8, 0.8)
    u, v = [(along * 0.16, -0.12), (along * 0.16, 0.12), (-0.16, along * 0.12), (0.16, along * 0.12)][side]

    def change(layout: dict[str, dict[str, Any]]) -> None:
        layout["part"] = {**layout["part"], "damage": (u, v, lerp(0.02, 0.07, q), lerp(0.5, 1.0, qc))}

    return _variant(scene, change)


def _bent_lead(scene: Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    """One lead bent sideways: a small kink near its tip (q near 0) up to a sharp bend near the body."""
    lead = f"lead{rng.integers(len(LEAD_U))}"
    sign = float(rng.choice([-1.0, 1.0]))

    def change(layout: dict[str, dict[str, Any]]) -> None:
        layout[lead] = {**layout[lead], "bend_at": lerp(0.7, 0.25, q), "bend_deg": sign * lerp(12.0, 60.0, q)}

    return _variant(scene, change)


def _cut_lead(scene: Scene, rng: Rng, q: float, qc: float) -> tuple[np.ndarray, np.ndarray]:
    """One lead cut short: its tip missing from the socket (q near 0) up to a stub at the body."""
    lead = f"lead{rng.integers(len(LEAD_U))}"

    def change(layout: dict[str, dict[str, Any]]) -> None:
        layout[lead] = {**layout[lead], "keep": lerp(0.9, 0.05, q)}

    return _variant(scene, change)


CATEGORY = Category(
    _design,
    _render,
    {
        "missing": _missing,
        "misplaced": _misplaced,
        "bent_lead": _bent_lead,
        "cut_lead": _cut_lead,
        "damaged_case": _damaged_case,
    },
)
