"""Limits a request can run into: steps of a series, body sizes (exact at the boundary, and
refused before the body is read)."""

from __future__ import annotations

import gzip
from typing import Any

import httpx
import orjson
from fastapi import FastAPI

from energy_engine.asgi import Message
from tests.conftest import ClientWith
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


async def test_ingest_body_limit_is_exact(client_with: ClientWith) -> None:
    item = orjson.dumps(meter("M-1", minute_ago(1), 1.0))
    headers = {"content-type": "application/json"}
    async with client_with(max_body_bytes=1000) as client:
        at_limit = item + b" " * (1000 - len(item))
        assert (await client.post("/v1/ingest", content=at_limit, headers=headers)).is_success
        over = _error(
            await client.post("/v1/ingest", content=at_limit + b" ", headers=headers), 413
        )
        assert over["error"] == "body_too_large"
        packed = gzip.compress(at_limit + b" ")
        gz = {**headers, "content-encoding": "gzip"}
        _error(await client.post("/v1/ingest", content=packed, headers=gz), 413)
        assert (
            await client.post("/v1/ingest", content=gzip.compress(at_limit), headers=gz)
        ).is_success
        ndjson = {"content-type": "application/x-ndjson"}
        _error(await client.post("/v1/ingest", content=at_limit + b"\n", headers=ndjson), 413)


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
