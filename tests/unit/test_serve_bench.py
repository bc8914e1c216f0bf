"""`python -m anomaly_spotter.bench.serve` against a stub scoring server on loopback (no MLflow): the
request body, ordering of concurrent results, percentiles, the printed report and the exit code."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from anomaly_spotter.bench import serve as serve_bench
from tests.conftest import write_png


class _Stub(BaseHTTPRequestHandler):
    """/ping: 200; /invocations: one prediction per image, the image's byte length as its score;
    an image whose bytes are b"bad" gets HTTP 400, as the real server answers a bad image."""

    seen: list[int] = []

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._send(200 if self.path == "/ping" else 404, {})

    def do_POST(self) -> None:  # noqa: N802
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        split = request["dataframe_split"]
        assert split["columns"] == ["image"]
        images = [base64.b64decode(row[0]) for row in split["data"]]
        type(self).seen.append(len(images))
        if b"bad" in images:
            self._send(400, {"message": "not an image"})
            return
        self._send(200, {"predictions": [{"score": float(len(i)), "verdict": "good"} for i in images]})


@pytest.fixture
def stub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    _Stub.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_percentile_equals_numpy() -> None:
    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0]
    for q in (0, 50, 95, 100):
        assert serve_bench.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert np.isnan(serve_bench.percentile([], 50))


def test_send_all_keeps_order_and_reports_failures(stub: str) -> None:
    bodies = [serve_bench.request_body([b"x" * n]) for n in range(1, 21)]
    bodies[7] = serve_bench.request_body([b"bad"])
    results = serve_bench.send_all(f"{stub}/invocations", bodies, concurrency=8)
    assert [r.status for r in results] == [200] * 7 + [400] + [200] * 12
    scores = [json.loads(r.body)["predictions"][0]["score"] for r in results if r.status == 200]
    assert scores == [float(n) for n in range(1, 21) if n != 8]
    assert "HTTP 400" in results[7].error and "not an image" in results[7].error
    summary = serve_bench.summarize(results, wall_s=2.0, batch=1)
    assert (summary.requests, summary.failed, summary.images) == (20, 1, 19)
    assert summary.images_per_s == pytest.approx(9.5) and summary.p50_ms <= summary.p95_ms <= summary.max_ms


def test_no_answer_is_a_failed_request_not_an_exception() -> None:
    result = serve_bench.post(f"http://127.0.0.1:{serve_bench.free_port()}/invocations", b"{}", timeout=5)
    assert result.status == 0 and result.error.startswith("no answer")


def _images(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(3):
        write_png(folder / "sub" / f"{i}.png", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_main_prints_latency_and_throughput(
    stub: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = _images(tmp_path / "images")
    argv = ["--url", stub, "--images", str(images), "--requests", "12", "--concurrency", "4"]
    assert serve_bench.main([*argv, "--batch", "2", "--warmup", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"serve_bench: 12 requests x 2 image(s), concurrency 4, {stub}")
    assert out[1].startswith("latency ms: p50 ") and " p95 " in out[1]
    assert out[2].startswith("throughput: ") and "images/s" in out[2]
    assert out[3] == "failed: 0"
    assert _Stub.seen == [2] * 15  # 3 warm-up + 12 timed requests, 2 images each (cycling over 3 files)


def test_main_exits_1_on_failed_requests_or_no_server(
    stub: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.png").write_bytes(b"bad")
    argv = ["--url", stub, "--images", str(tmp_path / "bad.png"), "--requests", "3", "--warmup", "0"]
    assert serve_bench.main(argv) == 1
    captured = capsys.readouterr()
    assert "failed: 3" in captured.out and "3 request(s) failed; first: HTTP 400" in captured.err
    closed = f"http://127.0.0.1:{serve_bench.free_port()}"
    assert serve_bench.main(["--url", closed, "--images", str(tmp_path / "bad.png")]) == 1
    assert "does not answer" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no images"):
        serve_bench.main(["--url", stub, "--images", str(tmp_path / "empty")])


def test_help_names_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        serve_bench.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--url", "--images", "--concurrency", "--requests", "--batch", "--warmup"):
        assert option in text
