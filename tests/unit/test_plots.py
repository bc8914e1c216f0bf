"""Plots write PNGs of the expected size; curve tables follow the strict threshold rule; overlays are pure."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_curve

from anomaly_spotter.core.overlay import MapScale, render_overlay
from anomaly_spotter.core.plots import (
    CURVE_FIGSIZE,
    DPI,
    HISTORY_FIGSIZE,
    PANEL_INCHES,
    TITLE_INCHES,
    marked_epoch,
    overlay_heatmap,
    plot_example,
    plot_pr,
    plot_roc,
    plot_score_distribution,
    plot_training_history,
    pr_points,
    roc_points,
)

LABELS = np.array([0, 0, 0, 0, 1, 1, 1])
SCORES = np.array([0.1, 0.3, 0.3, 0.6, 0.3, 0.7, 0.9])


def _png_size(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 1000, f"{path} missing or nearly empty"
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size  # (width, height)


def _expected(figsize: tuple[float, float]) -> tuple[int, int]:
    return round(figsize[0] * DPI), round(figsize[1] * DPI)


# --------------------------------------------------------------------------------------------------
# curve tables
# --------------------------------------------------------------------------------------------------


def test_roc_points_match_sklearn_and_strict_rule() -> None:
    points = roc_points(LABELS, SCORES)
    assert list(points.columns) == ["fpr", "tpr", "threshold"]
    fpr, tpr, _ = roc_curve(LABELS, SCORES, drop_intermediate=False)
    np.testing.assert_allclose(points["fpr"], fpr)
    np.testing.assert_allclose(points["tpr"], tpr)
    for row in points.itertuples():
        flagged = SCORES > row.threshold
        assert flagged[LABELS == 1].mean() == pytest.approx(row.tpr)
        assert flagged[LABELS == 0].mean() == pytest.approx(row.fpr)


def test_pr_points_strict_rule_and_order() -> None:
    points = pr_points(LABELS, SCORES)
    assert list(points.columns) == ["recall", "precision", "threshold"]
    assert (points.loc[0, "recall"], points.loc[0, "precision"]) == (0.0, 1.0)
    assert (np.diff(points["recall"]) >= 0).all()
    for row in points.iloc[1:].itertuples():
        flagged = SCORES > row.threshold
        assert flagged[LABELS == 1].mean() == pytest.approx(row.recall)
        assert (LABELS[flagged] == 1).mean() == pytest.approx(row.precision)


def test_curve_tables_empty_with_one_class() -> None:
    assert roc_points(np.zeros(3), np.arange(3.0)).empty
    assert list(roc_points(np.ones(3), np.arange(3.0)).columns) == ["fpr", "tpr", "threshold"]
    assert pr_points(np.zeros(3), np.arange(3.0)).empty


# --------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------


def test_curve_plots_write_pngs(tmp_path: Path) -> None:
    plot_roc(LABELS, SCORES, tmp_path / "roc.png", "bottle ROC")
    plot_pr(LABELS, SCORES, tmp_path / "pr.png", "bottle PR")
    plot_score_distribution(LABELS, SCORES, tmp_path / "sub" / "dist.png", "scores", threshold=0.5)
    plot_score_distribution(np.zeros(4), np.ones(4), tmp_path / "dist_one_class.png", "scores")
    plot_roc(np.zeros(4), np.arange(4.0), tmp_path / "roc_one_class.png", "undefined")
    for name in ("roc.png", "pr.png", "sub/dist.png", "dist_one_class.png", "roc_one_class.png"):
        assert _png_size(tmp_path / name) == _expected(CURVE_FIGSIZE)


def test_training_history_plot(tmp_path: Path) -> None:
    history = pd.DataFrame(
        {"epoch": [1, 2, 3, 4], "train_loss": [10.0, 1.0, 0.1, 0.05], "val_loss": [np.nan, 2.0, 0.3, 0.4]}
    )
    plot_training_history(history, tmp_path / "history.png")
    plot_training_history(history, tmp_path / "history_kept.png", kept_epoch=4)  # checkpoint: last
    epochs, val = history["epoch"].to_numpy(), history["val_loss"].to_numpy()
    assert marked_epoch(epochs, val, None) == (2, "best")  # epoch 3, the lowest validation loss
    assert marked_epoch(epochs, val, 4) == (3, "kept")
    assert marked_epoch(epochs, val, 1) == (2, "best")  # epoch 1 was not validated
    plot_training_history(history.drop(columns="val_loss"), tmp_path / "history_train_only.png")
    plot_training_history(pd.DataFrame(), tmp_path / "history_empty.png")  # a detector that records none
    coverage = pd.DataFrame(
        {"bank_size": [1, 2, 3], "coverage_3": [4.0, 2.0, 1.0], "coverage_2_3": [5.0, 3.0, np.nan]}
    )
    plot_training_history(coverage, tmp_path / "history_coverage.png")  # PatchCore's banks
    for name in (
        "history.png",
        "history_kept.png",
        "history_train_only.png",
        "history_empty.png",
        "history_coverage.png",
    ):
        assert _png_size(tmp_path / name) == _expected(HISTORY_FIGSIZE)
    with pytest.raises(ValueError, match="lacks column"):
        plot_training_history(pd.DataFrame({"loss": [1.0]}), tmp_path / "bad.png")


def test_example_plot_panels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    raw = rng.random((64, 64)).astype(np.float32)
    pred = raw > 0.8
    gt = np.zeros((64, 64), bool)
    gt[10:20, 10:30] = True
    recon = rng.random((64, 64, 3)).astype(np.float32)
    overlay = render_overlay(image, raw, pred, MapScale(0.8, 1.2, 0.8, 1.0), 0.99, 1.0, "000.png")
    ratio = overlay.shape[1] / overlay.shape[0]
    plot_example(image, recon, overlay, pred, gt, tmp_path / "with_recon.png", "bottle/crack/000")
    plot_example(image, None, overlay, pred, None, tmp_path / "no_recon.png", "bottle/good/001")
    height = round((PANEL_INCHES + TITLE_INCHES) * DPI)
    for name, n_small in (("with_recon.png", 3), ("no_recon.png", 2)):  # + the overlay's aspect ratio
        width, png_height = _png_size(tmp_path / name)
        assert png_height == height and width == pytest.approx((n_small + ratio) * PANEL_INCHES * DPI, abs=1)
    with pytest.raises(ValueError, match="pred_mask shape"):
        plot_example(image, None, overlay, pred[:32], None, tmp_path / "bad.png", "bad")
    with pytest.raises(ValueError, match="overlay must be uint8"):
        plot_example(image, None, raw, pred, None, tmp_path / "bad.png", "bad")


def test_plots_do_not_touch_pyplot(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot_roc(LABELS, SCORES, tmp_path / "roc.png", "t")
    assert plt.get_fignums() == before
    assert matplotlib.get_backend()  # untouched, whatever it is


# --------------------------------------------------------------------------------------------------
# overlay
# --------------------------------------------------------------------------------------------------


def test_overlay_heatmap_shape_dtype_and_effect() -> None:
    image = np.full((32, 48, 3), 128, dtype=np.uint8)
    raw = np.zeros((32, 48), dtype=np.float32)
    raw[8:16, 8:16] = 1.0
    out = overlay_heatmap(image, raw)
    assert out.dtype == np.uint8 and out.shape == (32, 48, 3)
    hot, cold = out[12, 12], out[28, 40]
    assert not np.array_equal(hot, image[12, 12])
    assert hot[0] > hot[2]  # JET top is red (RGB order), bottom is blue
    assert cold[2] > cold[0]
    assert np.array_equal(image, np.full((32, 48, 3), 128, dtype=np.uint8))  # input untouched


def test_overlay_heatmap_outline_and_alpha() -> None:
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    raw = np.zeros((40, 40))
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    out = overlay_heatmap(image, raw, pred_mask=mask)
    assert tuple(out[10, 20]) == (255, 255, 255)  # on the outline
    assert tuple(out[20, 20]) != (255, 255, 255)  # inside, not filled
    assert np.array_equal(overlay_heatmap(image, raw, alpha=0.0), image)
    # fixed vmin / vmax: a map below vmin is drawn at the bottom colour, same as an all-zero map
    np.testing.assert_array_equal(
        overlay_heatmap(image, raw + 0.2, vmin=0.5, vmax=1.0), overlay_heatmap(image, raw, vmin=0.5, vmax=1.0)
    )


def test_overlay_heatmap_rejects_bad_input() -> None:
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        overlay_heatmap(image.astype(np.float32), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="raw_map shape"):
        overlay_heatmap(image, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="alpha"):
        overlay_heatmap(image, np.zeros((8, 8)), alpha=1.5)
    with pytest.raises(ValueError, match="pred_mask shape"):
        overlay_heatmap(image, np.zeros((8, 8)), pred_mask=np.zeros((4, 4), bool))
