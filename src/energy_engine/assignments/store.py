"""Assignment writes and reads. Opening one closes the vehicle's and the meter's open ones."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from energy_engine.db import Connection

# Serialises assignment changes per device; plain advisory locks, no extension needed.
LOCK_DEVICE = "SELECT pg_advisory_xact_lock(hashtext($1))"

# The newest boundary already recorded for either device: a new assignment may not start
# before it, or two assignments would overlap in time.
LATEST_BOUNDARY = """
SELECT max(greatest(valid_from, valid_to))
FROM assignments
WHERE vehicle_id = $1 OR meter_id = $2
"""

OPEN_ASSIGNMENT = """
SELECT * FROM assignments WHERE vehicle_id = $1 AND valid_to IS NULL
"""

CLOSE_OPEN = """
UPDATE assignments SET valid_to = $3
WHERE (vehicle_id = $1 OR meter_id = $2) AND valid_to IS NULL
"""

INSERT_ASSIGNMENT = """
INSERT INTO assignments (vehicle_id, meter_id, valid_from)
VALUES ($1, $2, $3)
RETURNING *
"""

VEHICLE_ASSIGNMENTS = """
SELECT * FROM assignments WHERE vehicle_id = $1 ORDER BY valid_from, assignment_id
"""


class Conflict(Exception):
    """The assignment would start before an existing boundary of the vehicle or meter."""

    def __init__(self, boundary: datetime) -> None:
        super().__init__(f"an assignment boundary exists at {boundary.isoformat()}")
        self.boundary = boundary


async def assign(
    conn: Connection, vehicle_id: str, meter_id: str, valid_from: datetime
) -> tuple[asyncpg.Record, bool]:
    """Open an assignment, closing the ones it replaces; returns it and whether it is new."""
    async with conn.transaction():
        # Both locks, always in the same order, so two requests cannot deadlock.
        for key in sorted((f"vehicle:{vehicle_id}", f"meter:{meter_id}")):
            await conn.execute(LOCK_DEVICE, key)
        current = await conn.fetchrow(OPEN_ASSIGNMENT, vehicle_id)
        if current is not None and current["meter_id"] == meter_id:
            return current, False  # already assigned: the request is a no-op
        boundary = await conn.fetchval(LATEST_BOUNDARY, vehicle_id, meter_id)
        if boundary is not None and valid_from < boundary:
            raise Conflict(boundary)
        await conn.execute(CLOSE_OPEN, vehicle_id, meter_id, valid_from)
        created = await conn.fetchrow(INSERT_ASSIGNMENT, vehicle_id, meter_id, valid_from)
        assert created is not None
        return created, True


async def vehicle_assignments(conn: Connection, vehicle_id: str) -> list[asyncpg.Record]:
    """Every assignment of a vehicle, oldest first."""
    return await conn.fetch(VEHICLE_ASSIGNMENTS, vehicle_id)
