"""Feedback: decisions recorded append-only with the image copied in, and the index rows they give."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_spotter.core.errors import DatasetError
from anomaly_spotter.core.thresholds import field_rates
from anomaly_spotter.data.prepared import load_prepared, prepare_category
from anomaly_spotter.feedback import (
    CONFIRMED_DEFECT,
    DECISION_COLUMNS,
    FALSE_ALARM,
    MISSED_DEFECT,
    current_decisions,
    feedback_rows,
    read_decisions,
    record_decision,
)
from anomaly_spotter.feedback.gate import FieldComparison
from anomaly_spotter.feedback.store import FeedbackError, share
from anomaly_spotter.tracking.promotion import PromotionDecision, with_field_gate
from tests.conftest import make_mvtec_category, write_png


def _images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = [folder / f"line_{i:03d}.png" for i in range(n)]
    for path in paths:
        write_png(path, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    return paths


def test_decisions_are_appended_with_the_image_copied_in(tmp_path: Path) -> None:
    root = tmp_path / "feedback"
    first, second = _images(tmp_path / "line", 2)
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    scored = {"image": str(first), "image_sha256": digest, "model_name": "anomaly-spotter-widget",
              "model_version": "4", "score": 2.5, "threshold": 1.0, "verdict": "defective",
              "scoring_log": "logs/widget"}  # fmt: skip
    row = record_decision(root, "widget", first, FALSE_ALARM, "ada", note="new supplier", scored=scored)
    assert row["image_file"] == f"images/{digest}.png" and row["model_version"] == "4"
    assert (root / "widget" / row["image_file"]).read_bytes() == first.read_bytes()
    # a second decision on the same image (a correction) is appended; the latest is in force
    record_decision(root, "widget", first, CONFIRMED_DEFECT, "bo", defect_type="scratch", scored=scored)
    record_decision(root, "widget", second, MISSED_DEFECT, "ada")
    with open(root / "widget" / "decisions.csv", newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert [r["decision"] for r in lines] == [FALSE_ALARM, CONFIRMED_DEFECT, MISSED_DEFECT]
    assert [r["reviewer"] for r in lines] == ["ada", "bo", "ada"] and all(r["decided_at"] for r in lines)
    assert list(lines[0]) == list(DECISION_COLUMNS)
    current = current_decisions(read_decisions(root / "widget"))
    assert current["decision"].tolist() == [CONFIRMED_DEFECT, MISSED_DEFECT]
    assert len(list((root / "widget" / "images").iterdir())) == 2  # one copy per content


def test_bad_decisions_are_refused_by_name(tmp_path: Path) -> None:
    (image,) = _images(tmp_path, 1)
    root = tmp_path / "feedback"
    with pytest.raises(FeedbackError, match="use one of false_alarm, confirmed_defect, missed_defect"):
        record_decision(root, "widget", image, "maybe", "ada")
    with pytest.raises(FeedbackError, match="needs its defect type"):
        record_decision(root, "widget", image, CONFIRMED_DEFECT, "ada")
    with pytest.raises(FeedbackError, match="reviewer's name"):
        record_decision(root, "widget", image, FALSE_ALARM, " ")
    with pytest.raises(FeedbackError, match="changed since it was scored"):
        record_decision(root, "widget", image, FALSE_ALARM, "ada", scored={"image_sha256": "0" * 64})
    with pytest.raises(FeedbackError, match="cannot read the image"):
        record_decision(root, "widget", tmp_path / "gone.png", FALSE_ALARM, "ada")
    assert not (root / "widget" / "decisions.csv").exists()  # nothing recorded by a refused decision
    record_decision(root, "widget", image, FALSE_ALARM, "ada")
    (root / "widget" / "images" / f"{hashlib.sha256(image.read_bytes()).hexdigest()}.png").unlink()
    with pytest.raises(DatasetError, match="a decision names this image but it is missing"):
        read_decisions(root / "widget")


def test_reviewed_goods_split_by_content_and_stay_put(tmp_path: Path) -> None:
    """Goods go to train / val / field by content hash alone: reviewing more images never moves one."""
    root = tmp_path / "feedback"
    images = _images(tmp_path / "line", 40)
    for image in images[:20]:
        record_decision(root, "widget", image, FALSE_ALARM, "ada")
    record_decision(root, "widget", images[20], CONFIRMED_DEFECT, "ada", defect_type="scratch")
    record_decision(root, "widget", images[21], MISSED_DEFECT, "ada")
    before = feedback_rows(root / "widget", "widget", 0.2, 0.3)
    for image in images[22:]:
        record_decision(root, "widget", image, FALSE_ALARM, "ada")
    after = feedback_rows(root / "widget", "widget", 0.2, 0.3)
    kept = after.set_index("image_path").loc[before["image_path"]].reset_index()
    pd.testing.assert_frame_equal(kept[before.columns], before)
    goods = after[after["label"] == 0]
    expected = [share(Path(p).stem, "holdout") < 0.3 for p in goods["image_path"]]
    assert (goods["split"] == "field").tolist() == expected
    assert 0.1 < (goods["split"] == "field").mean() < 0.5 and (goods["split"] == "train").sum() > 10
    defects = after[after["label"] == 1]
    assert defects["split"].tolist() == ["field", "field"]
    assert defects["defect_type"].tolist() == ["scratch", "missed"] and defects["has_mask"].tolist() == [0, 0]


def test_prepare_adds_the_reviewed_images(tmp_path: Path) -> None:
    make_mvtec_category(tmp_path / "data", "widget", n_train=10, size=32)
    root = tmp_path / "feedback"
    images = _images(tmp_path / "line", 12, seed=1)
    for image in images[:10]:
        record_decision(root, "widget", image, FALSE_ALARM, "ada")
    record_decision(root, "widget", images[10], CONFIRMED_DEFECT, "ada", defect_type="dent")
    reviewed = feedback_rows(root / "widget", "widget", 0.2, 0.3)
    counts = prepare_category(tmp_path / "data", "widget", tmp_path / "prep", 32, 0.2, 0, False, reviewed)
    prepared = load_prepared(tmp_path / "prep")
    index = prepared.index
    assert counts["n_reviewed"] == 11 and counts["n_field_defective"] == 1
    assert counts["n_defective"] == 4  # the dataset's test defects only
    assert counts["n_train"] + counts["n_val"] + counts["n_field"] == 10 + 11  # the dataset's and reviewed
    field = index[index["split"] == "field"]
    assert field["label"].sum() == 1 and (field["defect_type"] == "dent").sum() == 1
    row = index[index["image_path"].str.endswith(".png") & index["image_path"].str.contains("feedback")]
    assert len(row) == 11
    first = int(row["row"].iloc[0])
    np.testing.assert_array_equal(prepared.images[first], np.asarray(_read(row["image_path"].iloc[0])))


def _read(path: str) -> np.ndarray:
    from anomaly_spotter.data.images import read_rgb

    return read_rgb(Path(path))


def test_field_rates_and_the_gate() -> None:
    rates = field_rates(np.array([1, 1, 0, 0, 0]), np.array([2.0, 0.5, 1.5, 0.2, 0.1]), 1.0)
    assert rates == {"field_recall": 0.5, "field_false_alarm_rate": 1 / 3, "field_detected": "1/2",
                     "field_false_alarms": "1/3"}  # fmt: skip
    assert field_rates(np.array([0]), np.array([0.0]), 1.0)["field_recall"] is None
    worse = FieldComparison(2, 3, 2, 1, 1, 1, newly_missed=["/f/a.png"])
    assert not worse.passes and "misses 1 the champion catches (a.png)" in worse.reason()
    noisier = FieldComparison(2, 3, 2, 2, 0, 1)
    assert not noisier.passes and "more false alarms" in noisier.reason()
    better = FieldComparison(2, 3, 1, 2, 2, 0)
    assert better.passes and "no worse than the champion" in better.reason()
    assert "2/2" in better.table() and "0/3" in better.table()
    ok = PromotionDecision(True, "image_auroc 0.9 > champion's 0.8")
    assert with_field_gate(ok, True, better.reason()).promote
    refused = with_field_gate(ok, False, worse.reason())
    assert not refused.promote and refused.reason.startswith("field set:")
