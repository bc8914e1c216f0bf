"""The scoring app `mlflow models serve` runs (/invocations, /ping, /health, /version; the same requests and
answers), with a cap on the request body: what `anomaly-spotter serve` and the edge container serve.

MLflow's scoring server reads and parses a whole request before the model's own limits
(`registry.max_images_per_request`, `max_request_megapixels`) can refuse it: a 100 MB body of junk is
parsed first, and the worker's memory grows by several times that. Here a body over `--max-request-mb`
is answered 413 unparsed: by its Content-Length, or as soon as the bytes received pass the cap (chunked
uploads). What is left of a refused body is read and dropped before the 413 goes out (up to DRAIN_BYTES,
and not when the client waits on `Expect: 100-continue`), so that a client still sending gets its 413
rather than a reset connection. After each scoring request the worker hands the memory it freed back to
the system (`malloc_trim`: a small PNG can decode to hundreds of MB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

DEFAULT_MAX_REQUEST_MB = 64.0
MODEL_ENV = "ANOMALY_SPOTTER_SERVE_MODEL"
LIMIT_ENV = "ANOMALY_SPOTTER_SERVE_MAX_BYTES"
# `anomaly-spotter serve --log LOG`: the scoring log folder, and the model as the log names it (JSON:
# uri, name, version)
LOG_ENV = "ANOMALY_SPOTTER_SERVE_LOG"
LOG_MODEL_ENV = "ANOMALY_SPOTTER_SERVE_LOG_MODEL"
DRAIN_BYTES = 256 * 2**20  # a refused body up to this size is read and dropped before the 413

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: 413 for an HTTP request body over `max_bytes`, before the app parses it."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        max_bytes: int,
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_shutdown = on_shutdown  # run when the server shuts down (the scoring log's last rows)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self.on_shutdown is not None:
            on_shutdown = self.on_shutdown

            async def lifespan_receive() -> Message:
                message = await receive()
                if message["type"] == "lifespan.shutdown":
                    on_shutdown()
                return message

            await self.app(scope, lifespan_receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            if int(declared) <= DRAIN_BYTES and headers.get(b"expect", b"").lower() != b"100-continue":
                await _drain(receive)
            await self._reject(send, int(declared))
            return
        received = 0
        rejected = False

        async def limited_receive() -> Message:
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # answer now; the app sees the client gone
                    rejected = True
                    if message.get("more_body", False):
                        await _drain(receive, received)
                    await self._reject(send, received)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not rejected:  # once refused, whatever the app answers to the disconnect is dropped
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not rejected:
                raise
        finally:
            if scope.get("path") == "/invocations":  # decoded images are many times their body
                release_memory()

    async def _reject(self, send: Send, size: int) -> None:
        body = json.dumps(
            {
                "error_code": "REQUEST_TOO_LARGE",
                "message": (
                    f"request body is {size / 2**20:.1f} MB (or more), over this server's limit of "
                    f"{self.max_bytes / 2**20:.1f} MB (anomaly-spotter serve --max-request-mb, or "
                    f"{LIMIT_ENV}); send fewer or smaller images per request"
                ),
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive, drained: int = 0) -> None:
    """Read and drop what is left of a request body, until `drained` bytes in all pass DRAIN_BYTES. The
    server stops reading a body its app ignores and closes the connection with the bytes unread: the
    client, still sending, gets a reset before it can read the answer."""
    while drained <= DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def release_memory() -> None:
    """Give the memory freed after a scoring request back to the system (glibc's malloc_trim; elsewhere a
    no-op)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, looked up once per worker (`find_library` runs ldconfig), or None."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def attach_scoring_log(service_model: Any, log_dir: str, model_json: str | None) -> Any:
    """Make the served model append what it scores to the scoring log `log_dir`, from a thread of its own
    (`scoring_log.BackgroundWriter`: a request only queues its rows; each worker writes its own files);
    returns the writer (close it at shutdown: uvicorn ends a worker by its signal, without atexit)."""
    from pathlib import Path

    from anomaly_spotter.serving.scoring_log import BackgroundWriter, LogContext

    named = json.loads(model_json) if model_json else {}
    context = LogContext(
        "serve",
        named.get("uri", os.environ.get(MODEL_ENV, "")),
        named.get("name", ""),
        named.get("version", ""),
        service_model.config.category,
    )
    service_model.scoring_log = BackgroundWriter(Path(log_dir), context)
    return service_model.scoring_log


def app_from_env() -> Any:
    """The capped scoring app for the model folder in ANOMALY_SPOTTER_SERVE_MODEL, refusing bodies over
    ANOMALY_SPOTTER_SERVE_MAX_BYTES (default DEFAULT_MAX_REQUEST_MB): each uvicorn worker builds one
    (`uvicorn --factory anomaly_spotter.serving.app:app_from_env`, as the Dockerfile runs it)."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    model = mlflow.pyfunc.load_model(os.environ[MODEL_ENV])
    writer = None
    if os.environ.get(LOG_ENV):
        python_model = model.unwrap_python_model()
        writer = attach_scoring_log(python_model, os.environ[LOG_ENV], os.environ.get(LOG_MODEL_ENV))
    return BodyLimit(
        scoring_server.init(model),
        int(os.environ.get(LIMIT_ENV, DEFAULT_MAX_REQUEST_MB * 2**20)),
        writer.close if writer is not None else None,
    )
