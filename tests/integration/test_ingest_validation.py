"""Bad input gets a 4xx naming the item and field, and nothing is stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import ClientWith
from tests.readings import iso, meter, minute_ago, vehicle

NOW = minute_ago(1)


def _meter(**fields: Any) -> dict[str, Any]:
    return {**meter("M-1", NOW, 10.0), **fields}


def _vehicle(**fields: Any) -> dict[str, Any]:
    return {**vehicle("V-1", NOW, 10.0), **fields}


def _without(item: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != field}


# (case, item, field named in the error)
BAD_ITEMS: list[tuple[str, dict[str, Any], str | None]] = [
    ("missing field", _without(_meter(), "voltage"), "voltage"),
    ("missing timestamp", _without(_vehicle(), "timestamp"), "timestamp"),
    ("string for number", _meter(kwhConsumedAc="10.0"), "kwhConsumedAc"),
    ("bool for number", _vehicle(soc=True), "soc"),
    ("object for number", _vehicle(batteryTemp={"c": 20}), "batteryTemp"),
    ("number for id", _meter(meterId=17), "meterId"),
    ("soc above 100", _vehicle(soc=100.5), "soc"),
    ("soc below 0", _vehicle(soc=-0.1), "soc"),
    ("battery too hot", _vehicle(batteryTemp=100.1), "batteryTemp"),
    ("battery too cold", _vehicle(batteryTemp=-40.5), "batteryTemp"),
    ("negative AC energy", _meter(kwhConsumedAc=-1), "kwhConsumedAc"),
    ("negative DC energy", _vehicle(kwhDeliveredDc=-0.001), "kwhDeliveredDc"),
    ("voltage above 1000", _meter(voltage=1000.5), "voltage"),
    ("negative voltage", _meter(voltage=-230), "voltage"),
    ("empty id", _meter(meterId=""), "meterId"),
    ("id of 65 chars", _vehicle(vehicleId="v" * 65), "vehicleId"),
    ("id with a space", _vehicle(vehicleId="car 1"), "vehicleId"),
    ("id with a slash", _meter(meterId="a/b"), "meterId"),
    ("unknown extra field", _meter(kwh=1), "kwh"),
    ("both ids", _meter(vehicleId="V-1"), None),
    ("neither id", _without(_meter(), "meterId"), None),
    (
        "timestamp without offset",
        _meter(timestamp=NOW.replace(tzinfo=None).isoformat()),
        "timestamp",
    ),
    ("timestamp as epoch number", _meter(timestamp=1_763_800_000), "timestamp"),
    ("timestamp not a date", _meter(timestamp="yesterday"), "timestamp"),
    ("timestamp a day ahead", _meter(timestamp=iso(NOW + timedelta(days=1))), "timestamp"),
    ("timestamp in year 1", _meter(timestamp="0001-01-01T00:00:00Z"), "timestamp"),
    ("timestamp in year 9999", _meter(timestamp="9999-12-31T23:59:59Z"), "timestamp"),
    (
        "timestamp in nanoseconds",
        _meter(timestamp=iso(NOW).replace("Z", ".123456789Z")),
        "timestamp",
    ),
    ("AC register of 1e308 kWh", _meter(kwhConsumedAc=1e308), "kwhConsumedAc"),
    ("DC register of 1e308 kWh", _vehicle(kwhDeliveredDc=1e308), "kwhDeliveredDc"),
    ("DC register past 1e9 kWh", _vehicle(kwhDeliveredDc=1e9 * 1.000001), "kwhDeliveredDc"),
    ("id with a NUL", _vehicle(vehicleId="a\x00b"), "vehicleId"),
    ("timestamp too old", _vehicle(timestamp=iso(NOW - timedelta(days=31))), "timestamp"),
]


@pytest.mark.parametrize(
    ("item", "field"), [c[1:] for c in BAD_ITEMS], ids=[c[0] for c in BAD_ITEMS]
)
async def test_bad_item_in_a_batch_names_index_and_field(
    client: httpx.AsyncClient, conn: asyncpg.Connection, item: dict[str, Any], field: str | None
) -> None:
    good = meter("M-9", NOW, 1.0)
    response = await client.post("/v1/ingest", json=[good, item])
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_readings"
    assert {"index": 1, "field": field} in [
        {"index": e["index"], "field": e["field"]} for e in body["errors"]
    ]
    assert all(e["index"] == 1 for e in body["errors"])
    assert await conn.fetchval("SELECT count(*) FROM meter_readings") == 0
    assert await conn.fetchval("SELECT count(*) FROM vehicle_readings") == 0


async def test_future_limit_is_five_minutes_of_clock_skew(client: httpx.AsyncClient) -> None:
    now = datetime.now(UTC)
    ahead = await client.post("/v1/ingest/meter", json=meter("M-1", now + timedelta(minutes=4), 1))
    assert ahead.json() == {"accepted": 1, "duplicates": 0}
    too_far = await client.post(
        "/v1/ingest/meter", json=meter("M-1", now + timedelta(minutes=6), 1)
    )
    assert too_far.status_code == 422
    assert too_far.json()["errors"] == [
        {"index": None, "field": "timestamp", "reason": "more than 5 minutes in the future"}
    ]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_non_finite_numbers_are_rejected(client: httpx.AsyncClient, literal: str) -> None:
    body = (
        '{"meterId": "M-1", "kwhConsumedAc": ' + literal + ', "voltage": 230, '
        f'"timestamp": "{iso(NOW)}"}}'
    )
    response = await client.post(
        "/v1/ingest/meter", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"index": None, "field": "kwhConsumedAc", "reason": "Input should be a finite number"}
    ]


async def test_every_problem_of_a_batch_is_listed(client: httpx.AsyncClient) -> None:
    batch = [_vehicle(soc=101), meter("M-2", NOW, 1.0), _meter(voltage=-1, meterId="")]
    response = await client.post("/v1/ingest", json=batch)
    errors = response.json()["errors"]
    assert [(e["index"], e["field"]) for e in errors] == [
        (0, "soc"),
        (2, "meterId"),
        (2, "voltage"),
    ]
    assert response.json()["message"] == "2 readings are invalid; nothing was stored"


async def test_typed_endpoint_rejects_the_other_stream(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/ingest/meter", json=[vehicle("V-1", NOW, 1.0)])
    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["errors"]}
    assert {"meterId", "vehicleId"} <= fields


@pytest.mark.parametrize("body", [b'[{"meterId": "M-1",', b"{not json}", b"", b"[1,"])
async def test_malformed_json_is_400(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(
        "/v1/ingest", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json"


@pytest.mark.parametrize("body", [b"42", b'"reading"', b"null"])
async def test_a_body_that_is_not_an_object_or_array_is_422(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await client.post(
        "/v1/ingest/vehicle", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


async def test_empty_array_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/ingest", json=[])
    assert response.status_code == 422
    assert response.json()["error"] == "empty_batch"


async def test_more_items_than_the_maximum_is_413(client_with: ClientWith) -> None:
    async with client_with(max_batch_items=3) as client:
        batch = [meter("M-1", minute_ago(m), float(m)) for m in range(1, 5)]
        response = await client.post("/v1/ingest/meter", json=batch)
        assert response.status_code == 413
        assert response.json()["error"] == "batch_too_large"
        taken = await client.post("/v1/ingest/meter", json=batch[:3])
        assert taken.json() == {"accepted": 3, "duplicates": 0}


async def test_body_over_the_size_limit_is_413(client_with: ClientWith) -> None:
    async with client_with(max_body_bytes=1000) as client:
        batch = [meter("M-1", minute_ago(m), float(m)) for m in range(1, 20)]
        response = await client.post("/v1/ingest/meter", json=batch)
        assert response.status_code == 413
        assert response.json()["error"] == "body_too_large"


async def test_body_over_the_limit_without_content_length_is_413(client_with: ClientWith) -> None:
    async def chunks() -> Any:
        for _ in range(50):
            yield b" " * 100

    async with client_with(max_body_bytes=1000) as client:
        response = await client.post(
            "/v1/ingest", content=chunks(), headers={"content-type": "application/json"}
        )
        assert response.status_code == 413


async def test_non_json_content_type_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/ingest", content=b"meterId=M-1", headers={"content-type": "text/csv"}
    )
    assert response.status_code == 415
