"""The dashboard's line review data (`anomaly_spotter.review.line`), without Streamlit or MLflow.

A scoring log is written with `scoring_log.make_rows` + `append` about real PNG files, as `predict --log`
writes it; decisions go through `feedback.record_decision` into a temporary feedback folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_spotter.feedback import (
    CONFIRMED_DEFECT,
    FALSE_ALARM,
    MISSED_DEFECT,
    current_decisions,
    read_decisions,
)
from anomaly_spotter.feedback.store import FeedbackError
from anomaly_spotter.review import line
from anomaly_spotter.serving import scoring_log
from tests.conftest import write_png

CATEGORY = "widget"
THRESHOLD = 0.5
N_IMAGES = 20  # scores 0.05, 0.10, ... 1.00: the 10 above THRESHOLD are flagged


def _image(i: int) -> np.ndarray:
    return np.full((16, 16, 3), 10 * i, dtype=np.uint8)


def _rows(
    images: list[Path], scores: list[float], category: str = CATEGORY, version: str = "3"
) -> pd.DataFrame:
    context = scoring_log.LogContext(
        "predict",
        f"models:/anomaly-spotter-{category}@champion",
        f"anomaly-spotter-{category}",
        version,
        category,
    )
    hashes = [scoring_log.sha256_hex(p.read_bytes()) for p in images]
    results = [
        {
            "score": s,
            "threshold": THRESHOLD,
            "verdict": "defective" if s > THRESHOLD else "good",
            "anomaly_percentage": 0.0,
        }
        for s in scores
    ]
    return scoring_log.make_rows(context, [str(p) for p in images], hashes, results)


@pytest.fixture
def scored(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A log of N_IMAGES widget images (scores 0.05 .. 1.00) and the image files."""
    images = []
    for i in range(N_IMAGES):
        write_png(tmp_path / "camera" / f"{i:03d}.png", _image(i))
        images.append(tmp_path / "camera" / f"{i:03d}.png")
    log = tmp_path / "logs" / CATEGORY
    scoring_log.append(log, _rows(images, [0.05 * (i + 1) for i in range(N_IMAGES)]))
    return log, images


def _latest(log: Path, feedback: Path) -> pd.DataFrame:
    rows = line.latest_rows(scoring_log.read_log(log))
    return line.with_decisions(rows, line.category_decisions(feedback, CATEGORY))


def _decide(
    root: Path, log: Path, image: Path, decision: str, who: str = "ana", kind: str = ""
) -> line.Recorded:
    rows = line.latest_rows(scoring_log.read_log(log))
    row = rows[rows["image"] == str(image)].iloc[0].to_dict()
    return line.record(root, root / "feedback", log, row, decision, who, kind, note="checked at the bench")


# --------------------------------------------------------------------------------------------------
# which rows to show
# --------------------------------------------------------------------------------------------------


def test_an_image_scored_twice_is_shown_once_with_its_latest_verdict(
    scored: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    log, images = scored
    # image 0 (passed at 0.05) scored again by version 4, now flagged; another category in the same log
    scoring_log.append(log, _rows([images[0]], [0.9], version="4"))
    write_png(tmp_path / "other.png", _image(24))
    scoring_log.append(log, _rows([tmp_path / "other.png"], [2.0], category="gadget"))
    rows = line.latest_rows(scoring_log.read_log(log))
    widget = rows[rows["category"] == CATEGORY]
    assert len(widget) == N_IMAGES and widget["image_sha256"].is_unique
    again = widget[widget["image"] == str(images[0])].iloc[0]
    assert (again["score"], again["verdict"], again["model_version"]) == (0.9, "defective", "4")
    table = line.summary(scoring_log.read_log(log), tmp_path / "feedback").set_index("category")
    assert (
        table.loc[CATEGORY, "log rows"] == N_IMAGES + 1 and table.loc[CATEGORY, "images scored"] == N_IMAGES
    )
    assert table.loc[CATEGORY, "flagged"] == 11 and table.loc[CATEGORY, "passed"] == 9
    assert table.loc[CATEGORY, "model versions"] == "anomaly-spotter-widget v3, anomaly-spotter-widget v4"
    assert table.loc["gadget"].tolist()[:6] == [1, 1, 1, 0, 0, 1]


def test_flagged_to_decide_is_highest_score_first_and_drops_decided_images(
    scored: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    log, images = scored
    todo = line.flagged_to_decide(_latest(log, tmp_path / "feedback"))
    assert todo["score"].tolist() == pytest.approx([0.05 * (i + 1) for i in range(N_IMAGES - 1, 9, -1)])
    _decide(tmp_path, log, images[19], CONFIRMED_DEFECT, kind="scratch")
    _decide(tmp_path, log, images[15], FALSE_ALARM)
    rows = _latest(log, tmp_path / "feedback")
    todo = line.flagged_to_decide(rows)
    assert (
        len(todo) == 8
        and str(images[19]) not in set(todo["image"])
        and str(images[15]) not in set(todo["image"])
    )
    done = line.decided_rows(rows)
    assert set(done["image"]) == {str(images[19]), str(images[15])}
    first = done.set_index("image").loc[str(images[19])]
    assert (first["decision"], first["decided_by"], first["decided_type"], first["decided_note"]) == (
        CONFIRMED_DEFECT,
        "ana",
        "scratch",
        "checked at the bench",
    )
    table = line.summary(scoring_log.read_log(log), tmp_path / "feedback").iloc[0]
    assert (table["decided"], table["flagged to decide"]) == (2, 8)


def test_the_passed_sample_is_seeded_and_stable_when_one_is_decided(
    scored: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    log, _ = scored
    rows = _latest(log, tmp_path / "feedback")
    sample = line.passed_sample(rows, 4, seed=7)
    assert (
        len(sample) == 4 and (sample["verdict"] == "good").all() and sample["score"].is_monotonic_decreasing
    )
    assert sample["image"].tolist() == line.passed_sample(rows, 4, seed=7)["image"].tolist()
    assert set(sample["image"]) != set(line.passed_sample(rows, 4, seed=8)["image"])
    assert len(line.passed_sample(rows, 50, seed=7)) == 10  # every passed image, no more
    # the sample is the 4 passed images of lowest rank for the seed
    passed = rows[rows["verdict"] == "good"]
    ranked = sorted(passed["image_sha256"], key=lambda d: line.sample_rank(d, 7))
    assert set(sample["image_sha256"]) == set(ranked[:4])
    # deciding one brings in the next of the order, the other three stay
    gone = Path(sample["image"].iloc[0])
    _decide(tmp_path, log, gone, MISSED_DEFECT)
    after = line.passed_sample(_latest(log, tmp_path / "feedback"), 4, seed=7)
    assert set(after["image_sha256"]) == set(ranked[:5]) - {sample["image_sha256"].iloc[0]}


def test_pages_split_rows_like_the_gallery() -> None:
    rows = pd.DataFrame({"x": range(25)})
    assert line.page_count(25, 12) == 3 and line.page_count(0, 12) == 1 and line.page_count(24, 12) == 2
    assert line.page_rows(rows, 3, 12)["x"].tolist() == [24]
    assert line.page_rows(rows, 2, 12)["x"].tolist() == list(range(12, 24))


# --------------------------------------------------------------------------------------------------
# recording
# --------------------------------------------------------------------------------------------------


def test_record_writes_the_decision_and_copies_the_image(
    scored: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    log, images = scored
    recorded = _decide(tmp_path, log, images[18], CONFIRMED_DEFECT, who="  ana  ", kind="scratch")
    folder = tmp_path / "feedback" / CATEGORY
    decisions = read_decisions(folder)
    assert len(decisions) == 1
    row = decisions.iloc[0]
    digest = scoring_log.sha256_hex(images[18].read_bytes())
    assert (row["reviewer"], row["decision"], row["defect_type"], row["image_sha256"]) == (
        "ana",
        CONFIRMED_DEFECT,
        "scratch",
        digest,
    )
    assert (row["model_name"], row["model_version"], row["verdict"]) == (
        "anomaly-spotter-widget",
        "3",
        "defective",
    )
    assert float(row["score"]) == pytest.approx(0.95) and float(row["threshold"]) == THRESHOLD
    assert row["scoring_log"] == str(log) and row["source_image"] == str(images[18])
    assert (folder / row["image_file"]).read_bytes() == images[18].read_bytes()
    assert recorded.folder == folder and recorded.row["image_sha256"] == digest
    # tmp_path is no DVC repository: the decision stays, DVC's refusal is reported
    assert recorded.dvc_file is None
    assert recorded.dvc_error == (
        f"{tmp_path.resolve()} is not a DVC repository (no .dvc folder): run `dvc init` there, then "
        f"`dvc add feedback/{CATEGORY}`"
    )
    assert (
        "`dvc repro`" in recorded.next_step
        and f"git add feedback/{CATEGORY}.dvc dvc.lock" in recorded.next_step
    )
    # a changed decision is appended; the latest is in force
    _decide(tmp_path, log, images[18], FALSE_ALARM, who="bo")
    decisions = read_decisions(folder)
    assert decisions["decision"].tolist() == [CONFIRMED_DEFECT, FALSE_ALARM]
    assert current_decisions(decisions)[["decision", "reviewer"]].values.tolist() == [[FALSE_ALARM, "bo"]]


def test_record_refuses_what_it_cannot_record(scored: tuple[Path, list[Path]], tmp_path: Path) -> None:
    log, images = scored
    with pytest.raises(line.LineReviewError, match="enter your name as reviewer in the sidebar"):
        _decide(tmp_path, log, images[18], FALSE_ALARM, who=" ")
    with pytest.raises(line.LineReviewError, match="judged good can be decided as: missed defect"):
        _decide(tmp_path, log, images[0], FALSE_ALARM)
    with pytest.raises(FeedbackError, match="needs its defect type"):
        _decide(tmp_path, log, images[18], CONFIRMED_DEFECT)
    images[17].unlink()
    with pytest.raises(line.LineReviewError, match=f"{images[17]}: image file not found") as err:
        _decide(tmp_path, log, images[17], FALSE_ALARM)
    assert f"the scoring log {log} names" in str(err.value)
    assert not (tmp_path / "feedback" / CATEGORY / "decisions.csv").exists()
    # a file changed since it was scored is not shown
    write_png(images[16], _image(25))
    rows = line.latest_rows(scoring_log.read_log(log))
    with pytest.raises(line.LineReviewError, match="changed since it was scored"):
        line.scored_image(log, rows[rows["image"] == str(images[16])].iloc[0].to_dict())


def test_record_starts_dvc_versioning_on_the_first_decision(
    scored: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    log, images = scored
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, timeout=120)
    first = _decide(tmp_path, log, images[19], FALSE_ALARM)
    assert first.dvc_error is None and first.dvc_file == str(tmp_path / "feedback" / f"{CATEGORY}.dvc")
    assert "outs:" in Path(first.dvc_file).read_text()
    assert f"DVC versions feedback/{CATEGORY} from now on" in first.next_step
    second = _decide(tmp_path, log, images[18], FALSE_ALARM)
    assert second.dvc_file is None and second.dvc_error is None and "from now on" not in second.next_step


# --------------------------------------------------------------------------------------------------
# the rest of what the page reads
# --------------------------------------------------------------------------------------------------


def test_the_log_folder_comes_from_the_query_or_logs_category(tmp_path: Path) -> None:
    assert line.default_log(tmp_path, "shared/line3", ["fabric"]) == "shared/line3"
    assert line.default_log(tmp_path, None, ["fabric", "washer"]) == ""
    (tmp_path / "logs" / "washer").mkdir(parents=True)
    assert line.default_log(tmp_path, None, ["fabric", "washer"]) == "logs/washer"


def test_params_default_without_params_yaml(tmp_path: Path) -> None:
    params = line.line_params(tmp_path)
    assert line.feedback_root(tmp_path, params) == tmp_path / "feedback"
    (tmp_path / "params.yaml").write_text("feedback:\n  root: reviewed\n")
    assert line.feedback_root(tmp_path, line.line_params(tmp_path)) == tmp_path / "reviewed"


def test_defect_types_offered_come_from_feedback_dataset_and_outputs(
    scored: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    log, images = scored
    params = line.line_params(tmp_path)
    assert line.known_defect_types(tmp_path, params, tmp_path / "feedback", CATEGORY) == []
    for folder in ("good", "hole", "stain"):
        (tmp_path / params.data.root / CATEGORY / "test" / folder).mkdir(parents=True)
    outputs = tmp_path / "outputs" / CATEGORY
    outputs.mkdir(parents=True)
    pd.DataFrame({"defect_type": ["good", "thread"], "label": [0, 1]}).to_csv(
        outputs / "scores.csv", index=False
    )
    _decide(tmp_path, log, images[19], CONFIRMED_DEFECT, kind="dent")
    assert line.known_defect_types(tmp_path, params, tmp_path / "feedback", CATEGORY) == [
        "dent",
        "hole",
        "stain",
        "thread",
    ]


def test_a_rows_model_image_and_caption(scored: tuple[Path, list[Path]], tmp_path: Path) -> None:
    log, images = scored
    row = line.latest_rows(scoring_log.read_log(log)).iloc[-1].to_dict()
    assert line.model_uri(row) == "models:/anomaly-spotter-widget/3"  # the version, not the alias
    assert (
        line.model_uri({**row, "model_name": "", "model_version": "", "model_uri": "exported/"})
        == "exported/"
    )
    assert line.choices(row) == (FALSE_ALARM, CONFIRMED_DEFECT)
    np.testing.assert_array_equal(line.scored_image(log, row), _image(19))
    text = line.caption(row)
    assert text.startswith(
        "camera/019.png · score 1.000 / threshold 0.500 (defective) · anomaly-spotter-widget v3 · "
    )
    decided = {
        **row,
        "decision": MISSED_DEFECT,
        "decided_by": "ana",
        "decided_at": "2025-01-02T03:04:05+00:00",
    }
    decided |= {"decided_type": "", "decided_note": "faint"}
    assert line.caption(decided).endswith(
        "decided: **missed defect** by ana at 2025-01-02T03:04:05+00:00: faint"
    )
    # a served image: kept in the log folder, named relative to it
    data = images[3].read_bytes()
    kept = scoring_log.keep_image(log, data)
    served = {**row, "image": kept, "image_sha256": scoring_log.sha256_hex(data)}
    assert line.image_path(log, served) == log / kept
    np.testing.assert_array_equal(line.scored_image(log, served), _image(3))


def test_line_module_imports_without_streamlit() -> None:
    code = "import sys; sys.modules['streamlit'] = None\nimport anomaly_spotter.review.line\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
