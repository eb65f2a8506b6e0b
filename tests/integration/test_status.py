"""GET /v1/vehicles/{id}/status and /v1/meters/{id}/status, from the hot store only."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import httpx

from tests.conftest import ClientWith
from tests.readings import iso, meter, minute_ago, vehicle


async def test_vehicle_status_reports_latest_reading_power_and_charging(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/v1/assignments", json={"vehicleId": "V-1", "meterId": "M-1"})
    batch = [
        vehicle("V-1", minute_ago(2), 10.0, soc=40),
        vehicle("V-1", minute_ago(1), 11.0, soc=41),
    ]
    posted = datetime.now(UTC)
    ingested = await client.post("/v1/ingest/vehicle", json=batch)
    answered = datetime.now(UTC)
    assert ingested.json() == {"accepted": 2, "duplicates": 0}
    response = await client.get("/v1/vehicles/V-1/status")
    assert response.status_code == 200
    status = response.json()
    assert status["vehicleId"] == "V-1"
    assert status["soc"] == 41
    assert status["kwhDeliveredDc"] == 11.0
    assert status["batteryTemp"] == 25.0
    assert status["timestamp"] == iso(minute_ago(1))
    # Received while the request was in flight (the database's clock is this machine's).
    assert posted <= datetime.fromisoformat(status["receivedAt"]) <= answered
    assert status["powerKw"] == 60.0  # 1 kWh in one minute
    assert status["charging"] is True
    assert status["online"] is True
    assert status["meterId"] == "M-1"


async def test_idle_vehicle_is_not_charging(client: httpx.AsyncClient) -> None:
    batch = [vehicle("V-1", minute_ago(2), 10.0), vehicle("V-1", minute_ago(1), 10.0)]
    await client.post("/v1/ingest/vehicle", json=batch)
    status = (await client.get("/v1/vehicles/V-1/status")).json()
    assert (status["powerKw"], status["charging"], status["online"]) == (0.0, False, True)
    assert status["meterId"] is None


async def test_single_reading_has_no_power(client: httpx.AsyncClient) -> None:
    await client.post("/v1/ingest/vehicle", json=vehicle("V-1", minute_ago(1), 10.0))
    status = (await client.get("/v1/vehicles/V-1/status")).json()
    assert (status["powerKw"], status["charging"]) == (None, False)


async def test_stale_vehicle_is_offline_and_not_charging(client: httpx.AsyncClient) -> None:
    batch = [vehicle("V-1", minute_ago(6), 10.0), vehicle("V-1", minute_ago(5), 11.0)]
    await client.post("/v1/ingest/vehicle", json=batch)
    status = (await client.get("/v1/vehicles/V-1/status")).json()
    assert status["online"] is False  # 3 heartbeats of 60 s have passed
    assert status["charging"] is False
    assert status["powerKw"] == 60.0


async def test_online_window_follows_the_heartbeat_setting(client_with: ClientWith) -> None:
    async with client_with(online_heartbeats=10) as client:
        await client.post("/v1/ingest/meter", json=meter("M-1", minute_ago(5), 1.0))
        assert (await client.get("/v1/meters/M-1/status")).json()["online"] is True


async def test_implausible_jump_gives_no_power(client: httpx.AsyncClient) -> None:
    # 1,000 kWh in a minute is 60 MW: a swapped meter, not a charge.
    batch = [meter("M-1", minute_ago(2), 10.0), meter("M-1", minute_ago(1), 1010.0)]
    await client.post("/v1/ingest/meter", json=batch)
    assert (await client.get("/v1/meters/M-1/status")).json()["powerKw"] is None


async def test_meter_status_reports_power_and_current_vehicle(client: httpx.AsyncClient) -> None:
    await client.post("/v1/assignments", json={"vehicleId": "V-7", "meterId": "M-1"})
    batch = [meter("M-1", minute_ago(3), 100.0, 231), meter("M-1", minute_ago(1), 102.0, 229)]
    posted = datetime.now(UTC)
    assert (await client.post("/v1/ingest/meter", json=batch)).json()["accepted"] == 2
    answered = datetime.now(UTC)
    status = (await client.get("/v1/meters/M-1/status")).json()
    assert posted <= datetime.fromisoformat(status["receivedAt"]) <= answered
    assert status == {
        "meterId": "M-1",
        "kwhConsumedAc": 102.0,
        "voltage": 229.0,
        "timestamp": iso(minute_ago(1)),
        "receivedAt": status["receivedAt"],
        "powerKw": 60.0,
        "online": True,
        "vehicleId": "V-7",
    }


async def test_status_reads_only_the_hot_store(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    await client.post("/v1/ingest/meter", json=meter("M-1", minute_ago(1), 5.0))
    await conn.execute("TRUNCATE meter_readings")
    assert (await client.get("/v1/meters/M-1/status")).json()["kwhConsumedAc"] == 5.0


async def test_unknown_devices_are_404(client: httpx.AsyncClient) -> None:
    for path in ("/v1/vehicles/nope/status", "/v1/meters/nope/status"):
        response = await client.get(path)
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"


async def test_vehicles_status_answers_the_vehicles_asked_for_by_id(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/v1/assignments", json={"vehicleId": "V-2", "meterId": "M-2"})
    batch = [
        vehicle("V-1", minute_ago(6), 10.0, soc=30),
        vehicle("V-2", minute_ago(2), 10.0, soc=60),
        vehicle("V-2", minute_ago(1), 11.0, soc=61),
        vehicle("V-3", minute_ago(1), 5.0),
    ]
    await client.post("/v1/ingest/vehicle", json=batch)
    response = await client.get(
        "/v1/vehicles/status", params={"vehicleId": ["V-2", "V-1", "V-9", "V-2"]}
    )
    assert response.status_code == 200
    found = response.json()["vehicles"]
    # Each known vehicle once, by id; V-9 never reported; V-3 was not asked for.
    assert [v["vehicleId"] for v in found] == ["V-1", "V-2"]
    one, two = found
    assert (one["soc"], one["online"], one["charging"], one["meterId"]) == (30, False, False, None)
    assert (two["soc"], two["online"], two["charging"], two["meterId"]) == (61, True, True, "M-2")
    # The same answer, field by field, as the one vehicle's own status.
    assert two == (await client.get("/v1/vehicles/V-2/status")).json()


async def test_vehicles_status_refuses_no_ids_bad_ids_and_too_many(
    client: httpx.AsyncClient,
) -> None:
    for params in (
        {},
        {"vehicleId": "bad id"},
        {"vehicleId": [f"V-{i}" for i in range(1001)]},
    ):
        response = await client.get("/v1/vehicles/status", params=params)
        assert response.status_code == 422, params
        body = response.json()
        assert body["error"] == "invalid_request"
        assert body["errors"][0]["field"].startswith("vehicleId")
