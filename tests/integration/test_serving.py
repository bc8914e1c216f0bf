"""`mlflow models serve -m models:/anomaly-spotter-<cat>@champion --env-manager local` on loopback.

Real PNGs posted as base64 in JSON score as `anomaly-spotter predict` scores them; malformed requests
answer 4xx with a message (never 500) and the server keeps serving.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_spotter import cli
from anomaly_spotter.bench import serve as serve_bench
from anomaly_spotter.serving import scoring_log
from anomaly_spotter.serving.model import png_bytes
from tests.unit.data.test_images import png16
from tests.unit.test_cli import NAME, ServiceStore, build_store, read_csv
from tests.unit.test_inference import png_header

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 120


def _request(url: str, body: bytes | None = None, content_type: str = "application/json") -> tuple[int, str]:
    headers = {"Content-Type": content_type} if body is not None else {}
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _split(images: list[bytes]) -> bytes:
    data = [[base64.b64encode(b).decode()] for b in images]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": data}}).encode()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceStore]:
    old = os.environ.get("MLFLOW_TRACKING_URI")
    store = build_store(tmp_path_factory.mktemp("serving"))
    assert cli.main(["promote", "--category", "widget", "--params", str(store.root / "none.yaml")]) == 0
    yield store
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="module")
def server(store: ServiceStore) -> Iterator[str]:
    env = {"MLFLOW_TRACKING_URI": store.uri}
    model = f"models:/{NAME}@champion"
    with serve_bench.served(model, log=store.root / "server.log", env=env, timeout_s=START_TIMEOUT_S) as url:
        yield url


def test_served_scores_equal_predict_cli(store: ServiceStore, server: str, tmp_path: Path) -> None:
    csv_path = tmp_path / "pred.csv"
    assert (
        cli.main(
            [
                "predict",
                *map(str, store.image_paths),
                "--model",
                f"models:/{NAME}@champion",
                "--csv",
                str(csv_path),
                "--no-progress",
            ]
        )
        == 0
    )
    expected = read_csv(csv_path)
    status, body = _request(f"{server}/invocations", _split([p.read_bytes() for p in store.image_paths]))
    assert status == 200, body
    predictions = json.loads(body)["predictions"]
    assert len(predictions) == len(store.image_paths)
    for path, pred in zip(store.image_paths, predictions, strict=True):
        row = expected[str(path)]
        assert pred["score"] == pytest.approx(float(row["score"]), rel=1e-6)
        assert pred["verdict"] == row["verdict"]
        assert pred["threshold"] == pytest.approx(float(row["threshold"]))
        assert pred["anomaly_percentage"] == pytest.approx(float(row["anomaly_percentage"]))
    # the records format with the anomaly map, and the `inputs` format
    b64 = base64.b64encode(store.image_paths[0].read_bytes()).decode()
    body = json.dumps({"dataframe_records": [{"image": b64}], "params": {"return_map": True}}).encode()
    status, text = _request(f"{server}/invocations", body)
    assert status == 200, text
    pred = json.loads(text)["predictions"][0]
    assert np.asarray(pred["anomaly_map"]).shape == (32, 32)
    assert base64.b64decode(pred["overlay"]).startswith(b"\x89PNG")  # the annotated overlay
    assert pred["score"] == pytest.approx(float(expected[str(store.image_paths[0])]["score"]), rel=1e-6)
    status, text = _request(f"{server}/invocations", json.dumps({"inputs": {"image": [b64]}}).encode())
    assert status == 200, text
    assert json.loads(text)["predictions"][0]["score"] == pytest.approx(pred["score"], rel=1e-6)


MALFORMED = {
    "not an image": _split([b"this is not an image"]),
    "empty body": b"",
    "zero pixels": _split([png_header(0, 0)]),
    "20000 px header": _split([png_header(20000, 20000)]),
    "20000x1 png": _split([png_bytes(np.zeros((1, 20000), np.uint8))]),
    "wrong json": b'{"dataframe_split": ',
    "wrong key": json.dumps({"images": ["abc"]}).encode(),
    "not base64": json.dumps({"dataframe_split": {"columns": ["image"], "data": [["!!!"]]}}).encode(),
    "no images": json.dumps({"dataframe_split": {"columns": ["image"], "data": []}}).encode(),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_are_4xx(server: str, case: str) -> None:
    status, body = _request(f"{server}/invocations", MALFORMED[case])
    assert 400 <= status < 500, (status, body)
    assert json.loads(body)["message"]
    assert _request(f"{server}/ping")[0] == 200


def _zero_pixel_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros((0, 40, 3), np.uint8))
    return buf.getvalue()


_SMALL_PNG = png_bytes(np.full((40, 40, 3), 120, np.uint8))
# (body, what the 400 message says): the decoder's own reason, or the request limit and its param
REASONS = {
    "20000 px header": (_split([png_header(20000, 20000)]), "8192 pixels on a side"),
    "20000 px header, inputs format": (
        json.dumps({"inputs": {"image": [base64.b64encode(png_header(20000, 20000)).decode()]}}).encode(),
        "8192 pixels on a side",
    ),
    "truncated png": (
        _split([png_bytes(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))[:400]]),
        "image 0: cannot decode image (image file is truncated",
    ),
    "zero-pixel array": (_split([_zero_pixel_npy()]), "image 0: image has no pixels"),
    "65 images": (_split([_SMALL_PNG] * 65), "over the limit of 64 (registry.max_images_per_request)"),
    "1x1 image": (_split([png_bytes(np.zeros((1, 1, 3), np.uint8))]), "(registry.min_image_side)"),
    "128 megapixels": (
        _split([png_header(8000, 8000)] * 2),
        "128.0 megapixels of images, over the limit of 100 (registry.max_request_megapixels)",
    ),
}


@pytest.mark.parametrize("case", list(REASONS))
def test_400_says_the_real_reason(server: str, case: str) -> None:
    body, reason = REASONS[case]
    status, text = _request(f"{server}/invocations", body)
    assert status == 400, (status, text)
    message = json.loads(text)["message"]
    assert reason in message and "not a recognised image format" not in message, message


def test_16bit_grayscale_scores_as_its_8bit_version(store: ServiceStore, server: str) -> None:
    gray8 = np.asarray(Image.open(store.image_paths[0]).convert("L"))
    status, text = _request(
        f"{server}/invocations", _split([png_bytes(gray8), png16(gray8.astype(np.uint16) * 257)])
    )
    assert status == 200, text
    score8, score16 = (p["score"] for p in json.loads(text)["predictions"])
    assert score16 == pytest.approx(score8, rel=1e-6)


@pytest.fixture(scope="module")
def capped(store: ServiceStore) -> Iterator[str]:
    """`anomaly-spotter serve` with a 1 MB request cap."""
    env = {"MLFLOW_TRACKING_URI": store.uri}
    model = f"models:/{NAME}@champion"
    log = store.root / "capped.log"
    with serve_bench.served(model, log=log, env=env, timeout_s=START_TIMEOUT_S, max_request_mb=1) as url:
        yield url


def test_anomaly_spotter_serve_answers_as_mlflow_serve_and_caps_requests(
    store: ServiceStore, server: str, capped: str
) -> None:
    body = _split([store.image_paths[0].read_bytes()])
    (status, text), (want_status, want_text) = (_request(f"{u}/invocations", body) for u in (capped, server))
    got, want = json.loads(text)["predictions"][0], json.loads(want_text)["predictions"][0]
    # the same answer; the score up to float32 rounding (two processes may sum in another order)
    assert status == want_status == 200 and got.pop("score") == pytest.approx(want.pop("score"), rel=1e-5)
    assert got == want
    junk = json.dumps({"dataframe_split": {"columns": ["image"], "data": [["A" * 3_000_000]]}}).encode()
    status, text = _request(f"{capped}/invocations", junk)
    assert status == 413, text
    message = json.loads(text)
    assert (
        message["error_code"] == "REQUEST_TOO_LARGE"
        and "over this server's limit of 1.0 MB" in message["message"]
    )
    # chunked, with no Content-Length: refused once the bytes received pass the cap
    request = urllib.request.Request(
        f"{capped}/invocations",
        data=iter([junk[i : i + 65536] for i in range(0, len(junk), 65536)]),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=60)
    assert err.value.code == 413
    assert _request(f"{capped}/invocations", body)[0] == 200  # still serving


def test_anomaly_spotter_serve_logs_what_it_scored(store: ServiceStore, tmp_path: Path) -> None:
    """`serve --log`: one row per scored image with the pinned version and the image kept by content;
    the rows are written by the worker's own thread (at the latest when the server stops)."""
    env = {"MLFLOW_TRACKING_URI": store.uri}
    log = tmp_path / "scoring-log"
    first, second = (p.read_bytes() for p in store.image_paths[:2])
    with serve_bench.served(
        f"models:/{NAME}@champion", log=tmp_path / "server.log", env=env, timeout_s=START_TIMEOUT_S,
        max_request_mb=16, scoring_log=log,
    ) as url:  # fmt: skip
        status, text = _request(f"{url}/invocations", _split([first, second]))
        assert status == 200, text
        answers = json.loads(text)["predictions"]
        assert _request(f"{url}/invocations", _split([first]))[0] == 200
        assert _request(f"{url}/invocations", _split([b"not an image"]))[0] == 400  # not logged
    frame = scoring_log.read_log(log)
    assert len(frame) == 3 and set(frame["source"]) == {"serve"} and frame["batch"].nunique() == 2
    champion = tracking_version(store)
    assert set(frame["model_version"]) == {champion} and set(frame["model_name"]) == {NAME}
    assert set(frame["model_uri"]) == {f"models:/{NAME}@champion"} and set(frame["category"]) == {"widget"}
    digests = [hashlib.sha256(b).hexdigest() for b in (first, second, first)]
    assert frame["image_sha256"].tolist() == digests
    assert frame["score"].tolist()[:2] == pytest.approx([a["score"] for a in answers], rel=1e-6)
    assert frame["verdict"].tolist()[:2] == [a["verdict"] for a in answers]
    kept = scoring_log.image_file(log, frame["image"].iloc[0])
    assert kept.read_bytes() == first and frame["image"].iloc[0] == frame["image"].iloc[2]


def tracking_version(store: ServiceStore) -> str:
    """The version holding @champion in the test store."""
    from mlflow import MlflowClient

    os.environ["MLFLOW_TRACKING_URI"] = store.uri
    return str(MlflowClient().get_model_version_by_alias(NAME, "champion").version)
