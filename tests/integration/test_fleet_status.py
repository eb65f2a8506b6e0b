"""GET /v1/fleet/status: the fleet from the hot store, consistent with each device's status."""

from __future__ import annotations

import httpx

from tests.readings import iso, meter, minute_ago, vehicle


async def _fleet(client: httpx.AsyncClient) -> None:
    await client.post(
        "/v1/ingest",
        json=[
            vehicle("V-charging", minute_ago(2), 10.0, soc=40.0),
            vehicle("V-charging", minute_ago(1), 10.5, soc=41.0),
            vehicle("V-parked", minute_ago(2), 7.0, soc=80.0),
            vehicle("V-parked", minute_ago(1), 7.0, soc=80.0),
            vehicle("V-gone", minute_ago(30), 3.0, soc=10.0),
            meter("M-live", minute_ago(1), 100.0),
            meter("M-gone", minute_ago(20), 50.0),
        ],
    )


async def test_fleet_counts_match_the_devices_own_status(client: httpx.AsyncClient) -> None:
    await _fleet(client)
    fleet = (await client.get("/v1/fleet/status")).json()
    assert (fleet["vehicles"], fleet["vehiclesOnline"], fleet["vehiclesCharging"]) == (3, 2, 1)
    assert (fleet["meters"], fleet["metersOnline"]) == (2, 1)
    assert fleet["avgSocOnline"] == 60.5
    charging = [
        v
        for v in ("V-charging", "V-parked", "V-gone")
        if (await client.get(f"/v1/vehicles/{v}/status")).json()["charging"]
    ]
    assert charging == ["V-charging"]
    assert fleet["stale"] == [
        {"kind": "vehicle", "deviceId": "V-gone", "lastSeen": iso(minute_ago(30))},
        {"kind": "meter", "deviceId": "M-gone", "lastSeen": iso(minute_ago(20))},
    ]
    assert fleet["nextCursor"] is None


async def test_stale_devices_page_by_cursor(client: httpx.AsyncClient) -> None:
    await _fleet(client)
    first = (await client.get("/v1/fleet/status", params={"limit": 1})).json()
    assert [d["deviceId"] for d in first["stale"]] == ["V-gone"]
    assert first["nextCursor"]
    second = (
        await client.get("/v1/fleet/status", params={"limit": 1, "cursor": first["nextCursor"]})
    ).json()
    assert [d["deviceId"] for d in second["stale"]] == ["M-gone"]
    assert second["nextCursor"] is None


async def test_an_empty_fleet_and_a_bad_cursor(client: httpx.AsyncClient) -> None:
    empty = (await client.get("/v1/fleet/status")).json()
    assert (empty["vehicles"], empty["avgSocOnline"], empty["stale"]) == (0, None, [])
    response = await client.get("/v1/fleet/status", params={"cursor": "not-ours"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "cursor"
