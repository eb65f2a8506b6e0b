"""Reads of the hot store: one row per device, joined with its open assignment."""

from __future__ import annotations

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
