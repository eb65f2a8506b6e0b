"""Reads of the hot store: one row per device, joined with its open assignment."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from energy_engine.db import Connection

VEHICLE_STATE = """
SELECT v.*, a.meter_id
FROM vehicle_state AS v
LEFT JOIN assignments AS a ON a.vehicle_id = v.vehicle_id AND a.valid_to IS NULL
WHERE v.vehicle_id = $1
"""

METER_STATE = """
SELECT m.*, a.vehicle_id
FROM meter_state AS m
LEFT JOIN assignments AS a ON a.meter_id = m.meter_id AND a.valid_to IS NULL
WHERE m.meter_id = $1
"""


async def vehicle_state(conn: Connection, vehicle_id: str) -> asyncpg.Record | None:
    """The hot row of a vehicle with its current meter, or None if never seen."""
    return await conn.fetchrow(VEHICLE_STATE, vehicle_id)


async def meter_state(conn: Connection, meter_id: str) -> asyncpg.Record | None:
    """The hot row of a meter with its current vehicle, or None if never seen."""
    return await conn.fetchrow(METER_STATE, meter_id)


# The fleet at a glance, from the hot rows alone. $1 online since, $2 interval semantics,
# $3 max power kW. `charging` follows energy.power_kw: the latest interval added energy, at a
# plausible power, and the reading is fresh (the same rule as a vehicle's own status; the SQL
# functions of migrations/0006, which survive a poison reading in the hot row).
FLEET = """
SELECT
    (SELECT count(*) FROM vehicle_state) AS vehicles,
    (SELECT count(*) FROM vehicle_state WHERE read_at >= $1) AS vehicles_online,
    (SELECT count(*)
     FROM (SELECT EXTRACT(epoch FROM read_at - prev_read_at)::float8 AS seconds,
                  energy_increment(kwh_delivered_dc, prev_kwh_delivered_dc, $2) AS added
           FROM vehicle_state
           WHERE read_at >= $1 AND prev_read_at < read_at) AS latest
     WHERE added > 0 AND energy_plausible(added, seconds, $3)) AS vehicles_charging,
    (SELECT avg(soc) FROM vehicle_state WHERE read_at >= $1) AS avg_soc_online,
    (SELECT count(*) FROM meter_state) AS meters,
    (SELECT count(*) FROM meter_state WHERE read_at >= $1) AS meters_online
"""

# Devices whose newest reading is older than $1, stalest first, after the keyset cursor
# ($2 read_at, $3 kind, $4 id; NULLs for the first page), $5 rows.
STALE = """
SELECT kind, device_id, read_at
FROM (
    SELECT 'vehicle' AS kind, vehicle_id AS device_id, read_at FROM vehicle_state
    WHERE read_at < $1
    UNION ALL
    SELECT 'meter', meter_id, read_at FROM meter_state
    WHERE read_at < $1
) AS stale
WHERE $2::timestamptz IS NULL OR (read_at, kind, device_id) > ($2, $3::text, $4::text)
ORDER BY read_at, kind, device_id
LIMIT $5
"""


async def fleet(
    conn: Connection, online_since: datetime, interval_kwh: bool, max_power_kw: float
) -> asyncpg.Record:
    """Counts of the hot store: devices known and online, vehicles charging, average SoC."""
    row = await conn.fetchrow(FLEET, online_since, interval_kwh, max_power_kw)
    assert row is not None
    return row


async def stale(
    conn: Connection,
    online_since: datetime,
    after: tuple[datetime, str, str] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """One page of devices not heard from since `online_since`, stalest first."""
    at, kind, device = after if after else (None, None, None)
    return list(await conn.fetch(STALE, online_since, at, kind, device, limit))
