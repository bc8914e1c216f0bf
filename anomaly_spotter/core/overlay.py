"""Annotated overlays a person can compare: one colour scale per category, the verdict written on it.

The same picture comes out of `anomaly-spotter predict --out`, the served model's `return_map` (base64
PNG column `overlay`) and the `visualize` stage's example panels:

- the raw map is coloured on one scale per category (`MapScale`): pixels at or below the pixel threshold
  are left transparent, pixels above it go pale yellow -> orange -> red -> dark red. When the image
  score is the map maximum (`process.image_score: max`) the image threshold sits at the middle of the
  warm range, so red means "this pixel alone makes the part defective" (still true when a unet_ae
  scores a less smoothed copy of the map, `score_sigma` < `sigma`: smoothing only lowers a peak);
- the predicted region (`anomaly_map.RegionRule`) is outlined in cyan; a part judged defective with an
  empty region (its image threshold is below the pixel threshold) gets its peak circled instead;
- a header says the verdict, the score against the image threshold and the region's share of pixels;
- a colour bar on the right shows the scale in map units, with both thresholds marked.

Only NumPy, Pillow and SciPy: the served model renders it without OpenCV or matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from anomaly_spotter.core.anomaly_map import region_percentage

# Matplotlib's YlOrRd from its second entry (the first is almost white), as RGB anchors.
WARM_ANCHORS = np.array(
    [
        [255, 237, 160],
        [254, 217, 118],
        [254, 178, 76],
        [253, 141, 60],
        [252, 78, 42],
        [227, 26, 28],
        [189, 0, 38],
        [128, 0, 38],
    ],
    dtype=np.float32,
)
HEAT_ALPHA = 0.6
OUTLINE_RGB = (0, 255, 255)
DEFECTIVE_RGB = (200, 30, 30)
GOOD_RGB = (30, 140, 60)
MIN_SIDE = 320  # overlays of small images are upsampled to this longest side, so the text stays legible
MAX_SIDE = 1024  # and large ones downsampled to this
HEADER_PX = 46
BAR_PX = 96
FONT_PX = 14


@dataclass(frozen=True)
class MapScale:
    """One category's colour scale for raw maps: transparent up to `low`, warm from `low` to `high`.

    `pixel_threshold` and `image_threshold` are marked on the colour bar (the latter only when the image
    score is in map units, i.e. the map maximum). `per_image` marks a fallback scale (a model saved
    without a pixel calibration), labelled as such on the overlay.
    """

    low: float
    high: float
    pixel_threshold: float | None = None
    image_threshold: float | None = None
    per_image: bool = False

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high) and self.high > self.low):
            raise ValueError(f"colour scale needs finite low < high, got {self.low}, {self.high}")

    @classmethod
    def for_category(
        cls, pixel_threshold: float, good_max: float, image_threshold: float, reduction: str
    ) -> MapScale:
        """The category's scale: from the pixel threshold to twice the distance to the image threshold
        (image score = map max) or else to the highest validation good pixel (`good_max`)."""
        in_map_units = reduction == "max"
        anchor = image_threshold if in_map_units and image_threshold > pixel_threshold else good_max
        span = anchor - pixel_threshold
        if not span > 0:
            span = max(abs(pixel_threshold), 1.0)
        return cls(
            pixel_threshold,
            pixel_threshold + 2.0 * span,
            pixel_threshold,
            image_threshold if in_map_units else None,
        )

    @classmethod
    def of_map(cls, raw_map: np.ndarray) -> MapScale:
        """A per-image scale (min to max of this map): only for models without a pixel calibration."""
        lo, hi = float(np.min(raw_map)), float(np.max(raw_map))
        return cls(lo, hi if hi > lo else lo + 1.0, per_image=True)

    def normalise(self, values: np.ndarray) -> np.ndarray:
        """`values` mapped to [0, 1] on this scale (clipped)."""
        return np.clip((np.asarray(values, np.float32) - self.low) / (self.high - self.low), 0.0, 1.0)


def category_scale(
    pixel_threshold: float | None,
    good_max: float | None,
    image_threshold: float,
    reduction: str,
    raw_map: np.ndarray,
) -> MapScale:
    """`MapScale.for_category`, or a per-image scale of `raw_map` when the model has no calibration."""
    if pixel_threshold is None or good_max is None:
        return MapScale.of_map(raw_map)
    return MapScale.for_category(pixel_threshold, good_max, image_threshold, reduction)


def warm_colours(t: np.ndarray) -> np.ndarray:
    """RGB float `(..., 3)` in [0, 255] of positions `t` in [0, 1] on the warm colour ramp."""
    pos = np.clip(np.asarray(t, np.float32), 0.0, 1.0) * (len(WARM_ANCHORS) - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, len(WARM_ANCHORS) - 1)
    frac = (pos - lo)[..., None]
    return WARM_ANCHORS[lo] * (1.0 - frac) + WARM_ANCHORS[hi] * frac


def display_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) the overlay shows an image at: longest side clamped to [MIN_SIDE, MAX_SIDE]."""
    longest = max(height, width)
    factor = min(max(longest, MIN_SIDE), MAX_SIDE) / longest
    return max(1, round(height * factor)), max(1, round(width * factor))


def _resize_float(values: np.ndarray, height: int, width: int) -> np.ndarray:
    img = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32), mode="F")
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def _resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest neighbour when enlarging; when shrinking (a high-resolution image shown at the display cap)
    a display pixel is in the region if any pixel under it is, so a region of a few pixels keeps its
    outline."""
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    if height < mask.shape[0] or width < mask.shape[1]:
        return np.asarray(img.resize((width, height), Image.Resampling.BOX)) > 0
    return np.asarray(img.resize((width, height), Image.Resampling.NEAREST)) > 127


def heat_layer(image: np.ndarray, raw_map: np.ndarray, scale: MapScale) -> np.ndarray:
    """`image` RGB uint8 `(H, W, 3)` with the warm colours of `raw_map` `(H, W)` blended in where the
    map is above `scale.low`; below it the image is untouched."""
    colours = warm_colours(scale.normalise(raw_map))
    alpha = np.where(raw_map > scale.low, HEAT_ALPHA, 0.0).astype(np.float32)[..., None]
    out = image.astype(np.float32) * (1.0 - alpha) + colours * alpha
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def outline_at(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """The outline of `mask` resized to a (height, width) display, as thick as the overlay draws it."""
    return _outline(_resize_mask(mask, height, width), max(1, min(height, width) // 160))


def _outline(mask: np.ndarray, thickness: int) -> np.ndarray:
    inner = ndimage.binary_erosion(mask, iterations=thickness, border_value=0)
    return mask & ~inner


def _font(size: int = FONT_PX) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size)


def render_overlay(
    image: np.ndarray,
    raw_map: np.ndarray,
    region: np.ndarray,
    scale: MapScale,
    score: float,
    threshold: float,
    title: str = "",
) -> np.ndarray:
    """The annotated overlay, RGB uint8 `(HEADER_PX + h, w + BAR_PX, 3)`.

    image: RGB uint8 `(H, W, 3)` at any size; raw_map `(h, w)` float and region `(h, w)` bool at the
    model's size (resized onto the image). The verdict is "DEFECTIVE" iff score > threshold. `title`
    (e.g. the file name) goes on the header's second line, before the region's share of pixels.
    """
    image = np.asarray(image)
    raw_map = np.asarray(raw_map, dtype=np.float32)
    region = np.asarray(region, dtype=bool)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if raw_map.ndim != 2 or region.shape != raw_map.shape:
        raise ValueError(f"raw_map {raw_map.shape} and region {region.shape} must be the same (h, w)")
    height, width = display_size(*image.shape[:2])
    shown = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
    big_map = _resize_float(raw_map, height, width)
    picture = heat_layer(shown, big_map, scale)
    picture[outline_at(region, height, width)] = OUTLINE_RGB

    canvas = Image.new("RGB", (width + BAR_PX, height + HEADER_PX), (255, 255, 255))
    canvas.paste(Image.fromarray(picture), (0, HEADER_PX))
    draw = ImageDraw.Draw(canvas)
    defective = float(score) > float(threshold)
    verdict = "DEFECTIVE" if defective else "GOOD"
    colour = DEFECTIVE_RGB if defective else GOOD_RGB
    draw.rectangle((0, 0, width + BAR_PX, HEADER_PX - 1), fill=colour)
    font = _font()
    draw.text(
        (6, 4),
        f"{verdict}  score {score:.3f} {'>' if defective else '<='} threshold {threshold:.3f}",
        fill=(255, 255, 255),
        font=font,
    )
    share = region_percentage(region)
    where = f"{title}  " if title else ""
    note = f"region {share:.2f}% of pixels"
    if defective and not region.any():
        # flagged by its score, yet no pixel passes the pixel threshold (the image threshold is below
        # it): circle the peak, so the overlay never shows a defective part with nothing marked
        y, x = np.unravel_index(int(np.argmax(big_map)), big_map.shape)
        r = max(6, min(height, width) // 24)
        draw.ellipse((x - r, y + HEADER_PX - r, x + r, y + HEADER_PX + r), outline=OUTLINE_RGB, width=2)
        note = "no pixel above the pixel threshold; peak circled"
    draw.text((6, 24), f"{where}{note}", fill=(255, 255, 255), font=_font(12))
    _colour_bar(draw, scale, width, HEADER_PX, height)
    return np.asarray(canvas)


def _colour_bar(draw: ImageDraw.ImageDraw, scale: MapScale, left: int, top: int, height: int) -> None:
    """The scale as a vertical ramp (high at the top) with the thresholds marked, right of the picture."""
    x0, x1 = left + 8, left + 24
    pad = 10
    y_top, y_bottom = top + pad, top + height - pad
    span = max(1, y_bottom - y_top)
    for y in range(y_top, y_bottom + 1):
        t = 1.0 - (y - y_top) / span
        draw.line((x0, y, x1, y), fill=tuple(int(c) for c in warm_colours(np.float32(t))))
    draw.rectangle((x0, y_top, x1, y_bottom), outline=(80, 80, 80))
    font = _font(11)

    def y_of(value: float) -> int:
        return round(y_bottom - float(scale.normalise(np.float32(value))) * span)

    draw.text((x1 + 4, y_top - 6), f"{scale.high:.3g}", fill=(0, 0, 0), font=font)
    low_label = "per-image" if scale.per_image else f"pixel thr\n{scale.low:.3g}"
    draw.text((x1 + 4, y_bottom - 26), low_label, fill=(0, 0, 0), font=font)
    if scale.image_threshold is not None and scale.low < scale.image_threshold < scale.high:
        y = y_of(scale.image_threshold)
        draw.line((x0 - 4, y, x1 + 2, y), fill=(0, 0, 0), width=2)
        draw.text((x1 + 4, y - 12), f"image thr\n{scale.image_threshold:.3g}", fill=(0, 0, 0), font=font)
    elif scale.image_threshold is not None and scale.image_threshold <= scale.low:
        label = f"image thr\n{scale.image_threshold:.3g}\n(below)"
        draw.text((x1 + 4, y_bottom - 72), label, fill=(0, 0, 0), font=font)
