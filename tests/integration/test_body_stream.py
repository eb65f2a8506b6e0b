"""The lean ingest handler at the ends of a body: an NDJSON body whose last line has no
newline, and a client that goes away before its body has all arrived."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from fastapi import FastAPI

from tests.conftest import AUTH
from tests.readings import iso, meter, minute_ago, vehicle

NDJSON = {"content-type": "application/x-ndjson"}


async def _rows(conn: asyncpg.Connection) -> list[tuple[str, str, float]]:
    rows = await conn.fetch(
        "SELECT meter_id AS id, read_at, kwh_consumed_ac AS kwh FROM meter_readings"
        " UNION ALL SELECT vehicle_id, read_at, kwh_delivered_dc FROM vehicle_readings"
        " ORDER BY 1, 2"
    )
    return [(r["id"], iso(r["read_at"]), r["kwh"]) for r in rows]


@pytest.mark.parametrize("piece", [None, 7], ids=["whole", "in-pieces"])
async def test_ndjson_last_line_without_a_newline_is_a_reading(
    client: httpx.AsyncClient, conn: asyncpg.Connection, piece: int | None
) -> None:
    body = orjson.dumps(meter("M-1", minute_ago(2), 1.0)) + b"\n"
    body += orjson.dumps(vehicle("V-1", minute_ago(2), 4.0)) + b"\n"
    body += orjson.dumps(meter("M-1", minute_ago(1), 2.5))  # no newline after the last line

    async def pieces() -> AsyncIterator[bytes]:
        assert piece is not None
        for start in range(0, len(body), piece):  # the last piece ends mid-line
            yield body[start : start + piece]

    content = body if piece is None else pieces()
    response = await client.post("/v1/ingest", content=content, headers=NDJSON)
    assert (response.status_code, response.json()) == (200, {"accepted": 3, "duplicates": 0})
    assert await _rows(conn) == [
        ("M-1", iso(minute_ago(2)), 1.0),
        ("M-1", iso(minute_ago(1)), 2.5),
        ("V-1", iso(minute_ago(2)), 4.0),
    ]


async def test_ndjson_bad_last_line_without_a_newline_is_named(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    good = orjson.dumps(meter("M-1", minute_ago(2), 1.0))
    bad = orjson.dumps({**meter("M-1", minute_ago(1), 2.0), "voltage": -1})
    response = await client.post("/v1/ingest/meter", content=good + b"\n\n" + bad, headers=NDJSON)
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"index": 2, "field": "voltage", "reason": "Input should be greater than or equal to 0"}
    ]
    assert await _rows(conn) == []


def _scope(path: str, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("engine", 80),
    }


BODIES = {
    "json": (
        {"content-type": "application/json"},
        orjson.dumps([meter(f"M-{n}", minute_ago(1), 1.0) for n in range(40)]),
    ),
    "ndjson": (
        NDJSON,
        b"".join(orjson.dumps(meter(f"M-{n}", minute_ago(1), 1.0)) + b"\n" for n in range(40)),
    ),
    "gzip": (
        {"content-type": "application/json", "content-encoding": "gzip"},
        gzip.compress(orjson.dumps([meter(f"M-{n}", minute_ago(1), 1.0) for n in range(40)])),
    ),
}


@pytest.mark.parametrize("kind", BODIES)
async def test_client_gone_mid_body_gets_no_answer_and_nothing_is_stored(
    app: FastAPI, client: httpx.AsyncClient, conn: asyncpg.Connection, kind: str
) -> None:
    headers, body = BODIES[kind]
    headers = {**headers, **AUTH, "content-length": str(len(body))}
    half = len(body) // 2
    # What the server passes on when the connection closes after half of the body.
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": body[:half], "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(_scope("/v1/ingest/meter", headers), receive, send)
    assert messages == []  # the handler read up to the disconnect
    assert sent == []  # and answered nobody
    assert await _rows(conn) == []
    assert app.state.writer.queued == 0
    # The same body, whole, from a client that stays: stored as usual.
    response = await client.post("/v1/ingest/meter", content=body, headers=headers)
    assert response.json() == {"accepted": 40, "duplicates": 0}
    assert len(await _rows(conn)) == 40
