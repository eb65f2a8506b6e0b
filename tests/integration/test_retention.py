"""The maintenance round's retention: it drops exactly the day partitions of history wholly past
the period, deletes rollups past theirs, one process at a time, and a dry run changes nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError

from energy_engine import db
from energy_engine.app import create_app
from energy_engine.lifecycle import maintenance
from energy_engine.settings import Settings
from tests.conftest import MakeSettings

HISTORY = timedelta(days=20)
LONGER = timedelta(days=25)
# Retention must not be shorter than the age of readings ingest accepts.
YOUNG = timedelta(days=10)

PARTITIONS = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent IN ('meter_readings'::regclass, 'vehicle_readings'::regclass)
"""
# Everything the database holds, for "changes nothing": relations and row counts.
CATALOG = """
SELECT relname, relkind FROM pg_class
WHERE relnamespace = 'public'::regnamespace ORDER BY relname
"""
COUNTS = """
SELECT (SELECT count(*) FROM meter_readings), (SELECT count(*) FROM vehicle_readings),
       (SELECT count(*) FROM meter_rollups), (SELECT count(*) FROM meter_day_rollups),
       (SELECT count(*) FROM maintenance_runs)
"""


def _day(partition: str) -> date:
    """The UTC day a partition named <table>_pYYYYMMDD holds."""
    return datetime.strptime(partition[-8:], "%Y%m%d").date()


def _past(partition: str, cutoff: datetime) -> bool:
    """Wholly before `cutoff`: the day ends at or before it (computed from the name alone)."""
    end = datetime.combine(_day(partition) + timedelta(days=1), datetime.min.time(), UTC)
    return end <= cutoff


async def _partitions(conn: asyncpg.Connection) -> set[str]:
    return {row["relname"] for row in await conn.fetch(PARTITIONS)}


@pytest.fixture
async def pool(make_settings: MakeSettings) -> AsyncIterator[db.Pool]:
    settings = make_settings()
    assert settings.database_url is not None
    opened = await db.create_pool(settings.database_url, settings)
    yield opened
    await opened.close()


def _retaining(make_settings: MakeSettings, **more: object) -> Settings:
    # Packing off: it would also pack and retire the old days kept here (test_packed_history).
    fields: dict[str, object] = {"pack_after": None, **more}
    return make_settings(max_reading_age=YOUNG, history_retention=HISTORY, **fields)


async def test_retention_drops_exactly_the_partitions_wholly_past_the_period(
    make_settings: MakeSettings, pool: db.Pool, conn: asyncpg.Connection
) -> None:
    settings = _retaining(make_settings)
    now = datetime.now(UTC)
    cutoff = now - HISTORY
    before = await _partitions(conn)
    doomed = {name for name in before if _past(name, cutoff)}
    assert len(doomed) >= 2 * 9  # the template holds 30 days back: some 10 days per table
    # The day holding the cutoff is not wholly past it and stays, with its rows.
    edge = f"meter_readings_p{cutoff:%Y%m%d}"
    assert edge in before and edge not in doomed
    await conn.execute(
        "INSERT INTO meter_readings VALUES ($1, 1.0, 230, 'M-old'), ($2, 2.0, 230, 'M-edge')",
        cutoff - timedelta(days=2),
        cutoff.replace(hour=0, minute=0, second=0, microsecond=0),
    )

    done = await maintenance.maintain(pool, settings, now)

    assert done is not None
    assert {p.name for p in done.dropped} == doomed
    assert done.postponed == []
    assert await _partitions(conn) == before - doomed
    # Kept, in raw or packed form (the edge day is older than pack_after).
    assert await conn.fetchval(
        "SELECT array_agg(device_id) FROM stream_history('meter', '-infinity', 'infinity')"
    ) == ["M-edge"]
    assert all(p.range_to <= cutoff and p.bytes > 0 for p in done.dropped)
    last = await maintenance.last_run(conn)
    assert last is not None
    assert (last.partitions_dropped, last.bytes_freed) == (len(doomed), done.bytes_freed)
    assert last.history_cutoff == cutoff and last.rollup_cutoff is None
    # A second round finds nothing more to drop.
    again = await maintenance.maintain(pool, settings, now)
    assert again is not None and again.dropped == []


async def test_without_a_retention_period_nothing_is_dropped(
    make_settings: MakeSettings, pool: db.Pool, conn: asyncpg.Connection
) -> None:
    before = await _partitions(conn)
    done = await maintenance.maintain(pool, make_settings(), datetime.now(UTC))
    assert done is not None and done.dropped == [] and done.rollups_deleted == 0
    assert await _partitions(conn) == before


async def _rollup_rows(conn: asyncpg.Connection, hours: list[datetime]) -> None:
    """One hour rollup with its marks and one day rollup of meter M-1 at each of `hours`,
    and marks of another meter's hour at each (not deleted with M-1's rollups)."""
    for hour in hours:
        await conn.execute(
            """
            INSERT INTO meter_rollups (meter_id, hour, readings, first_at, last_at, first_kwh,
                last_kwh, added_kwh, skipped, voltage_sum, voltage_min, voltage_max)
            VALUES ('M-1', $1, 1, $1, $1, 1, 1, 0, 0, 230, 230, 230)
            """,
            hour,
        )
        await conn.execute(
            "INSERT INTO meter_rollup_marks (hour, meter_id, reading_ms, cum_added)"
            " VALUES ($1, 'M-1', '{0}', '{0}'), ($1, 'M-2', '{0}', '{0}')",
            hour,
        )
        await conn.execute(
            """
            INSERT INTO meter_day_rollups (meter_id, day, readings, first_kwh, last_at,
                last_kwh, added_kwh, skipped, joined_kwh, joined_skipped)
            VALUES ('M-1', $1, 1, 1, $1, 1, 0, 0, 0, 0)
            """,
            hour.replace(hour=0),
        )


async def test_rollups_outlive_history_when_their_retention_is_longer(
    make_settings: MakeSettings,
    pool: db.Pool,
    conn: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(maintenance, "ROLLUP_BATCH", 2)  # several batches per table
    now = datetime.now(UTC).replace(minute=30)
    hour = now.replace(minute=0, second=0, microsecond=0)
    old = [hour - timedelta(days=d) for d in (40, 35, 30, 27)]  # past both periods
    kept = [hour - timedelta(days=d) for d in (23, 21, 1)]  # past history's only, or neither
    await _rollup_rows(conn, old + kept)

    # History retention alone keeps every rollup.
    alone = await maintenance.maintain(pool, _retaining(make_settings), now)
    assert alone is not None and alone.dropped and alone.rollups_deleted == 0
    assert await conn.fetchval("SELECT count(*) FROM meter_rollups") == len(old + kept)

    settings = _retaining(make_settings, rollup_retention=LONGER)
    done = await maintenance.maintain(pool, settings, now)
    assert done is not None and done.rollups_deleted == 2 * len(old)
    hours = await conn.fetch("SELECT hour FROM meter_rollups ORDER BY hour")
    assert [row["hour"] for row in hours] == kept
    # An hour rollup's marks go with it; marks of a device-hour without a rollup stay.
    marks = await conn.fetch("SELECT hour, meter_id FROM meter_rollup_marks ORDER BY 2, 1")
    assert [tuple(row) for row in marks] == [(h, "M-1") for h in kept] + [
        (h, "M-2") for h in old + kept
    ]
    days = await conn.fetch("SELECT day FROM meter_day_rollups ORDER BY day")
    assert [row["day"] for row in days] == [h.replace(hour=0) for h in kept]


async def test_a_dry_run_changes_nothing_and_lists_what_a_round_drops(
    make_settings: MakeSettings, pool: db.Pool, conn: asyncpg.Connection
) -> None:
    settings = _retaining(make_settings, rollup_retention=LONGER)
    now = datetime.now(UTC)
    await _rollup_rows(conn, [now.replace(minute=0, second=0, microsecond=0) - LONGER * 2])
    catalog, counts = await conn.fetch(CATALOG), await conn.fetchrow(COUNTS)

    async with pool.acquire() as c:
        plan = await maintenance.plan(c, settings, now)

    assert await conn.fetch(CATALOG) == catalog
    assert await conn.fetchrow(COUNTS) == counts
    assert plan.rollups == {
        "meter_rollups": 1,
        "vehicle_rollups": 0,
        "meter_day_rollups": 1,
        "vehicle_day_rollups": 0,
    }
    assert plan.bytes == sum(p.bytes for p in plan.partitions) > 0
    done = await maintenance.maintain(pool, settings, now)
    assert done is not None
    assert [p.name for p in done.dropped] == [p.name for p in plan.partitions]
    assert done.rollups_deleted == 2


async def test_a_round_runs_in_one_process_at_a_time(
    make_settings: MakeSettings, pool: db.Pool, conn: asyncpg.Connection
) -> None:
    settings = _retaining(make_settings)
    now = datetime.now(UTC)
    before = await _partitions(conn)
    # Another host holds the lock: the round does nothing at all.
    other = await asyncpg.connect(settings.database_url)
    try:
        await other.execute("SELECT pg_advisory_lock($1)", maintenance.MAINTENANCE_LOCK_KEY)
        assert await maintenance.maintain(pool, settings, now) is None
        assert await _partitions(conn) == before
        await other.execute("SELECT pg_advisory_unlock($1)", maintenance.MAINTENANCE_LOCK_KEY)

        # Two rounds at once: the first is held while recording (its drops done, its lock
        # held); the second, started then, finds the lock taken and does nothing.
        async with other.transaction():
            await other.execute("LOCK TABLE maintenance_runs IN EXCLUSIVE MODE")
            first = asyncio.create_task(maintenance.maintain(pool, settings, now))
            deadline = time.monotonic() + 10
            while not await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%maintenance_runs%'"
            ):
                assert time.monotonic() < deadline, "the first round never reached its record"
                await asyncio.sleep(0.02)
            assert await maintenance.maintain(pool, settings, now) is None
        done = await first
    finally:
        await other.close()
    assert done is not None and done.dropped
    assert await _partitions(conn) == before - {p.name for p in done.dropped}


async def test_a_drop_waits_briefly_for_a_locked_table_and_the_next_round_retries(
    make_settings: MakeSettings, pool: db.Pool, conn: asyncpg.Connection
) -> None:
    settings = _retaining(make_settings, retention_lock_timeout=timedelta(milliseconds=100))
    now = datetime.now(UTC)
    doomed = {name for name in await _partitions(conn) if _past(name, now - HISTORY)}
    busy = min(name for name in doomed if name.startswith("meter"))
    reader = await asyncpg.connect(settings.database_url)
    try:
        async with reader.transaction():  # a long read holding the partition
            await reader.execute(f"LOCK TABLE {busy} IN ACCESS SHARE MODE")
            started = time.monotonic()
            done = await maintenance.maintain(pool, settings, now)
            assert time.monotonic() - started < 5
        assert done is not None and done.postponed == [busy]
        assert {p.name for p in done.dropped} == doomed - {busy}
        last = await maintenance.last_run(conn)
        assert last is not None and last.drops_postponed == 1
    finally:
        await reader.close()
    retried = await maintenance.maintain(pool, settings, now)
    assert retried is not None and [p.name for p in retried.dropped] == [busy]


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"history_retention": timedelta(days=7)}, "at least max_reading_age"),
        ({"rollup_retention": timedelta(days=400)}, "needs a history_retention"),
        (
            {"history_retention": timedelta(days=60), "rollup_retention": timedelta(days=40)},
            "must not be shorter",
        ),
    ],
)
def test_retention_settings_that_would_lose_data_silently_are_refused(
    fields: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValidationError, match=complaint):
        Settings(_env_file=None, **fields)


async def test_a_serving_engine_applies_retention_at_start_and_records_it(
    make_settings: MakeSettings, conn: asyncpg.Connection
) -> None:
    settings = _retaining(make_settings)
    doomed = {name for name in await _partitions(conn) if _past(name, datetime.now(UTC) - HISTORY)}
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        deadline = time.monotonic() + 10
        while (last := await maintenance.last_run(conn)) is None:
            assert time.monotonic() < deadline, "no maintenance round at start"
            await asyncio.sleep(0.02)
    assert last.partitions_dropped == len(doomed) > 0
    assert not doomed & await _partitions(conn)
