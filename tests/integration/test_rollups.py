"""Hourly rollups: every answer equals the raw-history answer, whatever state they are in."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from energy_engine import db
from energy_engine.ingest.models import MeterReading, VehicleReading
from energy_engine.ingest.store import write_readings
from energy_engine.rollups import store as rollups
from energy_engine.settings import EnergySemantics, Settings
from tests import reference
from tests import window_sql as windows
from tests.conftest import RulesDatabase
from tests.reference_sql import RAW_METER_WINDOWS, RAW_VEHICLE_WINDOW

# Each example gets a day of its own, later than the one before: watermarks only move forward.
FIRST_DAY = (datetime.now(UTC) - timedelta(days=400)).replace(
    hour=0, minute=0, second=0, microsecond=0
)
_examples = itertools.count()


def _readings(
    device: str, day: datetime, arrivals: list[tuple[int, float]]
) -> tuple[list[MeterReading], list[VehicleReading]]:
    meters = [
        MeterReading.model_construct(
            meter_id=f"m-{device}",
            timestamp=day + timedelta(minutes=m),
            kwh_consumed_ac=kwh,
            voltage=230.0,
        )
        for m, kwh in arrivals
    ]
    vehicles = [
        VehicleReading.model_construct(
            vehicle_id=f"v-{device}",
            timestamp=day + timedelta(minutes=m),
            soc=50.0,
            kwh_delivered_dc=kwh,
            battery_temp=20.0 + m % 7,
        )
        for m, kwh in arrivals
    ]
    return meters, vehicles


async def _answers(
    conn: db.Connection, device: str, start: datetime, end: datetime, config: Settings
) -> tuple[tuple[int, float, int, float | None], tuple[int, float, int, float | None]]:
    """(readings, kWh, skipped, avg temperature) from the rollup path and from raw history."""
    vehicle = f"v-{device}"
    dc = await windows.vehicle_window(conn, vehicle, start, end, config)
    ac = await windows.meter_windows(conn, vehicle, start, end, config)
    assert len(ac) == 1
    args = (
        vehicle,
        start,
        end,
        config.baseline_lookback,
        config.max_power_kw,
        config.energy_semantics is EnergySemantics.INTERVAL,
    )
    raw_dc = await conn.fetchrow(RAW_VEHICLE_WINDOW, *args)
    raw_ac = await conn.fetch(RAW_METER_WINDOWS, *args)
    assert raw_dc is not None and len(raw_ac) == 1
    assert (ac[0].readings, ac[0].skipped) == (raw_ac[0]["readings"], raw_ac[0]["skipped"])
    assert ac[0].kwh == pytest.approx(raw_ac[0]["kwh"], rel=1e-9, abs=1e-9)
    return (
        (dc.readings, dc.kwh, dc.skipped, dc.avg_battery_temp),
        (raw_dc["readings"], raw_dc["kwh"], raw_dc["skipped"], raw_dc["avg_battery_temp"]),
    )


# Readings in the example's first hours and across the next day: windows and refreshes that
# span the whole next UTC day meet day rollups.
MINUTES = st.one_of(st.integers(0, 300), st.integers(1380, 3000))

streams = st.lists(
    st.tuples(
        MINUTES,  # minute from the start of the example's day
        st.one_of(st.floats(0, 5_000, allow_nan=False), st.integers(0, 20).map(float)),
    ),
    max_size=60,
)


@settings(max_examples=100, deadline=None)
@given(
    arrivals=streams,
    cuts=st.lists(
        st.one_of(st.integers(0, 360), st.integers(1380, 3100)), min_size=2, max_size=2
    ).map(sorted),
    start_minute=st.one_of(st.integers(-20, 300), st.just(0), st.just(1440)),
    length=st.one_of(st.integers(1, 400), st.integers(2800, 3100), st.just(1440)),
    semantics=st.sampled_from(EnergySemantics),
    max_power_kw=st.sampled_from([1.0, 500.0]),
    lookback_minutes=st.sampled_from([5, 10_000]),
    settle=st.booleans(),
)
def test_rollup_answers_equal_raw_history_and_brute_force(
    rules_database: RulesDatabase,
    arrivals: list[tuple[int, float]],
    cuts: list[int],
    start_minute: int,
    length: int,
    semantics: EnergySemantics,
    max_power_kw: float,
    lookback_minutes: int,
    settle: bool,
) -> None:
    config = Settings(
        _env_file=None,
        energy_semantics=semantics,
        max_power_kw=max_power_kw,
        baseline_lookback=timedelta(minutes=lookback_minutes),
    )
    url = rules_database(config)
    example = next(_examples)
    day = FIRST_DAY + timedelta(days=3 * example)  # a stream spans up to three days
    device = str(example)
    start = day + timedelta(minutes=start_minute)
    end = start + timedelta(minutes=length)

    async def run() -> None:
        pool = await db.create_pool(url, config)
        try:
            async with pool.acquire() as conn:
                await rollups.match_rules(conn, config)
                await conn.execute(
                    "INSERT INTO assignments (vehicle_id, meter_id, valid_from)"
                    " VALUES ($1, $2, $3)",
                    f"v-{device}",
                    f"m-{device}",
                    day - timedelta(days=1),
                )
                # Random arrival order in three parts; the rollups are refreshed between them,
                # so the window meets rolled hours, dirty hours (late readings) and raw rows.
                third = -(-len(arrivals) // 3) or 1
                parts = [arrivals[i : i + third] for i in range(0, len(arrivals), third)]
                for index, part in enumerate(parts):
                    meters, vehicles = _readings(device, day, part)
                    await write_readings(conn, meters, vehicles)
                    if index < len(cuts):
                        refresh_at = day + timedelta(minutes=cuts[index])
                        await rollups.refresh(pool, config, refresh_at)
                if settle:  # the late readings' hours redone, their days rewritten
                    await rollups.refresh(pool, config, day + timedelta(minutes=cuts[-1]))
                got, raw = await _answers(conn, device, start, end, config)
                rolled_hours = await conn.fetchval(
                    "SELECT count(*) FROM vehicle_rollups WHERE vehicle_id = $1", f"v-{device}"
                )
                dirty_hours = await conn.fetchval(
                    "SELECT count(*) FROM rollup_dirty WHERE device_id = $1", f"v-{device}"
                )
                rolled_days = await conn.fetchval(
                    "SELECT count(*) FROM vehicle_day_rollups WHERE vehicle_id = $1", f"v-{device}"
                )
                event(f"rolled hours: {min(rolled_hours, 3)}+, dirty hours: {min(dirty_hours, 1)}+")
                event(f"rolled days: {min(rolled_days, 1)}+")
        finally:
            await pool.close()
        assert got[0] == raw[0] and got[2] == raw[2]
        assert got[1] == pytest.approx(raw[1], rel=1e-9, abs=1e-9)
        assert got[3] == (None if raw[3] is None else pytest.approx(raw[3], rel=1e-9))
        sent = [(day + timedelta(minutes=m), kwh) for m, kwh in arrivals]
        want = reference.window(sent, start, end, reference.Rules.of(config))
        assert (got[0], got[2]) == (want.readings, want.skipped)
        assert got[1] == pytest.approx(want.kwh, rel=1e-9, abs=1e-9)

    asyncio.run(run())


HOUR = FIRST_DAY - timedelta(days=3)  # clear of the property test's days


async def _meter_rollup(conn: asyncpg.Connection, meter: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT readings, first_kwh, last_kwh, added_kwh FROM meter_rollups"
        " WHERE meter_id = $1 AND hour = $2",
        meter,
        HOUR,
    )


async def test_late_reading_for_a_rolled_hour_corrects_that_hour(
    conn: asyncpg.Connection, database_url: str, settings: Settings
) -> None:
    pool = await db.create_pool(database_url, settings)
    try:
        await rollups.match_rules(conn, settings)
        on_time = [
            MeterReading.model_construct(
                meter_id="M-late",
                timestamp=HOUR + timedelta(minutes=m),
                kwh_consumed_ac=k,
                voltage=230.0,
            )
            for m, k in ((0, 100.0), (20, 110.0), (40, 130.0))
        ]
        await write_readings(conn, on_time, [])
        await rollups.refresh(pool, settings, HOUR + timedelta(hours=2))
        rolled = await _meter_rollup(conn, "M-late")
        assert rolled is not None
        assert tuple(rolled) == (3, 100.0, 130.0, 30.0)

        late = MeterReading.model_construct(
            meter_id="M-late",
            timestamp=HOUR + timedelta(minutes=50),
            kwh_consumed_ac=131.5,
            voltage=231.0,
        )
        await write_readings(conn, [late], [])
        dirty = await conn.fetch("SELECT stream, device_id, hour FROM rollup_dirty")
        assert [tuple(d) for d in dirty] == [("meter", "M-late", HOUR)]
        # Until the refresher redoes the hour, the answer comes from raw rows: already exact.
        energy = await conn.fetchrow(
            "SELECT * FROM stream_window_energy('meter', $1, $2, $3, '1 day', 500, false, $2, $3)",
            "M-late",
            HOUR,
            HOUR + timedelta(hours=1),
        )
        assert energy is not None and (energy["readings"], energy["kwh"]) == (4, 31.5)

        await rollups.refresh(pool, settings, HOUR + timedelta(hours=3))
        assert tuple(await _meter_rollup(conn, "M-late") or ()) == (4, 100.0, 131.5, 31.5)
        assert await conn.fetchval("SELECT count(*) FROM rollup_dirty") == 0
    finally:
        await pool.close()


async def test_changed_energy_rules_drop_the_rollups(
    conn: asyncpg.Connection, database_url: str
) -> None:
    cumulative = Settings(_env_file=None, database_url=database_url)
    interval = cumulative.model_copy(update={"energy_semantics": EnergySemantics.INTERVAL})
    pool = await db.create_pool(database_url, cumulative)
    try:
        assert not await rollups.match_rules(conn, cumulative)  # first time: nothing to drop
        reading = MeterReading.model_construct(
            meter_id="M-rules", timestamp=HOUR, kwh_consumed_ac=1.0, voltage=230.0
        )
        await write_readings(conn, [reading], [])
        await rollups.refresh(pool, cumulative, HOUR + timedelta(hours=2))
        assert await conn.fetchval("SELECT count(*) FROM meter_rollups") == 1
        assert not await rollups.match_rules(conn, cumulative)
        assert await rollups.match_rules(conn, interval)
        assert await conn.fetchval("SELECT count(*) FROM meter_rollups") == 0
        rolled = "SELECT isfinite(at) FROM rollup_watermarks WHERE name = 'rolled'"
        assert await conn.fetchval(rolled) is False
    finally:
        await pool.close()


async def _minutely_history(
    conn: asyncpg.Connection,
    database_url: str,
    settings: Settings,
    vehicle: str,
    day: datetime,
    days: int,
) -> None:
    """A reading a minute for `days` days from `day` (0.1 kWh each, temperatures 20-22), all
    rolled up."""
    await db.ensure_partitions(conn, day.date(), (day + timedelta(days=days)).date())
    await conn.execute(
        """
        INSERT INTO vehicle_readings (vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp)
        SELECT $1, $2::timestamptz + m * interval '1 minute', 50, m * 0.1, 20 + m % 3
        FROM generate_series(0, $3 * 1440) AS m
        """,
        vehicle,
        day,
        days,
    )
    pool = await db.create_pool(database_url, settings)
    try:
        await rollups.match_rules(conn, settings)
        await rollups.refresh(pool, settings, day + timedelta(days=days, minutes=5))
    finally:
        await pool.close()


async def _reads(
    conn: asyncpg.Connection, vehicle: str, start: datetime, end: datetime
) -> tuple[int, int, int]:
    """What one window reads: (raw readings, hour rollups, day rollups). Raw readings are
    counted by the transaction's table statistics, which include the PL/pgSQL helpers' reads
    (EXPLAIN does not show their statements); rollups by EXPLAIN ANALYZE."""
    async with conn.transaction():
        plan = await conn.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM stream_window_energy("
            "'vehicle', $1, $2, $3, '7 days', 500, false, $2, $3)",
            vehicle,
            start,
            end,
        )
        raw = await conn.fetchval(
            "SELECT coalesce(sum(idx_tup_fetch + seq_tup_read), 0) FROM pg_stat_xact_user_tables"
            " WHERE relname LIKE 'vehicle_readings_p%'"
        )
    rows = {
        relation: await conn.fetchval(
            "SELECT coalesce(sum((n->>'Actual Rows')::int * (n->>'Actual Loops')::int), 0)"
            " FROM jsonb_path_query($1::jsonb, 'strict $.**') AS n"
            " WHERE n->>'Relation Name' = $2",
            plan,
            relation,
        )
        for relation in ("vehicle_rollups", "vehicle_day_rollups")
    }
    return raw, rows["vehicle_rollups"], rows["vehicle_day_rollups"]


async def test_a_rolled_day_is_read_from_about_24_rollups(
    conn: asyncpg.Connection, database_url: str, settings: Settings
) -> None:
    day = HOUR - timedelta(days=2)
    await _minutely_history(conn, database_url, settings, "V-day", day, 2)
    start, end = day + timedelta(hours=12, minutes=30), day + timedelta(hours=36, minutes=30)
    raw, hours, days = await _reads(conn, "V-day", start, end)
    # Two half-hour edges of raw rows and the baseline, not 1,440 readings; the 23 whole
    # hours (and the last rollup before the tail, which it joins) from hour rollups.
    assert (raw, hours, days) == (2 * 30 + 1, 23 + 1, 0)
    window = await windows.vehicle_window(conn, "V-day", start, end, settings)
    assert window.readings == 24 * 60
    assert window.kwh == pytest.approx(24 * 60 * 0.1)


async def test_whole_days_of_a_window_are_read_from_day_rollups(
    conn: asyncpg.Connection, database_url: str, settings: Settings
) -> None:
    day = HOUR - timedelta(days=8)
    await _minutely_history(conn, database_url, settings, "V-days", day, 4)
    # Two whole days in the middle, hours and raw half hours at both ends.
    start, end = day + timedelta(hours=10, minutes=30), day + timedelta(days=3, hours=5, minutes=30)
    raw, hours, days = await _reads(conn, "V-days", start, end)
    assert (raw, hours, days) == (2 * 30 + 1, 13 + 5 + 1, 2)
    window = await windows.vehicle_window(conn, "V-days", start, end, settings)
    minutes = int((end - start) / timedelta(minutes=1))
    assert window.readings == minutes
    assert window.kwh == pytest.approx(minutes * 0.1)
    temps = await conn.fetchval(
        "SELECT avg(battery_temp) FROM vehicle_readings"
        " WHERE vehicle_id = 'V-days' AND read_at >= $1 AND read_at < $2",
        start,
        end,
    )
    assert window.avg_battery_temp == pytest.approx(temps)
