"""`anomaly-spotter score-spark` on `local[2]`: a few hundred small images of mixed formats, two that cannot
be scored and a file that is not an image, scored with the registered model of test_serving's store;
every row equals `anomaly-spotter predict`'s CSV, the unreadable get predict's own error message.

The helpers that need no Spark (settings, names, the preparation of one image) are tested first, without
Java.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from anomaly_spotter import cli
from anomaly_spotter.core.errors import AnomalySpotterError
from anomaly_spotter.data.geometry import Geometry, crop
from anomaly_spotter.deploy import spark
from anomaly_spotter.serving import scoring_log
from anomaly_spotter.serving.inference import InferenceConfig, decode_image, preprocess, read_image
from anomaly_spotter.serving.model import load_service_model
from tests.conftest import IN_CI, REPO
from tests.integration.test_serving import store  # noqa: F401 - fixture: registered model + champion
from tests.unit.data.test_images import png16
from tests.unit.test_cli import NAME, ServiceStore

MODEL = f"models:/{NAME}@champion"
N_IMAGES = 300
SPARK_TIMEOUT_S = 240


def _config(**kw: object) -> InferenceConfig:
    return InferenceConfig("widget", 32, 0.5, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# no Spark
# --------------------------------------------------------------------------------------------------


def test_batch_size_respects_the_models_request_limits() -> None:
    assert spark.batch_size(_config()) == 64
    assert spark.batch_size(_config(max_images_per_request=16)) == 16
    # 64 images of 1024 px are 67 megapixels: over a 10-megapixel limit, 9 fit
    assert spark.batch_size(InferenceConfig("w", 1024, 0.5, max_request_megapixels=10)) == 9
    assert spark.batch_size(InferenceConfig("w", 1024, 0.5, max_request_megapixels=1)) == 1  # 1.05 MP each


def test_spark_conf_defaults_and_overrides() -> None:
    conf = spark.spark_conf(64)
    assert conf["spark.sql.execution.arrow.maxRecordsPerBatch"] == "64"
    assert int(conf["spark.sql.files.maxPartitionBytes"]) >= 1 << 30
    assert int(conf["spark.sql.files.openCostInBytes"]) <= 1 << 10
    assert conf["spark.executorEnv.OMP_NUM_THREADS"] == "1"
    user = spark.parse_conf(["spark.task.cpus=2", "spark.sql.execution.arrow.maxRecordsPerBatch=8"])
    conf = spark.spark_conf(64, user)
    assert conf["spark.executorEnv.OMP_NUM_THREADS"] == "2"
    assert conf["spark.sql.execution.arrow.maxRecordsPerBatch"] == "8"
    with pytest.raises(AnomalySpotterError, match="at most 16 images per call"):
        spark.spark_conf(16, {"spark.sql.execution.arrow.maxRecordsPerBatch": "64"})
    with pytest.raises(AnomalySpotterError, match="expected KEY=VALUE"):
        spark.parse_conf(["spark.driver.memory"])


def test_local_master_environment() -> None:
    env = spark.local_environment("local[2]", {})
    assert env["PYSPARK_PYTHON"] == sys.executable and env["SPARK_LOCAL_IP"] == "127.0.0.1"
    assert "SPARK_LOCAL_IP" not in spark.local_environment("local[*]", {"SPARK_LOCAL_IP": "10.0.0.5"})
    assert spark.local_environment("yarn", {}) == {}
    assert spark.local_environment("spark://host:7077", {}) == {}


def test_input_kinds_and_names() -> None:
    assert spark.input_kind("todo.parquet") == "parquet"
    assert spark.input_kind("s3a://bucket/list.PARQUET/") == "parquet"
    assert spark.input_kind("photos/2026-*/*.png") == "glob"
    assert spark.input_kind("photos") == "path"
    assert spark.has_scheme("hdfs:///x") and spark.has_scheme("file:/x") and not spark.has_scheme("a/b:c")
    assert spark.local_path("file:/a/b c.png") == "/a/b c.png"
    assert spark.local_path("file:///a/b.png") == "/a/b.png"
    assert spark.local_path("hdfs://nn/a.png") is None
    assert spark.display_path("file:/work/x/a.png", "/work") == "x/a.png"
    assert spark.display_path("file:/elsewhere/a.png", "/work") == "/elsewhere/a.png"
    assert spark.display_path("file:/work/x/a.png", None) == "/work/x/a.png"
    assert spark.display_path("s3a://b/a.png", "/work") == "s3a://b/a.png"


def test_prepare_image_is_predicts_preprocessing(tmp_path: Path) -> None:
    """The model input is predict's decoded image at the working resolution (aspect kept: the part of the
    canvas the image fills, which the model fits back into the same place), losslessly; errors are
    predict's messages."""
    config = _config()
    rng = np.random.default_rng(0)
    path = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (50, 45, 3), dtype=np.uint8)).save(path)
    image, error = spark.prepare_image(path.read_bytes(), str(path), config)
    assert error is None
    canvases, boxes = preprocess([read_image(path)], Geometry.square(32))
    assert boxes[0] == (0, 1, 32, 29)  # 45 x 50 in a 32 x 32 canvas: 29 x 32, centred (3 columns padded)
    np.testing.assert_array_equal(decode_image(image), crop(canvases[0], boxes[0]))
    refit, box = Geometry.square(32).fit(decode_image(image))
    np.testing.assert_array_equal(refit, canvases[0])  # the model puts it back where predict had it
    assert box == boxes[0]
    for name, data in {"bad.png": b"not an image", "empty.png": b""}.items():
        (tmp_path / name).write_bytes(data)
        image, error = spark.prepare_image(data, str(tmp_path / name), config)
        with pytest.raises(AnomalySpotterError) as info:
            read_image(tmp_path / name)
        assert image is None and error == str(info.value)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "tiny.png")
    image, error = spark.prepare_image((tmp_path / "tiny.png").read_bytes(), "tiny.png", config)
    assert image is None and "tiny.png: image is 8x8" in str(error) and "min_image_side" in str(error)
    images, errors, shown, hashes = spark.prepare_batch(
        ["file:/w/a.png", "file:/w/b.png"], [path.read_bytes(), b"x"], config, "/w"
    )
    assert shown == ["a.png", "b.png"] and errors[0] is None and errors[1].startswith("b.png: ")
    assert hashes == [hashlib.sha256(path.read_bytes()).hexdigest(), None]  # the scoring log's hash
    assert decode_image(images[1]).shape == (32, 32, 3)  # the stand-in the model scores in its place


def test_score_spark_help_explains(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["score-spark", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for words in ("examples:", "--master 'local[2]'", "--master yarn", "see docs/scaling-out.md"):
        assert words in text
    page = (REPO / "docs" / "scaling-out.md").read_text()  # the explanation the help points at
    for words in ("mlflow.pyfunc.spark_udf", "binaryFile", "`error`", "--overwrite", "yarn"):
        assert words in page
    assert "score-spark" in cli.build_parser().format_help()


# --------------------------------------------------------------------------------------------------
# Spark on local[2]
# --------------------------------------------------------------------------------------------------


def _java_missing() -> bool:
    return not os.environ.get("JAVA_HOME") and shutil.which("java") is None


# under CI the tests run without Java too, and fail: .ci/run installs it
requires_java = pytest.mark.skipif(
    _java_missing() and not IN_CI,
    reason="Spark needs Java 17+: apt-get install -y openjdk-17-jre-headless (.ci/run does)",
)


def _write_images(root: Path, n: int) -> list[Path]:
    """`n` small images in nested folders (PNG RGB, grayscale, 16-bit, RGBA, JPEG, an upper-case suffix),
    some with a bright defect; returns their paths."""
    rng = np.random.default_rng(11)
    paths = []
    for i in range(n):
        folder = root / ("good" if i % 3 else "defect") / f"batch{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        size = int(rng.integers(36, 56))
        img = (100 + rng.integers(0, 40, (size, size, 3))).astype(np.uint8)
        if i % 3 == 0:
            img[5:15, 8:20] = 250
        kind = i % 6
        if kind == 1:
            path = folder / f"{i:03d}.jpg"
            Image.fromarray(img).save(path, quality=90)
        elif kind == 2:
            path = folder / f"{i:03d}.png"
            path.write_bytes(png16(img[..., 0].astype(np.uint16) * 257))
        elif kind == 3:
            path = folder / f"{i:03d}.png"
            Image.fromarray(np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])).save(path)
        elif kind == 4:
            path = folder / f"{i:03d}.PNG"
            Image.fromarray(img[..., 1]).save(path, format="PNG")
        else:
            path = folder / f"{i:03d}.png"
            Image.fromarray(img).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Path], list[Path]]]:
    """(folder, good images, the three that cannot be scored, one of them zero bytes: Spark's file scan
    skips those); plus a text file both commands ignore."""
    root = tmp_path_factory.mktemp("spark-images") / "parts"
    paths = _write_images(root, N_IMAGES)
    bad = root / "good" / "broken.png"
    bad.write_bytes(b"this is not an image")
    tiny = root / "defect" / "tiny.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tiny)
    empty = root / "defect" / "empty.png"
    empty.write_bytes(b"")
    (root / "notes.txt").write_text("not an image, not scored")
    yield root, paths, [bad, tiny, empty]


def _score_spark(
    service: ServiceStore, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": service.uri}
    cmd = [sys.executable, "-m", "anomaly_spotter.cli", "score-spark", "--model", MODEL, "--no-progress"]
    return subprocess.run(
        [*cmd, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=SPARK_TIMEOUT_S
    )


@pytest.fixture(scope="module")
def predicted(
    store: ServiceStore,  # noqa: F811 - the fixture imported above
    images: tuple[Path, list[Path], list[Path]],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """predict's CSV rows by path, and its error message per unreadable file."""
    folder = images[0]
    csv_path = tmp_path_factory.mktemp("predict") / "predict.csv"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["predict", str(folder), "--model", MODEL, "--csv", str(csv_path), "--no-progress"])
    assert code == 1  # three unreadable files
    prefix = "anomaly-spotter predict: error: "
    messages = [line.removeprefix(prefix) for line in err.getvalue().splitlines() if line.startswith(prefix)]
    with csv_path.open() as f:
        rows = {row["path"]: row for row in csv.DictReader(f)}
    return rows, {m.split(": ", 1)[0]: m for m in messages}


def _assert_rows_equal(frame: pd.DataFrame, expected: dict[str, dict[str, str]]) -> None:
    scored = frame[frame["error"].isna()].set_index("path")
    assert sorted(scored.index) == sorted(expected)
    for path, row in expected.items():
        got = scored.loc[path]
        assert got["score"] == pytest.approx(float(row["score"]), rel=1e-6), path
        assert got["verdict"] == row["verdict"], path
        assert got["threshold"] == pytest.approx(float(row["threshold"])), path
        assert got["anomaly_percentage"] == pytest.approx(float(row["anomaly_percentage"])), path


@pytest.mark.slow
@pytest.mark.integration
@requires_java
def test_score_spark_equals_predict_row_by_row(
    store: ServiceStore,  # noqa: F811 - the fixture imported above
    images: tuple[Path, list[Path], list[Path]],
    predicted: tuple[dict[str, dict[str, str]], dict[str, str]],
    tmp_path: Path,
) -> None:
    """A folder: every row equals predict's, the three unreadable get predict's messages; no temp left; an
    existing output is refused."""
    folder, _, (bad, tiny, empty) = images
    expected, messages = predicted
    assert len(expected) == N_IMAGES and set(messages) == {str(bad), str(tiny), str(empty)}
    verdicts = {row["verdict"] for row in expected.values()}
    assert verdicts == {"good", "defective"}, verdicts  # both kinds of row are compared

    out = tmp_path / "scores.parquet"
    result = _score_spark(store, "--input", str(folder), "--output", str(out), "--master", "local[2]")
    assert result.returncode == 0, result.stderr[-4000:]
    n_defective = sum(row["verdict"] == "defective" for row in expected.values())
    assert result.stdout.strip().splitlines()[-1] == (
        f"scored {N_IMAGES} images: {n_defective} defective, 3 unreadable; Parquet: {out}"
    )
    assert "3 image(s) could not be read" in result.stderr
    assert "FutureWarning" not in result.stderr and "Downloading artifacts" not in result.stderr
    frame = pd.read_parquet(out)
    assert list(frame.columns) == list(spark.OUTPUT_COLUMNS)
    assert len(frame) == N_IMAGES + 3  # notes.txt is not an image, as for predict
    assert list(frame["path"]) == sorted(frame["path"])  # one part file, sorted by path
    assert len(list(out.glob("part-*.parquet"))) == 1
    _assert_rows_equal(frame, expected)
    errors = frame[frame["error"].notna()].set_index("path")
    assert sorted(errors.index) == sorted([str(bad), str(tiny), str(empty)])
    for path in (bad, tiny, empty):  # predict's own message, naming the file
        assert errors.loc[str(path), "error"] == messages[str(path)]
        assert f"anomaly-spotter score-spark: error: {messages[str(path)]}" in result.stderr
        assert errors.loc[str(path), ["score", "verdict", "threshold", "anomaly_percentage"]].isna().all()
    assert [p.name for p in tmp_path.iterdir()] == ["scores.parquet"]  # no temporary output left

    # an existing output is refused (before Spark starts) and kept as it was
    again = _score_spark(store, "--input", str(folder), "--output", str(out), "--master", "local[2]")
    assert again.returncode == 1 and "exists; remove it or pass --overwrite" in again.stderr
    assert pd.read_parquet(out).equals(frame)


@pytest.mark.slow
@pytest.mark.integration
@requires_java
def test_score_spark_parquet_list_of_paths(
    store: ServiceStore,  # noqa: F811 - the fixture imported above
    images: tuple[Path, list[Path], list[Path]],
    predicted: tuple[dict[str, dict[str, str]], dict[str, str]],
    tmp_path: Path,
) -> None:
    """A Parquet list of paths relative to the working directory, one missing: rows named as listed,
    equal to predict's; --overwrite replaces an existing output."""
    _, paths, (_, _, empty) = images
    expected, messages = predicted
    (tmp_path / "scores.parquet").mkdir()
    (tmp_path / "scores.parquet" / "old.txt").write_text("replaced by --overwrite")
    listed = [os.path.relpath(p, tmp_path) for p in paths[:40]] + ["nowhere/missing.png"]
    listed.append(os.path.relpath(empty, tmp_path))  # zero bytes: a row with predict's error too
    pd.DataFrame({"path": listed}).to_parquet(tmp_path / "todo.parquet")
    result = _score_spark(
        store,
        "--input",
        "todo.parquet",
        "--output",
        "scores.parquet",
        "--overwrite",
        "--master",
        "local[2]",
        "--log",
        "scoring-log",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1].startswith("scored 40 images: ")
    assert result.stdout.strip().endswith("; logged to scoring-log")
    frame = pd.read_parquet(tmp_path / "scores.parquet")
    assert sorted(frame["path"]) == sorted(listed)  # named as listed
    missing = frame.set_index("path").loc["nowhere/missing.png"]
    assert missing["error"] == "nowhere/missing.png: file not found" and pd.isna(missing["score"])
    zero = frame.set_index("path").loc[listed[-1]]
    assert zero["error"] == messages[str(empty)].replace(str(empty), listed[-1]) and pd.isna(zero["score"])
    _assert_rows_equal(
        frame[~frame["path"].isin(["nowhere/missing.png", listed[-1]])],
        {rel: expected[str(p)] for rel, p in zip(listed, paths[:40], strict=False)},
    )
    assert not (tmp_path / "scores.parquet" / "old.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.parquet", "scoring-log", "todo.parquet"]
    # --log: the scored rows (not the unreadable two) in the scoring log, paths made absolute, with the
    # content hash and the version the alias pointed at
    log = scoring_log.read_log(tmp_path / "scoring-log")
    scored = frame[frame["error"].isna()].set_index("path")
    assert len(log) == len(scored) == 40 and set(log["source"]) == {"score-spark"}
    assert log["batch"].nunique() == 1 and set(log["model_uri"]) == {f"models:/{NAME}@champion"}
    assert set(log["model_version"]) == {_champion_version(store)}
    by_file = {os.path.abspath(tmp_path / listed_path): row for listed_path, row in scored.iterrows()}
    assert set(log["image"]) == set(by_file)
    for row in log.itertuples():
        assert row.score == by_file[row.image]["score"] and row.verdict == by_file[row.image]["verdict"]
        assert row.image_sha256 == hashlib.sha256(Path(row.image).read_bytes()).hexdigest()
        assert row.image_sha256 == by_file[row.image]["image_sha256"]


def test_model_config_is_read_without_loading_the_model(
    store: ServiceStore,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    """The driver pins the alias to its version and reads the config only (no detector, no torch work)."""
    import mlflow

    mlflow.set_tracking_uri(store.uri)
    model = spark.resolve_model(MODEL, tmp_path)
    assert model.pinned == f"models:/{NAME}/1"
    assert model.config == load_service_model(MODEL).config
    with pytest.raises(AnomalySpotterError, match="no version of 'anomaly-spotter-widget' holds the alias"):
        spark.resolve_model(f"models:/{NAME}@nobody", tmp_path / "x")


def _champion_version(service: ServiceStore) -> str:
    from mlflow import MlflowClient

    os.environ["MLFLOW_TRACKING_URI"] = service.uri
    return str(MlflowClient().get_model_version_by_alias(NAME, "champion").version)
