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
HISTORY_CSV = "history.csv"
HISTORY_PNG = "training_history.png"

PER_IMAGE_CSV = METRICS_ROOT / "per_image.csv"
METRICS_JSON = METRICS_ROOT / "metrics.json"
THRESHOLDS_CSV = METRICS_ROOT / "thresholds.csv"
THRESHOLDS_JSON = METRICS_ROOT / "thresholds.json"
THRESHOLD_METRICS_JSON = METRICS_ROOT / "threshold_metrics.json"


def prepared_dir(category: str) -> Path:
    return PREPARED_ROOT / category


def model_dir(category: str) -> Path:
    return MODELS_ROOT / category


def outputs_dir(category: str) -> Path:
    return OUTPUTS_ROOT / category


def plots_dir(category: str) -> Path:
    return PLOTS_ROOT / category


def registered_file(category: str) -> Path:
    """What `register` recorded: the service model's registered name, version and URI."""
    return REGISTRY_ROOT / f"{category}.json"
