"""Where each stage writes, relative to the repository root; dvc.yaml declares the same paths."""

from __future__ import annotations

from pathlib import Path

BUILTIN_ROOT = Path("data/builtin")
PREPARED_ROOT = Path("data/prepared")
MODELS_ROOT = Path("models")
OUTPUTS_ROOT = Path("outputs")
METRICS_ROOT = Path("metrics")
PLOTS_ROOT = Path("plots")
REGISTRY_ROOT = Path("registry")

MODEL_FILE = "model.pt"
# models/<c>/history/: the per-epoch losses (CSV, a DVC plot) and their figure; left empty by detectors
# without a training loop (patchcore), so `dvc plots show` has no empty chart for them.
HISTORY_DIR = "history"
HISTORY_CSV = "history.csv"
HISTORY_PNG = "training_history.png"

PER_IMAGE_CSV = METRICS_ROOT / "per_image.csv"
METRICS_JSON = METRICS_ROOT / "metrics.json"  # full detail (per defect type too); not a DVC metric
THRESHOLDS_CSV = METRICS_ROOT / "thresholds.csv"
THRESHOLDS_JSON = METRICS_ROOT / "thresholds.json"
# The DVC metrics (`dvc metrics show`): the headline numbers, one small file per category + their mean.
CATEGORY_METRICS_DIR = METRICS_ROOT / "categories"
OVERALL_METRICS_JSON = METRICS_ROOT / "overall.json"
# What `visualize` writes under plots/<c>/ (listed, so the stage never deletes the folder's .gitignore).
PLOT_FILES = ("roc.csv", "pr.csv", "roc.png", "pr.png", "score_distribution.png", "examples")


def prepared_dir(category: str) -> Path:
    return PREPARED_ROOT / category


def model_dir(category: str) -> Path:
    return MODELS_ROOT / category


def outputs_dir(category: str) -> Path:
    return OUTPUTS_ROOT / category


def plots_dir(category: str) -> Path:
    return PLOTS_ROOT / category


def plot_outputs(category: str) -> list[Path]:
    """The outputs of `visualize@<category>` (dvc.yaml declares the same)."""
    return [plots_dir(category) / name for name in PLOT_FILES]


def category_metrics_file(category: str) -> Path:
    """The headline metrics of one category (a DVC metric)."""
    return CATEGORY_METRICS_DIR / f"{category}.json"


def registered_file(category: str) -> Path:
    """What `register` packaged: the service model's name, threshold, settings and the network's md5
    (no version number or run id: those live in MLflow, see tracking)."""
    return REGISTRY_ROOT / f"{category}.json"
