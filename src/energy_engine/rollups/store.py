"""Keeps the hourly rollups complete: seals finished hours, aggregates them, re-aggregates the
device-hours that late readings made dirty. See migrations/0003_rollups.sql for the model.

Every aggregation recomputes whole device-hours from raw rows (never adds to a stored rollup),
and looks the reading before each hour up in raw history, so running any step twice, or after a
crash, gives the same rollups.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import asyncpg

from energy_engine import db
from energy_engine.db import Connection, Pool
from energy_engine.errors import outage
from energy_engine.settings import EnergySemantics, Settings

log = logging.getLogger(__name__)

REFRESH_LOCK_KEY = 0x656E_726F_6C6C  # one refresher at a time across processes

# Each aggregated hour (the `hours` CTE) with the reading before it, however far back, and the
# increment from that reading into the hour's first ($1 interval semantics, $2 max power kW).
_WITH_PREDECESSOR = """SELECT h.*, p.read_at, p.{kwh},
       coalesce(rollup_joined_kwh(h.first_at, h.first_kwh, p.read_at, p.{kwh}, $2, $1), 0),
       coalesce(rollup_joined_skipped(h.first_at, h.first_kwh, p.read_at, p.{kwh}, $2, $1), 0)
FROM hours AS h
LEFT JOIN LATERAL (
    SELECT read_at, {kwh}
    FROM {stream}_readings
    WHERE {device} = h.{device} AND read_at < h.hour
    ORDER BY read_at DESC
    LIMIT 1
) AS p ON true
ORDER BY h.{device}, h.hour"""

# The increments between consecutive readings of the same device-hour, by the rules of
# energy_engine.energy (energy_increment and energy_plausible, migrations/0006, which survive
# poison values); the first reading of an hour has no predecessor here (NULL seconds).
# $1 interval semantics, $2 max power kW; {rows} is the FROM clause choosing the readings.
_METER_AGGREGATE = """
WITH steps AS (
    SELECT meter_id, date_trunc('hour', read_at) AS hour, read_at, kwh_consumed_ac AS kwh,
           voltage,
           energy_increment(kwh_consumed_ac, lag(kwh_consumed_ac) OVER w, $1) AS added,
           EXTRACT(epoch FROM read_at - lag(read_at) OVER w)::float8 AS seconds
    FROM {rows}
    WINDOW w AS (PARTITION BY meter_id, date_trunc('hour', read_at) ORDER BY read_at)
),
hours AS (
    SELECT meter_id, hour, count(*) AS readings, min(read_at) AS first_at,
           max(read_at) AS last_at,
           (array_agg(kwh ORDER BY read_at))[1] AS first_kwh,
           (array_agg(kwh ORDER BY read_at DESC))[1] AS last_kwh,
           coalesce(sum(added) FILTER (WHERE energy_plausible(added, seconds, $2)), 0)
               AS added_kwh,
           count(*) FILTER (WHERE NOT energy_plausible(added, seconds, $2)) AS skipped,
           sum(voltage) AS voltage_sum, min(voltage) AS voltage_min, max(voltage) AS voltage_max
    FROM steps
    GROUP BY meter_id, hour
)
INSERT INTO meter_rollups AS u (
    meter_id, hour, readings, first_at, last_at, first_kwh, last_kwh, added_kwh, skipped,
    voltage_sum, voltage_min, voltage_max, prev_at, prev_kwh, joined_kwh, joined_skipped
)
{with_predecessor}
ON CONFLICT (meter_id, hour) DO UPDATE SET
    readings = excluded.readings, first_at = excluded.first_at, last_at = excluded.last_at,
    first_kwh = excluded.first_kwh, last_kwh = excluded.last_kwh,
    added_kwh = excluded.added_kwh, skipped = excluded.skipped,
    voltage_sum = excluded.voltage_sum, voltage_min = excluded.voltage_min,
    voltage_max = excluded.voltage_max, prev_at = excluded.prev_at, prev_kwh = excluded.prev_kwh,
    joined_kwh = excluded.joined_kwh, joined_skipped = excluded.joined_skipped
"""

_VEHICLE_AGGREGATE = """
WITH steps AS (
    SELECT vehicle_id, date_trunc('hour', read_at) AS hour, read_at, kwh_delivered_dc AS kwh,
           soc, battery_temp,
           energy_increment(kwh_delivered_dc, lag(kwh_delivered_dc) OVER w, $1) AS added,
           EXTRACT(epoch FROM read_at - lag(read_at) OVER w)::float8 AS seconds
    FROM {rows}
    WINDOW w AS (PARTITION BY vehicle_id, date_trunc('hour', read_at) ORDER BY read_at)
),
hours AS (
    SELECT vehicle_id, hour, count(*) AS readings, min(read_at) AS first_at,
           max(read_at) AS last_at,
           (array_agg(kwh ORDER BY read_at))[1] AS first_kwh,
           (array_agg(kwh ORDER BY read_at DESC))[1] AS last_kwh,
           coalesce(sum(added) FILTER (WHERE energy_plausible(added, seconds, $2)), 0)
               AS added_kwh,
           count(*) FILTER (WHERE NOT energy_plausible(added, seconds, $2)) AS skipped,
           sum(battery_temp) AS battery_temp_sum, min(battery_temp) AS battery_temp_min,
           max(battery_temp) AS battery_temp_max, min(soc) AS soc_min, max(soc) AS soc_max
    FROM steps
    GROUP BY vehicle_id, hour
)
INSERT INTO vehicle_rollups AS u (
    vehicle_id, hour, readings, first_at, last_at, first_kwh, last_kwh, added_kwh, skipped,
    battery_temp_sum, battery_temp_min, battery_temp_max, soc_min, soc_max, prev_at, prev_kwh,
    joined_kwh, joined_skipped
)
{with_predecessor}
ON CONFLICT (vehicle_id, hour) DO UPDATE SET
    readings = excluded.readings, first_at = excluded.first_at, last_at = excluded.last_at,
    first_kwh = excluded.first_kwh, last_kwh = excluded.last_kwh,
    added_kwh = excluded.added_kwh, skipped = excluded.skipped,
    battery_temp_sum = excluded.battery_temp_sum, battery_temp_min = excluded.battery_temp_min,
    battery_temp_max = excluded.battery_temp_max, soc_min = excluded.soc_min,
    soc_max = excluded.soc_max, prev_at = excluded.prev_at, prev_kwh = excluded.prev_kwh,
    joined_kwh = excluded.joined_kwh, joined_skipped = excluded.joined_skipped
"""

_METER_AGGREGATE = _METER_AGGREGATE.replace(
    "{with_predecessor}",
    _WITH_PREDECESSOR.format(stream="meter", device="meter_id", kwh="kwh_consumed_ac"),
)
_VEHICLE_AGGREGATE = _VEHICLE_AGGREGATE.replace(
    "{with_predecessor}",
    _WITH_PREDECESSOR.format(stream="vehicle", device="vehicle_id", kwh="kwh_delivered_dc"),
)

# Every reading of a time range ($3, $4): the hours being rolled.
ROLL_METER_HOURS = _METER_AGGREGATE.format(
    rows="meter_readings WHERE read_at >= $3 AND read_at < $4"
)
ROLL_VEHICLE_HOURS = _VEHICLE_AGGREGATE.format(
    rows="vehicle_readings WHERE read_at >= $3 AND read_at < $4"
)

# Every reading of the dirty device-hours ($3 device ids, $4 hours).
_DIRTY_ROWS = """(
        SELECT r.*
        FROM unnest($3::text[], $4::timestamptz[]) AS d (device_id, hour)
        JOIN {table} AS r
          ON r.{device} = d.device_id AND r.read_at >= d.hour
         AND r.read_at < d.hour + interval '1 hour'
    ) AS r"""
REDO_METER_HOURS = _METER_AGGREGATE.format(
    rows=_DIRTY_ROWS.format(table="meter_readings", device="meter_id")
)
REDO_VEHICLE_HOURS = _VEHICLE_AGGREGATE.format(
    rows=_DIRTY_ROWS.format(table="vehicle_readings", device="vehicle_id")
)

# A late reading may precede the first reading of its device's next rolled hour more closely
# than that rollup's `prev_at` does: after redoing dirty hours ($1 devices, $2 hours), the next
# rollup of each device names its predecessor again, and the increment from it ($3 interval
# semantics, $4 max power kW). Returns the repaired rollups: their days change too.
_REPAIR_NEXT = """
UPDATE {stream}_rollups AS u
SET prev_at = p.read_at, prev_kwh = p.{kwh},
    joined_kwh = coalesce(
        rollup_joined_kwh(u.first_at, u.first_kwh, p.read_at, p.{kwh}, $4, $3), 0),
    joined_skipped = coalesce(
        rollup_joined_skipped(u.first_at, u.first_kwh, p.read_at, p.{kwh}, $4, $3), 0)
FROM (
    SELECT DISTINCT d.device_id, n.hour
    FROM unnest($1::text[], $2::timestamptz[]) AS d (device_id, hour)
    CROSS JOIN LATERAL (
        SELECT min(hour) AS hour
        FROM {stream}_rollups
        WHERE {device} = d.device_id AND hour > d.hour
    ) AS n
    WHERE n.hour IS NOT NULL
) AS next
LEFT JOIN LATERAL (
    SELECT read_at, {kwh}
    FROM {stream}_readings
    WHERE {device} = next.device_id AND read_at < next.hour
    ORDER BY read_at DESC
    LIMIT 1
) AS p ON true
WHERE u.{device} = next.device_id AND u.hour = next.hour
RETURNING u.{device} AS device_id, u.hour
"""
REPAIR_NEXT_METER = _REPAIR_NEXT.format(stream="meter", device="meter_id", kwh="kwh_consumed_ac")
REPAIR_NEXT_VEHICLE = _REPAIR_NEXT.format(
    stream="vehicle", device="vehicle_id", kwh="kwh_delivered_dc"
)

# Day rollups from the hour rollups of complete UTC days (migrations/0005): the energy added
# between the day's readings is each hour's, plus the increment into every hour's first
# reading but the day's first (whose predecessor is before the day: the day's own joined step).
_DAY_AGGREGATE = """
INSERT INTO {stream}_day_rollups AS d (
    {device}, day, readings, first_kwh, last_at, last_kwh, added_kwh, skipped, prev_at,
    joined_kwh, joined_skipped{extra_columns}
)
SELECT u.{device}, date_trunc('day', u.hour, 'UTC') AS day,
       sum(u.readings)::integer,
       (array_agg(u.first_kwh ORDER BY u.hour))[1],
       max(u.last_at),
       (array_agg(u.last_kwh ORDER BY u.hour DESC))[1],
       sum(u.added_kwh + CASE WHEN u.prev_at >= date_trunc('day', u.hour, 'UTC')
                              THEN u.joined_kwh ELSE 0 END),
       sum(u.skipped + CASE WHEN u.prev_at >= date_trunc('day', u.hour, 'UTC')
                            THEN u.joined_skipped ELSE 0 END)::integer,
       (array_agg(u.prev_at ORDER BY u.hour))[1],
       (array_agg(u.joined_kwh ORDER BY u.hour))[1],
       (array_agg(u.joined_skipped ORDER BY u.hour))[1]{extra_aggregates}
FROM {rows}
GROUP BY u.{device}, date_trunc('day', u.hour, 'UTC')
ON CONFLICT ({device}, day) DO UPDATE SET
    readings = excluded.readings, first_kwh = excluded.first_kwh, last_at = excluded.last_at,
    last_kwh = excluded.last_kwh, added_kwh = excluded.added_kwh, skipped = excluded.skipped,
    prev_at = excluded.prev_at, joined_kwh = excluded.joined_kwh,
    joined_skipped = excluded.joined_skipped{extra_updates}
"""
_METER_DAYS = {
    "stream": "meter",
    "device": "meter_id",
    "extra_columns": "",
    "extra_aggregates": "",
    "extra_updates": "",
}
_VEHICLE_DAYS = {
    "stream": "vehicle",
    "device": "vehicle_id",
    "extra_columns": ", battery_temp_sum, soc_min, soc_max",
    "extra_aggregates": ",\n       sum(u.battery_temp_sum), min(u.soc_min), max(u.soc_max)",
    "extra_updates": (
        ",\n    battery_temp_sum = excluded.battery_temp_sum, soc_min = excluded.soc_min,"
        " soc_max = excluded.soc_max"
    ),
}
# The days of the hours [$1, $2), all rolled.
_ROLLED_DAYS = "{stream}_rollups AS u WHERE u.hour >= $1 AND u.hour < $2"
ROLL_METER_DAYS = _DAY_AGGREGATE.format(**_METER_DAYS, rows=_ROLLED_DAYS.format(stream="meter"))
ROLL_VEHICLE_DAYS = _DAY_AGGREGATE.format(
    **_VEHICLE_DAYS, rows=_ROLLED_DAYS.format(stream="vehicle")
)
# The complete days of the device-hours ($1 devices, $2 hours) that were redone or repaired.
_TOUCHED_DAYS = """(
        SELECT DISTINCT d.device_id, date_trunc('day', d.hour, 'UTC') AS day
        FROM unnest($1::text[], $2::timestamptz[]) AS d (device_id, hour)
    ) AS touched
    JOIN {stream}_rollups AS u
      ON u.{device} = touched.device_id AND u.hour >= touched.day
     AND u.hour < touched.day + interval '1 day'
    WHERE touched.day + interval '1 day' <= rollups_rolled()"""
REDO_METER_DAYS = _DAY_AGGREGATE.format(
    **_METER_DAYS, rows=_TOUCHED_DAYS.format(stream="meter", device="meter_id")
)
REDO_VEHICLE_DAYS = _DAY_AGGREGATE.format(
    **_VEHICLE_DAYS, rows=_TOUCHED_DAYS.format(stream="vehicle", device="vehicle_id")
)

# Dirty hours to redo, but not one whose redo failed as it is now (quarantined with its mark's
# generation): it is tried again once a new reading changes it.
TAKE_DIRTY = """
SELECT d.stream, d.device_id, d.hour, d.generation
FROM rollup_dirty AS d
WHERE d.hour < (SELECT at FROM rollup_watermarks WHERE name = 'rolled')
  AND NOT EXISTS (SELECT FROM rollup_quarantine AS q
                  WHERE q.stream = d.stream AND q.device_id = d.device_id AND q.hour = d.hour
                    AND q.generation = d.generation)
ORDER BY d.stream, d.device_id, d.hour
LIMIT $1
"""

FORGET_DIRTY = """
DELETE FROM rollup_dirty AS d
USING unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[])
    AS seen (stream, device_id, hour, generation)
WHERE d.stream = seen.stream AND d.device_id = seen.device_id AND d.hour = seen.hour
  AND d.generation = seen.generation  -- a newer mark stays for the next round
"""

# --- Isolating failures (hardening) --------------------------------------------------------
# A batch that fails to aggregate (a bad row the arithmetic does not survive) must not stop
# every other device's rollups: the batch is split until the failing devices (rolling) or
# device-hours (redoing) stand alone. Failing devices' hours are left dirty, so readers take
# their raw rows and the redo narrows them down to hours; hours whose redo fails are
# quarantined (migrations/0006), counted in /health/ready.

# The range's rows of some devices ($5), for rolling them apart from the others.
ROLL_SOME_METER_HOURS = _METER_AGGREGATE.format(
    rows="meter_readings WHERE read_at >= $3 AND read_at < $4 AND meter_id = ANY($5::text[])"
)
ROLL_SOME_VEHICLE_HOURS = _VEHICLE_AGGREGATE.format(
    rows="vehicle_readings WHERE read_at >= $3 AND read_at < $4 AND vehicle_id = ANY($5::text[])"
)
_DEVICES_IN = """
SELECT DISTINCT {device} FROM {stream}_readings WHERE read_at >= $1 AND read_at < $2 ORDER BY 1
"""
METER_DEVICES_IN = _DEVICES_IN.format(stream="meter", device="meter_id")
VEHICLE_DEVICES_IN = _DEVICES_IN.format(stream="vehicle", device="vehicle_id")
# The hours of some devices ($1) in [$2, $3) that have readings: left to the redo.
_LEAVE_DIRTY = """
INSERT INTO rollup_dirty (stream, device_id, hour, generation)
SELECT '{stream}', {device}, hour, nextval('rollup_generation')
FROM (SELECT DISTINCT {device}, date_trunc('hour', read_at) AS hour
      FROM {stream}_readings
      WHERE {device} = ANY($1::text[]) AND read_at >= $2 AND read_at < $3) AS failed
ORDER BY {device}, hour
ON CONFLICT (stream, device_id, hour) DO UPDATE SET generation = excluded.generation
"""
LEAVE_METERS_DIRTY = _LEAVE_DIRTY.format(stream="meter", device="meter_id")
LEAVE_VEHICLES_DIRTY = _LEAVE_DIRTY.format(stream="vehicle", device="vehicle_id")

QUARANTINE = """
INSERT INTO rollup_quarantine AS q (stream, device_id, hour, generation, reason)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[], $5::text[])
ON CONFLICT (stream, device_id, hour) DO UPDATE
    SET generation = excluded.generation, reason = excluded.reason, failed_at = now()
"""

# Quarantined hours that were redone after all ($1 streams, $2 devices, $3 hours).
RELEASE = """
DELETE FROM rollup_quarantine AS q
USING unnest($1::text[], $2::text[], $3::timestamptz[]) AS done (stream, device_id, hour)
WHERE q.stream = done.stream AND q.device_id = done.device_id AND q.hour = done.hour
"""

QUARANTINED = "SELECT count(*) FROM rollup_quarantine"

# The refresher's transactions may run long on a backlog: not bounded by the request pool's
# statement_timeout and temp_file_limit (db.create_pool), and given far more than its
# client-side command timeout.
UNBOUNDED = db.UNBOUNDED_TRANSACTION
STATEMENT_TIMEOUT_S = 3600.0

T = TypeVar("T")


async def _isolate(
    conn: Connection, run: Callable[[list[T]], Awaitable[object]], items: list[T]
) -> list[tuple[T, str]]:
    """Run `run` on `items` in a savepoint; if it fails, on each half, down to single items.
    Returns the items that fail on their own, with why. An outage is raised, not isolated."""
    try:
        async with conn.transaction():
            await run(items)
        return []
    except asyncpg.PostgresError as exc:
        if outage(exc) is not None or not items:
            raise
        if len(items) == 1:
            return [(items[0], f"{type(exc).__name__}: {exc}")]
        half = len(items) // 2
        return await _isolate(conn, run, items[:half]) + await _isolate(conn, run, items[half:])


async def quarantined(conn: Connection) -> int:
    """How many device-hours the refresher could not aggregate (read raw meanwhile)."""
    count: int = await conn.fetchval(QUARANTINED)
    return count


SEAL = "UPDATE rollup_watermarks SET at = $1 WHERE name = 'sealed' AND at < $1"

# NULL for -infinity (nothing sealed or rolled yet).
WATERMARKS = "SELECT name, CASE WHEN isfinite(at) THEN at END AS at FROM rollup_watermarks"

SET_ROLLED = "UPDATE rollup_watermarks SET at = $1 WHERE name = 'rolled'"

# Where rolling starts on a database that has never been rolled: its oldest partition's day.
OLDEST_DAY = """
SELECT min(to_date(right(c.relname, 8), 'YYYYMMDD'))::timestamp AT TIME ZONE 'UTC'
FROM pg_inherits AS i
JOIN pg_class AS c ON c.oid = i.inhrelid
WHERE i.inhparent IN ('meter_readings'::regclass, 'vehicle_readings'::regclass)
"""

RULES = "SELECT interval_kwh, max_power_kw FROM rollup_rules"

RESET = """
WITH cleared_meters AS (DELETE FROM meter_rollups),
     cleared_vehicles AS (DELETE FROM vehicle_rollups),
     cleared_meter_days AS (DELETE FROM meter_day_rollups),
     cleared_vehicle_days AS (DELETE FROM vehicle_day_rollups),
     cleared_dirty AS (DELETE FROM rollup_dirty),
     rules AS (
         INSERT INTO rollup_rules (interval_kwh, max_power_kw) VALUES ($1, $2)
         ON CONFLICT (only_row) DO UPDATE
             SET interval_kwh = excluded.interval_kwh, max_power_kw = excluded.max_power_kw
     )
UPDATE rollup_watermarks SET at = '-infinity'
"""


def _rules(settings: Settings) -> tuple[bool, float]:
    return settings.energy_semantics is EnergySemantics.INTERVAL, settings.max_power_kw


async def match_rules(conn: Connection, settings: Settings) -> bool:
    """Drop the rollups when they were computed with other energy rules; True if dropped.
    Analytics read raw rows until the refresher has rolled the history up again."""
    async with conn.transaction():
        await conn.execute(UNBOUNDED)
        await conn.execute("SELECT pg_advisory_xact_lock($1)", REFRESH_LOCK_KEY)
        row = await conn.fetchrow(RULES)
        wanted = _rules(settings)
        if row is not None and (row["interval_kwh"], row["max_power_kw"]) == wanted:
            return False
        await conn.execute(RESET, *wanted)
        return row is not None


async def seal(conn: Connection, until: datetime) -> None:
    """Move `sealed` to `until`; waits for writers that saw the old value to commit."""
    await conn.execute(SEAL, until)


async def watermarks(conn: Connection) -> dict[str, datetime | None]:
    """`sealed` and `rolled`; None while nothing is sealed or rolled."""
    return {r["name"]: r["at"] for r in await conn.fetch(WATERMARKS)}


async def roll(conn: Connection, settings: Settings, *, max_hours: int = 24) -> datetime | None:
    """Aggregate up to `max_hours` sealed hours; returns the new `rolled`, None if idle or
    another process holds the refresh lock."""
    async with conn.transaction():
        await conn.execute(UNBOUNDED)
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", REFRESH_LOCK_KEY):
            return None
        marks = await watermarks(conn)
        rolled, sealed = marks["rolled"], marks["sealed"]
        if rolled is None:  # never rolled: start at the oldest partition
            rolled = await conn.fetchval(OLDEST_DAY)
            if rolled is None:
                return None
        if sealed is None or sealed <= rolled:
            return None
        until: datetime = min(sealed, rolled + timedelta(hours=max_hours))
        for stream, every, apart in (
            ("meter", ROLL_METER_HOURS, (ROLL_SOME_METER_HOURS, METER_DEVICES_IN)),
            ("vehicle", ROLL_VEHICLE_HOURS, (ROLL_SOME_VEHICLE_HOURS, VEHICLE_DEVICES_IN)),
        ):
            try:
                async with conn.transaction():
                    await conn.execute(
                        every, *_rules(settings), rolled, until, timeout=STATEMENT_TIMEOUT_S
                    )
            except asyncpg.PostgresError as exc:
                if outage(exc) is not None:
                    raise
                await _roll_apart(conn, settings, stream, *apart, rolled, until)
        # The days this batch completes.
        days = (_floor_day(rolled), _floor_day(until))
        if days[0] < days[1]:
            await conn.execute(ROLL_METER_DAYS, *days, timeout=STATEMENT_TIMEOUT_S)
            await conn.execute(ROLL_VEHICLE_DAYS, *days, timeout=STATEMENT_TIMEOUT_S)
        await conn.execute(SET_ROLLED, until)
        return until


async def _roll_apart(
    conn: Connection,
    settings: Settings,
    stream: str,
    some: str,
    devices_in: str,
    rolled: datetime,
    until: datetime,
) -> None:
    """Roll [rolled, until) of one stream up device group by device group, after rolling it
    all at once failed; the devices that fail alone are left dirty (to the redo)."""
    devices = [r[0] for r in await conn.fetch(devices_in, rolled, until)]

    async def roll_some(group: list[str]) -> None:
        await conn.execute(
            some, *_rules(settings), rolled, until, group, timeout=STATEMENT_TIMEOUT_S
        )

    failed = await _isolate(conn, roll_some, devices)
    if failed:
        leave_dirty = LEAVE_METERS_DIRTY if stream == "meter" else LEAVE_VEHICLES_DIRTY
        await conn.execute(leave_dirty, [device for device, _ in failed], rolled, until)
        log.warning(
            "rollups: %d %ss could not be rolled up for [%s, %s); their hours are redone one "
            "by one (first: %s: %s)",
            len(failed),
            stream,
            rolled.isoformat(),
            until.isoformat(),
            *failed[0],
        )


async def redo_dirty(conn: Connection, settings: Settings, *, limit: int = 20_000) -> int:
    """Re-aggregate up to `limit` dirty device-hours below `rolled`; returns how many."""
    async with conn.transaction():
        await conn.execute(UNBOUNDED)
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", REFRESH_LOCK_KEY):
            return 0
        dirty = await conn.fetch(TAKE_DIRTY, limit)
        if not dirty:
            return 0
        failed: list[tuple[asyncpg.Record, str]] = []
        for stream, statements in (
            ("meter", (REDO_METER_HOURS, REPAIR_NEXT_METER, REDO_METER_DAYS)),
            ("vehicle", (REDO_VEHICLE_HOURS, REPAIR_NEXT_VEHICLE, REDO_VEHICLE_DAYS)),
        ):
            marks = [d for d in dirty if d["stream"] == stream]
            if marks:
                redo = functools.partial(_redo, conn, settings, statements)
                failed += await _isolate(conn, redo, marks)
        if failed:
            await _quarantine(conn, failed)
        bad = {(m["stream"], m["device_id"], m["hour"]) for m, _ in failed}
        done = [d for d in dirty if (d["stream"], d["device_id"], d["hour"]) not in bad]
        await conn.execute(
            FORGET_DIRTY,
            [d["stream"] for d in done],
            [d["device_id"] for d in done],
            [d["hour"] for d in done],
            [d["generation"] for d in done],
        )
        streams, devices, hours = ([d[k] for d in done] for k in ("stream", "device_id", "hour"))
        await conn.execute(RELEASE, streams, devices, hours)
        return len(dirty)


async def _redo(
    conn: Connection,
    settings: Settings,
    statements: tuple[str, str, str],
    marks: Sequence[asyncpg.Record],
) -> None:
    """Redo the dirty hours `marks` of one stream, the next rollup of each, and their days."""
    redo, repair, days = statements
    devices = [m["device_id"] for m in marks]
    hours = [m["hour"] for m in marks]
    await conn.execute(redo, *_rules(settings), devices, hours, timeout=STATEMENT_TIMEOUT_S)
    repaired = await conn.fetch(
        repair, devices, hours, *_rules(settings), timeout=STATEMENT_TIMEOUT_S
    )
    devices += [r["device_id"] for r in repaired]
    hours += [r["hour"] for r in repaired]
    await conn.execute(days, devices, hours, timeout=STATEMENT_TIMEOUT_S)


async def _quarantine(conn: Connection, failed: list[tuple[asyncpg.Record, str]]) -> None:
    """Keep device-hours whose redo failed out of the next rounds (they stay dirty)."""
    await conn.execute(
        QUARANTINE,
        [m["stream"] for m, _ in failed],
        [m["device_id"] for m, _ in failed],
        [m["hour"] for m, _ in failed],
        [m["generation"] for m, _ in failed],
        [reason[:500] for _, reason in failed],
    )
    first, reason = failed[0]
    log.warning(
        "rollups: %d device-hours quarantined, read raw until a new reading changes them "
        "(first: %s %s %s: %s)",
        len(failed),
        first["stream"],
        first["device_id"],
        first["hour"].isoformat(),
        reason,
    )


def _floor_day(at: datetime) -> datetime:
    """The start of `at`'s UTC day."""
    return at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def sealable(now: datetime, grace: timedelta) -> datetime:
    """Every hour before the returned instant ended at least `grace` before `now`."""
    return (now - grace).replace(minute=0, second=0, microsecond=0)


async def refresh(pool: Pool, settings: Settings, now: datetime, *, rounds: int = 100) -> None:
    """Seal finished hours, roll them up and redo dirty hours, in at most `rounds`
    transactions each (the next call goes on where this one stopped)."""
    async with pool.acquire() as conn:
        await seal(conn, sealable(now, settings.rollup_grace))
        for _ in range(rounds):
            if await roll(conn, settings) is None:
                break
        for _ in range(rounds):
            if not await redo_dirty(conn, settings):
                break
