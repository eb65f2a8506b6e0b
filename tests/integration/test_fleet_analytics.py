"""The fleet statement: every vehicle's numbers equal its own report, whatever the rollups hold.

Both the fleet-wide statement (time-range scans, shared baselines, assignments that change
inside the window) and the per-vehicle report are checked against a brute-force count of the
readings sent (tests/reference.py), on random streams, windows and refresh points.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from energy_engine import db
from energy_engine.analytics import fleet
from energy_engine.analytics import store as analytics
from energy_engine.analytics.store import queries
from energy_engine.ingest.models import MeterReading, VehicleReading
from energy_engine.ingest.store import write_readings
from energy_engine.rollups import store as rollups
from energy_engine.settings import EnergySemantics, Settings
from tests import reference
from tests.conftest import RulesDatabase

# Each example gets a day of its own, later than the one before: watermarks only move forward.
FIRST_DAY = (datetime.now(UTC) - timedelta(days=300)).replace(
    hour=0, minute=0, second=0, microsecond=0
)
_examples = itertools.count()


arrivals = st.lists(
    st.tuples(
        # minute from the start of the example's day: its first hours, and across the next
        # day (windows and refreshes spanning that whole UTC day meet day rollups); some
        # between whole minutes, off the cuts
        st.one_of(
            st.integers(-70, 300),
            st.integers(1380, 3000),
            st.integers(-70 * 60, 300 * 60).map(lambda second: second / 60),
        ),
        st.one_of(st.floats(0, 5_000, allow_nan=False), st.integers(0, 20).map(float)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(
    streams=st.lists(arrivals, min_size=6, max_size=6),
    switch_minute=st.integers(-30, 330),
    cuts=st.lists(
        st.one_of(st.integers(-60, 400), st.integers(1380, 3100)), min_size=2, max_size=2
    ).map(sorted),
    start_minute=st.one_of(st.integers(-20, 300), st.integers(0, 5).map(lambda h: 60 * h)),
    length=st.one_of(
        st.integers(1, 400), st.integers(1, 6).map(lambda h: 60 * h), st.integers(2800, 3100)
    ),
    semantics=st.sampled_from(EnergySemantics),
    max_power_kw=st.sampled_from([1.0, 500.0]),
    lookback_minutes=st.sampled_from([5, 90, 10_000]),
)
def test_every_vehicle_of_the_fleet_gets_its_own_report(
    rules_database: RulesDatabase,
    streams: list[list[tuple[float, float]]],
    switch_minute: int,
    cuts: list[int],
    start_minute: int,
    length: int,
    semantics: EnergySemantics,
    max_power_kw: float,
    lookback_minutes: int,
) -> None:
    config = Settings(
        _env_file=None,
        energy_semantics=semantics,
        max_power_kw=max_power_kw,
        baseline_lookback=timedelta(minutes=lookback_minutes),
    )
    url = rules_database(config)
    example = next(_examples)
    day = FIRST_DAY + timedelta(days=3 * example)  # the streams span up to three days
    tag = f"{example}"
    vehicles = [f"v{tag}-{i}" for i in range(4)]  # the last one never reports
    meters = [f"m{tag}-{i}" for i in range(4)]
    # Vehicle 0 charges from meter 0 throughout; vehicle 1 from meter 1, then meter 2 from
    # `switch`; vehicle 2 has no meter; vehicle 3 only has an assignment (meter 3).
    switch = day + timedelta(minutes=switch_minute)
    assignments = [
        (vehicles[0], meters[0], day - timedelta(days=30), None),
        (vehicles[1], meters[1], day - timedelta(days=30), switch),
        (vehicles[1], meters[2], switch, None),
        (vehicles[3], meters[3], day - timedelta(days=30), None),
    ]
    meter_streams = dict(zip(meters[:3], streams[:3], strict=True))
    vehicle_streams = dict(zip(vehicles[:3], streams[3:], strict=True))
    start = day + timedelta(minutes=start_minute)
    end = start + timedelta(minutes=length)

    def part(index: int, parts: int) -> tuple[list[MeterReading], list[VehicleReading]]:
        def share(stream: list[tuple[float, float]]) -> list[tuple[float, float]]:
            return stream[index::parts]

        return (
            [
                MeterReading.model_construct(
                    meter_id=meter,
                    timestamp=day + timedelta(minutes=m),
                    kwh_consumed_ac=kwh,
                    voltage=230.0,
                )
                for meter, stream in meter_streams.items()
                for m, kwh in share(stream)
            ],
            [
                VehicleReading.model_construct(
                    vehicle_id=vehicle,
                    timestamp=day + timedelta(minutes=m),
                    soc=50.0,
                    kwh_delivered_dc=kwh,
                    battery_temp=20.0 + m % 7,
                )
                for vehicle, stream in vehicle_streams.items()
                for m, kwh in share(stream)
            ],
        )

    def arrivals(stream: list[tuple[float, float]]) -> list[tuple[float, float]]:
        """The stream's readings in the order `part` writes them."""
        return [point for index in range(3) for point in stream[index::3]]

    def expected(vehicle: str) -> reference.Report | None:
        stream = vehicle_streams.get(vehicle, [])
        assigned = [(m, f, t) for v, m, f, t in assignments if v == vehicle]
        if not stream and not assigned:
            return None
        return reference.report(
            vehicle,
            [(day + timedelta(minutes=m), kwh, 20.0 + m % 7) for m, kwh in arrivals(stream)],
            assigned,
            {
                meter: [(day + timedelta(minutes=m), kwh) for m, kwh in arrivals(stream)]
                for meter, stream in meter_streams.items()
            },
            start,
            end,
            reference.Rules.of(config),
        )

    async def run() -> None:
        pool = await db.create_pool(url, config)
        try:
            async with pool.acquire() as conn:
                await db.ensure_partitions(
                    conn, (day - timedelta(days=1)).date(), (day + timedelta(days=3)).date()
                )
                await rollups.match_rules(conn, config)
                await conn.executemany(
                    "INSERT INTO assignments (vehicle_id, meter_id, valid_from, valid_to)"
                    " VALUES ($1, $2, $3, $4)",
                    assignments,
                )
                # Written in three interleaved parts with refreshes in between, so the window
                # meets rolled hours, dirty hours (late readings) and raw rows.
                for index in range(3):
                    await write_readings(conn, *part(index, 3))
                    if index < len(cuts):
                        await rollups.refresh(pool, config, day + timedelta(minutes=cuts[index]))
                everyone = await fleet.fleet_numbers(pool, start, end, config)
                for vehicle in vehicles:
                    want = expected(vehicle)
                    alone = await analytics.performance(conn, vehicle, start, end, config)
                    if want is None:  # never reported, never assigned: not in the fleet
                        assert alone is None
                        assert vehicle not in everyone
                        continue
                    # The fleet's numbers and the vehicle's own, each against brute force.
                    assert alone is not None
                    _assert_equal(everyone[vehicle], want)
                    _assert_equal(alone, want)
                dirty = await conn.fetchval(
                    "SELECT count(*) FROM rollup_dirty WHERE device_id LIKE $1", f"%{tag}-%"
                )
                days = await conn.fetchval(
                    "SELECT count(*) FROM vehicle_day_rollups WHERE vehicle_id LIKE $1", f"%{tag}-%"
                )
                marks = await rollups.watermarks(conn)
                parts = fleet.plan(
                    start, end, marks["rolled"], marks["marked"], config.baseline_lookback
                )
                event(f"edges from marks: start {parts.marked_start}, end {parts.marked_end}")
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    prepared = await fleet.prepare(conn, start, end, config)
                event(f"on rollups alone: {prepared.statement is fleet.SETTLED}")
                event(f"dirty device-hours: {min(dirty, 1)}+")
                event(f"day rollups: {min(days, 1)}+")
                event(f"readings in window: {min(everyone[vehicles[0]].dc.readings, 1)}+")
        finally:
            await pool.close()

    asyncio.run(run())


def _assert_equal(got: analytics.Performance, want: reference.Report) -> None:
    """A vehicle's window as the engine counts it equals the brute-force count."""
    assert (got.dc.readings, got.dc.skipped) == (want.dc.readings, want.dc.skipped)
    assert got.dc.kwh == pytest.approx(want.dc.kwh, rel=1e-9, abs=1e-9)
    temps = want.dc.temps
    if temps:
        assert got.dc.avg_battery_temp == pytest.approx(sum(temps) / len(temps))
    else:
        assert got.dc.avg_battery_temp is None
    assert got.meter_ids == [meter for meter, _ in want.meters]
    assert (got.meter_readings, got.meter_skipped) == (
        want.meter_readings,
        sum(w.skipped for _, w in want.meters),
    )
    assert got.meter_kwh == pytest.approx(sum(w.kwh for _, w in want.meters), rel=1e-9, abs=1e-9)


LATE_DAY = FIRST_DAY - timedelta(days=5)  # clear of the property test's days


async def test_a_late_reading_becomes_the_next_rolled_hours_predecessor(
    conn: db.Connection, database_url: str, settings: Settings
) -> None:
    """A rollup stores the reading before its hour. A late reading in an earlier hour takes
    that place: the fleet statement must not use the stale one before the refresher repairs
    it, and the refresher must repair it."""

    def at(hours: int, minutes: int) -> datetime:
        return LATE_DAY + timedelta(hours=hours, minutes=minutes)

    def readings(
        points: list[tuple[datetime, float]],
    ) -> tuple[list[MeterReading], list[VehicleReading]]:
        meters = [
            MeterReading.model_construct(
                meter_id="M-late", timestamp=t, kwh_consumed_ac=kwh * 1.2, voltage=230.0
            )
            for t, kwh in points
        ]
        vehicles = [
            VehicleReading.model_construct(
                vehicle_id="V-late", timestamp=t, soc=50.0, kwh_delivered_dc=kwh, battery_temp=20.0
            )
            for t, kwh in points
        ]
        return meters, vehicles

    pool = await db.create_pool(database_url, settings)
    try:
        await db.ensure_partitions(conn, LATE_DAY.date(), LATE_DAY.date())
        await rollups.match_rules(conn, settings)
        await conn.execute(
            "INSERT INTO assignments (vehicle_id, meter_id, valid_from) VALUES ($1, $2, $3)",
            "V-late",
            "M-late",
            LATE_DAY - timedelta(days=1),
        )
        await write_readings(
            conn, *readings([(at(0, 10), 10.0), (at(1, 10), 20.0), (at(2, 10), 30.0)])
        )
        await rollups.refresh(pool, settings, at(3, 5))
        # Late, and above the next hour's first reading: the counter looks reset at 1:10.
        await write_readings(conn, *readings([(at(0, 50), 25.0)]))
        start, end = at(0, 0), at(3, 0)

        async def both() -> tuple[analytics.Performance, analytics.Performance]:
            everyone = await fleet.fleet_numbers(pool, start, end, settings)
            alone = await analytics.performance(conn, "V-late", start, end, settings)
            assert alone is not None
            return everyone["V-late"], alone

        got, alone = await both()
        # 10 → 25: 15; 25 → 20 is a reset: 20; 20 → 30: 10. The stale predecessor gives 35.
        assert alone.dc.kwh == pytest.approx(45.0)
        assert got.dc.kwh == pytest.approx(45.0)
        assert got.meter_kwh == pytest.approx(alone.meter_kwh) == pytest.approx(54.0)

        await rollups.refresh(pool, settings, at(3, 10))
        prev = await conn.fetchrow(
            "SELECT prev_at, prev_kwh FROM vehicle_rollups WHERE vehicle_id = $1 AND hour = $2",
            "V-late",
            at(1, 0),
        )
        assert prev is not None and tuple(prev) == (at(0, 50), 25.0)
        got, alone = await both()
        assert got.dc.kwh == pytest.approx(alone.dc.kwh) == pytest.approx(45.0)
    finally:
        await pool.close()


SPAN_DAY = FIRST_DAY - timedelta(days=10)  # clear of the other tests' days


async def test_the_last_24_whole_hours_read_span_rollups_and_a_late_reading_redoes_them(
    conn: db.Connection, database_url: str, settings: Settings
) -> None:
    """A window of the last 24 whole hours reads one span rollup a device instead of 24 hour
    rollups, with the same numbers; a late reading in one of its hours is counted before the
    refresher redoes the span (the device reads its hour rollups meanwhile) and after."""
    points = [SPAN_DAY + timedelta(minutes=m) for m in range(0, 30 * 60, 7)]
    pool = await db.create_pool(database_url, settings)
    try:
        await db.ensure_partitions(conn, SPAN_DAY.date(), (SPAN_DAY + timedelta(days=2)).date())
        await rollups.match_rules(conn, settings)
        await conn.execute(
            "INSERT INTO assignments (vehicle_id, meter_id, valid_from) VALUES ($1, $2, $3)",
            "V-span",
            "M-span",
            SPAN_DAY - timedelta(days=1),
        )
        await write_readings(
            conn,
            [
                MeterReading.model_construct(
                    meter_id="M-span", timestamp=t, kwh_consumed_ac=0.2 * i, voltage=230.0
                )
                for i, t in enumerate(points)
            ],
            [
                VehicleReading.model_construct(
                    vehicle_id="V-span",
                    timestamp=t,
                    soc=50.0,
                    kwh_delivered_dc=0.17 * i,
                    battery_temp=20.0 + i % 5,
                )
                for i, t in enumerate(points)
            ],
        )
        rolled_to = SPAN_DAY + timedelta(hours=30)
        await rollups.refresh(pool, settings, rolled_to + timedelta(minutes=5))
        # The spans of the last day of start hours are kept, the newest ending where rolled.
        starts = [r[0] for r in await conn.fetch("SELECT span_from FROM rollup_span_starts")]
        assert sorted(starts) == [rolled_to - timedelta(hours=h) for h in range(47, 23, -1)]
        start = rolled_to - timedelta(hours=24)
        end = rolled_to

        async def check() -> analytics.Performance:
            everyone = await fleet.fleet_numbers(pool, start, end, settings)
            alone = await analytics.performance(conn, "V-span", start, end, settings)
            assert alone is not None
            got = everyone["V-span"]
            assert (got.dc.readings, got.meter_readings) == (
                alone.dc.readings,
                alone.meter_readings,
            )
            assert got.dc.kwh == pytest.approx(alone.dc.kwh, rel=1e-12)
            assert got.meter_kwh == pytest.approx(alone.meter_kwh, rel=1e-12)
            assert got.dc.avg_battery_temp == pytest.approx(alone.dc.avg_battery_temp)
            return got

        inside = [t for t in points if start <= t < end]
        got = await check()
        assert got.dc.readings == len(inside)
        # Every reading's step is 0.17 kWh, the first one's too (its predecessor is older).
        assert got.dc.kwh == pytest.approx(0.17 * len(inside))
        span = await conn.fetchrow(
            "SELECT readings, added_kwh FROM vehicle_span_rollups"
            " WHERE vehicle_id = $1 AND span_from = $2",
            "V-span",
            start,
        )
        assert span is not None and span["readings"] == len(inside)
        # The fleet reads that span: a count changed in it shows in the fleet's answer.
        tamper = (
            "UPDATE vehicle_span_rollups SET readings = readings + $3"
            " WHERE vehicle_id = $1 AND span_from = $2"
        )
        await conn.execute(tamper, "V-span", start, 1000)
        tampered = await fleet.fleet_numbers(pool, start, end, settings)
        assert tampered["V-span"].dc.readings == len(inside) + 1000
        await conn.execute(tamper, "V-span", start, -1000)

        # A late reading between two of the window's readings: a counter reset in between.
        late = start + timedelta(hours=5, seconds=30)
        await write_readings(
            conn,
            [],
            [
                VehicleReading.model_construct(
                    vehicle_id="V-span",
                    timestamp=late,
                    soc=50.0,
                    kwh_delivered_dc=0.01,
                    battery_temp=90.0,
                )
            ],
        )
        assert (await check()).dc.readings == len(inside) + 1
        await rollups.refresh(pool, settings, rolled_to + timedelta(minutes=10))
        assert await conn.fetchval("SELECT count(*) FROM rollup_dirty") == 0
        redone = await conn.fetchval(
            "SELECT readings FROM vehicle_span_rollups WHERE vehicle_id = $1 AND span_from = $2",
            "V-span",
            start,
        )
        assert redone == len(inside) + 1
        assert (await check()).dc.readings == len(inside) + 1
    finally:
        await pool.close()


MARK_DAY = FIRST_DAY - timedelta(days=15)  # clear of the other tests' days


async def test_a_day_from_half_past_reads_its_edges_from_marks_and_late_readings_in_them(
    conn: db.Connection, database_url: str, settings: Settings
) -> None:
    """A window from half past to half past takes its partial hours from the marks in their
    rollups (not raw rows), with the numbers of the per-vehicle report; a late reading in
    either edge hour is counted before the refresher redoes that hour and after."""
    points = [MARK_DAY + timedelta(seconds=s) for s in range(20, 7 * 3600, 130)]
    start, end = MARK_DAY + timedelta(hours=1, minutes=30), MARK_DAY + timedelta(hours=5.5)
    pool = await db.create_pool(database_url, settings)
    try:
        await db.ensure_partitions(conn, MARK_DAY.date(), MARK_DAY.date())
        await rollups.match_rules(conn, settings)
        await conn.execute(
            "INSERT INTO assignments (vehicle_id, meter_id, valid_from) VALUES ($1, $2, $3)",
            "V-mark",
            "M-mark",
            MARK_DAY - timedelta(days=1),
        )

        async def send(times: list[datetime], kwh: list[float]) -> None:
            await write_readings(
                conn,
                [
                    MeterReading.model_construct(
                        meter_id="M-mark", timestamp=t, kwh_consumed_ac=k * 1.2, voltage=230.0
                    )
                    for t, k in zip(times, kwh, strict=True)
                ],
                [
                    VehicleReading.model_construct(
                        vehicle_id="V-mark",
                        timestamp=t,
                        soc=50.0,
                        kwh_delivered_dc=k,
                        battery_temp=20.0 + t.second % 9,
                    )
                    for t, k in zip(times, kwh, strict=True)
                ],
            )

        # A counter rising 0.1 kWh a reading, reset once inside the first edge hour.
        await send(points, [0.1 * i if i < 40 else 0.1 * (i - 40) for i in range(len(points))])
        await rollups.refresh(pool, settings, MARK_DAY + timedelta(hours=7, minutes=5))
        marks = await rollups.watermarks(conn)
        parts = fleet.plan(start, end, marks["rolled"], marks["marked"], settings.baseline_lookback)
        assert (parts.marked_start, parts.marked_end) == (True, True)

        async def check(statement: str) -> analytics.Performance:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                assert (await fleet.prepare(conn, start, end, settings)).statement == statement
            everyone = await fleet.fleet_numbers(pool, start, end, settings)
            alone = await analytics.performance(conn, "V-mark", start, end, settings)
            assert alone is not None
            got = everyone["V-mark"]
            assert (got.dc.readings, got.dc.skipped, got.meter_readings) == (
                alone.dc.readings,
                alone.dc.skipped,
                alone.meter_readings,
            )
            assert got.dc.kwh == pytest.approx(alone.dc.kwh, rel=1e-9)
            assert got.meter_kwh == pytest.approx(alone.meter_kwh, rel=1e-9)
            assert got.dc.avg_battery_temp == pytest.approx(alone.dc.avg_battery_temp)
            return got

        got = await check(fleet.SETTLED)  # no raw piece, no dirty hour
        assert got.dc.readings == len([t for t in points if start <= t < end])
        # Late readings in the last edge hour, then in the first, each side of the cut and
        # one exactly on it: each counted before the refresher redoes the hour.
        await send([end - timedelta(seconds=1), end], [500.0, 501.0])
        assert await conn.fetchval("SELECT count(*) FROM rollup_dirty") == 2
        after = await check(queries.fleet)
        assert after.dc.readings == got.dc.readings + 1
        late = [start - timedelta(minutes=7), start, start + timedelta(seconds=1)]
        await send(late, [3.95, 3.97, 3.98])
        assert await conn.fetchval("SELECT count(*) FROM rollup_dirty") == 4
        after = await check(queries.fleet)
        assert after.dc.readings == got.dc.readings + 3
        await rollups.refresh(pool, settings, MARK_DAY + timedelta(hours=7, minutes=10))
        assert await conn.fetchval("SELECT count(*) FROM rollup_dirty") == 0
        redone = await check(fleet.SETTLED)
        assert redone.dc.readings == after.dc.readings
        assert redone.dc.kwh == pytest.approx(after.dc.kwh, rel=1e-12)
        # Rollups from before the marks existed (an upgraded database): the edges are raw.
        await conn.execute(
            "UPDATE rollup_watermarks SET at = $1 WHERE name = 'marked'", end + timedelta(hours=1)
        )
        unmarked = await check(queries.fleet)
        assert unmarked.dc.readings == after.dc.readings
        assert unmarked.dc.kwh == pytest.approx(after.dc.kwh, rel=1e-12)
    finally:
        await pool.close()
