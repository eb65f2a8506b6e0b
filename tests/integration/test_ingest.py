"""POST /v1/ingest*: storage, duplicates, the hot store's ordering rules, atomicity."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import AUTH
from tests.readings import meter, minute_ago, vehicle


async def test_single_meter_reading_is_stored_in_history_and_hot_store(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    at = minute_ago(1)
    response = await client.post("/v1/ingest/meter", json=meter("M-1", at, 10.5, 229.5))
    assert response.status_code == 200
    assert response.json() == {"accepted": 1, "duplicates": 0}
    row = await conn.fetchrow("SELECT * FROM meter_readings WHERE meter_id = 'M-1'")
    assert row is not None
    assert (row["read_at"], row["kwh_consumed_ac"], row["voltage"]) == (at, 10.5, 229.5)
    state = await conn.fetchrow("SELECT * FROM meter_state WHERE meter_id = 'M-1'")
    assert state is not None
    assert (state["read_at"], state["kwh_consumed_ac"], state["prev_read_at"]) == (at, 10.5, None)


async def test_single_vehicle_reading_is_stored(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    at = minute_ago(1)
    response = await client.post("/v1/ingest/vehicle", json=vehicle("V-1", at, 3.0, 41.5, 30.25))
    assert response.json() == {"accepted": 1, "duplicates": 0}
    row = await conn.fetchrow("SELECT * FROM vehicle_readings")
    assert row is not None
    assert (row["vehicle_id"], row["soc"], row["kwh_delivered_dc"], row["battery_temp"]) == (
        "V-1",
        41.5,
        3.0,
        30.25,
    )


async def test_polymorphic_endpoint_takes_mixed_batches(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    at = minute_ago(2)
    batch = [
        meter("M-1", at, 1.0),
        vehicle("V-1", at, 1.0),
        meter("M-2", at, 2.0),
        vehicle("V-2", at, 2.0),
    ]
    response = await client.post("/v1/ingest", json=batch)
    assert response.json() == {"accepted": 4, "duplicates": 0}
    assert await conn.fetchval("SELECT count(*) FROM meter_readings") == 2
    assert await conn.fetchval("SELECT count(*) FROM vehicle_readings") == 2
    assert await conn.fetchval("SELECT count(*) FROM meter_state") == 2
    assert await conn.fetchval("SELECT count(*) FROM vehicle_state") == 2


async def test_polymorphic_endpoint_takes_a_single_object(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/ingest", json=vehicle("V-1", minute_ago(1), 1.0))
    assert response.json() == {"accepted": 1, "duplicates": 0}


async def test_retried_reading_is_a_duplicate_and_first_write_wins(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    at = minute_ago(3)
    first = await client.post("/v1/ingest/meter", json=[meter("M-1", at, 5.0)])
    again = await client.post(
        "/v1/ingest/meter",
        json=[meter("M-1", at, 99.0), meter("M-1", at + timedelta(minutes=1), 6.0)],
    )
    assert first.json() == {"accepted": 1, "duplicates": 0}
    assert again.json() == {"accepted": 1, "duplicates": 1}
    stored = await conn.fetchval(
        "SELECT kwh_consumed_ac FROM meter_readings WHERE read_at = $1", at
    )
    assert stored == 5.0
    assert await conn.fetchval("SELECT count(*) FROM meter_readings") == 2


async def test_duplicates_inside_one_batch_count_once_and_keep_the_first(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    at = minute_ago(3)
    batch = [vehicle("V-1", at, 1.0, soc=10), vehicle("V-1", at, 2.0, soc=20)]
    response = await client.post("/v1/ingest/vehicle", json=batch)
    assert response.json() == {"accepted": 1, "duplicates": 1}
    assert await conn.fetchval("SELECT soc FROM vehicle_readings") == 10
    assert await conn.fetchval("SELECT soc FROM vehicle_state") == 10


@pytest.mark.parametrize("path", ["/v1/ingest/meter", "/v1/ingest"])
async def test_meter_duplicates_inside_one_batch_keep_the_first(
    client: httpx.AsyncClient, conn: asyncpg.Connection, path: str
) -> None:
    # Repeats of one (meter, time) around other readings: each keeps its first value, and the
    # hot row (latest and previous) is built from the first values too.
    t1, t2 = minute_ago(3), minute_ago(2)
    batch = [
        meter("M-1", t1, 1.0, voltage=221.0),
        meter("M-1", t2, 2.0, voltage=222.0),
        meter("M-1", t1, 91.0, voltage=231.0),
        meter("M-2", t2, 5.0),
        meter("M-1", t2, 92.0, voltage=232.0),
        meter("M-1", t2, 93.0, voltage=233.0),
    ]
    response = await client.post(path, json=batch)
    assert response.json() == {"accepted": 3, "duplicates": 3}
    stored = await conn.fetch(
        "SELECT read_at, kwh_consumed_ac, voltage FROM meter_readings"
        " WHERE meter_id = 'M-1' ORDER BY read_at"
    )
    assert [tuple(r) for r in stored] == [(t1, 1.0, 221.0), (t2, 2.0, 222.0)]
    state = await conn.fetchrow(
        "SELECT read_at, kwh_consumed_ac, voltage, prev_read_at, prev_kwh_consumed_ac"
        " FROM meter_state WHERE meter_id = 'M-1'"
    )
    assert state is not None
    assert tuple(state) == (t2, 2.0, 222.0, t1, 1.0)


async def test_late_reading_lands_in_history_but_never_regresses_the_hot_store(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    newest, middle, oldest = minute_ago(1), minute_ago(5), minute_ago(10)
    await client.post("/v1/ingest/vehicle", json=vehicle("V-1", newest, 30.0, soc=80))
    await client.post("/v1/ingest/vehicle", json=vehicle("V-1", oldest, 10.0, soc=20))
    state = await conn.fetchrow("SELECT * FROM vehicle_state")
    assert state is not None
    assert (state["read_at"], state["soc"]) == (newest, 80)
    # The late one is now the reading just before the latest.
    assert (state["prev_read_at"], state["prev_kwh_delivered_dc"]) == (oldest, 10.0)

    await client.post("/v1/ingest/vehicle", json=vehicle("V-1", middle, 20.0, soc=50))
    state = await conn.fetchrow("SELECT * FROM vehicle_state")
    assert state is not None
    assert (state["read_at"], state["prev_read_at"], state["prev_kwh_delivered_dc"]) == (
        newest,
        middle,
        20.0,
    )
    assert await conn.fetchval("SELECT count(*) FROM vehicle_readings") == 3


async def test_hot_store_keeps_the_two_newest_of_a_shuffled_batch(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    minutes = [7, 2, 9, 4, 1, 5]
    batch = [meter("M-1", minute_ago(m), 100.0 - m) for m in minutes]
    await client.post("/v1/ingest/meter", json=batch)
    state = await conn.fetchrow("SELECT * FROM meter_state")
    assert state is not None
    assert (state["read_at"], state["kwh_consumed_ac"]) == (minute_ago(1), 99.0)
    assert (state["prev_read_at"], state["prev_kwh_consumed_ac"]) == (minute_ago(2), 98.0)


async def test_newer_batch_merges_with_the_stored_hot_row(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    await client.post("/v1/ingest/meter", json=[meter("M-1", minute_ago(9), 1.0)])
    await client.post(
        "/v1/ingest/meter",
        json=[meter("M-1", minute_ago(3), 3.0), meter("M-1", minute_ago(8), 2.0)],
    )
    state = await conn.fetchrow("SELECT * FROM meter_state")
    assert state is not None
    assert (state["read_at"], state["prev_read_at"]) == (minute_ago(3), minute_ago(8))


async def test_a_bad_item_rejects_the_whole_batch(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    batch = [meter("M-1", minute_ago(2), 1.0), {**meter("M-2", minute_ago(2), 1.0), "voltage": -1}]
    response = await client.post("/v1/ingest", json=batch)
    assert response.status_code == 422
    assert await conn.fetchval("SELECT count(*) FROM meter_readings") == 0
    assert await conn.fetchval("SELECT count(*) FROM meter_state") == 0


async def test_a_day_without_partition_is_created_on_demand(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    at = minute_ago(60 * 24 * 10)
    name = "meter_readings_p" + at.strftime("%Y%m%d")
    await conn.execute(f"DROP TABLE {name}")
    response = await client.post("/v1/ingest/meter", json=meter("M-1", at, 1.0))
    assert response.json() == {"accepted": 1, "duplicates": 0}
    assert await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)
    assert await conn.fetchval(f"SELECT count(*) FROM {name}") == 1


async def test_mixed_batch_is_all_or_nothing_across_streams(
    app: FastAPI, conn: asyncpg.Connection
) -> None:
    # Make the vehicle insert fail inside PostgreSQL after the meter insert succeeded.
    await conn.execute(
        "ALTER TABLE vehicle_readings ADD CONSTRAINT no_hot_batteries CHECK (battery_temp < 90)"
    )
    at = minute_ago(2)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://engine", headers=AUTH
    ) as client:
        response = await client.post(
            "/v1/ingest", json=[meter("M-1", at, 1.0), vehicle("V-1", at, 1.0, temp=95)]
        )
    assert response.status_code == 500
    assert await conn.fetchval("SELECT count(*) FROM meter_readings") == 0
