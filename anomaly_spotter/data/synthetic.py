"""Synthetic defects for training a reconstruction model to remove defects instead of copying pixels.

The reconstructive half of DRAEM (Zavrtanik et al., ICCV 2021): a good image gets a random-shaped region
filled with foreign content, and the network learns to output the clean image. A region is a blob
(smooth noise, thresholded: DRAEM's) or, for a share `scar_share` of the defects, a scar: a thin curved
stroke, like CutPaste's (Li et al., CVPR 2021), for the scratches, cracks and misprints a blob does not
look like. Scars are off by default (`training.synthetic_scars: 0`): at 0.5 they lifted pill's pixel
AUROC and sank the built-in label's, whose print is made of strokes (docs/detectors.md).
Foreign content is one of: a piece of another training image, a piece of the same image shifted and
turned, or procedural noise (smooth, coloured); it is blended in with an opacity drawn from
[MIN_OPACITY, 1]. Images are normalised float32 `(N, 3, S, S)` in [-1, 1] (`data.images`).
Everything is seeded through the `numpy.random.Generator` passed in.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

MIN_AREA = 0.005  # fraction of the image a region covers: drawn log-uniformly in [MIN_AREA, MAX_AREA]
MAX_AREA = 0.30  # at 0.10, bottle pixel AUROC was 0.74 against 0.87 at 0.30 (docs/detectors.md, issue 10)
MIN_OPACITY = 0.5
SOURCES = ("other_image", "same_image", "noise")
# A scar's length is drawn in [1/8, 1/2] of the side, in 2..5 segments turning up to MAX_TURN radians
# each, MIN_SCAR_WIDTH..side/32 pixels wide.
MAX_TURN = 0.6
MIN_SCAR_WIDTH = 1


def random_region(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random blob-shaped bool mask `(size, size)`: Gaussian-smoothed noise (random scale) above the
    quantile that leaves a random area of MIN_AREA..MAX_AREA, kept to its largest connected part."""
    sigma = rng.uniform(size / 32, size / 8)
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma, mode="wrap")
    area = float(np.exp(rng.uniform(np.log(MIN_AREA), np.log(MAX_AREA))))
    mask = field > np.quantile(field, 1.0 - area)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        mask = labels == (1 + int(np.argmax(sizes)))
    return mask


def random_scar(size: int, rng: np.random.Generator) -> np.ndarray:
    """A thin curved stroke, bool mask `(size, size)`: a polyline from a random point inside the middle
    80 % of the image, of random length, bend and width (module constants). Never empty: it starts
    inside the image."""
    mask = np.zeros((size, size), np.uint8)
    segments = int(rng.integers(2, 6))
    step = rng.uniform(size / 8, size / 2) / segments
    point = rng.uniform(0.1 * size, 0.9 * size, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    points = [point]
    for _ in range(segments):
        angle += rng.uniform(-MAX_TURN, MAX_TURN)
        point = point + step * np.array([np.cos(angle), np.sin(angle)])
        points.append(point)
    width = int(rng.integers(MIN_SCAR_WIDTH, max(MIN_SCAR_WIDTH + 1, size // 32) + 1))
    cv2.polylines(mask, [np.round(np.array(points)).astype(np.int32)], False, 1, thickness=width)
    return mask.astype(bool)


def foreign_content(images: np.ndarray, i: int, rng: np.random.Generator) -> np.ndarray:
    """Content `(3, S, S)` to paste into image `i` of `images` `(N, 3, S, S)`, from a random SOURCE."""
    source = SOURCES[rng.integers(len(SOURCES))]
    size = images.shape[-1]
    if source == "other_image" and len(images) > 1:
        j = (i + 1 + int(rng.integers(len(images) - 1))) % len(images)
        content = images[j]
    elif source in ("other_image", "same_image"):
        content = np.rot90(images[i], int(rng.integers(1, 4)), axes=(1, 2))
    else:
        coarse = rng.standard_normal((3, size, size)).astype(np.float32)
        content = ndimage.gaussian_filter(coarse, (0, rng.uniform(0.5, 4), rng.uniform(0.5, 4)), mode="wrap")
        content = content / (np.abs(content).max() + 1e-6)
    shift = rng.integers(-size // 2, size // 2 + 1, size=2)
    content = np.roll(content, tuple(int(s) for s in shift), axis=(1, 2))
    gain = rng.uniform(0.6, 1.4, size=(3, 1, 1)).astype(np.float32)  # recoloured
    return np.clip(content * gain + rng.uniform(-0.3, 0.3), -1.0, 1.0).astype(np.float32)


def corrupt(
    images: np.ndarray, probability: float, rng: np.random.Generator, scar_share: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Copies of normalised images `(N, 3, S, S)` where each image, with `probability`, gets one synthetic
    defect, a scar with probability `scar_share` and a blob otherwise; returns (corrupted images, defect
    masks `(N, S, S)` bool, all False where untouched)."""
    images = np.asarray(images, dtype=np.float32)
    out = images.copy()
    masks = np.zeros((len(images), images.shape[-2], images.shape[-1]), dtype=bool)
    for i in range(len(images)):
        if rng.random() >= probability:
            continue
        scar = scar_share > 0 and rng.random() < scar_share  # no draw at 0: blob-only runs stay as they were
        region = (random_scar if scar else random_region)(images.shape[-1], rng)
        opacity = rng.uniform(MIN_OPACITY, 1.0)
        content = foreign_content(images, i, rng)
        out[i][:, region] = (1.0 - opacity) * images[i][:, region] + opacity * content[:, region]
        masks[i] = region
    return out, masks
