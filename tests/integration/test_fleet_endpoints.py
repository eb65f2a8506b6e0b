"""GET /v1/analytics/performance/{vehicleId}/series and GET /v1/analytics/fleet over HTTP."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from energy_engine import db
from energy_engine.rollups import store as rollups
from energy_engine.settings import Settings
from tests import reference
from tests.readings import iso, meter, minute_ago, vehicle

# Three whole hours ago, on the hour: the charges below span hour boundaries.
T0 = minute_ago(0).replace(minute=0) - timedelta(hours=4)

# vehicle → (meter, AC kWh a minute, DC kWh a minute): healthy, warning, critical, anomaly.
FLEET = {
    "V-a": ("M-a", 1.0, 0.92),
    "V-b": ("M-b", 1.0, 0.80),
    "V-c": ("M-c", 1.0, 0.60),
    "V-d": ("M-d", 1.0, 1.10),
}
V_E_DC = 7.0  # kWh the meterless vehicle V-e delivers


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


async def _charge(
    client: httpx.AsyncClient, vehicle_id: str, meter_id: str, ac: float, dc: float
) -> None:
    """Readings every minute for 150 minutes from T0, SoC rising from 10 %."""
    response = await client.post(
        "/v1/assignments",
        json={"vehicleId": vehicle_id, "meterId": meter_id, "validFrom": iso(at(-60))},
    )
    assert response.status_code == 201, response.text
    minutes = range(151)
    for path, body in (
        ("/v1/ingest/meter", [meter(meter_id, at(m), 100 + m * ac) for m in minutes]),
        (
            "/v1/ingest/vehicle",
            [
                vehicle(vehicle_id, at(m), 50 + m * dc, soc=10 + m / 5, temp=20 + m % 5)
                for m in minutes
            ],
        ),
    ):
        response = await client.post(path, json=body)
        assert response.status_code == 200, response.text


@pytest.fixture
async def fleet(client: httpx.AsyncClient) -> httpx.AsyncClient:
    for vehicle_id, (meter_id, ac, dc) in FLEET.items():
        await _charge(client, vehicle_id, meter_id, ac, dc)
    # A vehicle that charges without a meter (its DC has no AC to compare with), and one that
    # only has an assignment.
    response = await client.post(
        "/v1/ingest/vehicle",
        json=[vehicle("V-e", at(30), 5.0), vehicle("V-e", at(40), 5.0 + V_E_DC)],
    )
    assert response.json() == {"accepted": 2, "duplicates": 0}
    response = await client.post(
        "/v1/assignments", json={"vehicleId": "V-f", "meterId": "M-f", "validFrom": iso(at(-60))}
    )
    assert response.status_code == 201
    return client


async def _get(client: httpx.AsyncClient, path: str, **params: str | int) -> dict[str, Any]:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# --- series --------------------------------------------------------------------------------


async def test_hourly_series_points_are_the_report_of_each_step(
    fleet: httpx.AsyncClient, conn: asyncpg.Connection, settings: Settings
) -> None:
    start, end = at(-30), at(170)
    series = await _get(
        fleet,
        "/v1/analytics/performance/V-a/series",
        **{"from": iso(start), "to": iso(end), "step": "1h"},
    )
    assert series["vehicleId"] == "V-a" and series["step"] == "1h"
    points = series["points"]
    # Cut to the window at both ends: T0-30m..T0, three whole hours, and T0+3h..T0+2h50m+.
    bounds = [(p["from"], p["to"]) for p in points]
    assert bounds == [
        (iso(at(-30)), iso(at(0))),
        (iso(at(0)), iso(at(60))),
        (iso(at(60)), iso(at(120))),
        (iso(at(120)), iso(at(170))),
    ]
    for point in points:
        step_from, step_to = (datetime.fromisoformat(point[k]) for k in ("from", "to"))
        want = await reference.stored_body(conn, "V-a", step_from, step_to, settings)
        for key in ("acConsumedKwh", "dcDeliveredKwh", "lossKwh", "efficiency"):
            assert point[key] == want[key], (key, point)
        assert point["avgBatteryTemp"] == want["avgBatteryTemp"]
        assert point["readings"] == want["readings"]
    assert points[0]["readings"] == {"vehicle": 0, "meter": 0}
    # One rule for both sides: no readings of a side in a step, no energy figure for it.
    assert points[0]["socMin"] is None and points[0]["acConsumedKwh"] is None
    assert points[0]["dcDeliveredKwh"] is None and points[0]["lossKwh"] is None
    # The hour T0+1h..T0+2h: readings at minutes 60..119, SoC 10 + m/5.
    assert points[2]["readings"] == {"vehicle": 60, "meter": 60}
    assert points[2]["socMin"] == pytest.approx(22.0)
    assert points[2]["socMax"] == pytest.approx(10 + 119 / 5, rel=1e-6)
    assert points[2]["dcDeliveredKwh"] == pytest.approx(60 * 0.92)
    assert points[2]["efficiency"] == pytest.approx(0.92)
    total_dc = sum(p["dcDeliveredKwh"] or 0.0 for p in points)
    whole = await _get(
        fleet, "/v1/analytics/performance/V-a", **{"from": iso(start), "to": iso(end)}
    )
    assert total_dc == pytest.approx(whole["dcDeliveredKwh"])


async def test_series_steps_read_rollups_of_their_own_hours(
    fleet: httpx.AsyncClient, database_url: str, conn: asyncpg.Connection, settings: Settings
) -> None:
    # Once the hours are rolled up, each step reads the rollups of its own hours: the series
    # runs as one generic plan that calls the window function once per step, and a bound
    # evaluated once for all calls would give every step after the first nothing.
    # The app's own refresher may hold the refresh lock or have rolled the hours before the
    # readings came (then they are dirty hours to redo): refresh until they are rolled.
    pool = await db.create_pool(database_url, settings)
    try:
        await rollups.match_rules(conn, settings)
        for _ in range(100):
            await rollups.refresh(pool, settings, at(180) + settings.rollup_grace)
            rolled = await conn.fetchval(
                "SELECT count(*) FROM vehicle_rollups WHERE vehicle_id = 'V-b'"
                " AND NOT EXISTS (SELECT FROM rollup_dirty)"
            )
            if rolled:
                break
            await asyncio.sleep(0.05)
    finally:
        await pool.close()
    assert rolled == 3  # the hours T0, T0+1h and T0+2h
    start, end = at(-30), at(170)
    for step in ("1h", "1h"):  # the second request runs the plan the pool keeps
        series = await _get(
            fleet,
            "/v1/analytics/performance/V-b/series",
            **{"from": iso(start), "to": iso(end), "step": step},
        )
        points = series["points"]
        assert [p["readings"]["vehicle"] for p in points] == [0, 60, 60, 31]
        for point in points:
            step_from, step_to = (datetime.fromisoformat(point[k]) for k in ("from", "to"))
            want = await reference.stored_body(conn, "V-b", step_from, step_to, settings)
            for key in ("acConsumedKwh", "dcDeliveredKwh", "efficiency", "readings"):
                assert point[key] == want[key], (key, point)


async def test_daily_series_has_one_point_per_utc_day(fleet: httpx.AsyncClient) -> None:
    start = at(0) - timedelta(days=2)
    series = await _get(
        fleet,
        "/v1/analytics/performance/V-b/series",
        **{"from": iso(start), "to": iso(at(180)), "step": "1d"},
    )
    points = series["points"]
    assert points[0]["from"] == iso(start)
    assert all(datetime.fromisoformat(p["to"]).hour == 0 for p in points[:-1])
    assert points[-1]["to"] == iso(at(180))
    assert sum(p["readings"]["vehicle"] for p in points) == 151
    assert sum(p["dcDeliveredKwh"] or 0.0 for p in points) == pytest.approx(150 * 0.80)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"step": "5m"}, "step"),
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-06-01T00:00:00Z"}, "from"),
    ],
    ids=["unknown step", "window over 90 days"],
)
async def test_bad_series_requests_are_422(
    fleet: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    response = await fleet.get("/v1/analytics/performance/V-a/series", params=params)
    assert response.status_code == 422
    assert field in [item["field"] for item in response.json()["errors"]]


async def test_series_of_an_unknown_vehicle_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/analytics/performance/V-nobody/series")
    assert response.status_code == 404


# --- fleet ---------------------------------------------------------------------------------


def _window() -> dict[str, str]:
    return {"from": iso(at(-60)), "to": iso(at(180))}


async def test_fleet_ranks_every_vehicle_with_its_own_report(
    fleet: httpx.AsyncClient, conn: asyncpg.Connection, settings: Settings
) -> None:
    body = await _get(fleet, "/v1/analytics/fleet", **_window())
    ranked = [v["vehicleId"] for v in body["vehicles"]]
    # Efficiency ascending; vehicles without one (no AC) last, by id.
    assert ranked == ["V-c", "V-b", "V-a", "V-d", "V-e", "V-f"]
    start, end = at(-60), at(180)
    expected = {v: await reference.stored_report(conn, v, start, end, settings) for v in ranked}
    for summary in body["vehicles"]:
        found = expected[summary["vehicleId"]]
        assert found is not None
        # The fleet's line and the vehicle's own report, each against the raw history.
        assert summary == found.body(settings)
        report = await _get(fleet, f"/v1/analytics/performance/{summary['vehicleId']}", **_window())
        assert (report.pop("from"), report.pop("to")) == (iso(start), iso(end))
        assert (report.pop("historyFrom"), report.pop("partial")) == (None, False)
        assert report == found.body(settings)
    assert body["totals"] == reference.totals(
        [r for r in expected.values() if r is not None], settings
    )
    assert [v["health"] for v in body["vehicles"]] == [
        "critical",
        "warning",
        "healthy",
        "anomaly",
        "unknown",
        "unknown",
    ]
    # The fixture's own numbers: 150 one-minute steps per metered vehicle. DC counts in full,
    # but loss and efficiency compare AC only with the DC of vehicles that have AC: V-e's
    # 7 kWh must not make the fleet look more efficient.
    ac = sum(150 * ac for _, ac, _ in FLEET.values())
    dc_with_ac = sum(150 * dc for _, _, dc in FLEET.values())
    totals = body["totals"]
    assert totals["vehicles"] == 6
    assert totals["acConsumedKwh"] == pytest.approx(ac)
    assert totals["dcDeliveredKwh"] == pytest.approx(dc_with_ac + V_E_DC)
    assert totals["lossKwh"] == pytest.approx(ac - dc_with_ac)
    assert totals["efficiency"] == pytest.approx(dc_with_ac / ac, abs=1e-4)
    assert totals["efficiency"] != pytest.approx((dc_with_ac + V_E_DC) / ac, abs=1e-4)
    assert totals["health"] == {
        "healthy": 1,
        "warning": 1,
        "critical": 1,
        "anomaly": 1,
        "unknown": 2,
        "insufficient_data": 0,
    }
    assert body["matching"] == 6 and body["nextCursor"] is None


async def test_fleet_filters_by_health_and_sorts_descending(fleet: httpx.AsyncClient) -> None:
    body = await _get(
        fleet,
        "/v1/analytics/fleet",
        **_window(),
        health="critical,warning",
        sort="lossKwh",
        order="desc",
    )
    assert [v["vehicleId"] for v in body["vehicles"]] == ["V-c", "V-b"]
    assert body["matching"] == 2
    assert body["totals"]["vehicles"] == 6  # totals are the fleet's, whatever the filter
    repeated = await _get(
        fleet, "/v1/analytics/fleet", **_window(), health="critical", sort="dcDeliveredKwh"
    )
    assert [v["vehicleId"] for v in repeated["vehicles"]] == ["V-c"]


async def test_fleet_pages_with_a_cursor_that_pins_the_query(fleet: httpx.AsyncClient) -> None:
    seen: list[str] = []
    params: dict[str, str | int] = {
        **_window(),
        "sort": "dcDeliveredKwh",
        "order": "desc",
        "limit": 4,
    }
    while True:
        page = await _get(fleet, "/v1/analytics/fleet", **params)
        seen += [v["vehicleId"] for v in page["vehicles"]]
        assert page["sort"] == "dcDeliveredKwh" and page["order"] == "desc"
        if page["nextCursor"] is None:
            break
        assert len(page["vehicles"]) == 4
        params = {"cursor": page["nextCursor"], "limit": 4}
    assert seen == ["V-d", "V-a", "V-b", "V-c", "V-e", "V-f"]


async def test_fleet_default_window_is_the_last_24_whole_hours(fleet: httpx.AsyncClient) -> None:
    body = await _get(fleet, "/v1/analytics/fleet")
    end = datetime.fromisoformat(body["to"])
    assert (end.minute, end.second, end.microsecond) == (0, 0, 0)
    assert end - datetime.fromisoformat(body["from"]) == timedelta(hours=24)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"health": "sick"}, "health"),
        ({"sort": "speed"}, "sort"),
        ({"order": "up"}, "order"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"limit": "0"}, "limit"),
    ],
    ids=["unknown health", "unknown sort", "unknown order", "forged cursor", "limit 0"],
)
async def test_bad_fleet_requests_are_422(
    client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    response = await client.get("/v1/analytics/fleet", params=params)
    assert response.status_code == 422, response.text
    assert field in [item["field"] for item in response.json()["errors"]]
