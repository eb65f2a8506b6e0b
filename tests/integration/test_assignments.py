"""POST /v1/assignments and GET /v1/vehicles/{id}/assignments."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from tests.readings import iso, minute_ago


async def _assign(
    client: httpx.AsyncClient, vehicle_id: str, meter_id: str, at: datetime | None = None
) -> httpx.Response:
    body = {"vehicleId": vehicle_id, "meterId": meter_id}
    if at is not None:
        body["validFrom"] = iso(at)
    return await client.post("/v1/assignments", json=body)


async def test_assignment_is_created_open(client: httpx.AsyncClient) -> None:
    at = minute_ago(60)
    response = await _assign(client, "V-1", "M-1", at)
    assert response.status_code == 201
    body = response.json()
    assert body == {
        "assignmentId": body["assignmentId"],
        "vehicleId": "V-1",
        "meterId": "M-1",
        "validFrom": iso(at),
        "validTo": None,
    }


async def test_valid_from_defaults_to_now(client: httpx.AsyncClient) -> None:
    before = datetime.now(UTC)
    body = (await _assign(client, "V-1", "M-1")).json()
    valid_from = datetime.fromisoformat(body["validFrom"])
    assert before <= valid_from <= datetime.now(UTC)


async def test_reassigning_a_vehicle_closes_its_current_assignment(
    client: httpx.AsyncClient,
) -> None:
    await _assign(client, "V-1", "M-1", minute_ago(60))
    await _assign(client, "V-1", "M-2", minute_ago(30))
    history = (await client.get("/v1/vehicles/V-1/assignments")).json()
    assert [(a["meterId"], a["validFrom"], a["validTo"]) for a in history] == [
        ("M-1", iso(minute_ago(60)), iso(minute_ago(30))),
        ("M-2", iso(minute_ago(30)), None),
    ]


async def test_assigning_a_taken_meter_closes_the_other_vehicle(
    client: httpx.AsyncClient,
) -> None:
    await _assign(client, "V-1", "M-1", minute_ago(60))
    await _assign(client, "V-2", "M-1", minute_ago(10))
    first = (await client.get("/v1/vehicles/V-1/assignments")).json()
    assert first[0]["validTo"] == iso(minute_ago(10))
    status_meter = (await client.get("/v1/vehicles/V-2/assignments")).json()
    assert status_meter[0]["validTo"] is None


async def test_repeating_the_current_assignment_changes_nothing(client: httpx.AsyncClient) -> None:
    created = await _assign(client, "V-1", "M-1", minute_ago(60))
    again = await _assign(client, "V-1", "M-1", minute_ago(5))
    assert again.status_code == 200
    assert again.json() == created.json()


async def test_assignment_may_not_overlap_history(client: httpx.AsyncClient) -> None:
    await _assign(client, "V-1", "M-1", minute_ago(60))
    response = await _assign(client, "V-1", "M-2", minute_ago(90))
    assert response.status_code == 409
    assert response.json()["error"] == "assignment_conflict"
    # The meter side counts too: M-1's assignment started an hour ago.
    assert (await _assign(client, "V-2", "M-1", minute_ago(61))).status_code == 409


async def test_assignment_in_the_future_is_422(client: httpx.AsyncClient) -> None:
    response = await _assign(client, "V-1", "M-1", datetime.now(UTC) + timedelta(hours=1))
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "validFrom"


async def test_bad_assignment_bodies_are_422(client: httpx.AsyncClient) -> None:
    cases = [
        {"vehicleId": "V-1"},
        {"vehicleId": "V 1", "meterId": "M-1"},
        {"vehicleId": "V-1", "meterId": "M-1", "validFrom": "2026-01-01T00:00:00"},
        {"vehicleId": "V-1", "meterId": "M-1", "extra": 1},
    ]
    for body in cases:
        response = await client.post("/v1/assignments", json=body)
        assert response.status_code == 422, body
        assert response.json()["errors"]


async def test_unknown_vehicle_history_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/vehicles/ghost/assignments")).status_code == 404


async def test_concurrent_reassignments_keep_one_open_assignment_per_device(
    client: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    vehicles = [f"V-{i}" for i in range(6)]
    meters = [f"M-{i}" for i in range(3)]
    requests = [_assign(client, vehicles[i % 6], meters[(i * 7) % 3]) for i in range(60)]
    responses = await asyncio.gather(*requests)
    assert {r.status_code for r in responses} <= {200, 201}
    open_per_vehicle = await conn.fetchval(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM assignments"
        " WHERE valid_to IS NULL GROUP BY vehicle_id) c"
    )
    open_per_meter = await conn.fetchval(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM assignments"
        " WHERE valid_to IS NULL GROUP BY meter_id) c"
    )
    assert (open_per_vehicle, open_per_meter) == (1, 1)
    # No vehicle holds two meters at any instant.
    overlaps = await conn.fetchval(
        """
        SELECT count(*) FROM assignments a JOIN assignments b
          ON a.vehicle_id = b.vehicle_id AND a.assignment_id < b.assignment_id
         AND a.valid_from < coalesce(b.valid_to, 'infinity')
         AND b.valid_from < coalesce(a.valid_to, 'infinity')
        """
    )
    assert overlaps == 0
