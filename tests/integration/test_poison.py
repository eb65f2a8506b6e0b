"""A poison reading already in history (1e308, huge negatives, NaN, ±Infinity: written before
the edge bounds existed, or by `energy-engine import`) costs its own device's numbers at most:
the refresher keeps every other device's rollups current and correct, and every aggregate
(report, series, fleet ranking, fleet status) answers 200 for everyone.

Other devices' numbers are checked against `energy_engine.energy` on the readings the test
wrote (independent ground truth), not against a second run of the same SQL.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from energy_engine import db
from energy_engine.energy import Reading, window_energy
from energy_engine.ingest.models import MeterReading, VehicleReading
from energy_engine.ingest.store import write_readings
from energy_engine.rollups import store as rollups
from energy_engine.settings import Settings
from tests.conftest import ClientWith
from tests.readings import iso

GOOD = ("V-1", "V-2", "V-3")
POISON = [1e308, -1e308, math.nan, math.inf, -math.inf, 1.7e308, -1.7e308]
HOUR = timedelta(hours=1)
# Every hour of the test lies before the one the refresher may seal now.
END = (datetime.now(UTC) - timedelta(minutes=5)).replace(minute=0, second=0, microsecond=0)
START = END - 4 * HOUR


def _kwh(vehicle: int, minute: int) -> float:
    # A register growing at up to 30 kW, with a counter reset in the middle of the second hour.
    value = 100.0 * vehicle + minute * (0.1 + 0.4 * vehicle / 3)
    return value - 50.0 if minute >= 90 else value


def _history() -> dict[str, list[Reading]]:
    """Every good device's readings, every 5 minutes over the 4 hours (the meters' AC is the
    DC scaled by 1.2)."""
    history: dict[str, list[Reading]] = {}
    for number, vehicle in enumerate(GOOD, start=1):
        points = [Reading(START + timedelta(minutes=m), _kwh(number, m)) for m in range(0, 240, 5)]
        history[vehicle] = points
        history["M" + vehicle[1:]] = [Reading(r.at, r.kwh * 1.2) for r in points]
    return history


async def _write(conn: asyncpg.Connection, device: str, points: list[Reading]) -> None:
    if device.startswith("M"):
        meters = [
            MeterReading.model_construct(
                meter_id=device, timestamp=r.at, kwh_consumed_ac=r.kwh, voltage=230.0
            )
            for r in points
        ]
        await write_readings(conn, meters, [])
    else:
        vehicles = [
            VehicleReading.model_construct(
                vehicle_id=device,
                timestamp=r.at,
                soc=50.0,
                kwh_delivered_dc=r.kwh,
                battery_temp=20.0,
            )
            for r in points
        ]
        await write_readings(conn, [], vehicles)


@pytest.fixture
async def poisoned(conn: asyncpg.Connection) -> AsyncIterator[dict[str, list[Reading]]]:
    """The good devices' history, and the bad vehicle's and meter's with poison in it: through
    the store (history and hot rows, as an import or the API before its bounds wrote them) and
    with plain SQL."""
    history = _history()
    for device, points in history.items():
        await _write(conn, device, points)
    bad = [Reading(START + timedelta(minutes=m), 5.0 + m / 100) for m in range(0, 240, 5)]
    for index, value in enumerate(POISON):  # one poison value every 25 minutes, in every hour
        bad[1 + 5 * index] = Reading(bad[1 + 5 * index].at, value)
    await _write(conn, "V-bad", bad)
    await _write(conn, "M-bad", bad)
    await conn.execute(
        "INSERT INTO vehicle_readings (vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp)"
        " VALUES ('V-bad', $1, 'NaN', 'Infinity', '-Infinity')",
        START + timedelta(minutes=2),
    )
    # The hot rows as a poison reading left them: the latest reading absurd.
    await _write(conn, "V-bad", [Reading(END - timedelta(minutes=1), 1e308)])
    await _write(conn, "M-bad", [Reading(END - timedelta(minutes=1), -1e308)])
    # A hot row with NaN and infinite values, online (it counts in the fleet's averages).
    await _write(conn, "V-nan", [Reading(END - timedelta(minutes=1), 1.0)])
    await conn.execute(
        "UPDATE vehicle_state SET read_at = now(), kwh_delivered_dc = 'NaN', soc = 'Infinity',"
        " battery_temp = 'NaN', prev_read_at = now() - interval '1 minute',"
        " prev_kwh_delivered_dc = '-Infinity' WHERE vehicle_id = 'V-nan'"
    )
    for number, vehicle in enumerate((*GOOD, "V-bad"), start=1):
        meter = "M" + vehicle[1:]
        await conn.execute(
            "INSERT INTO assignments (vehicle_id, meter_id, valid_from) VALUES ($1, $2, $3)",
            vehicle,
            meter,
            START - timedelta(days=number),
        )
    yield history


def _truth(
    points: list[Reading], start: datetime, end: datetime, settings: Settings
) -> tuple[float, int, int]:
    found = window_energy(
        points,
        start,
        end,
        semantics=settings.energy_semantics,
        max_power_kw=settings.max_power_kw,
        baseline_lookback=settings.baseline_lookback,
    )
    return found.kwh, found.readings, found.skipped


async def test_the_refresher_rolls_every_other_device_up(
    poisoned: dict[str, list[Reading]],
    conn: asyncpg.Connection,
    settings: Settings,
    database_url: str,
) -> None:
    pool = await db.create_pool(database_url, settings)
    try:
        await rollups.refresh(pool, settings, datetime.now(UTC))
    finally:
        await pool.close()
    marks = await rollups.watermarks(conn)
    assert marks["rolled"] is not None and marks["rolled"] >= END
    for device, points in poisoned.items():
        stream, column = (
            ("meter", "meter_id") if device.startswith("M") else ("vehicle", "vehicle_id")
        )
        rows = await conn.fetch(
            f"SELECT hour, readings, added_kwh, skipped FROM {stream}_rollups"
            f" WHERE {column} = $1 ORDER BY hour",
            device,
        )
        assert [r["hour"] for r in rows] == [START + i * HOUR for i in range(4)], device
        for row in rows:
            # Within an hour only: the increment into its first reading is not the hour's.
            inside = [p for p in points if row["hour"] <= p.at < row["hour"] + HOUR]
            kwh, readings, skipped = _truth(inside, row["hour"], row["hour"] + HOUR, settings)
            assert row["readings"] == readings
            assert row["added_kwh"] == pytest.approx(kwh, rel=1e-9)
            assert row["skipped"] == skipped
    # No device-hour of the poisoned devices stops the others, and none needed quarantine:
    # the arithmetic itself survives the poison.
    assert (
        await conn.fetchval("SELECT count(*) FROM vehicle_rollups WHERE vehicle_id = 'V-bad'") == 4
    )
    assert await conn.fetchval("SELECT count(*) FROM rollup_quarantine") == 0


async def _reports(
    client: httpx.AsyncClient, start: datetime, end: datetime
) -> dict[str, dict[str, Any]]:
    window = {"from": iso(start), "to": iso(end)}
    reports = {}
    for vehicle in (*GOOD, "V-bad"):
        report = await client.get(f"/v1/analytics/performance/{vehicle}", params=window)
        assert report.status_code == 200, report.text
        reports[vehicle] = report.json()
        for step in ("1h", "1d"):
            series = await client.get(
                f"/v1/analytics/performance/{vehicle}/series", params={**window, "step": step}
            )
            assert series.status_code == 200, series.text
        status = await client.get(f"/v1/vehicles/{vehicle}/status")
        assert status.status_code == 200, status.text
    fleet = await client.get("/v1/analytics/fleet", params={**window, "limit": 10})
    assert fleet.status_code == 200, fleet.text
    ranked = {v["vehicleId"]: v for v in fleet.json()["vehicles"]}
    assert set(ranked) == {*GOOD, "V-bad", "V-nan"}
    for vehicle in GOOD:
        assert ranked[vehicle] == {
            k: v
            for k, v in reports[vehicle].items()
            if k not in ("from", "to", "historyFrom", "partial")
        }
    fleet_status = await client.get("/v1/fleet/status")
    assert fleet_status.status_code == 200, fleet_status.text
    assert fleet_status.json()["vehiclesOnline"] == 1  # V-nan
    for path in ("/v1/meters/M-bad/status", "/v1/vehicles/V-nan/status"):
        response = await client.get(path)
        assert response.status_code == 200, response.text
    return reports


async def test_every_aggregate_answers_and_others_are_unchanged(
    poisoned: dict[str, list[Reading]],
    client: httpx.AsyncClient,
    settings: Settings,
    database_url: str,
) -> None:
    # Before and after the refresher has rolled the poisoned history up (the app's own
    # refresher runs at start-up as well: every answer is exact whatever the rollups' state).
    for _ in range(2):
        await _check_every_aggregate(poisoned, client, settings)
        pool = await db.create_pool(database_url, settings)
        try:
            await rollups.refresh(pool, settings, datetime.now(UTC))
        finally:
            await pool.close()
    ready = (await client.get("/health/ready")).json()
    assert ready == {"status": "ok", "rollupQuarantinedHours": 0}


async def _check_every_aggregate(
    poisoned: dict[str, list[Reading]], client: httpx.AsyncClient, settings: Settings
) -> None:
    # Whole hours (rollups once rolled), and a window cutting hours (raw edges).
    for start, end in ((START, END), (START + timedelta(minutes=17), END - timedelta(minutes=23))):
        reports = await _reports(client, start, end)
        for vehicle in GOOD:
            dc, readings, skipped = _truth(poisoned[vehicle], start, end, settings)
            ac, meter_readings, meter_skipped = _truth(
                poisoned["M" + vehicle[1:]], start, end, settings
            )
            report = reports[vehicle]
            assert report["dcDeliveredKwh"] == pytest.approx(round(dc, 6), abs=1e-6)
            assert report["acConsumedKwh"] == pytest.approx(round(ac, 6), abs=1e-6)
            assert report["readings"] == {"vehicle": readings, "meter": meter_readings}
            assert report["skippedIntervals"] == {"vehicle": skipped, "meter": meter_skipped}
        # The poisoned vehicle's own numbers stay finite: absurd steps are skipped.
        bad = reports["V-bad"]
        assert math.isfinite(bad["dcDeliveredKwh"]) and abs(bad["dcDeliveredKwh"]) < 1e6
        assert bad["skippedIntervals"]["vehicle"] >= 1


async def test_a_device_hour_that_fails_to_aggregate_is_quarantined_alone(
    conn: asyncpg.Connection,
    client_with: ClientWith,
    settings: Settings,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever makes aggregation fail (here a trigger injecting an error for one device-hour),
    the refresher narrows it down to that device-hour: every other rollup, the bad device's
    other hours included, stays current; the hour is read raw and counted in readiness."""
    history = _history()
    stuck = [Reading(r.at, r.kwh + 7.0) for r in history["V-1"]]
    history["V-stuck"] = stuck
    for device, points in history.items():
        await _write(conn, device, points)
    broken = START + HOUR
    await conn.execute(
        f"""
        CREATE FUNCTION fail_one_hour() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.vehicle_id = 'V-stuck' AND NEW.hour = '{broken.isoformat()}' THEN
                RAISE EXCEPTION 'injected failure' USING ERRCODE = 'data_exception';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER fail_one_hour BEFORE INSERT OR UPDATE ON vehicle_rollups
            FOR EACH ROW EXECUTE FUNCTION fail_one_hour();
        """
    )
    pool = await db.create_pool(database_url, settings)
    try:
        with caplog.at_level(logging.WARNING, logger="energy_engine.rollups.store"):
            await rollups.refresh(pool, settings, datetime.now(UTC))
            await rollups.refresh(pool, settings, datetime.now(UTC))  # not tried again
        records = [r for r in caplog.records if r.name == "energy_engine.rollups.store"]
        assert [r.exc_info for r in records] == [None, None]  # rolled apart; quarantined
        assert "V-stuck" in records[-1].getMessage()

        quarantine = await conn.fetch("SELECT stream, device_id, hour FROM rollup_quarantine")
        assert [tuple(q) for q in quarantine] == [("vehicle", "V-stuck", broken)]
        hours = await conn.fetch(
            "SELECT vehicle_id, hour FROM vehicle_rollups WHERE hour >= $1 AND hour < $2",
            START,
            END,
        )
        assert sorted(tuple(h) for h in hours) == sorted(
            (vehicle, START + i * HOUR)
            for vehicle in (*GOOD, "V-stuck")
            for i in range(4)
            if (vehicle, START + i * HOUR) != ("V-stuck", broken)
        )
        async with client_with() as client:  # after the refreshes: its refresher races none
            assert (await client.get("/health/ready")).json()["rollupQuarantinedHours"] == 1
            window = {"from": iso(START), "to": iso(END)}
            for vehicle in (*GOOD, "V-stuck"):
                report = await client.get(f"/v1/analytics/performance/{vehicle}", params=window)
                dc, readings, _ = _truth(history[vehicle], START, END, settings)
                assert report.json()["dcDeliveredKwh"] == pytest.approx(round(dc, 6), abs=1e-6)
                assert report.json()["readings"]["vehicle"] == readings

        # Fixed, and the hour changed by a new reading: rolled up, out of quarantine.
        await conn.execute("DROP TRIGGER fail_one_hour ON vehicle_rollups")
        await _write(conn, "V-stuck", [Reading(broken + timedelta(minutes=2), stuck[12].kwh)])
        await rollups.refresh(pool, settings, datetime.now(UTC))
        assert await conn.fetchval("SELECT count(*) FROM rollup_quarantine") == 0
        assert (
            await conn.fetchval(
                "SELECT readings FROM vehicle_rollups WHERE vehicle_id = 'V-stuck' AND hour = $1",
                broken,
            )
            == 13
        )
    finally:
        await pool.close()
