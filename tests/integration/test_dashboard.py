"""`anomaly-spotter dashboard` for real: the Streamlit server on loopback, opened in headless Chromium.

The project is tests/unit/test_dashboard.py's `build_project` (pipeline outputs written by the stage
functions; no MLflow store: the first page does not read it). Chromium is driven over the DevTools
protocol (Streamlit draws the page after its websocket answers, which `--screenshot` does not wait for):
the test waits until the five metrics and every image are there, takes a screenshot and checks that the
page is drawn, not blank. `python -m tests.integration.test_dashboard URL OUT.png` takes the README's.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_spotter.bench.serve import free_port
from tests.integration.test_pipeline import _chromium
from tests.unit.test_dashboard import Project, build_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START_TIMEOUT_S = 60
PAGE_TIMEOUT_S = 90
WINDOW = (1400, 2200)
# drawn: the metrics row and every gallery image loaded
READY_JS = (
    "document.querySelectorAll('[data-testid=\"stMetric\"]').length >= 5 && "
    "document.images.length > 0 && [...document.images].every(i => i.complete && i.naturalWidth > 0)"
)
SETTLE_S = 2.0  # charts animate in


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def screenshot(url: str, out: Path, chromium: str, window: tuple[int, int] = WINDOW) -> None:
    """PNG of `url` in headless Chromium once READY_JS holds (DevTools protocol over a websocket)."""
    from websockets.sync.client import connect  # a dependency of streamlit

    port = free_port()
    profile = Path(tempfile.mkdtemp(prefix="chromium-"))
    proc = subprocess.Popen(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--remote-debugging-port={port}",
            "--remote-allow-origins=*",
            f"--window-size={window[0]},{window[1]}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
                    page = next(p for p in json.load(response) if p["type"] == "page")
                break
            except (OSError, urllib.error.URLError, StopIteration):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(f"{chromium} did not open its DevTools port") from None
                time.sleep(0.2)
        with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            calls = iter(range(1, 1_000_000))

            def call(method: str, **params: object) -> dict:
                ident = next(calls)
                ws.send(json.dumps({"id": ident, "method": method, "params": params}))
                while True:
                    message = json.loads(ws.recv(timeout=PAGE_TIMEOUT_S))
                    if message.get("id") == ident:
                        return message.get("result", {})

            width, height = window
            call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            call("Page.navigate", url=url)
            deadline = time.monotonic() + PAGE_TIMEOUT_S
            while not call("Runtime.evaluate", expression=READY_JS, returnByValue=True)["result"].get(
                "value"
            ):
                if time.monotonic() > deadline:
                    raise AssertionError(f"{url} was not drawn within {PAGE_TIMEOUT_S} s")
                time.sleep(0.5)
            time.sleep(SETTLE_S)
            out.write_bytes(base64.b64decode(call("Page.captureScreenshot", format="png")["data"]))
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return build_project(tmp_path_factory.mktemp("dashboard"), registry=False)  # the review page only


@pytest.fixture(scope="module")
def served(project: Project, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`anomaly-spotter dashboard --port <free>` in the project; its URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("logs") / "dashboard.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": project.uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    cli = [sys.executable, "-m", "anomaly_spotter.cli", "dashboard", "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(
            cli, cwd=project.root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _health(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dashboard did not start:\n{log.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_dashboard_serves_a_drawn_page(served: str, tmp_path: Path) -> None:
    chromium = _chromium()  # skips, saying why, without Chromium
    with urllib.request.urlopen(served, timeout=10) as response:
        assert response.status == 200 and b"<title>" in response.read()
    png = tmp_path / "dashboard.png"
    screenshot(served, png, chromium)
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    # not blank: most of the window is not background, in many colours (overlays, charts, text)
    background = (pixels >= 240).all(axis=2)
    assert (~background).mean() > 0.15
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2000
    # the overlays' warm map colours are drawn (the gallery), not only text
    warm = (pixels[..., 0] > 180) & (pixels[..., 2] < 90)
    assert warm.sum() > 500


if __name__ == "__main__":
    screenshot(sys.argv[1], Path(sys.argv[2]), shutil.which("chromium") or "chromium")
