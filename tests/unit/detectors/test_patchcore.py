"""PatchCore module and detector on tiny synthetic images: bank size, NN search, maps, state, determinism."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_spotter.core.errors import ConfigError
from anomaly_spotter.data.images import to_tensor_normalized
from anomaly_spotter.detectors import parse_options
from anomaly_spotter.detectors.patchcore.detector import PatchCoreDetector
from anomaly_spotter.detectors.patchcore.network import (
    PatchCore,
    PatchCoreConfig,
    coreset_size,
    k_center_greedy,
    nearest_neighbours,
    position_distances,
)

SIZE = 64
SQUARE = (slice(24, 40), slice(28, 44))  # rows, cols of the pasted defect
CONFIG = PatchCoreConfig(
    members=((2, 3),),
    input_size=SIZE,
    coreset_ratio=0.25,
    pool_ratio=0.5,
    projection_dim=32,
    sigma=2.0,
    position_radius=None,  # the position-aware part has its own tests below
)
ENSEMBLE = dataclasses.replace(CONFIG, members=((3,), (3, 5)))  # (3, 5): a stride-16 grid


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
def ensemble() -> PatchCoreDetector:
    return PatchCoreDetector(ENSEMBLE).fit(good_images(), good_images(6, seed=5))


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    good = good_images(2, seed=1)
    return np.stack([good[0], with_square(good[1])])


def test_bank_size_is_ceil_of_ratio_times_training_patches(fitted: PatchCoreDetector) -> None:
    n_patches = 16 * (SIZE // 8) ** 2  # finest stage (3) has stride 8
    assert fitted.n_train_patches_ == [n_patches]
    assert fitted.model_.memory_bank_0.shape == (math.ceil(0.25 * n_patches), 24 + 40)
    assert coreset_size(1000, 0.1) == 100 and coreset_size(1001, 0.1) == 101 and coreset_size(3, 0.01) == 1


def test_pasted_square_scores_higher_and_its_map_peaks_inside_it(
    fitted: PatchCoreDetector, test_images: np.ndarray
) -> None:
    maps = fitted.anomaly_maps(test_images)
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32
    assert maps[1].max() > 2 * maps[0].max()
    row, col = np.unravel_index(int(maps[1].argmax()), maps[1].shape)
    assert SQUARE[0].start <= row < SQUARE[0].stop and SQUARE[1].start <= col < SQUARE[1].stop


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
    assert state["kind"] == "patchcore" and "memory_bank_0" in state["state_dict"]
    loaded = PatchCoreDetector.from_state(state)
    np.testing.assert_array_equal(loaded.anomaly_maps(test_images), fitted.anomaly_maps(test_images))
    assert loaded.config == fitted.config


def test_fitted_buffers_are_normal_tensors(ensemble: PatchCoreDetector) -> None:
    # inference-mode tensors cannot be exported (mlflow.pytorch.log_model) nor used with autograd
    assert not any(buffer.is_inference() for buffer in ensemble.model_.buffers())


def test_fit_is_deterministic(fitted: PatchCoreDetector) -> None:
    again = PatchCoreDetector(CONFIG).fit(good_images())
    torch.testing.assert_close(again.model_.memory_bank_0, fitted.model_.memory_bank_0, rtol=0, atol=0)


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


def test_batched_k_center_greedy_takes_the_farthest_point_in_each_set() -> None:
    gen = torch.Generator().manual_seed(0)
    sets = torch.randn(3, 200, 8, generator=gen)
    chosen = k_center_greedy(sets, 15, seed=1)
    assert chosen.shape == (3, 15)
    for points, idx in zip(sets, chosen, strict=True):
        assert len(set(idx.tolist())) == 15
        for j in range(1, 15):
            dist = torch.cdist(points.double(), points[idx[:j]].double()).min(1).values
            assert dist[idx[j]] == pytest.approx(float(dist.max()), rel=1e-5)
    # one set alone is the unbatched call
    assert torch.equal(k_center_greedy(sets[0], 15, seed=1), k_center_greedy(sets[:1], 15, seed=1)[0])


def test_k_center_greedy_reports_the_coverage_radius_after_each_pick() -> None:
    points = torch.randn(300, 6, generator=torch.Generator().manual_seed(2))
    chosen, radius = k_center_greedy(points, 20, seed=4, radii=True)
    assert torch.equal(chosen, k_center_greedy(points, 20, seed=4))  # the same picks
    for j in range(20):  # the farthest any point lies from its nearest chosen one, by brute force
        farthest = torch.cdist(points.double(), points[chosen[: j + 1]].double()).min(1).values.max()
        assert float(radius[j]) == pytest.approx(float(farthest), rel=1e-4)
    assert bool((radius[1:] <= radius[:-1]).all())


def test_fit_records_each_banks_coverage_as_its_history() -> None:
    det = PatchCoreDetector(dataclasses.replace(CONFIG, members=((3,), (2, 3)))).fit(
        good_images(6), good_images(3)
    )
    history = det.history_
    banks = [len(b) for b in det.model_.banks()]
    assert list(history.columns) == ["bank_size", "coverage_3", "coverage_2_3"]
    assert history["bank_size"].tolist() == list(range(1, max(banks) + 1))
    for column, size in zip(history.columns[1:], banks, strict=True):
        curve = history[column].to_numpy()
        assert np.isfinite(curve[:size]).all() and np.isnan(curve[size:]).all()
        assert (np.diff(curve[:size]) <= 1e-6).all() and curve[size - 1] < curve[0]


def test_pool_ratio_bounds_the_pool_and_a_full_pool_is_the_exact_coreset() -> None:
    images = good_images(6)
    exact = PatchCoreDetector(dataclasses.replace(CONFIG, pool_ratio=1.0)).fit(images)
    pooled = PatchCoreDetector(CONFIG).fit(images)
    n_patches = 6 * (SIZE // 8) ** 2
    assert exact.n_train_patches_ == pooled.n_train_patches_ == [n_patches]
    bank = math.ceil(0.25 * n_patches)
    assert exact.model_.memory_bank_0.shape[0] == pooled.model_.memory_bank_0.shape[0] == bank
    # the exact bank is k-center greedy over all patches, as selected by hand here
    model = exact.model_
    with torch.inference_mode():
        feats = torch.cat([model.flatten(model.embed(x)[0]) for x in exact._batches(images)])
    proj = feats @ exact._projection(feats.shape[1])
    torch.testing.assert_close(model.memory_bank_0, feats[k_center_greedy(proj, bank, 0)], rtol=0, atol=0)
    with pytest.raises(ConfigError, match="pool_ratio"):
        PatchCoreConfig(coreset_ratio=0.1, pool_ratio=0.05)


def test_bank_and_pool_caps_bound_the_fit() -> None:
    images = good_images(6)  # 6 x 64 patches; uncapped: pool 6 x 32, bank 96
    capped = dataclasses.replace(CONFIG, max_bank_size=40, max_pool_size=60)
    det = PatchCoreDetector(capped)
    pools = []
    original = det._preselect
    det._preselect = lambda *a: pools.append(original(*a)) or pools[-1]  # record what streaming keeps
    det.fit(images)
    assert det.model_.memory_bank_0.shape[0] == 40  # capped from ceil(0.25 * 384) = 96
    assert sum(len(p) for p in pools) == 6 * (60 // 6)  # each image keeps max_pool_size // 6 = 10 patches
    uncapped = PatchCoreDetector(dataclasses.replace(CONFIG, max_bank_size=0, max_pool_size=0)).fit(images)
    default = PatchCoreDetector(CONFIG).fit(images)  # the default caps do not bind at this size
    torch.testing.assert_close(uncapped.model_.memory_bank_0, default.model_.memory_bank_0, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="max_pool_size"):
        PatchCoreConfig(max_bank_size=100, max_pool_size=50)


def test_loading_a_state_dict_resizes_the_empty_bank(fitted: PatchCoreDetector) -> None:
    fresh = PatchCore(CONFIG)
    assert fresh.memory_bank_0.shape == (0, 64)
    fresh.load_state_dict(fitted.model_.state_dict())
    assert torch.equal(fresh.memory_bank_0, fitted.model_.memory_bank_0)


def test_unfitted_detector_says_to_fit_first() -> None:
    with pytest.raises(RuntimeError, match="fit"):
        PatchCoreDetector(CONFIG).anomaly_maps(good_images(1))


def test_options_build_the_config_and_bad_ones_name_the_valid_keys() -> None:
    det = PatchCoreDetector.from_options(
        parse_options("patchcore", {"members": [[3], [3, 5]], "coreset_ratio": 0.05}, 7), 7
    )
    assert det.config.members == ((3,), (3, 5)) and det.config.seed == 7 and det.config.coreset_ratio == 0.05
    with pytest.raises(ConfigError, match="valid keys"):
        PatchCoreDetector.from_options(parse_options("patchcore", {"layers": [2]}, 0), 0)
    with pytest.raises(ConfigError, match="coreset_ratio"):
        PatchCoreConfig(coreset_ratio=0.0)


def test_members_must_be_a_list_of_stage_sets() -> None:
    with pytest.raises(ConfigError, match=r"e\.g\. \[\[3, 5\]\]"):
        PatchCoreConfig(members=(3, 5))
    with pytest.raises(ConfigError, match="twice"):
        PatchCoreConfig(members=((3,), (3,)))
    with pytest.raises(ConfigError, match="non-empty"):
        PatchCoreConfig(members=((3,), ()))


def test_ensemble_members_are_standardised_on_validation_images(ensemble: PatchCoreDetector) -> None:
    model = ensemble.model_
    assert [b.shape[1] for b in model.banks()] == [40, 40 + 112]
    assert [model.grid_size(k) for k in range(2)] == [(8, 8), (4, 4)]
    # each member's validation maxima have mean 0 and std 1 after standardisation
    val = good_images(6, seed=5)
    with torch.inference_mode():
        raw = np.concatenate(
            [ensemble._smooth(model.member_maps(x).numpy()) for x in ensemble._batches(val)], 1
        )
    z = (raw.max(axis=(2, 3)) - model.norm_loc.numpy()[:, None]) / model.norm_scale.numpy()[:, None]
    np.testing.assert_allclose(z.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=1), 1.0, atol=1e-4)
    # the detector's map is the mean of the standardised member maps
    expected = (raw - model.norm_loc.numpy()[:, None, None, None]) / model.norm_scale.numpy()[
        :, None, None, None
    ]
    np.testing.assert_allclose(ensemble.anomaly_maps(val), expected.mean(0), rtol=1e-4, atol=1e-4)


def test_ensemble_finds_the_square_and_needs_validation_images(
    ensemble: PatchCoreDetector, test_images: np.ndarray
) -> None:
    maps = ensemble.anomaly_maps(test_images)
    assert maps[1].max() > maps[0].max() + 3  # more than 3 standard deviations of good images' maxima
    row, col = np.unravel_index(int(maps[1].argmax()), maps[1].shape)
    assert SQUARE[0].start <= row < SQUARE[0].stop and SQUARE[1].start <= col < SQUARE[1].stop
    with pytest.raises(ValueError, match="validation good images"):
        PatchCoreDetector(ENSEMBLE).fit(good_images(4))


def test_a_single_bank_model_saved_by_the_previous_version_still_loads(
    fitted: PatchCoreDetector, test_images: np.ndarray
) -> None:
    state = fitted.state()
    old_config = {k: v for k, v in state["config"].items() if k != "members" and not k.startswith("position")}
    old_config.update(stages=[2, 3], num_neighbours=9)
    old_dict = {("memory_bank" if k == "memory_bank_0" else k): v for k, v in state["state_dict"].items()}
    old_dict = {k: v for k, v in old_dict.items() if not k.startswith(("norm_", "border_", "part_"))}
    old = {**state, "config": old_config, "state_dict": old_dict}
    model = PatchCore(PatchCoreConfig.from_saved(old_config))
    missing = model.load_state_dict(old_dict, strict=False)
    assert set(missing.missing_keys) == {
        "norm_loc",
        "norm_scale",
        "border_baseline_0",
        "part_loc",
        "part_scale",
    }
    assert not missing.unexpected_keys
    np.testing.assert_array_equal(
        PatchCoreDetector.from_state(old).anomaly_maps(test_images), fitted.anomaly_maps(test_images)
    )


def test_border_baseline_is_the_frames_excess_over_the_interior() -> None:
    model = PatchCore(dataclasses.replace(CONFIG, border_cells=2))
    h, w = model.grid_size(0)
    assert (h, w) == (8, 8)
    grids = torch.full((4, h, w), 1.0)
    grids[..., :2, :] += 0.5  # a hot top frame, as padding makes on textures
    grids[..., 3, 3] = 5.0  # an interior hot spot is not the border's business
    grids[..., 7, 0] = 0.2  # a frame cell below the interior median is left alone
    model.set_border_baseline(0, grids)
    expected = torch.zeros(h, w)
    expected[:2, :] = 0.5
    torch.testing.assert_close(model.border_baselines()[0], expected)
    off = PatchCore(dataclasses.replace(CONFIG, border_cells=0))
    off.set_border_baseline(0, grids)
    assert not off.border_baselines()[0].any()


def test_the_ensemble_learns_the_border_correction_from_validation_images(
    ensemble: PatchCoreDetector,
) -> None:
    fine, coarse = ensemble.model_.border_baselines()
    cells = ENSEMBLE.border_cells  # 3 cells of stride 8 on the fine grid: 8 x 8 has a 2 x 2 interior
    assert fine.shape == (8, 8) and (fine >= 0).all() and not fine[cells:-cells, cells:-cells].any()
    assert coarse.shape == (4, 4) and not coarse.any()  # 2 cells of stride 16 leave no interior: off


def test_rot90_augmentation_makes_turned_good_parts_normal() -> None:
    images = good_images(6)
    turned = np.ascontiguousarray(np.rot90(good_images(2, seed=9), 1, axes=(1, 2)))  # stripes the other way
    plain = PatchCoreDetector(CONFIG).fit(images)
    rotating = PatchCoreDetector(dataclasses.replace(CONFIG, augment="rot90")).fit(images)
    assert rotating.n_train_patches_ == [4 * plain.n_train_patches_[0]]
    assert rotating.anomaly_maps(turned).max() < 0.5 * plain.anomaly_maps(turned).max()
    with pytest.raises(ConfigError, match="augment"):
        PatchCoreConfig(augment="rot45")


def test_position_distances_equal_brute_force_within_the_radius() -> None:
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(5, 3, 6, 7, generator=gen)  # 5 good images' embeddings, a 6 x 7 grid
    queries = torch.randn(2, 3, 6, 7, generator=gen)
    bank_t = bank.permute(2, 3, 1, 0).reshape(6 * 7, 3, 5)
    for radius in (0, 1, 2):
        got = position_distances(queries, bank_t, (bank_t * bank_t).sum(1), radius)
        expected = torch.empty(2, 6, 7)
        for i in range(6):
            for j in range(7):
                near = bank[:, :, max(i - radius, 0) : i + radius + 1, max(j - radius, 0) : j + radius + 1]
                d = (near - queries[:, None, :, i, j, None, None]).pow(2).sum(2).sqrt()  # (2, 5, a, b)
                expected[:, i, j] = d.flatten(1).min(1).values
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # a good image shifted by one cell is normal within radius 1, not at radius 0
    shifted = torch.roll(bank[:1], 1, dims=3)
    one = position_distances(shifted, bank_t, (bank_t * bank_t).sum(1), 1)
    assert (
        one[0, :, 1:].max() < 1e-3
        and position_distances(shifted, bank_t, (bank_t * bank_t).sum(1), 0).min() > 0.1
    )


def square_at(col: int | None, n: int, seed: int) -> np.ndarray:
    """A bright square (a part) on a plain dark floor (a fixture), its column jittered by 1 px (None: the
    part is missing)."""
    rng = np.random.default_rng(seed)
    out = np.full((n, SIZE, SIZE, 3), 40, np.uint8)
    for image in out:
        left = None if col is None else col + int(rng.integers(-1, 2))
        if left is not None:
            image[24:40, left : left + 16] = 220
    return np.clip(out + rng.normal(0, 2, out.shape), 0, 255).astype(np.uint8)


def test_the_position_aware_part_finds_a_missing_part() -> None:
    config = dataclasses.replace(CONFIG, members=((3,),), position_radius=1, sigma=1.0)
    train, val = square_at(24, 12, seed=0), square_at(24, 6, seed=1)
    missing = square_at(None, 1, seed=2)  # bare floor, seen all around the part on every good image
    good = square_at(24, 1, seed=3)
    position = PatchCoreDetector(config).fit(train, val)
    model = position.model_
    assert model.position_grid_size() == (8, 8) and model.position_bank_t.shape == (64, 40, 12)
    # each part is standardised on the validation goods; the missing part stands out where it belongs
    maps = position.anomaly_maps(np.concatenate([good, missing]))
    assert maps[1].max() > maps[0].max() + 3
    row, col = np.unravel_index(int(maps[1].argmax()), maps[1].shape)
    assert 20 <= row < 44 and 20 <= col < 44
    # the map is the smoothed parts' pixelwise maximum, and a saved model gives the same maps
    with torch.inference_mode():
        parts = position._smooth(model(torch.from_numpy(to_tensor_normalized(missing))).numpy())
    np.testing.assert_allclose(maps[1:], parts.max(axis=0), atol=1e-4)
    np.testing.assert_array_equal(
        PatchCoreDetector.from_state(position.state()).anomaly_maps(missing), position.anomaly_maps(missing)
    )
    with pytest.raises(ValueError, match="position_radius: null"):
        PatchCoreDetector(config).fit(train)


def test_the_position_bank_keeps_the_most_spread_out_images() -> None:
    config = dataclasses.replace(CONFIG, members=((3,),), position_radius=0, position_max_images=3)
    images = np.concatenate([square_at(8, 4, seed=0), square_at(40, 1, seed=1), good_images(1)])
    detector = PatchCoreDetector(config).fit(images, square_at(8, 2, seed=2))
    bank = detector.model_.position_bank_t
    assert bank.shape[-1] == 3
    with torch.inference_mode():
        embedded = detector.model_.embed_all(torch.from_numpy(to_tensor_normalized(images)))[1]
    kept = embedded.permute(2, 3, 1, 0).reshape(64, 40, 6)
    # the odd ones out (the square on the right, the stripes) are kept, and one of the four alike
    matches = [
        int(np.argmin([(bank[..., j] - kept[..., i]).abs().max() for i in range(6)])) for j in range(3)
    ]
    assert {4, 5} <= set(matches) and len(set(matches) & {0, 1, 2, 3}) == 1
    with pytest.raises(ConfigError, match="position_radius"):
        PatchCoreConfig(position_radius=-1)
