"""Packed history (migrations/0005_packed_history.sql): every answer over packed days equals the
brute force over the readings sent, a reading is stored once across both forms, late readings
for a packed day are counted, and maintenance packs, frees and drops packed days."""

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
from energy_engine.lifecycle import maintenance
from energy_engine.rollups import store as rollups
from energy_engine.settings import EnergySemantics, Settings
from tests import reference
from tests import window_sql as windows
from tests.conftest import MakeSettings, RulesDatabase

# Each example gets three days of its own, later than the one before (watermarks only move
# forward), clear of the other modules' days.
FIRST_DAY = (datetime.now(UTC) - timedelta(days=800)).replace(
    hour=0, minute=0, second=0, microsecond=0
)
_examples = itertools.count()

LATE = timedelta(milliseconds=250)  # vehicles report a quarter second after the minute
STORED = "SELECT count(*) FROM stream_history($1, '-infinity', 'infinity') WHERE device_id = $2"
RAW = "SELECT count(*) FROM {table} WHERE {column} = $1"


def _readings(
    device: str, day: datetime, arrivals: list[tuple[int, float]]
) -> tuple[list[MeterReading], list[VehicleReading]]:
    meters = [
        MeterReading.model_construct(
            meter_id=f"m-{device}",
            timestamp=day + timedelta(minutes=m),
            kwh_consumed_ac=kwh,
            voltage=230.0 + m % 3,
        )
        for m, kwh in arrivals
    ]
    vehicles = [
        VehicleReading.model_construct(
            vehicle_id=f"v-{device}",
            timestamp=day + timedelta(minutes=m) + LATE,
            soc=50.0,
            kwh_delivered_dc=kwh,
            battery_temp=20.0 + m % 7,
        )
        for m, kwh in arrivals
    ]
    return meters, vehicles


async def _pack_days(conn: db.Connection, first: datetime, days: int) -> int:
    """Pack both streams' raw partitions of `days` UTC days from `first`."""
    await conn.execute(
        "SELECT ensure_reading_partitions($1::date, $2::date)",
        first.date(),
        (first + timedelta(days=days - 1)).date(),
    )
    moved = 0
    for offset in range(days):
        stamp = f"{first + timedelta(days=offset):%Y%m%d}"
        for table in ("meter_readings", "vehicle_readings"):
            moved += await conn.fetchval(
                "SELECT pack_reading_partition($1::regclass)", f"{table}_p{stamp}"
            )
    return moved


MINUTES = st.one_of(st.integers(0, 300), st.integers(1380, 3000))
streams = st.lists(
    st.tuples(
        MINUTES,
        st.one_of(st.floats(0, 5_000, allow_nan=False), st.integers(0, 20).map(float)),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(
    arrivals=streams,
    start_minute=st.one_of(st.integers(-20, 300), st.just(0), st.just(1440)),
    length=st.one_of(st.integers(1, 400), st.integers(2800, 3100), st.just(1440)),
    semantics=st.sampled_from(EnergySemantics),
    max_power_kw=st.sampled_from([1.0, 500.0]),
    packed_days=st.integers(1, 3),  # packing ends mid-history or after it
    packed_after=st.integers(0, 3),  # how many of the three parts arrive before packing
    refresh=st.booleans(),
)
def test_answers_over_packed_history_equal_brute_force(
    rules_database: RulesDatabase,
    arrivals: list[tuple[int, float]],
    start_minute: int,
    length: int,
    semantics: EnergySemantics,
    max_power_kw: float,
    packed_days: int,
    packed_after: int,
    refresh: bool,
) -> None:
    config = Settings(_env_file=None, energy_semantics=semantics, max_power_kw=max_power_kw)
    url = rules_database(config)
    example = next(_examples)
    day = FIRST_DAY + timedelta(days=3 * example)
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
                third = -(-len(arrivals) // 3) or 1
                parts = [arrivals[i : i + third] for i in range(0, len(arrivals), third)]
                for index in range(len(parts) + 1):
                    if index == min(packed_after, len(parts)):
                        # Readings after this are late readings for packed days, and a re-send
                        # of everything so far stores nothing.
                        await _pack_days(conn, day, packed_days)
                        for part in parts[:index]:
                            accepted = await write_readings(conn, *_readings(device, day, part))
                            assert accepted == ([], [])
                    if index < len(parts):
                        await write_readings(conn, *_readings(device, day, parts[index]))
                    if refresh:
                        await rollups.refresh(pool, config, day + timedelta(days=3))
                distinct = len({m for m, _ in arrivals})
                for stream in ("meter", "vehicle"):
                    assert await conn.fetchval(STORED, stream, f"{stream[0]}-{device}") == distinct
                # The vehicle's readings are a quarter second later: so are its window's edges.
                dc = await windows.vehicle_window(
                    conn, f"v-{device}", start + LATE, end + LATE, config
                )
                ac = await windows.meter_windows(conn, f"v-{device}", start, end, config)
                event(f"packed after part {min(packed_after, len(parts))} of {len(parts)}")
        finally:
            await pool.close()
        sent = [(day + timedelta(minutes=m), kwh) for m, kwh in arrivals]
        rules = reference.Rules.of(config)
        want = reference.window(sent, start, end, rules)
        assert (ac[0].readings, ac[0].skipped) == (want.readings, want.skipped)
        assert ac[0].kwh == pytest.approx(want.kwh, rel=1e-9, abs=1e-9)
        sent_dc = [(at + LATE, kwh) for at, kwh in sent]
        want_dc = reference.window(sent_dc, start + LATE, end + LATE, rules)
        assert (dc.readings, dc.skipped) == (want_dc.readings, want_dc.skipped)
        assert dc.kwh == pytest.approx(want_dc.kwh, rel=1e-9, abs=1e-9)

    asyncio.run(run())


async def test_packing_keeps_every_reading_exactly_and_a_resend_stores_nothing(
    conn: asyncpg.Connection,
) -> None:
    day = FIRST_DAY - timedelta(days=10)
    await conn.execute("SELECT ensure_reading_partitions($1::date, $1::date)", day.date())
    times = [day + timedelta(minutes=m, microseconds=m * 37 % 1_000_000) for m in range(0, 180, 7)]
    rows = [("V-1", t, 50.5 + i, 1000.125 + i / 3, 20.25) for i, t in enumerate(times)]
    await conn.executemany(
        "INSERT INTO vehicle_readings (vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp)"
        " VALUES ($1, $2, $3, $4, $5)",
        rows,
    )
    query = (
        "SELECT device_id, read_at, soc, kwh, sensor FROM stream_history('vehicle', $1, $2)"
        " ORDER BY read_at"
    )
    before = await conn.fetch(query, day, day + timedelta(days=1))

    moved = await conn.fetchval("SELECT pack_readings_before($1)", day + timedelta(days=1))

    assert moved == len(rows)
    assert (
        await conn.fetchval(RAW.format(table="vehicle_readings", column="vehicle_id"), "V-1") == 0
    )
    assert [tuple(r) for r in await conn.fetch(query, day, day + timedelta(days=1))] == [
        tuple(r) for r in before
    ]
    assert await conn.fetchval("SELECT count(*) FROM vehicle_readings_packed") == 3  # hours
    # Sent again, raw: every one is a duplicate of its packed self.
    inserted = await conn.fetch(
        "INSERT INTO vehicle_readings (vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp)"
        " SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::float8[],"
        " $5::float8[]) ON CONFLICT DO NOTHING RETURNING read_at",
        *[list(column) for column in zip(*rows, strict=True)],
    )
    assert inserted == []
    assert await conn.fetchval(STORED, "vehicle", "V-1") == len(rows)


async def test_a_late_reading_for_a_packed_hour_is_counted_and_merged(
    conn: asyncpg.Connection,
) -> None:
    day = FIRST_DAY - timedelta(days=20)
    meters = [
        MeterReading.model_construct(
            meter_id="M-1", timestamp=day + timedelta(minutes=m), kwh_consumed_ac=m, voltage=230.0
        )
        for m in range(0, 120, 2)
    ]
    await write_readings(conn, meters, [])
    assert await _pack_days(conn, day, 1) == len(meters)
    late = MeterReading.model_construct(
        meter_id="M-1", timestamp=day + timedelta(minutes=61), kwh_consumed_ac=61, voltage=230.0
    )
    again = meters[5]

    accepted = await write_readings(conn, [late, again], [])

    assert accepted == ([1], [])  # the late reading; the re-sent one is a duplicate
    assert await conn.fetchval(RAW.format(table="meter_readings", column="meter_id"), "M-1") == 1
    assert await conn.fetchval(STORED, "meter", "M-1") == len(meters) + 1
    # The next packing merges it into its hour's row, in time order.
    assert await _pack_days(conn, day, 1) == 1
    assert await conn.fetchval(RAW.format(table="meter_readings", column="meter_id"), "M-1") == 0
    seconds = await conn.fetchval(
        "SELECT seconds FROM meter_readings_packed WHERE meter_id = 'M-1' AND hour = $1",
        day + timedelta(hours=1),
    )
    assert seconds == sorted({*range(0, 3600, 120), 60})
    assert await conn.fetchval(STORED, "meter", "M-1") == len(meters) + 1


async def test_maintenance_packs_frees_retires_and_retention_drops_packed_days(
    make_settings: MakeSettings, conn: asyncpg.Connection
) -> None:
    now = datetime.now(UTC)
    # A: packed, still open to late readings. B: packed, and older than any reading accepted.
    day_a = (now - timedelta(days=6)).replace(hour=5, minute=0, second=0, microsecond=0)
    day_b = (now - timedelta(days=70)).replace(hour=5, minute=0, second=0, microsecond=0)
    await conn.execute("SELECT ensure_reading_partitions($1::date, $1::date)", day_b.date())
    for day, prefix in ((day_a, "A"), (day_b, "B")):
        await conn.execute(
            "INSERT INTO meter_readings (meter_id, read_at, kwh_consumed_ac, voltage)"
            " SELECT $2 || d, $1::timestamptz + m * interval '1 minute', m, 230"
            " FROM generate_series(1, 50) AS d, generate_series(0, 599) AS m",
            day,
            prefix,
        )
    await conn.execute("INSERT INTO meter_readings VALUES ($1, 1.0, 230, 'M-recent')", now)
    raw_a, raw_b = f"meter_readings_p{day_a:%Y%m%d}", f"meter_readings_p{day_b:%Y%m%d}"
    held = await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", raw_a)
    settings = make_settings(pack_after=timedelta(days=2))
    pool = await db.create_pool(settings.database_url or "", settings)
    try:
        done = await maintenance.maintain(pool, settings, now)
        assert done is not None
        assert sorted(done.packed) == sorted([raw_a, raw_b])
        assert done.readings_packed == 2 * 50 * 600
        last = await maintenance.last_run(conn)
        assert last is not None and last.readings_packed == 2 * 50 * 600
        # The recent reading stays raw; A's raw partition is emptied and small, B's is gone.
        assert await conn.fetchval("SELECT count(*) FROM meter_readings") == 1
        size = await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", raw_a)
        assert size < held / 10, (size, held)
        assert await conn.fetchval("SELECT to_regclass($1)", raw_b) is None
        assert await conn.fetchval(STORED, "meter", "A7") == 600
        assert await conn.fetchval(STORED, "meter", "B7") == 600
        again = await maintenance.maintain(pool, settings, now)
        assert again is not None and again.packed == []

        # A late reading for B (the importer or a longer max_reading_age): its raw partition
        # comes back with the trigger, so a packed reading sent again is still a duplicate.
        late = [
            MeterReading.model_construct(
                meter_id="B7",
                timestamp=day_b + timedelta(minutes=m),
                kwh_consumed_ac=m,
                voltage=230.0,
            )
            for m in (3, 1000)
        ]
        assert await write_readings(conn, late, []) == ([2], [])
        assert await conn.fetchval(STORED, "meter", "B7") == 601

        # Retention: B's packed month goes like a raw day; A's stays.
        retaining = make_settings(
            pack_after=timedelta(days=2),
            max_reading_age=timedelta(days=2),
            history_retention=timedelta(days=35),
        )
        dropped = await maintenance.maintain(pool, retaining, now)
        assert dropped is not None
        assert f"meter_readings_packed_{day_b:%Y%m}" in {p.name for p in dropped.dropped}
        assert await conn.fetchval(STORED, "meter", "B7") == 0
        assert await conn.fetchval(STORED, "meter", "A7") == 600
        assert await conn.fetchval(STORED, "meter", "M-recent") == 1
    finally:
        await pool.close()


def test_packing_can_be_turned_off() -> None:
    assert Settings(_env_file=None, pack_after="off").pack_after is None
    assert Settings(_env_file=None).pack_after == timedelta(days=2)
