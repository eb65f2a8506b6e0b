"""Reads of the hot store, as named SQL beside this module: a device's hot row, the fleet."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from energy_engine import sql
from energy_engine.db import Connection

queries = sql.load("energy_engine.status")


async def vehicle_state(conn: Connection, vehicle_id: str) -> asyncpg.Record | None:
    """The hot row of a vehicle with its current meter, or None if never seen."""
    return await conn.fetchrow(queries.vehicle_state, vehicle_id)


async def vehicle_states(conn: Connection, vehicle_ids: list[str]) -> list[asyncpg.Record]:
    """The hot rows of those of `vehicle_ids` ever seen, with their current meters, by id."""
    return list(await conn.fetch(queries.vehicle_states, vehicle_ids))


async def meter_state(conn: Connection, meter_id: str) -> asyncpg.Record | None:
    """The hot row of a meter with its current vehicle, or None if never seen."""
    return await conn.fetchrow(queries.meter_state, meter_id)


async def fleet(
    conn: Connection, online_since: datetime, interval_kwh: bool, max_power_kw: float
) -> asyncpg.Record:
    """Counts of the hot store: devices known and online, vehicles charging, average SoC."""
    row = await conn.fetchrow(queries.fleet, online_since, interval_kwh, max_power_kw)
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
    return list(await conn.fetch(queries.stale, online_since, at, kind, device, limit))
