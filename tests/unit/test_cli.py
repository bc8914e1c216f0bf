"""The registered service model, `anomaly-spotter predict` and `anomaly-spotter promote` on a temporary
SQLite MLflow store with a tiny fitted detector.

`ServiceStore` (also used by tests/integration/test_serving.py) builds the store: an MVTec-layout
category of 40x40 PNGs, prepared at 32x32 exactly as the pipeline does, a tiny detector fitted on it,
and the pyfunc logged + registered as anomaly-spotter-widget with metric tags.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_spotter import cli, tracking
from anomaly_spotter.core.scoring import score_batches
from anomaly_spotter.data.prepared import load_prepared, prepare_category
from anomaly_spotter.pipeline.train import calibrate_pixels
from anomaly_spotter.serving.inference import InferenceConfig
from anomaly_spotter.serving.model import log_service_model
from anomaly_spotter.tracking.promotion import decide_promotion
from tests.conftest import make_mvtec_category
from tests.unit.test_inference import tiny_detector

CATEGORY = "widget"
NAME = f"anomaly-spotter-{CATEGORY}"
IMAGE_SIZE = 32


@dataclass
class ServiceStore:
    root: Path
    uri: str
    image_paths: list[Path]
    pipeline_scores: dict[str, float]  # image path -> process_all-style score
    threshold: float
    model_uri: str

    def register_copy(self, **metrics: float) -> str:
        """A new version of the same logged model with these metric tags; returns its version."""
        import mlflow

        version = mlflow.register_model(self.model_uri, NAME).version
        tracking.set_model_version_tags(NAME, version, {"category": CATEGORY, **metrics})
        return str(version)


def build_store(root: Path) -> ServiceStore:
    """Data -> prepare -> fit -> log + register version 1 (image_auroc 0.8, pixel_auroc 0.7)."""
    import mlflow

    data_root = root / "data"
    make_mvtec_category(data_root, CATEGORY, n_train=6, n_test_good=3, size=40, seed=4)
    prepared_dir = root / "prepared"
    prepare_category(data_root, CATEGORY, prepared_dir, IMAGE_SIZE, 0.2, 0, progress=False)
    prepared = load_prepared(prepared_dir)
    detector = tiny_detector(np.asarray(prepared.split("train").images))
    calibrate_pixels(detector, np.asarray(prepared.split("val").images), 0.99)
    detector.save(root / "model.pt")
    test = prepared.split("val", "test")
    _, scores = score_batches(detector, np.asarray(test.images), 16, "max", progress=False)
    threshold = float(np.median(scores))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    tracking.connect()
    with mlflow.start_run():
        config = InferenceConfig.for_model(
            detector, CATEGORY, IMAGE_SIZE, threshold, "recall_target", "max", 16, "calibrated"
        )
        info = log_service_model(root / "model.pt", config, NAME, detector.kind)
    tracking.set_model_version_tags(
        NAME, info["model_version"], {"category": CATEGORY, "image_auroc": 0.8, "pixel_auroc": 0.7}
    )
    paths = [Path(p) for p in test.index["image_path"]]
    return ServiceStore(
        root,
        uri,
        paths,
        dict(zip(map(str, paths), map(float, scores), strict=True)),
        threshold,
        info["model_uri"],
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceStore]:
    old = os.environ.get("MLFLOW_TRACKING_URI")
    yield build_store(tmp_path_factory.mktemp("store"))
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def test_pyfunc_scores_equal_process_all(store: ServiceStore) -> None:
    """The registered model on the original PNG files == score_batches on the prepared arrays."""
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    frame = pd.DataFrame({"image": [p.read_bytes() for p in store.image_paths]})
    out = model.predict(frame)
    assert list(out.columns) == ["score", "verdict", "threshold", "anomaly_percentage"]
    expected = [store.pipeline_scores[str(p)] for p in store.image_paths]
    np.testing.assert_allclose(out["score"], expected, rtol=1e-6)
    assert set(out["verdict"]) == {"good", "defective"}
    assert (out["verdict"].eq("defective") == (out["score"] > store.threshold)).all()
    with_map = model.predict(frame.head(1), params={"return_map": True})
    assert np.asarray(with_map["anomaly_map"][0]).shape == (IMAGE_SIZE, IMAGE_SIZE)
    # the served overlay is the annotated PNG predict --out writes (same renderer, same category scale)
    import base64
    import io

    from PIL import Image

    from anomaly_spotter.core.overlay import BAR_PX, HEADER_PX, MIN_SIDE
    from anomaly_spotter.serving.inference import read_image

    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(with_map["overlay"][0]))))
    assert served.shape == (MIN_SIDE + HEADER_PX, MIN_SIDE + BAR_PX, 3)
    direct = model.unwrap_python_model().score([read_image(store.image_paths[0])], return_map=True)[0]
    np.testing.assert_array_equal(served, direct["overlay"])
    pixel = model.unwrap_python_model().config.pixel_threshold
    share = 100.0 * float((np.asarray(with_map["anomaly_map"][0]) > pixel).mean())
    assert with_map["anomaly_percentage"][0] == pytest.approx(share)  # the calibrated region
    # a batch of arrays, via the unwrapped model
    arrays = [np.asarray(__import__("PIL.Image").Image.open(p).convert("RGB")) for p in store.image_paths[:2]]
    rows = model.unwrap_python_model().predict(None, arrays)
    np.testing.assert_allclose(rows["score"], expected[:2], rtol=1e-6)


def test_predict_cli(store: ServiceStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for p in store.image_paths:
        (folder / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    from PIL import Image

    Image.new("RGB", (1, 1), (120, 120, 120)).save(folder / "tiny.png")  # too small to score
    out = tmp_path / "out"
    code = cli.main(
        [
            "predict",
            str(folder),
            str(tmp_path / "missing.png"),
            "--model",
            f"models:/{NAME}/1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    err = captured.err
    assert code == 1
    assert "broken.png" in err and "missing.png" in err
    assert "tiny.png: image is 1x1, smaller than 32 pixels on a side (registry.min_image_side)" in err
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == len(store.image_paths)
    n_defective = sum(row["verdict"] == "defective" for row in rows.values())
    assert captured.out.splitlines()[-1] == (
        f"scored {len(rows)} images: {n_defective} defective, 3 unreadable; "
        f"CSV: {out / 'predictions.csv'}; overlays: {out}/"
    )
    for p in store.image_paths:
        row = rows[str(folder / f"{p.parent.name}_{p.name}")]
        assert float(row["score"]) == pytest.approx(store.pipeline_scores[str(p)], rel=1e-6)
        assert row["verdict"] == ("defective" if float(row["score"]) > store.threshold else "good")
        assert float(row["threshold"]) == pytest.approx(store.threshold)
        assert 0 <= float(row["anomaly_percentage"]) <= 100
    overlays = sorted(out.glob("*_overlay.png"))
    assert len(overlays) == len(store.image_paths)
    from PIL import Image

    from anomaly_spotter.core.overlay import BAR_PX, HEADER_PX, MIN_SIDE

    with Image.open(overlays[0]) as img:  # 40x40 inputs are shown at MIN_SIDE, plus header and colour bar
        assert img.size == (MIN_SIDE + BAR_PX, MIN_SIDE + HEADER_PX) and img.mode == "RGB"


def test_predict_cli_local_model_dir_and_stdout(
    store: ServiceStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=str(tmp_path / "model"))
    image = store.image_paths[0]
    assert cli.main(["predict", str(image), "--model", local, "--no-progress"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2  # the CSV only: the summary goes to stderr
    assert lines[0] == "path,score,verdict,threshold,anomaly_percentage"
    assert float(lines[1].split(",")[1]) == pytest.approx(store.pipeline_scores[str(image)], rel=1e-6)
    assert captured.err.strip().splitlines()[-1].startswith("scored 1 image: ")
    assert captured.err.strip().endswith("unreadable; CSV: stdout; overlays: none (use --out DIR)")


def test_predict_never_creates_a_store(
    store: ServiceStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Default URI sqlite:///mlflow.db in a folder without one: one line saying what to do, no file."""
    import mlflow

    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=str(tmp_path / "model"))
    capsys.readouterr()  # the download's progress bar
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    monkeypatch.chdir(empty)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    image = str(store.image_paths[0])
    assert cli.main(["predict", image, "--model", f"models:/{NAME}/1", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err
    assert err.startswith("anomaly-spotter predict: error: no MLflow tracking store at sqlite:///mlflow.db")
    assert f"({empty / 'mlflow.db'} does not exist)" in err
    assert "MLFLOW_TRACKING_URI=sqlite:////" in err and "--model" in err
    assert not (empty / "mlflow.db").exists()
    assert mlflow.get_tracking_uri() == store.uri  # untouched

    # a local model folder needs no store, and creates none
    assert cli.main(["predict", image, "--model", local, "--no-progress"]) == 0
    assert "scored 1 image" in capsys.readouterr().err
    assert list(empty.iterdir()) == []

    assert cli.main(["promote", "--category", CATEGORY]) == 1
    assert "no MLflow tracking store at sqlite:///mlflow.db" in capsys.readouterr().err
    assert list(empty.iterdir()) == []


def test_predict_emits_no_warnings(store: ServiceStore, tmp_path: Path) -> None:
    """`anomaly-spotter predict` as a user runs it (default warning filters): stderr holds no warning."""
    out = tmp_path / "out"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("PYTHONWARNINGS", None)
    result = subprocess.run(
        [sys.executable, "-m", "anomaly_spotter.cli", "predict", *map(str, store.image_paths[:2])]
        + ["--model", f"models:/{NAME}/1", "--out", str(out), "--no-progress"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("scored 2 images: ")


def test_predict_cli_bad_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    assert cli.main(["predict", str(image), "--model", str(tmp_path / "no-model")]) == 1
    assert "cannot load model" in capsys.readouterr().err


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("predict", "promote"):
        with pytest.raises(SystemExit) as info:
            cli.main([command, "--help"])
        assert info.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_help_ends_with_the_docs_page_that_explains_it(capsys: pytest.CaptureFixture[str]) -> None:
    """Each command's --help: examples, then one line naming its docs page, which exists."""
    from tests.conftest import REPO

    for command in ("predict", "score-spark", "promote", "export", "server", "dashboard", "experiments"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        assert "examples:" in text, command
        last = text.rstrip().splitlines()[-1]
        assert last.startswith("see docs/") and last.endswith(".md"), (command, last)
        assert (REPO / last.removeprefix("see ")).is_file(), (command, last)


def test_decide_promotion() -> None:
    champ = {"image_auroc": "0.8", "pixel_auroc": "0.7"}
    assert decide_promotion({"image_auroc": "0.9"}, None, "image_auroc", "pixel_auroc").promote
    metrics = ("image_auroc", "pixel_auroc")
    assert decide_promotion({"image_auroc": "0.81", "pixel_auroc": "0.1"}, champ, *metrics).promote
    worse = decide_promotion({"image_auroc": "0.79"}, champ, "image_auroc", "pixel_auroc")
    assert not worse.promote and "0.7900 < champion's 0.8000" in worse.reason
    assert not decide_promotion(
        {"image_auroc": "0.8", "pixel_auroc": "0.6"}, champ, "image_auroc", "pixel_auroc"
    ).promote
    assert decide_promotion({"image_auroc": "0.8", "pixel_auroc": "0.7"}, champ, *metrics).promote
    assert not decide_promotion({}, champ, "image_auroc", "pixel_auroc").promote


def _aliases() -> dict[str, str]:
    from mlflow import MlflowClient

    return {k: str(v) for k, v in MlflowClient().get_registered_model(NAME).aliases.items()}


def test_promote_cli(store: ServiceStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    params = ["--params", str(tmp_path / "none.yaml")]  # registry defaults
    assert cli.main(["promote", "--category", CATEGORY, *params]) == 0
    out = capsys.readouterr().out
    assert "no champion yet" in out and _aliases()["champion"] == "1"
    assert f"models:/{NAME}@champion" in out

    worse = store.register_copy(image_auroc=0.7, pixel_auroc=0.9)
    assert cli.main(["promote", "--category", CATEGORY, *params]) == 0
    out = capsys.readouterr().out
    assert _aliases() == {"champion": "1", "challenger": worse}
    assert "image_auroc 0.7000 < champion's 0.8000" in out
    assert "image_auroc" in out and "0.9000" in out  # the metrics table shows both versions
    assert MlflowClient().get_model_version(NAME, worse).tags["challenger_reason"].startswith("image_auroc")

    store.register_copy(image_auroc=0.8, pixel_auroc=0.6)
    cli.main(["promote", "--category", CATEGORY, *params])
    assert "pixel_auroc 0.6000 < champion's 0.7000" in capsys.readouterr().out
    assert _aliases()["champion"] == "1"
    tie_better = store.register_copy(image_auroc=0.8, pixel_auroc=0.75)
    cli.main(["promote", "--category", CATEGORY, *params])
    capsys.readouterr()
    assert _aliases()["champion"] == tie_better

    forced = store.register_copy(image_auroc=0.5, pixel_auroc=0.5)
    assert cli.main(["promote", "--category", CATEGORY, "--force", *params]) == 1
    assert "--reason" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "promote",
                "--category",
                CATEGORY,
                "--force",
                "--reason",
                "QA sign-off",
                "--by",
                "alice",
                *params,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert _aliases() == {"champion": forced}
    tags = MlflowClient().get_model_version(NAME, forced).tags
    assert tags["promoted_by"] == "alice" and "QA sign-off" in tags["promotion_reason"]
    assert tags["promotion_forced"] == "true" and tags["previous_champion"] == tie_better


def test_predict_reads_16bit_files_as_their_8bit_versions(store: ServiceStore, tmp_path: Path) -> None:
    from PIL import Image

    from anomaly_spotter.serving.model import png_bytes
    from tests.unit.data.test_images import png16

    original = store.image_paths[0]
    rgb8 = np.asarray(Image.open(original).convert("RGB"))
    files = {
        "rgb16.png": png16(rgb8.astype(np.uint16) * 257),
        "gray8.png": png_bytes(rgb8[..., 0]),
        "gray16.png": png16(rgb8[..., 0].astype(np.uint16) * 257),  # was read as a white image
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    csv_path = tmp_path / "pred.csv"
    paths = [str(tmp_path / name) for name in files]
    args = ["predict", *paths, "--model", f"models:/{NAME}/1", "--csv", str(csv_path), "--no-progress"]
    assert cli.main(args) == 0
    scores = {Path(p).name: float(row["score"]) for p, row in read_csv(csv_path).items()}
    assert scores["rgb16.png"] == pytest.approx(store.pipeline_scores[str(original)], rel=1e-6)
    assert scores["gray16.png"] == pytest.approx(scores["gray8.png"], rel=1e-6)


@pytest.mark.parametrize(
    "args",
    [
        ["predict", "x.png", "--model", "models:/anomaly-spotter-fabric@champion"],
        ["promote", "--category", "fabric"],
        ["export", "--model", "models:/anomaly-spotter-fabric@champion", "--out", "edge"],
    ],
)
def test_an_unreachable_tracking_server_is_one_line_at_once(
    args: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its health check, not MLflow's minutes of retries (port 9: nothing listens)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MLflow tracking server http://127.0.0.1:9 is unreachable" in err[0], err


def test_predict_keeps_nothing_when_a_write_fails(
    store: ServiceStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    image = store.image_paths[0]
    (out / f"{image.stem}_overlay.png").mkdir(parents=True)  # the overlay's name is taken by a folder
    code = cli.main(
        ["predict", str(image), "--model", f"models:/{NAME}/1", "--out", str(out), "--no-progress"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"anomaly-spotter predict: error: {out / image.stem}_overlay.png: cannot write")
    assert not (out / "predictions.csv").exists()


def test_predict_csv_floats_are_rounded(store: ServiceStore, tmp_path: Path) -> None:
    cli.main(
        [
            "predict",
            *map(str, store.image_paths),
            "--model",
            f"models:/{NAME}/1",
            "--csv",
            str(tmp_path / "p.csv"),
        ]
    )
    text = (tmp_path / "p.csv").read_text()
    numbers = re.findall(r"-?\d+\.\d+(?:e-?\d+)?", text)
    assert numbers and all(
        len(n.lstrip("-").replace(".", "").split("e")[0].lstrip("0")) <= 7 for n in numbers
    )
