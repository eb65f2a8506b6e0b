"""Body formats of the ingest routes: NDJSON, gzip, and what is refused."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import asyncpg
import httpx
import orjson

from tests.conftest import ClientWith
from tests.readings import meter, minute_ago, vehicle

NDJSON = {"content-type": "application/x-ndjson"}


def _ndjson(*items: object) -> bytes:
    return b"".join(orjson.dumps(item) + b"\n" for item in items)


async def _stored(conn: asyncpg.Connection) -> tuple[int, int]:
    meters = await conn.fetchval("SELECT count(*) FROM meter_readings")
    vehicles = await conn.fetchval("SELECT count(*) FROM vehicle_readings")
    return meters, vehicles


async def test_ndjson_mixed_streams_are_stored(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    body = _ndjson(meter("M-1", minute_ago(2), 1.0), vehicle("V-1", minute_ago(2), 0.9))
    body += b"\n" + _ndjson(meter("M-1", minute_ago(1), 2.0))  # a blank line is skipped
    response = await client.post("/v1/ingest", content=body, headers=NDJSON)
    assert response.status_code == 200
    assert response.json() == {"accepted": 3, "duplicates": 0}
    assert await _stored(conn) == (2, 1)


async def test_ndjson_streamed_in_pieces_that_split_lines(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    body = _ndjson(*(meter(f"M-{n}", minute_ago(1), float(n)) for n in range(50)))

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 37):  # 37 bytes: pieces end mid-line
            yield body[start : start + 37]

    response = await client.post("/v1/ingest/meter", content=pieces(), headers=NDJSON)
    assert response.json() == {"accepted": 50, "duplicates": 0}
    assert await _stored(conn) == (50, 0)


async def test_ndjson_errors_name_the_line_and_store_nothing(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    good = meter("M-1", minute_ago(1), 1.0)
    bad = {**meter("M-2", minute_ago(1), 1.0), "voltage": -5}
    response = await client.post(
        "/v1/ingest/meter", content=_ndjson(good, good | {"meterId": "M-3"}, bad), headers=NDJSON
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"index": 2, "field": "voltage", "reason": "Input should be greater than or equal to 0"}
    ]
    assert await _stored(conn) == (0, 0)


async def test_ndjson_line_that_is_not_json_is_400(client: httpx.AsyncClient) -> None:
    body = _ndjson(meter("M-1", minute_ago(1), 1.0)) + b'{"meterId": \n'
    response = await client.post("/v1/ingest", content=body, headers=NDJSON)
    assert response.status_code == 400
    assert [item["index"] for item in response.json()["errors"]] == [1]


async def test_ndjson_without_readings_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/ingest", content=b"\n\n", headers=NDJSON)
    assert response.status_code == 422
    assert response.json()["error"] == "empty_batch"


async def test_ndjson_over_the_item_limit_is_413(client_with: ClientWith) -> None:
    body = _ndjson(*(meter("M-1", minute_ago(m), float(m)) for m in range(1, 6)))
    async with client_with(max_batch_items=4) as client:
        response = await client.post("/v1/ingest", content=body, headers=NDJSON)
    assert response.status_code == 413
    assert response.json()["error"] == "batch_too_large"


async def test_gzip_json_and_gzip_ndjson(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    batch = [vehicle("V-1", minute_ago(m), float(10 - m)) for m in range(1, 6)]
    as_json = await client.post(
        "/v1/ingest/vehicle",
        content=gzip.compress(orjson.dumps(batch)),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert as_json.json() == {"accepted": 5, "duplicates": 0}
    as_ndjson = await client.post(
        "/v1/ingest/vehicle",
        content=gzip.compress(_ndjson(*batch)),
        headers={**NDJSON, "content-encoding": "gzip"},
    )
    assert as_ndjson.json() == {"accepted": 0, "duplicates": 5}
    assert await _stored(conn) == (0, 5)


async def test_gzip_that_inflates_past_the_limit_is_413(client_with: ClientWith) -> None:
    bomb = gzip.compress(b"[" + b" " * 100_000 + b"]")  # about 150 bytes on the wire
    async with client_with(max_body_bytes=10_000) as client:
        response = await client.post(
            "/v1/ingest",
            content=bomb,
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
    assert len(bomb) < 10_000
    assert response.status_code == 413


async def test_corrupt_or_truncated_gzip_is_400(client: httpx.AsyncClient) -> None:
    packed = gzip.compress(orjson.dumps(meter("M-1", minute_ago(1), 1.0)))
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    for body in (b"not gzip at all", packed[: len(packed) // 2]):
        response = await client.post("/v1/ingest", content=body, headers=headers)
        assert response.status_code == 400
        assert response.json()["error"] == "malformed_gzip"


async def test_other_content_encodings_are_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/ingest",
        content=b"{}",
        headers={"content-type": "application/json", "content-encoding": "br"},
    )
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_encoding"


async def test_only_post_is_allowed(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/ingest/meter")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"] == "method_not_allowed"


async def test_other_paths_still_reach_the_api(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    assert (await client.post("/v1/ingest/unknown", json={})).status_code == 404


async def test_sensor_value_too_small_to_store_is_422_not_500(client: httpx.AsyncClient) -> None:
    reading = {**vehicle("V-1", minute_ago(1), 1.0), "batteryTemp": 1e-46}
    response = await client.post("/v1/ingest", json=[meter("M-1", minute_ago(1), 1.0), reading])
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"index": 1, "field": "batteryTemp", "reason": "too small to store (below 1e-45); send 0"}
    ]
    zero = await client.post("/v1/ingest", json={**reading, "batteryTemp": 0.0})
    assert zero.json() == {"accepted": 1, "duplicates": 0}


async def test_status_shows_sensor_values_as_sent(client: httpx.AsyncClient) -> None:
    await client.post("/v1/ingest", json=[meter("M-7", minute_ago(1), 1.0, voltage=230.9)])
    await client.post("/v1/ingest", json=vehicle("V-7", minute_ago(1), 1.0, soc=61.3, temp=31.7))
    assert (await client.get("/v1/meters/M-7/status")).json()["voltage"] == 230.9
    status = (await client.get("/v1/vehicles/V-7/status")).json()
    assert (status["soc"], status["batteryTemp"]) == (61.3, 31.7)
