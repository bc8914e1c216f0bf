"""`sheet`: the built-in high-resolution category (docs/resolution.md).

A machined aluminium sheet as a 3-megapixel inspection camera sees it: 2048 x 1536 pixels (4:3; any size
with `width`, `height`), a brushed surface under uneven light and a grid of drilled holes with a bright
chamfer. Good sheets differ in brushing, light, tint and a few pixels of placement. Its defects are 5 to 20
pixels across, whatever the image size:

- `scratch`: a thin straight mark, 1-2 px wide and 8-20 px long, brighter or darker than the metal;
- `pit`: a dark irregular spot 5-12 px across;
- `stain`: a faint brownish blot 12-20 px across;
- `burr`: a sliver of metal 5-10 px long standing into a hole from its rim (what is where, not a texture).

Squashed to 256 x 256 (the old behaviour, 8 x 6 times smaller) a defect is 1-3 pixels and mostly gone;
worked on at native resolution in windows (`data.resolution: native`) it is whole. Deterministic: every
image comes from (seed, category, split/defect, index) alone, as the other built-in categories.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from anomaly_spotter.core.errors import ConfigError
from anomaly_spotter.data.builtin.common import GOOD, PNG_COMPRESS_LEVEL, Rng, finalize, sample_rng, to_u8

CATEGORY = "sheet"
WIDTH, HEIGHT = 2048, 1536
DEFECTS = ("scratch", "pit", "stain", "burr")
HOLE_GRID = (6, 4)  # columns x rows of drilled holes
HOLE_RADIUS = 0.018  # of the image width (37 px at 2048)
SHIFT = 4  # cv2 drawing: fractional bits for sub-pixel positions


def _design(rng: Rng) -> dict[str, Any]:
    """What every sheet of this seed shares: the metal's colour and the hole pattern (fractions)."""
    cols, rows = HOLE_GRID
    xs = (np.arange(cols) + 0.5) / cols
    ys = (np.arange(rows) + 0.5) / rows
    return {
        "metal": np.array([170, 174, 178], np.float32) * rng.uniform(0.95, 1.05, 3).astype(np.float32),
        "holes": [(0.08 + 0.84 * x, 0.1 + 0.8 * y) for y in ys for x in xs],
    }


def _lighting(rng: Rng, width: int, height: int) -> np.ndarray:
    """Multiplicative light `(H, W)`: a random-direction ramp and a low-frequency unevenness."""
    coarse = rng.standard_normal((5, 6)).astype(np.float32)
    uneven = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    phi = rng.uniform(0, 2 * np.pi)
    x = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    y = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    ramp = (np.cos(phi) * x + np.sin(phi) * y) * np.float32(rng.uniform(0.0, 0.25))
    return (1.0 + ramp + 0.03 * uneven) * np.float32(rng.uniform(0.9, 1.1))


def _brushed(rng: Rng, width: int, height: int) -> np.ndarray:
    """Brushing `(H, W)`: noise streaked along the brushing direction (near horizontal), about unit size."""
    noise = rng.standard_normal((height, width)).astype(np.float32)
    streaks = cv2.blur(noise, (int(rng.integers(31, 61)), 1)) * np.float32(5.0)
    return streaks + 0.3 * noise


def _centre(hole: tuple[float, float], width: int, offset: np.ndarray, height: int) -> tuple[float, float]:
    return hole[0] * width + offset[0], hole[1] * height + offset[1]


def _render(rng: Rng, width: int, height: int, design: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """A good sheet: float RGB `(H, W, 3)` on a 0..255 scale, and where its holes are."""
    light = _lighting(rng, width, height)
    metal = design["metal"] * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    brushing = _brushed(rng, width, height) * np.float32(rng.uniform(0.8, 1.2))
    image = (metal[None, None, :] + brushing[..., None] * 1.6) * light[..., None]
    offset = rng.uniform(-SHIFT, SHIFT, 2)  # the sheet's placement in the fixture, in pixels
    radius = HOLE_RADIUS * width
    holes = [_centre(h, width, offset, height) for h in design["holes"]]
    canvas = np.zeros((height, width), np.float32)
    ring = np.zeros((height, width), np.float32)
    scale = 1 << SHIFT
    for cx, cy in holes:
        centre = (round(cx * scale), round(cy * scale))
        cv2.circle(ring, centre, round((radius + 5) * scale), 1.0, -1, cv2.LINE_AA, SHIFT)
        cv2.circle(canvas, centre, round(radius * scale), 1.0, -1, cv2.LINE_AA, SHIFT)
    chamfer = np.clip(ring - canvas, 0, 1)[..., None]
    image = image * (1 - chamfer) + np.float32(230) * chamfer * light[..., None]
    inside = canvas[..., None]
    image = image * (1 - inside) + np.float32(28) * inside
    image += rng.normal(0, 1.8, (height, width, 1)).astype(np.float32)
    return image, {"holes": holes, "radius": radius}


def _free_point(rng: Rng, width: int, height: int, layers: dict[str, Any], margin: float) -> np.ndarray:
    """A point on bare metal: away from the border and from every hole's chamfer."""
    for _ in range(1000):
        p = rng.uniform([margin, margin], [width - margin, height - margin])
        if all(np.hypot(*(p - h)) > layers["radius"] + 8 + margin for h in layers["holes"]):
            return p
    raise RuntimeError("no free point on the sheet")  # pragma: no cover - the holes cover under 10 %


def _mask_of(draw: Any, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    draw(mask)
    return mask > 0


def _scratch(image: np.ndarray, rng: Rng, q: float, layers: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    length = 8 + 12 * q
    p = _free_point(rng, w, h, layers, 24)
    a = rng.uniform(0, np.pi)
    d = np.array([np.cos(a), np.sin(a)]) * length / 2
    ends = [tuple(int(v) for v in np.rint((p + s * d) * (1 << SHIFT))) for s in (-1, 1)]
    thickness = int(rng.integers(1, 3))
    region = _mask_of(lambda m: cv2.line(m, *ends, 255, thickness, cv2.LINE_8, SHIFT), h, w)
    target = image.copy()
    target[region] += np.float32(rng.choice([-1, 1]) * (30 + 30 * q))
    return target, region


def _pit(image: np.ndarray, rng: Rng, q: float, layers: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    size = 5 + 7 * q
    p = _free_point(rng, w, h, layers, 24)
    theta = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    rad = size / 2 * rng.uniform(0.7, 1.0, 16)
    points = np.stack([p[0] + rad * np.cos(theta), p[1] + rad * np.sin(theta)], axis=1)
    pts = np.rint(points * (1 << SHIFT)).astype(np.int32)[:, None]
    region = _mask_of(lambda m: cv2.fillPoly(m, [pts], 255, cv2.LINE_8, SHIFT), h, w)
    target = image.copy()
    target[region] = target[region] * np.float32(0.45 - 0.2 * q)
    return target, region


def _stain(image: np.ndarray, rng: Rng, q: float, layers: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    size = 12 + 8 * q
    p = _free_point(rng, w, h, layers, 32)
    axes = (round(size / 2 * (1 << SHIFT)), round(size / 2 * rng.uniform(0.6, 1.0) * (1 << SHIFT)))
    centre = tuple(int(v) for v in np.rint(p * (1 << SHIFT)))
    angle = float(rng.uniform(0, 180))
    region = _mask_of(lambda m: cv2.ellipse(m, centre, axes, angle, 0, 360, 255, -1, cv2.LINE_8, SHIFT), h, w)
    target = image.copy()
    tint = np.array([0.82, 0.74, 0.6], np.float32) ** (0.6 + 0.6 * q)
    target[region] = target[region] * tint
    return target, region


def _burr(image: np.ndarray, rng: Rng, q: float, layers: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    cx, cy = layers["holes"][int(rng.integers(len(layers["holes"])))]
    a = rng.uniform(0, 2 * np.pi)
    length = 5 + 5 * q
    r = layers["radius"]
    start = np.array([cx, cy]) + np.array([np.cos(a), np.sin(a)]) * (r + 1)
    end = np.array([cx, cy]) + np.array([np.cos(a), np.sin(a)]) * (r + 1 - length)
    side = np.array([-np.sin(a), np.cos(a)]) * rng.uniform(1.5, 3.0)
    points = np.stack([start - side, start + side, end])
    pts = np.rint(points * (1 << SHIFT)).astype(np.int32)[:, None]
    region = _mask_of(lambda m: cv2.fillPoly(m, [pts], 255, cv2.LINE_8, SHIFT), h, w)
    target = image.copy()
    target[region] = np.float32(200 + 30 * q)
    return target, region


DEFECT_FNS = {"scratch": _scratch, "pit": _pit, "stain": _stain, "burr": _burr}


def render_sample(
    seed: int,
    split: str,
    defect: str,
    index: int,
    width: int = WIDTH,
    height: int = HEIGHT,
    n_per_defect: int = 8,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One image `(H, W, 3)` uint8 and its mask (None for a good one)."""
    design = _design(sample_rng(seed, CATEGORY, "design", 0))
    rng = sample_rng(seed, CATEGORY, f"{split}/{defect}", index)
    image, layers = _render(rng, width, height, design)
    clean = to_u8(image)
    if defect == GOOD:
        return clean, None
    q = (index + 0.5) / max(n_per_defect, 1)  # severities spread evenly over the type's images
    target, region = DEFECT_FNS[defect](image, rng, float(q), layers)
    return finalize(clean, target, region), region


def generate_sheet(
    root: Path,
    seed: int = 42,
    n_train: int = 60,
    n_test_good: int = 12,
    n_test_per_defect: int = 8,
    width: int = WIDTH,
    height: int = HEIGHT,
    progress: bool = True,
) -> Path:
    """Write (replacing atomically) `<root>/sheet` in the MVTec AD layout; returns that folder."""
    if min(width, height) < 256 or max(width, height) > 8192:
        raise ConfigError(f"sheet images must be 256 to 8192 pixels a side, got {width}x{height}")
    if min(n_train, n_test_good, n_test_per_defect) < 1:
        raise ConfigError("sheet needs at least one image of each kind (train, test good, per defect)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [("train", GOOD, i) for i in range(n_train)] + [("test", GOOD, i) for i in range(n_test_good)]
    jobs += [("test", d, i) for d in DEFECTS for i in range(n_test_per_defect)]
    tmp = Path(tempfile.mkdtemp(prefix=f".{CATEGORY}.", suffix=".tmp", dir=root))
    try:
        for split, defect, index in tqdm(jobs, desc=f"builtin {CATEGORY}", unit="img", disable=not progress):
            image, mask = render_sample(seed, split, defect, index, width, height, n_test_per_defect)
            out = tmp / split / defect
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(out / f"{index:03d}.png", compress_level=PNG_COMPRESS_LEVEL)
            if mask is not None:
                gt = tmp / "ground_truth" / defect
                gt.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255).save(gt / f"{index:03d}_mask.png")
        final = root / CATEGORY
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
