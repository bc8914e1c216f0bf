"""Shared fixtures: tiny datasets in the MVTec AD layout, written to a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("ANOMALY_SPOTTER_PROGRESS", "0")

REPO = Path(__file__).resolve().parents[1]
# Under CI (CI=true, as .ci/run runs), a test whose tool .ci/run installs fails instead of skipping:
# a green CI means every test ran.
IN_CI = os.environ.get("CI", "").lower() == "true"
MVTEC_256 = REPO.parent / "shared" / "data" / "mvtec_ad_256"


def skip_without_tool(reason: str) -> NoReturn:
    """Skip for want of a tool (Chromium, PostgreSQL, Java) that .ci/run installs; fail under CI."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}: .ci/run should have installed it", pytrace=False)
    pytest.skip(reason)


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_mvtec_category(
    root: Path,
    category: str = "widget",
    n_train: int = 5,
    n_test_good: int = 2,
    defects: dict[str, int] | None = None,
    size: int = 32,
    seed: int = 0,
    gray: bool = False,
) -> Path:
    """Write a small random category in the MVTec AD layout; returns the category folder."""
    rng = np.random.default_rng(seed)
    defects = {"scratch": 2, "hole": 2} if defects is None else defects
    cat = root / category
    shape = (size, size) if gray else (size, size, 3)

    def image() -> np.ndarray:
        return (100 + rng.integers(0, 40, shape)).astype(np.uint8)

    for i in range(n_train):
        write_png(cat / "train" / "good" / f"{i:03d}.png", image())
    for i in range(n_test_good):
        write_png(cat / "test" / "good" / f"{i:03d}.png", image())
    for defect, n in defects.items():
        for i in range(n):
            img = image()
            mask = np.zeros((size, size), dtype=np.uint8)
            mask[4 : 10 + i, 6:12] = 255
            img[mask > 0] = 250
            write_png(cat / "test" / defect / f"{i:03d}.png", img)
            write_png(cat / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return cat


@pytest.fixture
def tiny_mvtec(tmp_path: Path) -> Path:
    """A dataset root with one small category, `widget`."""
    make_mvtec_category(tmp_path / "data")
    return tmp_path / "data"
