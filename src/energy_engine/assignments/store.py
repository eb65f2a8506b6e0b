"""Assignment writes and reads, as named SQL beside this module. Opening one closes the
vehicle's and the meter's open ones."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from energy_engine import sql
from energy_engine.db import Connection

queries = sql.load("energy_engine.assignments")


class Conflict(Exception):
    """The assignment would start before an existing boundary of the vehicle or meter."""

    def __init__(self, boundary: datetime) -> None:
        super().__init__(f"an assignment boundary exists at {boundary.isoformat()}")
        self.boundary = boundary


async def assign(
    conn: Connection, vehicle_id: str, meter_id: str, valid_from: datetime | None
) -> tuple[asyncpg.Record, bool]:
    """Open an assignment (from now when `valid_from` is None), closing the ones it replaces.

    Returns the assignment and whether it is new.
    """
    async with conn.transaction():
        await conn.execute(queries.lock_assignments)
        if valid_from is None:
            valid_from = await conn.fetchval(queries.now)
            assert valid_from is not None
        current = await conn.fetchrow(queries.open_assignment, vehicle_id)
        if current is not None and current["meter_id"] == meter_id:
            return current, False  # already assigned: the request is a no-op
        boundary = await conn.fetchval(queries.latest_boundary, vehicle_id, meter_id)
        if boundary is not None and valid_from < boundary:
            raise Conflict(boundary)
        await conn.execute(queries.close_open, vehicle_id, meter_id, valid_from)
        created = await conn.fetchrow(queries.insert_assignment, vehicle_id, meter_id, valid_from)
        assert created is not None
        return created, True


async def vehicle_assignments(conn: Connection, vehicle_id: str) -> list[asyncpg.Record]:
    """Every assignment of a vehicle, oldest first."""
    return await conn.fetch(queries.vehicle_assignments, vehicle_id)
