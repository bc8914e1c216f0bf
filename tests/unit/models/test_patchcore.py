"""PatchCore module and detector on tiny synthetic images: bank size, NN search, maps, state, determinism."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_spotter.detectors.patchcore import PatchCoreDetector
from anomaly_spotter.errors import ConfigError
from anomaly_spotter.models.patchcore import (
    PatchCore,
    PatchCoreConfig,
    coreset_size,
    k_center_greedy,
    nearest_neighbours,
)

SIZE = 64
SQUARE = (slice(24, 40), slice(28, 44))  # rows, cols of the pasted defect
CONFIG = PatchCoreConfig(stages=(3, 4), input_size=SIZE, coreset_ratio=0.25, projection_dim=32, sigma=2.0)


def good_images(n: int = 16, seed: int = 0) -> np.ndarray:
    """Smooth diagonal stripes with a random phase and a little noise: uint8 `(n, 64, 64, 3)`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    out = []
    for _ in range(n):
        phase = rng.uniform(0, 2 * np.pi)
        base = 110 + 40 * np.sin((xx + yy) / 6.0 + phase)
        img = np.stack([base, base * 0.9 + 10, base * 0.8 + 20], axis=-1) + rng.normal(0, 2, (SIZE, SIZE, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def with_square(image: np.ndarray) -> np.ndarray:
    bad = image.copy()
    bad[SQUARE] = 250
    return bad


@pytest.fixture(scope="module")
def fitted() -> PatchCoreDetector:
    return PatchCoreDetector(CONFIG).fit(good_images())


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    good = good_images(2, seed=1)
    return np.stack([good[0], with_square(good[1])])


def test_bank_size_is_ceil_of_ratio_times_training_patches(fitted: PatchCoreDetector) -> None:
    n_patches = 16 * (SIZE // 8) ** 2  # finest stage (3) has stride 8
    assert fitted.n_train_patches_ == n_patches
    assert fitted.model_.memory_bank.shape == (math.ceil(0.25 * n_patches), 40 + 80)
    assert coreset_size(1000, 0.1) == 100 and coreset_size(1001, 0.1) == 101 and coreset_size(3, 0.01) == 1


def test_pasted_square_scores_higher_and_its_map_peaks_inside_it(
    fitted: PatchCoreDetector, test_images: np.ndarray
) -> None:
    maps = fitted.anomaly_maps(test_images)
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32
    assert maps[1].max() > 2 * maps[0].max()
    row, col = np.unravel_index(int(maps[1].argmax()), maps[1].shape)
    assert SQUARE[0].start <= row < SQUARE[0].stop and SQUARE[1].start <= col < SQUARE[1].stop
    scores = fitted.score_samples(test_images)
    assert scores.shape == (2,) and scores[1] > scores[0] > 0


def test_images_of_another_size_are_resized_and_maps_come_back_at_their_size(
    fitted: PatchCoreDetector,
) -> None:
    big = np.repeat(np.repeat(with_square(good_images(1, seed=2)[0]), 2, axis=0), 2, axis=1)[None]
    amap = fitted.anomaly_maps(big)
    assert amap.shape == (1, 2 * SIZE, 2 * SIZE)
    row, col = np.unravel_index(int(amap[0].argmax()), amap[0].shape)
    assert 2 * SQUARE[0].start <= row < 2 * SQUARE[0].stop and 2 * SQUARE[1].start <= col < 2 * SQUARE[1].stop


def test_state_round_trip_gives_identical_maps(
    fitted: PatchCoreDetector, test_images: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "model.pt"
    fitted.save(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["kind"] == "patchcore" and "memory_bank" in state["state_dict"]
    loaded = PatchCoreDetector.from_state(state)
    np.testing.assert_array_equal(loaded.anomaly_maps(test_images), fitted.anomaly_maps(test_images))
    assert loaded.config == fitted.config


def test_fit_is_deterministic(fitted: PatchCoreDetector) -> None:
    again = PatchCoreDetector(CONFIG).fit(good_images())
    torch.testing.assert_close(again.model_.memory_bank, fitted.model_.memory_bank, rtol=0, atol=0)


def test_chunked_nearest_neighbours_equal_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(300, 12, generator=gen), torch.randn(97, 12, generator=gen)
    full = torch.cdist(queries.double(), bank.double())
    dist, idx = nearest_neighbours(queries, bank, k=3, chunk_bytes=bank.shape[0] * 4 * 7)  # 7 queries a chunk
    ref_dist, ref_idx = full.topk(3, dim=1, largest=False)
    torch.testing.assert_close(dist.double(), ref_dist, rtol=1e-4, atol=1e-4)
    assert torch.equal(idx, ref_idx)
    d1, i1 = nearest_neighbours(queries, bank)
    assert torch.equal(i1[:, 0], full.argmin(1))


def test_k_center_greedy_picks_one_point_per_far_apart_cluster() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0]])
    points = (centres[:, None, :] + torch.randn(4, 25, 2, generator=gen)).reshape(-1, 2)
    chosen = k_center_greedy(points, 4, seed=3)
    assert sorted((chosen // 25).tolist()) == [0, 1, 2, 3]
    assert torch.equal(chosen, k_center_greedy(points, 4, seed=3))


def test_loading_a_state_dict_resizes_the_empty_bank(fitted: PatchCoreDetector) -> None:
    fresh = PatchCore(CONFIG)
    assert fresh.memory_bank.shape == (0, 120)
    fresh.load_state_dict(fitted.model_.state_dict())
    assert torch.equal(fresh.memory_bank, fitted.model_.memory_bank)


def test_unfitted_detector_says_to_fit_first() -> None:
    with pytest.raises(RuntimeError, match="fit"):
        PatchCoreDetector(CONFIG).anomaly_maps(good_images(1))


def test_options_build_the_config_and_bad_ones_name_the_valid_keys() -> None:
    det = PatchCoreDetector.from_options({"stages": [3, 5], "coreset_ratio": 0.05}, None, seed=7)
    assert det.config.stages == (3, 5) and det.config.seed == 7 and det.config.coreset_ratio == 0.05
    with pytest.raises(ConfigError, match="valid keys"):
        PatchCoreDetector.from_options({"layers": [2]}, None, seed=0)
    with pytest.raises(ConfigError, match="coreset_ratio"):
        PatchCoreConfig(coreset_ratio=0.0)
