"""Writes readings: history insert and hot-store upsert in one statement per stream.

Each statement inserts the batch into the day-partitioned history, skipping (device, time)
pairs already stored (first write wins), then folds the two newest *new* readings of each
device into its hot row. The hot row keeps the newest reading and the one before it; a late
reading can become the "previous" one but never the latest, so the hot store never goes back
in time. Rows are inserted in (device, time) order so concurrent batches cannot deadlock.
A reading older than the rollups' `sealed` watermark marks its device-hour dirty, so the
hourly rollups never miss it (migrations/0003_rollups.sql).

The meter and vehicle statements differ only in table and column names. They stay two plain
SQL texts rather than one template filled in at import: each can be read, EXPLAINed and
pasted into psql as it is, and neither changes without the other being looked at in review.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from energy_engine.db import Connection, days_spanned, ensure_partitions
from energy_engine.ingest.models import MeterReading, VehicleReading

INSERT_METER_READINGS = """
WITH batch AS (
    SELECT *
    FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::float8[])
        WITH ORDINALITY AS b (meter_id, read_at, kwh_consumed_ac, voltage, position)
),
inserted AS (
    INSERT INTO meter_readings (meter_id, read_at, kwh_consumed_ac, voltage)
    SELECT meter_id, read_at, kwh_consumed_ac, voltage
    FROM batch
    ORDER BY meter_id, read_at, position
    ON CONFLICT DO NOTHING
    RETURNING meter_id, read_at, kwh_consumed_ac, voltage
),
sealed AS (  -- share-locked until commit: the refresher seals after this commits
    SELECT at FROM rollup_watermarks WHERE name = 'sealed' FOR SHARE
),
dirtied AS (  -- late readings: their hours' rollups must be redone
    INSERT INTO rollup_dirty (stream, device_id, hour, generation)
    SELECT 'meter', meter_id, hour, nextval('rollup_generation')
    FROM (SELECT DISTINCT meter_id, date_trunc('hour', read_at) AS hour
          FROM inserted
          WHERE read_at < (SELECT at FROM sealed)) AS late
    ORDER BY meter_id, hour
    ON CONFLICT (stream, device_id, hour) DO UPDATE SET generation = excluded.generation
),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY meter_id ORDER BY read_at DESC) AS rank
    FROM inserted
),
upserted AS (
    INSERT INTO meter_state AS s (
        meter_id, read_at, kwh_consumed_ac, voltage, received_at,
        prev_read_at, prev_kwh_consumed_ac
    )
    SELECT l.meter_id, l.read_at, l.kwh_consumed_ac, l.voltage, now(),
           p.read_at, p.kwh_consumed_ac
    FROM ranked AS l
    LEFT JOIN ranked AS p ON p.meter_id = l.meter_id AND p.rank = 2
    WHERE l.rank = 1
    ORDER BY l.meter_id
    ON CONFLICT (meter_id) DO UPDATE SET
        read_at = CASE WHEN excluded.read_at > s.read_at
                       THEN excluded.read_at ELSE s.read_at END,
        kwh_consumed_ac = CASE WHEN excluded.read_at > s.read_at
                               THEN excluded.kwh_consumed_ac ELSE s.kwh_consumed_ac END,
        voltage = CASE WHEN excluded.read_at > s.read_at
                       THEN excluded.voltage ELSE s.voltage END,
        received_at = CASE WHEN excluded.read_at > s.read_at
                           THEN excluded.received_at ELSE s.received_at END,
        prev_read_at = CASE WHEN excluded.read_at > s.read_at
                            THEN greatest(s.read_at, excluded.prev_read_at)
                            ELSE greatest(s.prev_read_at, excluded.read_at) END,
        prev_kwh_consumed_ac = CASE
            WHEN excluded.read_at > s.read_at THEN
                CASE WHEN excluded.prev_read_at > s.read_at
                     THEN excluded.prev_kwh_consumed_ac ELSE s.kwh_consumed_ac END
            ELSE
                CASE WHEN s.prev_read_at > excluded.read_at
                     THEN s.prev_kwh_consumed_ac ELSE excluded.kwh_consumed_ac END
        END
    WHERE excluded.read_at > s.read_at
       OR s.prev_read_at IS NULL
       OR excluded.read_at > s.prev_read_at
)
SELECT coalesce(array_agg(first_position ORDER BY first_position), '{}')
FROM (
    SELECT min(b.position) AS first_position
    FROM batch AS b
    JOIN inserted AS i USING (meter_id, read_at)
    GROUP BY b.meter_id, b.read_at
) AS accepted
"""

INSERT_VEHICLE_READINGS = """
WITH batch AS (
    SELECT *
    FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::float8[], $5::float8[])
        WITH ORDINALITY AS b (vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp, position)
),
inserted AS (
    INSERT INTO vehicle_readings (vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp)
    SELECT vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp
    FROM batch
    ORDER BY vehicle_id, read_at, position
    ON CONFLICT DO NOTHING
    RETURNING vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp
),
sealed AS (  -- share-locked until commit: the refresher seals after this commits
    SELECT at FROM rollup_watermarks WHERE name = 'sealed' FOR SHARE
),
dirtied AS (  -- late readings: their hours' rollups must be redone
    INSERT INTO rollup_dirty (stream, device_id, hour, generation)
    SELECT 'vehicle', vehicle_id, hour, nextval('rollup_generation')
    FROM (SELECT DISTINCT vehicle_id, date_trunc('hour', read_at) AS hour
          FROM inserted
          WHERE read_at < (SELECT at FROM sealed)) AS late
    ORDER BY vehicle_id, hour
    ON CONFLICT (stream, device_id, hour) DO UPDATE SET generation = excluded.generation
),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY vehicle_id ORDER BY read_at DESC) AS rank
    FROM inserted
),
upserted AS (
    INSERT INTO vehicle_state AS s (
        vehicle_id, read_at, soc, kwh_delivered_dc, battery_temp, received_at,
        prev_read_at, prev_kwh_delivered_dc
    )
    SELECT l.vehicle_id, l.read_at, l.soc, l.kwh_delivered_dc, l.battery_temp, now(),
           p.read_at, p.kwh_delivered_dc
    FROM ranked AS l
    LEFT JOIN ranked AS p ON p.vehicle_id = l.vehicle_id AND p.rank = 2
    WHERE l.rank = 1
    ORDER BY l.vehicle_id
    ON CONFLICT (vehicle_id) DO UPDATE SET
        read_at = CASE WHEN excluded.read_at > s.read_at
                       THEN excluded.read_at ELSE s.read_at END,
        soc = CASE WHEN excluded.read_at > s.read_at
                   THEN excluded.soc ELSE s.soc END,
        kwh_delivered_dc = CASE WHEN excluded.read_at > s.read_at
                                THEN excluded.kwh_delivered_dc ELSE s.kwh_delivered_dc END,
        battery_temp = CASE WHEN excluded.read_at > s.read_at
                            THEN excluded.battery_temp ELSE s.battery_temp END,
        received_at = CASE WHEN excluded.read_at > s.read_at
                           THEN excluded.received_at ELSE s.received_at END,
        prev_read_at = CASE WHEN excluded.read_at > s.read_at
                            THEN greatest(s.read_at, excluded.prev_read_at)
                            ELSE greatest(s.prev_read_at, excluded.read_at) END,
        prev_kwh_delivered_dc = CASE
            WHEN excluded.read_at > s.read_at THEN
                CASE WHEN excluded.prev_read_at > s.read_at
                     THEN excluded.prev_kwh_delivered_dc ELSE s.kwh_delivered_dc END
            ELSE
                CASE WHEN s.prev_read_at > excluded.read_at
                     THEN s.prev_kwh_delivered_dc ELSE excluded.kwh_delivered_dc END
        END
    WHERE excluded.read_at > s.read_at
       OR s.prev_read_at IS NULL
       OR excluded.read_at > s.prev_read_at
)
SELECT coalesce(array_agg(first_position ORDER BY first_position), '{}')
FROM (
    SELECT min(b.position) AS first_position
    FROM batch AS b
    JOIN inserted AS i USING (vehicle_id, read_at)
    GROUP BY b.vehicle_id, b.read_at
) AS accepted
"""


async def insert_meter_readings(conn: Connection, readings: Sequence[MeterReading]) -> list[int]:
    """Store meter readings; returns the 1-based positions of those that were new."""
    accepted: list[int] = await conn.fetchval(
        INSERT_METER_READINGS,
        [r.meter_id for r in readings],
        [r.timestamp for r in readings],
        [r.kwh_consumed_ac for r in readings],
        [r.voltage for r in readings],
    )
    return accepted


async def insert_vehicle_readings(
    conn: Connection, readings: Sequence[VehicleReading]
) -> list[int]:
    """Store vehicle readings; returns the 1-based positions of those that were new."""
    accepted: list[int] = await conn.fetchval(
        INSERT_VEHICLE_READINGS,
        [r.vehicle_id for r in readings],
        [r.timestamp for r in readings],
        [r.soc for r in readings],
        [r.kwh_delivered_dc for r in readings],
        [r.battery_temp for r in readings],
    )
    return accepted


async def _insert_all(
    conn: Connection, meters: Sequence[MeterReading], vehicles: Sequence[VehicleReading]
) -> tuple[list[int], list[int]]:
    if meters and vehicles:
        async with conn.transaction():  # all or nothing across the two streams
            return (
                await insert_meter_readings(conn, meters),
                await insert_vehicle_readings(conn, vehicles),
            )
    if meters:
        return await insert_meter_readings(conn, meters), []
    return [], await insert_vehicle_readings(conn, vehicles)


def _is_missing_partition(exc: asyncpg.CheckViolationError) -> bool:
    return "no partition of relation" in str(exc)


async def write_readings(
    conn: Connection, meters: Sequence[MeterReading], vehicles: Sequence[VehicleReading]
) -> tuple[list[int], list[int]]:
    """Store readings of both streams atomically; the new ones' positions, per stream."""
    try:
        return await _insert_all(conn, meters, vehicles)
    except asyncpg.CheckViolationError as exc:
        # A day with no partition yet (the maintenance task creates them ahead, so this is
        # rare): create the days this batch spans and retry once.
        if not _is_missing_partition(exc):
            raise
        stamps = [r.timestamp for r in meters] + [r.timestamp for r in vehicles]
        await ensure_partitions(conn, *days_spanned(stamps))
        return await _insert_all(conn, meters, vehicles)
