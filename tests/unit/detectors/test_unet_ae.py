import dataclasses
import warnings

import numpy as np
import pytest
import torch

from anomaly_spotter.core.errors import ConfigError
from anomaly_spotter.detectors import load_detector
from anomaly_spotter.detectors.unet_ae.detector import UNetAEDetector
from anomaly_spotter.detectors.unet_ae.network import ORIGINAL, Ensemble, UNetAutoencoder, UNetConfig
from anomaly_spotter.detectors.unet_ae.options import MEMBER_SEED_STEP, UNetTraining


def _activations(model: UNetAutoencoder, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        model.bottleneck.register_forward_hook(lambda m, i, o: shapes.__setitem__("bottleneck", o.shape))
    ]
    for k, enc in enumerate(model.encoders):
        hooks.append(enc.register_forward_hook(lambda m, i, o, k=k: shapes.__setitem__(f"enc{k}", o.shape)))
    out = model(x)
    shapes["out"] = tuple(out.shape)
    for h in hooks:
        h.remove()
    return shapes


def test_original_configuration_shapes_and_size() -> None:
    model = UNetAutoencoder(ORIGINAL)
    shapes = _activations(model, torch.zeros(2, 3, 128, 128))
    assert shapes["enc0"] == (2, 64, 128, 128)
    assert shapes["enc2"] == (2, 256, 32, 32)
    assert shapes["bottleneck"] == (2, 512, 16, 16)
    assert shapes["out"] == (2, 3, 128, 128)
    n_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert 14.5e6 < n_bytes < 16.5e6  # "about 15 MB of float32 weights"
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 1
    assert isinstance(model.up, torch.nn.Upsample) and model.up.mode == "bilinear"


def test_default_configuration_shapes_and_tanh_range() -> None:
    model = UNetAutoencoder(UNetConfig())
    shapes = _activations(model, torch.randn(1, 3, 128, 128) * 10)
    assert shapes["bottleneck"] == (1, 128, 16, 16)
    assert shapes["out"] == (1, 3, 128, 128)
    with torch.no_grad():
        y = model(torch.randn(1, 3, 64, 64) * 10)
    assert y.abs().max() <= 1.0


def _images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.tile(np.linspace(60, 180, 32, dtype=np.float32), (32, 1))[..., None].repeat(3, axis=2)
    return np.clip(base + rng.normal(0, 3, (n, 32, 32, 3)), 0, 255).astype(np.uint8)


def test_training_is_deterministic_and_early_stops(tmp_path) -> None:
    train = UNetTraining(batch_size=4, lr=1e-3, max_epochs=40, patience=2)
    cfg = UNetConfig(encoder_channels=(4, 8), bottleneck_channels=8)
    a = UNetAEDetector(cfg, train=train, seed=3, progress=False).fit(_images(8, 0), _images(4, 1))
    b = UNetAEDetector(cfg, train=train, seed=3, progress=False).fit(_images(8, 0), _images(4, 1))
    assert a.history_.equals(b.history_)
    assert len(a.epoch_seconds_) == len(a.history_) and min(a.epoch_seconds_) > 0  # timed apart from history_
    assert a.history_["train_loss"].iloc[-1] < a.history_["train_loss"].iloc[0]
    assert a.best_epoch_ == int(a.history_.loc[a.history_["val_loss"].idxmin(), "epoch"])
    # the saved file rebuilds the same detector (weights only)
    a.save(tmp_path / "model.pt")
    loaded = load_detector(tmp_path / "model.pt")
    test = _images(2, 5)
    test[1, 10:20, 10:20] = 255
    maps = loaded.anomaly_maps(test)
    np.testing.assert_allclose(maps, a.anomaly_maps(test), rtol=1e-6)
    assert maps.shape == (2, 32, 32)
    assert maps[1, 10:20, 10:20].mean() > maps[0, 10:20, 10:20].mean()


def test_side_not_multiple_of_downsampling_is_a_config_error() -> None:
    det = UNetAEDetector(UNetConfig(encoder_channels=(4, 8, 8)), progress=False)
    with pytest.raises(ConfigError, match="multiple of 8"):
        det.fit(np.zeros((2, 30, 30, 3), np.uint8))


def test_synthetic_defects_train_to_remove_them_and_ssim_maps_survive_saving(tmp_path) -> None:
    from anomaly_spotter.data.synthetic import corrupt

    cfg = UNetConfig(encoder_channels=(4, 8), bottleneck_channels=8)
    train = UNetTraining(batch_size=4, lr=1e-3, max_epochs=3, patience=3, synthetic_defects=1.0)
    det = UNetAEDetector(cfg, train=train, seed=3, progress=False, map_kind="ssim")
    det.fit(_images(8, 0), _images(4, 1))
    # the validation loss is defect removal: the loss of the corrupted validation images vs their clean
    # versions, recomputed here for the kept (best) weights
    from anomaly_spotter.data.images import to_tensor_normalized

    clean = to_tensor_normalized(_images(4, 1))
    corrupted, masks = corrupt(clean, 1.0, np.random.default_rng(3 + 1))
    assert masks.any(axis=(1, 2)).all()
    with torch.inference_mode():
        out = det.module()(torch.from_numpy(corrupted)).numpy()
    best = det.history_.loc[det.history_["epoch"] == det.best_epoch_, "val_loss"].item()
    assert float(((out - clean) ** 2).mean()) == pytest.approx(best, rel=1e-5)
    det.save(tmp_path / "model.pt")
    loaded = load_detector(tmp_path / "model.pt")
    assert loaded.map_kind == "ssim"
    test = _images(2, 5)
    np.testing.assert_allclose(loaded.anomaly_maps(test), det.anomaly_maps(test), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="model.unet_ae.map_kind"):
        UNetAEDetector(cfg, map_kind="l1")


def test_focal_loss_values() -> None:
    from anomaly_spotter.detectors.unet_ae.detector import focal_loss

    # p = 0.5 for either class: cross-entropy log 2, scaled by (1 - 0.5)^2
    assert float(focal_loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))) == pytest.approx(
        0.25 * np.log(2)
    )
    # a confident right answer weighs ~nothing, a confident wrong one ~its full cross-entropy
    right = float(focal_loss(torch.full((1, 1, 1, 1), 6.0), torch.ones(1, 1, 1, 1)))
    wrong = float(focal_loss(torch.full((1, 1, 1, 1), -6.0), torch.ones(1, 1, 1, 1)))
    assert right < 1e-7 and wrong == pytest.approx(6.0025 * (1 - 0.00247) ** 2, rel=1e-3)


def test_ssim_loss_is_differentiable_and_zero_for_identical_images() -> None:
    from anomaly_spotter.core.anomaly_map import dissimilarity

    x = torch.rand(2, 3, 16, 16) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    loss = dissimilarity(y, x).mean()
    loss.backward()
    assert loss.item() > 0.05 and float(y.grad.abs().sum()) > 0
    assert float(dissimilarity(x, x).abs().max()) < 1e-5


def test_segmentation_model_learns_where_synthetic_defects_are_and_survives_saving(tmp_path) -> None:
    """map_kind: segmentation (DRAEM): a second U-Net reads image + reconstruction and outputs the defect
    probability; trained on crops, it scores whole images; the saved file rebuilds both networks."""
    from anomaly_spotter.detectors.unet_ae.network import ReconstructAndSegment

    cfg = UNetConfig(encoder_channels=(4, 8), bottleneck_channels=8, batch_norm=True)
    train = UNetTraining(
        batch_size=4, lr=5e-3, max_epochs=12, patience=12, synthetic_defects=1.0, crop_size=16,
        lr_schedule="onecycle", ssim_loss=1.0,
    )  # fmt: skip
    det = UNetAEDetector(
        cfg, train=train, seed=0, progress=False, map_kind="segmentation", segmenter_channels=(8, 8)
    )
    assert det._crop_side(32) == 16 and det._crop_side(8) == 8  # capped by the image side
    det.fit(_images(16, 0), _images(4, 1))
    model = det.module()
    assert isinstance(model, ReconstructAndSegment)
    assert det.history_["train_loss"].iloc[-1] < det.history_["train_loss"].iloc[0]
    test = _images(2, 5)
    test[1, 8:20, 8:20] = [250, 20, 20]  # a red square on a grey ramp
    maps = det.anomaly_maps(test)
    assert maps.shape == (2, 32, 32) and 0.0 <= maps.min() and maps.max() <= 1.0
    assert maps[1, 10:18, 10:18].mean() > maps[1].mean() and maps[1].max() > maps[0].max()
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, 32, 32))
    assert out.shape == (1, 1, 32, 32)
    det.save(tmp_path / "model.pt")
    loaded = load_detector(tmp_path / "model.pt")
    assert loaded.map_kind == "segmentation" and loaded.segmenter == det.segmenter
    for fitted in (det, loaded):  # both score with channels-last weights (the faster layout on a CPU)
        weight = next(m for m in fitted.module().modules() if isinstance(m, torch.nn.Conv2d)).weight  # 3x3
        assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    np.testing.assert_allclose(loaded.anomaly_maps(test), maps, rtol=1e-5, atol=1e-6)
    assert loaded.reconstruct(test).shape == (2, 32, 32, 3)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("lr_schedule", "cosine", "lr_schedule is 'cosine'"),
        ("crop_size", -1, "crop_size, ssim_loss and epoch_size"),
        ("epoch_size", -5, "crop_size, ssim_loss and epoch_size must be >= 0"),
        ("device", "gpu", "device is 'gpu'; use cpu or cuda"),
    ],
)
def test_training_options_are_checked(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UNetTraining(**{key: value})


def test_without_skip_connections_the_decoder_sees_only_the_bottleneck() -> None:
    """skip_connections: false makes a plain encoder-decoder (DRAEM's reconstructive network): the
    decoders get no encoder features, so nothing reaches the output but through the bottleneck."""
    plain = UNetAutoencoder(
        UNetConfig(encoder_channels=(4, 8), bottleneck_channels=8, skip_connections=False)
    )
    skips = UNetAutoencoder(UNetConfig(encoder_channels=(4, 8), bottleneck_channels=8))
    assert [d[0].in_channels for d in plain.decoders] == [8, 8]  # no concatenated encoder features
    assert [d[0].in_channels for d in skips.decoders] == [8 + 8, 8 + 4]
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert plain(x).shape == (1, 3, 16, 16)


def _readme_command_params(heading: str):
    """params.yaml with the `-S` overrides of the `dvc exp run` command under docs/detectors.md heading
    `heading`."""
    import re
    import shlex

    import yaml

    from anomaly_spotter.core.config import params_from_dict
    from tests.conftest import REPO

    page = (REPO / "docs" / "detectors.md").read_text()
    section = page.split(heading, 1)[1].split("\n#", 1)[0]
    command = re.search(r"```bash\n(dvc exp run .*?)```", section, re.S).group(1).replace("\\\n", " ")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    words = shlex.split(command)
    overrides = [words[i + 1] for i, w in enumerate(words) if w == "-S"]
    assert overrides
    for item in overrides:
        key, value = item.split("=", 1)
        *parents, leaf = key.split(".")
        node = raw
        for name in parents:
            node = node[name]
        assert leaf in node, f"docs/detectors.md sets {key}, which params.yaml does not have"
        node[leaf] = yaml.safe_load(value)
    return params_from_dict(raw)


def test_the_readmes_original_configuration_command_rebuilds_the_prototype() -> None:
    """docs/detectors.md "The original configuration" (once the README's): its `dvc exp run -S ...` command,
    applied to params.yaml, gives the prototype's network, map and training loop exactly (so the command
    cannot rot)."""
    from anomaly_spotter.detectors import build_detector

    params = _readme_command_params("### The original configuration")
    detector = build_detector(params)
    assert params.data.image_size == 128
    assert isinstance(detector, UNetAEDetector) and detector.config == ORIGINAL
    assert detector.map_kind == "residual" and detector.sigma == 1.0
    t = detector.train  # model.unet_ae.training
    assert (t.batch_size, t.lr, list(t.betas), t.max_epochs, t.patience) == (32, 1e-4, [0.9, 0.999], 100, 10)
    assert (t.lr_schedule, t.synthetic_defects, t.crop_size, t.ssim_loss) == ("constant", 0.0, 0, 0.0)
    assert t.epoch_size == 0  # an epoch is one pass over the training images
    assert (t.checkpoint, t.ema_decay, t.val_every) == ("best", 0.0, 1)  # early stopping on the raw weights
    assert t.candidates == 1  # one initialisation
    assert (t.members, t.precision, t.channels_last) == (1, "fp32", False)  # one float32 network


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_training_without_a_gpu_says_what_to_do() -> None:
    cfg = UNetConfig(encoder_channels=(4, 8))
    det = UNetAEDetector(cfg, train=UNetTraining(device="cuda"), progress=False)
    with pytest.raises(ConfigError, match="device is cuda, but torch .* no CUDA GPU here; set it to cpu"):
        det.fit(_images(4, 0))


def test_the_readmes_gpu_command_gives_a_valid_cuda_configuration() -> None:
    from anomaly_spotter.detectors import build_detector

    params = _readme_command_params("### A GPU-sized configuration")
    detector = build_detector(params)
    t = detector.train  # model.unet_ae.training
    assert t.device == "cuda" and params.data.image_size == 256 and t.crop_size == 0
    assert t.epoch_size == 0 and t.max_epochs == 700  # DRAEM's 700 passes
    assert (t.members, t.precision) == (1, "fp32")  # DRAEM's one network, in float32
    assert detector.map_kind == "segmentation" and detector.segmenter.encoder_channels == (32, 64, 128)


def test_epoch_order_cycles_through_a_small_set_and_samples_a_large_one() -> None:
    """training.epoch_size: an epoch of a fixed number of draws, whatever the training set's size."""
    from anomaly_spotter.detectors.unet_ae.detector import epoch_order

    rng = np.random.default_rng(0)
    small = epoch_order(5, 12, rng)  # two full shuffled passes and 2 of a third
    assert len(small) == 12 and sorted(small[:5]) == sorted(small[5:10]) == list(range(5))
    large = epoch_order(100, 30, rng)
    assert len(large) == 30 and len(set(large.tolist())) == 30 and large.max() < 100
    whole = epoch_order(7, 7, np.random.default_rng(3))  # epoch_size 0 = the set: one permutation,
    np.testing.assert_array_equal(whole, np.random.default_rng(3).permutation(7))  # as before


def test_score_sigma_smooths_the_image_score_apart_from_the_map(tmp_path) -> None:
    """`score_sigma`: the map keeps `sigma`, the image score is reduced from the same network output
    smoothed with `score_sigma`; saved with the model; a file without it scores from the map."""
    from anomaly_spotter.core.scoring import score_batches

    train = UNetTraining(batch_size=4, lr=1e-3, max_epochs=2, patience=2)
    cfg = UNetConfig(encoder_channels=(4, 8), bottleneck_channels=8)
    det = UNetAEDetector(cfg, sigma=4.0, train=train, seed=3, progress=False, score_sigma=1.0)
    det.fit(_images(8, 0), _images(4, 1))
    test = _images(3, 5)
    test[1, 12:14, 12:14] = 255  # a small defect: sharper smoothing gives it a higher peak
    maps, scores = score_batches(det, test, 2, "max", progress=False)
    np.testing.assert_allclose(maps, det.anomaly_maps(test), rtol=1e-5, atol=1e-6)  # sigma's map
    sharp = UNetAEDetector.from_state({**det.state(), "sigma": 1.0, "score_sigma": None})
    np.testing.assert_allclose(scores, sharp.anomaly_maps(test).max(axis=(1, 2)), rtol=1e-6)
    assert (scores > maps.max(axis=(1, 2))).all()  # a sharper map peaks higher
    det.save(tmp_path / "model.pt")
    loaded = load_detector(tmp_path / "model.pt")
    assert (loaded.sigma, loaded.score_sigma) == (4.0, 1.0)
    np.testing.assert_allclose(score_batches(loaded, test, 2, "max", progress=False)[1], scores, rtol=1e-6)
    old = {k: v for k, v in det.state().items() if k != "score_sigma"}  # saved before score_sigma
    _, old_scores = score_batches(UNetAEDetector.from_state(old), test, 2, "max", progress=False)
    np.testing.assert_allclose(old_scores, maps.max(axis=(1, 2)), rtol=1e-6)


def test_weight_average_warms_up_and_tracks_parameters_and_batchnorm_statistics() -> None:
    from anomaly_spotter.detectors.unet_ae.detector import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.9)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(2.0)
    model[1].num_batches_tracked.fill_(7)
    average.update(model)  # step 1: decay min(0.9, 2/11)
    d = 2 / 11
    torch.testing.assert_close(average.model[0].weight, d * start + (1 - d) * (start + 1))
    torch.testing.assert_close(average.model[1].running_mean, torch.full((2,), (1 - d) * 2.0))
    assert int(average.model[1].num_batches_tracked) == 7  # counters are copied, not averaged
    assert not any(p.requires_grad for p in average.model.parameters())
    for _ in range(200):
        average.update(model)
    torch.testing.assert_close(average.model[0].weight, start + 1, atol=1e-6, rtol=0)  # converges


def test_last_checkpoint_keeps_the_averaged_last_weights_and_validates_every_n_epochs() -> None:
    cfg = UNetConfig(encoder_channels=(4, 8), bottleneck_channels=8)
    train = UNetTraining(
        batch_size=4, lr=1e-3, max_epochs=7, patience=1, checkpoint="last", val_every=3, ema_decay=0.9
    )
    det = UNetAEDetector(cfg, train=train, seed=3, progress=False).fit(_images(8, 0), _images(4, 1))
    assert len(det.history_) == 7 and det.best_epoch_ == 7  # no early stopping with patience 1
    validated = det.history_.loc[det.history_["val_loss"].notna(), "epoch"].tolist()
    assert validated == [3, 6, 7]  # every 3rd epoch and the last
    # the kept weights are the average's: its validation loss is the last row's, recomputed here
    from anomaly_spotter.data.images import to_tensor_normalized

    clean = to_tensor_normalized(_images(4, 1))
    with torch.inference_mode():
        out = det.module()(torch.from_numpy(clean)).numpy()
    assert float(((out - clean) ** 2).mean()) == pytest.approx(det.history_["val_loss"].iloc[-1], rel=1e-5)
    with pytest.raises(ConfigError, match="val_every"):
        UNetTraining(patience=2, val_every=3)  # best checkpoint: a validation within every patience
    with pytest.raises(ConfigError, match="checkpoint"):
        UNetTraining(checkpoint="first")
    with pytest.raises(ConfigError, match="ema_decay"):
        UNetTraining(ema_decay=1.0)


def test_candidates_train_side_by_side_and_the_lowest_validation_loss_goes_on() -> None:
    cfg = UNetConfig(encoder_channels=(4, 8), bottleneck_channels=8)
    options = dict(batch_size=4, lr=1e-3, max_epochs=5, checkpoint="last", val_every=4, ema_decay=0.9)
    single = UNetTraining(**options)
    three = UNetTraining(**options, candidates=3, candidate_epochs=2)
    fit = dict(train_images=_images(8, 0), val_images=_images(4, 1))
    one = UNetAEDetector(cfg, train=single, seed=2, progress=False).fit(**fit)
    det = UNetAEDetector(cfg, train=three, seed=2, progress=False).fit(**fit)
    losses = det.candidate_losses_
    assert len(losses) == 3 and len(set(losses)) == 3  # three initialisations, three losses
    assert one.candidate_losses_ == []
    chosen = int(np.argmin(losses))
    assert chosen == 2  # this seed's first initialisation (a single run's) loses: the third goes on
    # the chosen one's history; validated at the choice (epoch 2) though val_every is 4
    assert det.history_["val_loss"].notna().tolist() == [False, True, False, True, True]
    assert det.history_.loc[1, "val_loss"] == min(losses)
    assert len(det.history_) == 5 and det.best_epoch_ == 5
    # candidate 0 trains on the same batches as a single run from the same seed: the same loss at epoch 2
    single_at_2 = UNetTraining(**{**options, "val_every": 2})
    alone = UNetAEDetector(cfg, train=single_at_2, seed=2, progress=False).fit(**fit)
    assert alone.history_.loc[1, "val_loss"] == pytest.approx(losses[0], rel=1e-6)
    assert not np.allclose(det.anomaly_maps(_images(2, 5)), one.anomaly_maps(_images(2, 5)))
    with pytest.raises(ConfigError, match="candidates"):
        UNetTraining(candidates=0)
    with pytest.raises(ConfigError, match="candidate_epochs"):
        UNetTraining(candidates=2, candidate_epochs=0)
    # a run shorter than the contest: the choice is made at its last epoch
    short = UNetTraining(**{**options, "max_epochs": 1}, candidates=2, candidate_epochs=5)
    quick = UNetAEDetector(cfg, train=short, seed=2, progress=False).fit(**fit)
    assert len(quick.candidate_losses_) == 2
    assert quick.history_["val_loss"].tolist() == [min(quick.candidate_losses_)]


def test_members_train_apart_from_their_own_seeds_and_the_map_is_their_mean() -> None:
    cfg = UNetConfig(encoder_channels=(4, 8), bottleneck_channels=8, batch_norm=True)
    options = dict(batch_size=4, lr=1e-3, max_epochs=3, checkpoint="last", val_every=3, ema_decay=0.9)
    options |= dict(synthetic_defects=0.5, candidates=2, candidate_epochs=1)
    fit = dict(train_images=_images(8, 0), val_images=_images(4, 1))

    def fitted(seed: int, **extra: object) -> UNetAEDetector:
        train = UNetTraining(**options, **extra)
        det = UNetAEDetector(cfg, map_kind="segmentation", sigma=0.0, train=train, seed=seed, progress=False)
        return det.fit(**fit)

    ensemble = fitted(2, members=2)
    first, second = fitted(2), fitted(2 + MEMBER_SEED_STEP)  # each member is the single training of its seed
    assert isinstance(ensemble.module(), Ensemble) and len(ensemble.module().members) == 2
    test = _images(3, 5)
    mean = (first.anomaly_maps(test) + second.anomaly_maps(test)) / 2
    np.testing.assert_allclose(ensemble.anomaly_maps(test), mean, atol=1e-6)
    assert not np.allclose(first.anomaly_maps(test), second.anomaly_maps(test), atol=1e-3)
    recon = (first.reconstruct(test).astype(float) + second.reconstruct(test)) / 2
    assert np.abs(ensemble.reconstruct(test) - recon).max() <= 1  # the mean reconstruction, up to rounding
    columns = ["epoch", "train_loss_1", "val_loss_1", "train_loss", "val_loss"]
    assert list(ensemble.history_.columns) == columns
    assert ensemble.history_["train_loss_1"].tolist() == second.history_["train_loss"].tolist()
    np.testing.assert_array_equal(ensemble.history_["val_loss"], first.history_["val_loss"])
    assert ensemble.member_candidate_losses_ == [first.candidate_losses_, second.candidate_losses_]
    assert ensemble.candidate_losses_ == first.candidate_losses_
    assert len(ensemble.epoch_seconds_) == 6
    reloaded = UNetAEDetector.from_state(ensemble.state())
    np.testing.assert_array_equal(reloaded.anomaly_maps(test), ensemble.anomaly_maps(test))
    with pytest.raises(ConfigError, match="members"):
        UNetTraining(members=0)


def test_bfloat16_training_follows_float32_and_keeps_float32_weights() -> None:
    cfg = UNetConfig(encoder_channels=(4, 8), bottleneck_channels=8, batch_norm=True)
    options = dict(batch_size=4, lr=1e-3, max_epochs=4, checkpoint="last", synthetic_defects=0.5)
    fit = dict(train_images=_images(8, 0), val_images=_images(4, 1))
    runs = {}
    for precision, channels_last in (("fp32", False), ("bf16", True)):
        train = UNetTraining(**options, precision=precision, channels_last=channels_last)
        det = UNetAEDetector(cfg, map_kind="segmentation", train=train, seed=3, progress=False)
        runs[precision] = det.fit(**fit)
    fp32, bf16 = (runs[k].history_["val_loss"].to_numpy() for k in ("fp32", "bf16"))
    np.testing.assert_allclose(bf16, fp32, rtol=0.05)  # the same training, to bfloat16's rounding
    assert not np.array_equal(bf16, fp32)  # ... which it does round
    assert all(p.dtype == torch.float32 for p in runs["bf16"].module().parameters())
    assert np.isfinite(runs["bf16"].anomaly_maps(_images(2, 5))).all()
    with pytest.raises(ConfigError, match="precision"):
        UNetTraining(precision="fp16")


def test_bfloat16_on_a_cpu_without_its_instructions_warns_and_still_trains(monkeypatch) -> None:
    from anomaly_spotter.detectors.unet_ae import detector as unet_detector

    cfg = UNetConfig(encoder_channels=(4, 8), bottleneck_channels=8)
    train = UNetTraining(batch_size=4, max_epochs=1, precision="bf16")
    monkeypatch.setattr(unet_detector, "native_bf16", lambda: False)
    det = UNetAEDetector(cfg, train=train, progress=False)
    with pytest.warns(UserWarning, match=r"precision is bf16, but this CPU .* no bfloat16 instruct.*=fp32"):
        det.fit(_images(4, 0))
    assert np.isfinite(det.anomaly_maps(_images(1, 1))).all()
    pair = UNetAEDetector(cfg, train=dataclasses.replace(train, members=2), progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pair.fit(_images(4, 0))
    assert len([w for w in caught if "bfloat16 instructions" in str(w.message)]) == 1  # once, not per member
    for native, precision in ((True, "bf16"), (None, "bf16"), (False, "fp32")):  # nothing to say
        monkeypatch.setattr(unet_detector, "native_bf16", lambda native=native: native)
        quiet = UNetAEDetector(cfg, train=dataclasses.replace(train, precision=precision), progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            quiet._check_precision()
