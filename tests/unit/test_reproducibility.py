"""The reproducibility contract (docs/reproducibility.md), the part one machine can check.

Bit-identical everywhere: generated data (tests/unit/data/test_builtin_digests.py), prepared images, the
index and the split. Float-dependent: fitted models, maps and scores, and so the metrics in their last
digits, which move with the processor, its BLAS kernels and the thread count. The committed metrics keep
`TOLERANCE` on each AUROC across machines; here the thread count changes the float arithmetic and the
metrics must stay within it, while the prepared data stays bit-identical."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_spotter.core.metrics import image_auroc, pixel_auroc
from anomaly_spotter.data.builtin import BuiltinSpec, generate_category
from anomaly_spotter.data.prepared import load_prepared, prepare_category
from anomaly_spotter.detectors import detector_class, parse_options

TOLERANCE = 0.002  # on each image / pixel AUROC, AUPRO and F1 (docs/reproducibility.md)
CATEGORY = "board"  # structured parts: the detector's ensemble and border correction all take part


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("repro")
    spec = BuiltinSpec(image_size=96, n_train=16, n_test_good=6, n_test_per_defect=3)
    generate_category(root / "raw", CATEGORY, spec, seed=3)
    prepare_category(root / "raw", CATEGORY, root / "prepared", 96, 0.25, 3, False)
    digest = hashlib.md5((root / "prepared" / "images.npy").read_bytes()).hexdigest()
    return root / "prepared", digest


def _scores(prepared: Path, threads: int) -> tuple[float, float, np.ndarray]:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data = load_prepared(prepared)
        train, val, test = data.split("train"), data.split("val"), data.split("test")
        options = parse_options("patchcore", {"input_size": 128, "coreset_ratio": 0.1}, seed=3)
        detector = detector_class("patchcore").from_options(options, seed=3)
        detector.fit(np.asarray(train.images), np.asarray(val.images))
        maps = detector.anomaly_maps(np.asarray(test.images))
    finally:
        torch.set_num_threads(old)
    labels = test.index["label"].to_numpy()
    return (
        image_auroc(labels, maps.reshape(len(maps), -1).max(axis=1)),
        pixel_auroc(np.asarray(test.masks), maps),
        maps,
    )


def test_prepared_data_is_bit_identical_when_prepared_again(
    prepared: tuple[Path, str], tmp_path: Path
) -> None:
    folder, digest = prepared
    prepare_category(folder.parent / "raw", CATEGORY, tmp_path / "again", 96, 0.25, 3, False)
    assert hashlib.md5((tmp_path / "again" / "images.npy").read_bytes()).hexdigest() == digest


def test_metrics_keep_the_tolerance_across_thread_counts(prepared: tuple[Path, str]) -> None:
    one = _scores(prepared[0], threads=1)
    two = _scores(prepared[0], threads=2)
    assert abs(one[0] - two[0]) <= TOLERANCE and abs(one[1] - two[1]) <= TOLERANCE, (one[:2], two[:2])
    assert 0.5 < one[0] <= 1.0  # a real detector on real defects, not a constant
    np.testing.assert_allclose(one[2], two[2], rtol=1e-3, atol=1e-3)
