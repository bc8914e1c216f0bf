"""The scoring log: one schema for every writer, atomic appends, pandas and the background writer."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_spotter.serving import scoring_log
from anomaly_spotter.serving.scoring_log import LogContext, ScoringLogError

RESULTS = [
    {"score": 1.5, "threshold": 1.0, "verdict": "defective", "anomaly_percentage": 2.5},
    {"score": 0.25, "threshold": 1.0, "verdict": "good", "anomaly_percentage": 0.0},
]


def _context(batch: str = "b1") -> LogContext:
    return LogContext("predict", "models:/anomaly-spotter-widget@champion", "anomaly-spotter-widget", "3",
                      "widget", batch)  # fmt: skip


def test_rows_append_and_read_back_with_one_schema(tmp_path: Path) -> None:
    log = tmp_path / "log"
    rows = scoring_log.make_rows(_context(), ["/a/1.png", "/a/2.png"], ["h1", "h2"], RESULTS)
    first = scoring_log.append(log, rows)
    second = scoring_log.append(log, scoring_log.make_rows(_context("b2"), ["/a/3.png"], ["h3"], RESULTS[:1]))
    assert first != second and [p.name for p in scoring_log.part_files(log)] == sorted(
        [first.name, second.name]
    )
    assert not list(log.glob(".*"))  # no temporary file left
    frame = scoring_log.read_log(log)
    assert list(frame.columns) == list(scoring_log.LOG_COLUMNS) and len(frame) == 3
    assert list(frame["image"]) == ["/a/1.png", "/a/2.png", "/a/3.png"]
    assert list(frame["batch"]) == ["b1", "b1", "b2"] and set(frame["model_version"]) == {"3"}
    assert frame["score"].tolist() == [1.5, 0.25, 1.5] and frame["verdict"].tolist()[:2] == [
        "defective",
        "good",
    ]
    assert str(frame["scored_at"].dtype) == "datetime64[us, UTC]"
    # pandas reads the folder as one dataset, as Spark does
    assert len(pd.read_parquet(log)) == 3
    assert scoring_log.append(log, rows.iloc[:0]) is None  # nothing to append: no empty file


def test_missing_or_empty_log_is_named(tmp_path: Path) -> None:
    with pytest.raises(ScoringLogError, match=f"{tmp_path / 'none'}: no scoring log there"):
        scoring_log.read_log(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScoringLogError, match="holds no part-"):
        scoring_log.read_log(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    rows = scoring_log.make_rows(_context(), ["/a.png"], ["h"], RESULTS[:1])
    with pytest.raises(ScoringLogError, match="not a folder"):
        scoring_log.append(tmp_path / "file", rows)


def test_served_images_are_kept_once_by_content(tmp_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(40))
    relative = scoring_log.keep_image(tmp_path, png)
    digest = hashlib.sha256(png).hexdigest()
    assert relative == f"_images/{digest[:2]}/{digest}.png"
    assert scoring_log.keep_image(tmp_path, png) == relative  # the same content: the same file
    assert scoring_log.image_file(tmp_path, relative).read_bytes() == png
    assert scoring_log.image_file(tmp_path, "file:///x/y.png") == Path("/x/y.png")
    assert scoring_log.image_extension(b"\x93NUMPY...") == "npy"
    assert scoring_log.image_extension(b"????") == "bin"


def test_background_writer_flushes_by_rows_and_at_close(tmp_path: Path) -> None:
    context = LogContext("serve", "models:/m/1", "m", "1", "widget")
    writer = scoring_log.BackgroundWriter(tmp_path, context, flush_rows=3, flush_seconds=60)
    images = [np.full(4, i, np.uint8).tobytes() for i in range(4)]
    writer.submit(images[:2], RESULTS)
    writer.submit(images[2:], RESULTS)  # 4 rows >= 3: one part file now
    writer.submit(images[:1], RESULTS[:1])
    writer.close()  # and the last row at close
    assert len(scoring_log.part_files(tmp_path)) == 2
    frame = scoring_log.read_log(tmp_path)
    assert len(frame) == 5 and set(frame["source"]) == {"serve"}
    assert frame["batch"].nunique() == 3  # one batch per request
    assert frame["image_sha256"].tolist()[:4] == [hashlib.sha256(b).hexdigest() for b in images]
    kept = scoring_log.image_file(tmp_path, frame["image"].iloc[0])
    assert kept.read_bytes() == images[0]
    assert len(pd.read_parquet(tmp_path)) == 5  # the kept images do not trip pyarrow's dataset reader
