import numpy as np
import pytest
from scipy import ndimage
from skimage import exposure, filters

from anomaly_spotter.core.anomaly_map import (
    PixelCalibration,
    RegionRule,
    gaussian_smooth,
    image_scores,
    map_stats,
    minmax_normalize,
    otsu_mask,
    residual_map,
)

RNG = np.random.default_rng(0)


def test_residual_is_channel_mean_absolute_difference() -> None:
    x = RNG.normal(size=(2, 3, 8, 8)).astype(np.float32)
    y = RNG.normal(size=(2, 3, 8, 8)).astype(np.float32)
    expected = (np.abs(x[:, 0] - y[:, 0]) + np.abs(x[:, 1] - y[:, 1]) + np.abs(x[:, 2] - y[:, 2])) / 3
    np.testing.assert_allclose(residual_map(x, y), expected, rtol=1e-6)


def test_gaussian_matches_scipy_and_skimage_per_image() -> None:
    maps = RNG.random((3, 16, 16)).astype(np.float32)
    out = gaussian_smooth(maps, 1.0)
    for i in range(3):
        np.testing.assert_allclose(out[i], ndimage.gaussian_filter(maps[i], 1.0), rtol=1e-5, atol=1e-6)
        ref = filters.gaussian(maps[i].astype(np.float64), sigma=1.0, mode="reflect", preserve_range=True)
        np.testing.assert_allclose(out[i], ref, atol=1e-5)
    # smoothing does not leak across images in a batch
    assert np.allclose(gaussian_smooth(maps[:1], 1.0), out[:1])


def test_minmax_matches_skimage_rescale_and_handles_constant_maps() -> None:
    amap = RNG.random((10, 10)).astype(np.float32) * 5 + 2
    ref = exposure.rescale_intensity(amap, in_range="image", out_range=(0.0, 1.0))
    np.testing.assert_allclose(minmax_normalize(amap), ref, rtol=1e-6)
    assert not minmax_normalize(np.full((4, 4), 3.0)).any()


def test_otsu_matches_skimage_and_splits_a_bimodal_map() -> None:
    amap = np.zeros((20, 20), np.float32)
    amap[5:10, 5:10] = 1.0
    amap += RNG.normal(scale=0.01, size=amap.shape).astype(np.float32)
    norm = minmax_normalize(amap)
    mask = otsu_mask(norm)
    assert np.array_equal(mask, norm > filters.threshold_otsu(norm))
    assert mask.sum() == 25 and mask[5:10, 5:10].all()
    assert not otsu_mask(np.zeros((4, 4), np.float32)).any()


def test_image_scores_and_stats_on_known_map() -> None:
    maps = np.zeros((2, 10, 10), np.float32)
    maps[1, :1, :] = 2.0  # 10 of 100 pixels
    np.testing.assert_allclose(image_scores(maps, "max"), [0.0, 2.0])
    np.testing.assert_allclose(image_scores(maps, "mean"), [0.0, 0.2])
    assert map_stats(maps[1]) == {
        "mean_score": pytest.approx(0.2),
        "max_score": 2.0,
        "anomaly_percentage": 10.0,
    }
    np.testing.assert_allclose(image_scores(maps, "top10"), [0.0, 2.0])  # the 10 hot pixels exactly
    np.testing.assert_allclose(image_scores(maps, "top20"), [0.0, 1.0])
    np.testing.assert_allclose(image_scores(maps, "p95"), [0.0, 2.0])
    np.testing.assert_allclose(image_scores(maps, "p50"), [0.0, 0.0])
    for bad in ("median", "top", "top0", "top150", "p", "max5", "mean1.5"):
        with pytest.raises(ValueError, match="unknown image score"):
            image_scores(maps, bad)


def test_pixel_calibration_is_a_quantile_of_all_good_pixels() -> None:
    maps = np.arange(2 * 10 * 50, dtype=np.float32).reshape(2, 10, 50)  # 1000 distinct values 0..999
    cal = PixelCalibration.fit(maps, 0.99)
    assert cal.threshold == pytest.approx(np.quantile(np.arange(1000), 0.99))
    assert (cal.good_max, cal.n_images, cal.quantile) == (999.0, 2, 0.99)
    assert PixelCalibration.from_dict(cal.to_dict()) == cal
    assert (maps > cal.threshold).mean() == pytest.approx(0.01, abs=1e-3)  # 1 % of good pixels above it
    with pytest.raises(ValueError, match="N >= 1"):
        PixelCalibration.fit(np.zeros((0, 4, 4), np.float32), 0.99)
    with pytest.raises(ValueError, match="quantile"):
        PixelCalibration.fit(maps, 1.0)


def test_calibrated_region_flags_only_pixels_above_the_threshold_otsu_always_splits() -> None:
    clean = np.full((20, 20), 0.1, np.float32)
    clean[0, 0] = 0.2  # a clean map with a little noise: Otsu still splits it
    clean[5:15, 5:15] += 0.05
    defect = clean.copy()
    defect[8:12, 8:12] = 3.0
    calibrated = RegionRule("calibrated", 1.0)
    assert map_stats(clean, calibrated)["anomaly_percentage"] == 0.0
    assert map_stats(defect, calibrated)["anomaly_percentage"] == pytest.approx(100 * 16 / 400)
    np.testing.assert_array_equal(calibrated.mask(defect), defect > 1.0)
    assert map_stats(clean)["anomaly_percentage"] > 20.0  # the original's Otsu on a clean part
    assert map_stats(clean, RegionRule("otsu")) == map_stats(clean)
    with pytest.raises(ValueError, match="pixel threshold"):
        RegionRule("calibrated")
    with pytest.raises(ValueError, match="calibrated, otsu"):
        RegionRule("quantile", 1.0)


def test_ssim_map_is_one_minus_skimages_ssim_per_channel() -> None:
    from skimage.metrics import structural_similarity

    from anomaly_spotter.core.anomaly_map import ssim_map

    x = RNG.uniform(-1, 1, (2, 3, 24, 24)).astype(np.float32)
    y = np.clip(x + RNG.normal(0, 0.2, x.shape), -1, 1).astype(np.float32)
    out = ssim_map(x, y)
    assert out.shape == (2, 24, 24)
    expected = np.mean(
        [
            1.0
            - structural_similarity(
                x[1, c],
                y[1, c],
                data_range=2.0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                full=True,
            )[1]
            for c in range(3)
        ],
        axis=0,
    )
    np.testing.assert_allclose(out[1], expected, atol=1e-5)
    assert float(ssim_map(x, x).max()) == pytest.approx(0.0, abs=1e-6)  # identical: no anomaly
