"""Limits a request can run into: steps of a series, body sizes (exact at the boundary, and
refused before the body is read)."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
from fastapi import FastAPI

from energy_engine.app import create_app
from energy_engine.asgi import Message
from tests.conftest import AUTH, ClientWith, MakeSettings
from tests.integration.test_hostile_requests import ANALYTICS, _error, _known_vehicle
from tests.readings import iso, meter, minute_ago


async def test_series_steps_are_bounded(client_with: ClientWith) -> None:
    async with client_with(max_series_points=24) as client:
        await _known_vehicle(client)
        window = {"from": iso(minute_ago(60 * 48)), "to": iso(minute_ago(0))}
        body = _error(await client.get(ANALYTICS[1], params=window), 422)
        assert body["errors"][0]["field"] == "step"
        daily = await client.get(ANALYTICS[1], params={**window, "step": "1d"})
        assert daily.status_code == 200


LIMIT = 1000
# (name, media type, gzip): the size limit counts the body's bytes after inflating.
BODY_KINDS = [
    ("JSON", "application/json", False),
    ("gzip JSON", "application/json", True),
    ("NDJSON", "application/x-ndjson", False),
    ("gzip NDJSON", "application/x-ndjson", True),
]


def _padded(meter_id: str, size: int, ndjson: bool) -> bytes:
    """One meter reading padded with spaces to exactly `size` bytes."""
    item = orjson.dumps(meter(meter_id, minute_ago(1), 1.0))
    end = b"\n" if ndjson else b""
    body = item + b" " * (size - len(item) - len(end)) + end
    assert len(body) == size
    return body


async def _pieces(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 100):  # no Content-Length: sent chunked
        yield body[start : start + 100]


async def test_ingest_body_limit_is_exact_to_the_byte(client_with: ClientWith) -> None:
    """`max_body_bytes` bytes are taken, one more is 413, whether the length is declared or
    the body streams in (gzip: the inflated length)."""
    async with client_with(max_body_bytes=LIMIT) as client:
        for name, media_type, packed in BODY_KINDS:
            headers = {"content-type": media_type}
            if packed:
                headers["content-encoding"] = "gzip"
            for streamed in (False, True):
                case = f"{name}, {'chunked' if streamed else 'with Content-Length'}"
                for size in (LIMIT, LIMIT + 1):
                    body = _padded(f"M-{len(case)}-{streamed}-{size}", size, "nd" in media_type)
                    sent = gzip.compress(body) if packed else body
                    content = _pieces(sent) if streamed else sent
                    response = await client.post("/v1/ingest", content=content, headers=headers)
                    if size == LIMIT:
                        assert response.status_code == 200, (case, size, response.text)
                        assert response.json() == {"accepted": 1, "duplicates": 0}, case
                    else:
                        assert _error(response, 413)["error"] == "body_too_large", case


async def test_a_declared_length_over_the_ingest_limit_is_refused_unread(
    make_settings: MakeSettings,
) -> None:
    app = create_app(make_settings(max_body_bytes=LIMIT))

    async def post(declared: int) -> tuple[int, int]:
        """(status, body messages read) for a request that declares `declared` bytes."""
        body = _padded(f"M-{declared}", declared, ndjson=False)
        read: list[Message] = []

        async def receive() -> Message:
            read.append({"type": "http.request", "body": body, "more_body": False})
            return read[-1]

        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/ingest",
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(declared).encode()),
                (b"authorization", AUTH["Authorization"].encode()),
            ],
            "query_string": b"",
            "app": app,
        }
        await app(scope, receive, send)
        return sent[0]["status"], len(read)

    async with app.router.lifespan_context(app):
        assert await post(LIMIT) == (200, 1)
        assert await post(LIMIT + 1) == (413, 0)


async def test_assignment_bodies_over_the_limit_are_413_before_they_are_read(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    limit = app.state.settings.max_request_body_bytes
    read: list[Message] = []

    async def receive() -> Message:
        read.append({})
        return {"type": "http.request", "body": b" " * 1024, "more_body": True}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/assignments",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(limit + 1).encode()),
            (b"authorization", AUTH["Authorization"].encode()),
        ],
        "query_string": b"",
        "app": app,
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 413 and not read

    async def endless() -> Any:
        for _ in range(limit // 1024 + 2):
            yield b" " * 1024

    chunked = await client.post(
        "/v1/assignments", content=endless(), headers={"content-type": "application/json"}
    )
    assert _error(chunked, 413)["error"] == "body_too_large"
