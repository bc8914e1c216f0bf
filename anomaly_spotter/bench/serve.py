"""Serving benchmark: latency (p50/p95) and throughput of a served category model over HTTP.

    python -m anomaly_spotter.bench.serve --model models:/anomaly-spotter-fabric@champion \\
        --images data/builtin/fabric/test --concurrency 8 --requests 200

starts `mlflow models serve -m MODEL --env-manager local` on a free loopback port (tracking store from
MLFLOW_TRACKING_URI, default sqlite:///mlflow.db), waits for /ping, sends `--requests` POSTs to
/invocations from `--concurrency` threads (`--batch` images per request, base64 PNG/JPEG bytes in a
`dataframe_split` body, cycling over the images found) and stops the server. `--url http://host:port`
targets a server that is already running instead. `--warmup` requests go first and are not counted.

Prints the latency percentiles of the answered requests (p50, p95, max, in ms), the throughput
(requests/s and images/s over the wall time of the timed requests) and the failed requests; exits 1
if any request failed. Latency depends on the machine and what else runs on it: print it, do not
compare it with a number from another machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anomaly_spotter.tracking.team import free_port

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
REQUEST_TIMEOUT_S = 120
START_TIMEOUT_S = 180
LOG_TAIL_LINES = 40


@dataclass
class Result:
    status: int  # HTTP status; 0 when no answer came (connection refused, reset, timeout)
    seconds: float
    body: str = ""
    error: str = ""


def request_body(images: Sequence[bytes]) -> bytes:
    """The JSON the scoring server takes: one column `image`, base64 image bytes."""
    data = [[base64.b64encode(image).decode()] for image in images]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": data}}).encode()


def post(url: str, body: bytes, timeout: float = REQUEST_TIMEOUT_S) -> Result:
    """POST `body` as JSON; never raises: an HTTP error or no answer is in the Result."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
            return Result(response.status, time.perf_counter() - start, text)
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace")
        return Result(err.code, time.perf_counter() - start, text, f"HTTP {err.code}: {text[:200]}")
    except (OSError, urllib.error.URLError) as err:
        return Result(0, time.perf_counter() - start, "", f"no answer: {err}")


def send_all(url: str, bodies: Sequence[bytes], concurrency: int) -> list[Result]:
    """POST every body to `url` from `concurrency` threads; results in the order of `bodies`."""
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(lambda body: post(url, body), bodies))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Summary:
    requests: int
    failed: int
    images: int
    wall_s: float
    p50_ms: float
    p95_ms: float
    max_ms: float

    @property
    def requests_per_s(self) -> float:
        return (self.requests - self.failed) / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else float("nan")


def summarize(results: Sequence[Result], wall_s: float, batch: int) -> Summary:
    answered = [r.seconds * 1000.0 for r in results if r.status == 200]
    return Summary(
        requests=len(results),
        failed=len(results) - len(answered),
        images=len(answered) * batch,
        wall_s=wall_s,
        p50_ms=percentile(answered, 50),
        p95_ms=percentile(answered, 95),
        max_ms=max(answered, default=float("nan")),
    )


def find_images(sources: Sequence[Path]) -> list[Path]:
    """Image files given, and those under the folders given (recursively), sorted."""
    found: list[Path] = []
    for source in sources:
        if source.is_dir():
            found += sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif source.is_file():
            found.append(source)
        else:
            raise SystemExit(f"serve_bench: {source}: no such file or folder")
    if not found:
        raise SystemExit(
            f"serve_bench: no images ({', '.join(IMAGE_SUFFIXES)}) in {[str(s) for s in sources]}"
        )
    return found


def _ping(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=5) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


@contextmanager
def served(
    model: str,
    workers: int | None = None,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = START_TIMEOUT_S,
    max_request_mb: float | None = None,
    scoring_log: Path | None = None,
) -> Iterator[str]:
    """`mlflow models serve -m model --env-manager local` on a free loopback port until the block ends;
    yields its URL once /ping answers (within `timeout_s`). `env` adds to this process's environment
    (e.g. MLFLOW_TRACKING_URI). With `max_request_mb`, `anomaly-spotter serve` with that request cap
    instead (and with `scoring_log`, its `--log`). The server runs in its own process group, stopped as a
    whole."""
    port = free_port()
    if max_request_mb is None:
        cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager", "local"]
        cmd += ["-h", "127.0.0.1", "-p", str(port)] + (["-w", str(workers)] if workers else [])
    else:
        cmd = [sys.executable, "-m", "anomaly_spotter.cli", "serve", "--model", model, "--port", str(port)]
        cmd += ["--max-request-mb", str(max_request_mb)] + (["--workers", str(workers)] if workers else [])
        cmd += ["--log", str(scoring_log)] if scoring_log is not None else []
    with running(cmd, port, log=log, env=env, timeout_s=timeout_s, what=f"the server for {model}") as url:
        yield url


@contextmanager
def running(
    cmd: Sequence[str],
    port: int,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = START_TIMEOUT_S,
    what: str = "the server",
) -> Iterator[str]:
    """Run a server command that listens on 127.0.0.1:`port` until the block ends; yields its URL once
    /ping answers (within `timeout_s`). `env` adds to this process's environment; the venv's bin folder
    leads PATH (servers start uvicorn by name). The server runs in its own process group, stopped as a
    whole."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})}
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    out = log.open("w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(list(cmd), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while not _ping(url):
            if proc.poll() is not None:
                raise SystemExit(f"serve_bench: {what} exited ({proc.returncode}){_log_hint(log, out)}")
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"serve_bench: {what} did not answer /ping in {timeout_s}s{_log_hint(log, out)}"
                )
            time.sleep(0.5)
        yield url
    finally:
        _stop_group(proc)
        if log:
            out.close()


def _log_hint(log: Path | None, out: Any) -> str:
    """Where the server's output is, with its last LOG_TAIL_LINES lines (or how to keep it)."""
    if not log:
        return "; rerun with --server-log FILE to see why"
    out.flush()
    tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return f"; its output is in {log}, ending:\n" + "\n".join(tail)


def _stop_group(proc: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM the process group `proc` leads (mlflow and its uvicorn workers); SIGKILL what is left
    after `grace_s`."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, so that only live members keep the group
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def bench(
    url: str, images: Sequence[bytes], requests: int, concurrency: int, batch: int, warmup: int
) -> Summary:
    """Warm up, then time `requests` requests of `batch` images each (cycling over `images`)."""

    def bodies(n: int, offset: int = 0) -> list[bytes]:
        return [
            request_body([images[(offset + i * batch + j) % len(images)] for j in range(batch)])
            for i in range(n)
        ]

    endpoint = f"{url.rstrip('/')}/invocations"
    if warmup:
        send_all(endpoint, bodies(warmup), concurrency)
    timed = bodies(requests, offset=warmup * batch)
    start = time.perf_counter()
    results = send_all(endpoint, timed, concurrency)
    summary = summarize(results, time.perf_counter() - start, batch)
    errors = [r.error for r in results if r.status != 200]
    if errors:
        print(f"serve_bench: {len(errors)} request(s) failed; first: {errors[0]}", file=sys.stderr)
    return summary


def report(summary: Summary, url: str, concurrency: int, batch: int) -> str:
    return "\n".join(
        [
            f"serve_bench: {summary.requests} requests x {batch} image(s), concurrency {concurrency}, {url}",
            f"latency ms: p50 {summary.p50_ms:.1f}  p95 {summary.p95_ms:.1f}  max {summary.max_ms:.1f}",
            f"throughput: {summary.images_per_s:.1f} images/s ({summary.requests_per_s:.1f} requests/s) "
            f"over {summary.wall_s:.2f} s",
            f"failed: {summary.failed}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m anomaly_spotter.bench.serve",
        description="Latency (p50/p95) and throughput of a served Anomaly Spotter model over HTTP.",
        epilog="Example: python -m anomaly_spotter.bench.serve "
        "--model models:/anomaly-spotter-fabric@champion --images data/builtin/fabric/test "
        "--concurrency 8 --requests 200",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--model", help="model URI to serve for the run, e.g. models:/anomaly-spotter-<c>@champion"
    )
    target.add_argument("--url", help="a running scoring server, e.g. http://127.0.0.1:5000")
    parser.add_argument("--images", type=Path, nargs="+", required=True, help="image files or folders")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--requests", type=int, default=200, help="timed requests (default 200)")
    parser.add_argument("--batch", type=int, default=1, help="images per request (default 1)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests first (default 10)")
    parser.add_argument("--workers", type=int, help="server worker processes with --model (mlflow's default)")
    parser.add_argument("--server-log", type=Path, help="write the started server's output here")
    args = parser.parse_args(argv)
    for name in ("concurrency", "requests", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    images = [p.read_bytes() for p in find_images(args.images)]
    if args.url:
        if not _ping(args.url.rstrip("/")):
            print(f"serve_bench: {args.url}/ping does not answer 200; is the server up?", file=sys.stderr)
            return 1
        summary = bench(args.url, images, args.requests, args.concurrency, args.batch, args.warmup)
        url = args.url
    else:
        with served(args.model, args.workers, args.server_log) as url:
            summary = bench(url, images, args.requests, args.concurrency, args.batch, args.warmup)
    print(report(summary, url, args.concurrency, args.batch))
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
