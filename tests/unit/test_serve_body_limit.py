"""The serving app's body cap, driven as uvicorn drives an ASGI app: a refused body is read to its end
before the 413 goes out (a client still sending would otherwise get a reset), but never past DRAIN_BYTES,
and never when the client waits on `Expect: 100-continue`."""

from __future__ import annotations

import asyncio
import json

import pytest

from anomaly_spotter.serving import app as serving_app


class Client:
    """An HTTP request as ASGI messages: the body in chunks; records what was read and sent, in order."""

    def __init__(self, chunks: list[bytes], headers: dict[bytes, bytes]) -> None:
        self.scope = {"type": "http", "path": "/invocations", "headers": list(headers.items())}
        self.chunks = list(chunks)
        self.events: list[tuple[str, object]] = []

    async def receive(self) -> dict:
        if not self.chunks:
            return {"type": "http.disconnect"}
        body = self.chunks.pop(0)
        self.events.append(("read", len(body)))
        return {"type": "http.request", "body": body, "more_body": bool(self.chunks)}

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.events.append(("status", message["status"]))


async def _echo_app(scope: dict, receive, send) -> None:
    """Reads the whole body, answers 200 with its length."""
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        size += len(message["body"])
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps(size).encode()})


def _run(client: Client, max_bytes: int) -> list[tuple[str, object]]:
    asyncio.run(serving_app.BodyLimit(_echo_app, max_bytes)(client.scope, client.receive, client.send))
    return client.events


def test_a_declared_oversized_body_is_read_to_its_end_before_the_413() -> None:
    client = Client([b"x" * 400] * 5, {b"content-length": b"2000"})
    assert _run(client, max_bytes=1000) == [("read", 400)] * 5 + [("status", 413)]


def test_a_chunked_body_is_refused_once_past_the_cap_and_drained_first() -> None:
    client = Client([b"x" * 400] * 5, {b"transfer-encoding": b"chunked"})
    assert _run(client, max_bytes=1000) == [("read", 400)] * 5 + [("status", 413)]


def test_a_body_under_the_cap_reaches_the_app() -> None:
    client = Client([b"x" * 400] * 2, {b"content-length": b"800"})
    assert _run(client, max_bytes=1000) == [("read", 400)] * 2 + [("status", 200)]


def test_draining_stops_past_drain_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving_app, "DRAIN_BYTES", 1500)
    client = Client([b"x" * 400] * 10, {b"transfer-encoding": b"chunked"})
    events = _run(client, max_bytes=1000)
    assert events == [("read", 400)] * 4 + [("status", 413)] and len(client.chunks) == 6


def test_no_body_is_read_when_the_client_waits_for_100_continue_or_declares_past_drain_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waiting = Client([b"x" * 400] * 5, {b"content-length": b"2000", b"expect": b"100-continue"})
    assert _run(waiting, max_bytes=1000) == [("status", 413)]
    monkeypatch.setattr(serving_app, "DRAIN_BYTES", 1500)
    huge = Client([b"x" * 400] * 5, {b"content-length": b"2000"})
    assert _run(huge, max_bytes=1000) == [("status", 413)]
