"""How an image of any size and shape reaches a detector, and how its anomaly map comes back
(params.yaml `data.image_size`, `data.resolution`, `data.overlap`; docs/resolution.md).

A detector sees square windows ("tiles") of `data.image_size` pixels, never a squashed image:

1. The **working image**: the image scaled, aspect ratio kept, so that its short side is
   `data.resolution` pixels (null: `data.image_size`, so a square image is one window at the detector's
   size, as before tiling existed; `native`: the image as photographed).
2. The **canvas**: a category's working size, from its training images (the most common size). Each image
   is fitted into it and every image of the category shares one window layout. A category's images all
   have its aspect ratio (prepare checks); an image scored later with another one (predict, the served
   model) is padded at the sides, centred, by repeating its edge pixels, and its map is cut back to where
   the image lies (`box`), so it is never stretched.
3. **Windows** of the tile size cover the canvas, evenly spaced, each sharing at least `data.overlap`
   of its side with its neighbour (a 4:3 image at the default resolution: two windows).
4. Each window's map is **blended** into one map at the canvas's resolution: a weighted mean whose
   weights ramp linearly across the overlap, so no seam shows and a pixel covered by one window keeps
   that window's value. The image score is taken from the blended map, inside the box.

A square image at the default resolution is one window equal to the resized image: scores and maps are
exactly what they were before tiling existed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from anomaly_spotter.core.anomaly_map import image_scores
from anomaly_spotter.core.config import NATIVE, check_overlap
from anomaly_spotter.core.errors import ConfigError
from anomaly_spotter.core.scoring import score_batches

if TYPE_CHECKING:  # annotations only
    from anomaly_spotter.detectors.base import Detector

# Key of the geometry in a saved detector file (`Detector.save`, `detectors.load_detector`)
GEOMETRY_KEY = "geometry"
# an image whose aspect ratio is within 1 % of the canvas's fills it (a rounding of its size, not a shape)
ASPECT_TOLERANCE = 0.01
# the smallest blending weight (the canvas's own border, covered by one window): never zero
MIN_WEIGHT = 1e-3

Box = tuple[int, int, int, int]  # (top, left, height, width) of the image inside the canvas


def positions(length: int, tile: int, overlap: float) -> list[int]:
    """Starts of the windows covering `length` pixels with windows of `tile`, evenly spaced and each
    sharing at least `overlap` of its side with the next: `[0, ..., length - tile]` (`[0]` if it fits)."""
    if length <= tile:
        return [0]
    stride = max(1.0, tile * (1.0 - overlap))
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _ramp(tile: int, start: int, stop: int, prev_end: int | None, next_start: int | None) -> np.ndarray:
    """1-D blending weights of a window `[start, stop)`: rising across the overlap with the previous window
    (which ends at `prev_end`), falling across the overlap with the next one (which starts at
    `next_start`), 1 elsewhere, never below MIN_WEIGHT."""
    x = np.arange(start, stop, dtype=np.float64) + 0.5
    w = np.ones(tile)
    if prev_end is not None and prev_end > start:
        w = np.minimum(w, (x - start) / (prev_end - start))
    if next_start is not None and next_start < stop:
        w = np.minimum(w, (stop - x) / (stop - next_start))
    return np.maximum(w, MIN_WEIGHT).astype(np.float32)


def _axis_weights(starts: list[int], tile: int) -> list[np.ndarray]:
    out = []
    for i, s in enumerate(starts):
        prev_end = starts[i - 1] + tile if i > 0 else None
        next_start = starts[i + 1] if i + 1 < len(starts) else None
        out.append(_ramp(tile, s, s + tile, prev_end, next_start))
    return out


@dataclass(frozen=True)
class Geometry:
    """A category's canvas `(height, width)` and the square windows of `tile` pixels that cover it.

    Saved with the model (`to_dict`): every path that scores (process_all, predict, the served model,
    score-spark, the exported model) fits images into the same canvas and blends the same windows."""

    tile: int
    canvas: tuple[int, int]
    overlap: float = 0.25

    def __post_init__(self) -> None:
        object.__setattr__(self, "canvas", (int(self.canvas[0]), int(self.canvas[1])))
        check_overlap(self.overlap)
        if self.tile < 1 or min(self.canvas) < self.tile:
            raise ConfigError(
                f"a canvas of {self.canvas[1]}x{self.canvas[0]} cannot hold windows of {self.tile} pixels; "
                "raise data.resolution or lower data.image_size"
            )

    @classmethod
    def square(cls, size: int) -> Geometry:
        """One window of `size`: the whole (square) image at the detector's size."""
        return cls(size, (size, size), 0.25)

    @classmethod
    def for_size(
        cls, width: int, height: int, tile: int, resolution: int | None | str = None, overlap: float = 0.25
    ) -> Geometry:
        """The canvas of images `width` x `height`: scaled (aspect kept) so the short side is `resolution`
        (None: `tile`; NATIVE: as they are, or up to `tile` if smaller)."""
        short = min(width, height)
        if resolution is None:
            target = tile
        elif resolution == NATIVE:
            target = max(short, tile)
        else:
            target = max(int(resolution), tile)
        scale = target / short
        canvas = (max(tile, round(height * scale)), max(tile, round(width * scale)))
        return cls(tile, canvas, overlap)

    @property
    def rows(self) -> list[int]:
        return positions(self.canvas[0], self.tile, self.overlap)

    @property
    def cols(self) -> list[int]:
        return positions(self.canvas[1], self.tile, self.overlap)

    @property
    def n_windows(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def single(self) -> bool:
        """True when the canvas is one window: images go to the detector whole."""
        return self.canvas == (self.tile, self.tile)

    def windows(self) -> list[tuple[int, int]]:
        """(top, left) of every window, row by row."""
        return [(r, c) for r in self.rows for c in self.cols]

    def fills(self, width: int, height: int) -> bool:
        """True when an image of this size fills the canvas: its aspect ratio is the canvas's within
        ASPECT_TOLERANCE (it is then resized to the whole canvas, stretched by less than that)."""
        ch, cw = self.canvas
        return abs(math.log((width / height) / (cw / ch))) <= ASPECT_TOLERANCE

    def box(self, width: int, height: int) -> Box:
        """Where an image `width` x `height` lies in the canvas once fitted (aspect kept, centred; all of
        it when the image `fills` the canvas)."""
        ch, cw = self.canvas
        if self.fills(width, height):
            return 0, 0, ch, cw
        scale = min(ch / height, cw / width)
        h, w = min(ch, max(1, round(height * scale))), min(cw, max(1, round(width * scale)))
        return (ch - h) // 2, (cw - w) // 2, h, w

    def fit(self, image: np.ndarray) -> tuple[np.ndarray, Box]:
        """uint8 RGB `(H, W, 3)` -> the canvas image `(Hc, Wc, 3)` and the image's box in it. Resized with
        Pillow's bilinear filter (antialiased when shrinking), as the original's torchvision Resize; the
        sides of another aspect ratio are padded with the image's edge pixels."""
        top, left, h, w = box = self.box(image.shape[1], image.shape[0])
        if image.shape[:2] != (h, w):
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
        if (h, w) == self.canvas:
            return image, box
        ch, cw = self.canvas
        padded = cv2.copyMakeBorder(
            np.ascontiguousarray(image), top, ch - h - top, left, cw - w - left, cv2.BORDER_REPLICATE
        )
        return padded, box

    def fit_mask(self, mask: np.ndarray) -> np.ndarray:
        """A bool mask `(H, W)` of an image -> `(Hc, Wc)` lined up with `fit`'s canvas (nearest
        neighbour; False in the padding)."""
        top, left, h, w = self.box(mask.shape[1], mask.shape[0])
        if mask.shape != (h, w):
            resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)
            mask = np.asarray(resized) > 127
        out = np.zeros(self.canvas, dtype=bool)
        out[top : top + h, left : left + w] = mask
        return out

    def cut(self, canvases: np.ndarray) -> np.ndarray:
        """Canvas images `(N, Hc, Wc, C)` -> windows `(N * n_windows, tile, tile, C)`, image by image."""
        if self.single:
            return np.asarray(canvases)
        return np.concatenate([self.cut_one(np.asarray(c), 0, self.n_windows) for c in canvases])

    def cut_one(self, canvas: np.ndarray, first: int, count: int) -> np.ndarray:
        """Windows `first` to `first + count` of one canvas image `(Hc, Wc, C)`: `(count, tile, tile, C)`."""
        t = self.tile
        return np.stack([canvas[r : r + t, k : k + t] for r, k in self.windows()[first : first + count]])

    def to_dict(self) -> dict[str, Any]:
        return {"tile": self.tile, "canvas": list(self.canvas), "overlap": self.overlap}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Geometry:
        return cls(int(raw["tile"]), tuple(raw["canvas"]), float(raw["overlap"]))

    def describe(self) -> str:
        ch, cw = self.canvas
        if self.single:
            return f"whole image at {cw}x{ch}"
        return (
            f"{self.n_windows} windows of {self.tile} px ({len(self.rows)} x {len(self.cols)}, overlap >= "
            f"{self.overlap:g}) on a {cw}x{ch} canvas"
        )


def scoring_geometry(detector: Any, size: int) -> Geometry:
    """The geometry a fitted detector scores with: the one saved with it (`Detector.geometry_`), or, for a
    model saved before canvases existed, whole square images of `size`."""
    geometry = getattr(detector, "geometry_", None)
    return geometry if geometry is not None else Geometry.square(size)


class Blend:
    """A canvas map built window by window (`add`), so memory holds the canvas, not every window's map."""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry
        self.total = np.zeros(geometry.canvas, np.float32)
        self.weight = np.zeros(geometry.canvas, np.float32)
        self.rows, self.cols = (
            _axis_weights(geometry.rows, geometry.tile),
            _axis_weights(geometry.cols, geometry.tile),
        )
        self.windows = geometry.windows()

    def add(self, first: int, tile_maps: np.ndarray) -> None:
        """The maps `(k, tile, tile)` of windows `first` to `first + k`."""
        t, n_cols = self.geometry.tile, len(self.cols)
        for i, m in enumerate(tile_maps, start=first):
            r, k = self.windows[i]
            w = np.outer(self.rows[i // n_cols], self.cols[i % n_cols])
            self.total[r : r + t, k : k + t] += w * m
            self.weight[r : r + t, k : k + t] += w

    def result(self) -> np.ndarray:
        return self.total / self.weight


def common_size(sizes: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """The most common `(width, height)` of a category's images (the first seen on a tie)."""
    counts = Counter(sizes)
    if not counts:
        raise ValueError("no image sizes to choose a canvas from")
    return counts.most_common(1)[0][0]


def crop(array: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """The part of a canvas-sized array `(Hc, Wc, ...)` inside `box`."""
    top, left, h, w = (int(v) for v in box)
    return array[top : top + h, left : left + w]


def score_canvases(
    detector: Detector,
    canvases: np.ndarray,
    geometry: Geometry,
    batch_size: int,
    reduction: str,
    boxes: Sequence[Box] | None = None,
    progress: bool = False,
    desc: str = "score",
) -> tuple[np.ndarray, np.ndarray]:
    """Raw maps `(N, Hc, Wc)` float32 and image scores `(N,)` of canvas images `(N, Hc, Wc, 3)` uint8.

    Windows go through the detector in batches of `batch_size`; their maps (and score maps,
    `Detector.maps_and_score_maps`) are blended (`Blend`); the score is `reduction` of the blended
    score map inside the image's box (`boxes`; None: the whole canvas). A one-window geometry batches
    whole images; otherwise one image's windows at a time, so memory holds one canvas's maps, whatever
    the number of images."""
    if geometry.single:  # whole images: batches of images
        return score_batches(detector, canvases, batch_size, reduction, progress, desc, boxes)
    n = len(canvases)
    maps = np.empty((n, *geometry.canvas), dtype=np.float32)
    scores = np.empty(n, dtype=np.float32)
    split = getattr(detector, "maps_and_score_maps", None)

    def run(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The detector's maps of windows and their score maps (None when they are the maps)."""
        m, sm = split(windows) if split else (detector.anomaly_maps(windows),) * 2
        return np.asarray(m, np.float32), None if sm is m else np.asarray(sm, np.float32)

    def score(i: int, score_map: np.ndarray) -> float:
        return image_scores((score_map if boxes is None else crop(score_map, boxes[i]))[None], reduction)[0]

    for i in tqdm(range(n), desc=desc, unit="img", disable=not progress):  # one image, window batches
        canvas = np.asarray(canvases[i])
        blend, score_blend = Blend(geometry), None
        for first in range(0, geometry.n_windows, batch_size):
            window_maps, score_maps = run(geometry.cut_one(canvas, first, batch_size))
            blend.add(first, window_maps)
            if score_maps is not None:  # a detector whose score maps differ (unet_ae score_sigma)
                score_blend = score_blend or Blend(geometry)
                score_blend.add(first, score_maps)
        maps[i] = blend.result()
        scores[i] = score(i, maps[i] if score_blend is None else score_blend.result())
    return maps, scores
