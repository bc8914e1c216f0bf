"""data/geometry.py: canvases, windows and blending (how any image reaches a detector and comes back)."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_spotter.core.config import NATIVE, check_resolution
from anomaly_spotter.core.errors import ConfigError
from anomaly_spotter.data.geometry import Blend, Geometry, common_size, crop, positions, score_canvases
from anomaly_spotter.data.images import resize_rgb


class PixelDetector:
    """A detector whose map is a pixel's own value (mean of its channels): blending windows must give back
    exactly what the detector gives the whole canvas."""

    def anomaly_maps(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(images, np.float32).mean(axis=3)


class TwoMapDetector(PixelDetector):
    """Its image score is reduced from a second map (as unet_ae's score_sigma copy): the negated pixel."""

    def maps_and_score_maps(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps = self.anomaly_maps(images)
        return maps, -maps


def _blend(geometry: Geometry, tile_maps: np.ndarray) -> np.ndarray:
    blend = Blend(geometry)
    blend.add(0, tile_maps)
    return blend.result()


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_square_images_are_one_window_identical_to_the_old_resize() -> None:
    geometry = Geometry.for_size(256, 256, 160)
    assert geometry.single and geometry.canvas == (160, 160) and geometry.n_windows == 1
    image = _image(256, 256)
    canvas, box = geometry.fit(image)
    np.testing.assert_array_equal(canvas, resize_rgb(image, 160))
    assert box == (0, 0, 160, 160)
    assert geometry.describe() == "whole image at 160x160"


def test_canvas_keeps_the_aspect_ratio() -> None:
    default = Geometry.for_size(2048, 1536, 256)  # short side at the tile: two overlapping windows
    assert default.canvas == (256, 341) and default.cols == [0, 85] and default.rows == [0]
    native = Geometry.for_size(2048, 1536, 256, NATIVE, 0.25)
    assert native.canvas == (1536, 2048)
    assert (len(native.rows), len(native.cols)) == (8, 11) and native.n_windows == 88
    assert Geometry.for_size(2048, 1536, 256, 768).canvas == (768, 1024)
    assert Geometry.for_size(100, 80, 128, NATIVE).canvas == (128, 160)  # never below a window


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(2048, 256, 0.25), (341, 256, 0.25), (1000, 100, 0.5)]
)
def test_windows_cover_evenly_with_at_least_the_overlap(length: int, tile: int, overlap: float) -> None:
    starts = positions(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] == length - tile
    steps = np.diff(starts)
    assert steps.max() <= tile * (1 - overlap) + 1 and steps.max() - steps.min() <= 1
    assert positions(tile, tile, overlap) == [0]


def test_blending_gives_back_the_canvas_map_exactly() -> None:
    geometry = Geometry.for_size(700, 500, 128, NATIVE, 0.3)
    field = np.random.default_rng(1).normal(size=geometry.canvas).astype(np.float32)
    tiles = geometry.cut(field[None, ..., None])[..., 0]
    assert tiles.shape == (geometry.n_windows, 128, 128)
    np.testing.assert_allclose(_blend(geometry, tiles), field, rtol=1e-5, atol=1e-5)


def test_blending_has_no_seam_between_windows() -> None:
    geometry = Geometry(100, (100, 175), 0.25)
    left, right = np.zeros((100, 100), np.float32), np.ones((100, 100), np.float32)
    blended = _blend(geometry, np.stack([left, right]))
    row = blended[50]
    assert (row[:75] == 0).all() and (row[100:] == 1).all()  # one window only: its own value
    assert (np.diff(row[75:100]) > 0).all()  # the overlap ramps from one window to the other


def test_other_aspect_ratio_is_padded_centred_and_masks_line_up() -> None:
    geometry = Geometry(64, (64, 128), 0.25)  # a 2:1 canvas
    image = _image(64, 64, 2)
    canvas, box = geometry.fit(image)
    assert box == (0, 32, 64, 64) and canvas.shape == (64, 128, 3)
    np.testing.assert_array_equal(crop(canvas, box), image)
    np.testing.assert_array_equal(canvas[:, 0], image[:, 0])  # padded with the edge pixels
    mask = np.zeros((64, 64), bool)
    mask[10:20, 5:9] = True
    fitted = geometry.fit_mask(mask)
    assert fitted.sum() == mask.sum() and fitted[10:20, 37:41].all()


def test_score_canvases_blends_windows_and_scores_inside_the_box() -> None:
    geometry = Geometry.for_size(300, 200, 64, NATIVE, 0.25)
    images = np.stack([_image(200, 300, s) for s in range(3)])
    maps, scores = score_canvases(PixelDetector(), images, geometry, 5, "max")
    direct = images.astype(np.float32).mean(axis=3)
    np.testing.assert_allclose(maps, direct, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(scores, direct.max(axis=(1, 2)), rtol=1e-6)
    box = (10, 20, 50, 60)
    _, inside = score_canvases(PixelDetector(), images, geometry, 5, "max", [box] * 3)
    np.testing.assert_allclose(inside, [crop(d, box).max() for d in direct], rtol=1e-6)
    maps, scores = score_canvases(TwoMapDetector(), images, geometry, 7, "max")
    np.testing.assert_allclose(maps, direct, rtol=1e-5, atol=1e-4)  # the maps themselves
    np.testing.assert_allclose(scores, (-direct).max(axis=(1, 2)), rtol=1e-5, atol=1e-4)  # the score maps'
    single = Geometry.square(64)  # whole images: batched across images
    maps, scores = score_canvases(PixelDetector(), images[:, :64, :64], single, 2, "mean")
    np.testing.assert_allclose(scores, direct[:, :64, :64].mean(axis=(1, 2)), rtol=1e-5)


def test_bad_settings_are_named() -> None:
    with pytest.raises(ConfigError, match="data.resolution must be null, native or"):
        check_resolution("full")
    with pytest.raises(ConfigError, match=r"data.overlap must be in \[0, 1\)"):
        Geometry(64, (64, 64), 1.0)
    with pytest.raises(ConfigError, match="cannot hold windows of 128 pixels"):
        Geometry(128, (100, 200))
    assert common_size([(4, 3), (5, 5), (4, 3)]) == (4, 3)
    assert Geometry.from_dict(Geometry(64, (64, 96)).to_dict()) == Geometry(64, (64, 96))
