"""Report figures (PNG) and the curve tables behind them.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, so no global figure
registry and no GUI backend): each plot function writes exactly one PNG of a fixed pixel size
(`figsize * DPI`, no tight bounding box) and releases its figure. `overlay_heatmap` is pure (no I/O)
and returns an RGB uint8 image: the original's per-image heatmap (`legacy.generate_overlay`); the
pipeline's overlays, on one colour scale per category, are `overlay.render_overlay`'s.

Conventions: higher score = more anomalous, label 1 = defective, flagged iff `score > threshold`.
Images are RGB uint8 `(H, W, 3)`; maps and masks are `(H, W)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import average_precision_score

from anomaly_spotter.core.metrics import (
    check_image_inputs,
    curve_thresholds,
    descending_counts,
    image_auroc,
)

DPI = 100
CURVE_FIGSIZE = (6.0, 5.0)
HISTORY_FIGSIZE = (7.0, 4.5)
PANEL_INCHES = 3.2
TITLE_INCHES = 0.6
HIST_BINS = 30
# Use a log y axis for the loss history when max / min of the positive losses exceeds this.
LOG_RANGE_RATIO = 30.0
GOOD_COLOR = "tab:blue"
DEFECT_COLOR = "tab:red"
PRED_COLOR = "red"
GT_COLOR = "lime"
# Outline colour (RGB) of the predicted mask in overlay_heatmap; white stands out on the JET palette.
OVERLAY_OUTLINE_RGB = (255, 255, 255)


# --------------------------------------------------------------------------------------------------
# curve tables
# --------------------------------------------------------------------------------------------------


def roc_points(labels: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """ROC operating points: columns fpr, tpr, threshold, one row per distinct score plus the origin.

    labels `(N,)` 0/1, scores `(N,)`. Rows go from flag-nothing (threshold = the highest score, fpr =
    tpr = 0) to flag-everything (threshold just below the lowest score). Each threshold uses the strict
    rule: `score > threshold` gives exactly that row's fpr / tpr (thresholds sit midway between
    consecutive distinct scores). Empty (with the columns) if either class is missing.
    """
    labels, scores = check_image_inputs(labels, scores)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return pd.DataFrame({"fpr": [], "tpr": [], "threshold": []}, dtype=np.float64)
    distinct, tps, fps = descending_counts(labels, scores)
    return pd.DataFrame(
        {
            "fpr": np.r_[0.0, fps / n_neg],
            "tpr": np.r_[0.0, tps / n_pos],
            "threshold": np.r_[distinct[0], curve_thresholds(distinct)],
        }
    )


def pr_points(labels: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """Precision-recall points: columns recall, precision, threshold, recall non-decreasing.

    labels `(N,)` 0/1, scores `(N,)`. The first row is sklearn's end point (recall 0, precision 1,
    threshold = the highest score, i.e. nothing flagged); the others follow `roc_points`' strict
    thresholds. Empty (with the columns) if there is no defective image.
    """
    labels, scores = check_image_inputs(labels, scores)
    n_pos = int(labels.sum())
    if n_pos == 0:
        return pd.DataFrame({"recall": [], "precision": [], "threshold": []}, dtype=np.float64)
    distinct, tps, fps = descending_counts(labels, scores)
    return pd.DataFrame(
        {
            "recall": np.r_[0.0, tps / n_pos],
            "precision": np.r_[1.0, tps / (tps + fps)],
            "threshold": np.r_[distinct[0], curve_thresholds(distinct)],
        }
    )


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A Figure on an Agg canvas, not registered with pyplot."""
    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    """Write `fig` as PNG to `path` (parent folders created) and release its artists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    fig.clear()


def _check_rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Return `(H, W, 3)` uint8 from uint8 `(H, W, 3)`, `(H, W, 1)` or `(H, W)`; raise otherwise."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (0-255); got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"{name} must be (H, W, 3) or (H, W); got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image


def _check_map(raw_map: np.ndarray, shape: tuple[int, int], name: str) -> np.ndarray:
    """Return a finite float `(H, W)` map matching `shape`; raise otherwise."""
    raw_map = np.asarray(raw_map)
    if raw_map.shape != shape:
        raise ValueError(
            f"{name} shape {raw_map.shape} must equal the image's (H, W) {shape}; resize it first"
        )
    raw_map = raw_map.astype(np.float32, copy=False)
    if not np.isfinite(raw_map).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(raw_map)).sum())} nan or inf values")
    return raw_map


def _display_image(image: np.ndarray) -> np.ndarray:
    """uint8 images as they are; float images clipped to [0, 1] (reconstructions are in that range)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.dtype == np.uint8:
        return image
    return np.clip(image.astype(np.float32), 0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------


def marked_epoch(epochs: np.ndarray, losses: np.ndarray, kept_epoch: int | None) -> tuple[int, str]:
    """The row a training history's star marks, and its name: `kept_epoch`'s row ("kept") where its loss
    is known, else the lowest finite loss ("best")."""
    if not np.isfinite(losses).any():
        raise ValueError("history.train_loss has no finite value and there is no finite val_loss")
    at = np.flatnonzero(epochs == kept_epoch) if kept_epoch is not None else []
    if len(at) and np.isfinite(losses[at[0]]):
        return int(at[0]), "kept"
    return int(np.argmin(np.where(np.isfinite(losses), losses, np.inf))), "best"


def plot_training_history(history: pd.DataFrame, path: Path, kept_epoch: int | None = None) -> None:
    """Train / validation loss per epoch; log y axis if the losses span > LOG_RANGE_RATIO; the kept epoch
    marked.

    history: columns epoch, train_loss, val_loss (val_loss may be absent or NaN: epochs not validated are
    skipped). The kept epoch is `kept_epoch` (the detector's `best_epoch_`, e.g. the last one), else the
    lowest val_loss if any is finite, else the lowest train_loss. A history whose first column is
    bank_size (PatchCore) is drawn as coverage radius per bank size, one line per member. An empty history
    gives a placeholder PNG saying so.
    """
    if history.empty:  # e.g. PatchCore: no training loop; still write the PNG the pipeline declares
        fig = _new_figure(HISTORY_FIGSIZE)
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no epoch history: this detector has no training loop", ha="center", va="center")
        ax.set_axis_off()
        _save(fig, path)
        return
    if history.columns[0] == "bank_size":  # PatchCore: each memory bank's coverage as it was chosen
        _plot_coverage(history, path)
        return
    missing = [c for c in ("epoch", "train_loss") if c not in history.columns]
    if missing:
        raise ValueError(f"history lacks column(s) {missing}; it has {list(history.columns)}")
    epochs = history["epoch"].to_numpy(dtype=np.float64)
    train = history["train_loss"].to_numpy(dtype=np.float64)
    val = (
        history["val_loss"].to_numpy(dtype=np.float64)
        if "val_loss" in history.columns
        else np.full(len(history), np.nan)
    )
    fig = _new_figure(HISTORY_FIGSIZE)
    ax = fig.add_subplot()
    ax.plot(epochs, train, marker="o", markersize=3, label="train loss")
    has_val = bool(np.isfinite(val).any())
    if has_val:
        validated = np.isfinite(val)
        ax.plot(epochs[validated], val[validated], marker="o", markersize=3, label="val loss")
    best_series, best_name = (val, "val") if has_val else (train, "train")
    best, kept = marked_epoch(epochs, best_series, kept_epoch)
    ax.axvline(epochs[best], color="gray", linestyle="--", linewidth=1)
    ax.plot(
        [epochs[best]],
        [best_series[best]],
        marker="*",
        markersize=14,
        color="gold",
        markeredgecolor="black",
        linestyle="none",
        label=f"{kept} epoch {epochs[best]:g} ({best_name} {best_series[best]:.4g})",
    )
    values = np.r_[train, val]
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size and positive.size == np.isfinite(values).sum():
        if positive.max() / positive.min() > LOG_RANGE_RATIO:
            ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Training history")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def _plot_coverage(history: pd.DataFrame, path: Path) -> None:
    """Coverage radius (largest distance from a training patch to its nearest bank patch) per bank size,
    one line per `coverage_<stages>` column, each relative to its first value."""
    fig = _new_figure(HISTORY_FIGSIZE)
    ax = fig.add_subplot()
    sizes = history["bank_size"].to_numpy(dtype=np.float64)
    for name in history.columns[1:]:
        radius = history[name].to_numpy(dtype=np.float64)
        first = radius[0] if np.isfinite(radius[0]) and radius[0] > 0 else 1.0
        stages = name.removeprefix("coverage_").replace("_", "+")
        last = int(np.flatnonzero(np.isfinite(radius))[-1]) if np.isfinite(radius).any() else 0
        ax.plot(
            sizes, radius / first, label=f"stages {stages}: {radius[last] / first:.3f} at {sizes[last]:g}"
        )
    ax.set_xlabel("memory-bank size (patches)")
    ax.set_ylabel("coverage radius / first")
    ax.set_title("Memory-bank coverage: flat at the end = bank large enough")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_roc(labels: np.ndarray, scores: np.ndarray, path: Path, title: str) -> None:
    """ROC curve of image scores `(N,)` vs labels `(N,)`, AUROC in the legend (a note if undefined)."""
    points = roc_points(labels, scores)
    fig = _new_figure(CURVE_FIGSIZE)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1, label="chance")
    if points.empty:
        ax.text(0.5, 0.5, "ROC undefined: needs good and defective images", ha="center", va="center")
    else:
        auroc = image_auroc(labels, scores)
        ax.plot(points["fpr"], points["tpr"], drawstyle="default", linewidth=2, label=f"AUROC = {auroc:.3f}")
    _finish_unit_square(
        fig,
        ax,
        "false positive rate (good images flagged)",
        "true positive rate (defects detected)",
        title,
        "lower right",
        path,
    )


def plot_pr(labels: np.ndarray, scores: np.ndarray, path: Path, title: str) -> None:
    """Precision-recall curve of image scores `(N,)` vs labels `(N,)`, average precision in the legend."""
    labels_checked, scores_checked = check_image_inputs(labels, scores)
    points = pr_points(labels_checked, scores_checked)
    fig = _new_figure(CURVE_FIGSIZE)
    ax = fig.add_subplot()
    if points.empty:
        ax.text(0.5, 0.5, "PR curve undefined: no defective image", ha="center", va="center")
    else:
        prevalence = float(labels_checked.mean())
        ax.axhline(prevalence, color="gray", linestyle=":", linewidth=1, label=f"chance = {prevalence:.3f}")
        ap = float(average_precision_score(labels_checked, scores_checked))
        ax.step(points["recall"], points["precision"], where="pre", linewidth=2, label=f"AP = {ap:.3f}")
    _finish_unit_square(fig, ax, "recall (defects detected)", "precision", title, "lower left", path)


def _finish_unit_square(
    fig: Figure, ax: Any, xlabel: str, ylabel: str, title: str, legend_loc: str, path: Path
) -> None:
    """Axes in [0, 1] x [0, 1] with labels, grid and legend; save and close."""
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc=legend_loc)
    fig.tight_layout()
    _save(fig, path)


def plot_score_distribution(
    labels: np.ndarray, scores: np.ndarray, path: Path, title: str, threshold: float | None = None
) -> None:
    """Overlaid histograms (shared bins) of good vs defective scores `(N,)`, threshold as a vertical line."""
    labels, scores = check_image_inputs(labels, scores)
    if threshold is not None and not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite or None; got {threshold}")
    fig = _new_figure(CURVE_FIGSIZE)
    ax = fig.add_subplot()
    span = scores if threshold is None else np.r_[scores, threshold]
    if span.size:
        lo, hi = float(span.min()), float(span.max())
        bins = (
            np.linspace(lo, hi, HIST_BINS + 1) if hi > lo else np.linspace(lo - 0.5, lo + 0.5, HIST_BINS + 1)
        )
        for value, name, color in ((0, "good", GOOD_COLOR), (1, "defective", DEFECT_COLOR)):
            chosen = scores[labels == value]
            if chosen.size:
                ax.hist(chosen, bins=bins, alpha=0.55, color=color, label=f"{name} (n={chosen.size})")
    if threshold is not None:
        ax.axvline(
            threshold, color="black", linestyle="--", linewidth=1.5, label=f"threshold = {threshold:.4g}"
        )
    ax.set_xlabel("anomaly score (higher = more anomalous)")
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    _save(fig, path)


def overlay_heatmap(
    image: np.ndarray,
    raw_map: np.ndarray,
    pred_mask: np.ndarray | None = None,
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """RGB uint8 `(H, W, 3)`: `raw_map` `(H, W)` coloured with OpenCV's JET and blended onto `image`.

    image: RGB uint8 `(H, W, 3)` (or grayscale `(H, W)`). The map is scaled from `[vmin, vmax]`
    (default: its own min / max; pass fixed values to compare images) to the colormap and clipped; a
    constant map is drawn at the bottom colour. `alpha` is the heatmap's weight. The outline of
    `pred_mask` `(H, W)` bool, if given, is drawn in OVERLAY_OUTLINE_RGB. Pure: no file I/O.
    """
    image = _check_rgb(image)
    height, width = image.shape[:2]
    amap = _check_map(raw_map, (height, width), "raw_map")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    lo = float(amap.min()) if vmin is None else float(vmin)
    hi = float(amap.max()) if vmax is None else float(vmax)
    scaled = np.clip((amap - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(amap)
    heat_bgr = cv2.applyColorMap(np.round(scaled * 255.0).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat_bgr, cv2.COLOR_BGR2RGB)
    out = cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)
    if pred_mask is not None:
        mask = np.asarray(pred_mask)
        if mask.shape != (height, width):
            raise ValueError(f"pred_mask shape {mask.shape} must equal the image's (H, W) {(height, width)}")
        contours, _ = cv2.findContours((mask != 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        thickness = max(1, min(height, width) // 256)
        out = np.ascontiguousarray(out)
        cv2.drawContours(out, contours, -1, OVERLAY_OUTLINE_RGB, thickness)
    return out


def plot_example(
    image: np.ndarray,
    reconstruction: np.ndarray | None,
    overlay: np.ndarray,
    pred_mask: np.ndarray,
    gt_mask: np.ndarray | None,
    path: Path,
    title: str,
) -> None:
    """One row of panels for one test image: input, reconstruction, annotated overlay, masks.

    image: RGB uint8 `(H, W, 3)`; reconstruction: `(H, W, 3)` uint8 or float in [0, 1], panel omitted
    if None; overlay: `overlay.render_overlay`'s RGB image (the category's colour scale, verdict, colour
    bar; what `predict --out` writes); pred_mask / gt_mask `(H, W)` bool. The last panel outlines the
    predicted region (red) and the ground truth (green, if given) on the image.
    """
    image = _check_rgb(image)
    height, width = image.shape[:2]
    overlay = _check_rgb(overlay, "overlay")
    pred = np.asarray(pred_mask) != 0
    if pred.shape != (height, width):
        raise ValueError(f"pred_mask shape {pred.shape} must equal the image's (H, W) {(height, width)}")
    gt = None
    if gt_mask is not None:
        gt = np.asarray(gt_mask) != 0
        if gt.shape != (height, width):
            raise ValueError(f"gt_mask shape {gt.shape} must equal the image's (H, W) {(height, width)}")
    if reconstruction is not None and np.asarray(reconstruction).shape[:2] != (height, width):
        raise ValueError(
            f"reconstruction shape {np.asarray(reconstruction).shape} must match the image's "
            f"(H, W) {(height, width)}"
        )

    n_small = 2 + (reconstruction is not None)
    overlay_ratio = overlay.shape[1] / overlay.shape[0]
    widths = [1.0] * (n_small - 1) + [overlay_ratio, 1.0]
    fig = _new_figure((PANEL_INCHES * sum(widths), PANEL_INCHES + TITLE_INCHES))
    axes = fig.subplots(1, len(widths), gridspec_kw={"width_ratios": widths})
    panel = iter(axes)

    ax = next(panel)
    ax.imshow(image)
    ax.set_title("input")
    if reconstruction is not None:
        ax = next(panel)
        shown_recon = _display_image(reconstruction)
        ax.imshow(shown_recon, cmap="gray" if shown_recon.ndim == 2 else None)
        ax.set_title("reconstruction")
    ax = next(panel)
    ax.imshow(overlay)
    ax.set_title("overlay (category colour scale)")
    ax = next(panel)
    ax.imshow(image)
    handles = []
    if pred.any() and not pred.all():
        ax.contour(pred.astype(np.float32), levels=[0.5], colors=PRED_COLOR, linewidths=1.5)
    handles.append(Line2D([], [], color=PRED_COLOR, label=f"predicted ({100 * pred.mean():.1f}%)"))
    if gt is not None:
        if gt.any() and not gt.all():
            ax.contour(gt.astype(np.float32), levels=[0.5], colors=GT_COLOR, linewidths=1.5)
        handles.append(Line2D([], [], color=GT_COLOR, label=f"ground truth ({100 * gt.mean():.1f}%)"))
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.02), fontsize=7, framealpha=0.8)
    ax.set_title("region vs ground truth")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
